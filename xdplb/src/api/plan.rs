//! What an API request does to the config, decided with no I/O.
//!
//! A change is made to the typed [`Config`] and validated there with every rule of the config
//! file ([`config::check`]); no TOML text is written or parsed for it. A service or backend
//! that a request adds arrives in the form of its table in the config file (the JSON form of a
//! `[[service]]` or `[[service.backend]]` table, read by the file's own schema), so the API can
//! say everything the file can and the two cannot drift. The plan also says how to make the
//! change in the operator's file ([`ConfigEdit`]).

use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Request, Response};
use crate::config::{self, Config, ConfigEdit};

/// What a request does.
// One is built per API request and moved once into the daemon's answer: boxing the change to
// shrink the enum would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Plan {
    /// Answer from the daemon's live state (status with counters and health).
    Status,
    /// `GET /v1/node`: what the node announces, from the daemon's live state.
    Node,
    /// A read answered from the config alone.
    Read(Value),
    /// A validated new config, the same change as an edit of the config file, what changed
    /// (for the log), and the answer to give once it is applied.
    Change {
        next: Config,
        edit: ConfigEdit,
        what: String,
        answer: Value,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendPatch {
    weight: Option<i64>,
    drain: Option<bool>,
}

/// Where validation errors of an API change say they come from.
const ORIGIN: &str = "the change";

fn bad(msg: impl Into<String>) -> Response {
    Response::error(400, msg)
}

fn json_body(req: &Request) -> Result<Value, Response> {
    serde_json::from_slice(&req.body).map_err(|e| bad(format!("request body: {e}")))
}

/// The complete service as the daemon holds it, every default filled in: the JSON form of its
/// `[[service]]` table.
fn services_json(cfg: &Config) -> Value {
    Value::Array(cfg.services.iter().map(config::service_json).collect())
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
            "invalid backend address {s:?}: expected IPV4:PORT such as \"10.0.0.1:53\" or [IPV6]:PORT such as \"[2001:db8::1]:53\""
        ))
    })
}

