//! `xdplb flows`: the live flows of an instance (like `ipvsadm -Lc`), read from its flow table
//! (`FLOWS_V1`, an LRU hash shared by the CPUs) with batched lookups: one system call per few
//! thousand entries instead of two per entry.

use std::{collections::BTreeMap, net::SocketAddr};

use aya::maps::{HashMap, Map, MapData};
use serde::Serialize;
use xdplb_common::{Addr, Flow, FlowKey, MAP_FLOWS};

use crate::{
    instance::InstanceState,
    stats::{self, StatsError},
    sys::{self, BatchCursor},
    view::ServiceFacts,
};

/// Entries asked for per batched lookup.
const BATCH: usize = 4096;

/// How the table was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMethod {
    /// `BPF_MAP_LOOKUP_BATCH`, with the number of calls.
    Batched { calls: u32 },
    /// Key by key (the kernel refused batched lookups).
    Iterated,
}

/// Every entry of the instance's flow table, and how it was read.
pub fn read_table(state: &InstanceState) -> Result<(Vec<(FlowKey, Flow)>, ReadMethod), StatsError> {
    let data = stats::open_map(state, MAP_FLOWS)?;
    if let Ok((entries, calls)) = read_batched(&data) {
        return Ok((entries, ReadMethod::Batched { calls }));
    }
    // A kernel without batched lookups on LRU hashes (before 5.6): key by key.
    let map =
        Map::from_map_data(data).map_err(|e| stats::stale(state, MAP_FLOWS, e.to_string()))?;
    let flows: HashMap<MapData, FlowKey, Flow> =
        HashMap::try_from(map).map_err(|e| stats::stale(state, MAP_FLOWS, e.to_string()))?;
    Ok((
        flows.iter().filter_map(Result::ok).collect(),
        ReadMethod::Iterated,
    ))
}

fn read_batched(data: &MapData) -> std::io::Result<(Vec<(FlowKey, Flow)>, u32)> {
    let mut out = Vec::new();
    let mut cursor = BatchCursor::Start;
    let mut room = BATCH;
    let mut keys = vec![FlowKey::default(); room];
    let mut values = vec![Flow::default(); room];
    let mut calls = 0u32;
    while cursor != BatchCursor::Done {
        calls += 1;
        let n = match sys::map_lookup_batch(data, &mut cursor, &mut keys, &mut values) {
            Ok(n) => n,
            // One bucket holds more entries than there is room for: more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && room < (1 << 20) => {
                room *= 2;
                keys.resize(room, FlowKey::default());
                values.resize(room, Flow::default());
                continue;
            }
            Err(e) => return Err(e),
        };
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
    }
    Ok((out, calls))
}

/// `bpf_ktime_get_ns()` now: CLOCK_MONOTONIC, the clock the data plane stamps flows with.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// An address of a map key or value and a wire-order port (see [`crate::addr`]).
pub fn socket_of(addr: &Addr, port_be: u16) -> SocketAddr {
    crate::addr::socket_of(*addr, port_be)
}

/// One live flow.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub client: String,
    pub vip: String,
    pub service: String,
    pub backend: String,
    /// Since the flow was last refreshed (the data plane refreshes at most once a second).
    pub idle_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowListing {
    pub instance: String,
    pub daemon_running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Entries in the table, live or not.
    pub entries: usize,
    /// Live flows that match the filters.
    pub matched: usize,
    /// Entries idle past their service's timeout (or of a service that is gone): the data
    /// plane treats their next packet as a new flow; they stay until the LRU evicts them.
    pub expired: usize,
    pub read: ReadMethod,
    /// The matching flows, the most recently active first, at most `--limit`.
    pub flows: Vec<FlowRow>,
}

/// Filters of `xdplb flows`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub service: Option<String>,
    pub backend: Option<SocketAddr>,
    pub limit: usize,
}

/// Whether the flow `flow` seen `idle_ns` ago is live for `services`: its service exists and
/// it idled less than that service's timeout. Returns the service when it is.
pub fn live_service<'a>(
    services: &'a [ServiceFacts],
    flow: &Flow,
    idle_ns: u64,
) -> Option<&'a ServiceFacts> {
    services
        .iter()
        .find(|s| s.id == Some(flow.service_id))
        .filter(|s| idle_ns < s.flow_idle_timeout_ns)
}

