//! The CLI's side of the API.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use serde_json::Value;

use super::socket_path;

/// Calls the API of `instance`: returns the status code and the JSON body.
pub fn call(
    instance: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    use anyhow::Context as _;
    let sock = socket_path(instance)?;
    let mut conn = UnixStream::connect(&sock).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {}: the API socket is root-only",
            sock.display()
        ),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no API socket at {}: is `xdplb run --instance {instance}` running?",
            sock.display()
        ),
        _ => anyhow::anyhow!("connecting to {}: {e}", sock.display()),
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(35)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: xdplb\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw)
        .context("reading the API's answer")?;
    let (head, payload) = raw.split_once("\r\n\r\n").context("malformed API answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed API status line")?;
    let value = serde_json::from_str(payload.trim()).unwrap_or(Value::String(payload.to_string()));
    Ok((status, value))
}
