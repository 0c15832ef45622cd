//! `xdplb bench`: the data plane's cost per packet through BPF_PROG_TEST_RUN.
//!
//! With `repeat > 1` the kernel runs every iteration on the buffer the previous one rewrote, so
//! each measurement goes through a wrapper program (xdplb-bench) that restores the original
//! frame (and, for new flows, writes a fresh source address) and tail-calls the program under
//! test. The wrapper's own cost is measured by tail-calling an empty program, in the same run,
//! and subtracted.

use std::{fmt::Write as _, net::SocketAddrV4};

use aya::{
    Ebpf,
    maps::{Array, ProgramArray},
    programs::Xdp,
};
use serde::Serialize;

mod matrix;
mod netns;

pub use matrix::{
    CaseRow, DEFAULT_TABLES, Family, MatrixOptions, MatrixReport, Prefill, Spread, TableRun,
    Variant, render_matrix, run_matrix,
};

use crate::{
    config::{self, Config, HashFields, Scheduler},
    dataplane::{BENCH_OBJECT, Dataplane, DataplaneError, reconcile},
    packet::UdpFrame,
    testrun,
};

/// Every benchmark frame is this long (the wrapper restores a fixed 64 bytes).
const FRAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("next-hop cache: {0}")]
    NextHop(#[from] crate::nexthop::NextHopError),
    #[error("benchmark harness: {0}")]
    Harness(String),
    #[error("BPF_PROG_TEST_RUN of {what}: {source}")]
    TestRun {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn harness<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> BenchError + '_ {
    move |e| BenchError::Harness(format!("{what}: {e}"))
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: &'static str,
    /// Median over rounds of the kernel's average ns per iteration, wrapper included.
    pub total_ns: f64,
    /// The same for the wrapper tail-calling an empty program.
    pub wrapper_ns: f64,
    /// Median over rounds of (total - wrapper), each pair measured back to back: the program's
    /// own cost.
    pub net_ns: f64,
    /// The XDP action of the last iteration (2 = XDP_PASS).
    pub action: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchedulerRow {
    pub scheduler: &'static str,
    /// Net ns/packet (wrapper subtracted) for a packet of an existing flow.
    pub existing_flow_ns: f64,
    /// Net ns/packet for the first packet of a new flow.
    pub new_flow_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MaglevRow {
    pub backends: usize,
    pub table_size: u32,
    /// Median time to compute the table in user space.
    pub build_ms: f64,
    /// Median time for a whole change: build, write into the idle half, switch.
    pub build_and_apply_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub repeat: u32,
    pub rounds: u32,
    pub max_flows: u32,
    pub empty_program_ns: f64,
    pub rows: Vec<Row>,
    pub schedulers: Vec<SchedulerRow>,
    pub maglev: Vec<MaglevRow>,
}

struct Harness {
    bench: Ebpf,
}

impl Harness {
    fn load() -> Result<Self, BenchError> {
        let mut bench = Ebpf::load(BENCH_OBJECT).map_err(harness("loading xdplb-bench"))?;
        for name in [
            "bench_same_flow",
            "bench_new_flow",
            "bench_new_flow_twice",
            "bench_empty",
        ] {
            let p: &mut Xdp = bench
                .program_mut(name)
                .ok_or_else(|| BenchError::Harness(format!("program {name} missing")))?
                .try_into()
                .map_err(harness(name))?;
            p.load().map_err(harness(name))?;
        }
        Ok(Harness { bench })
    }

    fn set_frame(&mut self, frame: &[u8]) -> Result<(), BenchError> {
        let mut words = [0u64; FRAME_LEN / 8];
        for (i, w) in words.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[i * 8..i * 8 + 8]);
            *w = u64::from_ne_bytes(b);
        }
        let map = self
            .bench
            .map_mut("BENCH_FRAME")
            .ok_or_else(|| BenchError::Harness("BENCH_FRAME missing".into()))?;
        let mut arr: Array<_, [u64; FRAME_LEN / 8]> =
            Array::try_from(map).map_err(harness("BENCH_FRAME"))?;
        arr.set(0, words, 0).map_err(harness("BENCH_FRAME"))
    }

    fn set_target(&mut self, target: &Xdp) -> Result<(), BenchError> {
        let fd = target.fd().map_err(harness("target fd"))?;
        let map = self
            .bench
            .map_mut("BENCH_TARGET")
            .ok_or_else(|| BenchError::Harness("BENCH_TARGET missing".into()))?;
        let mut arr = ProgramArray::try_from(map).map_err(harness("BENCH_TARGET"))?;
        arr.set(0, fd, 0).map_err(harness("BENCH_TARGET"))
    }

    fn set_target_empty(&mut self) -> Result<(), BenchError> {
        let empty: &Xdp = self
            .bench
            .program("bench_empty")
            .ok_or_else(|| BenchError::Harness("bench_empty missing".into()))?
            .try_into()
            .map_err(harness("bench_empty"))?;
        let fd = empty
            .fd()
            .map_err(harness("bench_empty fd"))?
            .try_clone()
            .map_err(harness("dup"))?;
        let map = self
            .bench
            .map_mut("BENCH_TARGET")
            .ok_or_else(|| BenchError::Harness("BENCH_TARGET missing".into()))?;
        let mut arr = ProgramArray::try_from(map).map_err(harness("BENCH_TARGET"))?;
        arr.set(0, &fd, 0).map_err(harness("BENCH_TARGET"))
    }

    /// Times `wrapper` tail-calling `target` and tail-calling the empty program, back to back in
    /// every round, so that both see the same machine; returns the medians of the total, of the
    /// wrapper alone and of the per-round differences, and the last action.
    fn paired(
        &mut self,
        wrapper: &'static str,
        target: &Xdp,
        frame: &[u8],
        repeat: u32,
        rounds: u32,
    ) -> Result<Measured, BenchError> {
        self.paired_with(wrapper, target, frame, repeat, rounds, &mut |_| Ok(()))
    }

    /// [`Harness::paired`], calling `before_run(iterations)` before every run of `target`
    /// (the warm-up included).
    fn paired_with(
        &mut self,
        wrapper: &'static str,
        target: &Xdp,
        frame: &[u8],
        repeat: u32,
        rounds: u32,
        before_run: &mut dyn FnMut(u32) -> Result<(), BenchError>,
    ) -> Result<Measured, BenchError> {
        let mut m = self.paired_cases(&[(wrapper, frame)], target, repeat, rounds, before_run)?;
        m.pop()
            .ok_or_else(|| BenchError::Harness("no measurement".into()))
    }

    /// [`Harness::paired_with`] for several (wrapper, frame) cases at once, interleaved: every
    /// round measures each case (wrapper alone, then with `target`) back to back, so that
    /// figures derived from two cases of the same round see the same machine.
    fn paired_cases(
        &mut self,
        cases: &[(&'static str, &[u8])],
        target: &Xdp,
        repeat: u32,
        rounds: u32,
        before_run: &mut dyn FnMut(u32) -> Result<(), BenchError>,
    ) -> Result<Vec<Measured>, BenchError> {
        // A warm-up run (it also creates the flow of the existing-flow cases). Two iterations,
        // and `repeat` rounded up to even: `bench_new_flow_twice` must run an even number of
        // times so that each run starts with the first packet of a flow.
        let repeat = repeat.saturating_add(repeat % 2);
        self.set_target(target)?;
        for &(wrapper, frame) in cases {
            self.set_frame(frame)?;
            before_run(2)?;
            self.time(wrapper, frame, 2, 1)?;
        }
        let mut out: Vec<Samples> = cases.iter().map(|_| Samples::default()).collect();
        for _ in 0..rounds.max(1) {
            for (
                &(wrapper, frame),
                Samples {
                    totals,
                    wrappers,
                    nets,
                    action,
                },
            ) in cases.iter().zip(&mut out)
            {
                self.set_frame(frame)?;
                self.set_target_empty()?;
                let (w, _) = self.time(wrapper, frame, repeat, 1)?;
                self.set_target(target)?;
                before_run(repeat)?;
                let (t, a) = self.time(wrapper, frame, repeat, 1)?;
                totals.push(t);
                wrappers.push(w);
                nets.push(t - w);
                *action = a;
            }
        }
        Ok(out
            .into_iter()
            .map(|mut s| Measured {
                total_ns: median(&mut s.totals),
                wrapper_ns: median(&mut s.wrappers),
                net_ns: median(&mut s.nets.clone()),
                nets: s.nets,
                action: s.action,
            })
            .collect())
    }

    /// Median ns/iteration over `rounds` runs of `program` with `repeat` iterations each.
    fn time(
        &self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
        rounds: u32,
    ) -> Result<(f64, u32), BenchError> {
        let p: &Xdp = self
            .bench
            .program(program)
            .ok_or_else(|| BenchError::Harness(format!("{program} missing")))?
            .try_into()
            .map_err(harness(program))?;
        let mut samples = Vec::new();
        let mut action = 0;
        for _ in 0..rounds {
            let run = testrun::run_xdp(p, frame, repeat).map_err(|source| BenchError::TestRun {
                what: program,
                source,
            })?;
            samples.push(f64::from(run.duration_ns));
            action = run.action;
        }
        Ok((median(&mut samples), action))
    }
}

/// One case's samples, round by round.
#[derive(Default)]
struct Samples {
    totals: Vec<f64>,
    wrappers: Vec<f64>,
    nets: Vec<f64>,
    action: u32,
}

struct Measured {
    total_ns: f64,
    wrapper_ns: f64,
    net_ns: f64,
    /// Every round's total - wrapper, in the order measured.
    nets: Vec<f64>,
    action: u32,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One forwarding mode's cost, existing flow.
#[derive(Debug, Clone, Serialize)]
pub struct ModeRow {
    pub mode: &'static str,
    pub net_ns: f64,
    /// The XDP action of the last iteration (2 PASS, 3 TX, 4 REDIRECT).
    pub action: u32,
}

/// ns/packet of an existing flow in every forwarding mode, towards `backend` (whose port is
/// also the VIP's, so dsr modes accept it). The FIB lookups of the remote modes see the calling
/// process's network namespace: run it where `backend` is routed and its neighbour resolved
/// (`scripts/bench-forwarding.sh` does), or the remote modes measure their drop path (their
/// action says so).
pub fn forwarding_modes(
    backend: SocketAddrV4,
    source: std::net::Ipv4Addr,
    repeat: u32,
    rounds: u32,
) -> Result<Vec<ModeRow>, BenchError> {
    use crate::config::{EncapSource, Forwarding, FullnatConfig};
    let mut h = Harness::load()?;
    let vip = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 99, 0, 1), backend.port());
    let frame = frame_to(vip);
    let mut rows = Vec::new();
    for mode in [
        Forwarding::Local,
        Forwarding::Nat,
        Forwarding::FullNat,
        Forwarding::DsrL2,
        Forwarding::DsrIpip,
    ] {
        let mut cfg: Config = config::default_config();
        // The flood guard off: new-flow runs measure what a flow costs, not guard drops.
        cfg.flow_guard_rate = 0;
        cfg.limits.max_services = 16;
        cfg.limits.max_lookup_entries = 262_144;
        let svc = &mut cfg.services[0];
        svc.vip = vip.into();
        svc.forwarding = mode;
        svc.backends.truncate(1);
        svc.backends[0].address = backend.into();
        svc.encap_source = (mode == Forwarding::DsrIpip).then_some(EncapSource {
            base: std::net::Ipv4Addr::new(10, 200, 0, 0).into(),
            prefix_len: 24,
        });
        svc.fullnat = (mode == Forwarding::FullNat).then_some(FullnatConfig {
            source: source.into(),
            port_first: 20000,
            port_last: 59999,
        });
        let mut dp = Dataplane::load(cfg.limits, false)?;
        dp.apply_config(&cfg)?;
        // As the daemon does: the remote modes send with the next-hop cache when the backend's
        // route and neighbour resolve here (else they measure the bpf_fib_lookup path).
        crate::nexthop::fill_cache(&mut dp)?;
        accept_bench_frames(&mut dp)?;
        let m = h.paired("bench_same_flow", dp.ingress()?, &frame, repeat, rounds)?;
        rows.push(ModeRow {
            mode: mode.as_str(),
            net_ns: m.net_ns,
            action: m.action,
        });
    }
    Ok(rows)
}

/// Text table of [`forwarding_modes`].
pub fn render_modes(rows: &[ModeRow]) -> String {
    let mut s = String::from("mode        ns/packet (existing flow)   action\n");
    for r in rows {
        let action = action_name(r.action);
        let _ = writeln!(
            s,
            "{:<10} {:>12.1}                {action}",
            r.mode, r.net_ns
        );
    }
    s
}

/// The name of an XDP action.
pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "other",
    }
}

