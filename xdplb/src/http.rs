//! The daemon's HTTP serving: the API (Unix socket and `api_listen`) and the metrics listener
//! (`metrics_listen`), each an axum router on hyper, many connections at once.
//!
//! HTTP itself (framing, chunked bodies, pipelining, keep-alive) is hyper's. What is ours is
//! only the bounds a daemon needs against a client that connects and stays silent or reads
//! slowly: hyper's header-read timeout (which also closes idle keep-alive connections), a
//! write timeout and a read timeout on the stream (`tokio-io-timeout`), and the cancellation
//! token that stops accepting on shutdown. `/healthz` and `/readyz` are served on every
//! listener.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsState;

/// How long a client has to send a request's headers, from connecting or from the end of its
/// previous request (so it also bounds an idle keep-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read may wait for the client's next bytes (of a body, say). Longer than
/// [`ANSWER_TIMEOUT`], because hyper keeps a read pending while the answer is prepared.
pub const READ_TIMEOUT: Duration = Duration::from_secs(35);
/// How long one write may wait for a client that does not read its answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for the daemon's loop to answer it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the daemon serves traffic as configured, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Loading, adopting or attaching.
    Starting,
    /// The data plane is attached and the config applied.
    Ready,
    /// The last apply failed: the data plane may not hold the config.
    NotReady(String),
    /// Shutting down or handing over.
    Stopping,
}

impl Readiness {
    fn reason(&self) -> Option<String> {
        match self {
            Readiness::Ready => None,
            Readiness::Starting => Some("starting: the data plane is not attached yet".into()),
            Readiness::NotReady(why) => Some(why.clone()),
            Readiness::Stopping => Some("stopping".into()),
        }
    }
}

/// A listener the daemon serves.
pub enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// A JSON answer, pretty-printed with a final newline (as the API always answered).
pub fn json_response(status: u16, body: &serde_json::Value) -> Response {
    let text = serde_json::to_string_pretty(body).unwrap_or_else(|_| "{}".into());
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{text}\n"),
    )
        .into_response()
}

/// Adds `GET /healthz` (200 while the process serves at all) and `GET /readyz` (200 only when
/// the data plane is attached and the config applied; 503 with the reason otherwise).
pub fn with_probes(router: Router, ready: watch::Receiver<Readiness>) -> Router {
    router
        .route(
            "/healthz",
            any(|method: Method| async move {
                if !is_get(&method) {
                    return method_not_allowed(&method, "/healthz");
                }
                json_response(200, &json!({ "alive": true }))
            }),
        )
        .route(
            "/readyz",
            any(move |method: Method| async move {
                if !is_get(&method) {
                    return method_not_allowed(&method, "/readyz");
                }
                match ready.borrow().reason() {
                    None => json_response(200, &json!({ "ready": true })),
                    Some(reason) => {
                        json_response(503, &json!({ "ready": false, "reason": reason }))
                    }
                }
            }),
        )
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn method_not_allowed(method: &Method, path: &str) -> Response {
    json_response(
        405,
        &json!({ "error": format!("{method} {path}: only GET is served here") }),
    )
}

/// `GET /metrics` (plus the probes) for `metrics_listen`. Each scrape reads the counters afresh
/// on a blocking thread, with the instance description the loop last published in `shared`.
pub fn metrics_router(
    shared: Arc<Mutex<MetricsState>>,
    ready: watch::Receiver<Readiness>,
) -> Router {
    let scrape = move |method: Method| {
        let shared = shared.clone();
        async move {
            if !is_get(&method) {
                return (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET /metrics is served here\n",
                )
                    .into_response();
            }
            let state = match shared.lock() {
                Ok(s) => s.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            let rendered =
                tokio::task::spawn_blocking(move || crate::metrics::render(&state)).await;
            match rendered {
                Ok(Ok(text)) => {
                    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
                }
                Ok(Err(e)) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading counters: {e}\n"),
                )
                    .into_response(),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("rendering the metrics failed: {e}\n"),
                )
                    .into_response(),
            }
        }
    };
    with_probes(Router::new().route("/metrics", any(scrape)), ready).fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            "only GET /metrics (and /healthz, /readyz) is served here\n",
        )
    })
}

/// Serves `router` on `listener` until `cancel` fires: every connection in a task of its own,
/// so a silent or slow client holds only its own connection. On cancel, accepting stops and
/// open connections finish the request they are in (bounded by the write timeout).
pub async fn serve(listener: Listener, router: Router, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(Accepted::Unix(s)) => {
                tokio::spawn(connection(s, router.clone(), cancel.clone()));
            }
            Ok(Accepted::Tcp(s)) => {
                tokio::spawn(connection(s, router.clone(), cancel.clone()));
            }
            Err(e) => {
                // Out of descriptors, say: back off a little instead of spinning; open
                // connections are served meanwhile.
                tracing::warn!("accepting an HTTP connection failed: {e}");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    Ok(match listener {
        Listener::Unix(l) => Accepted::Unix(l.accept().await?.0),
        Listener::Tcp(l) => Accepted::Tcp(l.accept().await?.0),
    })
}

async fn connection<S>(stream: S, router: Router, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut timed = tokio_io_timeout::TimeoutStream::new(stream);
    timed.set_read_timeout(Some(READ_TIMEOUT));
    timed.set_write_timeout(Some(WRITE_TIMEOUT));
    let io = TokioIo::new(Box::pin(timed));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(WRITE_TIMEOUT, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!("HTTP connection: {e}");
    }
}
