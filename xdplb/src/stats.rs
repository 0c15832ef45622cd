//! Reading a running instance's counters and rendering them.

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use serde::Serialize;
use xdplb_common::{
    Counter, Flow, FlowKey, MAP_BACKEND_STATS, MAP_FLOWS, MAP_SERVICE_STATS, MAP_STATS, Stat,
};

use crate::{
    dataplane::DataplaneError,
    instance::{InstanceError, InstanceState},
};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(
        "map {name} (id {id}) of instance {instance:?} is gone or replaced: {reason}; the instance probably exited"
    )]
    StaleMap {
        instance: String,
        name: String,
        id: u32,
        reason: String,
    },
    #[error("encoding the metrics failed (a bug: writing into a string cannot fail)")]
    Encode,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficRow {
    pub name: String,
    pub address: String,
    pub packets: u64,
    pub bytes: u64,
    /// New flows scheduled.
    pub flows: u64,
    /// "up" or "down" for a health-checked backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// A backend drained by the operator (`drain = true`: no new flows).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    #[serde(flatten)]
    pub traffic: TrafficRow,
    /// `reconcile::table_fingerprint` of the service (empty in a state file of an older daemon).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub table_fingerprint: String,
    pub backends: Vec<TrafficRow>,
}

/// The flow table's fill level and evictions.
#[derive(Debug, Clone, Serialize)]
pub struct FlowTable {
    pub entries: u64,
    pub capacity: u32,
    /// Flows inserted under new keys since start (`flow_table_inserts`).
    pub inserts: u64,
    /// `inserts - entries`: flows are never deleted, only evicted by the LRU when full.
    pub evictions: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub instance: String,
    pub pid: u32,
    pub interfaces: Vec<String>,
    pub services: Vec<ServiceRow>,
    /// Every global counter, by name, in index order.
    pub counters: Vec<(String, u64)>,
    pub flow_table: FlowTable,
    /// Every veth of the daemon's network namespace (see `veth`).
    pub veths: std::collections::BTreeMap<String, crate::veth::VethReport>,
}

/// The per-CPU counters of an instance: a fixed number of lookups (one per global counter,
/// service and backend), whatever the flow table holds.
#[derive(Debug, Clone)]
pub struct Counters {
    pub services: Vec<ServiceRow>,
    /// Every global counter, by name, in index order.
    pub counters: Vec<(String, u64)>,
}

impl Counters {
    /// One global counter's value, summed over the CPUs.
    pub fn get(&self, stat: Stat) -> u64 {
        self.counters.get(stat as usize).map_or(0, |(_, v)| *v)
    }
}

/// The flow table's fill as counted by walking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowFill {
    pub entries: u64,
    pub capacity: u32,
}

/// Reads the counters of the running instance described by `state`, and counts its flow table
/// (see [`count_flows`]: one syscall per entry).
pub fn read(state: &InstanceState) -> Result<Snapshot, StatsError> {
    let counts = read_counters(state)?;
    let FlowFill { entries, capacity } = count_flows(state)?;
    let inserts = counts.get(Stat::FlowTableInsert);
    Ok(Snapshot {
        flow_table: FlowTable {
            entries,
            capacity,
            inserts,
            evictions: inserts.saturating_sub(entries),
        },
        instance: state.instance.clone(),
        pid: state.pid,
        interfaces: state.interface_labels(),
        services: counts.services,
        counters: counts.counters,
        veths: state.veths.clone(),
    })
}

