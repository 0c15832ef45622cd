//! Prometheus metrics over HTTP (`GET /metrics`), served by the daemon when `metrics_listen`
//! is set. Each scrape reads the data plane's per-CPU counters afresh.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

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

/// Serves `GET /metrics` on `listener` until the process ends. One request at a time; a client
/// that stalls is dropped after two seconds.
pub fn serve(listener: TcpListener, shared: Arc<Mutex<MetricsState>>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let state = match shared.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Err(e) = answer(&mut conn, &state) {
            log::debug!("metrics: {e}");
        }
    }
}

fn answer(conn: &mut TcpStream, state: &MetricsState) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..len]);
    let path = request
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split_whitespace().next());
    let (status, body, kind) = match path {
        Some("/metrics") => match stats::read(&state.instance) {
            Ok(snap) => (
                "200 OK",
                render(&snap, state),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            Err(e) => (
                "500 Internal Server Error",
                format!("reading counters: {e}\n"),
                "text/plain",
            ),
        },
        _ => (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
            "text/plain",
        ),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
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
    family(
        &mut o,
        "xdplb_packets_total",
        "counter",
        "Packets seen by the XDP program, by verdict and reason.",
    );
    family(
        &mut o,
        "xdplb_events_total",
        "counter",
        "Flow-table and reply-path events.",
    );
    let mut events = String::new();
    for ((name, value), stat) in snap.counters.iter().zip(Stat::ALL) {
        match stat {
            Stat::Forwarded | Stat::ForwardedFib => {
                let _ = writeln!(
                    o,
                    "xdplb_packets_total{{verdict=\"forward\",reason=\"{name}\"}} {value}"
                );
            }
            _ if name.starts_with("pass_") => {
                let _ = writeln!(
                    o,
                    "xdplb_packets_total{{verdict=\"pass\",reason=\"{}\"}} {value}",
                    &name[5..]
                );
            }
            _ if name.starts_with("drop_") => {
                let _ = writeln!(
                    o,
                    "xdplb_packets_total{{verdict=\"drop\",reason=\"{}\"}} {value}",
                    &name[5..]
                );
            }
            _ => {
                let _ = writeln!(events, "xdplb_events_total{{event=\"{name}\"}} {value}");
            }
        }
    }
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
