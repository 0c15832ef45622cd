//! The API's HTTP server: an axum router that hands each request to the daemon's main loop,
//! which owns config and data plane, and answers what the loop answers. HTTP and its bounds
//! are [`crate::http`]'s.

use std::{os::unix::fs::PermissionsExt, path::Path};

use axum::{Router, extract::State, response::Response as HttpResponse};
use tokio::sync::{mpsc, oneshot, watch};

use super::{MAX_BODY, Request, Response};
use crate::http::{ANSWER_TIMEOUT, Readiness, json_response, with_probes};

/// A request for the main loop, with where its answer goes.
pub type ToMain = mpsc::Sender<(Request, oneshot::Sender<Response>)>;

/// Binds the API socket, readable and writable by root only. A stale socket is replaced.
/// Must be called inside the tokio runtime.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// The API's routes: the probes, and everything else to the main loop through `to_main`
/// (which answers unknown paths with its 404/405 JSON errors).
pub fn router(to_main: ToMain, ready: watch::Receiver<Readiness>) -> Router {
    with_probes(Router::new().fallback(forward).with_state(to_main), ready)
}

async fn forward(State(to_main): State<ToMain>, req: axum::extract::Request) -> HttpResponse {
    let (parts, body) = req.into_parts();
    let announced = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        // Refused before reading it.
        let answer = over_limit();
        return json_response(answer.status, &answer.body);
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b.to_vec(),
        Err(e) => {
            let over = std::error::Error::source(&e).is_some_and(
                <dyn std::error::Error + 'static>::is::<http_body_util::LengthLimitError>,
            );
            let answer = if over {
                over_limit()
            } else {
                Response::error(400, format!("reading the request body: {e}"))
            };
            return json_response(answer.status, &answer.body);
        }
    };
    let req = Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
        body,
    };
    let (tx, rx) = oneshot::channel();
    let asked = async {
        to_main.send((req, tx)).await.ok()?;
        rx.await.ok()
    };
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
        Ok(Some(answer)) => answer,
        Ok(None) => Response::error(503, "the daemon is stopping"),
        Err(_) => Response::error(503, "the daemon did not answer"),
    };
    json_response(answer.status, &answer.body)
}

fn over_limit() -> Response {
    Response::error(413, format!("request body over the {MAX_BODY}-byte limit"))
}
