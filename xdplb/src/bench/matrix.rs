//! The forwarding-mode matrix of `xdplb bench`: every forwarding mode, with flow tables of
//! several sizes, each prefilled until it evicts, measured for the first and second packet of a
//! new flow, a packet of an existing flow, and packets to no service.
//!
//! `FLOWS_V1` is an LRU hash with BPF_F_NO_COMMON_LRU: each possible CPU owns
//! `max_flows / nCPUs` entries and evicts only among its own. The measuring thread is pinned to
//! one CPU, so every BPF_PROG_TEST_RUN inserts into that CPU's share, and sizes are given per
//! CPU (`max_flows` = per CPU x possible CPUs).
//!
//! The remote modes look their backends up in the FIB of the calling thread's network
//! namespace: the matrix runs in a namespace of its own ([`super::netns`]) where every backend is
//! routed and its neighbour resolved, so that they measure forwarding (TX/REDIRECT), not their
//! drop path. The XDP action is printed next to every figure.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use serde::Serialize;
use xdplb_common::Stat;

use super::{
    BenchError, Harness, Measured, Report, accept_bench_frames, action_name, frame_from_port,
    frame_to, harness, median,
    netns::{BenchNetns, LOCAL_ADDR, LOCAL_ADDR6},
};
use crate::{
    config::{self, Config, EncapSource, Forwarding, FullnatConfig, ServiceConfig},
    dataplane::Dataplane,
};

/// Flow-table sizes (entries per CPU) measured by default.
pub const DEFAULT_TABLES: [u32; 3] = [2048, 131_072, 4_194_304];
/// Backends of the benchmark service. Many, so that `fullnat` never runs out of source ports:
/// its translations are keyed by (backend, source port), and the prefill of the largest table
/// plus the new flows measured take several million of them (the daemon's sweep, which frees
/// the ports of idled-out flows, does not run here). 512 x 64512 ports keeps them under a
/// quarter taken, so 8 tries almost never all fail.
const BACKENDS: u32 = 512;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
/// The service's port, also the backends' (so that dsr modes, which keep the port, accept it).
const PORT: u16 = 7000;
/// The prefill sends this many distinct flows per hundred entries of the CPU's share.
const PREFILL_PERCENT: u64 = 110;
/// Tables up to this many entries per CPU are also walked after the prefill to count the
/// entries they hold (one syscall per entry; larger ones rely on the counters alone).
const WALK_LIMIT: u32 = 131_072;
/// The smallest `max_flows` the data plane accepts (`[limits] max_flows`).
const MIN_MAX_FLOWS: u64 = 1024;
const MAX_MAX_FLOWS: u64 = 67_108_864;

/// A per-service option that changes where flow state is created.
///
/// The matrix measures every mode with every variant that [`Variant::applies_to`] allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The service as configured by default: flow state on the first packet.
    Default,
    /// `flow_state = "second-packet"` (dsr modes): the first packet of a flow creates no
    /// entry; its second packet does.
    SecondPacket,
}

impl Variant {
    pub const ALL: &'static [Variant] = &[Variant::Default, Variant::SecondPacket];

    pub const fn as_str(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::SecondPacket => "flow_state = second-packet",
        }
    }

    /// Whether the variant means anything for `mode`.
    pub fn applies_to(self, mode: Forwarding) -> bool {
        match self {
            Variant::Default => true,
            Variant::SecondPacket => matches!(mode, Forwarding::DsrL2 | Forwarding::DsrIpip),
        }
    }

    /// Sets the variant's per-service options on `svc`.
    fn apply(self, svc: &mut ServiceConfig) {
        match self {
            Variant::Default => {}
            Variant::SecondPacket => svc.flow_state = config::FlowState::SecondPacket,
        }
    }
}