/// Reads the per-CPU counters of the running instance described by `state`: global, per
/// service and per backend. Its cost does not depend on the flow table.
pub fn read_counters(state: &InstanceState) -> Result<Counters, StatsError> {
    let global = open_percpu::<u64>(state, MAP_STATS)?;
    let per_service = open_percpu::<Counter>(state, MAP_SERVICE_STATS)?;
    let per_backend = open_percpu::<Counter>(state, MAP_BACKEND_STATS)?;
    let stale = |name: &str, e: aya::maps::MapError| stale(state, name, e.to_string());
    let mut counters = Vec::new();
    for s in Stat::ALL {
        let v = global
            .get(&(s as u32), 0)
            .map_err(|e| stale(MAP_STATS, e))?;
        counters.push((s.name().to_string(), v.iter().sum()));
    }
    let mut services = Vec::new();
    for svc in &state.services {
        let v = per_service
            .get(&svc.id, 0)
            .map_err(|e| stale(MAP_SERVICE_STATS, e))?;
        let c = crate::dataplane::sum(&v);
        let mut backends = Vec::new();
        for (n, b) in svc.backends.iter().enumerate() {
            let bc = match b.index {
                Some(index) => crate::dataplane::sum(
                    &per_backend
                        .get(&index, 0)
                        .map_err(|e| stale(MAP_BACKEND_STATS, e))?,
                ),
                None => Counter::default(),
            };
            backends.push(TrafficRow {
                name: format!("#{}", n + 1),
                address: b.address.clone(),
                packets: bc.packets,
                bytes: bc.bytes,
                flows: bc.flows,
                health: b.health.clone(),
                drain: b.drain,
            });
        }
        services.push(ServiceRow {
            traffic: TrafficRow {
                name: svc.name.clone(),
                address: svc.vip.clone(),
                packets: c.packets,
                bytes: c.bytes,
                flows: c.flows,
                health: None,
                drain: false,
            },
            table_fingerprint: svc.table_fingerprint.clone(),
            backends,
        });
    }
    Ok(Counters { services, counters })
}

/// Counts the flow table's entries and reads its capacity. The kernel keeps no count of an LRU
/// hash's entries that user space can read, so this walks the keys: one syscall per entry
/// (0.2 s at 200,000 entries). Keep it off paths that must stay fast (`metrics` samples it).
pub fn count_flows(state: &InstanceState) -> Result<FlowFill, StatsError> {
    let data = open_map(state, MAP_FLOWS)?;
    let capacity = data.info().map_or(0, |i| i.max_entries());
    let map = Map::from_map_data(data).map_err(|e| stale(state, MAP_FLOWS, e.to_string()))?;
    let flows: HashMap<MapData, FlowKey, Flow> =
        HashMap::try_from(map).map_err(|e| stale(state, MAP_FLOWS, e.to_string()))?;
    let entries = flows.keys().flatten().count() as u64;
    Ok(FlowFill { entries, capacity })
}

pub(crate) fn stale(state: &InstanceState, name: &str, reason: String) -> StatsError {
    StatsError::StaleMap {
        instance: state.instance.clone(),
        name: name.to_string(),
        id: state.map_ids.get(name).copied().unwrap_or(0),
        reason,
    }
}

/// Opens a map of the instance by kernel id, checking that the id still names that map.
pub(crate) fn open_map(state: &InstanceState, name: &'static str) -> Result<MapData, StatsError> {
    let id = state.map_ids.get(name).copied().unwrap_or(0);
    let data = MapData::from_id(id).map_err(|e| stale(state, name, e.to_string()))?;
    // The kernel keeps 15 bytes of a map name; an id reused by another map would not match.
    let info = data.info().map_err(|e| stale(state, name, e.to_string()))?;
    let kernel_name = info.name_as_str().unwrap_or_default();
    if !name.starts_with(kernel_name) || kernel_name.is_empty() {
        return Err(stale(
            state,
            name,
            format!("id now belongs to map {kernel_name:?}"),
        ));
    }
    Ok(data)
}

pub(crate) fn open_percpu<V: aya::Pod>(
    state: &InstanceState,
    name: &'static str,
) -> Result<PerCpuArray<MapData, V>, StatsError> {
    let data = open_map(state, name)?;
    let map = Map::from_map_data(data).map_err(|e| stale(state, name, e.to_string()))?;
    PerCpuArray::try_from(map).map_err(|e| stale(state, name, e.to_string()))
}

