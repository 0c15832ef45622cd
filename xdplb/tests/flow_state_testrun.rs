//! Tier 2: the flood guard (`flow_guard_rate`) and deferred flow state (`flow_state =
//! "second-packet"`), through BPF_PROG_TEST_RUN.
//!
//! 1. A flood of new flows (12 times the flow table) beside live flows, for `nat`, `local`
//!    (the guard drops what it does not admit), `dsr-l2` and `dsr-ipip` with Maglev (the guard
//!    sends it on without an entry): no live flow loses its entry or its backend, and every new
//!    flow is counted once (inserted, guard-dropped or sent statelessly). A control with the
//!    guard off shows the same flood evicting live flows. The guard admits its rate per
//!    one-second window, and replacing a stale entry is not guarded.
//! 2. Deferred state: a flow's first packet leaves no entry and follows the scheduler; its second
//!    creates the entry. Across a backend-set change, a flow with one packet (deferred) follows
//!    the scheduler to its new backend, while a flow with an entry (two packets deferred, or one
//!    packet with `first-packet`) stays on its backend.
//! 3. A `nat` reply (concrete VIP) is translated only while the client's flow has its entry.
//!
//! The test thread is pinned to CPU 0 (`load_toml`), so every run uses one CPU's share of the
//! flow table (an LRU without a common list: each CPU owns `max_flows / possible CPUs` entries),
//! one `SEEN` array and one flood-guard window. Needs root; run with the README test command.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use xdplb::{
    dataplane::{Dataplane, reconcile},
    packet::{ETH_HDR_LEN, FRAME_DST_MAC, UdpFrame},
    testrun::{self, XdpRun},
};
use xdplb_common::{
    Flow, FlowKey, MAP_FLOWS, MAP_SERVICE_STATS, Stat,
    hash::{FlowTuple, HASH_FIVE_TUPLE, flow_hash},
};
use xdplb_test_support::*;

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// The neighbours of the topology: those of the forwarding tests and a third backend, 10.60.1.4.
fn neighbours() -> Vec<(String, String, &'static str)> {
    let mut n = netns::fib_neighbours();
    n.push(("10.60.1.4".into(), "02:00:00:00:01:04".into(), "fa"));
    n
}

/// The backend a `dsr-l2` frame was sent to, by its destination MAC (see [`neighbours`]).
fn backend_by_mac(mac: &[u8]) -> Option<Ipv4Addr> {
    match mac {
        [0x02, 0, 0, 0, 0x01, last @ (2..=4)] => Some(Ipv4Addr::new(10, 60, 1, *last)),
        _ => None,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address literal")
}

/// The flow-table key of a UDP flow from `client` to `vip`.
fn flow_key(client: SocketAddrV4, vip: SocketAddrV4) -> FlowKey {
    FlowKey {
        client_addr: reconcile::addr_v4(*client.ip()),
        vip_addr: reconcile::addr_v4(*vip.ip()),
        client_port_be: client.port().to_be(),
        vip_port_be: vip.port().to_be(),
        proto: 17,
        _pad: [0; 3],
    }
}

/// The flow's entry in FLOWS_V1, if any.
fn flow_entry(dp: &mut Dataplane, key: &FlowKey) -> Option<Flow> {
    let map = dp.ebpf_mut().map(MAP_FLOWS).expect("FLOWS_V1");
    let table: aya::maps::HashMap<_, FlowKey, Flow> =
        aya::maps::HashMap::try_from(map).expect("a hash map");
    table.get(key, 0).ok()
}

/// Removes the flow's entry from FLOWS_V1 (as an eviction would).
fn remove_flow_entry(dp: &mut Dataplane, key: &FlowKey) {
    let map = dp.ebpf_mut().map_mut(MAP_FLOWS).expect("FLOWS_V1");
    let mut table: aya::maps::HashMap<_, FlowKey, Flow> =
        aya::maps::HashMap::try_from(map).expect("a hash map");
    table.remove(key).expect("remove the flow entry");
}

/// The IPv4 address of a flow entry's backend.
fn entry_backend(flow: &Flow) -> Ipv4Addr {
    assert_eq!(
        flow.backend_addr[..3],
        reconcile::addr_v4(Ipv4Addr::UNSPECIFIED)[..3],
        "an IPv4 backend"
    );
    Ipv4Addr::from(flow.backend_addr[3].to_ne_bytes())
}

/// The 5-tuple hash of the flow (the config's seed), whose low 16 bits pick its `SEEN` slot.
fn tuple_hash(client: SocketAddrV4, vip: SocketAddrV4, seed: u32) -> u32 {
    let tuple = FlowTuple {
        src: reconcile::addr_v4(*client.ip()),
        dst: reconcile::addr_v4(*vip.ip()),
        src_port_be: client.port().to_be(),
        dst_port_be: vip.port().to_be(),
        proto: 17,
    };
    flow_hash(&tuple, HASH_FIVE_TUPLE, seed)
}

/// The `flows` counter of service 0.
fn service_flows(dp: &Dataplane) -> u64 {
    dp.traffic(MAP_SERVICE_STATS, &[0]).expect("SERVICE_STATS")[0].flows
}

/// How much `stat` moved between two snapshots of the counters.
fn delta(before: &[u64], after: &[u64], stat: Stat) -> u64 {
    deltas(before, after)
        .into_iter()
        .find(|(s, _)| *s == stat)
        .map_or(0, |(_, d)| d)
}

fn frame(client: SocketAddrV4, vip: SocketAddrV4) -> Vec<u8> {
    UdpFrame::new(client, vip, b"xdplb flow state").build()
}

/// The loaded ingress program and where its frames arrive: `lo` (the test-run default), or an
/// interface of the topology.
struct Runner {
    prog: aya::programs::Xdp,
    on: Option<u32>,
}

impl Runner {
    fn run(&self, frame: &[u8]) -> XdpRun {
        match self.on {
            Some(ifindex) => testrun::run_xdp_on(&self.prog, frame, ifindex),
            None => testrun::run_xdp(&self.prog, frame, 1),
        }
        .expect("BPF_PROG_TEST_RUN")
    }
}

/// Loads `text` (pinned to CPU 0, lo's address registered); inside the topology also registers
/// the test frames' address as fa's and fb's and runs frames as received on fb (the clients').
fn load_runner(text: &str, in_topology: bool) -> (xdplb::config::Config, Dataplane, Runner) {
    let (cfg, mut dp) = load_toml(text);
    let on = if in_topology {
        let (a, b) = (ifindex("fa"), ifindex("fb"));
        dp.set_interface_mac(a, FRAME_DST_MAC, false)
            .expect("fa's address");
        dp.set_interface_mac(b, FRAME_DST_MAC, false)
            .expect("fb's address");
        Some(b)
    } else {
        None
    };
    let prog = ingress_program(&mut dp);
    (cfg, dp, Runner { prog, on })
}

// ---------------------------------------------------------------------------------------------
// 1. A flood of new flows beside live flows.

/// Flow entries each CPU's share of the table holds.
const PER_CPU_FLOWS: u32 = 2048;
/// New flows in the flood, one packet each: 12 times the table.
const FLOOD: u32 = 12 * PER_CPU_FLOWS;
/// Live flows sending during the flood: one of them every [`LIVE_EVERY`] flood packets, so each
/// sends one packet every `CHATTY * LIVE_EVERY` = 256 flood packets.
const CHATTY: u16 = 64;
const LIVE_EVERY: u32 = 4;
/// Live flows idle during the flood (one packet before it, one after): the kind an LRU evicts
/// first.
const QUIET: u16 = 32;
/// The guard's rate for the flood: low enough that the entries it admits over the windows the
/// flood spans (about 0.1 to 2 s here, up to [`MAX_FLOOD_WINDOWS`]) fit beside the live flows in
/// one CPU's share of the table, so that nothing needs evicting.
const GUARD_RATE: u32 = 150;
/// One-second guard windows the flood may span before the admitted entries could fill the table:
/// (2048 - 96 live) / 150 = 13.
const MAX_FLOOD_WINDOWS: u64 = ((PER_CPU_FLOWS - CHATTY as u32 - QUIET as u32) / GUARD_RATE) as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Nat,
    Local,
    DsrL2,
    DsrIpip,
}