/// The address family of the benchmark service, its backends and its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Family {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    pub const ALL: &'static [Family] = &[Family::V4, Family::V6];

    pub const fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The benchmark service's VIP with `port`.
    fn vip(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::new(VIP.into(), port),
            Family::V6 => SocketAddr::new(VIP6.into(), port),
        }
    }

    /// An address beside the VIP that no service has.
    fn other_address(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::new(Ipv4Addr::new(10, 99, 0, 2).into(), port),
            Family::V6 => {
                SocketAddr::new(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2).into(), port)
            }
        }
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct MatrixOptions {
    pub modes: Vec<Forwarding>,
    /// The address families, each measured for every mode.
    pub families: Vec<Family>,
    /// Flow-table entries per CPU.
    pub tables: Vec<u32>,
    pub variants: Vec<Variant>,
    /// Iterations per BPF_PROG_TEST_RUN.
    pub repeat: u32,
    /// Iterations per run of the new-flow cases (each inserts and evicts; fewer keep the
    /// run short).
    pub new_flow_repeat: u32,
    /// Rounds per figure (at least 5).
    pub rounds: u32,
    /// The CPU to measure on (default: the first the process may run on).
    pub cpu: Option<usize>,
}

/// The median and range of a figure's rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The median (the upper one of an even count), minimum and maximum of `rounds`; NaN for
    /// none.
    pub fn of(rounds: &[f64]) -> Spread {
        let mut v = rounds.to_vec();
        let median = median(&mut v);
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The cost of the second packet of a new flow, from the first packet's cost and the average
/// of (first + second) that `bench_new_flow_twice` measures.
pub fn second_packet_ns(first: f64, average_of_two: f64) -> f64 {
    2.0 * average_of_two - first
}

/// `[limits] max_flows` for `per_cpu` entries on each of `cpus` possible CPUs.
pub fn max_flows_for(per_cpu: u32, cpus: usize) -> Result<u32, String> {
    let total = u64::from(per_cpu) * cpus as u64;
    if !(MIN_MAX_FLOWS..=MAX_MAX_FLOWS).contains(&total) {
        return Err(format!(
            "{per_cpu} flows per CPU x {cpus} CPUs = {total}: max_flows must be {MIN_MAX_FLOWS}..={MAX_MAX_FLOWS}"
        ));
    }
    u32::try_from(total).map_err(|e| e.to_string())
}

/// Distinct flows the prefill sends to fill a CPU's share of `per_cpu` entries and evict.
pub fn prefill_flows(per_cpu: u32) -> u32 {
    let n = (u64::from(per_cpu) * PREFILL_PERCENT).div_ceil(100);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRow {
    pub case: &'static str,
    /// Net ns/packet (wrapper subtracted): median and range over rounds.
    pub net_ns: Spread,
    /// Median ns/iteration of the wrapper tail-calling the empty program.
    pub wrapper_ns: f64,
    /// The XDP action of the last iteration.
    pub action: u32,
    pub action_name: &'static str,
}

/// How the prefill went, from the global counters (and a walk of the table when it is small).
#[derive(Debug, Clone, Serialize)]
pub struct Prefill {
    /// Distinct new flows sent.
    pub flows_sent: u32,
    /// `FlowCreated` after the prefill.
    pub flows_created: u64,
    /// `FlowTableInsert` after the prefill (inserts under a key the table did not hold).
    pub table_inserts: u64,
    /// `FlowInsertFailed` after the prefill.
    pub insert_failed: u64,
    /// Entries the flow table holds (walked only up to `WALK_LIMIT` per CPU).
    pub entries: Option<u64>,
    /// Inserts minus entries held: the flows evicted.
    pub evicted: Option<u64>,
    /// More flows were inserted than the CPU's share holds, none failed (and, when walked,
    /// the table holds about its share): the table is full and every new flow evicts one.
    pub full: bool,
    pub seconds: f64,
}

/// One mode with one variant and one table size.
#[derive(Debug, Clone, Serialize)]
pub struct TableRun {
    pub family: Family,
    pub mode: &'static str,
    pub variant: &'static str,
    pub flows_per_cpu: u32,
    pub max_flows: u32,
    pub load_seconds: f64,
    pub prefill: Prefill,
    pub cases: Vec<CaseRow>,
    /// Counters after every case: `DropPortsExhausted` (fullnat) and `FlowInsertFailed`.
    pub ports_exhausted: u64,
    pub insert_failed: u64,
    /// Iterations per run of the new-flow cases (fullnat: at most max_flows / 2).
    pub new_flow_repeat: u32,
    /// Times the fullnat translation table was emptied before a new-flow run.
    pub translations_cleared: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixReport {
    /// The network namespace the matrix ran in (deleted since).
    pub namespace: String,
    pub cpu: usize,
    pub possible_cpus: usize,
    pub repeat: u32,
    pub new_flow_repeat: u32,
    pub rounds: u32,
    pub backends: u32,
    /// Median ns/iteration of the empty XDP program alone (the floor).
    pub empty_program_ns: f64,
    pub runs: Vec<TableRun>,
    pub seconds: f64,
}

/// Case names, in the order measured and printed.
const NO_SERVICE_ADDR: &str = "no service (other address)";
const NO_SERVICE_PORT: &str = "no service (VIP, other port)";
const EXISTING: &str = "existing flow";
const FIRST: &str = "new flow, first packet";
const PAIR: &str = "new flow, 2 packets (average)";
const SECOND: &str = "new flow, second packet";

/// Runs the matrix on a thread of its own, pinned to one CPU and moved into a network
/// namespace made for it (deleted afterwards, on error too); then, if `classic` is given (the
/// `--max-flows` of the single-service sections), the scheduler and Maglev sections of
/// [`super::run`] on the same thread.
pub fn run_matrix(
    opts: MatrixOptions,
    classic: Option<Option<u32>>,
) -> Result<(MatrixReport, Option<Report>), BenchError> {
    if opts.rounds < 5 {
        return Err(BenchError::Harness(format!(
            "--rounds {}: the matrix takes medians over at least 5 rounds",
            opts.rounds
        )));
    }
    let cpus =
        aya::util::nr_cpus().map_err(|(what, e)| BenchError::Harness(format!("{what}: {e}")))?;
    for &t in &opts.tables {
        max_flows_for(t, cpus).map_err(BenchError::Harness)?;
    }
    let cpu = match opts.cpu {
        Some(c) => c,
        None => first_allowed_cpu()?,
    };
    std::thread::Builder::new()
        .name("xdplb-bench".into())
        .spawn(move || -> Result<_, BenchError> {
            pin_to(cpu)?;
            let backends = backend_addresses();
            let ns = BenchNetns::create(&backends.v4, &backends.v6)?;
            ns.enter()?;
            eprintln!(
                "bench: measuring on CPU {cpu} of {cpus} possible, in network namespace {}",
                ns.name()
            );
            let mut matrix = matrix_on_this_thread(&opts, cpu, cpus, &backends)?;
            matrix.namespace = ns.name().to_string();
            let classic = match classic {
                Some(max_flows) => {
                    eprintln!("bench: the default service, schedulers and Maglev builds");
                    Some(super::run(opts.repeat, opts.rounds, max_flows)?)
                }
                None => None,
            };
            Ok((matrix, classic))
        })
        .map_err(harness("spawning the bench thread"))?
        .join()
        .map_err(|_| BenchError::Harness("the bench thread panicked".into()))?
}

fn first_allowed_cpu() -> Result<usize, BenchError> {
    let set = rustix::thread::sched_getaffinity(None).map_err(harness("sched_getaffinity"))?;
    (0..rustix::thread::CpuSet::MAX_CPU)
        .find(|&c| set.is_set(c))
        .ok_or_else(|| BenchError::Harness("the process may run on no CPU".into()))
}

/// Pins the calling thread to `cpu`, so that every test run inserts into that CPU's share of
/// the flow table.
fn pin_to(cpu: usize) -> Result<(), BenchError> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
        .map_err(|e| BenchError::Harness(format!("pinning to CPU {cpu}: {e}")))?;
    let now = rustix::thread::sched_getcpu();
    if now != cpu {
        return Err(BenchError::Harness(format!(
            "pinned to CPU {cpu} but running on {now}"
        )));
    }
    Ok(())
}

/// The benchmark backends of each family: `10.201.2.0` + i and `fd00:201:2::` + i.
struct Backends {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

impl Backends {
    fn of(&self, family: Family) -> Vec<IpAddr> {
        match family {
            Family::V4 => self.v4.iter().map(|&a| a.into()).collect(),
            Family::V6 => self.v6.iter().map(|&a| a.into()).collect(),
        }
    }
}

fn backend_addresses() -> Backends {
    Backends {
        v4: (0..BACKENDS)
            .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 2, 0)) + i))
            .collect(),
        v6: (0..BACKENDS)
            .map(|i| {
                Ipv6Addr::from(
                    u128::from(Ipv6Addr::new(0xfd00, 0x201, 2, 0, 0, 0, 0, 0)) + u128::from(i),
                )
            })
            .collect(),
    }
}