/// A readable table.
pub fn render(s: &Snapshot) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // pid 0: read from the pinned data plane, with no daemon (see `view`).
    let _ = writeln!(
        out,
        "instance {}{}, attached to {}",
        s.instance,
        if s.pid == 0 {
            " (no daemon)".to_string()
        } else {
            format!(" (pid {})", s.pid)
        },
        s.interfaces.join(", ")
    );
    let _ = writeln!(out);
    // The address column is as wide as the widest address (an IPv6 one takes up to 47).
    let aw = s
        .services
        .iter()
        .flat_map(|svc| {
            std::iter::once(&svc.traffic.address).chain(svc.backends.iter().map(|b| &b.address))
        })
        .map(|a| a.chars().count())
        .max()
        .unwrap_or(0)
        .max(22);
    let _ = writeln!(
        out,
        "{:<24} {:<aw$} {:>14} {:>16} {:>10}",
        "SERVICE / BACKEND", "ADDRESS", "PACKETS", "BYTES", "FLOWS"
    );
    for svc in &s.services {
        let t = &svc.traffic;
        let _ = writeln!(
            out,
            "{:<24} {:<aw$} {:>14} {:>16} {:>10}",
            t.name, t.address, t.packets, t.bytes, t.flows
        );
        for b in &svc.backends {
            let mut health = b
                .health
                .as_deref()
                .map(|h| format!(" {h}"))
                .unwrap_or_default();
            if b.drain {
                health.push_str(" drain");
            }
            let _ = writeln!(
                out,
                "  {:<22} {:<aw$} {:>14} {:>16} {:>10}{health}",
                b.name, b.address, b.packets, b.bytes, b.flows
            );
        }
    }
    let _ = writeln!(out);
    let f = &s.flow_table;
    let _ = writeln!(
        out,
        "flow table: {} of {} entries; {} inserted, {} evicted",
        f.entries, f.capacity, f.inserts, f.evictions
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<28} {:>14}", "COUNTER", "VALUE");
    for (name, v) in &s.counters {
        let _ = writeln!(out, "{name:<28} {v:>14}");
    }
    if !s.veths.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<20} {:>12} {:>12}  TAKES XDP_REDIRECT",
            "VETH", "TX_DROPPED", "RX_DROPPED"
        );
        for (name, v) in &s.veths {
            let takes = match v.accepts_xdp_redirect {
                Some(true) => "yes",
                Some(false) => "NO (peer without NAPI)",
                None => "unknown",
            };
            let _ = writeln!(
                out,
                "{name:<20} {:>12} {:>12}  {takes}",
                v.tx_dropped, v.rx_dropped
            );
        }
        for (name, v) in &s.veths {
            if v.accepts_xdp_redirect == Some(false) {
                let event = crate::veth::VethEvent::NoNapiPeer(name.clone());
                let _ = writeln!(out, "WARNING: {}", event.message());
            }
            if v.tx_dropped > 0 || v.rx_dropped > 0 {
                let event = crate::veth::VethEvent::Dropped {
                    interface: name.clone(),
                    tx: v.tx_dropped,
                    rx: v.rx_dropped,
                };
                let _ = writeln!(out, "WARNING: {}", event.message());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv6 services and backends are shown bracketed and whole, and the counters line up.
    #[test]
    fn ipv6_rows_are_shown_whole_and_aligned() {
        let row = |name: &str, address: &str, packets| TrafficRow {
            name: name.into(),
            address: address.into(),
            packets,
            bytes: 1,
            flows: 1,
            health: None,
            drain: false,
        };
        let snapshot = Snapshot {
            instance: "t".into(),
            pid: 1,
            interfaces: vec!["lo".into()],
            services: vec![ServiceRow {
                traffic: row("v6", "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:53", 4321),
                table_fingerprint: String::new(),
                backends: vec![
                    row("#1", "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:53", 987),
                    row("#2", "10.1.0.1:53", 55),
                ],
            }],
            counters: Vec::new(),
            flow_table: FlowTable {
                entries: 0,
                capacity: 1,
                inserts: 0,
                evictions: 0,
            },
            veths: Default::default(),
        };
        let text = render(&snapshot);
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("SERVICE / BACKEND"))
            .collect();
        let end = lines[0].find("PACKETS").expect("heading") + "PACKETS".len();
        for (line, value) in [(1, "4321"), (2, "987"), (3, "55")] {
            let l = lines[line];
            assert_eq!(
                l[..end].rfind(value).map(|i| i + value.len()),
                Some(end),
                "{text}"
            );
        }
        assert!(lines[2].contains("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:53"));
    }
}