fn frame_to(dst: impl Into<std::net::SocketAddr>) -> Vec<u8> {
    frame_from_port(40000, dst)
}

/// A FRAME_LEN-byte frame from 10.9.8.7:`sport` (IPv6: `[fd00:9:8::7]:sport`) to `dst`.
fn frame_from_port(sport: u16, dst: impl Into<std::net::SocketAddr>) -> Vec<u8> {
    use std::net::SocketAddr;
    match dst.into() {
        SocketAddr::V4(dst) => {
            let src = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 9, 8, 7), sport);
            let mut f = UdpFrame::new(src, dst, &[]);
            // Pad the payload so the frame is exactly FRAME_LEN bytes (14 + 20 + 8 + payload).
            f.payload = vec![0xab; FRAME_LEN - 42];
            f.build()
        }
        SocketAddr::V6(dst) => {
            let src = std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::new(0xfd00, 9, 8, 0, 0, 0, 0, 7),
                sport,
                0,
                0,
            );
            // 14 + 40 + 8 + 2 bytes of payload: FRAME_LEN.
            crate::packet::udp6_frame(src, dst, &[0xab; FRAME_LEN - 62])
        }
    }
}

/// Runs the benchmark on the built-in default service (`127.0.0.1:9875`, three backends), with
/// flow and reply tables of `max_flows` entries (the config default when `None`).
pub fn run(repeat: u32, rounds: u32, max_flows: Option<u32>) -> Result<Report, BenchError> {
    let mut cfg: Config = config::default_config();
    // The flood guard off: new-flow runs measure what a flow costs, not guard drops.
    cfg.flow_guard_rate = 0;
    if let Some(n) = max_flows {
        cfg.limits.max_flows = n;
    }
    // Small service and table pools: the benchmark loads several data planes in a row, and the
    // kernel frees each one's maps in the background (RCU) while the next one is measured.
    // Default-sized pools (a million backend slots) made that reclaim show up as noise.
    cfg.limits.max_services = 16;
    cfg.limits.max_lookup_entries = 262_144;
    let mut dp = Dataplane::load(cfg.limits, false)?;
    dp.apply_config(&cfg)?;
    accept_bench_frames(&mut dp)?;
    let mut h = Harness::load()?;

    let service_frame =
        frame_to(config::socket_v4(cfg.services[0].vip).map_err(harness("the service's vip"))?);
    let other_frame = frame_to(
        "127.0.0.1:9999"
            .parse::<SocketAddrV4>()
            .map_err(harness("literal"))?,
    );

    let (empty_ns, _) = h.time("bench_empty", &service_frame, repeat, rounds)?;
    let mut rows = Vec::new();
    let cases: [(&'static str, &Vec<u8>, &'static str); 3] = [
        ("non-service packet", &other_frame, "bench_same_flow"),
        (
            "service packet, existing flow",
            &service_frame,
            "bench_same_flow",
        ),
        ("service packet, new flow", &service_frame, "bench_new_flow"),
    ];
    for (case, frame, wrapper) in cases {
        let m = h.paired(wrapper, dp.ingress()?, frame, repeat, rounds)?;
        rows.push(Row {
            case,
            total_ns: m.total_ns,
            wrapper_ns: m.wrapper_ns,
            net_ns: m.net_ns,
            action: m.action,
        });
    }
    drop(dp);

    let mut schedulers = Vec::new();
    for sched in [
        Scheduler::Maglev,
        Scheduler::RoundRobin,
        Scheduler::WeightedRoundRobin,
        Scheduler::Random,
        Scheduler::SourceHash,
    ] {
        let mut c = cfg.clone();
        let svc = &mut c.services[0];
        svc.scheduler = sched;
        svc.hash = if sched == Scheduler::SourceHash {
            HashFields::SourceIp
        } else {
            HashFields::FiveTuple
        };
        let mut dp = Dataplane::load(c.limits, false)?;
        dp.apply_config(&c)?;
        accept_bench_frames(&mut dp)?;
        let existing = h.paired(
            "bench_same_flow",
            dp.ingress()?,
            &service_frame,
            repeat,
            rounds,
        )?;
        let new = h.paired(
            "bench_new_flow",
            dp.ingress()?,
            &service_frame,
            repeat,
            rounds,
        )?;
        schedulers.push(SchedulerRow {
            scheduler: sched.as_str(),
            existing_flow_ns: existing.net_ns,
            new_flow_ns: new.net_ns,
        });
    }

    let mut maglev = Vec::new();
    let mut dp = Dataplane::load(cfg.limits, false)?;
    for n in [10usize, 100, 1000] {
        maglev.push(time_maglev(&mut dp, &cfg, n, rounds)?);
    }

    Ok(Report {
        repeat,
        rounds,
        max_flows: cfg.limits.max_flows,
        empty_program_ns: empty_ns,
        rows,
        schedulers,
        maglev,
    })
}

