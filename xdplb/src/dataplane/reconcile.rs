//! Desired state (from the config) to map writes.
//!
//! The map writes sit behind [`MapWriter`] so that the translation and its ordering are tested
//! without a kernel. [`Reconciler`] remembers what the maps hold, so that a change keeps every
//! surviving backend at its position (live flows keep their backend) and switches each service
//! to its new scheduling table in one step.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use xdplb_common::{
    BACKEND_FLAG_DRAINING, Backend, FORWARD_LOCAL, FORWARD_NAT, FullnatSource, PORT_EXACT_SERVICE,
    PORT_FULLNAT_RANGE, PORT_LOCAL_BACKEND, PORT_NAT_BACKEND, PORT_WILDCARD_SERVICE,
    REPLY_FLAG_NAT, REPLY_FLAG_WILDCARD, Reply, SERVICE_ENCAP_HOST_BITS_SHIFT,
    SERVICE_FLAG_MAY_SKIP_STATE, SERVICE_FLAG_PASS_WHEN_EMPTY, SERVICE_FLAG_STATE_ON_SECOND_PACKET,
    SERVICE_FLAG_WILDCARD, SERVICE_FORWARDING_MASK, SERVICE_FORWARDING_SHIFT,
    SERVICE_STALE_AFTER_MAX_UNITS, SERVICE_STALE_AFTER_SHIFT, SERVICE_STALE_AFTER_UNIT_NS, Service,
    ServiceKey,
    maglev::{self, MaglevBackend},
    schedule,
};

use super::DataplaneError;
use crate::config::{
    self, Config, FlowState, Forwarding, Limits, Scheduler, ServiceConfig, WhenAllDown,
};

/// The longest weighted-round-robin table (it interleaves by weight within this length).
pub const MAX_WRR_TABLE_LEN: usize = 65537;

/// Writes into the data plane's maps.
pub trait MapWriter {
    fn put_backend(&mut self, index: u32, backend: &Backend) -> Result<(), DataplaneError>;
    fn put_lookup(&mut self, index: u32, backend_index: u32) -> Result<(), DataplaneError>;
    fn put_service(&mut self, key: &ServiceKey, service: &Service) -> Result<(), DataplaneError>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError>;
    fn put_fullnat_source(
        &mut self,
        service_id: u32,
        source: &FullnatSource,
    ) -> Result<(), DataplaneError>;
    /// Sets the flood guard's rate (`GLOBAL_SLOT_FLOW_GUARD_RATE`).
    fn put_flow_guard_rate(&mut self, rate: u32) -> Result<(), DataplaneError>;
    /// Sets a port's `PORT_*` bits in the prefilter (`PORTS_V1`).
    fn put_port(&mut self, port: u16, flags: u32) -> Result<(), DataplaneError>;
    /// Names the owner of a `local`/`nat` backend's replies (`REPLY_OWNERS_V1`).
    fn put_reply_owner(
        &mut self,
        backend: &ServiceKey,
        owner: &Reply,
    ) -> Result<(), DataplaneError>;
    fn remove_reply_owner(&mut self, backend: &ServiceKey) -> Result<(), DataplaneError>;
}

/// What the maps must hold for one service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServicePlan {
    pub name: String,
    pub vip: SocketAddr,
    pub key: ServiceKey,
    /// The map value; `table_base` points at the first half of the region until a
    /// [`Reconciler`] decides which half to write.
    pub service: Service,
    /// First `LOOKUP_V1` index of the service's region: two halves of `region_half` entries.
    pub region_base: u32,
    pub region_half: u32,
    /// The scheduling table: `BACKENDS_V1` indices.
    pub table: Vec<u32>,
    /// Occupied backend positions: `(BACKENDS_V1 index, backend, address)`.
    pub backends: Vec<(u32, Backend, SocketAddr)>,
    /// `fullnat`: the source address and port range, written before the service entry.
    #[serde(default)]
    pub fullnat: Option<FullnatSource>,
}

/// What the maps must hold for a config.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DesiredState {
    pub services: Vec<ServicePlan>,
    /// `GLOBALS_V1[GLOBAL_SLOT_FLOW_GUARD_RATE]`.
    #[serde(default)]
    pub flow_guard_rate: u32,
}

pub use crate::addr::{addr_of, addr_v4};

/// The `BACKENDS_V1` index of position `i` of the service with id `service_id`: service `n`
/// owns positions `[n * max_backends_per_service, (n + 1) * max_backends_per_service)`.
pub fn backend_index(limits: &Limits, service_id: u32, i: u32) -> u32 {
    service_id * limits.max_backends_per_service + i
}

/// The `SERVICES_V1` key of a vip: IPv4-mapped for IPv4 (the IPv4 wildcard is
/// `::ffff:0.0.0.0`), the address itself for IPv6 (the IPv6 wildcard is all zeros).
pub fn service_key(vip: impl Into<SocketAddr>, proto: u8) -> ServiceKey {
    let vip: SocketAddr = vip.into();
    ServiceKey {
        addr: addr_of(vip.ip()),
        port_be: vip.port().to_be(),
        proto,
        _pad: 0,
    }
}

/// Why a config cannot be switched to from what the maps hold now.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "service {service:?} needs {needed} free scheduling-table entries while the old tables still serve, but the pool ({pool} entries) has no such gap; raise [limits] max_lookup_entries or restart"
    )]
    NoTableRegion {
        service: String,
        needed: u32,
        pool: u32,
    },
    #[error(
        "no free service id for {service:?}: ids of services removed by this change stay reserved until it is applied; apply the removal first or raise [limits] max_services"
    )]
    NoServiceId { service: String },
    /// Validation refuses this with the file's location; the writers meet it only for a config
    /// that skipped validation.
    #[error(
        "service {service:?}: {what} {address} is not of the vip's family ({vip}); translating between IPv4 and IPv6 is not supported"
    )]
    MixedFamilies {
        service: String,
        what: &'static str,
        address: IpAddr,
        vip: SocketAddr,
    },
}

/// Translates a validated config.
///
/// With no `previous` state, service `i` (in config order) gets id `i` and the table region
/// after those of services `0..i`. With one, every service that `previous` had (by name) keeps
/// its id, its backend positions (by address) and, if its table capacity is unchanged, its
/// table region; anything new gets an id and a region that neither the old nor the new state
/// uses, so nothing the data plane still reads is overwritten before the switch.
pub fn desired_state(
    cfg: &Config,
    previous: Option<&DesiredState>,
) -> Result<DesiredState, PlanError> {
    let empty = DesiredState::default();
    let previous = previous.unwrap_or(&empty);
    let find = |name: &str| previous.services.iter().find(|s| s.name == name);
    // Ids and regions the old state uses stay reserved during this change.
    let mut ids: Vec<u32> = previous.services.iter().map(|s| s.service.id).collect();
    let mut regions: Vec<(u32, u32)> = previous
        .services
        .iter()
        .map(|s| (s.region_base, 2 * s.region_half))
        .collect();
    let mut services = Vec::with_capacity(cfg.services.len());
    for svc in &cfg.services {
        let half = config::table_capacity(svc, &cfg.limits);
        let before = find(&svc.name);
        let id = if let Some(b) = before {
            b.service.id
        } else {
            let id = (0..cfg.limits.max_services)
                .find(|i| !ids.contains(i))
                .ok_or_else(|| PlanError::NoServiceId {
                    service: svc.name.clone(),
                })?;
            ids.push(id);
            id
        };
        let region = match before {
            Some(b) if b.region_half == half => b.region_base,
            _ => allocate_region(&mut regions, half, cfg, svc)?,
        };
        services.push(plan_service(cfg, svc, id, region, half, before)?);
    }
    Ok(DesiredState {
        services,
        flow_guard_rate: cfg.flow_guard_rate,
    })
}