impl Mode {
    fn vip(self) -> SocketAddrV4 {
        addr(match self {
            Mode::Local => "127.0.0.1:9875",
            _ => "10.99.0.4:7000",
        })
    }

    fn service(self) -> &'static str {
        match self {
            Mode::Nat => {
                r#"
[[service]]
name = "flooded"
vip = "10.99.0.4:7000"
forwarding = "nat"
[[service.backend]]
address = "10.60.1.2:7000"
[[service.backend]]
address = "10.60.1.3:7000"
"#
            }
            Mode::Local => {
                r#"
[[service]]
name = "flooded"
vip = "127.0.0.1:9875"
[[service.backend]]
address = "10.0.0.7:7001"
[[service.backend]]
address = "10.0.0.8:7001"
"#
            }
            Mode::DsrL2 => {
                r#"
[[service]]
name = "flooded"
vip = "10.99.0.4:7000"
forwarding = "dsr-l2"
scheduler = "maglev"
[[service.backend]]
address = "10.60.1.2:7000"
[[service.backend]]
address = "10.60.1.3:7000"
"#
            }
            Mode::DsrIpip => {
                r#"
[[service]]
name = "flooded"
vip = "10.99.0.4:7000"
forwarding = "dsr-ipip"
encap_source = "10.200.0.0/24"
scheduler = "maglev"
[[service.backend]]
address = "10.60.1.2:7000"
[[service.backend]]
address = "10.60.1.3:7000"
"#
            }
        }
    }

    /// Whether the guard sends a new flow on without an entry (else it drops it).
    fn may_skip_state(self) -> bool {
        matches!(self, Mode::DsrL2 | Mode::DsrIpip)
    }

    fn in_topology(self) -> bool {
        self != Mode::Local
    }

    /// The action of a forwarded packet.
    fn action(self) -> u32 {
        if self == Mode::Local {
            XDP_PASS
        } else {
            XDP_REDIRECT
        }
    }

    /// The backend a forwarded frame went to; `None` if the frame is not what the mode sends.
    fn backend_of(self, out: &XdpRun) -> Option<Ipv4Addr> {
        match self {
            Mode::Nat | Mode::Local => decode(&out.frame).map(|d| *d.dst.ip()),
            Mode::DsrL2 => {
                let d = decode(&out.frame)?;
                (d.dst == self.vip())
                    .then(|| backend_by_mac(&out.frame[..6]))
                    .flatten()
            }
            Mode::DsrIpip => {
                let ip = out.frame.get(ETH_HDR_LEN..ETH_HDR_LEN + 20)?;
                (ip[9] == 4).then(|| Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]))
            }
        }
    }
}

/// What a flood did.
#[derive(Debug, Default)]
struct Flood {
    /// Counter deltas over the flood (live packets included).
    inserted: u64,
    guard_dropped: u64,
    guard_stateless: u64,
    /// Service 0's `flows` counter over the flood.
    service_flows: u64,
    /// Flood packets forwarded (the mode's action) and dropped.
    flood_forwarded: u64,
    flood_dropped: u64,
    /// Live packets during the flood that did not go to their flow's backend (port, what).
    misrouted: Vec<(u16, String)>,
    /// Live flows whose entry was gone or on another backend after the flood (port, what).
    chatty_lost: Vec<(u16, String)>,
    quiet_lost: Vec<(u16, String)>,
    /// Live flows whose packet after the flood went to another backend.
    moved_after: Vec<u16>,
    /// Entries in the table after the flood.
    entries_after: u64,
    elapsed: Duration,
}

/// Loads `mode`'s service with `[limits] max_flows` = 2048 per CPU and `flow_guard_rate =
/// guard_rate`, establishes CHATTY + QUIET live flows, then sends FLOOD new flows of one packet
/// each, a chatty live packet after every LIVE_EVERY of them; then checks the live flows'
/// entries and sends each live flow one more packet.
fn flood_beside_live_flows(mode: Mode, guard_rate: u32) -> Flood {
    let mut result = None;
    if mode.in_topology() {
        netns::set_name_suffix(if guard_rate == 0 { "-off" } else { "-on" });
        netns::in_fib_topology(
            &format!("flood{mode:?}").to_lowercase(),
            &neighbours(),
            "the flood ran",
            || result = Some(run_flood(mode, guard_rate)),
        );
    } else {
        result = Some(run_flood(mode, guard_rate));
    }
    result.expect("the flood ran")
}