/// Times building a 65537-entry Maglev table for `n` backends, and a whole change to it
/// (build, write into the idle half, switch), alternating between two backend sets so that
/// every change really rewrites the table.
fn time_maglev(
    dp: &mut Dataplane,
    base: &Config,
    n: usize,
    rounds: u32,
) -> Result<MaglevRow, BenchError> {
    let make = |offset: usize| {
        let mut c = base.clone();
        let svc = &mut c.services[0];
        svc.scheduler = Scheduler::Maglev;
        svc.maglev_table_size = 65537;
        svc.backends = (0..n)
            .map(|i| config::BackendConfig {
                address: SocketAddrV4::new(
                    std::net::Ipv4Addr::from(0x0a00_0000 + (i + offset) as u32),
                    8000,
                )
                .into(),
                weight: 1,
                drain: false,
            })
            .collect();
        c
    };
    let (a, b) = (make(0), make(1));
    let mut build = Vec::new();
    let mut apply = Vec::new();
    for r in 0..rounds {
        let c = if r % 2 == 0 { &a } else { &b };
        let t = std::time::Instant::now();
        let table = reconcile::scheduling_table(c, &c.services[0]);
        build.push(t.elapsed().as_secs_f64() * 1e3);
        if table.len() != 65537 {
            return Err(BenchError::Harness(format!(
                "maglev table has {} entries",
                table.len()
            )));
        }
        let t = std::time::Instant::now();
        dp.apply_config(c)?;
        apply.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(MaglevRow {
        backends: n,
        table_size: 65537,
        build_ms: median(&mut build),
        build_and_apply_ms: median(&mut apply),
    })
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "BPF_PROG_TEST_RUN, {} iterations x {} rounds (median), 64-byte frames, flow table {} entries",
        r.repeat, r.rounds, r.max_flows
    );
    let _ = writeln!(
        s,
        "{:<32} {:>10} {:>10} {:>10}",
        "case", "total ns", "wrapper", "net ns"
    );
    let _ = writeln!(
        s,
        "{:<32} {:>10.1} {:>10} {:>10.1}",
        "empty XDP program (floor)", r.empty_program_ns, "-", r.empty_program_ns
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<32} {:>10.1} {:>10.1} {:>10.1}",
            row.case, row.total_ns, row.wrapper_ns, row.net_ns
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<24} {:>18} {:>14}",
        "scheduler (net ns)", "existing flow", "new flow"
    );
    for row in &r.schedulers {
        let _ = writeln!(
            s,
            "{:<24} {:>18.1} {:>14.1}",
            row.scheduler, row.existing_flow_ns, row.new_flow_ns
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<24} {:>18} {:>22}",
        "maglev table 65537", "build (ms)", "build+apply (ms)"
    );
    for row in &r.maglev {
        let _ = writeln!(
            s,
            "{:<24} {:>18.2} {:>22.2}",
            format!("{} backends", row.backends),
            row.build_ms,
            row.build_and_apply_ms
        );
    }
    s
}

/// BPF_PROG_TEST_RUN runs frames as received on `lo`: register the benchmark frames' Ethernet
/// destination as its address, so they are balanced like frames addressed to the interface.
fn accept_bench_frames(dp: &mut Dataplane) -> Result<(), DataplaneError> {
    let (lo, _) = crate::dataplane::interface_address("lo")?;
    dp.set_interface_mac(lo, crate::packet::FRAME_DST_MAC, false)
}