/// The live flows of `entries` that pass `filter`.
pub fn listing(
    state: &InstanceState,
    services: &[ServiceFacts],
    entries: &[(FlowKey, Flow)],
    read: ReadMethod,
    now_ns: u64,
    filter: &Filter,
) -> FlowListing {
    let mut expired = 0;
    let mut rows: Vec<(u64, FlowRow)> = Vec::new();
    for (key, flow) in entries {
        let idle = now_ns.saturating_sub(flow.last_seen_ns);
        let Some(svc) = live_service(services, flow, idle) else {
            expired += 1;
            continue;
        };
        let backend = socket_of(&flow.backend_addr, flow.backend_port_be);
        if filter
            .service
            .as_ref()
            .is_some_and(|s| *s != svc.summary.name)
            || filter.backend.is_some_and(|b| b != backend)
        {
            continue;
        }
        rows.push((
            idle,
            FlowRow {
                client: socket_of(&key.client_addr, key.client_port_be).to_string(),
                vip: socket_of(&key.vip_addr, key.vip_port_be).to_string(),
                service: svc.summary.name.clone(),
                backend: backend.to_string(),
                idle_ms: idle / 1_000_000,
            },
        ));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.client.cmp(&b.1.client)));
    let matched = rows.len();
    FlowListing {
        instance: state.instance.clone(),
        daemon_running: true,
        note: None,
        entries: entries.len(),
        matched,
        expired,
        read,
        flows: rows
            .into_iter()
            .take(filter.limit)
            .map(|(_, r)| r)
            .collect(),
    }
}

/// Live flows per `(service id, backend index)`.
pub fn active_per_backend(
    services: &[ServiceFacts],
    entries: &[(FlowKey, Flow)],
    now_ns: u64,
) -> BTreeMap<(u32, u32), u64> {
    let mut out = BTreeMap::new();
    for (_, flow) in entries {
        let idle = now_ns.saturating_sub(flow.last_seen_ns);
        if live_service(services, flow, idle).is_some() {
            *out.entry((flow.service_id, flow.backend_index))
                .or_insert(0) += 1;
        }
    }
    out
}

fn idle_text(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}s", ms / 1000)
    }
}

