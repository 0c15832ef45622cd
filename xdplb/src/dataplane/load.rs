//! Loading the eBPF object with capacities from the config.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{SchedClassifier, Xdp},
};
use xdplb_common::{
    Backend, Counter, FullnatPeer, FullnatSource, GLOBAL_DEBUG_LOG, GLOBAL_SLOT_FLOW_GUARD_RATE,
    INTERFACE_FLAG_GENERIC, InterfaceMac, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_FLOWS, MAP_FULLNAT,
    MAP_FULLNAT_SOURCES, MAP_GLOBALS, MAP_LOCAL_MACS, MAP_LOOKUP, MAP_NEXTHOPS, MAP_PORTS,
    MAP_REPLIES, MAP_REPLY_OWNERS, MAP_RR_CURSOR, MAP_SERVICE_STATS, MAP_SERVICES, MAP_STATS,
    NextHop, Reply, ReplyKey, Service, ServiceKey, Stat,
};

use super::{
    AttachedInterface, DataplaneError, MapWriter,
    pin::{PIN_VERSION, PINNED_MAPS, PinRecord, Pins},
    reconcile::{DesiredState, Reconciler, desired_state, trust_live},
};
use crate::config::{Config, Limits};

/// The load balancer's eBPF object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdplb"));
/// The benchmark harness object (frame restore + tail call), built by build.rs.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdplb-bench"));

/// The backend side of `dsr-ipip` (`xdplb decap`), built by build.rs.
pub static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdplb-decap"));

pub const PROGRAM_INGRESS: &str = "xdplb_ingress";
pub const PROGRAM_REPLY: &str = "xdplb_reply";
pub const PROGRAM_ICMP: &str = "xdplb_icmp";
pub const PROGRAM_FINISH: &str = "xdplb_finish_checksum";
pub const PROGRAM_FRAGMENT: &str = "xdplb_fragment";
pub const PROGRAM_NAT_REPLY: &str = "xdplb_nat_reply";
pub const PROGRAM_CAPTURE: &str = "xdplb_capture";
pub const PROGRAM_INGRESS6: &str = "xdplb_ingress6";
pub const PROGRAM_NAT_REPLY6: &str = "xdplb_nat_reply6";
/// ICMPv6 errors about balanced flows, tail-called by the IPv6 ingress program.
pub const PROGRAM_ICMP6: &str = "xdplb_icmp6";
/// The tail-call array of the ingress program (not pinned: it belongs to one load).
const MAP_PROGS: &str = "XDPLB_PROGS";

/// A loaded (not necessarily attached) data plane. Dropping it detaches every link it made and
/// unloads programs and maps.
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub limits: Limits,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    reconciler: Reconciler,
    /// Where the maps are pinned and the record written, if they are.
    pins: Option<Pins>,
    /// Where the programs are attached, for the pin record.
    pub(crate) interfaces: Vec<AttachedInterface>,
}

impl Dataplane {
    /// Loads and verifies both programs with maps sized from `limits`. Attaches nothing. The
    /// maps belong to this process and go when it drops the data plane.
    pub fn load(limits: Limits, debug_log: bool) -> Result<Self, DataplaneError> {
        Self::load_with(limits, debug_log, None)
    }

    /// Like [`Dataplane::load`], but the state maps are pinned under `pins`: maps pinned there
    /// already are reused as they are (check them first with [`Pins::check_maps`]), the others
    /// are created and pinned.
    pub fn load_pinned(
        limits: Limits,
        debug_log: bool,
        pins: &Pins,
    ) -> Result<Self, DataplaneError> {
        pins.create_dirs()?;
        Self::load_with(limits, debug_log, Some(pins))
    }

