//! Prometheus metrics (`GET /metrics`, served by [`crate::http::metrics_router`] when
//! `metrics_listen` is set). Each scrape reads the data plane's per-CPU counters afresh.

use std::fmt::Write as _;

use xdplb_common::Stat;

use crate::{
    instance::InstanceState,
    stats::{self, Snapshot},
};

/// What a scrape needs besides the maps: the instance description and the last apply.
#[derive(Debug, Clone)]
pub struct MetricsState {
    pub instance: InstanceState,
    /// How long the last successful config apply took.
    pub last_apply_seconds: f64,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics in the Prometheus text format.
pub fn render(snap: &Snapshot, state: &MetricsState) -> String {
    let mut o = String::new();
    type Field = fn(&stats::TrafficRow) -> u64;
    let traffic: [(&str, &str, Field); 3] = [
        ("packets", "Packets sent to", |t| t.packets),
        ("bytes", "Bytes (Ethernet frames) sent to", |t| t.bytes),
        ("flows", "New flows scheduled to", |t| t.flows),
    ];
    for (what, help, get) in traffic {
        let name = format!("xdplb_service_{what}_total");
        family(
            &mut o,
            &name,
            "counter",
            &format!("{help} the service's backends."),
        );
        for s in &snap.services {
            let t = &s.traffic;
            let _ = writeln!(
                o,
                "{name}{{service=\"{}\",vip=\"{}\"}} {}",
                t.name,
                t.address,
                get(t)
            );
        }
        let name = format!("xdplb_backend_{what}_total");
        family(&mut o, &name, "counter", &format!("{help} the backend."));
        for s in &snap.services {
            for b in &s.backends {
                let _ = writeln!(
                    o,
                    "{name}{{service=\"{}\",backend=\"{}\"}} {}",
                    s.traffic.name,
                    b.address,
                    get(b)
                );
            }
        }
    }
    family(
        &mut o,
        "xdplb_backend_up",
        "gauge",
        "1 if the backend's health check passes, 0 if not (health-checked backends only).",
    );
    for s in &snap.services {
        for b in &s.backends {
            if let Some(h) = &b.health {
                let _ = writeln!(
                    o,
                    "xdplb_backend_up{{service=\"{}\",backend=\"{}\"}} {}",
                    s.traffic.name,
                    b.address,
                    u8::from(h == "up")
                );
            }
        }
    }
    // Two families from one counter array: each is written as one group (HELP, TYPE, then
    // its samples), or parsers read the samples that follow another family's TYPE as untyped.
    let (mut packets, mut events) = (String::new(), String::new());
    for ((name, value), stat) in snap.counters.iter().zip(Stat::ALL) {
        let verdict = match stat {
            Stat::Forwarded | Stat::ForwardedFib => Some(("forward", name.as_str())),
            _ => name
                .strip_prefix("pass_")
                .map(|r| ("pass", r))
                .or_else(|| name.strip_prefix("drop_").map(|r| ("drop", r))),
        };
        let _ = match verdict {
            Some((verdict, reason)) => writeln!(
                packets,
                "xdplb_packets_total{{verdict=\"{verdict}\",reason=\"{reason}\"}} {value}"
            ),
            None => writeln!(events, "xdplb_events_total{{event=\"{name}\"}} {value}"),
        };
    }
    family(
        &mut o,
        "xdplb_packets_total",
        "counter",
        "Packets seen by the XDP program, by verdict and reason.",
    );
    o.push_str(&packets);
    family(
        &mut o,
        "xdplb_events_total",
        "counter",
        "Flow-table and reply-path events.",
    );
    o.push_str(&events);
    let f = &snap.flow_table;
    for (name, kind, help, value) in [
        (
            "xdplb_flow_table_entries",
            "gauge",
            "Flows in the flow table.",
            f.entries,
        ),
        (
            "xdplb_flow_table_capacity",
            "gauge",
            "Capacity of the flow table.",
            u64::from(f.capacity),
        ),
        (
            "xdplb_flow_table_evictions_total",
            "counter",
            "Flows evicted to make room (inserts minus entries).",
            f.evictions,
        ),
        (
            "xdplb_config_generation",
            "gauge",
            "Config changes applied since start, by reload or API (0 = the config loaded at start).",
            state.instance.generation,
        ),
    ] {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {value}");
    }
    family(
        &mut o,
        "xdplb_config_last_apply_duration_seconds",
        "gauge",
        "How long the last successful config apply took.",
    );
    let _ = writeln!(
        o,
        "xdplb_config_last_apply_duration_seconds {}",
        state.last_apply_seconds
    );
    family(
        &mut o,
        "xdplb_config_last_reload_success",
        "gauge",
        "1 if the last reload was applied (or none was attempted), 0 if it was rejected.",
    );
    let ok = state.instance.last_reload.as_ref().is_none_or(|r| r.ok);
    let _ = writeln!(o, "xdplb_config_last_reload_success {}", u8::from(ok));
    for (name, help, value) in [
        (
            "xdplb_veth_tx_dropped_total",
            "Increase of a veth's tx_dropped since the daemon started (veths of its network namespace).",
            (|v: &crate::veth::VethReport| v.tx_dropped) as fn(&crate::veth::VethReport) -> u64,
        ),
        (
            "xdplb_veth_rx_dropped_total",
            "Increase of a veth's rx_dropped since the daemon started; a failed XDP_REDIRECT (target veth's peer without NAPI) is counted here on Linux 6.18.",
            |v| v.rx_dropped,
        ),
        (
            "xdplb_veth_xdp_redirect_blocked",
            "1 if the veth cannot take XDP_REDIRECT/XDP_TX frames (its peer has no NAPI: GRO off and no XDP program), 0 if it can.",
            |v| u64::from(v.accepts_xdp_redirect == Some(false)),
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        family(&mut o, name, kind, help);
        for (interface, v) in &state.instance.veths {
            let _ = writeln!(o, "{name}{{interface=\"{interface}\"}} {}", value(v));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{FlowTable, ServiceRow, TrafficRow};

    fn row(name: &str, address: &str, health: Option<&str>) -> TrafficRow {
        TrafficRow {
            name: name.into(),
            address: address.into(),
            packets: 3,
            bytes: 300,
            flows: 1,
            health: health.map(Into::into),
        }
    }

    fn rendered() -> String {
        let snap = Snapshot {
            instance: "t".into(),
            pid: 1,
            interfaces: vec!["lo".into()],
            services: vec![ServiceRow {
                traffic: row("dns", "192.0.2.1:53", None),
                backends: vec![
                    row("dns", "10.0.0.1:53", Some("up")),
                    row("dns", "10.0.0.2:53", Some("down")),
                ],
            }],
            counters: Stat::ALL
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name().to_string(), i as u64))
                .collect(),
            flow_table: FlowTable {
                entries: 5,
                capacity: 1024,
                inserts: 7,
                evictions: 2,
            },
            veths: Default::default(),
        };
        let state = MetricsState {
            instance: InstanceState {
                instance: "t".into(),
                pid: 1,
                config: "test.toml".into(),
                interfaces: Vec::new(),
                map_ids: Default::default(),
                services: Vec::new(),
                generation: 4,
                reloads: 0,
                last_reload: None,
                veths: Default::default(),
            },
            last_apply_seconds: 0.25,
        };
        render(&snap, &state)
    }

    /// The family a line belongs to: the name in `# HELP NAME` / `# TYPE NAME`, or the sample's
    /// metric name.
    fn family_of(line: &str) -> &str {
        let rest = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "));
        match rest {
            Some(r) => r.split(' ').next().unwrap_or(r),
            None => line.split(['{', ' ']).next().unwrap_or(line),
        }
    }

    #[test]
    fn each_family_is_one_contiguous_group_of_help_type_and_samples() {
        let text = rendered();
        // Split the text into runs of lines of one family.
        let mut runs: Vec<(&str, Vec<&str>)> = Vec::new();
        for line in text.lines() {
            let f = family_of(line);
            match runs.last_mut() {
                Some((name, lines)) if *name == f => lines.push(line),
                _ => runs.push((f, vec![line])),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (name, lines) in &runs {
            assert!(
                seen.insert(*name),
                "family {name} appears in more than one group:\n{text}"
            );
            assert!(
                lines[0].starts_with(&format!("# HELP {name} "))
                    && lines
                        .get(1)
                        .is_some_and(|l| l.starts_with(&format!("# TYPE {name} "))),
                "family {name} does not start with HELP then TYPE: {lines:?}"
            );
            assert!(
                lines[2..].iter().all(|l| !l.starts_with('#')),
                "family {name} has comments among its samples: {lines:?}"
            );
        }
        for name in ["xdplb_packets_total", "xdplb_events_total"] {
            let (_, lines) = runs
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no family {name}:\n{text}"));
            assert!(lines.len() > 2, "{name} has no samples: {lines:?}");
        }
        assert!(
            text.contains("xdplb_packets_total{verdict=\"forward\",reason=\"forwarded\"} 0"),
            "{text}"
        );
    }
}