/// First fit of a region of two `half`-entry tables that overlaps none of `used`.
fn allocate_region(
    used: &mut Vec<(u32, u32)>,
    half: u32,
    cfg: &Config,
    svc: &ServiceConfig,
) -> Result<u32, PlanError> {
    let len = u64::from(half) * 2;
    let pool = u64::from(cfg.limits.max_lookup_entries);
    let mut spans: Vec<(u64, u64)> = used
        .iter()
        .map(|(b, l)| (u64::from(*b), u64::from(*b) + u64::from(*l)))
        .collect();
    spans.sort_unstable();
    let mut start = 0u64;
    for (b, e) in spans {
        if b >= start + len {
            break;
        }
        start = start.max(e);
    }
    if start + len > pool {
        return Err(PlanError::NoTableRegion {
            service: svc.name.clone(),
            needed: half.saturating_mul(2),
            pool: cfg.limits.max_lookup_entries,
        });
    }
    let base = start as u32;
    used.push((base, half * 2));
    Ok(base)
}

fn plan_service(
    cfg: &Config,
    svc: &ServiceConfig,
    id: u32,
    region_base: u32,
    region_half: u32,
    before: Option<&ServicePlan>,
) -> Result<ServicePlan, PlanError> {
    let same_family = |what: &'static str, address: IpAddr| {
        if address.is_ipv4() == svc.vip.is_ipv4() {
            Ok(address)
        } else {
            Err(PlanError::MixedFamilies {
                service: svc.name.clone(),
                what,
                address,
                vip: svc.vip,
            })
        }
    };
    let base = backend_index(&cfg.limits, id, 0);
    let mut taken: Vec<u32> = Vec::with_capacity(svc.backends.len());
    // Positions kept from before, by address; the rest are filled in below.
    let mut positions: Vec<Option<u32>> = svc
        .backends
        .iter()
        .map(|b| {
            let kept = before?
                .backends
                .iter()
                .find(|(_, _, addr)| *addr == b.address)
                .map(|(index, _, _)| index - before.map_or(0, |p| p.service.backend_base));
            if let Some(p) = kept {
                taken.push(p);
            }
            kept
        })
        .collect();
    let mut next_free = 0u32;
    for p in positions.iter_mut().filter(|p| p.is_none()) {
        while taken.contains(&next_free) {
            next_free += 1;
        }
        *p = Some(next_free);
        taken.push(next_free);
    }
    let positions: Vec<u32> = positions
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();

    let backends: Vec<(u32, Backend, SocketAddr)> = svc
        .backends
        .iter()
        .zip(&positions)
        .map(|(b, pos)| {
            let entry = Backend {
                addr: addr_of(same_family("backend", b.address.ip())?),
                port_be: b.address.port().to_be(),
                weight: b.weight,
                flags: if b.drain { BACKEND_FLAG_DRAINING } else { 0 },
            };
            Ok((base + pos, entry, b.address))
        })
        .collect::<Result<_, PlanError>>()?;
    let table: Vec<u32> = scheduling_table(cfg, svc)
        .into_iter()
        .filter_map(|i| backends.get(i as usize).map(|(index, _, _)| *index))
        .collect();
    let proto = svc.protocol.code();
    let encap_source = match svc.encap_source {
        Some(e) => Some((same_family("encap_source", e.base)?, e.prefix_len)),
        None => None,
    };
    let fullnat_source = match svc.fullnat {
        Some(f) => Some((same_family("fullnat_source", f.source)?, f)),
        None => None,
    };
    Ok(ServicePlan {
        name: svc.name.clone(),
        vip: svc.vip,
        key: service_key(svc.vip, proto),
        service: Service {
            id,
            backend_base: base,
            backend_count: positions.iter().max().map_or(0, |m| m + 1),
            scheduler: svc.scheduler.code(),
            table_base: region_base,
            table_len: table.len() as u32,
            hash_fields: svc.hash.code(),
            hash_seed: cfg.hash_seed,
            flow_idle_timeout_ns: u64::try_from(svc.flow_idle_timeout.as_nanos())
                .unwrap_or(u64::MAX),
            flags: match svc.when_all_down {
                WhenAllDown::Drop => 0,
                WhenAllDown::Pass => SERVICE_FLAG_PASS_WHEN_EMPTY,
            } | (svc.forwarding.code() << SERVICE_FORWARDING_SHIFT)
                | may_skip_state(svc)
                | if svc.vip.ip().is_unspecified() {
                    SERVICE_FLAG_WILDCARD
                } else {
                    0
                }
                | match svc.flow_state {
                    FlowState::FirstPacket => 0,
                    FlowState::SecondPacket => SERVICE_FLAG_STATE_ON_SECOND_PACKET,
                }
                | encap_source.map_or(0, |(base, prefix_len)| {
                    crate::addr::encap_host_bits(base, prefix_len) << SERVICE_ENCAP_HOST_BITS_SHIFT
                })
                | stale_after_bits(svc),
            encap_source: encap_source.map_or([0; 4], |(base, _)| addr_of(base)),
            _pad: 0,
        },
        region_base,
        region_half,
        table,
        backends,
        fullnat: fullnat_source.map(|(source, f)| FullnatSource {
            addr: addr_of(source),
            port_first: u32::from(f.port_first),
            port_count: u32::from(f.port_last) - u32::from(f.port_first) + 1,
            _pad: [0; 2],
        }),
    })
}

/// A fingerprint of how a service picks the backend of a new flow: its scheduler, hash fields
/// and seed, and slot by slot the address of the backend its table names. Nodes whose service
/// has the same fingerprint send every flow of a hashing scheduler (`maglev`, `source-hash`) to
/// the same backend, so a fleet behind ECMP can compare them (`xdplb list`, the metric
/// `xdplb_service_table_info`). `BACKENDS_V1` positions, which depend on each node's history of
/// changes, are not part of it. The first 8 bytes of a SHA-256, as 16 hex digits.
pub fn table_fingerprint(plan: &ServicePlan) -> String {
    use sha2::{Digest as _, Sha256};
    let addresses: HashMap<u32, String> = plan
        .backends
        .iter()
        .map(|(index, _, address)| (*index, address.to_string()))
        .collect();
    let mut h = Sha256::new();
    h.update(b"xdplb table v1\n");
    for v in [
        plan.service.scheduler,
        plan.service.hash_fields,
        plan.service.hash_seed,
    ] {
        h.update(v.to_le_bytes());
    }
    h.update((plan.table.len() as u64).to_le_bytes());
    for index in &plan.table {
        h.update(addresses.get(index).map_or("?", String::as_str).as_bytes());
        h.update(b"\n");
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize()[..8]);
    format!("{:016x}", u64::from_be_bytes(first))
}

/// The `SERVICE_STALE_AFTER_*` bits of a service's `flow_stale_after` (0: never): whole units of
/// 100 ms. The config allows only 2s..=102.3s in steps of 100 ms, so nothing is rounded; a value
/// beyond the bits (which validation refuses) is clamped rather than spilling into other flags.
pub fn stale_after_bits(svc: &ServiceConfig) -> u32 {
    svc.flow_stale_after.map_or(0, |d| {
        let units = d.as_nanos() / u128::from(SERVICE_STALE_AFTER_UNIT_NS);
        let units = u32::try_from(units)
            .unwrap_or(u32::MAX)
            .min(SERVICE_STALE_AFTER_MAX_UNITS);
        units << SERVICE_STALE_AFTER_SHIFT
    })
}