/// The benchmark service in `mode` with `variant`, in a data plane with `max_flows`.
fn mode_config(
    family: Family,
    mode: Forwarding,
    variant: Variant,
    max_flows: u32,
    backends: &[IpAddr],
) -> Config {
    let mut cfg: Config = config::default_config();
    // Small service and table pools, as in `run`: the kernel frees each data plane's maps in
    // the background while the next one is measured.
    cfg.limits.max_services = 16;
    cfg.limits.max_lookup_entries = 262_144;
    cfg.limits.max_flows = max_flows;
    // The flood guard would turn most of a new-flow run (millions of flows a second) into
    // guard drops: off, so that the runs measure what a flow costs.
    cfg.flow_guard_rate = 0;
    cfg.services.truncate(1);
    let svc = &mut cfg.services[0];
    svc.vip = family.vip(PORT);
    svc.forwarding = mode;
    // The config's default scheduler (the tutorial's service uses round robin).
    svc.scheduler = config::Scheduler::Maglev;
    let template = svc.backends[0].clone();
    svc.backends = backends
        .iter()
        .map(|&a| config::BackendConfig {
            address: SocketAddr::new(a, PORT),
            ..template.clone()
        })
        .collect();
    svc.encap_source = (mode == Forwarding::DsrIpip).then_some(match family {
        Family::V4 => EncapSource {
            base: Ipv4Addr::new(10, 200, 0, 0).into(),
            prefix_len: 24,
        },
        Family::V6 => EncapSource {
            base: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0).into(),
            prefix_len: 64,
        },
    });
    svc.fullnat = (mode == Forwarding::FullNat).then_some(FullnatConfig {
        source: match family {
            Family::V4 => LOCAL_ADDR.into(),
            Family::V6 => LOCAL_ADDR6.into(),
        },
        port_first: 1024,
        port_last: 65535,
    });
    variant.apply(svc);
    cfg
}

