//! The live API: JSON over HTTP on a Unix socket that only root can use.
//!
//! The server thread only parses HTTP and hands each request to the daemon's main loop, which
//! owns the config and the data plane. [`plan`] decides what a request does to the config with
//! no I/O: a change is validated whole by writing the changed config as TOML and parsing it
//! again, with every rule the config file obeys, before anything touches the data plane.
//!
//! | method | path | body |
//! |---|---|---|
//! | GET | /v1/status | |
//! | GET | /v1/services | |
//! | POST | /v1/services | `{"name", "vip", "scheduler"?, "flow_idle_timeout"?, "backends": [{"address", "weight"?, "drain"?}]}` |
//! | DELETE | /v1/services/NAME | |
//! | GET | /v1/services/NAME/backends | |
//! | POST | /v1/services/NAME/backends | `{"address", "weight"?, "drain"?}` |
//! | PATCH | /v1/services/NAME/backends/ADDRESS | `{"weight"?, "drain"?}` |
//! | DELETE | /v1/services/NAME/backends/ADDRESS | |

use std::{
    io::{Read, Write},
    net::SocketAddrV4,
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::mpsc::{Sender, channel},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{self, BackendConfig, Config};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// The API socket of an instance.
pub fn socket_path(instance: &str) -> Result<PathBuf, crate::instance::InstanceError> {
    Ok(crate::instance::state_path(instance)?.with_extension("sock"))
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Response {
    pub fn ok(body: Value) -> Self {
        Response { status: 200, body }
    }
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Response {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

/// What a request does.
#[derive(Debug)]
pub enum Plan {
    /// Answer from the daemon's live state (status with counters and health).
    Status,
    /// A read answered from the config alone.
    Read(Value),
    /// A validated new config, and what changed.
    Change { next: Config, what: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSpec {
    address: String,
    weight: Option<i64>,
    drain: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendPatch {
    weight: Option<i64>,
    drain: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: String,
    vip: String,
    scheduler: Option<String>,
    flow_idle_timeout: Option<String>,
    backends: Vec<BackendSpec>,
}

fn bad(msg: impl Into<String>) -> Response {
    Response::error(400, msg)
}

fn body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body).map_err(|e| bad(format!("request body: {e}")))
}

fn backend_json(b: &BackendConfig) -> Value {
    json!({ "address": b.address.to_string(), "weight": b.weight, "drain": b.drain })
}

fn services_json(cfg: &Config) -> Value {
    Value::Array(
        cfg.services
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "vip": s.vip.to_string(),
                    "scheduler": config::scheduler_name(s.scheduler),
                    "flow_idle_timeout": humantime::format_duration(s.flow_idle_timeout).to_string(),
                    "health_check": s.health_check.as_ref().map(|h| config::health_check_type_name(&h.kind)),
                    "backends": s.backends.iter().map(backend_json).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn weight(w: Option<i64>, default: u16) -> Result<u16, Response> {
    match w {
        None => Ok(default),
        Some(w) => u16::try_from(w)
            .ok()
            .filter(|w| *w >= 1)
            .ok_or_else(|| bad(format!("weight must be 1..=65535, got {w}"))),
    }
}

fn address(s: &str) -> Result<SocketAddrV4, Response> {
    s.parse().map_err(|_| {
        bad(format!(
            "invalid backend address {s:?}: expected IPv4:port such as \"10.0.0.1:53\""
        ))
    })
}

/// A TOML string literal.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Validates `next` with every rule of the config file: written as TOML and parsed again.
fn validated(next: &Config) -> Result<Config, Response> {
    config::parse(&config::to_toml(next), "the changed config").map_err(|e| bad(e.to_string()))
}

/// Decides what `req` does to `cfg`. No I/O.
pub fn plan(req: &Request, cfg: &Config) -> Result<Plan, Response> {
    let path = req.path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let find = |name: &str| {
        cfg.services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| Response::error(404, format!("no service named {name:?}")))
    };
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["v1", "status"]) => Ok(Plan::Status),
        ("GET", ["v1", "services"]) => Ok(Plan::Read(services_json(cfg))),
        ("POST", ["v1", "services"]) => {
            let spec: ServiceSpec = body(req)?;
            if cfg.services.iter().any(|s| s.name == spec.name) {
                return Err(Response::error(
                    409,
                    format!("service {:?} already exists", spec.name),
                ));
            }
            // The new service as TOML, appended to the current config: defaults and every
            // validation rule come from the config parser.
            let mut text = config::to_toml(cfg);
            text.push_str(&format!(
                "\n[[service]]\nname = {}\nvip = {}\n",
                toml_str(&spec.name),
                toml_str(&spec.vip)
            ));
            if let Some(s) = &spec.scheduler {
                text.push_str(&format!("scheduler = {}\n", toml_str(s)));
            }
            if let Some(t) = &spec.flow_idle_timeout {
                text.push_str(&format!("flow_idle_timeout = {}\n", toml_str(t)));
            }
            for b in &spec.backends {
                text.push_str(&format!(
                    "[[service.backend]]\naddress = {}\nweight = {}\ndrain = {}\n",
                    toml_str(&b.address),
                    b.weight.unwrap_or(1),
                    b.drain.unwrap_or(false)
                ));
            }
            let next =
                config::parse(&text, "the changed config").map_err(|e| bad(e.to_string()))?;
            Ok(Plan::Change {
                next,
                what: format!("added service {:?}", spec.name),
            })
        }
        ("DELETE", ["v1", "services", name]) => {
            let i = find(name)?;
            let mut next = cfg.clone();
            next.services.remove(i);
            Ok(Plan::Change {
                next: validated(&next)?,
                what: format!("removed service {name:?}"),
            })
        }
        ("GET", ["v1", "services", name, "backends"]) => {
            let i = find(name)?;
            Ok(Plan::Read(Value::Array(
                cfg.services[i].backends.iter().map(backend_json).collect(),
            )))
        }
        ("POST", ["v1", "services", name, "backends"]) => {
            let i = find(name)?;
            let spec: BackendSpec = body(req)?;
            let addr = address(&spec.address)?;
            if cfg.services[i].backends.iter().any(|b| b.address == addr) {
                return Err(Response::error(
                    409,
                    format!("service {name:?} already has backend {addr}"),
                ));
            }
            let mut next = cfg.clone();
            next.services[i].backends.push(BackendConfig {
                address: addr,
                weight: weight(spec.weight, 1)?,
                drain: spec.drain.unwrap_or(false),
            });
            Ok(Plan::Change {
                next: validated(&next)?,
                what: format!("added backend {addr} to {name:?}"),
            })
        }
        (method @ ("PATCH" | "DELETE"), ["v1", "services", name, "backends", addr]) => {
            let i = find(name)?;
            let addr = address(addr)?;
            let j = cfg.services[i]
                .backends
                .iter()
                .position(|b| b.address == addr)
                .ok_or_else(|| {
                    Response::error(404, format!("service {name:?} has no backend {addr}"))
                })?;
            let mut next = cfg.clone();
            let what = if method == "DELETE" {
                next.services[i].backends.remove(j);
                format!("removed backend {addr} from {name:?}")
            } else {
                let patch: BackendPatch = body(req)?;
                if patch.weight.is_none() && patch.drain.is_none() {
                    return Err(bad("nothing to change: give \"weight\" and/or \"drain\""));
                }
                let b = &mut next.services[i].backends[j];
                b.weight = weight(patch.weight, b.weight)?;
                b.drain = patch.drain.unwrap_or(b.drain);
                format!(
                    "backend {addr} of {name:?}: weight {}, drain {}",
                    b.weight, b.drain
                )
            };
            Ok(Plan::Change {
                next: validated(&next)?,
                what,
            })
        }
        (_, ["v1", ..]) => Err(Response::error(
            405,
            format!("{} {path} is not an API call; see the README", req.method),
        )),
        _ => Err(Response::error(
            404,
            format!("{path}: the API lives under /v1/"),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_config;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn err(r: Result<Plan, Response>) -> Response {
        match r {
            Err(resp) => resp,
            Ok(p) => panic!("expected an error, got {p:?}"),
        }
    }

    #[test]
    fn changes_come_back_validated_and_describe_themselves() {
        let cfg = default_config();
        let p = plan(
            &req(
                "PATCH",
                "/v1/services/demo/backends/127.0.0.1:9877",
                r#"{"drain":true}"#,
            ),
            &cfg,
        );
        let Ok(Plan::Change { next, what }) = p else {
            panic!("a change expected: {p:?}")
        };
        assert!(next.services[0].backends[1].drain);
        assert!(
            what.contains("127.0.0.1:9877") && what.contains("drain true"),
            "{what}"
        );
        let p = plan(&req("DELETE", "/v1/services/demo", ""), &cfg);
        // Removing the only service leaves a config the parser rejects: the change is refused.
        let e = err(p);
        assert_eq!(e.status, 400, "{:?}", e.body);
    }

    #[test]
    fn api_adds_obey_the_rules_between_services() {
        let cfg = default_config();
        let cases = [
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"x","vip":"127.0.0.1:9999","backends":[{"address":"127.0.0.1:9876"}]}"#,
                ),
                "could not be told apart",
            ),
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"x","vip":"224.0.0.1:53","backends":[{"address":"127.0.0.1:53"}]}"#,
                ),
                "multicast",
            ),
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"x","vip":"255.255.255.255:53","backends":[{"address":"127.0.0.1:53"}]}"#,
                ),
                "broadcast",
            ),
        ];
        for (r, needle) in cases {
            let e = err(plan(&r, &cfg));
            assert_eq!(e.status, 400, "{}: {:?}", r.path, e.body);
            assert!(
                e.body.to_string().contains(needle),
                "{needle:?} missing: {:?}",
                e.body
            );
        }
        // A backend added to a second local service that the first already has.
        let mut two = cfg.clone();
        let mut other = two.services[0].clone();
        other.name = "other".into();
        other.vip = "127.0.0.1:9999".parse().expect("literal");
        other.backends.truncate(1);
        other.backends[0].address = "127.0.0.1:9000".parse().expect("literal");
        two.services.push(other);
        let e = err(plan(
            &req(
                "POST",
                "/v1/services/other/backends",
                r#"{"address":"127.0.0.1:9877"}"#,
            ),
            &two,
        ));
        assert_eq!(e.status, 400, "{:?}", e.body);
        assert!(
            e.body.to_string().contains("could not be told apart"),
            "{:?}",
            e.body
        );
    }

    #[test]
    fn bad_requests_get_specific_errors() {
        let cfg = default_config();
        let cases = [
            (req("GET", "/metrics", ""), 404, "/v1/"),
            (req("PUT", "/v1/services", ""), 405, "not an API call"),
            (
                req("PATCH", "/v1/services/demo/backends/127.0.0.1:9876", "{}"),
                400,
                "nothing to change",
            ),
            (
                req(
                    "PATCH",
                    "/v1/services/demo/backends/127.0.0.1:9876",
                    r#"{"weight":70000}"#,
                ),
                400,
                "70000",
            ),
            (req("GET", "/v1/services/other/backends", ""), 404, "other"),
            (
                req(
                    "POST",
                    "/v1/services/demo/backends",
                    r#"{"address":"127.0.0.1:9876"}"#,
                ),
                409,
                "already has",
            ),
        ];
        for (r, status, needle) in cases {
            let e = err(plan(&r, &cfg));
            assert_eq!(e.status, status, "{} {}: {:?}", r.method, r.path, e.body);
            assert!(
                e.body.to_string().contains(needle),
                "{} {}: {:?}",
                r.method,
                r.path,
                e.body
            );
        }
    }
}