/// `SERVICE_FLAG_MAY_SKIP_STATE` for a service whose flows reach one backend with or without a
/// flow entry and need none for their replies: `dsr-*` (replies bypass the balancer) with a
/// consistent scheduler (without a table change, a flow's packets all map to one backend).
fn may_skip_state(svc: &ServiceConfig) -> u32 {
    let dsr = matches!(svc.forwarding, Forwarding::DsrL2 | Forwarding::DsrIpip);
    let consistent = matches!(svc.scheduler, Scheduler::Maglev | Scheduler::SourceHash);
    if dsr && consistent {
        SERVICE_FLAG_MAY_SKIP_STATE
    } else {
        0
    }
}

/// The scheduling table of a service as indices into `svc.backends`; drained backends get no
/// entry. Shared with `xdplb explain`, so both see exactly what the data plane is given.
pub fn scheduling_table(cfg: &Config, svc: &ServiceConfig) -> Vec<u32> {
    let weights: Vec<u32> = svc
        .backends
        .iter()
        .map(|b| if b.drain { 0 } else { u32::from(b.weight) })
        .collect();
    match svc.scheduler {
        Scheduler::Maglev => {
            let mb: Vec<MaglevBackend> = svc
                .backends
                .iter()
                .zip(&weights)
                .map(|(b, w)| MaglevBackend {
                    addr: addr_of(b.address.ip()),
                    port_be: b.address.port().to_be(),
                    weight: *w,
                })
                .collect();
            // Validation guarantees a prime size and a backend with weight > 0.
            maglev::build_table(&mb, svc.maglev_table_size, cfg.hash_seed).unwrap_or_default()
        }
        Scheduler::WeightedRoundRobin => {
            schedule::weighted_round_robin_table(&weights, MAX_WRR_TABLE_LEN)
        }
        Scheduler::RoundRobin | Scheduler::Random | Scheduler::SourceHash => {
            schedule::round_robin_table(&weights)
        }
    }
}

/// How long the reply translation of a removed `local`/`nat` backend (its `REPLY_OWNERS_V1`
/// entry and its `PORTS_V1` mark) outlives the change that removed it: a request forwarded just
/// before the change is answered after it, and that reply must still leave from the VIP (without
/// its translation it would reach the client from the backend's own address and be lost).
pub const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// Reply translations a change removed, kept until `until`.
#[derive(Debug, Clone)]
struct Retired {
    until: Instant,
    owners: Vec<ServiceKey>,
    /// The backend marks (`PORT_LOCAL_BACKEND`, `PORT_NAT_BACKEND`) a port lost.
    ports: BTreeMap<u16, u32>,
}

/// Applies desired states to the maps one after another, remembering what they hold.
#[derive(Debug, Default)]
pub struct Reconciler {
    current: Option<DesiredState>,
    /// Reply translations of removed backends, until their grace ends ([`RETIRE_GRACE`]).
    retired: Vec<Retired>,
}

impl Reconciler {
    /// A reconciler that takes over maps another process filled, described by `state` (see
    /// [`trust_live`]).
    pub fn adopt(state: DesiredState) -> Self {
        Reconciler {
            current: Some(state),
            retired: Vec::new(),
        }
    }

    /// What the maps hold now, if anything was applied.
    pub fn current(&self) -> Option<&DesiredState> {
        self.current.as_ref()
    }

    /// Moves the maps from the current state to `next`:
    /// 1. backends that are new or changed are written (old positions are untouched);
    /// 2. each service's new table goes into the half of its region not in use;
    /// 3. each service is switched to it with one map update (the atomic step);
    /// 4. positions no longer used are cleared, so flows on removed backends are rescheduled;
    /// 5. services that are gone are removed.
    ///
    /// While this runs, a packet sees either the old or the new table, and goes to a backend
    /// of the old or the new set. On error the maps may hold a mix of new backends and old
    /// services, every one of which still forwards to a valid backend.
    pub fn apply(
        &mut self,
        mut next: DesiredState,
        maps: &mut impl MapWriter,
    ) -> Result<(), DataplaneError> {
        let previous = self.current.take().unwrap_or_default();
        let lingering = self.lingering_ports();
        match apply_diff(&previous, &mut next, maps, &lingering) {
            Ok((owners, ports)) => {
                if !owners.is_empty() || !ports.is_empty() {
                    self.retired.push(Retired {
                        until: Instant::now() + RETIRE_GRACE,
                        owners,
                        ports,
                    });
                }
                self.current = Some(next);
                Ok(())
            }
            Err(e) => {
                self.current = Some(previous);
                Err(e)
            }
        }
    }

    /// The backend marks that retired translations still hold, by port.
    fn lingering_ports(&self) -> BTreeMap<u16, u32> {
        let mut ports = BTreeMap::new();
        for r in &self.retired {
            for (port, bits) in &r.ports {
                *ports.entry(*port).or_insert(0) |= bits;
            }
        }
        ports
    }

    /// Removes the retired reply translations whose grace ended by `now` (all of them with a
    /// `now` past every grace), unless the current state uses them again. Returns how many
    /// owners it removed. On error the rest stays retired, to be retried.
    pub fn retire_expired(
        &mut self,
        now: Instant,
        maps: &mut impl MapWriter,
    ) -> Result<usize, DataplaneError> {
        let (due, keep): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| r.until <= now);
        self.retired = keep;
        if due.is_empty() {
            return Ok(0);
        }
        let current = self.current.clone().unwrap_or_default();
        let owners_now = reply_owners(&current);
        let mut ports_now = port_flags(&current);
        for (port, bits) in self.lingering_ports() {
            *ports_now.entry(port).or_insert(0) |= bits;
        }
        let mut removed = 0;
        for (k, r) in due.iter().enumerate() {
            let outcome = (|| -> Result<usize, DataplaneError> {
                let mut n = 0;
                for key in &r.owners {
                    let still = owners_now.contains_key(key)
                        || self.retired.iter().any(|x| x.owners.contains(key));
                    if !still {
                        maps.remove_reply_owner(key)?;
                        n += 1;
                    }
                }
                for port in r.ports.keys() {
                    maps.put_port(*port, ports_now.get(port).copied().unwrap_or(0))?;
                }
                Ok(n)
            })();
            match outcome {
                Ok(n) => removed += n,
                Err(e) => {
                    self.retired.extend(due.into_iter().skip(k));
                    return Err(e);
                }
            }
        }
        Ok(removed)
    }
}

/// Checks a recorded state against the live service entries before adopting it.
///
/// The record is written after every apply, so it matches the maps unless the writer died in
/// between. A service whose live entry differs is distrusted: its live entry is kept (so the
/// next apply writes the table half that is not in use), and its table and backends are
/// marked unknown, so that the next apply rewrites them. A recorded service with no live
/// entry is dropped from the record.
pub fn trust_live(
    mut record: DesiredState,
    live: impl Fn(&ServiceKey) -> Option<Service>,
) -> DesiredState {
    record.services.retain_mut(|plan| match live(&plan.key) {
        None => false,
        Some(entry) if entry == plan.service => true,
        Some(entry) => {
            plan.service = entry;
            plan.table.clear();
            for (_, backend, _) in &mut plan.backends {
                *backend = Backend::default();
            }
            true
        }
    });
    record
}

/// The `PORT_*` bits a state needs, by port (ports with none are absent).
pub fn port_flags(state: &DesiredState) -> BTreeMap<u16, u32> {
    let mut ports = BTreeMap::new();
    let mut mark = |port: u16, bit: u32| *ports.entry(port).or_insert(0) |= bit;
    for plan in &state.services {
        mark(
            plan.vip.port(),
            if plan.vip.ip().is_unspecified() {
                PORT_WILDCARD_SERVICE
            } else {
                PORT_EXACT_SERVICE
            },
        );
        let backend_bit = match mode_of(plan) {
            FORWARD_LOCAL => PORT_LOCAL_BACKEND,
            FORWARD_NAT => PORT_NAT_BACKEND,
            _ => 0,
        };
        if backend_bit != 0 {
            for (_, _, addr) in &plan.backends {
                mark(addr.port(), backend_bit);
            }
        }
        if let Some(f) = &plan.fullnat {
            for port in f.port_first..f.port_first + f.port_count {
                if let Ok(port) = u16::try_from(port) {
                    mark(port, PORT_FULLNAT_RANGE);
                }
            }
        }
    }
    ports
}

