//! `xdplb list`: one listing of the whole state, in the style of `ipvsadm -Ln`: every service
//! with its VIP, forwarding mode, scheduler and policy, and under it every backend with its
//! weight, drain and health marks and its counters.

use serde::Serialize;
use xdplb_common::{Counter, MAP_BACKEND_STATS, MAP_SERVICE_STATS};

use crate::{
    dataplane,
    flows::{self, ReadMethod},
    stats::{self, StatsError},
    view::{InstanceView, ServiceFacts, ServiceSummary},
};

#[derive(Debug, Clone, Serialize)]
pub struct ListedBackend {
    pub address: String,
    pub weight: u16,
    pub drain: bool,
    /// "up" or "down" for a health-checked backend; `None` without a check, or without a
    /// daemon (unknown).
    pub health: Option<String>,
    /// The marks in one word: `up`, `down`, `drain`, `down+drain`, `-` (not checked) or `?`
    /// (no daemon to say).
    pub state: String,
    /// Whether the backend is in the data plane (a backend down with `on_failure =
    /// "move-flows"` is left out).
    pub in_dataplane: bool,
    pub packets: u64,
    pub bytes: u64,
    /// New flows scheduled to it.
    pub flows: u64,
    /// Flows in the table now, idle less than the service's timeout.
    pub active_flows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListedService {
    #[serde(flatten)]
    pub service: ServiceSummary,
    pub flow_idle_timeout_s: u64,
    /// `reconcile::table_fingerprint`: equal on the nodes that pick the same backends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_fingerprint: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
    pub active_flows: u64,
    pub backends: Vec<ListedBackend>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub instance: String,
    pub daemon_running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub pid: u32,
    pub interfaces: Vec<String>,
    pub services: Vec<ListedService>,
    pub flow_table_read: ReadMethod,
}

/// Reads the counters and the flow table of `view` for `services`.
pub fn build(view: &InstanceView, services: &[ServiceFacts]) -> Result<Listing, StatsError> {
    let state = &view.state;
    let per_service = stats::open_percpu::<Counter>(state, MAP_SERVICE_STATS)?;
    let per_backend = stats::open_percpu::<Counter>(state, MAP_BACKEND_STATS)?;
    let (entries, read) = flows::read_table(state)?;
    let active = flows::active_per_backend(services, &entries, flows::monotonic_ns());
    let mut listed = Vec::new();
    for svc in services {
        let c = match svc.id {
            Some(id) => dataplane::sum(
                &per_service
                    .get(&id, 0)
                    .map_err(|e| stats::stale(state, MAP_SERVICE_STATS, e.to_string()))?,
            ),
            None => Counter::default(),
        };
        let mut backends = Vec::new();
        for b in &svc.backends {
            let bc = match b.index {
                Some(index) => dataplane::sum(
                    &per_backend
                        .get(&index, 0)
                        .map_err(|e| stats::stale(state, MAP_BACKEND_STATS, e.to_string()))?,
                ),
                None => Counter::default(),
            };
            let active_flows = match (svc.id, b.index) {
                (Some(s), Some(i)) => active.get(&(s, i)).copied().unwrap_or(0),
                _ => 0,
            };
            backends.push(ListedBackend {
                state: marks(
                    view.running(),
                    svc.summary.health_check.is_some(),
                    b.health.as_deref(),
                    b.drain,
                ),
                address: b.address.clone(),
                weight: b.weight,
                drain: b.drain,
                health: b.health.clone(),
                in_dataplane: b.index.is_some(),
                packets: bc.packets,
                bytes: bc.bytes,
                flows: bc.flows,
                active_flows,
            });
        }
        listed.push(ListedService {
            service: svc.summary.clone(),
            flow_idle_timeout_s: svc.flow_idle_timeout_ns / 1_000_000_000,
            table_fingerprint: state
                .services
                .iter()
                .find(|s| s.name == svc.summary.name)
                .map(|s| s.table_fingerprint.clone())
                .filter(|f| !f.is_empty()),
            packets: c.packets,
            bytes: c.bytes,
            flows: c.flows,
            active_flows: backends.iter().map(|b| b.active_flows).sum(),
            backends,
        });
    }
    Ok(Listing {
        instance: state.instance.clone(),
        daemon_running: view.running(),
        note: view.offline.clone(),
        pid: state.pid,
        interfaces: state.interface_labels(),
        services: listed,
        flow_table_read: read,
    })
}

/// A backend's marks in one word, readable without colour.
fn marks(running: bool, checked: bool, health: Option<&str>, drain: bool) -> String {
    let health = match (running, checked, health) {
        (false, _, _) => Some("?"),
        (true, true, Some(h)) => Some(h),
        (true, true, None) => Some("?"),
        (true, false, _) => None,
    };
    match (health, drain) {
        (Some("up") | None, true) => "drain".to_string(),
        (Some(h), true) => format!("{h}+drain"),
        (Some(h), false) => h.to_string(),
        (None, false) => "-".to_string(),
    }
}

impl Listing {
    /// The widths of the vip and backend columns: at least 22 and 34, and room for the longest
    /// address; the backend column (after "  -> ") ends where the vip column does.
    fn address_widths(&self) -> (usize, usize) {
        let longest =
            |f: &dyn Fn(&ListedService) -> usize| self.services.iter().map(f).max().unwrap_or(0);
        let vip = longest(&|s| s.service.vip.chars().count());
        let backend = longest(&|s| {
            s.backends
                .iter()
                .map(|b| b.address.chars().count())
                .max()
                .unwrap_or(0)
        });
        let vip_width = vip.max(backend.saturating_sub(12)).max(22);
        (vip_width, vip_width + 12)
    }

    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if let Some(n) = &self.note {
            let _ = writeln!(out, "{n}");
        }
        let _ = writeln!(
            out,
            "instance {}{}, attached to {}",
            self.instance,
            if self.daemon_running {
                format!(" (pid {})", self.pid)
            } else {
                String::new()
            },
            if self.interfaces.is_empty() {
                "nothing".to_string()
            } else {
                self.interfaces.join(", ")
            }
        );
        // Services in the first columns, their backends under them indented by "  -> ";
        // the counters line up. The address columns widen for the longest address (an IPv6
        // one takes up to 47 characters): the vip column, and the backend column, which ends
        // where the vip column does.
        let (vip_width, backend_width) = self.address_widths();
        let head_width = 17 + vip_width;
        let _ = writeln!(
            out,
            "{:<head_width$} {:<5} {:<9} {:<12} {:<8} {:>12} {:>14} {:>9} {:>8}",
            "SERVICE          VIP:PORT",
            "PROTO",
            "MODE",
            "SCHEDULER",
            "ALL-DOWN",
            "PACKETS",
            "BYTES",
            "FLOWS",
            "ACTIVE"
        );
        let _ = writeln!(
            out,
            "  -> {:<backend_width$} {:<5} {:<9} {:<12} {:<8} {:>12} {:>14} {:>9} {:>8}",
            "BACKEND", "", "WEIGHT", "STATE", "", "PACKETS", "BYTES", "FLOWS", "ACTIVE"
        );
        for s in &self.services {
            let mut extra = Vec::new();
            if s.service.flow_state != "first-packet" {
                extra.push(format!("flow_state {}", s.service.flow_state));
            }
            if let Some(h) = &s.service.health_check {
                extra.push(format!("{h} check"));
            }
            if let Some(f) = &s.table_fingerprint {
                extra.push(format!("table {f}"));
            }
            let _ = writeln!(
                out,
                "{:<16} {:<vip_width$} {:<5} {:<9} {:<12} {:<8} {:>12} {:>14} {:>9} {:>8}{}",
                s.service.name,
                s.service.vip,
                s.service.protocol,
                s.service.forwarding,
                s.service.scheduler,
                s.service.when_all_down,
                s.packets,
                s.bytes,
                s.flows,
                s.active_flows,
                if extra.is_empty() {
                    String::new()
                } else {
                    format!("  {}", extra.join(", "))
                }
            );
            for b in &s.backends {
                let state = if b.in_dataplane {
                    b.state.clone()
                } else {
                    format!("{}(out)", b.state)
                };
                let _ = writeln!(
                    out,
                    "  -> {:<backend_width$} {:<5} {:<9} {:<12} {:<8} {:>12} {:>14} {:>9} {:>8}",
                    b.address, "", b.weight, state, "", b.packets, b.bytes, b.flows, b.active_flows
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::marks;

    #[test]
    fn marks_say_health_and_drain_in_words() {
        assert_eq!(marks(true, false, None, false), "-");
        assert_eq!(marks(true, false, None, true), "drain");
        assert_eq!(marks(true, true, Some("up"), false), "up");
        assert_eq!(marks(true, true, Some("up"), true), "drain");
        assert_eq!(marks(true, true, Some("down"), false), "down");
        assert_eq!(marks(true, true, Some("down"), true), "down+drain");
        assert_eq!(marks(false, true, None, true), "?+drain");
        assert_eq!(marks(false, false, None, false), "?");
    }

    /// An IPv6 service is listed with its bracketed vip and backends, and the counters still
    /// line up under their headings.
    #[test]
    fn ipv6_addresses_are_listed_whole_and_aligned() {
        use super::*;
        let backend = |address: &str| ListedBackend {
            address: address.into(),
            weight: 1,
            drain: false,
            health: None,
            state: "-".into(),
            in_dataplane: true,
            packets: 7,
            bytes: 700,
            flows: 3,
            active_flows: 1,
        };
        let service = |name: &str, vip: &str, backends: Vec<ListedBackend>| ListedService {
            service: ServiceSummary {
                name: name.into(),
                vip: vip.into(),
                protocol: "udp".into(),
                forwarding: "nat".into(),
                scheduler: "maglev".into(),
                when_all_down: "drop".into(),
                flow_state: "first-packet".into(),
                health_check: None,
            },
            flow_idle_timeout_s: 30,
            table_fingerprint: None,
            packets: 12345,
            bytes: 1,
            flows: 1,
            active_flows: 1,
            backends,
        };
        let listing = Listing {
            instance: "t".into(),
            daemon_running: true,
            note: None,
            pid: 1,
            interfaces: vec!["lo".into()],
            services: vec![
                service("v4", "10.0.0.1:53", vec![backend("10.1.0.1:53")]),
                service(
                    "v6",
                    "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:53",
                    vec![backend("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:53")],
                ),
            ],
            flow_table_read: ReadMethod::Iterated,
        };
        let text = listing.render();
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("SERVICE"))
            .collect();
        assert!(
            text.contains("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:53"),
            "{text}"
        );
        assert!(
            text.contains("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:53"),
            "{text}"
        );
        // Every line's PACKETS column ends at the heading's end.
        let end = lines[0].find("PACKETS").expect("heading") + "PACKETS".len();
        for (line, value) in [
            (1, "PACKETS"),
            (2, "12345"),
            (3, "7"),
            (4, "12345"),
            (5, "7"),
        ] {
            let l = lines[line];
            let at = l[..end].rfind(value).map(|i| i + value.len());
            assert_eq!(at, Some(end), "line {line}: {l:?}\n{text}");
        }
    }
}
