//! The CLI's side of the API: one HTTP/1.1 request over the Unix socket with hyper, in a small
//! current-thread runtime.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::socket_path;

/// How long the CLI waits for the daemon's answer (the server gives up on its loop after 30 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(35);

/// Calls the API of `instance`: returns the status code and the JSON body.
pub fn call(
    instance: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let sock = socket_path(instance)?;
    let body = body.map(ToString::to_string).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the API client's runtime")?;
    runtime.block_on(async {
        tokio::time::timeout(CLIENT_TIMEOUT, request(&sock, instance, method, path, body))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the daemon did not answer within {} s on {}",
                    CLIENT_TIMEOUT.as_secs(),
                    sock.display()
                ))
            })
    })
}

async fn request(
    sock: &Path,
    instance: &str,
    method: &str,
    path: &str,
    body: String,
) -> anyhow::Result<(u16, Value)> {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "permission denied on {}: the API socket is root-only",
                sock.display()
            ),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!(
                    "no API socket at {}: is `xdplb run --instance {instance}` running?",
                    sock.display()
                )
            }
            _ => anyhow::anyhow!("connecting to {}: {e}", sock.display()),
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("talking HTTP on {}", sock.display()))?;
    // The connection is driven by this task while the request is; it ends with the answer.
    let conn = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).context("the request's method")?)
        .uri(path)
        .header(hyper::header::HOST, "xdplb")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("building the API request")?;
    let answer = sender
        .send_request(req)
        .await
        .with_context(|| format!("sending the request to {}", sock.display()))?;
    let status = answer.status().as_u16();
    let payload = answer
        .into_body()
        .collect()
        .await
        .context("reading the API's answer")?
        .to_bytes();
    drop(sender);
    conn.abort();
    let value = serde_json::from_slice(&payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload).trim().to_string()));
    Ok((status, value))
}