/// The owners of `local`/`nat` backends' replies a state needs (`REPLY_OWNERS_V1`).
pub fn reply_owners(state: &DesiredState) -> HashMap<ServiceKey, Reply> {
    let mut owners = HashMap::new();
    for plan in &state.services {
        let mode = mode_of(plan);
        if mode != FORWARD_LOCAL && mode != FORWARD_NAT {
            continue;
        }
        let mut flags = if mode == FORWARD_NAT {
            REPLY_FLAG_NAT
        } else {
            0
        };
        if plan.vip.ip().is_unspecified() {
            flags |= REPLY_FLAG_WILDCARD;
        }
        let owner = Reply {
            vip_addr: plan.key.addr,
            vip_port_be: plan.key.port_be,
            flags,
            service_id: plan.service.id,
        };
        for (_, backend, _) in &plan.backends {
            let key = ServiceKey {
                addr: backend.addr,
                port_be: backend.port_be,
                proto: plan.key.proto,
                _pad: 0,
            };
            owners.insert(key, owner);
        }
    }
    owners
}

fn mode_of(plan: &ServicePlan) -> u32 {
    (plan.service.flags & SERVICE_FORWARDING_MASK) >> SERVICE_FORWARDING_SHIFT
}

/// Brings the maps from `previous` to `next`. The reply translations of backends `next`
/// no longer has stay (see [`RETIRE_GRACE`]): returned as retired (owners, and the backend
/// marks their ports lost), while `lingering` marks of earlier retirements are kept.
fn apply_diff(
    previous: &DesiredState,
    next: &mut DesiredState,
    maps: &mut impl MapWriter,
    lingering: &BTreeMap<u16, u32>,
) -> Result<(Vec<ServiceKey>, BTreeMap<u16, u32>), DataplaneError> {
    let find = |name: &str| previous.services.iter().find(|s| s.name == name);
    if next.flow_guard_rate != previous.flow_guard_rate {
        maps.put_flow_guard_rate(next.flow_guard_rate)?;
    }
    // The prefilter lets through the ports of both states while services switch, and only
    // the new state's afterwards; reply owners are in place before the services that create
    // flows for them, and removed after.
    let (ports_before, ports_after) = (port_flags(previous), port_flags(next));
    let mut ports_during = ports_before.clone();
    for (port, bits) in &ports_after {
        *ports_during.entry(*port).or_insert(0) |= bits;
    }
    for (port, bits) in &ports_during {
        if ports_before.get(port) != Some(bits) {
            maps.put_port(*port, *bits)?;
        }
    }
    let (owners_before, owners_after) = (reply_owners(previous), reply_owners(next));
    for (key, owner) in &owners_after {
        if owners_before.get(key) != Some(owner) {
            maps.put_reply_owner(key, owner)?;
        }
    }
    for plan in &next.services {
        let old = find(&plan.name);
        for (index, backend, _) in &plan.backends {
            let unchanged = old.is_some_and(|o| {
                o.backends
                    .iter()
                    .any(|(i, b, _)| i == index && b == backend)
            });
            if !unchanged {
                maps.put_backend(*index, backend)?;
            }
        }
    }
    // A fullnat service's source is in place before the service entry that uses it.
    for plan in &next.services {
        if let Some(source) = &plan.fullnat
            && find(&plan.name).is_none_or(|o| {
                o.fullnat.as_ref() != Some(source) || o.service.id != plan.service.id
            })
        {
            maps.put_fullnat_source(plan.service.id, source)?;
        }
    }
    for plan in &mut next.services {
        let old = find(&plan.name);
        // A service whose table and entry are unchanged keeps them: nothing to write or switch.
        if let Some(o) = old
            && o.key == plan.key
            && o.table == plan.table
            && o.region_base == plan.region_base
            && (Service {
                table_base: o.service.table_base,
                ..plan.service
            }) == o.service
        {
            plan.service.table_base = o.service.table_base;
            continue;
        }
        // Use the half the old table is not in (the first half for a new service).
        let use_second = old.is_some_and(|o| {
            o.region_base == plan.region_base && o.service.table_base == o.region_base
        });
        let table_base = plan.region_base + if use_second { plan.region_half } else { 0 };
        for (j, entry) in (0u32..).zip(&plan.table) {
            maps.put_lookup(table_base + j, *entry)?;
        }
        plan.service.table_base = table_base;
        maps.put_service(&plan.key, &plan.service)?;
        if let Some(o) = old
            && o.key != plan.key
        {
            maps.remove_service(&o.key)?;
        }
    }
    for old in &previous.services {
        let still = next.services.iter().find(|s| s.name == old.name);
        for (index, _, _) in &old.backends {
            if !still.is_some_and(|s| s.backends.iter().any(|(i, _, _)| i == index)) {
                maps.put_backend(*index, &Backend::default())?;
            }
        }
        if still.is_none() && !next.services.iter().any(|s| s.key == old.key) {
            maps.remove_service(&old.key)?;
        }
    }
    // Removed backends' translations are retired, not removed: replies in flight still need
    // them.
    let retired_owners: Vec<ServiceKey> = owners_before
        .keys()
        .filter(|key| !owners_after.contains_key(key))
        .copied()
        .collect();
    let backend_marks = PORT_LOCAL_BACKEND | PORT_NAT_BACKEND;
    let retired_ports: BTreeMap<u16, u32> = ports_before
        .iter()
        .filter_map(|(port, bits)| {
            let lost = bits & backend_marks & !ports_after.get(port).copied().unwrap_or(0);
            (lost != 0).then_some((*port, lost))
        })
        .collect();
    for (port, bits) in &ports_during {
        let after = ports_after.get(port).copied().unwrap_or(0)
            | retired_ports.get(port).copied().unwrap_or(0)
            | lingering.get(port).copied().unwrap_or(0);
        if after != *bits {
            maps.put_port(*port, after)?;
        }
    }
    Ok((retired_owners, retired_ports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{default_config, parse};
    use std::net::Ipv4Addr;
    use xdplb_common::{SERVICE_STALE_AFTER_MASK, service_stale_after_ns};

    /// Two nodes with the same config agree on the fingerprint even when their backends sit at
    /// other `BACKENDS_V1` positions (one node added and removed a backend before); a weight,
    /// a drained backend or another seed changes it.
    #[test]
    fn table_fingerprint_follows_the_choice_not_the_positions() {
        let svc = |extra: &str, backends: &str| {
            parse(
                &format!(
                    "interfaces = [\"lo\"]\n{extra}[[service]]\nname = \"dns\"\nvip = \"10.0.0.1:53\"\n{backends}"
                ),
                "test",
            )
            .expect("config")
        };
        let three = "[[service.backend]]\naddress = \"10.1.0.1:53\"\n\
                     [[service.backend]]\naddress = \"10.1.0.2:53\"\n\
                     [[service.backend]]\naddress = \"10.1.0.3:53\"\n";
        let four = format!("[[service.backend]]\naddress = \"10.1.0.9:53\"\n{three}");
        let print = |cfg: &Config, previous: Option<&DesiredState>| {
            let state = desired_state(cfg, previous).expect("plan");
            (table_fingerprint(&state.services[0]), state)
        };
        let (fresh, fresh_state) = print(&svc("", three), None);
        assert_eq!(fresh.len(), 16);
        assert!(fresh.chars().all(|c| c.is_ascii_hexdigit()), "{fresh}");
        // The other node: 10.1.0.9 first, then the three, then 10.1.0.9 removed.
        let (_, with_nine) = print(&svc("", &four), None);
        let (history, after) = print(&svc("", three), Some(&with_nine));
        let positions = |st: &DesiredState| -> Vec<u32> {
            st.services[0].backends.iter().map(|(i, _, _)| *i).collect()
        };
        assert_ne!(
            positions(&after),
            positions(&fresh_state),
            "the positions differ between the nodes"
        );
        assert_eq!(history, fresh, "same config, same fingerprint");
        let (weighted, _) = print(
            &svc(
                "",
                &three.replacen("10.1.0.1:53\"\n", "10.1.0.1:53\"\nweight = 2\n", 1),
            ),
            None,
        );
        assert_ne!(weighted, fresh, "a weight changes the table");
        let (drained, _) = print(
            &svc(
                "",
                &three.replacen("10.1.0.1:53\"\n", "10.1.0.1:53\"\ndrain = true\n", 1),
            ),
            None,
        );
        assert_ne!(drained, fresh, "a drained backend leaves the table");
        let (seeded, _) = print(&svc("hash_seed = 7\n", three), None);
        assert_ne!(seeded, fresh, "another seed, another choice");
    }

    #[derive(Default)]
    struct Recorder {
        writes: Vec<String>,
        lookups: usize,
        /// What `PORTS_V1` holds, and every port write in order, with the number of `writes`
        /// made before it (so its place among them).
        ports: BTreeMap<u16, u32>,
        port_writes: Vec<(u16, u32, usize)>,
        owners: HashMap<ServiceKey, Reply>,
        /// Every owner write (true: put, false: removed), with its place among `writes`.
        owner_writes: Vec<(bool, usize)>,
        guard_rate: Option<u32>,
    }
    impl MapWriter for Recorder {
        fn put_backend(&mut self, index: u32, b: &Backend) -> Result<(), DataplaneError> {
            self.writes
                .push(format!("backend {index} port {}", u16::from_be(b.port_be)));
            Ok(())
        }
        fn put_lookup(&mut self, _index: u32, _value: u32) -> Result<(), DataplaneError> {
            self.lookups += 1;
            Ok(())
        }
        fn put_service(&mut self, _k: &ServiceKey, s: &Service) -> Result<(), DataplaneError> {
            self.writes.push(format!(
                "service {} table {}+{}",
                s.id, s.table_base, s.table_len
            ));
            Ok(())
        }
        fn put_fullnat_source(&mut self, id: u32, s: &FullnatSource) -> Result<(), DataplaneError> {
            self.writes.push(format!(
                "fullnat {id} ports {}+{}",
                s.port_first, s.port_count
            ));
            Ok(())
        }
        fn put_flow_guard_rate(&mut self, rate: u32) -> Result<(), DataplaneError> {
            self.guard_rate = Some(rate);
            Ok(())
        }
        fn put_port(&mut self, port: u16, flags: u32) -> Result<(), DataplaneError> {
            self.port_writes.push((port, flags, self.writes.len()));
            if flags == 0 {
                self.ports.remove(&port);
            } else {
                self.ports.insert(port, flags);
            }
            Ok(())
        }
        fn put_reply_owner(&mut self, k: &ServiceKey, o: &Reply) -> Result<(), DataplaneError> {
            self.owners.insert(*k, *o);
            self.owner_writes.push((true, self.writes.len()));
            Ok(())
        }
        fn remove_reply_owner(&mut self, k: &ServiceKey) -> Result<(), DataplaneError> {
            self.owners.remove(k);
            self.owner_writes.push((false, self.writes.len()));
            Ok(())
        }
        fn remove_service(&mut self, k: &ServiceKey) -> Result<(), DataplaneError> {
            self.writes
                .push(format!("remove port {}", u16::from_be(k.port_be)));
            Ok(())
        }
    }

    fn two_services(extra: &str) -> Config {
        parse(
            &format!(
                r#"
interfaces = ["lo"]
[limits]
max_backends_per_service = 4
[[service]]
name = "a"
vip = "10.0.0.1:53"
scheduler = "round-robin"
[[service.backend]]
address = "10.0.1.1:53"
[[service]]
name = "b"
vip = "0.0.0.0:53"
flow_idle_timeout = "5s"
scheduler = "weighted-round-robin"
[[service.backend]]
address = "10.0.2.1:53"
[[service.backend]]
address = "10.0.2.2:53"
weight = 3
{extra}
"#
            ),
            "test",
        )
        .expect("valid config")
    }

    /// IPv6 services are written with their 16-byte addresses: the vip key (all zeros for the
    /// `[::]` wildcard, so it never meets the IPv4 wildcard's key), the backends, the reply
    /// owners, the fullnat source and the dsr-ipip outer source prefix with its host bits
    /// capped at the flow hash's 32; port prefilter bits as for IPv4.
    #[test]
    fn ipv6_services_are_written_with_their_16_byte_addresses() {
        use std::net::Ipv6Addr;
        use xdplb_common::SERVICE_ENCAP_HOST_BITS_MASK;
        let v6 = |s: &str| crate::addr::addr_v6(s.parse::<Ipv6Addr>().expect("literal"));
        let cfg = parse(
            r#"
interfaces = ["lo"]
[[service]]
name = "nat6"
vip = "[2001:db8::1]:53"
forwarding = "nat"
[[service.backend]]
address = "[2001:db8:1::1]:5353"
[[service]]
name = "any6"
vip = "[::]:53"
[[service.backend]]
address = "[::1]:5300"
[[service]]
name = "any4"
vip = "0.0.0.0:53"
[[service.backend]]
address = "127.0.0.1:5301"
[[service]]
name = "ipip6"
vip = "[2001:db8::2]:53"
forwarding = "dsr-ipip"
encap_source = "2001:db8:ff::/64"
[[service.backend]]
address = "[2001:db8:1::2]:53"
[[service]]
name = "ipip6-112"
vip = "[2001:db8::3]:53"
forwarding = "dsr-ipip"
encap_source = "2001:db8:fe::/112"
[[service.backend]]
address = "[2001:db8:1::3]:53"
[[service]]
name = "full6"
vip = "[2001:db8::4]:53"
forwarding = "fullnat"
fullnat_source = "2001:db8:86::1"
fullnat_ports = "30000-30009"
[[service.backend]]
address = "[2001:db8:1::4]:53"
"#,
            "test",
        )
        .expect("valid config");
        let state = desired_state(&cfg, None).expect("plan");
        let by = |name: &str| {
            state
                .services
                .iter()
                .find(|p| p.name == name)
                .expect("planned")
        };
        let nat6 = by("nat6");
        assert_eq!(nat6.key.addr, v6("2001:db8::1"));
        assert_eq!(u16::from_be(nat6.key.port_be), 53);
        assert_eq!(nat6.backends[0].1.addr, v6("2001:db8:1::1"));
        assert_eq!(nat6.service.flags & SERVICE_FLAG_WILDCARD, 0);

        let any6 = by("any6");
        assert_eq!(any6.key.addr, [0; 4], "the IPv6 wildcard key is all zeros");
        assert_ne!(
            any6.key,
            by("any4").key,
            "the two wildcards never share a key"
        );
        assert_eq!(by("any4").key.addr, addr_v4(Ipv4Addr::UNSPECIFIED));
        assert_ne!(any6.service.flags & SERVICE_FLAG_WILDCARD, 0);
        assert_eq!(any6.backends[0].1.addr, v6("::1"));

        let host_bits = |p: &ServicePlan| {
            (p.service.flags & SERVICE_ENCAP_HOST_BITS_MASK) >> SERVICE_ENCAP_HOST_BITS_SHIFT
        };
        let ipip = by("ipip6");
        assert_eq!(ipip.service.encap_source, v6("2001:db8:ff::"));
        assert_eq!(host_bits(ipip), 32, "a /64 gets the hash's 32 bits");
        assert_eq!(host_bits(by("ipip6-112")), 16);

        let full = by("full6");
        let source = full.fullnat.expect("fullnat source");
        assert_eq!(source.addr, v6("2001:db8:86::1"));
        assert_eq!((source.port_first, source.port_count), (30000, 10));

        // Reply owners: keyed by the IPv6 backend, naming the IPv6 vip (or the wildcard).
        let owners = reply_owners(&state);
        let owner = |backend: &str, port: u16| {
            owners
                .get(&ServiceKey {
                    addr: v6(backend),
                    port_be: port.to_be(),
                    proto: xdplb_common::IPPROTO_UDP,
                    _pad: 0,
                })
                .copied()
        };
        let o = owner("2001:db8:1::1", 5353).expect("nat6 owner");
        assert_eq!((o.vip_addr, o.flags), (v6("2001:db8::1"), REPLY_FLAG_NAT));
        let o = owner("::1", 5300).expect("any6 owner");
        assert_eq!((o.vip_addr, o.flags), ([0; 4], REPLY_FLAG_WILDCARD));
        assert_eq!(owner("2001:db8:1::2", 53), None, "dsr has no owner");

        // The prefilter's bits are the same for both families.
        let ports = port_flags(&state);
        assert_eq!(
            ports.get(&53).copied().unwrap_or(0) & (PORT_EXACT_SERVICE | PORT_WILDCARD_SERVICE),
            PORT_EXACT_SERVICE | PORT_WILDCARD_SERVICE
        );
        assert_eq!(ports.get(&5353), Some(&PORT_NAT_BACKEND));
        assert_eq!(ports.get(&5300), Some(&PORT_LOCAL_BACKEND));
        assert_eq!(ports.get(&30000), Some(&PORT_FULLNAT_RANGE));

        // Written through the map writer like any service.
        let mut rec = Recorder::default();
        Reconciler::default()
            .apply(state.clone(), &mut rec)
            .expect("apply");
        assert!(rec.owners.contains_key(&ServiceKey {
            addr: v6("2001:db8:1::1"),
            port_be: 5353u16.to_be(),
            proto: xdplb_common::IPPROTO_UDP,
            _pad: 0,
        }));
    }

    #[test]
    fn default_config_maps_to_one_service_and_three_backends() {
        let state = desired_state(&default_config(), None).expect("plan");
        assert_eq!(state.services.len(), 1);
        let p = &state.services[0];
        assert_eq!(p.key.addr, addr_v4(Ipv4Addr::LOCALHOST));
        assert_eq!(u16::from_be(p.key.port_be), 9875);
        assert_eq!(p.key.proto, xdplb_common::IPPROTO_UDP);
        let s = p.service;
        assert_eq!((s.id, s.backend_base, s.backend_count), (0, 0, 3));
        assert_eq!(
            (s.scheduler, s.table_len),
            (xdplb_common::SCHED_ROUND_ROBIN, 3)
        );
        assert_eq!(s.flow_idle_timeout_ns, 30_000_000_000);
        assert_eq!(p.table, [0, 1, 2]);
        let ports: Vec<u16> = p
            .backends
            .iter()
            .map(|(_, b, _)| u16::from_be(b.port_be))
            .collect();
        assert_eq!(ports, [9876, 9877, 9878]);
    }

    #[test]
    fn flow_stale_after_lands_in_its_flag_bits_and_nowhere_else() {
        let text = |stale: &str| {
            format!(
                "interfaces = [\"lo\"]\n[[service]]\nname = \"m\"\nvip = \"10.0.0.1:53\"\n\
                 forwarding = \"dsr-ipip\"\nencap_source = \"10.200.0.0/24\"\n\
                 when_all_down = \"pass\"\nflow_idle_timeout = \"5m\"\n{stale}\
                 [[service.backend]]\naddress = \"10.0.1.1:53\"\n"
            )
        };
        let flags = |stale: &str| {
            let cfg = parse(&text(stale), "test").expect("valid config");
            desired_state(&cfg, None).expect("plan").services[0]
                .service
                .flags
        };
        let off = flags("");
        assert_eq!(off & SERVICE_STALE_AFTER_MASK, 0, "off by default");
        assert_eq!(service_stale_after_ns(off), 0);
        for (setting, ns) in [
            ("3s", 3_000_000_000),
            ("2s 100ms", 2_100_000_000),
            ("102s 300ms", 102_300_000_000),
        ] {
            let on = flags(&format!("flow_stale_after = \"{setting}\"\n"));
            assert_eq!(service_stale_after_ns(on), ns, "{setting}");
            assert_eq!(
                on & !SERVICE_STALE_AFTER_MASK,
                off,
                "{setting}: the other flags unchanged"
            );
        }
        assert_eq!(flags("flow_stale_after = \"never\"\n"), off);
    }

    #[test]
    fn services_get_disjoint_backend_ranges_and_table_regions() {
        let state = desired_state(&two_services(""), None).expect("plan");
        let b = &state.services[1];
        let idx: Vec<u32> = b.backends.iter().map(|(i, _, _)| *i).collect();
        assert_eq!(idx, [4, 5]);
        assert_eq!(b.backends[1].1.weight, 3);
        assert_eq!(b.key.addr, addr_v4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(b.service.flow_idle_timeout_ns, 5_000_000_000);
        // Region of "a": 2 x max_backends_per_service (4); "b" (wrr) starts after it.
        assert_eq!(
            (b.region_base, b.region_half),
            (8, MAX_WRR_TABLE_LEN as u32)
        );
        // Weighted round robin: backend 5 three times as often as backend 4.
        let count = |i| b.table.iter().filter(|x| **x == i).count();
        assert_eq!((count(4), count(5)), (1, 3));
    }

    #[test]
    fn drained_backends_keep_their_position_but_leave_the_table() {
        let cfg = two_services("drain = true\n[[service.backend]]\naddress = \"10.0.2.3:53\"");
        let b = &desired_state(&cfg, None).expect("plan").services[1];
        assert_eq!(b.backends[1].1.flags, BACKEND_FLAG_DRAINING);
        assert!(
            !b.table.contains(&5),
            "a drained backend takes no new flows"
        );
        assert!(b.table.contains(&4) && b.table.contains(&6));
    }

    #[test]
    fn surviving_backends_keep_their_positions_across_changes() {
        let before = desired_state(&two_services(""), None).expect("plan");
        // Remove 10.0.2.1 (position 0) and add two new ones.
        let mut cfg = two_services(
            "[[service.backend]]\naddress = \"10.0.2.3:53\"\n[[service.backend]]\naddress = \"10.0.2.4:53\"",
        );
        cfg.services[1].backends.remove(0);
        let after = desired_state(&cfg, Some(&before)).expect("plan");
        let pos: Vec<(u32, String)> = after.services[1]
            .backends
            .iter()
            .map(|(i, _, a)| (*i, a.to_string()))
            .collect();
        assert_eq!(
            pos,
            [
                (5, "10.0.2.2:53".to_string()),
                (4, "10.0.2.3:53".to_string()),
                (6, "10.0.2.4:53".to_string())
            ],
            "10.0.2.2 keeps position 1; new backends fill the lowest free positions"
        );
        assert_eq!(after.services[1].service.backend_count, 3);
    }

    #[test]
    fn apply_writes_backends_then_tables_then_services_and_alternates_halves() {
        let mut rec = Recorder::default();
        let mut r = Reconciler::default();
        let cfg = default_config();
        r.apply(desired_state(&cfg, None).expect("plan"), &mut rec)
            .expect("recorder never fails");
        assert_eq!(
            rec.writes,
            [
                "backend 0 port 9876",
                "backend 1 port 9877",
                "backend 2 port 9878",
                "service 0 table 0+3"
            ]
        );
        assert_eq!(rec.lookups, 3);
        // Drop one backend: the new table goes into the second half, then the removed
        // position is cleared after the switch.
        let mut smaller = cfg.clone();
        smaller.services[0].backends.remove(1);
        rec.writes.clear();
        r.apply(
            desired_state(&smaller, r.current()).expect("plan"),
            &mut rec,
        )
        .expect("apply");
        let half = config::table_capacity(&cfg.services[0], &cfg.limits);
        assert_eq!(
            rec.writes,
            [
                format!("service 0 table {half}+2"),
                "backend 1 port 0".to_string()
            ]
        );
        // And back: the first half again.
        rec.writes.clear();
        r.apply(desired_state(&cfg, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        assert_eq!(rec.writes, ["backend 1 port 9877", "service 0 table 0+3"]);
    }

    #[test]
    fn an_adopted_record_survives_json_and_an_unchanged_config_writes_nothing() {
        let cfg = two_services("");
        let mut first = Reconciler::default();
        first
            .apply(
                desired_state(&cfg, None).expect("plan"),
                &mut Recorder::default(),
            )
            .expect("apply");
        let recorded = first.current().expect("applied").clone();
        let text = serde_json::to_string(&recorded).expect("serialize");
        let back: DesiredState = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, recorded);
        let live = |k: &ServiceKey| {
            recorded
                .services
                .iter()
                .find(|p| p.key == *k)
                .map(|p| p.service)
        };
        let mut adopted = Reconciler::adopt(trust_live(back, live));
        let mut rec = Recorder::default();
        adopted
            .apply(
                desired_state(&cfg, adopted.current()).expect("plan"),
                &mut rec,
            )
            .expect("apply");
        assert!(rec.writes.is_empty(), "{:?}", rec.writes);
        assert_eq!(rec.lookups, 0);
    }

    #[test]
    fn a_record_that_disagrees_with_the_live_entry_is_rewritten_into_the_idle_half() {
        let cfg = default_config();
        let recorded = desired_state(&cfg, None).expect("plan");
        let half = recorded.services[0].region_half;
        // The writer died after switching to the second half but before recording it.
        let mut live_entry = recorded.services[0].service;
        live_entry.table_base += half;
        let trusted = trust_live(recorded.clone(), |_| Some(live_entry));
        assert_eq!(trusted.services[0].service, live_entry);
        let mut r = Reconciler::adopt(trusted);
        let mut rec = Recorder::default();
        r.apply(desired_state(&cfg, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        assert_eq!(
            rec.writes,
            [
                "backend 0 port 9876",
                "backend 1 port 9877",
                "backend 2 port 9878",
                "service 0 table 0+3"
            ],
            "backends and table rewritten, table into the half not in use"
        );
        // A recorded service with no live entry is forgotten, so it is written as new.
        assert!(trust_live(recorded, |_| None).services.is_empty());
    }

    #[test]
    fn reply_recognition_is_on_before_a_nat_service_and_off_after_the_last_one() {
        let local = default_config();
        let mut nat = local.clone();
        nat.services[0].forwarding = Forwarding::Nat;
        nat.services[0].backends[0].address = "10.0.0.2:9876".parse().expect("literal");
        nat.services[0].backends[1].address = "10.0.0.3:9877".parse().expect("literal");
        nat.services[0].backends[2].address = "10.0.0.4:9878".parse().expect("literal");
        let mut r = Reconciler::default();
        let mut rec = Recorder::default();
        r.apply(desired_state(&local, None).expect("plan"), &mut rec)
            .expect("apply");
        let nat_port = |rec: &Recorder, want: bool| -> Vec<usize> {
            rec.port_writes
                .iter()
                .filter(|(p, f, _)| *p == 9876 && (*f & PORT_NAT_BACKEND != 0) == want)
                .map(|(_, _, at)| *at)
                .collect()
        };
        assert!(nat_port(&rec, true).is_empty() && rec.owners.values().all(|o| o.flags == 0));
        rec.writes.clear();
        rec.port_writes.clear();
        rec.owner_writes.clear();
        r.apply(desired_state(&nat, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        let switch = rec
            .writes
            .iter()
            .position(|x| x.starts_with("service"))
            .expect("the service switches");
        // A write recorded at `at` came after `at` writes: before the switch means at <= switch.
        // The first write that sets the mark (a later one may only drop the local mark).
        let on = nat_port(&rec, true);
        assert!(
            on.first().is_some_and(|at| *at <= switch),
            "the prefilter marks the nat backend's port before the service switches: {on:?} vs {switch}"
        );
        assert!(
            rec.owner_writes.iter().any(|(put, _)| *put)
                && rec.owner_writes.iter().all(|(put, at)| if *put {
                    *at <= switch
                } else {
                    *at > switch
                }),
            "the new backends' owners are in place before the service switches, the old ones \
             removed only after it: {:?} vs {switch}",
            rec.owner_writes
        );
        // The old (local) backends' owners are retired, not removed: replies in flight still
        // leave from the VIP until the grace ends.
        assert!(rec.owners.values().any(|o| o.flags == 0));
        r.retire_expired(Instant::now() + RETIRE_GRACE, &mut rec)
            .expect("retire");
        assert!(rec.owners.values().all(|o| o.flags == REPLY_FLAG_NAT));
        rec.writes.clear();
        rec.port_writes.clear();
        rec.owner_writes.clear();
        r.apply(desired_state(&local, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        let switch = rec
            .writes
            .iter()
            .position(|x| x.starts_with("service"))
            .expect("the service switches");
        // The nat mark and the nat backends' owners stay through the grace...
        assert_eq!(
            rec.ports.get(&9876),
            Some(&(PORT_LOCAL_BACKEND | PORT_NAT_BACKEND))
        );
        assert!(rec.owners.values().any(|o| o.flags == REPLY_FLAG_NAT));
        // ...and go when it ends, after the service switched back.
        r.retire_expired(Instant::now(), &mut rec).expect("retire");
        assert_eq!(
            rec.ports.get(&9876),
            Some(&(PORT_LOCAL_BACKEND | PORT_NAT_BACKEND))
        );
        r.retire_expired(Instant::now() + RETIRE_GRACE, &mut rec)
            .expect("retire");
        let off = nat_port(&rec, false);
        assert!(
            !off.is_empty() && off.iter().all(|at| *at > switch),
            "the nat mark leaves the prefilter only after the service switched back: {off:?} vs {switch}"
        );
        assert_eq!(rec.ports.get(&9876), Some(&PORT_LOCAL_BACKEND));
        assert!(rec.owners.values().all(|o| o.flags == 0));
    }

    #[test]
    fn a_removed_backends_reply_translation_outlives_the_change_by_the_grace() {
        let three = default_config();
        let mut two = three.clone();
        two.services[0].backends.pop();
        let gone = three.services[0].backends[2].address;
        let key = ServiceKey {
            addr: addr_of(gone.ip()),
            port_be: gone.port().to_be(),
            proto: xdplb_common::IPPROTO_UDP,
            _pad: 0,
        };
        let mut r = Reconciler::default();
        let mut rec = Recorder::default();
        r.apply(desired_state(&three, None).expect("plan"), &mut rec)
            .expect("apply");
        assert!(rec.owners.contains_key(&key), "{:?}", rec.owners);
        r.apply(desired_state(&two, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        // Removed from the config, still translated: a reply already on its way leaves from
        // the VIP.
        assert!(rec.owners.contains_key(&key));
        assert_eq!(rec.ports.get(&gone.port()), Some(&PORT_LOCAL_BACKEND));
        assert_eq!(
            r.retire_expired(Instant::now(), &mut rec).expect("retire"),
            0
        );
        assert!(rec.owners.contains_key(&key));
        // Grace over: gone.
        let removed = r
            .retire_expired(Instant::now() + RETIRE_GRACE, &mut rec)
            .expect("retire");
        assert_eq!(removed, 1);
        assert!(!rec.owners.contains_key(&key));
        assert_eq!(rec.ports.get(&gone.port()), None);
        // Removed and added back within the grace: the retirement leaves it alone.
        r.apply(desired_state(&three, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        r.apply(desired_state(&two, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        r.apply(desired_state(&three, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        r.retire_expired(Instant::now() + RETIRE_GRACE, &mut rec)
            .expect("retire");
        assert!(rec.owners.contains_key(&key));
        assert_eq!(rec.ports.get(&gone.port()), Some(&PORT_LOCAL_BACKEND));
    }

    #[test]
    fn the_prefilter_holds_both_states_ports_while_switching_and_the_new_ones_after() {
        // local on 9875 -> backends 9876..9878; then nat on 7000 -> backends on 8000.
        let local = default_config();
        let mut nat = local.clone();
        nat.services[0].vip = "10.0.0.1:7000".parse().expect("literal");
        nat.services[0].forwarding = Forwarding::Nat;
        for (i, b) in nat.services[0].backends.iter_mut().enumerate() {
            b.address = format!("10.0.0.{}:8000", i + 2).parse().expect("literal");
        }
        let mut r = Reconciler::default();
        let mut rec = Recorder::default();
        r.apply(desired_state(&local, None).expect("plan"), &mut rec)
            .expect("apply");
        let want: BTreeMap<u16, u32> = [
            (9875, PORT_EXACT_SERVICE),
            (9876, PORT_LOCAL_BACKEND),
            (9877, PORT_LOCAL_BACKEND),
            (9878, PORT_LOCAL_BACKEND),
        ]
        .into();
        assert_eq!(rec.ports, want);
        assert_eq!(rec.owners.len(), 3);
        assert!(
            rec.owners
                .values()
                .all(|o| o.flags == 0 && o.vip_port_be == 9875u16.to_be() && o.service_id == 0)
        );
        rec.port_writes.clear();
        r.apply(desired_state(&nat, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        // The old backends' marks and owners are retired: they stay through the grace.
        assert_eq!(rec.ports.get(&9876), Some(&PORT_LOCAL_BACKEND));
        assert_eq!(rec.owners.len(), 6);
        r.retire_expired(Instant::now() + RETIRE_GRACE, &mut rec)
            .expect("retire");
        // Every port of the new state is switched on before any port of the old one is
        // switched off.
        let first_off = rec.port_writes.iter().position(|(_, f, _)| *f == 0);
        let last_on = rec.port_writes.iter().rposition(|(_, f, _)| *f != 0);
        assert!(
            first_off.is_some_and(|off| last_on.is_some_and(|on| on < off)),
            "{:?}",
            rec.port_writes
        );
        let want: BTreeMap<u16, u32> =
            [(7000, PORT_EXACT_SERVICE), (8000, PORT_NAT_BACKEND)].into();
        assert_eq!(rec.ports, want);
        assert_eq!(rec.owners.len(), 3);
        assert!(rec.owners.values().all(|o| o.flags == REPLY_FLAG_NAT));
        // A wildcard service's owner says so; a fullnat range marks its ports.
        let mut wild = nat.clone();
        wild.services[0].vip = "0.0.0.0:7000".parse().expect("literal");
        r.apply(desired_state(&wild, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        assert_eq!(rec.ports.get(&7000), Some(&PORT_WILDCARD_SERVICE));
        assert!(
            rec.owners
                .values()
                .all(|o| o.flags == REPLY_FLAG_NAT | REPLY_FLAG_WILDCARD)
        );
        let mut full = nat.clone();
        full.services[0].forwarding = Forwarding::FullNat;
        full.services[0].fullnat = Some(config::FullnatConfig {
            source: "10.0.0.9".parse().expect("literal"),
            port_first: 30000,
            port_last: 30009,
        });
        r.apply(desired_state(&full, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        r.retire_expired(Instant::now() + RETIRE_GRACE, &mut rec)
            .expect("retire");
        assert!(rec.owners.is_empty());
        assert_eq!(rec.ports.len(), 11);
        assert!((30000..=30009).all(|p| rec.ports.get(&p) == Some(&PORT_FULLNAT_RANGE)));
        assert_eq!(rec.guard_rate, Some(config::DEFAULT_FLOW_GUARD_RATE));
    }

    #[test]
    fn services_keep_ids_and_regions_when_others_come_and_go() {
        let cfg = two_services("");
        let before = desired_state(&cfg, None).expect("plan");
        // A new service first in the file, and "a" removed.
        let mut next = cfg.clone();
        let mut c = next.services[0].clone();
        c.name = "c".into();
        c.vip = "10.0.0.3:53".parse().expect("literal");
        next.services.remove(0);
        next.services.insert(0, c);
        let after = desired_state(&next, Some(&before)).expect("plan");
        let b_before = &before.services[1];
        let b_after = after.services.iter().find(|s| s.name == "b").expect("b");
        assert_eq!(b_after.service.id, b_before.service.id, "b keeps its id");
        assert_eq!(
            b_after.region_base, b_before.region_base,
            "b keeps its region"
        );
        assert_eq!(b_after.backends, b_before.backends, "b keeps its positions");
        let c_after = after.services.iter().find(|s| s.name == "c").expect("c");
        assert_eq!(
            c_after.service.id, 2,
            "the id of removed \"a\" stays reserved in this change"
        );
        let used: Vec<(u32, u32)> = before
            .services
            .iter()
            .map(|s| (s.region_base, s.region_base + 2 * s.region_half))
            .collect();
        let (cb, ce) = (
            c_after.region_base,
            c_after.region_base + 2 * c_after.region_half,
        );
        assert!(
            used.iter().all(|(b, e)| ce <= *b || cb >= *e),
            "c's region {cb}..{ce} overlaps one the old state still uses: {used:?}"
        );
    }

    #[test]
    fn a_new_table_size_gets_a_fresh_region_or_a_clear_error() {
        let mut cfg = two_services("");
        cfg.services[0].scheduler = Scheduler::Maglev;
        cfg.services[0].maglev_table_size = 1009;
        let before = desired_state(&cfg, None).expect("plan");
        let mut bigger = cfg.clone();
        bigger.services[0].maglev_table_size = 2003;
        let after = desired_state(&bigger, Some(&before)).expect("plan");
        let (old, new) = (&before.services[0], &after.services[0]);
        assert!(
            new.region_base >= old.region_base + 2 * old.region_half
                || new.region_base + 2 * new.region_half <= old.region_base,
            "the new region must not overlap the one still serving"
        );
        // With no room for old and new side by side, the change is refused.
        bigger.limits.max_lookup_entries = before
            .services
            .iter()
            .map(|s| 2 * s.region_half)
            .sum::<u32>()
            + 100;
        let err = desired_state(&bigger, Some(&before)).expect_err("no room");
        assert!(err.to_string().contains("max_lookup_entries"), "{err}");
    }

    #[test]
    fn a_removed_service_is_deleted() {
        let mut rec = Recorder::default();
        let mut r = Reconciler::default();
        let cfg = two_services("");
        r.apply(desired_state(&cfg, None).expect("plan"), &mut rec)
            .expect("apply");
        let mut one = cfg.clone();
        one.services.truncate(1);
        rec.writes.clear();
        r.apply(desired_state(&one, r.current()).expect("plan"), &mut rec)
            .expect("apply");
        assert!(
            rec.writes.contains(&"remove port 53".to_string()),
            "{:?}",
            rec.writes
        );
        assert!(rec.writes.contains(&"backend 4 port 0".to_string()));
    }
}
