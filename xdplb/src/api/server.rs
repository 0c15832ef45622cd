//! The API's HTTP server: it parses requests and hands each to the daemon's main loop.

use std::{
    io::{Read, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::Path,
    sync::mpsc::{Sender, channel},
    time::Duration,
};

use super::{MAX_BODY, Request, Response};

fn bad(msg: impl Into<String>) -> Response {
    Response::error(400, msg)
}

/// Binds the API socket, readable and writable by root only. A stale socket is replaced.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the socket: every request goes to the main loop through `to_main`, with a channel
/// for its answer.
pub fn serve(listener: UnixListener, to_main: Sender<(Request, Sender<Response>)>) {
    serve_each(listener.incoming(), UnixStream::set_read_timeout, &to_main);
}

/// Serves the optional TCP listener (`api_listen`, loopback only) exactly like the socket.
pub fn serve_tcp(listener: std::net::TcpListener, to_main: Sender<(Request, Sender<Response>)>) {
    serve_each(
        listener.incoming(),
        std::net::TcpStream::set_read_timeout,
        &to_main,
    );
}

fn serve_each<S: Read + Write>(
    incoming: impl Iterator<Item = std::io::Result<S>>,
    set_read_timeout: fn(&S, Option<Duration>) -> std::io::Result<()>,
    to_main: &Sender<(Request, Sender<Response>)>,
) {
    for conn in incoming {
        let Ok(mut conn) = conn else { continue };
        if set_read_timeout(&conn, Some(Duration::from_secs(5))).is_ok()
            && !answer(&mut conn, to_main)
        {
            return;
        }
    }
}

/// Reads one request, has the main loop answer it, and writes the answer. Returns false when
/// the main loop is gone.
fn answer(conn: &mut (impl Read + Write), to_main: &Sender<(Request, Sender<Response>)>) -> bool {
    let response = match read_request(conn) {
        Ok(req) => {
            let (tx, rx) = channel();
            if to_main.send((req, tx)).is_err() {
                return false;
            }
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| Response::error(503, "the daemon did not answer"))
        }
        Err(e) => bad(e),
    };
    let _ = write_response(conn, &response);
    true
}

fn read_request(conn: &mut impl Read) -> Result<Request, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = conn
            .read(&mut chunk)
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the request ended before its headers".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("request headers too long".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (method, path) = match (first.next(), first.next()) {
        (Some(m), Some(p)) => (m.to_string(), p.to_string()),
        _ => return Err("malformed request line".into()),
    };
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        return Err(format!(
            "request body of {length} bytes is over the {MAX_BODY}-byte limit"
        ));
    }
    let mut body = buf[header_end..].to_vec();
    while body.len() < length {
        let n = conn
            .read(&mut chunk)
            .map_err(|e| format!("reading the body: {e}"))?;
        if n == 0 {
            return Err("the request ended before its body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Request { method, path, body })
}

fn write_response(conn: &mut impl Write, r: &Response) -> std::io::Result<()> {
    let body = serde_json::to_string_pretty(&r.body).unwrap_or_else(|_| "{}".into());
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Error",
    };
    write!(
        conn,
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        r.status,
        body.len() + 1
    )
}