fn matrix_on_this_thread(
    opts: &MatrixOptions,
    cpu: usize,
    cpus: usize,
    backends: &Backends,
) -> Result<MatrixReport, BenchError> {
    let started = Instant::now();
    let mut h = Harness::load()?;
    let service = frame_to(Family::V4.vip(PORT));
    let (empty_ns, _) = h.time("bench_empty", &service, opts.repeat, opts.rounds)?;
    let mut runs = Vec::new();
    // Mode by mode, each family in turn: the two families' figures of a mode are measured
    // minutes apart at most, on the same machine state.
    for &mode in &opts.modes {
        for &family in &opts.families {
            for &variant in opts.variants.iter().filter(|v| v.applies_to(mode)) {
                for &per_cpu in &opts.tables {
                    runs.push(measure_table(
                        &mut h,
                        opts,
                        (family, mode, variant),
                        per_cpu,
                        cpus,
                        &backends.of(family),
                    )?);
                }
            }
        }
    }
    Ok(MatrixReport {
        namespace: String::new(),
        cpu,
        possible_cpus: cpus,
        repeat: opts.repeat,
        new_flow_repeat: opts.new_flow_repeat,
        rounds: opts.rounds,
        backends: BACKENDS,
        empty_program_ns: empty_ns,
        runs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn stat(stats: &[u64], s: Stat) -> u64 {
    stats.get(s as usize).copied().unwrap_or(0)
}

fn measure_table(
    h: &mut Harness,
    opts: &MatrixOptions,
    (family, mode, variant): (Family, Forwarding, Variant),
    per_cpu: u32,
    cpus: usize,
    backends: &[IpAddr],
) -> Result<TableRun, BenchError> {
    let label = format!(
        "{} {} ({}), {per_cpu} flows/CPU",
        family.as_str(),
        mode.as_str(),
        variant.as_str()
    );
    let max_flows = max_flows_for(per_cpu, cpus).map_err(BenchError::Harness)?;
    // Prefilled as by default (a flow's first packet creates its entry); the variant is applied
    // to the full table afterwards, as a live change.
    let cfg = mode_config(family, mode, Variant::Default, max_flows, backends);
    let t = Instant::now();
    let mut dp = Dataplane::load(cfg.limits, false)?;
    dp.apply_config(&cfg)?;
    accept_bench_frames(&mut dp)?;
    let load_seconds = t.elapsed().as_secs_f64();

    // Prefill: distinct new flows until the CPU's share has evicted.
    let service = frame_to(family.vip(PORT));
    let flows_sent = prefill_flows(per_cpu);
    eprintln!("bench: {label}: loaded in {load_seconds:.1} s, prefilling {flows_sent} flows");
    let t = Instant::now();
    h.set_frame(&service)?;
    h.set_target(dp.ingress()?)?;
    h.time("bench_new_flow", &service, flows_sent, 1)?;
    let seconds = t.elapsed().as_secs_f64();
    let stats = dp.stats()?;
    let (flows_created, table_inserts, insert_failed) = (
        stat(&stats, Stat::FlowCreated),
        stat(&stats, Stat::FlowTableInsert),
        stat(&stats, Stat::FlowInsertFailed),
    );
    let entries = if per_cpu <= WALK_LIMIT {
        Some(dp.flow_table_entries()?)
    } else {
        None
    };
    let evicted = entries.map(|e| table_inserts.saturating_sub(e));
    // The LRU frees a few entries ahead when it evicts, so a full share may hold a handful
    // fewer than its size.
    let full = table_inserts > u64::from(per_cpu)
        && table_inserts >= u64::from(flows_sent)
        && insert_failed == 0
        && entries.is_none_or(|e| e + 64 >= u64::from(per_cpu));
    eprintln!(
        "bench: {label}: prefilled in {seconds:.1} s: {flows_created} created, {table_inserts} inserted, {} held{}",
        entries.map_or("(not walked)".to_string(), |e| e.to_string()),
        if full {
            ""
        } else {
            " -- the table is NOT full"
        }
    );
    if variant != Variant::Default {
        dp.apply_config(&mode_config(family, mode, variant, max_flows, backends))?;
    }
    // What the daemon does after every change: resolve the remote backends' next hops into the
    // cache (`NEXTHOPS_V1`), so that the remote modes send without a FIB lookup.
    // Quietly: the daemon logs every next hop it learns, which here would be 512 lines a table.
    let quiet = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .finish();
    let cached = tracing::subscriber::with_default(quiet, || crate::nexthop::fill_cache(&mut dp))?;
    eprintln!("bench: {label}: {cached} next hops cached");
    let prefill = Prefill {
        flows_sent,
        flows_created,
        table_inserts,
        insert_failed,
        entries,
        evicted,
        full,
        seconds,
    };

    let (repeat, rounds) = (opts.repeat, opts.rounds);
    let other_addr = frame_to(family.other_address(PORT));
    let other_port = frame_to(family.vip(PORT + 1));
    // Its own source port: the pairs never meet the flows of `bench_new_flow`.
    let twice = frame_from_port(40001, family.vip(PORT));
    let mut cases = Vec::new();
    let row = |case, m: &Measured| CaseRow {
        case,
        net_ns: Spread::of(&m.nets),
        wrapper_ns: m.wrapper_ns,
        action: m.action,
        action_name: action_name(m.action),
    };
    for (case, frame) in [
        (NO_SERVICE_ADDR, &other_addr),
        (NO_SERVICE_PORT, &other_port),
    ] {
        let m = h.paired("bench_same_flow", dp.ingress()?, frame, repeat, rounds)?;
        cases.push(row(case, &m));
    }
    let m = h.paired("bench_same_flow", dp.ingress()?, &service, repeat, rounds)?;
    cases.push(row(EXISTING, &m));
    // New flows. fullnat takes a translation (and a port) per new flow from a table of
    // max_flows entries that only the daemon's sweep frees, which does not run here: its
    // runs are capped at half that table, and the table is emptied before any run that could
    // fill it, so that they measure port allocation and not "ports exhausted".
    let ingress = crate::testrun::handle(dp.ingress()?).map_err(harness("ingress handle"))?;
    let new_repeat = if mode == Forwarding::FullNat {
        opts.new_flow_repeat.min(max_flows / 2)
    } else {
        opts.new_flow_repeat
    };
    let mut taken = u64::from(flows_sent);
    let mut translations_cleared = 0u32;
    let mut before_run = |n: u32| -> Result<(), BenchError> {
        if mode == Forwarding::FullNat && taken + u64::from(n) > u64::from(max_flows) {
            clear_fullnat(&mut dp)?;
            taken = 0;
            translations_cleared += 1;
        }
        taken += u64::from(n);
        Ok(())
    };
    // First packets and pairs interleaved round by round: the second packet is derived from
    // both, so they should see the same machine.
    let mut measured = h.paired_cases(
        &[
            ("bench_new_flow", &service),
            ("bench_new_flow_twice", &twice),
        ],
        &ingress,
        new_repeat,
        rounds,
        &mut before_run,
    )?;
    drop(ingress);
    let (Some(pair), Some(first)) = (measured.pop(), measured.pop()) else {
        return Err(BenchError::Harness("new-flow cases not measured".into()));
    };
    cases.push(row(FIRST, &first));
    cases.push(row(PAIR, &pair));
    let second: Vec<f64> = first
        .nets
        .iter()
        .zip(&pair.nets)
        .map(|(&f, &p)| second_packet_ns(f, p))
        .collect();
    cases.push(CaseRow {
        case: SECOND,
        net_ns: Spread::of(&second),
        wrapper_ns: pair.wrapper_ns,
        // The last iteration of the pairs run is a second packet.
        action: pair.action,
        action_name: action_name(pair.action),
    });
    let stats = dp.stats()?;
    let run = TableRun {
        family,
        mode: mode.as_str(),
        variant: variant.as_str(),
        flows_per_cpu: per_cpu,
        max_flows,
        load_seconds,
        prefill,
        cases,
        ports_exhausted: stat(&stats, Stat::DropPortsExhausted),
        insert_failed: stat(&stats, Stat::FlowInsertFailed),
        new_flow_repeat: new_repeat,
        translations_cleared,
    };
    // Free this data plane (its maps go with their last descriptor) before the next loads.
    drop(dp);
    Ok(run)
}

/// Deletes every `fullnat` translation (what the daemon's sweep would have freed by now).
fn clear_fullnat(dp: &mut Dataplane) -> Result<(), BenchError> {
    use aya::maps::HashMap;
    use xdplb_common::{FullnatPeer, ReplyKey};
    let map = dp
        .ebpf_mut()
        .map_mut(xdplb_common::MAP_FULLNAT)
        .ok_or_else(|| BenchError::Harness("FULLNAT_V1 missing".into()))?;
    let mut table: HashMap<_, ReplyKey, FullnatPeer> =
        HashMap::try_from(map).map_err(harness("FULLNAT_V1"))?;
    let keys: Vec<ReplyKey> = table.keys().filter_map(Result::ok).collect();
    for k in &keys {
        table.remove(k).map_err(harness("FULLNAT_V1 delete"))?;
    }
    Ok(())
}

/// The matrix as a text table: one block per mode, variant and table size.
pub fn render_matrix(r: &MatrixReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Forwarding modes x flow-table size, BPF_PROG_TEST_RUN on CPU {} ({} possible CPUs), \
         {} iterations ({} for new flows) x {} rounds, 64-byte frames, {} backends routed in \
         the bench's own namespace.",
        r.cpu, r.possible_cpus, r.repeat, r.new_flow_repeat, r.rounds, r.backends
    );
    let _ = writeln!(
        s,
        "Each table is prefilled with {PREFILL_PERCENT}% of its per-CPU share in distinct flows \
         (full: every new flow evicts one). net ns = median over rounds of (wrapper + program) - \
         (wrapper + empty program), [min - max] of the rounds; action = XDP action of the last \
         iteration. Empty program alone: {:.1} ns.",
        r.empty_program_ns
    );
    let _ = writeln!(
        s,
        "second packet = 2 x (2 packets average) - first packet, round by round (both measured \
         back to back in each round)."
    );
    for run in &r.runs {
        let p = &run.prefill;
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{} {} ({}), {} flows/CPU (max_flows {}): prefill {} flows, {} inserted, {} held, {}{}{}",
            run.family.as_str(),
            run.mode,
            run.variant,
            group(u64::from(run.flows_per_cpu)),
            group(u64::from(run.max_flows)),
            group(u64::from(p.flows_sent)),
            group(p.table_inserts),
            p.entries.map_or("- (not walked)".into(), group),
            if p.full { "full" } else { "NOT FULL" },
            if run.ports_exhausted > 0 {
                format!(", {} port allocations failed", run.ports_exhausted)
            } else {
                String::new()
            },
            if run.insert_failed > 0 {
                format!(", {} inserts failed", run.insert_failed)
            } else {
                String::new()
            },
        );
        if run.translations_cleared > 0 || run.new_flow_repeat != r.new_flow_repeat {
            let _ = writeln!(
                s,
                "  (new-flow runs of {} iterations; fullnat translations emptied {} times between runs)",
                run.new_flow_repeat, run.translations_cleared
            );
        }
        for c in &run.cases {
            let _ = writeln!(
                s,
                "  {:<32} {:>8.1} ns  [{:>7.1} - {:>7.1}]  {}",
                c.case, c.net_ns.median, c.net_ns.min, c.net_ns.max, c.action_name
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "matrix took {:.0} s", r.seconds);
    s
}

/// `n` with thousands separated by commas.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_range() {
        let s = Spread::of(&[5.0, 1.0, 9.0, 3.0, 7.0]);
        assert_eq!(
            s,
            Spread {
                median: 5.0,
                min: 1.0,
                max: 9.0
            }
        );
        assert!(Spread::of(&[]).median.is_nan());
    }

    #[test]
    fn second_packet_from_first_and_pair_average() {
        // first 300, second 100: the pair averages 200.
        assert_eq!(second_packet_ns(300.0, 200.0), 100.0);
        // State on the second packet: first 100, second 300.
        assert_eq!(second_packet_ns(100.0, 200.0), 300.0);
    }

    #[test]
    fn table_size_to_max_flows() {
        assert_eq!(max_flows_for(2048, 2), Ok(4096));
        assert_eq!(max_flows_for(4_194_304, 2), Ok(8_388_608));
        assert_eq!(max_flows_for(131_072, 1), Ok(131_072));
        // Below the data plane's minimum, and above its maximum.
        assert!(max_flows_for(256, 2).is_err());
        assert!(max_flows_for(67_108_864, 2).is_err());
        assert_eq!(prefill_flows(2048), 2253);
        assert_eq!(prefill_flows(4_194_304), 4_613_735);
    }

    #[test]
    fn thousands_grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(2048), "2,048");
        assert_eq!(group(4_194_304), "4,194,304");
        assert_eq!(group(131_072), "131,072");
    }
}
