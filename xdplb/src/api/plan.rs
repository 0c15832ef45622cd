//! What an API request does to the config, decided with no I/O.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Request, Response};
use crate::config::{self, BackendConfig, Config};

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
                    "scheduler": s.scheduler.as_str(),
                    "flow_idle_timeout": humantime::format_duration(s.flow_idle_timeout).to_string(),
                    "health_check": s.health_check.as_ref().map(|h| h.kind.kind().as_str()),
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

fn address(s: &str) -> Result<SocketAddr, Response> {
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