    fn load_with(
        limits: Limits,
        debug_log: bool,
        pins: Option<&Pins>,
    ) -> Result<Self, DataplaneError> {
        if !super::has_bpf_privileges() {
            return Err(DataplaneError::NotPermitted(
                "the process lacks CAP_NET_ADMIN and CAP_BPF/CAP_SYS_ADMIN".into(),
            ));
        }
        let backends = limits.max_services * limits.max_backends_per_service;
        let debug = u8::from(debug_log);
        let pin_paths: Vec<(&'static str, std::path::PathBuf)> = pins
            .map(|p| PINNED_MAPS.iter().map(|m| (*m, p.map(m))).collect())
            .unwrap_or_default();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .override_global(GLOBAL_DEBUG_LOG, &debug, true)
            .map_max_entries(MAP_SERVICES, limits.max_services)
            .map_max_entries(MAP_BACKENDS, backends)
            .map_max_entries(MAP_RR_CURSOR, limits.max_services)
            .map_max_entries(MAP_LOOKUP, limits.max_lookup_entries)
            .map_max_entries(MAP_FLOWS, limits.max_flows)
            .map_max_entries(MAP_REPLIES, limits.max_flows)
            .map_max_entries(MAP_SERVICE_STATS, limits.max_services)
            .map_max_entries(MAP_BACKEND_STATS, backends)
            .map_max_entries(MAP_NEXTHOPS, backends)
            .map_max_entries(MAP_FULLNAT_SOURCES, limits.max_services)
            .map_max_entries(MAP_FULLNAT, limits.max_flows)
            .map_max_entries(MAP_REPLY_OWNERS, backends)
            .load(OBJECT)
            .map_err(|e| match &e {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                    if io_error.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    DataplaneError::NotPermitted(io_error.to_string())
                }
                _ => DataplaneError::Load(Box::new(e)),
            })?;
        // The logger owns the log ring buffer; without debug logging nothing is ever written.
        let logger = if debug_log {
            aya_log::EbpfLogger::init(&mut ebpf).ok()
        } else {
            None
        };
        let xdp: &mut Xdp = program_mut(&mut ebpf, PROGRAM_INGRESS)?;
        xdp.load()
            .map_err(|e| DataplaneError::program(PROGRAM_INGRESS, e))?;
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, PROGRAM_REPLY)?;
        tc.load()
            .map_err(|e| DataplaneError::program(PROGRAM_REPLY, e))?;
        // The ICMP path, the completion of partial checksums and later fragments are programs
        // of their own that ingress tail-calls (slots 0, 1 and 2 of XDPLB_PROGS), and so are
        // the nat/fullnat reply path (slot 3), which may hand a packet back to ingress (slot 4);
        // slot 5: the capture's "after" (see `xdplb capture`), tail-called by every XDP
        // program's exit while a captured packet's copy is due; slot 6: the IPv6 ingress,
        // tail-called by ingress for IPv6 frames, with its own reply path (slot 8). The slots
        // are the `PROG_*` constants of xdplb-ebpf's main.rs.
        let mut tail_fds = Vec::new();
        for (slot, name) in [
            (0u32, PROGRAM_ICMP),
            (1, PROGRAM_FINISH),
            (2, PROGRAM_FRAGMENT),
            (3, PROGRAM_NAT_REPLY),
            (4, PROGRAM_INGRESS),
            (5, PROGRAM_CAPTURE),
            (6, PROGRAM_INGRESS6),
            (7, PROGRAM_ICMP6),
            (8, PROGRAM_NAT_REPLY6),
        ] {
            let prog: &mut Xdp = program_mut(&mut ebpf, name)?;
            // Ingress is loaded above (it is also the program attached).
            if name != PROGRAM_INGRESS {
                prog.load().map_err(|e| DataplaneError::program(name, e))?;
            }
            let fd = prog
                .fd()
                .map_err(|e| DataplaneError::program(name, e))?
                .try_clone()
                .map_err(DataplaneError::Io)?;
            tail_fds.push((slot, fd));
        }
        let progs = ebpf
            .map_mut(MAP_PROGS)
            .ok_or(DataplaneError::MissingMap(MAP_PROGS))?;
        let mut progs: ProgramArray<&mut MapData> =
            ProgramArray::try_from(progs).map_err(|e| DataplaneError::map(MAP_PROGS, e))?;
        for (slot, fd) in &tail_fds {
            progs
                .set(*slot, fd, 0)
                .map_err(|e| DataplaneError::map(MAP_PROGS, e))?;
        }
        Ok(Dataplane {
            ebpf,
            limits,
            logger,
            reconciler: Reconciler::default(),
            pins: pins.cloned(),
            interfaces: Vec::new(),
        })
    }

    /// Where this data plane is pinned, if it is.
    pub fn pins(&self) -> Option<&Pins> {
        self.pins.as_ref()
    }

    /// Takes over pinned maps that another process filled: the reconciler starts from the
    /// pin record, checked against the live service entries (see [`trust_live`]), so the
    /// next apply writes only what differs and live flows keep their backends.
    pub fn adopt(&mut self, record: PinRecord) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_SERVICES)
            .ok_or(DataplaneError::MissingMap(MAP_SERVICES))?;
        let services: HashMap<&MapData, ServiceKey, Service> =
            HashMap::try_from(map).map_err(|e| DataplaneError::map(MAP_SERVICES, e))?;
        let state = trust_live(record.state, |k| services.get(k, 0).ok());
        self.reconciler = Reconciler::adopt(state);
        self.interfaces = record.interfaces;
        Ok(())
    }

    /// Removes service entries that the current state does not have (left by a writer that
    /// died before recording them). Returns how many.
    pub fn remove_stray_services(&mut self) -> Result<usize, DataplaneError> {
        let known: Vec<ServiceKey> = self
            .reconciler
            .current()
            .map(|s| s.services.iter().map(|p| p.key).collect())
            .unwrap_or_default();
        let map = self
            .ebpf
            .map_mut(MAP_SERVICES)
            .ok_or(DataplaneError::MissingMap(MAP_SERVICES))?;
        let mut services: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(map).map_err(|e| DataplaneError::map(MAP_SERVICES, e))?;
        let stray: Vec<ServiceKey> = services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !known.contains(k))
            .collect();
        for k in &stray {
            services
                .remove(k)
                .map_err(|e| DataplaneError::map(MAP_SERVICES, e))?;
        }
        Ok(stray.len())
    }

    /// Writes the pin record (a no-op for an unpinned data plane).
    pub fn write_pin_record(&self) -> Result<(), DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        pins.write_record(&PinRecord {
            version: PIN_VERSION.to_string(),
            interfaces: self.interfaces.clone(),
            state: self.reconciler.current().cloned().unwrap_or_default(),
            stats_map_id: self.map_id(MAP_STATS).ok(),
            pins_dir: Some(pins.dir.clone()),
            mount_ns: super::pin::own_mount_ns(),
        })
    }

    /// Forwards pending debug log records (if debug logging is on) to the `log` facade.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// The ingress XDP program, for attaching or BPF_PROG_TEST_RUN.
    pub fn ingress(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program_mut(&mut self.ebpf, PROGRAM_INGRESS)
    }

    /// The TC egress reply program.
    pub fn reply(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        program_mut(&mut self.ebpf, PROGRAM_REPLY)
    }

    /// Instructions the verifier processed for each program, for the budget test.
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        [
            PROGRAM_INGRESS,
            PROGRAM_REPLY,
            PROGRAM_ICMP,
            PROGRAM_FINISH,
            PROGRAM_FRAGMENT,
            PROGRAM_NAT_REPLY,
            PROGRAM_CAPTURE,
            PROGRAM_INGRESS6,
            PROGRAM_ICMP6,
            PROGRAM_NAT_REPLY6,
        ]
        .into_iter()
        .map(|name| {
            let count = self
                .ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count());
            (name, count)
        })
        .collect()
    }

    /// The kernel id of a map, so another process (`xdplb stats`) can open it.
    pub fn map_id(&self, name: &'static str) -> Result<u32, DataplaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let data: &MapData = match map {
            aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::RingBuf(d) => d,
            _ => return Err(DataplaneError::MissingMap(name)),
        };
        Ok(data.info().map_err(|e| DataplaneError::map(name, e))?.id())
    }

    /// The summed (over CPUs) global counters, indexed like [`Stat::ALL`].
    pub fn stats(&self) -> Result<Vec<u64>, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_STATS)
            .ok_or(DataplaneError::MissingMap(MAP_STATS))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|e| DataplaneError::map(MAP_STATS, e))?;
        sum_u64(&arr, Stat::COUNT)
    }

    /// Entries in the flow table now (one syscall per entry).
    pub fn flow_table_entries(&self) -> Result<u64, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_FLOWS)
            .ok_or(DataplaneError::MissingMap(MAP_FLOWS))?;
        let flows: HashMap<&MapData, xdplb_common::FlowKey, xdplb_common::Flow> =
            HashMap::try_from(map).map_err(|e| DataplaneError::map(MAP_FLOWS, e))?;
        Ok(flows.keys().flatten().count() as u64)
    }

    /// Summed per-service or per-backend traffic counters for `indices`.
    pub fn traffic(
        &self,
        map_name: &'static str,
        indices: &[u32],
    ) -> Result<Vec<Counter>, DataplaneError> {
        let map = self
            .ebpf
            .map(map_name)
            .ok_or(DataplaneError::MissingMap(map_name))?;
        let arr: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(map).map_err(|e| DataplaneError::map(map_name, e))?;
        indices
            .iter()
            .map(|i| {
                let v = arr
                    .get(i, 0)
                    .map_err(|e| DataplaneError::map(map_name, e))?;
                Ok(sum_counters(&v))
            })
            .collect()
    }

    /// Moves the maps to what `cfg` asks for, keeping surviving backends at their positions and
    /// switching every service's table atomically (see [`Reconciler::apply`]). The config's
    /// limits must be the ones this data plane was loaded with.
    pub fn apply_config(&mut self, cfg: &Config) -> Result<(), DataplaneError> {
        if cfg.limits != self.limits {
            return Err(DataplaneError::LimitsChanged);
        }
        let next = desired_state(cfg, self.reconciler.current())?;
        self.apply(next)
    }

    /// Applies a desired state (see [`Reconciler::apply`]).
    pub fn apply(&mut self, next: DesiredState) -> Result<(), DataplaneError> {
        let mut reconciler = std::mem::take(&mut self.reconciler);
        let result = match self.writer() {
            Ok(mut maps) => reconciler.apply(next, &mut maps),
            Err(e) => Err(e),
        };
        self.reconciler = reconciler;
        // Recorded whatever the outcome: the reconciler holds what the maps hold now.
        let recorded = self.write_pin_record();
        result.and(recorded)
    }

    /// Removes the reply translations of removed backends whose grace ended by `now` (see
    /// [`crate::dataplane::reconcile::RETIRE_GRACE`]). Returns how many owners went.
    pub fn retire_expired(&mut self, now: std::time::Instant) -> Result<usize, DataplaneError> {
        let mut reconciler = std::mem::take(&mut self.reconciler);
        let result = match self.writer() {
            Ok(mut maps) => reconciler.retire_expired(now, &mut maps),
            Err(e) => Err(e),
        };
        self.reconciler = reconciler;
        result
    }

    /// What the maps hold, as last applied.
    pub fn current(&self) -> Option<&DesiredState> {
        self.reconciler.current()
    }

    /// Map writes for reconciliation.
    pub fn writer(&mut self) -> Result<KernelMaps<'_>, DataplaneError> {
        let [services, backends, lookup, sources, globals, ports, owners] =
            self.ebpf.maps_disjoint_mut([
                MAP_SERVICES,
                MAP_BACKENDS,
                MAP_LOOKUP,
                MAP_FULLNAT_SOURCES,
                MAP_GLOBALS,
                MAP_PORTS,
                MAP_REPLY_OWNERS,
            ]);
        let services: HashMap<&mut MapData, ServiceKey, Service> = services
            .ok_or(DataplaneError::MissingMap(MAP_SERVICES))?
            .try_into()
            .map_err(|e| DataplaneError::map(MAP_SERVICES, e))?;
        let backends: Array<&mut MapData, Backend> = backends
            .ok_or(DataplaneError::MissingMap(MAP_BACKENDS))?
            .try_into()
            .map_err(|e| DataplaneError::map(MAP_BACKENDS, e))?;
        let lookup: Array<&mut MapData, u32> = lookup
            .ok_or(DataplaneError::MissingMap(MAP_LOOKUP))?
            .try_into()
            .map_err(|e| DataplaneError::map(MAP_LOOKUP, e))?;
        let fullnat_sources: Array<&mut MapData, FullnatSource> = sources
            .ok_or(DataplaneError::MissingMap(MAP_FULLNAT_SOURCES))?
            .try_into()
            .map_err(|e| DataplaneError::map(MAP_FULLNAT_SOURCES, e))?;
        let globals: Array<&mut MapData, u32> = globals
            .ok_or(DataplaneError::MissingMap(MAP_GLOBALS))?
            .try_into()
            .map_err(|e| DataplaneError::map(MAP_GLOBALS, e))?;
        let ports: Array<&mut MapData, u32> = ports
            .ok_or(DataplaneError::MissingMap(MAP_PORTS))?
            .try_into()
            .map_err(|e| DataplaneError::map(MAP_PORTS, e))?;
        let reply_owners: HashMap<&mut MapData, ServiceKey, Reply> = owners
            .ok_or(DataplaneError::MissingMap(MAP_REPLY_OWNERS))?
            .try_into()
            .map_err(|e| DataplaneError::map(MAP_REPLY_OWNERS, e))?;
        Ok(KernelMaps {
            services,
            backends,
            lookup,
            fullnat_sources,
            globals,
            ports,
            reply_owners,
        })
    }

    /// Records the Ethernet address of an interface the ingress program is (about to be)
    /// attached to: only frames addressed to it are balanced there. `generic`: the program
    /// runs there in generic (skb) mode.
    pub fn set_interface_mac(
        &mut self,
        ifindex: u32,
        mac: [u8; 6],
        generic: bool,
    ) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_LOCAL_MACS)
            .ok_or(DataplaneError::MissingMap(MAP_LOCAL_MACS))?;
        let mut macs: HashMap<&mut MapData, u32, InterfaceMac> =
            HashMap::try_from(map).map_err(|e| DataplaneError::map(MAP_LOCAL_MACS, e))?;
        let flags = if generic { INTERFACE_FLAG_GENERIC } else { 0 };
        macs.insert(
            ifindex,
            InterfaceMac {
                mac,
                flags,
                _pad: 0,
            },
            0,
        )
        .map_err(|e| DataplaneError::map(MAP_LOCAL_MACS, e))
    }

    /// Writes the next-hop cache entry of backend `index` (see `xdplb_common::MAP_NEXTHOPS`);
    /// the kernel replaces an existing entry whole.
    pub fn set_next_hop(&mut self, index: u32, hop: &NextHop) -> Result<(), DataplaneError> {
        self.next_hops_mut()?
            .insert(index, hop, 0)
            .map_err(|e| DataplaneError::map(MAP_NEXTHOPS, e))
    }

    /// Deletes the next-hop cache entry of backend `index`, if there is one: its packets go
    /// through `bpf_fib_lookup` again.
    pub fn remove_next_hop(&mut self, index: u32) -> Result<(), DataplaneError> {
        match self.next_hops_mut()?.remove(&index) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
            {
                Ok(())
            }
            Err(e) => Err(DataplaneError::map(MAP_NEXTHOPS, e)),
        }
    }

    /// Every entry of the next-hop cache, by backend index.
    pub fn next_hops(&self) -> Result<Vec<(u32, NextHop)>, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_NEXTHOPS)
            .ok_or(DataplaneError::MissingMap(MAP_NEXTHOPS))?;
        let hops: HashMap<&MapData, u32, NextHop> =
            HashMap::try_from(map).map_err(|e| DataplaneError::map(MAP_NEXTHOPS, e))?;
        Ok(hops.iter().filter_map(Result::ok).collect())
    }

    fn next_hops_mut(&mut self) -> Result<HashMap<&mut MapData, u32, NextHop>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_NEXTHOPS)
            .ok_or(DataplaneError::MissingMap(MAP_NEXTHOPS))?;
        HashMap::try_from(map).map_err(|e| DataplaneError::map(MAP_NEXTHOPS, e))
    }

    /// Sets every CPU's round-robin cursor of `service_id` to `value` (tests use this to make
    /// the schedule deterministic).
    pub fn set_rr_cursor(&mut self, service_id: u32, value: u32) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_RR_CURSOR)
            .ok_or(DataplaneError::MissingMap(MAP_RR_CURSOR))?;
        let mut arr: PerCpuArray<&mut MapData, u32> =
            PerCpuArray::try_from(map).map_err(|e| DataplaneError::map(MAP_RR_CURSOR, e))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io(e))?;
        let values = PerCpuValues::try_from(vec![value; cpus])?;
        arr.set(service_id, values, 0)
            .map_err(|e| DataplaneError::map(MAP_RR_CURSOR, e))
    }

    /// Deletes `fullnat` translations idle for longer than their flow's timeout, which frees
    /// their ports (the data plane only ever takes a free port). Returns how many it deleted.
    ///
    /// A translation deleted here belongs to a flow that the data plane has already expired
    /// (idle past the same timeout), so its next packet is a new flow with a new port.
    pub fn sweep_fullnat(&mut self) -> Result<usize, DataplaneError> {
        // bpf_ktime_get_ns() is CLOCK_MONOTONIC.
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let now = (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64);
        let map = self
            .ebpf
            .map_mut(MAP_FULLNAT)
            .ok_or(DataplaneError::MissingMap(MAP_FULLNAT))?;
        let mut table: HashMap<&mut MapData, ReplyKey, FullnatPeer> =
            HashMap::try_from(map).map_err(|e| DataplaneError::map(MAP_FULLNAT, e))?;
        let idle: Vec<ReplyKey> = table
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, p)| now.saturating_sub(p.last_seen_ns) > p.idle_timeout_ns)
            .map(|(k, _)| k)
            .collect();
        let mut deleted = 0;
        for k in &idle {
            // Taken again since (or deleted): not an error.
            if table.remove(k).is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Direct access to the loaded object, for tests and the benchmark.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// The maps that reconciliation writes.
pub struct KernelMaps<'a> {
    services: HashMap<&'a mut MapData, ServiceKey, Service>,
    backends: Array<&'a mut MapData, Backend>,
    lookup: Array<&'a mut MapData, u32>,
    fullnat_sources: Array<&'a mut MapData, FullnatSource>,
    globals: Array<&'a mut MapData, u32>,
    ports: Array<&'a mut MapData, u32>,
    reply_owners: HashMap<&'a mut MapData, ServiceKey, Reply>,
}