impl FlowListing {
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if let Some(n) = &self.note {
            let _ = writeln!(out, "{n}");
        }
        // Address columns as wide as their widest address (an IPv6 one takes up to 47).
        let width = |get: fn(&FlowRow) -> &str| {
            self.flows
                .iter()
                .map(|f| get(f).chars().count())
                .max()
                .unwrap_or(0)
                .max(22)
        };
        let (wc, wv, wb) = (
            width(|f| &f.client),
            width(|f| &f.vip),
            width(|f| &f.backend),
        );
        let _ = writeln!(
            out,
            "{:<wc$} {:<wv$} {:<16} {:<wb$} {:>7}",
            "CLIENT", "VIP", "SERVICE", "BACKEND", "IDLE"
        );
        for f in &self.flows {
            let _ = writeln!(
                out,
                "{:<wc$} {:<wv$} {:<16} {:<wb$} {:>7}",
                f.client,
                f.vip,
                f.service,
                f.backend,
                idle_text(f.idle_ms)
            );
        }
        let read = match self.read {
            ReadMethod::Batched { calls } => format!("{calls} batched lookup(s)"),
            ReadMethod::Iterated => "key by key (no batched lookups here)".to_string(),
        };
        let _ = writeln!(
            out,
            "{} flow(s) shown of {} matching; {} entries in the table ({} expired, kept until evicted); read with {read}",
            self.flows.len(),
            self.matched,
            self.entries,
            self.expired
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::addr_of;

    fn svc(name: &str, id: u32) -> ServiceFacts {
        ServiceFacts {
            summary: crate::view::ServiceSummary {
                name: name.into(),
                vip: "10.0.0.1:53".into(),
                protocol: "udp".into(),
                forwarding: "local".into(),
                scheduler: "maglev".into(),
                when_all_down: "drop".into(),
                flow_state: "first-packet".into(),
                health_check: None,
            },
            flow_idle_timeout_ns: 30_000_000_000,
            id: Some(id),
            backends: Vec::new(),
        }
    }

    fn entry(
        client_port: u16,
        service_id: u32,
        backend: &str,
        last_seen_ns: u64,
    ) -> (FlowKey, Flow) {
        let client = SocketAddr::from(([192, 0, 2, 7], client_port));
        entry_of(client, "10.0.0.1:53", service_id, backend, last_seen_ns)
    }

    /// A flow entry as the data plane writes it, for any family.
    fn entry_of(
        client: SocketAddr,
        vip: &str,
        service_id: u32,
        backend: &str,
        last_seen_ns: u64,
    ) -> (FlowKey, Flow) {
        let b: SocketAddr = backend.parse().expect("backend");
        let vip: SocketAddr = vip.parse().expect("vip");
        (
            FlowKey {
                client_addr: addr_of(client.ip()),
                vip_addr: addr_of(vip.ip()),
                client_port_be: client.port().to_be(),
                vip_port_be: vip.port().to_be(),
                proto: 17,
                _pad: [0; 3],
            },
            Flow {
                backend_addr: addr_of(b.ip()),
                backend_port_be: b.port().to_be(),
                service_id,
                last_seen_ns,
                ..Flow::default()
            },
        )
    }

    #[test]
    fn flows_are_decoded_filtered_sorted_and_capped() {
        let services = [svc("dns", 0), svc("ntp", 1)];
        let now = 100_000_000_000;
        let entries = [
            entry(1000, 0, "10.1.0.1:53", now - 2_000_000_000),
            entry(1001, 0, "10.1.0.2:53", now - 1_000_000_000),
            entry(1002, 1, "10.1.0.3:123", now - 500_000_000),
            // Idle past the 30 s timeout, and of a service that is gone.
            entry(1003, 0, "10.1.0.1:53", now - 31_000_000_000),
            entry(1004, 9, "10.1.0.1:53", now),
        ];
        let state = InstanceState {
            instance: "t".into(),
            pid: 1,
            config: String::new(),
            interfaces: Vec::new(),
            map_ids: BTreeMap::new(),
            services: Vec::new(),
            generation: 0,
            reloads: 0,
            last_reload: None,
            veths: BTreeMap::new(),
            announce: None,
        };
        let read = ReadMethod::Batched { calls: 1 };
        let all = listing(
            &state,
            &services,
            &entries,
            read,
            now,
            &Filter {
                limit: 10,
                ..Filter::default()
            },
        );
        assert_eq!((all.entries, all.matched, all.expired), (5, 3, 2));
        let order: Vec<&str> = all.flows.iter().map(|f| f.client.as_str()).collect();
        assert_eq!(
            order,
            ["192.0.2.7:1002", "192.0.2.7:1001", "192.0.2.7:1000"]
        );
        assert_eq!(all.flows[0].vip, "10.0.0.1:53");
        assert_eq!(all.flows[0].backend, "10.1.0.3:123");
        assert_eq!(all.flows[0].service, "ntp");
        assert_eq!(all.flows[0].idle_ms, 500);
        let dns = listing(
            &state,
            &services,
            &entries,
            read,
            now,
            &Filter {
                service: Some("dns".into()),
                limit: 1,
                ..Filter::default()
            },
        );
        assert_eq!((dns.matched, dns.flows.len()), (2, 1));
        assert_eq!(dns.flows[0].backend, "10.1.0.2:53");
        let one = listing(
            &state,
            &services,
            &entries,
            read,
            now,
            &Filter {
                backend: Some("10.1.0.1:53".parse().expect("addr")),
                limit: 10,
                ..Filter::default()
            },
        );
        assert_eq!(one.matched, 1);
        assert_eq!(one.flows[0].client, "192.0.2.7:1000");
    }

    /// IPv6 entries are decoded to IPv6 addresses, shown bracketed, filtered by an IPv6
    /// backend, and the table's columns stay aligned around them.
    #[test]
    fn ipv6_flows_are_shown_bracketed_and_aligned() {
        let services = [svc("dns6", 0)];
        let now = 100_000_000_000;
        let client: SocketAddr = "[2001:db8:ffff::99]:4000".parse().expect("addr");
        let entries = [
            entry_of(
                client,
                "[2001:db8::1]:53",
                0,
                "[2001:db8:1::1]:53",
                now - 1_000_000_000,
            ),
            entry(1000, 0, "10.1.0.1:53", now - 2_000_000_000),
        ];
        let state = InstanceState {
            instance: "t".into(),
            pid: 1,
            config: String::new(),
            interfaces: Vec::new(),
            map_ids: BTreeMap::new(),
            services: Vec::new(),
            generation: 0,
            reloads: 0,
            last_reload: None,
            veths: BTreeMap::new(),
            announce: None,
        };
        let filter = |backend: Option<&str>| Filter {
            backend: backend.map(|b| b.parse().expect("addr")),
            limit: 10,
            ..Filter::default()
        };
        let read = ReadMethod::Iterated;
        let all = listing(&state, &services, &entries, read, now, &filter(None));
        assert_eq!(all.flows[0].client, "[2001:db8:ffff::99]:4000");
        assert_eq!(all.flows[0].vip, "[2001:db8::1]:53");
        assert_eq!(all.flows[0].backend, "[2001:db8:1::1]:53");
        assert_eq!(all.flows[1].client, "192.0.2.7:1000");
        let one = listing(
            &state,
            &services,
            &entries,
            read,
            now,
            &filter(Some("[2001:db8:1::1]:53")),
        );
        assert_eq!(one.matched, 1);
        let text = all.render();
        let lines: Vec<&str> = text.lines().collect();
        let column = |line: &str, word: &str| line.find(word).expect("present");
        assert_eq!(
            column(lines[0], "VIP"),
            column(lines[1], "[2001:db8::1]:53"),
            "{text}"
        );
        assert_eq!(
            column(lines[0], "VIP"),
            column(lines[2], "10.0.0.1:53"),
            "{text}"
        );
        assert_eq!(
            column(lines[0], "BACKEND"),
            column(lines[1], "[2001:db8:1::1]:53"),
            "{text}"
        );
    }
}
