//! Tier 3: `xdplb capture` on a running `nat` balancer in namespaces this test creates, with
//! the offloads a veth has by default. Needs root and `tcpdump`.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, RingBuf};
use pcap_file::pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption};
use serde_json::Value;
use xdplb_common::{CaptureLease, MAP_CAPTURE, MAP_CAPTURE_RING};
use xdplb_test_support::{decode, netns::*, require_root};

const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");
const START: Duration = Duration::from_secs(20);

fn in_ns(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut v = ns.prefix();
    v.extend(args.iter().map(ToString::to_string));
    v
}

/// A veth pair `a` (in `ns_a`, `addr_a`) - `b` (in `ns_b`, `addr_b`), up, offloads left at
/// the veth's defaults; GRO off then on for the NAPI that XDP_TX/REDIRECT need.
fn link(ns_a: &Netns, a: &str, addr_a: &str, ns_b: &Netns, b: &str, addr_b: &str) {
    sh(&[
        "ip", "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ]);
    for (ns, dev, addr) in [(ns_a, a, addr_a), (ns_b, b, addr_b)] {
        ns.exec(&["ip", "addr", "add", addr, "dev", dev]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
        ns.exec(&["ethtool", "-K", dev, "gro", "off"]);
        ns.exec(&["ethtool", "-K", dev, "gro", "on"]);
    }
}

/// `flows` flows of `packets` datagrams from `ns` to `target`; the demo client's report.
fn client(ns: &Netns, target: &str, flows: u32, packets: u32) -> Value {
    let out = ns.exec(&[
        XDPLB,
        "demo-client",
        "--target",
        target,
        "--flows",
        &flows.to_string(),
        "--packets",
        &packets.to_string(),
        "--timeout-ms",
        "2000",
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).expect("demo-client prints JSON")
}

/// The instance's capture maps, opened by the ids its state file publishes.
fn capture_maps(dir: &str, instance: &str) -> (Array<MapData, CaptureLease>, RingBuf<MapData>) {
    let state: Value = serde_json::from_slice(
        &std::fs::read(format!("{dir}/{instance}.json")).expect("state file"),
    )
    .expect("state JSON");
    let open = |name: &str| {
        let id = state["map_ids"][name].as_u64().expect("map id") as u32;
        Map::from_map_data(MapData::from_id(id).expect("map by id")).expect("map")
    };
    (
        Array::try_from(open(MAP_CAPTURE)).expect("lease array"),
        RingBuf::try_from(open(MAP_CAPTURE_RING)).expect("ring buffer"),
    )
}

fn drain(ring: &mut RingBuf<MapData>) -> usize {
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

/// A captured packet's before (frame) and after (frame, comment), by `cpu=N seq=M`.
type Pair = (Option<Vec<u8>>, Option<(Vec<u8>, String)>);

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs `args` (bounded) and returns its output whatever its status.
fn sh_unchecked(args: &[&str]) -> std::process::Output {
    run_bounded(args, Duration::from_secs(20))
}

/// Waits (bounded) for `child` to exit; kills it and panics past `timeout`.
fn wait_exit(d: &mut Daemon, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    let child = d.child.as_mut().expect("running");
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("capture did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn capture_writes_before_and_after_as_pcapng_only_while_it_runs() {
    require_root();
    let pid = std::process::id();
    let client_ns = Netns::new("capc");
    let lb_ns = Netns::new("capl");
    let backend_ns = Netns::new("capb");
    let (c0, l0, l1, b1) = (
        format!("capc0{pid}"),
        format!("capl0{pid}"),
        format!("capl1{pid}"),
        format!("capb1{pid}"),
    );
    link(&client_ns, &c0, "10.71.0.1/24", &lb_ns, &l0, "10.71.0.2/24");
    link(
        &lb_ns,
        &l1,
        "10.72.1.1/24",
        &backend_ns,
        &b1,
        "10.72.1.2/24",
    );
    client_ns.exec(&["ip", "route", "add", "10.99.0.0/24", "via", "10.71.0.2"]);
    backend_ns.exec(&["ip", "route", "add", "default", "via", "10.72.1.1"]);
    lb_ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let mut backends = Daemon::spawn(&in_ns(
        &backend_ns,
        &[
            XDPLB,
            "demo-backend",
            "--listen",
            "10.72.1.2:7000,10.72.1.2:7001",
        ],
    ));
    backends.wait_for("listening", START);

    let dir = std::env::temp_dir().join(format!("xdplb-test-capture-{pid}"));
    std::fs::create_dir_all(&dir).expect("run dir");
    let dir = dir.display().to_string();
    let cfg = format!(
        "interfaces = [\"{l0}\", \"{l1}\"]\n\
         [[service]]\nname = \"dns\"\nvip = \"10.99.0.1:7000\"\nforwarding = \"nat\"\n\
         [[service.backend]]\naddress = \"10.72.1.2:7000\"\n\
         [[service]]\nname = \"other\"\nvip = \"10.99.0.2:7001\"\nforwarding = \"nat\"\n\
         [[service.backend]]\naddress = \"10.72.1.2:7001\"\n"
    );
    let cfg_path = format!("{dir}/capture.toml");
    std::fs::write(&cfg_path, cfg).expect("config");
    let instance = format!("t-cap-{pid}");
    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut lb = Daemon::spawn(&in_ns(
        &lb_ns,
        &[
            "env",
            &env,
            XDPLB,
            "run",
            "--cleanup",
            "--config",
            &cfg_path,
            "--instance",
            &instance,
        ],
    ));
    lb.wait_for("running instance", START);
    // Warm up: neighbours resolved, so requests go out through XDP.
    let warm = client(&client_ns, "10.99.0.1:7000", 5, 2);
    assert_eq!(warm["replies"], 10, "{warm}");

    // (b) No capture: nothing is emitted.
    let (lease_map, mut ring) = capture_maps(&dir, &instance);
    drain(&mut ring);
    let r = client(&client_ns, "10.99.0.1:7000", 10, 2);
    assert_eq!(r["replies"], 20, "{r}");
    assert_eq!(drain(&mut ring), 0, "no capture, no record");

    // (a) A capture of `dns` while both services carry traffic.
    let pcap = format!("{dir}/dns.pcapng");
    let mut cap = Daemon::spawn(&[
        "env".into(),
        env.clone(),
        XDPLB.into(),
        "capture".into(),
        "--instance".into(),
        instance.clone(),
        "--service".into(),
        "dns".into(),
        "--count".into(),
        "20".into(),
        "-w".into(),
        pcap.clone(),
    ]);
    cap.wait_for("capturing", START);
    let other = client(&client_ns, "10.99.0.2:7001", 10, 2);
    assert_eq!(other["replies"], 20, "{other}");
    let dns = client(&client_ns, "10.99.0.1:7000", 10, 3);
    assert_eq!(dns["replies"], 30, "{dns}");
    let status = wait_exit(&mut cap, Duration::from_secs(10));
    assert!(status.success(), "capture exits 0 after --count: {status}");
    let lease = lease_map.get(&0, 0).expect("lease");
    assert_eq!(lease.deadline_ns, 0, "the capture cleared its lease");

    // tcpdump reads it: 20 packets, each before and after.
    let out = sh(&["tcpdump", "-nn", "-r", &pcap]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("tcpdump -nn -r {pcap}:\n{text}");
    assert_eq!(text.lines().count(), 40, "{text}");
    assert!(text.contains("> 10.99.0.1.7000: "), "{text}");
    assert!(text.contains("> 10.72.1.2.7000: "), "{text}");
    assert!(!text.contains("7001"), "--service filters: {text}");

    // The oracle: pair each before with its after by the comment's cpu and seq.
    let file = std::fs::File::open(&pcap).expect("pcapng");
    let mut reader = PcapNgReader::new(file).expect("a pcapng file");
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    while let Some(block) = reader.next_block() {
        let Block::EnhancedPacket(p) = block.expect("block") else {
            continue;
        };
        let comment = p
            .options
            .iter()
            .find_map(|o| match o {
                EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                _ => None,
            })
            .expect("every packet has a comment");
        assert!(comment.contains("service=dns"), "{comment}");
        let id = comment
            .split_whitespace()
            .filter(|w| w.starts_with("cpu=") || w.starts_with("seq="))
            .collect::<Vec<_>>()
            .join(" ");
        let entry = pairs.entry(id).or_default();
        if comment.starts_with("xdplb before") {
            entry.0 = Some(p.data.to_vec());
        } else {
            assert!(comment.starts_with("xdplb after"), "{comment}");
            entry.1 = Some((p.data.to_vec(), comment.clone()));
        }
    }
    assert_eq!(pairs.len(), 20, "20 before/after pairs");
    let vip: SocketAddrV4 = "10.99.0.1:7000".parse().unwrap();
    let backend: SocketAddrV4 = "10.72.1.2:7000".parse().unwrap();
    let mut partial_before = 0;
    for (id, (before, after)) in &pairs {
        let before = decode(before.as_ref().expect("a before")).expect("UDP/IPv4");
        let (after, comment) = after.as_ref().expect("an after");
        let after = decode(after).expect("UDP/IPv4");
        assert_eq!(before.dst, vip, "{id}: before goes to the VIP");
        assert_eq!(after.dst, backend, "{id}: after goes to the backend");
        assert_eq!(after.src, before.src, "{id}: nat keeps the client's source");
        assert_eq!(after.payload, before.payload, "{id}");
        assert!(after.ip_checksum_ok, "{id}: the after's IPv4 checksum");
        // The veth's default offloads hand over partial UDP checksums, which the data plane
        // completes (a tail call) before the frame leaves: the after is the frame as sent.
        partial_before += usize::from(!before.udp_checksum_ok);
        assert!(
            after.udp_checksum_ok,
            "{id}: the after's UDP checksum is complete"
        );
        assert!(
            comment.contains("action=tx") || comment.contains("action=redirect"),
            "{id}: sent by XDP once neighbours are known: {comment}"
        );
    }

    println!(
        "20 pairs checked; {partial_before} befores carried a partial UDP checksum, every after a complete one"
    );

    // Without -w: one line per record; with -w -: pcapng on stdout, here piped into tcpdump.
    let mut lines = Daemon::spawn(&[
        "env".into(),
        env.clone(),
        XDPLB.into(),
        "capture".into(),
        "--instance".into(),
        instance.clone(),
        "--count".into(),
        "4".into(),
    ]);
    lines.wait_for("capturing", START);
    // One capture at a time: a second one is refused while the first holds the lease.
    let second = sh_unchecked(&[
        "env",
        &env,
        XDPLB,
        "capture",
        "--instance",
        &instance,
        "--count",
        "1",
    ]);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another capture"), "{err}");
    let r = client(&client_ns, "10.99.0.1:7000", 2, 1);
    assert_eq!(r["replies"], 2, "{r}");
    lines.wait_for("4 packets captured", Duration::from_secs(10));
    assert!(wait_exit(&mut lines, Duration::from_secs(10)).success());
    // The records went to stdout, the last line above to stderr: take in what is left of both.
    lines.drain(Duration::from_secs(5));

    let piped = format!(
        "env {env} {XDPLB} capture --instance {instance} --service other --count 3 -w - | tcpdump -nn -r - 2>/dev/null"
    );
    let mut piped = Daemon::spawn(&["sh".into(), "-c".into(), piped]);
    piped.wait_for("capturing", START);
    let r = client(&client_ns, "10.99.0.2:7001", 3, 1);
    assert_eq!(r["replies"], 3, "{r}");
    piped.wait_for("3 packets captured", Duration::from_secs(10));
    assert!(wait_exit(&mut piped, Duration::from_secs(10)).success());
    // The shell waited for both ends of the pipe; tcpdump's lines (stdout) may still be on
    // their way after the capture's last line (stderr).
    piped.drain(Duration::from_secs(5));
    let summary: Vec<&String> = lines
        .seen
        .iter()
        .filter(|l| l.contains(" before ") || l.contains(" after "))
        .collect();
    println!("xdplb capture --count 4:\n{}", lines.seen.join("\n"));
    assert_eq!(summary.len(), 8, "4 packets, before and after: {summary:?}");
    assert!(
        summary
            .iter()
            .any(|l| l.contains(" after  redirect") || l.contains(" after  tx")),
        "{summary:?}"
    );
    assert!(
        summary.iter().any(|l| l.contains("(reply)")),
        "without --service, replies too: {summary:?}"
    );
    let dumped: Vec<&String> = piped.seen.iter().filter(|l| l.contains(" IP ")).collect();
    println!(
        "xdplb capture --service other -w - | tcpdump -r -:\n{}",
        piped.seen.join("\n")
    );
    assert_eq!(dumped.len(), 6, "{:?}", piped.seen);
    assert!(dumped.iter().all(|l| l.contains(".7001")), "{dumped:?}");

    // (b) A capture killed with SIGKILL: emission goes on until its lease runs out, then stops.
    let mut cap = Daemon::spawn(&[
        "env".into(),
        env.clone(),
        XDPLB.into(),
        "capture".into(),
        "--instance".into(),
        instance.clone(),
    ]);
    cap.wait_for("capturing", START);
    if let Some(c) = cap.child.as_mut() {
        c.kill().expect("SIGKILL");
        c.wait().expect("reaped");
    }
    cap.child = None;
    let lease = lease_map.get(&0, 0).expect("lease");
    assert!(
        lease.deadline_ns > monotonic_ns(),
        "the killed capture left its lease"
    );
    drain(&mut ring);
    let r = client(&client_ns, "10.99.0.1:7000", 2, 1);
    assert_eq!(r["replies"], 2, "{r}");
    let live = drain(&mut ring);
    assert!(
        live >= 4,
        "while the lease lasts, packets are copied ({live} records)"
    );
    let wait = lease.deadline_ns.saturating_sub(monotonic_ns()) + 100_000_000;
    std::thread::sleep(Duration::from_nanos(wait));
    let r = client(&client_ns, "10.99.0.1:7000", 10, 2);
    assert_eq!(r["replies"], 20, "{r}");
    assert_eq!(drain(&mut ring), 0, "an expired lease copies nothing");

    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