fn run_flood(mode: Mode, guard_rate: u32) -> Flood {
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
    let text = format!(
        "interfaces = [\"lo\"]\nflow_guard_rate = {guard_rate}\n{}\n[limits]\nmax_flows = {}\n",
        mode.service(),
        PER_CPU_FLOWS * cpus
    );
    let (_, mut dp, runner) = load_runner(&text, mode.in_topology());
    let vip = mode.vip();
    let what = format!("{mode:?}, guard rate {guard_rate}");

    // Live flows: ports 10000.. of one client; each gets its entry and its backend now.
    let live_client = ip("10.60.2.2");
    let live: Vec<SocketAddrV4> = (0..CHATTY + QUIET)
        .map(|i| SocketAddrV4::new(live_client, 10_000 + i))
        .collect();
    let before = counters(&dp);
    let mut backend_of_live = HashMap::new();
    for client in &live {
        let out = runner.run(&frame(*client, vip));
        assert_eq!(out.action, mode.action(), "{what}: live flow {client}");
        let b = mode
            .backend_of(&out)
            .unwrap_or_else(|| panic!("{what}: live flow {client}: sent to no backend"));
        backend_of_live.insert(client.port(), b);
    }
    assert_eq!(
        delta(&before, &counters(&dp), Stat::FlowTableInsert),
        live.len() as u64,
        "{what}: every live flow got its entry"
    );
    assert!(
        backend_of_live
            .values()
            .any(|b| *b != backend_of_live[&10_000]),
        "{what}: the live flows are spread over both backends"
    );

    // The flood: one new flow per packet, ports 20000.. of another client.
    let flood_client = ip("10.60.2.9");
    let mut r = Flood::default();
    let before = counters(&dp);
    let flows_before = service_flows(&dp);
    let started = Instant::now();
    for i in 0..FLOOD {
        let client = SocketAddrV4::new(flood_client, 20_000 + i as u16);
        let out = runner.run(&frame(client, vip));
        if out.action == mode.action() {
            assert!(
                mode.backend_of(&out).is_some(),
                "{what}: flood flow {client} forwarded to no backend: {:02x?}",
                out.frame
            );
            r.flood_forwarded += 1;
        } else {
            assert_eq!(
                out.action, XDP_DROP,
                "{what}: flood flow {client}: forwarded or dropped"
            );
            r.flood_dropped += 1;
        }
        if i % LIVE_EVERY == 0 {
            let port = 10_000 + ((i / LIVE_EVERY) % u32::from(CHATTY)) as u16;
            let out = runner.run(&frame(SocketAddrV4::new(live_client, port), vip));
            let got = mode.backend_of(&out);
            if out.action != mode.action() || got != Some(backend_of_live[&port]) {
                r.misrouted.push((
                    port,
                    format!(
                        "after flood packet {i}: action {}, backend {got:?}, expected {}",
                        out.action, backend_of_live[&port]
                    ),
                ));
            }
        }
    }
    r.elapsed = started.elapsed();
    let after = counters(&dp);
    r.inserted = delta(&before, &after, Stat::FlowTableInsert);
    r.guard_dropped = delta(&before, &after, Stat::GuardDropped);
    r.guard_stateless = delta(&before, &after, Stat::GuardStateless);
    r.service_flows = service_flows(&dp) - flows_before;

    // The live flows' entries, then one more packet of each.
    for client in &live {
        let port = client.port();
        let lost = match flow_entry(&mut dp, &flow_key(*client, vip)) {
            None => Some("no entry".to_owned()),
            Some(f) if entry_backend(&f) != backend_of_live[&port] => {
                Some(format!("entry on {}", entry_backend(&f)))
            }
            Some(_) => None,
        };
        if let Some(lost) = lost {
            if port < 10_000 + CHATTY {
                r.chatty_lost.push((port, lost));
            } else {
                r.quiet_lost.push((port, lost));
            }
        }
    }
    r.entries_after = dp.flow_table_entries().expect("FLOWS_V1 entries");
    for client in &live {
        let out = runner.run(&frame(*client, vip));
        if mode.backend_of(&out) != Some(backend_of_live[&client.port()]) {
            r.moved_after.push(client.port());
        }
    }
    eprintln!(
        "{what}: flood of {FLOOD} in {:?}: inserted {}, guard_dropped {}, guard_stateless {}, \
         chatty lost {}, quiet lost {}, entries after {}",
        r.elapsed,
        r.inserted,
        r.guard_dropped,
        r.guard_stateless,
        r.chatty_lost.len(),
        r.quiet_lost.len(),
        r.entries_after
    );
    r
}

/// With the guard on: every live flow keeps its entry and its backend through the flood, every
/// flood flow is counted once, and no entry was evicted (the table holds the live flows and the
/// flood flows the guard admitted, no more than the guard's rate per window).
fn assert_guarded(mode: Mode) {
    let r = flood_beside_live_flows(mode, GUARD_RATE);
    let what = format!("{mode:?} with the guard at {GUARD_RATE}/s");
    let windows = r.elapsed.as_secs() + 2;
    assert!(
        windows <= MAX_FLOOD_WINDOWS,
        "{what}: the flood took {:?}, too slow for this test: the guard may admit more entries \
         than the table holds",
        r.elapsed
    );
    assert!(r.misrouted.is_empty(), "{what}: {:?}", r.misrouted);
    assert!(r.chatty_lost.is_empty(), "{what}: {:?}", r.chatty_lost);
    assert!(r.quiet_lost.is_empty(), "{what}: {:?}", r.quiet_lost);
    assert!(r.moved_after.is_empty(), "{what}: {:?}", r.moved_after);
    assert_eq!(
        r.inserted + r.guard_dropped + r.guard_stateless,
        u64::from(FLOOD),
        "{what}: every flood flow inserted, guard-dropped or sent statelessly: {r:?}"
    );
    assert!(
        r.inserted >= 1 && r.inserted <= u64::from(GUARD_RATE) * windows,
        "{what}: the guard admitted {} entries in {:?}, at most {GUARD_RATE} per window",
        r.inserted,
        r.elapsed
    );
    assert_eq!(
        r.entries_after,
        u64::from(CHATTY + QUIET) + r.inserted,
        "{what}: nothing evicted: the table holds the live flows and the admitted flood flows"
    );
    if mode.may_skip_state() {
        assert!(
            r.guard_stateless > 0 && r.guard_dropped == 0,
            "{what}: {r:?}"
        );
        assert_eq!(
            (r.flood_forwarded, r.flood_dropped),
            (u64::from(FLOOD), 0),
            "{what}: every flood packet forwarded"
        );
        assert_eq!(
            r.service_flows,
            r.inserted + r.guard_stateless,
            "{what}: the service's flows counter counts the stateless flows"
        );
    } else {
        assert!(
            r.guard_dropped > 0 && r.guard_stateless == 0,
            "{what}: {r:?}"
        );
        assert_eq!(
            (r.flood_forwarded, r.flood_dropped),
            (r.inserted, r.guard_dropped),
            "{what}: admitted flows forwarded, the others dropped"
        );
        assert_eq!(r.service_flows, r.inserted, "{what}: service flows counter");
    }
}