/// `next` checked with every rule of the config file.
fn validated(next: &Config) -> Result<Config, Response> {
    config::check(next, ORIGIN).map_err(|e| bad(config::change_error_message(&e)))
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
        ("GET", ["v1", "node"]) => Ok(Plan::Node),
        ("POST", ["v1", "node", verb @ ("drain" | "undrain")]) => {
            let drained = *verb == "drain";
            let Some(announce) = cfg.announce else {
                return Err(Response::error(
                    409,
                    "this config has no [announce] section, so the node announces nothing to drain; add `[announce]` with `table = ID` to announce the VIPs",
                ));
            };
            let mut next = cfg.clone();
            next.announce = Some(config::Announce {
                drained,
                ..announce
            });
            let what = if drained {
                "drained the node (every VIP withdrawn)"
            } else {
                "undrained the node (VIPs announced again where they qualify)"
            };
            Ok(Plan::Change {
                next: validated(&next)?,
                edit: ConfigEdit::SetDrained(drained),
                answer: json!({ "ok": true, "change": what }),
                what: what.to_owned(),
            })
        }
        ("GET", ["v1", "services"]) => Ok(Plan::Read(services_json(cfg))),
        // The applied config whole, as TOML that `config::parse` reads back: for `xdplb
        // explain`, `list` and `reload --dry-run`, which read it with the daemon's own code.
        ("GET", ["v1", "config"]) => Ok(Plan::Read(json!({ "toml": config::to_toml(cfg) }))),
        ("GET", ["v1", "services", name]) => {
            let i = find(name)?;
            Ok(Plan::Read(config::service_json(&cfg.services[i])))
        }
        ("POST", ["v1", "services"]) => {
            let body = json_body(req)?;
            if let Some(name) = body.get("name").and_then(Value::as_str)
                && cfg.services.iter().any(|s| s.name == name)
            {
                return Err(Response::error(
                    409,
                    format!("service {name:?} already exists"),
                ));
            }
            let next = config::with_service_from_json(cfg, &body, ORIGIN)
                .map_err(|e| bad(config::change_error_message(&e)))?;
            let Some(svc) = next.services.last().cloned() else {
                return Err(Response::error(500, "the new service went missing"));
            };
            Ok(Plan::Change {
                what: format!("added service {:?}", svc.name),
                answer: json!({ "ok": true, "change": format!("added service {:?}", svc.name), "service": config::service_json(&svc) }),
                edit: ConfigEdit::AddService(svc),
                next,
            })
        }
        ("DELETE", ["v1", "services", name]) => {
            let i = find(name)?;
            let mut next = cfg.clone();
            next.services.remove(i);
            let what = format!("removed service {name:?}");
            Ok(Plan::Change {
                next: validated(&next)?,
                edit: ConfigEdit::RemoveService {
                    name: (*name).to_owned(),
                },
                answer: json!({ "ok": true, "change": what }),
                what,
            })
        }
        ("GET", ["v1", "services", name, "backends"]) => {
            let i = find(name)?;
            Ok(Plan::Read(
                config::service_json(&cfg.services[i])["backend"].clone(),
            ))
        }
        ("POST", ["v1", "services", name, "backends"]) => {
            let i = find(name)?;
            let body = json_body(req)?;
            if let Some(a) = body.get("address").and_then(Value::as_str)
                && let Ok(addr) = a.parse::<SocketAddr>()
                && cfg.services[i].backends.iter().any(|b| b.address == addr)
            {
                return Err(Response::error(
                    409,
                    format!("service {name:?} already has backend {addr}"),
                ));
            }
            let next = config::with_backend_from_json(cfg, i, &body, ORIGIN)
                .map_err(|e| bad(config::change_error_message(&e)))?;
            let svc = &next.services[i];
            let Some(backend) = svc.backends.last().cloned() else {
                return Err(Response::error(500, "the new backend went missing"));
            };
            let what = format!("added backend {} to {name:?}", backend.address);
            Ok(Plan::Change {
                answer: json!({ "ok": true, "change": what, "service": config::service_json(svc) }),
                edit: ConfigEdit::AddBackend {
                    service: (*name).to_owned(),
                    backend,
                },
                what,
                next,
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
            let (what, edit) = if method == "DELETE" {
                next.services[i].backends.remove(j);
                (
                    format!("removed backend {addr} from {name:?}"),
                    ConfigEdit::RemoveBackend {
                        service: (*name).to_owned(),
                        address: addr,
                    },
                )
            } else {
                let patch: BackendPatch = serde_json::from_slice(&req.body)
                    .map_err(|e| bad(format!("request body: {e}")))?;
                if patch.weight.is_none() && patch.drain.is_none() {
                    return Err(bad("nothing to change: give \"weight\" and/or \"drain\""));
                }
                let b = &mut next.services[i].backends[j];
                let new_weight = weight(patch.weight, b.weight)?;
                b.weight = new_weight;
                b.drain = patch.drain.unwrap_or(b.drain);
                (
                    format!(
                        "backend {addr} of {name:?}: weight {}, drain {}",
                        b.weight, b.drain
                    ),
                    ConfigEdit::SetBackend {
                        service: (*name).to_owned(),
                        address: addr,
                        weight: patch.weight.map(|_| new_weight),
                        drain: patch.drain,
                    },
                )
            };
            let next = validated(&next)?;
            Ok(Plan::Change {
                answer: json!({ "ok": true, "change": what, "service": config::service_json(&next.services[i]) }),
                next,
                edit,
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
        let Ok(Plan::Change {
            next, what, edit, ..
        }) = p
        else {
            panic!("a change expected: {p:?}")
        };
        assert!(next.services[0].backends[1].drain);
        assert!(
            what.contains("127.0.0.1:9877") && what.contains("drain true"),
            "{what}"
        );
        assert_eq!(
            edit,
            ConfigEdit::SetBackend {
                service: "demo".into(),
                address: "127.0.0.1:9877".parse().expect("literal"),
                weight: None,
                drain: Some(true),
            }
        );
        let p = plan(&req("DELETE", "/v1/services/demo", ""), &cfg);
        // Removing the only service leaves a config the validator rejects: the change is refused.
        let e = err(p);
        assert_eq!(e.status, 400, "{:?}", e.body);
    }

    /// IPv6 services and backends are added, changed and removed through the API with
    /// bracketed addresses, in bodies and in paths.
    #[test]
    fn ipv6_services_and_backends_go_through_the_api() {
        let cfg = default_config();
        let p = plan(
            &req(
                "POST",
                "/v1/services",
                r#"{"name":"v6","vip":"[::1]:9975","backend":[{"address":"[::1]:9976"}]}"#,
            ),
            &cfg,
        );
        let Ok(Plan::Change { next, .. }) = p else {
            panic!("a change expected: {p:?}")
        };
        let v6 = &next.services[1];
        assert_eq!(v6.vip, "[::1]:9975".parse().expect("literal"));
        let p = plan(
            &req(
                "POST",
                "/v1/services/v6/backends",
                r#"{"address":"[::1]:9977","weight":3}"#,
            ),
            &next,
        );
        let Ok(Plan::Change { next, what, .. }) = p else {
            panic!("a change expected: {p:?}")
        };
        assert!(what.contains("[::1]:9977"), "{what}");
        assert_eq!(next.services[1].backends[1].weight, 3);
        let p = plan(
            &req(
                "PATCH",
                "/v1/services/v6/backends/[::1]:9977",
                r#"{"drain":true}"#,
            ),
            &next,
        );
        let Ok(Plan::Change { next, edit, .. }) = p else {
            panic!("a change expected: {p:?}")
        };
        assert!(next.services[1].backends[1].drain);
        assert_eq!(
            edit,
            ConfigEdit::SetBackend {
                service: "v6".into(),
                address: "[::1]:9977".parse().expect("literal"),
                weight: None,
                drain: Some(true),
            }
        );
        let p = plan(
            &req("DELETE", "/v1/services/v6/backends/[::1]:9977", ""),
            &next,
        );
        let Ok(Plan::Change { next, .. }) = p else {
            panic!("a change expected: {p:?}")
        };
        assert_eq!(next.services[1].backends.len(), 1);
        let p = plan(&req("GET", "/v1/services/v6", ""), &next);
        let Ok(Plan::Read(body)) = p else {
            panic!("a read expected: {p:?}")
        };
        assert_eq!(body["vip"], "[::1]:9975", "{body}");
        assert_eq!(body["backend"][0]["address"], "[::1]:9976", "{body}");
    }

    #[test]
    fn api_adds_obey_the_rules_between_services() {
        let cfg = default_config();
        let cases = [
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"x","vip":"127.0.0.1:9999","backend":[{"address":"127.0.0.1:9876"}]}"#,
                ),
                "could not be told apart",
            ),
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"x","vip":"224.0.0.1:53","backend":[{"address":"127.0.0.1:53"}]}"#,
                ),
                "multicast",
            ),
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"x","vip":"255.255.255.255:53","backend":[{"address":"127.0.0.1:53"}]}"#,
                ),
                "broadcast",
            ),
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"x","vip":"[2001:db8::1]:53","backend":[{"address":"127.0.0.1:53"}]}"#,
                ),
                "is IPv4 but the service's vip [2001:db8::1]:53 is IPv6",
            ),
            (
                req(
                    "POST",
                    "/v1/services/demo/backends",
                    r#"{"address":"[::1]:9876"}"#,
                ),
                "is IPv6 but the service's vip 127.0.0.1:9875 is IPv4",
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
            assert!(
                !e.body.to_string().contains("(line"),
                "an API error has no file line: {:?}",
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
            (
                req(
                    "POST",
                    "/v1/services/demo/backends",
                    r#"{"address":"127.0.0.1:9879","colour":1}"#,
                ),
                400,
                "colour",
            ),
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"demo","vip":"127.0.0.1:9875","backend":[]}"#,
                ),
                409,
                "already exists",
            ),
            (
                req(
                    "POST",
                    "/v1/services",
                    r#"{"name":"x","vip":"127.0.0.1:9990","schedular":"random","backend":[{"address":"127.0.0.1:1"}]}"#,
                ),
                400,
                "schedular",
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

    /// A service added through the API with every field is the service the same table in the
    /// file gives, and the API shows it back in that form.
    #[test]
    fn a_service_from_the_api_is_the_service_from_the_file() {
        let table = r#"
name = "full"
vip = "10.9.0.1:53"
protocol = "udp"
flow_idle_timeout = "45s"
scheduler = "maglev"
hash = "source-ip-port"
maglev_table_size = 1009
when_all_down = "pass"
forwarding = "fullnat"
fullnat_source = "10.86.0.1"
fullnat_ports = "30000-30999"

[health_check]
type = "udp"
interval = "2s"
timeout = "300ms"
rise = 3
fall = 4
port = 5353
payload_hex = "abcd0100000100000000000003777777"
expect_hex = "abcd"
on_failure = "move-flows"

[[backend]]
address = "10.0.0.1:53"
weight = 3

[[backend]]
address = "10.0.0.2:53"
drain = true
"#;
        let json_body: Value =
            serde_json::to_value(toml::from_str::<toml::Table>(table).expect("the table parses"))
                .expect("as JSON");
        let cfg = default_config();
        let p = plan(&req("POST", "/v1/services", &json_body.to_string()), &cfg);
        let Ok(Plan::Change { next, answer, .. }) = p else {
            panic!("a change expected: {p:?}")
        };
        let mut file = config::to_toml(&cfg);
        file.push_str("\n[[service]]\n");
        file.push_str(
            &table
                .replace("[health_check]", "[service.health_check]")
                .replace("[[backend]]", "[[service.backend]]"),
        );
        let from_file = config::parse(&file, "file").expect("the file parses");
        assert_eq!(next, from_file);
        let shown = &answer["service"];
        assert_eq!(shown["name"], "full");
        assert_eq!(
            shown["health_check"]["payload_hex"],
            "abcd0100000100000000000003777777"
        );
        assert_eq!(shown["backend"][1]["drain"], true);
        assert_eq!(shown["backend"][1]["weight"], 1, "defaults filled in");
        // And the shown form goes back in unchanged: it is the table's own schema.
        let mut again = json_body.clone();
        again["name"] = "full".into();
        let listed = plan(&req("GET", "/v1/services", ""), &next);
        let Ok(Plan::Read(list)) = listed else {
            panic!("a read expected")
        };
        assert_eq!(&list[1], shown);
    }
}
