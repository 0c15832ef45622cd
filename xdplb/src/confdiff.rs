//! What differs between two configs, as lines an operator reads: services and backends added,
//! removed or changed, field by field. `xdplb reload` prints it for what it applied and
//! `xdplb reload --dry-run` for what it would apply. Fields are compared in the JSON form of
//! their `[[service]]` tables ([`config::service_json`]), so every field the file can hold is
//! covered, under the name the file gives it.

use serde_json::Value;

use crate::config::{self, Config};

/// The differences from `old` to `new`, one line each; empty when they are the same.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let globals = |c: &Config| {
        [
            ("interfaces", format!("{:?}", c.interfaces)),
            ("xdp_mode", c.xdp_mode.to_string()),
            ("debug_log", c.debug_log.to_string()),
            ("hash_seed", format!("{:#010x}", c.hash_seed)),
            ("flow_guard_rate", c.flow_guard_rate.to_string()),
            ("metrics_listen", format!("{:?}", c.metrics_listen)),
            ("api_listen", format!("{:?}", c.api_listen)),
            ("[limits]", format!("{:?}", c.limits)),
            (
                "[announce]",
                c.announce.map_or("none".to_owned(), |a| {
                    format!("table {}, drained {}", a.table, a.drained)
                }),
            ),
        ]
    };
    for ((field, a), (_, b)) in globals(old).into_iter().zip(globals(new)) {
        if a != b {
            out.push(format!("{field}: {a} -> {b}"));
        }
    }
    for svc in &old.services {
        if !new.services.iter().any(|s| s.name == svc.name) {
            out.push(format!(
                "service {:?} removed ({}, {} backend(s))",
                svc.name,
                svc.vip,
                svc.backends.len()
            ));
        }
    }
    for svc in &new.services {
        let Some(before) = old.services.iter().find(|s| s.name == svc.name) else {
            out.push(format!(
                "service {:?} added ({} {}, {}, {}, {} backend(s))",
                svc.name,
                svc.vip,
                svc.protocol,
                svc.forwarding,
                svc.scheduler,
                svc.backends.len()
            ));
            continue;
        };
        let (mut a, mut b) = (config::service_json(before), config::service_json(svc));
        let (ba, bb) = (take_backends(&mut a), take_backends(&mut b));
        for (field, x, y) in fields_changed(&a, &b) {
            out.push(format!("service {:?}: {field}: {x} -> {y}", svc.name));
        }
        for old_b in &ba {
            let addr = &old_b["address"];
            if !bb.iter().any(|n| &n["address"] == addr) {
                out.push(format!(
                    "service {:?}: backend {} removed",
                    svc.name,
                    text(addr)
                ));
            }
        }
        for new_b in &bb {
            let addr = &new_b["address"];
            match ba.iter().find(|o| &o["address"] == addr) {
                None => out.push(format!(
                    "service {:?}: backend {} added (weight {}{})",
                    svc.name,
                    text(addr),
                    text(&new_b["weight"]),
                    if new_b["drain"] == Value::Bool(true) {
                        ", drained"
                    } else {
                        ""
                    }
                )),
                Some(old_b) => {
                    for (field, x, y) in fields_changed(old_b, new_b) {
                        out.push(format!(
                            "service {:?}: backend {}: {field}: {x} -> {y}",
                            svc.name,
                            text(addr)
                        ));
                    }
                }
            }
        }
    }
    out
}

fn take_backends(v: &mut Value) -> Vec<Value> {
    match v.as_object_mut().and_then(|o| o.remove("backend")) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// A scalar as the config file writes it (strings without quotes); "(unset)" for none.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `(field, old, new)` for every top-level field of two JSON objects that differs; nested
/// tables (the health check) are compared field by field as `table.field`.
fn fields_changed(a: &Value, b: &Value) -> Vec<(String, String, String)> {
    let empty = serde_json::Map::new();
    let (oa, ob) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = oa.keys().chain(ob.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (
            oa.get(k).unwrap_or(&Value::Null),
            ob.get(k).unwrap_or(&Value::Null),
        );
        if x == y {
            continue;
        }
        if x.is_object() && y.is_object() {
            for (f, p, q) in fields_changed(x, y) {
                out.push((format!("{k}.{f}"), p, q));
            }
        } else if x.is_object() || y.is_object() {
            let show = |v: &Value| {
                if v.is_null() {
                    "(none)".to_string()
                } else {
                    "set".to_string()
                }
            };
            out.push((k.clone(), show(x), show(y)));
        } else {
            out.push((k.clone(), text(x), text(y)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        config::parse(text, "test").expect("valid")
    }

    const BASE: &str = r#"interfaces = ["lo"]
[[service]]
name = "dns"
vip = "10.0.0.1:53"
[[service.backend]]
address = "10.1.0.1:53"
[[service.backend]]
address = "10.1.0.2:53"
"#;

    #[test]
    fn the_same_config_has_no_difference() {
        assert_eq!(diff(&cfg(BASE), &cfg(BASE)), Vec::<String>::new());
    }

    #[test]
    fn every_kind_of_change_is_named() {
        let next = BASE
            .replace(
                "vip = \"10.0.0.1:53\"",
                "vip = \"10.0.0.1:53\"\nscheduler = \"round-robin\"",
            )
            .replace(
                "address = \"10.1.0.2:53\"",
                "address = \"10.1.0.3:53\"\nweight = 2\n[[service.backend]]\naddress = \"10.1.0.1:54\"\ndrain = true",
            )
            .replace(
                "address = \"10.1.0.1:53\"",
                "address = \"10.1.0.1:53\"\nweight = 5",
            )
            + "[[service]]\nname = \"syslog\"\nvip = \"10.0.0.2:514\"\n[[service.backend]]\naddress = \"10.1.0.9:514\"\n";
        let lines = diff(&cfg(BASE), &cfg(&next));
        let expected = [
            "service \"dns\": scheduler: maglev -> round-robin",
            "service \"dns\": backend 10.1.0.2:53 removed",
            "service \"dns\": backend 10.1.0.1:53: weight: 1 -> 5",
            "service \"dns\": backend 10.1.0.3:53 added (weight 2)",
            "service \"dns\": backend 10.1.0.1:54 added (weight 1, drained)",
            "service \"syslog\" added (10.0.0.2:514 udp, local, maglev, 1 backend(s))",
        ];
        for e in expected {
            assert!(
                lines.iter().any(|l| l == e),
                "{e:?} missing from {lines:#?}"
            );
        }
        // Round robin takes no hash fields, no Maglev table and no flow_stale_after: those go
        // too, and nothing else.
        assert_eq!(lines.len(), expected.len() + 3, "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("flow_stale_after: never -> (unset)")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("maglev_table_size: 65537 -> (unset)")),
            "{lines:#?}"
        );
        let back = diff(&cfg(&next), &cfg(BASE));
        assert!(
            back.iter()
                .any(|l| l == "service \"syslog\" removed (10.0.0.2:514, 1 backend(s))"),
            "{back:#?}"
        );
        let seeded = diff(&cfg(BASE), &cfg(&format!("hash_seed = 7\n{BASE}")));
        assert_eq!(
            seeded,
            ["hash_seed: 0x5eed1b1b -> 0x00000007"],
            "{seeded:#?}"
        );
    }
}