/// The control: the same flood with the guard off inserts every flood flow and evicts live
/// flows, so the guard is what protects them in the tests above.
fn assert_unguarded_evicts(mode: Mode) {
    let r = flood_beside_live_flows(mode, 0);
    let what = format!("{mode:?} with the guard off");
    assert_eq!(
        (r.guard_dropped, r.guard_stateless),
        (0, 0),
        "{what}: no guard"
    );
    assert!(
        r.inserted >= u64::from(FLOOD),
        "{what}: every flood flow inserted (and any evicted live flow again): {r:?}"
    );
    assert!(
        r.entries_after <= u64::from(PER_CPU_FLOWS),
        "{what}: one CPU's share of the table: {r:?}"
    );
    // The flows idle during the flood go. (The chatty ones survive on 6.18: each lookup sets
    // the LRU's reference bit, which moves them to the active list, out of the flood's way.)
    assert!(
        !r.quiet_lost.is_empty(),
        "{what}: expected the flood to evict the live flows idle during it: {r:?}"
    );
}

/// The guard admits `flow_guard_rate` new entries per one-second window on a CPU and opens a
/// new window a second after the last one opened: 3 x the rate of new flows in a burst get
/// exactly the rate of entries, and as many again after a second.
#[test]
fn guard_admits_its_rate_per_one_second_window() {
    require_root();
    const RATE: u32 = 100;
    let text = format!(
        "interfaces = [\"lo\"]\nflow_guard_rate = {RATE}\n{}",
        Mode::Local.service()
    );
    let (_, dp, runner) = load_runner(&text, false);
    let vip = Mode::Local.vip();
    for (burst, first_port) in [("first burst", 20_000u16), ("a second later", 30_000)] {
        let before = counters(&dp);
        let started = Instant::now();
        let passed = (0..3 * RATE as u16)
            .filter(|i| {
                let client = SocketAddrV4::new(ip("10.1.2.3"), first_port + i);
                runner.run(&frame(client, vip)).action == XDP_PASS
            })
            .count() as u64;
        let elapsed = started.elapsed();
        let after = counters(&dp);
        let inserted = delta(&before, &after, Stat::FlowTableInsert);
        assert_eq!(passed, inserted, "{burst}: the admitted flows went on");
        assert_eq!(
            inserted + delta(&before, &after, Stat::GuardDropped),
            u64::from(3 * RATE),
            "{burst}: every flow admitted or dropped"
        );
        if elapsed < Duration::from_millis(900) {
            assert_eq!(inserted, u64::from(RATE), "{burst} (in {elapsed:?})");
        } else {
            // A stall of the test thread may have let a window close within the burst.
            assert!(
                (u64::from(RATE)..=u64::from(2 * RATE)).contains(&inserted),
                "{burst} (in {elapsed:?}): {inserted}"
            );
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
}

/// Replacing a stale entry is not guarded: with the window full (new flows dropped before and
/// after), a flow whose backend left gets its entry replaced on the remaining backend.
#[test]
fn replacing_a_stale_entry_is_not_guarded() {
    require_root();
    let config = |backends: &str| {
        format!(
            "interfaces = [\"lo\"]\nflow_guard_rate = 2\n\n[[service]]\nname = \"flooded\"\n\
             vip = \"127.0.0.1:9875\"\nscheduler = \"round-robin\"\nbackend = [{backends}]\n"
        )
    };
    let both = config("{ address = \"10.0.0.7:7001\" }, { address = \"10.0.0.8:7001\" }");
    let (_, mut dp, runner) = load_runner(&both, false);
    let vip = Mode::Local.vip();
    let send = |port: u16| {
        let out = runner.run(&frame(SocketAddrV4::new(ip("10.1.2.3"), port), vip));
        (out.action, Mode::Local.backend_of(&out))
    };
    // Two entries fill the window; one flow on each backend (round robin).
    let f1 = send(40_001);
    let f2 = send(40_002);
    assert_eq!(f1.0, XDP_PASS);
    assert_eq!(f2.0, XDP_PASS);
    assert_ne!(f1.1, f2.1, "one flow on each backend");
    let before = counters(&dp);
    assert_eq!(send(40_003).0, XDP_DROP, "a third new flow: over the rate");
    assert_eq!(
        deltas(&before, &counters(&dp)),
        vec![(Stat::GuardDropped, 1)]
    );

    // The backend of the flow on 10.0.0.7 leaves.
    let (gone, stays) = if f1.1 == Some(ip("10.0.0.7")) {
        (40_001, f2.1)
    } else {
        (40_002, f1.1)
    };
    let one =
        xdplb::config::parse(&config("{ address = \"10.0.0.8:7001\" }"), "test").expect("valid");
    dp.apply_config(&one).expect("remove 10.0.0.7");
    let before = counters(&dp);
    assert_eq!(send(gone), (XDP_PASS, stays), "the stale flow, rescheduled");
    let after = counters(&dp);
    assert_eq!(delta(&before, &after, Stat::FlowRescheduled), 1);
    assert_eq!(
        delta(&before, &after, Stat::FlowCreated),
        1,
        "its entry replaced"
    );
    assert_eq!(delta(&before, &after, Stat::GuardDropped), 0, "not guarded");
    let entry = flow_entry(
        &mut dp,
        &flow_key(SocketAddrV4::new(ip("10.1.2.3"), gone), vip),
    )
    .expect("the replaced entry");
    assert_eq!(Some(entry_backend(&entry)), stays);
    // The window was still full: a new flow is still dropped.
    let before = counters(&dp);
    assert_eq!(send(40_004).0, XDP_DROP, "a new flow after the replacement");
    assert_eq!(
        deltas(&before, &counters(&dp)),
        vec![(Stat::GuardDropped, 1)]
    );
}

#[test]
fn guard_keeps_nat_live_flows_through_a_flood_and_drops_the_excess() {
    require_root();
    assert_guarded(Mode::Nat);
}

#[test]
fn guard_keeps_local_live_flows_through_a_flood_and_drops_the_excess() {
    require_root();
    assert_guarded(Mode::Local);
}

#[test]
fn guard_keeps_dsr_l2_live_flows_through_a_flood_and_sends_the_excess_statelessly() {
    require_root();
    assert_guarded(Mode::DsrL2);
}

#[test]
fn guard_keeps_dsr_ipip_live_flows_through_a_flood_and_sends_the_excess_statelessly() {
    require_root();
    assert_guarded(Mode::DsrIpip);
}

#[test]
fn without_the_guard_the_same_flood_evicts_live_flows() {
    require_root();
    assert_unguarded_evicts(Mode::Nat);
    assert_unguarded_evicts(Mode::DsrL2);
}

// ---------------------------------------------------------------------------------------------
// 2. Deferred flow state.

/// The backends of the services of [`deferred_config`] and [`stale_config`]: 10.60.1.2 and
/// 10.60.1.3, and 10.60.1.4 with `extra_backend`.
fn backend_line(extra_backend: bool) -> &'static str {
    if extra_backend {
        "backend = [{ address = \"10.60.1.2:7000\" }, { address = \"10.60.1.3:7000\" }, \
         { address = \"10.60.1.4:7000\" }]"
    } else {
        "backend = [{ address = \"10.60.1.2:7000\" }, { address = \"10.60.1.3:7000\" }]"
    }
}

/// Two dsr-l2 Maglev services on the same backends: "deferred" (second-packet) and "first"
/// (first-packet); `extra` adds a backend line to both. The guard is off: only the flow state
/// decides what gets an entry.
fn deferred_config(extra_backend: bool) -> String {
    let backends = backend_line(extra_backend);
    format!(
        r#"
interfaces = ["lo"]
flow_guard_rate = 0

[[service]]
name = "deferred"
vip = "10.99.0.4:7000"
forwarding = "dsr-l2"
scheduler = "maglev"
flow_state = "second-packet"
{backends}

[[service]]
name = "first"
vip = "10.99.0.5:7000"
forwarding = "dsr-l2"
scheduler = "maglev"
{backends}
"#
    )
}

const DEFERRED_VIP: &str = "10.99.0.4:7000";
const FIRST_VIP: &str = "10.99.0.5:7000";

/// Sends one packet of `client` -> `vip`; returns its backend (by MAC), after checking it went
/// out unchanged but for the MACs.
fn send_dsr(runner: &Runner, client: SocketAddrV4, vip: SocketAddrV4, what: &str) -> Ipv4Addr {
    let out = runner.run(&frame(client, vip));
    assert_eq!(out.action, XDP_REDIRECT, "{what}: {client} redirected");
    let d = decode(&out.frame).expect("a UDP frame");
    assert_eq!((d.src, d.dst), (client, vip), "{what}: addresses kept");
    backend_by_mac(&out.frame[..6])
        .unwrap_or_else(|| panic!("{what}: {client} sent to no backend's MAC"))
}

/// `n` clients of 10.60.2.2 from port `first` on whose 5-tuples to `vip` take `SEEN` slots no
/// other flow in `taken` takes (a shared slot only delays an entry by a packet, which would blur
/// what the tests count); adds their slots to `taken`.
fn clients_with_own_seen_slots(
    first: u16,
    n: usize,
    vip: SocketAddrV4,
    seed: u32,
    taken: &mut std::collections::HashSet<u32>,
) -> Vec<SocketAddrV4> {
    (first..)
        .map(|p| SocketAddrV4::new(ip("10.60.2.2"), p))
        .filter(|c| taken.insert(tuple_hash(*c, vip, seed) & 0xffff))
        .take(n)
        .collect()
}

/// A second-packet flow: packet 1 goes where Maglev puts it with no entry (FlowStateDeferred,
/// counted as a flow of the service), packet 2 creates the entry on the same backend
/// (FlowTableInsert, not counted as a flow again), packet 3 uses it.
#[test]
fn second_packet_creates_the_entry_where_the_first_went() {
    require_root();
    netns::in_fib_topology("deferred", &neighbours(), "the cases pass", || {
        let (cfg, mut dp, runner) = load_runner(&deferred_config(false), true);
        let vip = addr(DEFERRED_VIP);
        let mut taken = Default::default();
        let clients = clients_with_own_seen_slots(30_000, 16, vip, cfg.hash_seed, &mut taken);
        for client in clients {
            let key = flow_key(client, vip);
            let (before, flows) = (counters(&dp), service_flows(&dp));
            let b1 = send_dsr(&runner, client, vip, "packet 1");
            let after = counters(&dp);
            assert_eq!(
                delta(&before, &after, Stat::FlowStateDeferred),
                1,
                "packet 1"
            );
            assert_eq!(delta(&before, &after, Stat::FlowTableInsert), 0, "packet 1");
            assert_eq!(delta(&before, &after, Stat::FlowCreated), 0, "packet 1");
            assert_eq!(service_flows(&dp) - flows, 1, "packet 1 counts the flow");
            assert_eq!(flow_entry(&mut dp, &key), None, "packet 1: no entry");

            let (before, flows) = (counters(&dp), service_flows(&dp));
            let b2 = send_dsr(&runner, client, vip, "packet 2");
            let after = counters(&dp);
            assert_eq!(
                delta(&before, &after, Stat::FlowStateDeferred),
                0,
                "packet 2"
            );
            assert_eq!(delta(&before, &after, Stat::FlowTableInsert), 1, "packet 2");
            assert_eq!(
                service_flows(&dp) - flows,
                0,
                "packet 2: the flow counted once"
            );
            assert_eq!(b2, b1, "{client}: packet 2 on packet 1's backend");
            let entry = flow_entry(&mut dp, &key).expect("packet 2 created the entry");
            assert_eq!(entry_backend(&entry), b1, "{client}: the entry's backend");

            let before = counters(&dp);
            assert_eq!(send_dsr(&runner, client, vip, "packet 3"), b1);
            let after = counters(&dp);
            assert_eq!(
                (
                    delta(&before, &after, Stat::FlowStateDeferred),
                    delta(&before, &after, Stat::FlowTableInsert)
                ),
                (0, 0),
                "packet 3 uses the entry"
            );
        }
    });
}

/// Across a backend-set change (10.60.1.4 added): a second-packet flow with only its first
/// packet sent before follows Maglev to its new backend with its second packet and gets its
/// entry there; a second-packet flow with two packets before (its entry made), and a
/// first-packet flow with one, stay on their backends. Removing those entries afterwards shows
/// Maglev would have moved some of them: the entry is what held them.
#[test]
fn a_backend_change_moves_deferred_flows_and_keeps_flows_with_an_entry() {
    require_root();
    netns::in_fib_topology("defchange", &neighbours(), "the cases pass", || {
        let (cfg, mut dp, runner) = load_runner(&deferred_config(false), true);
        let (deferred, first) = (addr(DEFERRED_VIP), addr(FIRST_VIP));
        let seed = cfg.hash_seed;
        let mut taken = Default::default();
        let one_packet = clients_with_own_seen_slots(31_000, 96, deferred, seed, &mut taken);
        let two_packets = clients_with_own_seen_slots(33_000, 96, deferred, seed, &mut taken);
        let first_packet = clients_with_own_seen_slots(35_000, 96, first, seed, &mut taken);

        // Before the change.
        let mut was: HashMap<(SocketAddrV4, SocketAddrV4), Ipv4Addr> = HashMap::new();
        for c in &one_packet {
            was.insert(
                (*c, deferred),
                send_dsr(&runner, *c, deferred, "A, packet 1"),
            );
        }
        for c in &two_packets {
            let b = send_dsr(&runner, *c, deferred, "B, packet 1");
            assert_eq!(send_dsr(&runner, *c, deferred, "B, packet 2"), b);
            was.insert((*c, deferred), b);
        }
        for c in &first_packet {
            was.insert(
                (*c, first),
                send_dsr(&runner, *c, first, "first-packet, packet 1"),
            );
        }
        assert_eq!(
            dp.flow_table_entries().expect("entries"),
            (two_packets.len() + first_packet.len()) as u64,
            "entries: B's and the first-packet flows', none of A's"
        );
        for c in &one_packet {
            assert_eq!(flow_entry(&mut dp, &flow_key(*c, deferred)), None, "A {c}");
        }

        let cfg3 = xdplb::config::parse(&deferred_config(true), "test").expect("valid");
        dp.apply_config(&cfg3).expect("add 10.60.1.4");

        // A: packet 2 follows Maglev now, and its entry is made there.
        let before = counters(&dp);
        let (mut moved, mut to_added) = (0, 0);
        for c in &one_packet {
            let b = send_dsr(&runner, *c, deferred, "A, packet 2 after the change");
            let entry = flow_entry(&mut dp, &flow_key(*c, deferred))
                .unwrap_or_else(|| panic!("A {c}: packet 2 created the entry"));
            assert_eq!(entry_backend(&entry), b, "A {c}: entry where packet 2 went");
            if b != was[&(*c, deferred)] {
                moved += 1;
                to_added += usize::from(b == ip("10.60.1.4"));
            }
            assert_eq!(send_dsr(&runner, *c, deferred, "A, packet 3"), b, "A {c}");
        }
        let after = counters(&dp);
        assert_eq!(
            delta(&before, &after, Stat::FlowTableInsert),
            one_packet.len() as u64,
            "A: every packet 2 made an entry"
        );
        assert_eq!(delta(&before, &after, Stat::FlowStateDeferred), 0);
        eprintln!(
            "A: {moved} of {} one-packet deferred flows moved, {to_added} to 10.60.1.4",
            one_packet.len()
        );
        assert!(
            to_added > 0,
            "A: some of {} deferred flows moved to the added backend 10.60.1.4",
            one_packet.len()
        );

        // B and the first-packet flows stay where their entry says, though Maglev now puts
        // some of them elsewhere.
        for (group, clients, vip) in [
            ("B (second-packet, entry made)", &two_packets, deferred),
            ("first-packet", &first_packet, first),
        ] {
            let before = counters(&dp);
            for c in clients {
                assert_eq!(
                    send_dsr(&runner, *c, vip, group),
                    was[&(*c, vip)],
                    "{group} {c}: stays on its backend after the change"
                );
            }
            let after = counters(&dp);
            assert_eq!(
                (
                    delta(&before, &after, Stat::FlowTableInsert),
                    delta(&before, &after, Stat::FlowRescheduled),
                    delta(&before, &after, Stat::FlowStateDeferred)
                ),
                (0, 0, 0),
                "{group}: the entries were used"
            );
            let mut would_move = 0;
            for c in clients {
                remove_flow_entry(&mut dp, &flow_key(*c, vip));
                if send_dsr(&runner, *c, vip, group) != was[&(*c, vip)] {
                    would_move += 1;
                }
            }
            eprintln!(
                "{group}: {would_move} of {} flows Maglev now puts elsewhere",
                clients.len()
            );
            assert!(
                would_move > 0,
                "{group}: without their entries some flows would have moved (else this group \
                 proves nothing)"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Replies of a service with a concrete VIP follow the flow entry.

/// A `nat` backend's reply is translated through the client's flow entry (its owner in
/// REPLY_OWNERS_V1, no per-flow REPLIES_V1 entry): once the entry is gone (as when the LRU
/// evicts it), the same reply is no reply of ours and passes untouched.
#[test]
fn a_nat_reply_is_translated_only_while_the_client_s_flow_has_its_entry() {
    require_root();
    netns::in_fib_topology("replyentry", &neighbours(), "the cases pass", || {
        let text = format!("interfaces = [\"lo\"]\n{}", Mode::Nat.service());
        let (_, mut dp, runner) = load_runner(&text, true);
        let fa = ifindex("fa");
        let (client, vip) = (addr("10.60.2.2:5600"), Mode::Nat.vip());
        let out = runner.run(&frame(client, vip));
        assert_eq!(out.action, XDP_REDIRECT, "the request");
        let backend = SocketAddrV4::new(Mode::Nat.backend_of(&out).expect("to a backend"), 7000);
        let replies = |dp: &mut Dataplane| {
            let map = dp
                .ebpf_mut()
                .map(xdplb_common::MAP_REPLIES)
                .expect("REPLIES_V1");
            let table: aya::maps::HashMap<_, xdplb_common::ReplyKey, xdplb_common::Reply> =
                aya::maps::HashMap::try_from(map).expect("a hash map");
            table.keys().count()
        };
        assert_eq!(replies(&mut dp), 0, "no per-flow reply entry");

        let reply = frame(backend, client);
        let before = counters(&dp);
        let out = testrun::run_xdp_on(&runner.prog, &reply, fa).expect("test run");
        assert_eq!(out.action, XDP_REDIRECT, "the reply, translated and routed");
        let d = decode(&out.frame).expect("a UDP frame");
        assert_eq!(
            (d.src, d.dst),
            (vip, client),
            "the reply comes from the VIP"
        );
        assert!(d.ip_checksum_ok && d.udp_checksum_ok, "checksums");
        assert_eq!(
            delta(&before, &counters(&dp), Stat::NatReplyTranslated),
            1,
            "translated"
        );

        remove_flow_entry(&mut dp, &flow_key(client, vip));
        let before = counters(&dp);
        let out = testrun::run_xdp_on(&runner.prog, &reply, fa).expect("test run");
        assert_eq!(out.action, XDP_PASS, "without the entry: passed");
        assert!(out.frame == reply, "without the entry: untouched");
        assert_eq!(
            deltas(&before, &counters(&dp)),
            vec![(Stat::PassNoService, 1)],
            "without the entry: no reply of ours"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 4. Stale entries follow the table (`flow_stale_after`).

/// Three Maglev services on the same backends (10.60.1.4 added with `extra_backend`):
/// "ipip" (dsr-ipip, `flow_stale_after = "3s"`), "ipip-off" (dsr-ipip, the default: never) and
/// "fnat" (fullnat, 3s). The guard is off.
fn stale_config(extra_backend: bool) -> String {
    let backends = backend_line(extra_backend);
    format!(
        r#"
interfaces = ["lo"]
flow_guard_rate = 0

[[service]]
name = "ipip"
vip = "10.99.0.4:7000"
forwarding = "dsr-ipip"
encap_source = "10.200.0.0/24"
scheduler = "maglev"
flow_stale_after = "3s"
{backends}

[[service]]
name = "ipip-off"
vip = "10.99.0.5:7000"
forwarding = "dsr-ipip"
encap_source = "10.200.0.0/24"
scheduler = "maglev"
{backends}

[[service]]
name = "fnat"
vip = "10.99.0.6:7000"
forwarding = "fullnat"
fullnat_source = "10.60.1.1"
fullnat_ports = "40000-40999"
scheduler = "maglev"
flow_stale_after = "3s"
{backends}
"#
    )
}

/// Where a forwarded frame of `client` -> `vip` went, checked with the etherparse oracle:
/// `dsr-ipip`: an outer IPv4 header (protocol 4, valid checksum, source in 10.200.0.0/24) to
/// the backend around the client's datagram, unchanged; `fullnat`: the datagram from
/// 10.60.1.1 to the backend's port 7000, with valid checksums. Returns the backend and, for
/// `fullnat`, the source port.
fn stale_case_backend(out: &XdpRun, client: SocketAddrV4, vip: SocketAddrV4) -> (Ipv4Addr, u16) {
    assert_eq!(out.action, XDP_REDIRECT, "{client} -> {vip}: redirected");
    let outer =
        etherparse::Ipv4HeaderSlice::from_slice(&out.frame[ETH_HDR_LEN..]).expect("an IPv4 frame");
    if outer.protocol() == etherparse::IpNumber::IPV4 {
        assert_eq!(
            outer.header_checksum(),
            outer.to_header().calc_header_checksum(),
            "{client}: outer checksum"
        );
        assert_eq!(
            outer.source_addr().octets()[..3],
            [10, 200, 0],
            "{client}: outer source in the prefix"
        );
        let mut inner = out.frame[..ETH_HDR_LEN].to_vec();
        inner.extend_from_slice(&out.frame[ETH_HDR_LEN + outer.slice().len()..]);
        let d = decode(&inner).expect("a UDP datagram inside");
        assert_eq!(
            (d.src, d.dst),
            (client, vip),
            "{client}: inner datagram kept"
        );
        assert!(
            d.ip_checksum_ok && d.udp_checksum_ok,
            "{client}: inner checksums"
        );
        (outer.destination_addr(), 0)
    } else {
        let d = decode(&out.frame).expect("a UDP frame");
        assert!(d.ip_checksum_ok && d.udp_checksum_ok, "{client}: checksums");
        assert_eq!(*d.src.ip(), ip("10.60.1.1"), "{client}: fullnat source");
        assert!(
            (40_000..=40_999).contains(&d.src.port()),
            "{client}: a port of the range"
        );
        assert_eq!(d.dst.port(), 7000, "{client}: the backend's port");
        (*d.dst.ip(), d.src.port())
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the data plane's `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).expect("positive") * 1_000_000_000
        + u64::try_from(t.tv_nsec).expect("positive")
}

/// Makes the flow's entry look idle for `idle` (its `last_seen_ns` that long ago).
fn age_flow_entry(dp: &mut Dataplane, key: &FlowKey, idle: Duration) -> Flow {
    let map = dp.ebpf_mut().map_mut(MAP_FLOWS).expect("FLOWS_V1");
    let mut table: aya::maps::HashMap<_, FlowKey, Flow> =
        aya::maps::HashMap::try_from(map).expect("a hash map");
    let mut flow = table.get(key, 0).expect("the flow's entry");
    flow.last_seen_ns = monotonic_ns() - u64::try_from(idle.as_nanos()).expect("small");
    table.insert(key, flow, 0).expect("rewrite the entry");
    flow
}

/// Entries naming backend X while the table (10.60.1.4 added) now says Y: idle less than
/// `flow_stale_after` they stay on X (a live flow keeps its backend across the change); idle
/// longer they go to Y, the entry names Y and `flow_stale_followed_table` counts them; an entry
/// the table agrees with, idle longer, is kept as it is (a fullnat flow keeps its source port);
/// with the setting off, an entry idle as long stays on X.
#[test]
fn stale_entries_follow_the_table_and_live_ones_keep_their_backend() {
    require_root();
    netns::in_fib_topology("stale", &neighbours(), "the cases pass", || {
        let (_, mut dp, runner) = load_runner(&stale_config(false), true);
        let services = [
            ("ipip", addr("10.99.0.4:7000")),
            ("ipip-off", addr("10.99.0.5:7000")),
            ("fnat", addr("10.99.0.6:7000")),
        ];
        let clients: Vec<SocketAddrV4> = (0..240)
            .map(|i| SocketAddrV4::new(ip("10.60.2.2"), 36_000 + i))
            .collect();
        // Every flow's entry, on the two first backends.
        let mut was = HashMap::new();
        for (_, vip) in services {
            for c in &clients {
                let out = runner.run(&frame(*c, vip));
                let (b, port) = stale_case_backend(&out, *c, vip);
                let entry = flow_entry(&mut dp, &flow_key(*c, vip)).expect("an entry");
                assert_eq!(
                    entry_backend(&entry),
                    b,
                    "{c} -> {vip}: entry where it went"
                );
                assert_eq!(u16::from_be(entry.snat_port_be), port, "{c}: entry's port");
                was.insert((*c, vip), (b, port));
            }
        }

        let cfg3 = xdplb::config::parse(&stale_config(true), "test").expect("valid");
        dp.apply_config(&cfg3).expect("add 10.60.1.4");
        // The table's choice now, from `xdplb explain` (user space's copy of the table).
        let choice = |c: SocketAddrV4, vip: SocketAddrV4| -> Ipv4Addr {
            let e = xdplb::explain::explain(&cfg3, c.into(), vip.into()).expect("explained");
            let b: SocketAddrV4 = e.backend.expect("a backend").parse().expect("an address");
            *b.ip()
        };

        for (name, vip) in services {
            let stale_on = name != "ipip-off";
            let (disagree, agree): (Vec<SocketAddrV4>, Vec<SocketAddrV4>) = clients
                .iter()
                .partition(|c| choice(**c, vip) != was[&(**c, vip)].0);
            assert!(
                disagree.len() >= 20 && agree.len() >= 20,
                "{name}: {} flows the table moved, {} it kept: enough of both",
                disagree.len(),
                agree.len()
            );
            let (recent, idle) = disagree.split_at(disagree.len() / 2);

            // (a) Idle less than flow_stale_after: stays on X.
            let before = counters(&dp);
            for c in recent {
                let key = flow_key(*c, vip);
                age_flow_entry(&mut dp, &key, Duration::from_millis(1500));
                let got = stale_case_backend(&runner.run(&frame(*c, vip)), *c, vip);
                assert_eq!(
                    got,
                    was[&(*c, vip)],
                    "{name} {c}: recent, stays on its backend"
                );
                let entry = flow_entry(&mut dp, &key).expect("the entry");
                assert_eq!(entry_backend(&entry), got.0, "{name} {c}: entry unchanged");
            }
            let after = counters(&dp);
            assert_eq!(
                (
                    delta(&before, &after, Stat::FlowStaleFollowedTable),
                    delta(&before, &after, Stat::FlowTableInsert),
                    delta(&before, &after, Stat::FlowCreated)
                ),
                (0, 0, 0),
                "{name}: recent entries used as they are"
            );

            // (b) Idle longer: follows the table (or, off, stays).
            let before = counters(&dp);
            for c in idle {
                let key = flow_key(*c, vip);
                let old = age_flow_entry(&mut dp, &key, Duration::from_secs(10));
                let got = stale_case_backend(&runner.run(&frame(*c, vip)), *c, vip);
                let entry = flow_entry(&mut dp, &key).expect("the entry");
                if stale_on {
                    assert_eq!(
                        got.0,
                        choice(*c, vip),
                        "{name} {c}: idle, to the table's choice"
                    );
                    assert_ne!(got.0, was[&(*c, vip)].0);
                    assert_eq!(
                        entry_backend(&entry),
                        got.0,
                        "{name} {c}: the entry names it"
                    );
                    assert_eq!(u16::from_be(entry.snat_port_be), got.1, "{name} {c}: port");
                } else {
                    assert_eq!(
                        got,
                        was[&(*c, vip)],
                        "{name} {c}: off, stays on its backend"
                    );
                    assert_eq!(entry_backend(&entry), got.0, "{name} {c}: entry unchanged");
                }
                assert!(
                    entry.last_seen_ns > old.last_seen_ns,
                    "{name} {c}: refreshed"
                );
            }
            let after = counters(&dp);
            let moved = if stale_on { idle.len() as u64 } else { 0 };
            assert_eq!(
                (
                    delta(&before, &after, Stat::FlowStaleFollowedTable),
                    delta(&before, &after, Stat::FlowCreated),
                    delta(&before, &after, Stat::FlowTableInsert),
                    delta(&before, &after, Stat::FlowExpired),
                    delta(&before, &after, Stat::FlowRescheduled)
                ),
                (moved, moved, 0, 0, 0),
                "{name}: idle entries that disagree with the table"
            );
            eprintln!(
                "{name}: {} of {} flows the table moved; {} idle ones {}",
                disagree.len(),
                clients.len(),
                idle.len(),
                if stale_on {
                    "followed it"
                } else {
                    "stayed (off)"
                }
            );

            // (c) Agreeing with the table, idle longer: kept as it is.
            let before = counters(&dp);
            for c in &agree {
                let key = flow_key(*c, vip);
                let old = age_flow_entry(&mut dp, &key, Duration::from_secs(10));
                let got = stale_case_backend(&runner.run(&frame(*c, vip)), *c, vip);
                assert_eq!(got, was[&(*c, vip)], "{name} {c}: agrees, kept (port too)");
                let entry = flow_entry(&mut dp, &key).expect("the entry");
                assert_eq!(
                    Flow {
                        last_seen_ns: old.last_seen_ns,
                        ..entry
                    },
                    old,
                    "{name} {c}: the entry unchanged but for its timestamp"
                );
                assert!(
                    entry.last_seen_ns > old.last_seen_ns,
                    "{name} {c}: refreshed"
                );
            }
            let after = counters(&dp);
            assert_eq!(
                (
                    delta(&before, &after, Stat::FlowStaleFollowedTable),
                    delta(&before, &after, Stat::FlowCreated),
                    delta(&before, &after, Stat::FlowTableInsert)
                ),
                (0, 0, 0),
                "{name}: entries the table agrees with"
            );
        }
    });
}