impl MapWriter for KernelMaps<'_> {
    fn put_backend(&mut self, index: u32, backend: &Backend) -> Result<(), DataplaneError> {
        let capacity = self.backends.len();
        if index >= capacity {
            return Err(DataplaneError::OverCapacity {
                what: "backend",
                index,
                capacity,
            });
        }
        self.backends
            .set(index, backend, 0)
            .map_err(|e| DataplaneError::map(MAP_BACKENDS, e))
    }

    fn put_lookup(&mut self, index: u32, backend_index: u32) -> Result<(), DataplaneError> {
        let capacity = self.lookup.len();
        if index >= capacity {
            return Err(DataplaneError::OverCapacity {
                what: "scheduling table entry",
                index,
                capacity,
            });
        }
        self.lookup
            .set(index, backend_index, 0)
            .map_err(|e| DataplaneError::map(MAP_LOOKUP, e))
    }

    fn put_service(&mut self, key: &ServiceKey, service: &Service) -> Result<(), DataplaneError> {
        self.services
            .insert(key, service, 0)
            .map_err(|e| DataplaneError::map(MAP_SERVICES, e))
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        self.services
            .remove(key)
            .map_err(|e| DataplaneError::map(MAP_SERVICES, e))
    }

    fn put_flow_guard_rate(&mut self, rate: u32) -> Result<(), DataplaneError> {
        self.globals
            .set(GLOBAL_SLOT_FLOW_GUARD_RATE, rate, 0)
            .map_err(|e| DataplaneError::map(MAP_GLOBALS, e))
    }

    fn put_port(&mut self, port: u16, flags: u32) -> Result<(), DataplaneError> {
        self.ports
            .set(u32::from(port), flags, 0)
            .map_err(|e| DataplaneError::map(MAP_PORTS, e))
    }

    fn put_reply_owner(
        &mut self,
        backend: &ServiceKey,
        owner: &Reply,
    ) -> Result<(), DataplaneError> {
        self.reply_owners
            .insert(backend, owner, 0)
            .map_err(|e| DataplaneError::map(MAP_REPLY_OWNERS, e))
    }

    fn remove_reply_owner(&mut self, backend: &ServiceKey) -> Result<(), DataplaneError> {
        self.reply_owners
            .remove(backend)
            .map_err(|e| DataplaneError::map(MAP_REPLY_OWNERS, e))
    }

    fn put_fullnat_source(
        &mut self,
        service_id: u32,
        source: &FullnatSource,
    ) -> Result<(), DataplaneError> {
        self.fullnat_sources
            .set(service_id, source, 0)
            .map_err(|e| DataplaneError::map(MAP_FULLNAT_SOURCES, e))
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|e| DataplaneError::program(name, e))
}

fn sum_u64(arr: &PerCpuArray<&MapData, u64>, len: u32) -> Result<Vec<u64>, DataplaneError> {
    (0..len)
        .map(|i| {
            let v = arr
                .get(&i, 0)
                .map_err(|e| DataplaneError::map(MAP_STATS, e))?;
            Ok(v.iter().sum())
        })
        .collect()
}

pub fn sum_counters(values: &[Counter]) -> Counter {
    values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
        flows: acc.flows + c.flows,
    })
}
