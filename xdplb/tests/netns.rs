//! Tier 3: real sockets in network namespaces that each test creates and deletes.
//! Needs root; run with the README test command. Traffic stays inside the test's namespaces.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use xdplb_test_support::{netns::*, prometheus, require_root};

/// The `xdplb` binary under test.
const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");
use serde_json::Value;

const START: Duration = Duration::from_secs(20);

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

fn in_ns(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut v = ns.prefix();
    v.extend(s(args));
    v
}

/// Whether the forwarding tests turn tx checksum offload off (so that every receiving kernel
/// validates full checksums) or leave it as a veth has it by default (on: senders hand over
/// partial checksums, CHECKSUM_PARTIAL). Per test thread.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Offloads {
    Off,
    Default,
}

thread_local! {
    static OFFLOADS: std::cell::Cell<Offloads> = const { std::cell::Cell::new(Offloads::Off) };
}

/// Runs `case` with `offloads` on every link it makes, one variant at a time (`serial`: the two
/// variants of a test use the same names).
fn with_offloads(offloads: Offloads, serial: &std::sync::Mutex<()>, case: fn()) {
    let _one_at_a_time = serial
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    OFFLOADS.with(|o| o.set(offloads));
    set_name_suffix(match offloads {
        Offloads::Off => "",
        Offloads::Default => "d",
    });
    case();
}

/// Applies this thread's [`Offloads`] to `dev` in `ns`, and checks that it took.
fn set_offloads(ns: &Netns, dev: &str) {
    let want = match OFFLOADS.with(std::cell::Cell::get) {
        Offloads::Off => {
            ns.exec(&["ethtool", "-K", dev, "tx", "off"]);
            "off"
        }
        Offloads::Default => "on",
    };
    let k = ns.exec(&["ethtool", "-k", dev]);
    let k = String::from_utf8_lossy(&k.stdout);
    assert!(
        k.lines()
            .any(|l| l.trim_start().starts_with("tx-checksumming:") && l.contains(want)),
        "tx checksum offload must be {want} on {dev}: {k}"
    );
}

fn run_dir(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "xdplb-test-{tag}{}-{}",
        name_suffix(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create run dir");
    dir.display().to_string()
}

/// Runs the demo client (pinned to one CPU, so per-CPU round robin is one sequence) and parses
/// its JSON report.
fn client(ns: &Netns, target: &str, flows: u32, packets: u32) -> Value {
    let flows = flows.to_string();
    let packets = packets.to_string();
    let out = ns.exec(&[
        "taskset",
        "-c",
        "0",
        XDPLB,
        "demo-client",
        "--target",
        target,
        "--flows",
        &flows,
        "--packets",
        &packets,
        "--timeout-ms",
        "2000",
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

fn stats(ns: &Netns, dir: &str, instance: &str) -> Value {
    let out = ns.exec(&[
        "env",
        &format!("XDPLB_RUN_DIR={dir}"),
        XDPLB,
        "stats",
        "--instance",
        instance,
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).expect("stats prints JSON")
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .find(|c| c[0] == name)
        .and_then(|c| c[1].as_u64())
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

fn per_backend(report: &Value, key: &str) -> BTreeMap<String, u64> {
    report[key]
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

fn assert_every_reply_from_vip(report: &Value, flows: u64, packets: u64) {
    assert_eq!(report["sent"], flows * packets, "{report}");
    assert_eq!(
        report["replies"],
        flows * packets,
        "every datagram answered: {report}"
    );
    assert_eq!(report["replies_from_elsewhere"], 0, "{report}");
    assert_eq!(report["bad_echoes"], 0, "{report}");
    assert_eq!(
        report["sticky_flows"], flows,
        "every flow keeps one backend: {report}"
    );
}

/// The balancer's metrics at 127.0.0.1:9100 in `ns`, as Prometheus's reference parser reads them.
fn scrape_metrics(ns: &Netns) -> Vec<Value> {
    let scrape = ns.exec(&[
        "curl",
        "-sf",
        "--max-time",
        "5",
        "http://127.0.0.1:9100/metrics",
    ]);
    prometheus::parse(&String::from_utf8_lossy(&scrape.stdout))
}

fn xdp_attached(ns: &Netns, dev: &str) -> bool {
    let out = ns.exec(&["ip", "-d", "link", "show", "dev", dev]);
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// A client namespace and a balancer namespace joined by a veth pair on `10.X.0.0/24` (client
/// .1, balancer .2), with tx checksum offload as [`set_offloads`] says (off unless the test
/// asks for the defaults), so that each receiving kernel validates checksums for real. Returns the namespaces and the balancer's device name.
fn veth_pair(tag: &str, subnet: u8) -> (Netns, Netns, String) {
    let client_ns = Netns::new(&format!("{tag}c"));
    let lb_ns = Netns::new(&format!("{tag}l"));
    let pid = std::process::id();
    let (veth_c, veth_l) = (format!("{tag}c{pid}"), format!("{tag}l{pid}"));
    sh(&[
        "ip",
        "link",
        "add",
        &veth_c,
        "netns",
        &client_ns.name,
        "type",
        "veth",
        "peer",
        "name",
        &veth_l,
        "netns",
        &lb_ns.name,
    ]);
    client_ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("10.{subnet}.0.1/24"),
        "dev",
        &veth_c,
    ]);
    lb_ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("10.{subnet}.0.2/24"),
        "dev",
        &veth_l,
    ]);
    add_v6(&client_ns, &veth_c, &format!("10.{subnet}.0.1/24"));
    add_v6(&lb_ns, &veth_l, &format!("10.{subnet}.0.2/24"));
    for (ns, dev) in [(&client_ns, &veth_c), (&lb_ns, &veth_l)] {
        ns.exec(&["ip", "link", "set", dev, "up"]);
        set_offloads(ns, dev);
    }
    (client_ns, lb_ns, veth_l)
}

/// Starts `xdplb run --cleanup --config CFG --instance NAME` in `ns` and waits until it runs.
fn start_balancer(ns: &Netns, env: &str, cfg_path: &str, instance: &str) -> Daemon {
    let mut lb = Daemon::spawn(&in_ns(
        ns,
        &[
            "env",
            env,
            XDPLB,
            "run",
            "--cleanup",
            "--config",
            cfg_path,
            "--instance",
            instance,
        ],
    ));
    lb.wait_for("running instance", START);
    lb
}

/// Starts demo backends on the comma-separated `listen` addresses in `ns`.
fn start_backends(ns: &Netns, listen: &str) -> Daemon {
    let mut b = Daemon::spawn(&in_ns(ns, &[XDPLB, "demo-backend", "--listen", listen]));
    b.wait_for("listening", START);
    b
}

/// 3,000 datagrams to 127.0.0.1:9875 on 500 connected sockets, one every 2 ms or so: at least
/// 6 s of traffic to change the balancer under.
fn start_paced_traffic(ns: &Netns) -> Daemon {
    Daemon::spawn(&in_ns(
        ns,
        &[
            XDPLB,
            "demo-client",
            "--target",
            "127.0.0.1:9875",
            "--flows",
            "500",
            "--packets",
            "6",
            "--gap-us",
            "4000",
            "--timeout-ms",
            "2000",
            "--json",
        ],
    ))
}

/// Checks that the paced traffic outlasted the changes (`what`) and that every datagram was
/// answered from the VIP.
fn assert_paced_traffic_lost_nothing(traffic: &mut Daemon, what: &str) -> Value {
    let still_running = traffic
        .child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
    traffic.wait_for("\"sent\"", Duration::from_mins(1));
    assert!(
        still_running,
        "the traffic must outlast the {what}, or the test proves nothing: {}",
        traffic.seen.join("\n")
    );
    let report: Value =
        serde_json::from_str(traffic.seen.last().expect("report line")).expect("client JSON");
    assert_eq!(report["sent"], 3000, "{report}");
    assert_eq!(
        report["replies"], 3000,
        "zero loss across the {what}: {report}"
    );
    assert_eq!(report["replies_from_elsewhere"], 0, "{report}");
    assert_eq!(report["bad_echoes"], 0, "{report}");
    report
}

#[test]
fn tutorial_scenario_on_lo_in_a_private_namespace() {
    require_root();
    let ns = Netns::new("lo");
    let dir = run_dir("lo");
    let instance = format!("t-lo-{}", std::process::id());
    let _backends = start_backends(&ns, "127.0.0.1:9876,127.0.0.1:9877,127.0.0.1:9878");

    // Without the balancer nothing answers on 9875: the client sees no reply.
    let before = client(&ns, "127.0.0.1:9875", 1, 1);
    assert_eq!(
        before["replies"], 0,
        "nothing listens on 9875 yet: {before}"
    );

    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut lb = Daemon::spawn(&in_ns(
        &ns,
        &[
            "env",
            &env,
            XDPLB,
            "run",
            "--cleanup",
            "--instance",
            &instance,
        ],
    ));
    lb.wait_for("running instance", START);
    assert!(xdp_attached(&ns, "lo"), "XDP must be attached to lo");

    let report = client(&ns, "127.0.0.1:9875", 30, 3);
    assert_every_reply_from_vip(&report, 30, 3);
    let flows = per_backend(&report, "flows_per_backend");
    let expected: BTreeMap<String, u64> = ["127.0.0.1:9876", "127.0.0.1:9877", "127.0.0.1:9878"]
        .iter()
        .map(|b| (b.to_string(), 10))
        .collect();
    assert_eq!(flows, expected, "30 new flows round robin over 3 backends");

    let st = stats(&ns, &dir, &instance);
    let svc = &st["services"][0];
    assert_eq!(svc["packets"], 90, "service counter: {st}");
    for b in svc["backends"].as_array().expect("backends") {
        assert_eq!(b["packets"], 30, "backend counter: {st}");
    }
    assert_eq!(counter(&st, "forwarded"), 90);
    assert_eq!(counter(&st, "flow_created"), 30);
    assert_eq!(counter(&st, "reply_translated"), 90);
    assert_eq!(
        st["flow_table"]["entries"], 30,
        "one flow-table entry per flow: {st}"
    );
    assert_eq!(st["flow_table"]["inserts"], 30, "{st}");
    assert_eq!(st["flow_table"]["evictions"], 0, "{st}");

    let status = lb.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "xdplb run must exit 0 on SIGTERM: {status}\n{}",
        lb.seen.join("\n")
    );
    assert!(!xdp_attached(&ns, "lo"), "XDP must be detached after exit");
    let after = client(&ns, "127.0.0.1:9875", 1, 1);
    assert_eq!(
        after["replies"], 0,
        "after exit nothing is balanced any more: {after}"
    );
}

#[test]
fn client_and_balancer_namespaces_over_veth_with_checksums_validated() {
    with_offloads(
        Offloads::Off,
        &SERIAL_CLIENT_AND_BALANCER_NAMESPACES_OVER_VETH_WITH_CHECKSUMS_VALIDATED,
        client_and_balancer_namespaces_over_veth_with_checksums_validated_case,
    );
}

/// The same with the offloads a veth (or a container) has by default: senders hand over
/// partial UDP checksums.
#[test]
fn client_and_balancer_namespaces_over_veth_with_checksums_validated_with_default_offloads() {
    with_offloads(
        Offloads::Default,
        &SERIAL_CLIENT_AND_BALANCER_NAMESPACES_OVER_VETH_WITH_CHECKSUMS_VALIDATED,
        client_and_balancer_namespaces_over_veth_with_checksums_validated_case,
    );
}

static SERIAL_CLIENT_AND_BALANCER_NAMESPACES_OVER_VETH_WITH_CHECKSUMS_VALIDATED: std::sync::Mutex<
    (),
> = std::sync::Mutex::new(());

fn client_and_balancer_namespaces_over_veth_with_checksums_validated_case() {
    require_root();
    let (client_ns, lb_ns, veth_l) = veth_pair("v", 200);
    let dir = run_dir("veth");
    let cfg_path = format!("{dir}/veth.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"interfaces = ["{veth_l}", "lo"]
xdp_mode = "auto"
metrics_listen = "127.0.0.1:9100"

[[service]]
name = "veth-demo"
vip = "10.200.0.2:9875"
scheduler = "round-robin"
[[service.backend]]
address = "10.200.0.2:9876"
[[service.backend]]
address = "10.200.0.2:9877"
[[service.backend]]
address = "10.200.0.2:9878"

[[service]]
name = "veth-demo6"
vip = "[fd00:200::2]:9875"
scheduler = "round-robin"
[[service.backend]]
address = "[fd00:200::2]:9876"
[[service.backend]]
address = "[fd00:200::2]:9877"
[[service.backend]]
address = "[fd00:200::2]:9878"
"#
        ),
    )
    .expect("write config");

    let _backends = start_backends(
        &lb_ns,
        "10.200.0.2:9876,10.200.0.2:9877,10.200.0.2:9878,\
         [fd00:200::2]:9876,[fd00:200::2]:9877,[fd00:200::2]:9878",
    );
    let instance = format!("t-veth-{}", std::process::id());
    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut lb = start_balancer(&lb_ns, &env, &cfg_path, &instance);

    let (c_err0, c_in0) = client_ns.udp_counters();
    let (l_err0, l_in0) = lb_ns.udp_counters();
    let report = client(&client_ns, "10.200.0.2:9875", 30, 3);
    assert_every_reply_from_vip(&report, 30, 3);
    let flows = per_backend(&report, "flows_per_backend");
    assert_eq!(flows.len(), 3, "all three backends serve flows: {report}");
    assert!(
        flows.values().all(|n| *n == 10),
        "round robin over 3 backends: {report}"
    );

    let (c_err, c_in) = client_ns.udp_counters();
    let (l_err, l_in) = lb_ns.udp_counters();
    assert_eq!(c_err - c_err0, 0, "client saw UDP checksum errors");
    assert_eq!(l_err - l_err0, 0, "balancer host saw UDP checksum errors");
    assert_eq!(
        l_in - l_in0,
        90,
        "backends received every datagram after validation"
    );
    assert_eq!(
        c_in - c_in0,
        90,
        "client received every reply after validation"
    );

    let st = stats(&lb_ns, &dir, &instance);
    assert!(
        st["interfaces"][0]
            .as_str()
            .unwrap_or_default()
            .contains("native"),
        "XDP runs natively on veth: {st}"
    );
    assert_eq!(counter(&st, "forwarded"), 90);
    assert_eq!(counter(&st, "reply_translated"), 90);

    // The Prometheus endpoint reports the same traffic. The flow table is counted in the
    // background (see `metrics`): scrape until a count taken after the traffic is served.
    let traffic_done = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let families = loop {
        let families = scrape_metrics(&lb_ns);
        let counted_at = families
            .iter()
            .filter(|f| f["name"] == "xdplb_flow_table_sampled_timestamp_seconds")
            .flat_map(|f| f["samples"].as_array().into_iter().flatten())
            .find_map(|s| s["value"].as_f64());
        if counted_at.is_some_and(|t| t >= traffic_done) {
            break families;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no flow-table count after the traffic within 20 s: {families:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Every family the daemon exports, each exactly once and with its declared type, as the
    // reference client reads them (it names a counter family without `_total`).
    assert_eq!(
        prometheus::names_and_types(&families),
        prometheus::FAMILIES,
        "families (name, type) as the Prometheus client parses them"
    );
    let value =
        |sample: &str, labels: &[(&str, &str)]| prometheus::value(&families, sample, labels);
    let svc = [("service", "veth-demo"), ("vip", "10.200.0.2:9875")];
    assert_eq!(value("xdplb_service_packets_total", &svc), 90.0);
    assert_eq!(value("xdplb_service_flows_total", &svc), 30.0);
    for port in [9876, 9877, 9878] {
        let backend = format!("10.200.0.2:{port}");
        let b = [("service", "veth-demo"), ("backend", backend.as_str())];
        assert_eq!(
            value("xdplb_backend_packets_total", &b),
            30.0,
            "backend {port}"
        );
        assert_eq!(
            value("xdplb_backend_flows_total", &b),
            10.0,
            "backend {port}"
        );
    }
    assert_eq!(
        value(
            "xdplb_packets_total",
            &[("verdict", "forward"), ("reason", "forwarded")]
        ),
        90.0
    );
    assert_eq!(
        value("xdplb_events_total", &[("event", "reply_translated")]),
        90.0
    );
    assert_eq!(value("xdplb_flow_table_entries", &[]), 30.0);
    assert_eq!(value("xdplb_config_generation", &[]), 0.0);
    assert_eq!(value("xdplb_config_last_reload_success", &[]), 1.0);

    // The IPv6 service beside it, `local` mode: replies leave through TC egress from the VIP.
    let before = stats(&lb_ns, &dir, &instance);
    let (c6_err0, c6_in0) = client_ns.udp6_counters();
    let (l6_err0, l6_in0) = lb_ns.udp6_counters();
    let report = client(&client_ns, "[fd00:200::2]:9875", 30, 3);
    assert_every_reply_from_vip(&report, 30, 3);
    let flows = per_backend(&report, "flows_per_backend");
    assert_eq!(
        flows.len(),
        3,
        "all three IPv6 backends serve flows: {report}"
    );
    assert!(
        flows.values().all(|n| *n == 10),
        "round robin over 3 IPv6 backends: {report}"
    );
    let (c6_err, c6_in) = client_ns.udp6_counters();
    let (l6_err, l6_in) = lb_ns.udp6_counters();
    assert_eq!(c6_err - c6_err0, 0, "client saw UDP6 checksum errors");
    assert_eq!(
        l6_err - l6_err0,
        0,
        "balancer host saw UDP6 checksum errors"
    );
    assert_eq!(l6_in - l6_in0, 90, "IPv6 backends received every datagram");
    assert_eq!(c6_in - c6_in0, 90, "client received every IPv6 reply");
    let after = stats(&lb_ns, &dir, &instance);
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(delta("forwarded"), 90, "{after}");
    assert_eq!(delta("reply_translated"), 90, "{after}");
    let families = scrape_metrics(&lb_ns);
    let svc6 = [("service", "veth-demo6"), ("vip", "[fd00:200::2]:9875")];
    assert_eq!(
        prometheus::value(&families, "xdplb_service_packets_total", &svc6),
        90.0,
        "the IPv6 service's metrics carry its bracketed VIP"
    );
    let b6 = [("service", "veth-demo6"), ("backend", "[fd00:200::2]:9876")];
    assert_eq!(
        prometheus::value(&families, "xdplb_backend_flows_total", &b6),
        10.0
    );

    fragmented_round_trip(&client_ns, "10.200.0.2:9875", &lb_ns, &dir, &instance);
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
    assert!(
        !xdp_attached(&lb_ns, &veth_l),
        "XDP detached from the veth after exit"
    );
    assert!(
        !xdp_attached(&lb_ns, "lo"),
        "XDP detached from lo after exit"
    );
}

#[test]
fn every_scheduler_end_to_end_with_real_sockets_and_replies() {
    require_root();
    let (client_ns, lb_ns, veth_l) = veth_pair("s", 201);
    let pid = std::process::id();
    let _backends = start_backends(&lb_ns, "10.201.0.2:9876,10.201.0.2:9877,10.201.0.2:9878");
    let dir = run_dir("sched");
    let env = format!("XDPLB_RUN_DIR={dir}");
    for scheduler in [
        "maglev",
        "round-robin",
        "weighted-round-robin",
        "random",
        "source-hash",
    ] {
        let cfg_path = format!("{dir}/{scheduler}.toml");
        std::fs::write(
            &cfg_path,
            format!(
                "interfaces = [\"{veth_l}\"]\n[[service]]\nname = \"{scheduler}\"\nvip = \"10.201.0.2:9875\"\nscheduler = \"{scheduler}\"\n\
                 [[service.backend]]\naddress = \"10.201.0.2:9876\"\n[[service.backend]]\naddress = \"10.201.0.2:9877\"\nweight = 2\n\
                 [[service.backend]]\naddress = \"10.201.0.2:9878\"\nweight = 3\n"
            ),
        )
        .expect("write config");
        let instance = format!("t-sched-{pid}-{scheduler}");
        let mut lb = start_balancer(&lb_ns, &env, &cfg_path, &instance);
        let (err0, _) = client_ns.udp_counters();
        let report = client(&client_ns, "10.201.0.2:9875", 60, 2);
        assert_every_reply_from_vip(&report, 60, 2);
        let flows = per_backend(&report, "flows_per_backend");
        match scheduler {
            // One client address: source hash keeps every flow on one backend.
            "source-hash" => assert_eq!(flows.len(), 1, "{scheduler}: {report}"),
            "round-robin" => assert!(flows.values().all(|n| *n == 20), "{scheduler}: {report}"),
            "weighted-round-robin" => assert_eq!(
                flows.values().copied().collect::<Vec<_>>(),
                [10, 20, 30],
                "{scheduler}: 1:2:3 over 60 flows: {report}"
            ),
            _ => assert_eq!(
                flows.len(),
                3,
                "{scheduler}: every backend serves flows: {report}"
            ),
        }
        let (err, _) = client_ns.udp_counters();
        assert_eq!(err, err0, "{scheduler}: UDP checksum errors at the client");
        let status = lb.terminate(Duration::from_secs(10));
        assert!(status.success(), "{scheduler}: exit 0 on SIGTERM");
    }
}

#[test]
fn reloads_under_traffic_lose_nothing_and_a_bad_config_changes_nothing() {
    require_root();
    let ns = Netns::new("reload");
    let dir = run_dir("reload");
    let pid = std::process::id();
    let instance = format!("t-reload-{pid}");
    let env = format!("XDPLB_RUN_DIR={dir}");
    let cfg_path = format!("{dir}/live.toml");
    let two = "metrics_listen = \"127.0.0.1:9100\"\ninterfaces = [\"lo\"]\n[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\nscheduler = \"round-robin\"\n\
               [[service.backend]]\naddress = \"127.0.0.1:9876\"\n[[service.backend]]\naddress = \"127.0.0.1:9877\"\n";
    let three = "metrics_listen = \"127.0.0.1:9100\"\ninterfaces = [\"lo\"]\n[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n\
                 [[service.backend]]\naddress = \"127.0.0.1:9876\"\n[[service.backend]]\naddress = \"127.0.0.1:9877\"\nweight = 2\n\
                 [[service.backend]]\naddress = \"127.0.0.1:9878\"\nweight = 3\n";
    std::fs::write(&cfg_path, two).expect("write config");
    let _backends = start_backends(&ns, "127.0.0.1:9876,127.0.0.1:9877,127.0.0.1:9878");
    let mut lb = start_balancer(&ns, &env, &cfg_path, &instance);

    let mut traffic = start_paced_traffic(&ns);
    let reload = |expect_ok: bool| {
        let out = ns.exec_unchecked(&["env", &env, XDPLB, "reload", "--instance", &instance]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), expect_ok, "reload: {text}");
        text
    };
    let scrape = || {
        let out = ns.exec(&[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:9100/metrics",
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for k in 0..20 {
        std::fs::write(&cfg_path, if k % 2 == 0 { three } else { two }).expect("write config");
        let text = reload(true);
        assert!(text.contains("applied"), "{text}");
        std::thread::sleep(Duration::from_millis(30));
        if k == 9 {
            // A broken config is rejected whole; the instance keeps running on the last good one.
            std::fs::write(&cfg_path, "interfaces = [\"lo\"\n").expect("write config");
            let text = reload(false);
            assert!(
                text.contains("rejected") && text.contains("live.toml:"),
                "{text}"
            );
            // A change that needs a restart is refused too.
            std::fs::write(
                &cfg_path,
                three.replace(
                    "interfaces = [\"lo\"]",
                    "interfaces = [\"lo\"]\nhash_seed = 1\n[limits]\nmax_flows = 2048",
                ),
            )
            .expect("write config");
            let text = reload(false);
            assert!(
                text.contains("[limits]") && text.contains("restart"),
                "{text}"
            );
            // The metrics say the last apply was rejected; the generation stays at 10 reloads.
            let m = scrape();
            assert!(m.contains("\nxdplb_config_last_apply_success 0\n"), "{m}");
            assert!(m.contains("\nxdplb_config_generation 10\n"), "{m}");
        }
    }
    let m = scrape();
    assert!(m.contains("\nxdplb_config_last_apply_success 1\n"), "{m}");
    assert!(m.contains("\nxdplb_config_generation 20\n"), "{m}");
    assert_paced_traffic_lost_nothing(&mut traffic, "20 reloads");
    // The last good config (the 20th, two backends) is in force.
    let st = stats(&ns, &dir, &instance);
    assert_eq!(
        st["services"][0]["backends"].as_array().map(Vec::len),
        Some(2),
        "after an odd number of good reloads the two-backend config is in force: {st}"
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

/// Polls `xdplb stats` until backend `addr` reports `health`; returns how long that took.
fn wait_for_health(
    ns: &Netns,
    dir: &str,
    instance: &str,
    addr: &str,
    health: &str,
    limit: Duration,
) -> Duration {
    let start = std::time::Instant::now();
    while start.elapsed() < limit + Duration::from_secs(2) {
        let st = stats(ns, dir, instance);
        let found = st["services"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .any(|b| b["address"] == addr && b["health"] == health);
        if found {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("backend {addr} did not become {health} within {limit:?} (and 2 s of grace)");
}

#[test]
fn health_checks_take_a_dead_backend_out_and_bring_it_back() {
    require_root();
    let ns = Netns::new("health");
    let dir = run_dir("health");
    let instance = format!("t-health-{}", std::process::id());
    let env = format!("XDPLB_RUN_DIR={dir}");
    let (interval_ms, rise, fall) = (200u64, 2u64, 2u64);
    let cfg_path = format!("{dir}/health.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "interfaces = [\"lo\"]\n[[service]]\nname = \"checked\"\nvip = \"127.0.0.1:9875\"\nscheduler = \"round-robin\"\n\
             [service.health_check]\ntype = \"udp\"\ninterval = \"{interval_ms}ms\"\ntimeout = \"100ms\"\nrise = {rise}\nfall = {fall}\nexpect = \"xdplb-backend\"\n\
             [[service.backend]]\naddress = \"127.0.0.1:9876\"\n[[service.backend]]\naddress = \"127.0.0.1:9877\"\n[[service.backend]]\naddress = \"127.0.0.1:9878\"\n"
        ),
    )
    .expect("write config");
    let spawn_backend = |port: u16| start_backends(&ns, &format!("127.0.0.1:{port}"));
    let _b1 = spawn_backend(9876);
    let mut b2 = spawn_backend(9877);
    let _b3 = spawn_backend(9878);
    let mut lb = start_balancer(&ns, &env, &cfg_path, &instance);
    let interval = Duration::from_millis(interval_ms);
    wait_for_health(&ns, &dir, &instance, "127.0.0.1:9877", "up", interval * 3);

    // Kill one backend: out of rotation within fall x interval plus one interval.
    let _ = b2.terminate(Duration::from_secs(5));
    let limit = interval * (fall as u32 + 1);
    let took = wait_for_health(&ns, &dir, &instance, "127.0.0.1:9877", "down", limit);
    println!("a dead backend went down after {took:?} (limit {limit:?})");
    assert!(
        took <= limit + Duration::from_millis(100),
        "went down after {took:?}, limit {limit:?} plus 100 ms of polling"
    );
    let report = client(&ns, "127.0.0.1:9875", 12, 2);
    assert_every_reply_from_vip(&report, 12, 2);
    let flows = per_backend(&report, "flows_per_backend");
    assert!(
        !flows.contains_key("127.0.0.1:9877"),
        "no new flow may reach the dead backend: {report}"
    );
    // The transition is logged with its fields and its reason.
    lb.wait_for(
        "backend is down service=\"checked\" backend=127.0.0.1:9877 reason=",
        Duration::from_secs(2),
    );

    // Bring it back: in rotation again within rise x interval plus one interval.
    let _b2 = spawn_backend(9877);
    let limit = interval * (rise as u32 + 1);
    let took = wait_for_health(&ns, &dir, &instance, "127.0.0.1:9877", "up", limit);
    println!("a revived backend came back after {took:?} (limit {limit:?})");
    assert!(
        took <= limit + Duration::from_millis(100),
        "came back after {took:?}, limit {limit:?} plus 100 ms of polling"
    );
    let report = client(&ns, "127.0.0.1:9875", 30, 1);
    assert_every_reply_from_vip(&report, 30, 1);
    assert!(
        per_backend(&report, "flows_per_backend").contains_key("127.0.0.1:9877"),
        "the backend is back in rotation: {report}"
    );
    lb.wait_for(
        "backend is up service=\"checked\" backend=127.0.0.1:9877 reason=",
        Duration::from_secs(2),
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

/// An HTTP server on `addr` inside `ns`, run by a thread of this test: it answers every
/// request with 200 and records each request line, until `stop` is set (or 60 s pass).
struct ProbeCounter {
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeCounter {
    fn start(ns: &Netns, addr: &str) -> Self {
        use std::{io::Read, io::Write, os::fd::AsFd, sync::atomic::Ordering};
        // A socket stays in the namespace it was made in: make it on a thread that moved
        // there, and serve it from another.
        let path = format!("/run/netns/{}", ns.name);
        let addr = addr.to_string();
        let listener = std::thread::spawn(move || {
            let netns = std::fs::File::open(&path).expect("open the namespace");
            rustix::thread::move_into_link_name_space(
                netns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            std::net::TcpListener::bind(&addr).expect("bind in the namespace")
        })
        .join()
        .expect("listener thread");
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !stopped.load(Ordering::SeqCst) && started.elapsed() < Duration::from_mins(1) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                seen.lock().expect("lock").push(line);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        ProbeCounter {
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }

    /// Waits until at least `n` requests came (at most `limit`).
    fn wait_for(&self, n: usize, limit: Duration) {
        let start = std::time::Instant::now();
        while self.requests().len() < n {
            assert!(
                start.elapsed() < limit,
                "fewer than {n} probes within {limit:?}: {:?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ProbeCounter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_reload_cancels_the_old_health_probes() {
    require_root();
    let ns = Netns::new("hreload");
    let dir = run_dir("hreload");
    let instance = format!("t-hreload-{}", std::process::id());
    let env = format!("XDPLB_RUN_DIR={dir}");
    let cfg_path = format!("{dir}/hreload.toml");
    let config = |check: &str| {
        format!(
            "interfaces = [\"lo\"]\n[[service]]\nname = \"checked\"\nvip = \"127.0.0.1:9875\"\n{check}\
             [[service.backend]]\naddress = \"127.0.0.1:9876\"\n"
        )
    };
    let http_check = |path: &str| {
        format!(
            "[service.health_check]\ntype = \"http\"\nport = 9880\npath = \"{path}\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\n"
        )
    };
    let server = ProbeCounter::start(&ns, "127.0.0.1:9880");
    std::fs::write(&cfg_path, config(&http_check("/old"))).expect("write config");
    let mut lb = start_balancer(&ns, &env, &cfg_path, &instance);
    let reload = || {
        let out = ns.exec_unchecked(&["env", &env, XDPLB, "reload", "--instance", &instance]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("applied"),
            "reload: {text}"
        );
    };
    server.wait_for(3, Duration::from_secs(5));
    wait_for_health(
        &ns,
        &dir,
        &instance,
        "127.0.0.1:9876",
        "up",
        Duration::from_secs(1),
    );

    // Another path: the old probe stops, the new one starts.
    std::fs::write(&cfg_path, config(&http_check("/new"))).expect("write config");
    reload();
    // A probe already accepted by the kernel may still be served.
    std::thread::sleep(Duration::from_millis(50));
    let settled = server.requests().len();
    server.wait_for(settled + 5, Duration::from_secs(5));
    let after: Vec<String> = server.requests().split_off(settled);
    assert!(
        after.iter().all(|r| r.starts_with("GET /new HTTP/1.1")),
        "only the new probe runs after the reload: {after:?}"
    );

    // No check at all: no probe comes any more (ten intervals).
    std::fs::write(&cfg_path, config("")).expect("write config");
    reload();
    std::thread::sleep(Duration::from_millis(50));
    let settled = server.requests().len();
    std::thread::sleep(Duration::from_secs(1));
    let late = server.requests().split_off(settled);
    assert!(
        late.is_empty(),
        "probes after the check was removed: {late:?}"
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

#[test]
fn live_api_changes_under_traffic_lose_nothing_and_bad_calls_change_nothing() {
    require_root();
    let ns = Netns::new("api");
    let dir = run_dir("api");
    let instance = format!("t-api-{}", std::process::id());
    let env = format!("XDPLB_RUN_DIR={dir}");
    let sock = format!("{dir}/{instance}.sock");
    let cfg_path = format!("{dir}/api.toml");
    std::fs::write(
        &cfg_path,
        "interfaces = [\"lo\"]\napi_listen = \"127.0.0.1:9180\"\n[limits]\nmax_backends_per_service = 8\n[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\nmaglev_table_size = 1009\n\
         [[service.backend]]\naddress = \"127.0.0.1:9876\"\n[[service.backend]]\naddress = \"127.0.0.1:9877\"\n",
    )
    .expect("write config");
    let ports: Vec<String> = (9876..=9881).map(|p| format!("127.0.0.1:{p}")).collect();
    let _backends = start_backends(&ns, &ports.join(","));
    let mut lb = start_balancer(&ns, &env, &cfg_path, &instance);

    let cli = |args: &[&str]| -> (bool, String) {
        let mut full = vec!["env", &env, XDPLB];
        full.extend_from_slice(args);
        let out = ns.exec_unchecked(&full);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // Raw HTTP on the socket: returns (status, body).
    let raw = |method: &str, path: &str, body: &str| -> (u16, String) {
        let url = format!("http://xdplb{path}");
        let out = ns.exec_unchecked(&[
            "curl",
            "-s",
            "--max-time",
            "10",
            "--unix-socket",
            &sock,
            "-X",
            method,
            "-d",
            body,
            "-w",
            "\n%{http_code}",
            &url,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.trim().parse().expect("status"), body.to_string())
    };

    // Bad calls: a clear error, and neither the data plane's config nor the file changes.
    let file_before = std::fs::read_to_string(&cfg_path).expect("config");
    let (_, services_before) = raw("GET", "/v1/services", "");
    let bad_calls: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/v1/services/demo/backends",
            "{not json",
            400,
            "request body",
        ),
        (
            "POST",
            "/v1/services/demo/backends",
            "{\"address\":\"127.0.0.1:9878\",\"colour\":1}",
            400,
            "colour",
        ),
        (
            "POST",
            "/v1/services/demo/backends",
            "{\"address\":\"127.0.0.300:1\"}",
            400,
            "127.0.0.300:1",
        ),
        (
            "POST",
            "/v1/services/demo/backends",
            "{\"address\":\"127.0.0.1:9878\",\"weight\":0}",
            400,
            "weight",
        ),
        (
            "POST",
            "/v1/services/nope/backends",
            "{\"address\":\"127.0.0.1:9878\"}",
            404,
            "nope",
        ),
        (
            "DELETE",
            "/v1/services/demo/backends/127.0.0.1:9999",
            "",
            404,
            "127.0.0.1:9999",
        ),
        (
            "POST",
            "/v1/services",
            "{\"name\":\"demo\",\"vip\":\"127.0.0.1:9875\",\"backend\":[]}",
            409,
            "already exists",
        ),
        (
            "POST",
            "/v1/services",
            "{\"name\":\"x\",\"vip\":\"127.0.0.1:9875\",\"backend\":[{\"address\":\"127.0.0.1:1\"}]}",
            400,
            "127.0.0.1:9875",
        ),
        // The rules between services hold for API changes too.
        (
            "POST",
            "/v1/services",
            "{\"name\":\"x\",\"vip\":\"127.0.0.1:9999\",\"backend\":[{\"address\":\"127.0.0.1:9876\"}]}",
            400,
            "could not be told apart",
        ),
        (
            "POST",
            "/v1/services",
            "{\"name\":\"x\",\"vip\":\"239.1.1.1:53\",\"backend\":[{\"address\":\"127.0.0.1:9881\"}]}",
            400,
            "multicast",
        ),
    ];
    for (method, path, body, code, needle) in bad_calls {
        let (status, text) = raw(method, path, body);
        assert_eq!(status, *code, "{method} {path} {body}: {text}");
        assert!(
            text.contains(needle),
            "{method} {path} {body}: error lacks {needle:?}: {text}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&cfg_path).expect("config"),
        file_before,
        "rejected calls must not touch the config file"
    );
    assert_eq!(
        raw("GET", "/v1/services", "").1,
        services_before,
        "rejected calls change nothing"
    );
    // The optional TCP listener (api_listen) serves the same API.
    let tcp = |args: &[&str]| -> String {
        let mut full = vec!["curl", "-s", "--max-time", "10", "-w", "\n%{http_code}"];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&ns.exec_unchecked(&full).stdout).to_string()
    };
    let listed = tcp(&["http://127.0.0.1:9180/v1/services"]);
    assert_eq!(listed, format!("{services_before}\n200"), "GET over TCP");
    let refused = tcp(&[
        "-X",
        "POST",
        "-d",
        "{\"address\":\"nowhere\"}",
        "http://127.0.0.1:9180/v1/services/demo/backends",
    ]);
    assert!(
        refused.ends_with("\n400") && refused.contains("nowhere"),
        "{refused}"
    );
    assert_eq!(raw("GET", "/v1/services", "").1, services_before);
    // Over capacity: 8 backends per service at most.
    for p in 9878..=9883 {
        cli(&[
            "backend",
            "--instance",
            &instance,
            "add",
            "demo",
            &format!("127.0.0.1:{p}"),
        ]);
    }
    let (ok, text) = cli(&[
        "backend",
        "--instance",
        &instance,
        "add",
        "demo",
        "127.0.0.1:9884",
    ]);
    assert!(
        !ok && text.contains("max_backends_per_service"),
        "over capacity: {text}"
    );
    for p in 9878..=9883 {
        let (ok, text) = cli(&[
            "backend",
            "--instance",
            &instance,
            "remove",
            "demo",
            &format!("127.0.0.1:{p}"),
        ]);
        assert!(ok, "{text}");
    }
    assert_eq!(
        raw("GET", "/v1/services", "").1,
        services_before,
        "the services are as before"
    );
    // A non-root caller cannot reach the socket.
    let out = ns.exec_unchecked(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "env",
        &env,
        XDPLB,
        "status",
        "--instance",
        &instance,
    ]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("permission denied"),
        "non-root: {text}"
    );

    // 200 live changes under continuous traffic.
    let mut traffic = start_paced_traffic(&ns);
    let steps: [&[&str]; 5] = [
        &["add", "demo", "127.0.0.1:9878"],
        &["weight", "demo", "127.0.0.1:9877", "3"],
        &["drain", "demo", "127.0.0.1:9876"],
        &["undrain", "demo", "127.0.0.1:9876"],
        &["remove", "demo", "127.0.0.1:9878"],
    ];
    for k in 0..200 {
        let mut args = vec!["backend", "--instance", &instance];
        args.extend_from_slice(steps[k % steps.len()]);
        let (ok, text) = cli(&args);
        assert!(ok, "change {k} {:?}: {text}", steps[k % steps.len()]);
    }
    assert_paced_traffic_lost_nothing(&mut traffic, "200 API changes");

    // The changes were saved: the file holds the last state (weight 3), and a restart keeps it.
    let saved = std::fs::read_to_string(&cfg_path).expect("config");
    assert!(
        saved.contains("weight = 3"),
        "the reweight was saved:\n{saved}"
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
    let mut lb = start_balancer(&ns, &env, &cfg_path, &instance);
    let (ok, text) = cli(&[
        "backend",
        "--instance",
        &instance,
        "list",
        "demo",
        "-o",
        "json",
    ]);
    assert!(
        ok && text.contains("\"weight\": 3"),
        "after a restart the live change is still there: {text}"
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

/// The operator owns the config file: `xdplb service add` and `xdplb backend ...` edit it
/// keeping the operator's comments and layout, and refuse (409) while it holds edits that were
/// not applied, until `xdplb reload`.
#[test]
fn api_changes_edit_the_operators_file_and_wait_for_unapplied_edits() {
    require_root();
    let ns = Netns::new("own");
    let dir = run_dir("own");
    let instance = format!("t-own-{}", std::process::id());
    let env = format!("XDPLB_RUN_DIR={dir}");
    let cfg_path = format!("{dir}/own.toml");
    let original = "# The operator's notes: keep them.\ninterfaces = [\"lo\"]  # loopback\n\n[[service]]\n# The demo service.\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\nscheduler = \"round-robin\"\n\n[[service.backend]]\naddress = \"127.0.0.1:9876\"   # the first backend\n";
    std::fs::write(&cfg_path, original).expect("write config");
    let mut lb = start_balancer(&ns, &env, &cfg_path, &instance);
    let cli = |args: &[&str]| -> (bool, String) {
        let mut full = vec!["env", &env, XDPLB];
        full.extend_from_slice(args);
        let out = ns.exec_unchecked(&full);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let set_weight = |weight: &str| {
        cli(&[
            "backend",
            "--instance",
            &instance,
            "weight",
            "demo",
            "127.0.0.1:9876",
            weight,
        ])
    };
    let (ok, text) = cli(&[
        "service",
        "--instance",
        &instance,
        "add",
        "--name",
        "second",
        "--vip",
        "127.0.0.1:9975",
        "--scheduler",
        "random",
        "--backend",
        "127.0.0.1:9976,weight=2",
    ]);
    assert!(ok, "service add: {text}");
    assert!(
        text.contains("\"weight\": 2") && text.contains("\"flow_idle_timeout\": \"30s\""),
        "the answer shows the complete service: {text}"
    );
    let (ok, text) = set_weight("4");
    assert!(ok, "weight: {text}");
    let saved = std::fs::read_to_string(&cfg_path).expect("config");
    assert!(
        saved
            .starts_with("# The operator's notes: keep them.\ninterfaces = [\"lo\"]  # loopback\n"),
        "the operator's text stays as written:\n{saved}"
    );
    for kept in [
        "# The demo service.",
        "address = \"127.0.0.1:9876\"   # the first backend",
        "name = \"second\"",
    ] {
        assert!(saved.contains(kept), "{kept:?} missing:\n{saved}");
    }

    // The operator edits the file; until a reload, API changes are refused with 409.
    let edited = saved.replace("# The demo service.", "# The demo service, edited.");
    std::fs::write(&cfg_path, &edited).expect("write config");
    let (ok, text) = set_weight("5");
    assert!(
        !ok && text.contains("409")
            && text.contains("has edits that were not applied; run `xdplb reload` first"),
        "refused while the file has unapplied edits: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(&cfg_path).expect("config"),
        edited,
        "untouched"
    );
    // Nor did the daemon take it: the backend still has the weight of the last change.
    let (ok, text) = cli(&[
        "backend",
        "--instance",
        &instance,
        "list",
        "demo",
        "-o",
        "json",
    ]);
    assert!(ok, "list: {text}");
    let listed: Value = serde_json::from_str(&text).expect("JSON");
    let weight = listed
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == "127.0.0.1:9876"))
        .map(|b| b["weight"].clone());
    assert_eq!(
        weight,
        Some(Value::from(4)),
        "unchanged by the refused call: {text}"
    );
    let (ok, text) = cli(&["reload", "--instance", &instance]);
    assert!(ok, "reload: {text}");
    let (ok, text) = set_weight("5");
    assert!(ok, "after the reload the change goes through: {text}");
    let now = std::fs::read_to_string(&cfg_path).expect("config");
    assert!(
        now.contains("# The demo service, edited.") && now.contains("weight = 5"),
        "{now}"
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

/// Removes a directory on drop, even when the test fails.
struct RemoveDir(String);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn api_changes_to_a_bind_mounted_config_file_are_applied_and_saved_in_place() {
    require_root();
    let ns = Netns::new("bind");
    let dir = run_dir("bind");
    let _cleanup = RemoveDir(dir.clone());
    let instance = format!("t-bind-{}", std::process::id());
    let env = format!("XDPLB_RUN_DIR={dir}");
    let sock = format!("{dir}/{instance}.sock");
    // The daemon's config path is a mount point: `real.toml` bind-mounted over `xdplb.toml`,
    // in a private mount namespace of the daemon's own (gone when it exits), as a container
    // runtime mounts a config file. rename(2) cannot replace a mount point (EBUSY).
    let real = format!("{dir}/real.toml");
    let mount_point = format!("{dir}/xdplb.toml");
    std::fs::write(
        &real,
        "interfaces = [\"lo\"]\n[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\nscheduler = \"round-robin\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9876\"\n",
    )
    .expect("write config");
    std::fs::write(&mount_point, "# replaced by the bind mount\n").expect("write mount point");
    let _backends = start_backends(&ns, "127.0.0.1:9876,127.0.0.1:9877");
    let script = format!(
        "mount --bind {real} {mount_point} && exec env {env} {XDPLB} run --cleanup --config {mount_point} --instance {instance}"
    );
    let mut lb = Daemon::spawn(&in_ns(
        &ns,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
    ));
    lb.wait_for("running instance", START);

    let raw = |method: &str, path: &str, body: &str| -> (u16, String) {
        let out = ns.exec_unchecked(&[
            "curl",
            "-s",
            "--max-time",
            "10",
            "--unix-socket",
            &sock,
            "-X",
            method,
            "-d",
            body,
            "-w",
            "\n%{http_code}",
            &format!("http://xdplb{path}"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.trim().parse().expect("status"), body.to_string())
    };
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(&dir)
            .expect("read run dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect()
    };

    let (status, body) = raw(
        "POST",
        "/v1/services/demo/backends",
        "{\"address\":\"127.0.0.1:9877\"}",
    );
    assert_eq!(
        status, 200,
        "an API change on a bind-mounted config: {body}"
    );
    let saved = std::fs::read_to_string(&real).expect("read the bind mount's source");
    assert!(
        saved.contains("127.0.0.1:9877"),
        "the change must be in the file:\n{saved}"
    );
    assert_eq!(leftovers(), Vec::<String>::new(), "no temporary file stays");
    let report = client(&ns, "127.0.0.1:9875", 4, 1);
    assert_eq!(
        per_backend(&report, "flows_per_backend").len(),
        2,
        "the data plane has the new backend: {report}"
    );

    // A retry is a duplicate (409), as the change was made; the file is untouched.
    let (status, body) = raw(
        "POST",
        "/v1/services/demo/backends",
        "{\"address\":\"127.0.0.1:9877\"}",
    );
    assert_eq!(status, 409, "{body}");
    // A service that breaks a rule between services (a second local service on a backend of
    // the first) gets a 4xx and changes nothing.
    let (status, body) = raw(
        "POST",
        "/v1/services",
        "{\"name\":\"x\",\"vip\":\"127.0.0.1:9999\",\"backend\":[{\"address\":\"127.0.0.1:9876\"}]}",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("could not be told apart"), "{body}");
    assert_eq!(
        std::fs::read_to_string(&real).expect("read"),
        saved,
        "refused calls leave the file as it was"
    );
    let (_, services) = raw("GET", "/v1/services", "");
    assert!(
        !services.contains("\"x\"") && services.contains("127.0.0.1:9877"),
        "{services}"
    );

    // A reload re-reads the file and keeps the change (before, it silently reverted it).
    let out = ns.exec_unchecked(&["env", &env, XDPLB, "reload", "--instance", &instance]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, backends) = raw("GET", "/v1/services/demo/backends", "");
    assert!(
        backends.contains("127.0.0.1:9877"),
        "the change survives a reload: {backends}"
    );
    assert_eq!(leftovers(), Vec::<String>::new(), "no temporary file stays");
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

/// The id of the bpf_link pinned at `path`, from bpftool.
fn pinned_link_id(path: &str) -> u64 {
    let out = sh(&["bpftool", "--json", "link", "show", "pinned", path]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no link id in {v}"))
}

fn link_exists(id: u64) -> bool {
    run_bounded(
        &["bpftool", "link", "show", "id", &id.to_string()],
        Duration::from_secs(10),
    )
    .status
    .success()
}

#[test]
fn restart_and_upgrade_under_traffic_lose_nothing_and_stop_removes_everything() {
    require_root();
    let ns = Netns::new("restart");
    let dir = run_dir("restart");
    let bpffs = Bpffs::mount("restart");
    let pid = std::process::id();
    let instance = format!("t-restart-{pid}");
    let env_dir = format!("XDPLB_RUN_DIR={dir}");
    let env_fs = format!("XDPLB_BPFFS={}", bpffs.path);
    let pins = format!("{}/xdplb/{instance}/v2", bpffs.path);
    let cfg_path = format!("{dir}/restart.toml");
    std::fs::write(
        &cfg_path,
        "interfaces = [\"lo\"]\n[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9876\"\n[[service.backend]]\naddress = \"127.0.0.1:9877\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9878\"\n",
    )
    .expect("write config");
    let _backends = start_backends(&ns, "127.0.0.1:9876,127.0.0.1:9877,127.0.0.1:9878");
    let daemon = |extra: &[&str]| {
        let mut args = vec![
            "env", &env_dir, &env_fs, XDPLB, "run", "--config", &cfg_path,
        ];
        args.extend_from_slice(&["--instance", &instance]);
        args.extend_from_slice(extra);
        let mut d = Daemon::spawn(&in_ns(&ns, &args));
        d.wait_for("running instance", START);
        d
    };

    let mut first = daemon(&[]);
    assert!(
        first
            .seen
            .last()
            .is_some_and(|l| l.contains("adopted=false")),
        "a fresh start: {:?}",
        first.seen
    );
    let xdp_link = pinned_link_id(&format!("{pins}/links/xdp-lo"));
    let tc_link = pinned_link_id(&format!("{pins}/links/tc-lo"));
    let mut traffic = start_paced_traffic(&ns);
    std::thread::sleep(Duration::from_millis(800));

    // 1. The daemon stops (SIGTERM, no --cleanup): the pinned data plane keeps forwarding.
    let status = first.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit 0 on SIGTERM: {}",
        first.seen.join("\n")
    );
    assert!(xdp_attached(&ns, "lo"), "XDP stays attached with no daemon");
    std::thread::sleep(Duration::from_secs(1));

    // 2. A restart adopts the pins: same links, same maps, no map rewritten.
    let mut second = daemon(&[]);
    assert!(
        second
            .seen
            .last()
            .is_some_and(|l| l.contains("adopted=true")),
        "the restart adopts the pinned data plane: {:?}",
        second.seen
    );
    assert_eq!(pinned_link_id(&format!("{pins}/links/xdp-lo")), xdp_link);
    std::thread::sleep(Duration::from_millis(800));

    // 3. An upgrade: a new daemon loads and verifies its programs, the running one hands over,
    // and the new programs are swapped into the same links.
    let mut third = daemon(&["--replace"]);
    assert!(
        third
            .seen
            .iter()
            .any(|l| l.contains("the previous daemon handed over")),
        "{:?}",
        third.seen
    );
    let second_status = second
        .child
        .as_mut()
        .expect("running")
        .wait()
        .expect("wait for the replaced daemon");
    second.wait_for("handed over to a successor", Duration::from_secs(5));
    assert!(second_status.success(), "{}", second.seen.join("\n"));
    assert_eq!(pinned_link_id(&format!("{pins}/links/xdp-lo")), xdp_link);
    assert_eq!(pinned_link_id(&format!("{pins}/links/tc-lo")), tc_link);

    let report = assert_paced_traffic_lost_nothing(&mut traffic, "restart and upgrade");
    assert_eq!(
        report["sticky_flows"], 500,
        "every live flow kept its backend across the restart and the upgrade: {report}"
    );
    let valid = ["127.0.0.1:9876", "127.0.0.1:9877", "127.0.0.1:9878"];
    for backend in per_backend(&report, "per_backend").keys() {
        assert!(
            valid.contains(&backend.as_str()),
            "{backend} is not a backend"
        );
    }
    // Counters live in pinned maps: they count across all three daemons.
    let st = stats(&ns, &dir, &instance);
    assert!(
        st["services"][0]["packets"].as_u64() >= Some(3000),
        "the counters survived: {st}"
    );

    // 4. A restart with other [limits] is refused clearly and changes nothing.
    let bigger = format!("{dir}/bigger.toml");
    std::fs::write(
        &bigger,
        std::fs::read_to_string(&cfg_path)
            .expect("read config")
            .replace(
                "interfaces = [\"lo\"]",
                "interfaces = [\"lo\"]\n[limits]\nmax_flows = 4096",
            ),
    )
    .expect("write config");
    let out = ns.exec_unchecked(&[
        "env",
        &env_dir,
        &env_fs,
        XDPLB,
        "run",
        "--config",
        &bigger,
        "--instance",
        &instance,
        "--replace",
    ]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("[limits]") && text.contains("FLOWS_V1"),
        "{text}"
    );
    let one = client(&ns, "127.0.0.1:9875", 6, 2);
    assert_every_reply_from_vip(&one, 6, 2);

    // 5. `xdplb stop` stops the daemon and removes every pin: links detached, nothing left.
    let out = ns.exec(&[
        "env",
        &env_dir,
        &env_fs,
        XDPLB,
        "stop",
        "--instance",
        &instance,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("detached from lo"), "{text}");
    let third_status = third.terminate(Duration::from_secs(10));
    assert!(third_status.success());
    assert!(!std::path::Path::new(&pins).exists(), "pins removed");
    assert!(
        !std::path::Path::new(&format!("{dir}/{instance}.pins.json")).exists(),
        "record removed"
    );
    assert!(!xdp_attached(&ns, "lo"), "XDP detached");
    assert!(
        !link_exists(xdp_link) && !link_exists(tc_link),
        "both links gone"
    );
    let after = client(&ns, "127.0.0.1:9875", 1, 1);
    assert_eq!(after["replies"], 0, "nothing balanced after stop: {after}");
}

/// 60 flows of 3 datagrams from `client_ns` to 10.99.0.1:7000, through the balancer, to the
/// three `backend_ns`: every reply from the VIP, every flow on one backend, every backend used,
/// `Udp InCsumErrors` unchanged on every host, and every datagram accepted by the backends'
/// kernels and every reply by the client's. Returns the flows per backend.
fn round_trip_through_balancer(client_ns: &Netns, backend_ns: &[Netns]) -> BTreeMap<String, u64> {
    round_trip_to(client_ns, backend_ns, "10.99.0.1:7000")
}

/// 60 flows of 3 datagrams to `target` (either family): every reply from the VIP, every flow
/// sticky, every backend host used, and every datagram accepted by the receiving kernel: the
/// family's UDP counters grew by exactly the datagrams delivered, and neither family's
/// checksum error counter (`Udp InCsumErrors`, `Udp6InCsumErrors`) grew on any host.
fn round_trip_to(client_ns: &Netns, backend_ns: &[Netns], target: &str) -> BTreeMap<String, u64> {
    let ipv6 = target.starts_with('[');
    let hosts: Vec<&Netns> = std::iter::once(client_ns).chain(backend_ns).collect();
    let counters = |h: &Netns| (h.udp_counters(), h.udp6_counters());
    let before: Vec<_> = hosts.iter().map(|h| counters(h)).collect();
    let report = client(client_ns, target, 60, 3);
    assert_every_reply_from_vip(&report, 60, 3);
    let flows = per_backend(&report, "flows_per_backend");
    assert_eq!(flows.len(), 3, "every backend host answered: {report}");
    let delivered: Vec<u64> = before
        .iter()
        .zip(&hosts)
        .enumerate()
        .map(|(host, ((v4_before, v6_before), h))| {
            let (v4, v6) = counters(h);
            assert_eq!(v4_before.0, v4.0, "host {host}: Udp InCsumErrors grew");
            assert_eq!(v6_before.0, v6.0, "host {host}: Udp6InCsumErrors grew");
            if ipv6 {
                assert_eq!(v4_before.1, v4.1, "host {host}: IPv4 UDP for an IPv6 VIP");
                v6.1 - v6_before.1
            } else {
                v4.1 - v4_before.1
            }
        })
        .collect();
    assert_eq!(
        delivered[0], 180,
        "the client's kernel accepted every reply ({target})"
    );
    assert_eq!(
        delivered[1..].iter().sum::<u64>(),
        180,
        "the backends' kernels accepted every request ({target}): {delivered:?}"
    );
    flows
}

/// The IPv6 twin of an IPv4 test address, so that every link of a topology gets both families
/// by one rule: `10.a.b.c` is `fd00:a:b::c`, a `/24` becomes a `/64` and a `/32` a `/128`.
fn v6(v4: &str) -> String {
    let (addr, len) = match v4.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (v4, None),
    };
    let o: Vec<&str> = addr.split('.').collect();
    assert_eq!(o.len(), 4, "an IPv4 address: {v4}");
    let ip: std::net::Ipv6Addr = format!("fd00:{}:{}::{}", o[1], o[2], o[3])
        .parse()
        .expect("an IPv6 address");
    match len {
        Some("24") => format!("{ip}/64"),
        Some("32") => format!("{ip}/128"),
        Some(l) => panic!("no IPv6 twin for /{l}"),
        None => ip.to_string(),
    }
}

/// `10.a.b.c:PORT` as its IPv6 twin `[fd00:a:b::c]:PORT` (see [`v6`]).
fn v6_socket(v4: &str) -> String {
    let (addr, port) = v4.rsplit_once(':').expect("ADDRESS:PORT");
    format!("[{}]:{port}", v6(addr))
}

/// Adds the IPv6 twin of `v4` (see [`v6`]) to `dev` in `ns`, without duplicate address
/// detection (which would hold the address back for a second or two).
fn add_v6(ns: &Netns, dev: &str, v4: &str) {
    ns.exec(&["ip", "-6", "addr", "add", &v6(v4), "dev", dev, "nodad"]);
}

/// A route in both families: `10.x.y.0/24 via 10.a.b.c` and its IPv6 twin (`default` stays).
fn route_both(ns: &Netns, to: &str, via: &str) {
    ns.exec(&["ip", "route", "add", to, "via", via]);
    let to6 = if to == "default" {
        to.to_string()
    } else {
        v6(to)
    };
    ns.exec(&["ip", "-6", "route", "add", &to6, "via", &v6(via)]);
}

/// What the balancer counted between two `xdplb stats` reports.
struct Deltas {
    before: Value,
    after: Value,
}

impl Deltas {
    fn get(&self, name: &str) -> u64 {
        counter(&self.after, name) - counter(&self.before, name)
    }
}

/// Checks the IPv6 service `NAME6` of a dual-stack config (see [`write_dual_stack_config`])
/// end to end, after its IPv4 twin: the round trip of [`round_trip_to`] to
/// `[fd00:99::1]:7000`, and no IPv6 packet of it refused or passed as malformed. Returns the
/// flows per backend and what the balancer counted meanwhile.
fn dual_stack_round_trip(
    client_ns: &Netns,
    backend_ns: &[Netns],
    lb: (&Netns, &str, &str),
) -> (BTreeMap<String, u64>, Deltas) {
    let (lb_ns, dir, instance) = lb;
    let before = stats(lb_ns, dir, instance);
    let lb_errors = (lb_ns.udp_counters().0, lb_ns.udp6_counters().0);
    let flows = round_trip_to(client_ns, backend_ns, &v6_socket("10.99.0.1:7000"));
    assert_eq!(
        (lb_ns.udp_counters().0, lb_ns.udp6_counters().0),
        lb_errors,
        "the balancer host's Udp InCsumErrors / Udp6InCsumErrors grew"
    );
    let d = Deltas {
        before,
        after: stats(lb_ns, dir, instance),
    };
    for name in [
        "pass_udp_zero_checksum",
        "pass_bad_ipv6_header",
        "pass_ipv6_ext_headers",
        "drop_no_route",
        "drop_no_backend",
        "drop_reply_rewrite_failed",
    ] {
        assert_eq!(d.get(name), 0, "IPv6 service: {name}: {}", d.after);
    }
    println!("IPv6 twin: 60 flows x 3 datagrams, flows per backend {flows:?}");
    (flows, d)
}

/// Datagrams of 3,000 bytes to `target` (so IP fragments both ways at MTU 1500: the client
/// fragments the request, the backend its echo): every one answered from the VIP with its
/// payload intact, and the balancer's later fragments all followed their first fragment.
fn fragmented_round_trip(
    client_ns: &Netns,
    target: &str,
    lb_ns: &Netns,
    dir: &str,
    instance: &str,
) {
    let before = stats(lb_ns, dir, instance);
    let out = client_ns.exec(&[
        XDPLB,
        "demo-client",
        "--target",
        target,
        "--flows",
        "10",
        "--packets",
        "2",
        "--payload-bytes",
        "3000",
        "--timeout-ms",
        "2000",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("demo-client prints JSON");
    assert_eq!(
        report["replies"], 20,
        "every fragmented datagram answered: {report}"
    );
    assert_eq!(report["replies_from_elsewhere"], 0, "{report}");
    assert_eq!(
        report["bad_echoes"], 0,
        "every payload came back intact: {report}"
    );
    let after = stats(lb_ns, dir, instance);
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert!(
        delta("fragment_route_recorded") >= 20 && delta("fragment_followed") >= 20,
        "first fragments recorded and later ones followed: {after}"
    );
    assert_eq!(
        delta("pass_later_fragment"),
        0,
        "no later fragment of ours went unmatched: {after}"
    );
    println!(
        "fragments: 20 datagrams of 3000 bytes answered; routes recorded {}, fragments followed {}",
        delta("fragment_route_recorded"),
        delta("fragment_followed")
    );
}

/// Demo backends on `listen` in each of `backend_ns`, replying with the names backend-1..3.
fn start_named_backends(backend_ns: &[Netns], listen: &str) -> Vec<Daemon> {
    (1..=3)
        .zip(backend_ns)
        .map(|(k, ns)| {
            let name = format!("backend-{k}");
            let mut b = Daemon::spawn(&in_ns(
                ns,
                &[XDPLB, "demo-backend", "--listen", listen, "--name", &name],
            ));
            b.wait_for("listening", START);
            b
        })
        .collect()
}

/// Adds a veth pair `a` (in `ns_a`, address `addr_a`) – `b` (in `ns_b`, `addr_b`), both up,
/// with tx checksum offload off, so that every receiver validates real checksums.
fn link(ns_a: &Netns, a: &str, addr_a: &str, ns_b: &Netns, b: &str, addr_b: &str) {
    sh(&[
        "ip", "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ]);
    for (ns, dev, addr) in [(ns_a, a, addr_a), (ns_b, b, addr_b)] {
        ns.exec(&["ip", "addr", "add", addr, "dev", dev]);
        add_v6(ns, dev, addr);
        ns.exec(&["ip", "link", "set", dev, "up"]);
        set_offloads(ns, dev);
        // GRO gives a veth the NAPI context that XDP_TX and XDP_REDIRECT from a native-mode
        // peer need. A veth's GRO may be on already, and switching it "on" again then changes
        // nothing (no NAPI): off, then on.
        ns.exec(&["ethtool", "-K", dev, "gro", "off"]);
        ns.exec(&["ethtool", "-K", dev, "gro", "on"]);
    }
}

/// A client, a balancer and three backend hosts, each backend on a link of its own to the
/// balancer, which is its gateway: client `10.N.0.1/24` - balancer `10.N.0.2`, backend k
/// `10.(N+1).k.2/24` - balancer `10.(N+1).k.1`, the client routing `10.99.0.0/24` (the VIPs) via
/// the balancer, and IPv4 forwarding on in the balancer. Devices are named `<p>c0`, `<p>l0`
/// (client side), `<p>l<k>`, `<p>b<k>`, each with the pid appended.
struct Routed {
    client: Netns,
    lb: Netns,
    backends: Vec<Netns>,
    /// The balancer's devices, the client side first.
    lb_devs: Vec<String>,
    /// The backends' devices.
    backend_devs: Vec<String>,
}

fn routed_topology(p: &str, net: u8) -> Routed {
    let pid = std::process::id();
    let client = Netns::new(&format!("{p}c"));
    let lb = Netns::new(&format!("{p}l"));
    let backends: Vec<Netns> = (1..=3).map(|k| Netns::new(&format!("{p}b{k}"))).collect();
    let lb_client_dev = format!("{p}l0{pid}");
    link(
        &client,
        &format!("{p}c0{pid}"),
        &format!("10.{net}.0.1/24"),
        &lb,
        &lb_client_dev,
        &format!("10.{net}.0.2/24"),
    );
    let gateway = format!("10.{net}.0.2");
    route_both(&client, "10.99.0.0/24", &gateway);
    let mut lb_devs = vec![lb_client_dev];
    let mut backend_devs = Vec::new();
    let backend_net = net + 1;
    for (k, ns) in (1..=3).zip(&backends) {
        let (dev, bdev) = (format!("{p}l{k}{pid}"), format!("{p}b{k}{pid}"));
        link(
            &lb,
            &dev,
            &format!("10.{backend_net}.{k}.1/24"),
            ns,
            &bdev,
            &format!("10.{backend_net}.{k}.2/24"),
        );
        let gateway = format!("10.{backend_net}.{k}.1");
        route_both(ns, "default", &gateway);
        lb_devs.push(dev);
        backend_devs.push(bdev);
    }
    // Packets whose next hop has no neighbour entry yet go through the kernel's forwarding.
    lb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    lb.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    Routed {
        client,
        lb,
        backends,
        lb_devs,
        backend_devs,
    }
}

/// Writes `DIR/NAME.toml`: one service `NAME` on VIP 10.99.0.1:7000 with the extra `service`
/// lines and `backends`, attached to `interfaces` (plus any `top` lines). Returns the path.
fn write_service_config(
    dir: &str,
    name: &str,
    interfaces: &[String],
    top: &str,
    service: &str,
    backends: &[String],
) -> String {
    write_config(dir, name, interfaces, top, service, backends, false)
}

/// [`write_service_config`], and beside the service its IPv6 twin `NAME6` on
/// `[fd00:99::1]:7000`, with every address in its lines and backends replaced by its twin (see
/// [`v6`]; an `encap_source` prefix becomes a `/64`): an IPv4 and an IPv6 service side by side.
fn write_dual_stack_config(
    dir: &str,
    name: &str,
    interfaces: &[String],
    top: &str,
    service: &str,
    backends: &[String],
) -> String {
    write_config(dir, name, interfaces, top, service, backends, true)
}

fn write_config(
    dir: &str,
    name: &str,
    interfaces: &[String],
    top: &str,
    service: &str,
    backends: &[String],
    twin: bool,
) -> String {
    let list = interfaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        "interfaces = [{list}]\n{top}[[service]]\nname = \"{name}\"\nvip = \"10.99.0.1:7000\"\n{service}"
    );
    for b in backends {
        let _ = writeln!(text, "[[service.backend]]\naddress = \"{b}\"");
    }
    if twin {
        let _ = write!(
            text,
            "[[service]]\nname = \"{name}6\"\nvip = \"{}\"\n{}",
            v6_socket("10.99.0.1:7000"),
            twin_lines(service)
        );
        for b in backends {
            let _ = writeln!(text, "[[service.backend]]\naddress = \"{}\"", v6_socket(b));
        }
    }
    let path = format!("{dir}/{name}.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Service lines with every quoted IPv4 address (or prefix) replaced by its IPv6 twin.
fn twin_lines(lines: &str) -> String {
    lines
        .lines()
        .map(|l| match l.split_once(" = \"") {
            Some((key, rest)) if rest.starts_with("10.") => {
                let value = rest.trim_end_matches('"');
                let twin = match value.split_once('/') {
                    Some((a, _)) => format!("{}/64", v6(a)),
                    None => v6(value),
                };
                format!("{key} = \"{twin}\"\n")
            }
            _ => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn nat_routes_to_backends_on_other_hosts_and_translates_their_replies() {
    with_offloads(
        Offloads::Off,
        &SERIAL_NAT_ROUTES_TO_BACKENDS_ON_OTHER_HOSTS_AND_TRANSLATES_THEIR_REPLIES,
        nat_routes_to_backends_on_other_hosts_and_translates_their_replies_case,
    );
}

/// The same with the offloads a veth (or a container) has by default: senders hand over
/// partial UDP checksums.
#[test]
fn nat_routes_to_backends_on_other_hosts_and_translates_their_replies_with_default_offloads() {
    with_offloads(
        Offloads::Default,
        &SERIAL_NAT_ROUTES_TO_BACKENDS_ON_OTHER_HOSTS_AND_TRANSLATES_THEIR_REPLIES,
        nat_routes_to_backends_on_other_hosts_and_translates_their_replies_case,
    );
}

static SERIAL_NAT_ROUTES_TO_BACKENDS_ON_OTHER_HOSTS_AND_TRANSLATES_THEIR_REPLIES: std::sync::Mutex<
    (),
> = std::sync::Mutex::new(());

fn nat_routes_to_backends_on_other_hosts_and_translates_their_replies_case() {
    require_root();
    let pid = std::process::id();
    let Routed {
        client: client_ns,
        lb: lb_ns,
        backends: backend_ns,
        lb_devs: interfaces,
        ..
    } = routed_topology("n", 81);
    let _backends: Vec<Daemon> = (1..=3)
        .zip(&backend_ns)
        .map(|(k, ns)| {
            let b = format!("10.82.{k}.2:7000");
            start_backends(ns, &format!("{b},{}", v6_socket(&b)))
        })
        .collect();
    let dir = run_dir("nat");
    let backends: Vec<String> = (1..=3).map(|k| format!("10.82.{k}.2:7000")).collect();
    let cfg_path = write_dual_stack_config(
        &dir,
        "nat",
        &interfaces,
        "",
        "forwarding = \"nat\"\n",
        &backends,
    );
    let instance = format!("t-nat-{pid}");
    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut lb = start_balancer(&lb_ns, &env, &cfg_path, &instance);
    for dev in &interfaces {
        assert!(xdp_attached(&lb_ns, dev), "XDP on {dev}");
    }

    let flows = round_trip_through_balancer(&client_ns, &backend_ns);
    assert!(
        flows.values().all(|&n| n >= 5),
        "Maglev spreads 60 flows over 3 backends: {flows:?}"
    );
    let st = stats(&lb_ns, &dir, &instance);
    assert_eq!(counter(&st, "nat_reply_translated"), 180, "{st}");
    assert_eq!(counter(&st, "flow_created"), 60, "{st}");
    // Sent by XDP after a FIB lookup, or with the next-hop cache once the daemon resolved it.
    let routed = counter(&st, "forwarded_fib") + counter(&st, "forwarded_cached");
    let via_kernel = counter(&st, "pass_no_neighbour");
    assert_eq!(
        routed + via_kernel,
        360,
        "every request and reply was routed by XDP or, before its neighbour was known, by the kernel: {st}"
    );
    assert!(
        routed >= 300,
        "once neighbours are known XDP sends the packets itself: {st}"
    );
    assert_eq!(counter(&st, "drop_no_route"), 0, "{st}");
    println!(
        "nat: 60 flows x 3 datagrams, flows per backend {flows:?}; forwarded_fib + forwarded_cached {routed}, pass_no_neighbour {via_kernel}; attached: {}",
        lb.seen.join(" ")
    );
    // The IPv6 twin (NAT66) beside it: requests routed to the backends, replies translated.
    let (flows6, d) = dual_stack_round_trip(&client_ns, &backend_ns, (&lb_ns, &dir, &instance));
    assert!(flows6.values().all(|&n| n >= 5), "{flows6:?}");
    assert_eq!(d.get("nat_reply_translated"), 180, "{}", d.after);
    assert_eq!(d.get("flow_created"), 60, "{}", d.after);
    assert_eq!(
        d.get("forwarded_fib") + d.get("forwarded_cached") + d.get("pass_no_neighbour"),
        360,
        "every IPv6 request and reply routed: {}",
        d.after
    );
    fragmented_round_trip(&client_ns, "10.99.0.1:7000", &lb_ns, &dir, &instance);
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

/// Plugs `ns` into the bridge `br0` of `switch` with a veth pair: `dev` (address `addr`) in
/// `ns`, its peer a bridge port. Tx checksum offload off, GRO (NAPI) on, as in [`link`].
fn plug(switch: &Netns, port: &str, ns: &Netns, dev: &str, addr: &str) {
    sh(&[
        "ip",
        "link",
        "add",
        dev,
        "netns",
        &ns.name,
        "type",
        "veth",
        "peer",
        "name",
        port,
        "netns",
        &switch.name,
    ]);
    switch.exec(&["ip", "link", "set", port, "master", "br0"]);
    ns.exec(&["ip", "addr", "add", addr, "dev", dev]);
    add_v6(ns, dev, addr);
    for (n, d) in [(switch, port), (ns, dev)] {
        n.exec(&["ip", "link", "set", d, "up"]);
        set_offloads(n, d);
        // As in `link`: off, then on, so that the veth gets its NAPI context.
        n.exec(&["ethtool", "-K", d, "gro", "off"]);
        n.exec(&["ethtool", "-K", d, "gro", "on"]);
    }
}

/// Generic XDP here: the balancer sends every frame back out of the interface it came in on
/// (XDP_TX), and a native-mode XDP_TX on a veth reaches the peer only once the peer runs an XDP
/// program of its own (the kernel's veth schedules the peer's NAPI only then); the bridge port
/// has none. Physical NICs have no such condition.
#[test]
fn dsr_l2_backends_on_one_segment_answer_clients_directly() {
    with_offloads(
        Offloads::Off,
        &SERIAL_DSR_L2_BACKENDS_ON_ONE_SEGMENT_ANSWER_CLIENTS_DIRECTLY,
        dsr_l2_backends_on_one_segment_answer_clients_directly_case,
    );
}

/// The same with the offloads a veth (or a container) has by default: senders hand over
/// partial UDP checksums.
#[test]
fn dsr_l2_backends_on_one_segment_answer_clients_directly_with_default_offloads() {
    with_offloads(
        Offloads::Default,
        &SERIAL_DSR_L2_BACKENDS_ON_ONE_SEGMENT_ANSWER_CLIENTS_DIRECTLY,
        dsr_l2_backends_on_one_segment_answer_clients_directly_case,
    );
}

static SERIAL_DSR_L2_BACKENDS_ON_ONE_SEGMENT_ANSWER_CLIENTS_DIRECTLY: std::sync::Mutex<()> =
    std::sync::Mutex::new(());

fn dsr_l2_backends_on_one_segment_answer_clients_directly_case() {
    require_root();
    let pid = std::process::id();
    let switch = Netns::new("dsrs");
    switch.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    switch.exec(&["ip", "link", "set", "br0", "up"]);
    let client_ns = Netns::new("dsrc");
    let lb_ns = Netns::new("dsrl");
    let backend_ns: Vec<Netns> = (1..=3).map(|k| Netns::new(&format!("dsrb{k}"))).collect();
    plug(
        &switch,
        &format!("sc{pid}"),
        &client_ns,
        &format!("dc{pid}"),
        "10.83.0.1/24",
    );
    route_both(&client_ns, "10.99.0.0/24", "10.83.0.2");
    let lb_dev = format!("dl{pid}");
    plug(
        &switch,
        &format!("sl{pid}"),
        &lb_ns,
        &lb_dev,
        "10.83.0.2/24",
    );
    for (k, ns) in (1..=3).zip(&backend_ns) {
        plug(
            &switch,
            &format!("s{k}{pid}"),
            ns,
            &format!("d{k}{pid}"),
            &format!("10.83.0.1{k}/24"),
        );
        // The backend holds the VIP (and does not answer ARP for it) and replies directly.
        // Neighbour discovery answers only for addresses of the receiving interface, so the
        // IPv6 VIP on lo needs nothing more.
        ns.exec(&["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"]);
        add_v6(ns, "lo", "10.99.0.1/32");
        ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"]);
    }
    let _backends = start_named_backends(&backend_ns, "10.99.0.1:7000,[fd00:99::1]:7000");

    let dir = run_dir("dsr");
    let backends: Vec<String> = (1..=3).map(|k| format!("10.83.0.1{k}:7000")).collect();
    let cfg_path = write_dual_stack_config(
        &dir,
        "dsr",
        std::slice::from_ref(&lb_dev),
        "xdp_mode = \"generic\"\n",
        "forwarding = \"dsr-l2\"\n",
        &backends,
    );
    let instance = format!("t-dsr-{pid}");
    let env = format!("XDPLB_RUN_DIR={dir}");
    // A start that must be refused: its stderr.
    let refused_start = || {
        let refused = lb_ns.exec_unchecked(&[
            "env",
            &env,
            XDPLB,
            "run",
            "--cleanup",
            "--config",
            &cfg_path,
            "--instance",
            &instance,
        ]);
        let text = String::from_utf8_lossy(&refused.stderr).to_string();
        assert!(!refused.status.success(), "{text}");
        text
    };
    // Without IPv4 forwarding the kernel answers no FIB lookup: the daemon says so and stops.
    let text = refused_start();
    assert!(
        text.contains("IPv4 forwarding") && text.contains(&lb_dev) && text.contains("sysctl"),
        "{text}"
    );
    lb_ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
    // With IPv4 forwarding alone, the IPv6 twin is refused the same way.
    let text = refused_start();
    assert!(
        text.contains("IPv6 service(s) dsr6")
            && text.contains("net.ipv6.conf.all.forwarding")
            && text.contains(&lb_dev),
        "{text}"
    );
    lb_ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let mut lb = start_balancer(&lb_ns, &env, &cfg_path, &instance);
    // The daemon has asked the kernel to resolve the backends' MAC addresses; give ARP a moment.
    std::thread::sleep(Duration::from_millis(300));

    let flows = round_trip_through_balancer(&client_ns, &backend_ns);
    assert_eq!(
        flows.keys().collect::<Vec<_>>(),
        ["backend-1", "backend-2", "backend-3"],
        "every backend host answered directly"
    );
    let st = stats(&lb_ns, &dir, &instance);
    assert_eq!(
        counter(&st, "forwarded_fib") + counter(&st, "forwarded_cached"),
        180,
        "every request sent by XDP: {st}"
    );
    assert_eq!(counter(&st, "drop_no_neighbour"), 0, "{st}");
    // The replies never pass the balancer: it translated none.
    assert_eq!(counter(&st, "reply_translated"), 0, "{st}");
    assert_eq!(counter(&st, "nat_reply_translated"), 0, "{st}");
    println!("dsr-l2: 60 flows x 3 datagrams, flows per backend {flows:?}");
    let (flows6, d) = dual_stack_round_trip(&client_ns, &backend_ns, (&lb_ns, &dir, &instance));
    assert_eq!(
        flows6.keys().collect::<Vec<_>>(),
        ["backend-1", "backend-2", "backend-3"],
        "every backend host answered the IPv6 VIP directly"
    );
    assert_eq!(
        d.get("forwarded_fib") + d.get("forwarded_cached"),
        180,
        "every IPv6 request sent by XDP: {}",
        d.after
    );
    assert_eq!(d.get("drop_no_neighbour"), 0, "{}", d.after);
    assert_eq!(d.get("reply_translated") + d.get("nat_reply_translated"), 0);
    fragmented_round_trip(&client_ns, "10.99.0.1:7000", &lb_ns, &dir, &instance);
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

#[test]
fn dsr_ipip_backends_decapsulate_with_xdplb_decap_and_answer_directly() {
    with_offloads(
        Offloads::Off,
        &SERIAL_DSR_IPIP_BACKENDS_DECAPSULATE_WITH_XDPLB_DECAP_AND_ANSWER_DIRECTLY,
        dsr_ipip_backends_decapsulate_with_xdplb_decap_and_answer_directly_case,
    );
}

/// The same with the offloads a veth (or a container) has by default: senders hand over
/// partial UDP checksums.
#[test]
fn dsr_ipip_backends_decapsulate_with_xdplb_decap_and_answer_directly_with_default_offloads() {
    with_offloads(
        Offloads::Default,
        &SERIAL_DSR_IPIP_BACKENDS_DECAPSULATE_WITH_XDPLB_DECAP_AND_ANSWER_DIRECTLY,
        dsr_ipip_backends_decapsulate_with_xdplb_decap_and_answer_directly_case,
    );
}

static SERIAL_DSR_IPIP_BACKENDS_DECAPSULATE_WITH_XDPLB_DECAP_AND_ANSWER_DIRECTLY: std::sync::Mutex<
    (),
> = std::sync::Mutex::new(());

fn dsr_ipip_backends_decapsulate_with_xdplb_decap_and_answer_directly_case() {
    require_root();
    let pid = std::process::id();
    let bpffs = Bpffs::mount("ipip");
    let env_fs = format!("XDPLB_BPFFS={}", bpffs.path);
    let Routed {
        client: client_ns,
        lb: lb_ns,
        backends: backend_ns,
        lb_devs: interfaces,
        backend_devs,
    } = routed_topology("i", 84);
    for (ns, bdev) in backend_ns.iter().zip(&backend_devs) {
        ns.exec(&["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"]);
        add_v6(ns, "lo", "10.99.0.1/32");
        let out = ns.exec(&["env", &env_fs, XDPLB, "decap", "--interface", bdev]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("decap attached"),
            "{out:?}"
        );
    }
    // The balancer answers a datagram too big for a backend's link with ICMP "fragmentation
    // needed" sent with XDP_TX back out of its client-facing veth. A veth hands XDP_TX frames
    // to its peer's NAPI ring, but schedules that NAPI only when the peer has an XDP program of
    // its own (veth_xdp_flush); GRO alone (what `link` gives every veth) makes the peer accept
    // the frames, which then wait in its ring until something else wakes it, here long after
    // the client's socket is gone. An XDP program on the client's veth (decap passes anything
    // that is not IPIP) is what a client-side veth needs for the answers to arrive.
    let client_dev = format!("ic0{pid}");
    let out = client_ns.exec(&["env", &env_fs, XDPLB, "decap", "--interface", &client_dev]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("decap attached"),
        "{out:?}"
    );
    let _backends = start_named_backends(&backend_ns, "10.99.0.1:7000,[fd00:99::1]:7000");

    let dir = run_dir("ipip");
    let backends: Vec<String> = (1..=3).map(|k| format!("10.85.{k}.2:7000")).collect();
    let cfg_path = write_dual_stack_config(
        &dir,
        "ipip",
        &interfaces,
        "",
        "forwarding = \"dsr-ipip\"\nencap_source = \"10.200.0.0/24\"\n",
        &backends,
    );
    let instance = format!("t-ipip-{pid}");
    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut lb = start_balancer(&lb_ns, &env, &cfg_path, &instance);

    let flows = round_trip_through_balancer(&client_ns, &backend_ns);
    let decapsulated = decapsulated_on(&backend_ns, &backend_devs, &env_fs);
    assert_eq!(
        decapsulated, 180,
        "every request was decapsulated by xdplb decap"
    );
    let st = stats(&lb_ns, &dir, &instance);
    assert_eq!(
        counter(&st, "forwarded_fib")
            + counter(&st, "forwarded_cached")
            + counter(&st, "pass_no_neighbour"),
        180,
        "every request encapsulated and sent: {st}"
    );
    println!("dsr-ipip: 60 flows x 3 datagrams, flows per backend {flows:?}");

    // The IPv6 twin: IPv6-in-IPv6 from the fd00:200::/64 prefix, stripped by the same
    // `xdplb decap`.
    let (_, d) = dual_stack_round_trip(&client_ns, &backend_ns, (&lb_ns, &dir, &instance));
    assert_eq!(
        decapsulated_on(&backend_ns, &backend_devs, &env_fs),
        360,
        "every IPv6 request was decapsulated too"
    );
    assert_eq!(
        d.get("forwarded_fib") + d.get("forwarded_cached") + d.get("pass_no_neighbour"),
        180,
        "every IPv6 request encapsulated and sent: {}",
        d.after
    );
    // Packet Too Big: with the backends' links at 1400 bytes, a 1380-byte datagram (1428 bytes
    // of IPv6) no longer fits once encapsulated (1468); the client's kernel learns the inner
    // MTU, 1360, from the balancer's ICMPv6 answer. (IPv6 needs links of 1280 bytes or more,
    // hence not the 1000 of the IPv4 case below.)
    for dev in &interfaces[1..] {
        lb_ns.exec(&["ip", "link", "set", dev, "mtu", "1400"]);
    }
    let before = stats(&lb_ns, &dir, &instance);
    client_ns.exec(&[
        XDPLB,
        "demo-flood",
        "--target",
        &v6_socket("10.99.0.1:7000"),
        "--flows",
        "1",
        "--seconds",
        "0.2",
        "--rate",
        "20",
        "--payload-bytes",
        "1380",
    ]);
    let route = client_ns.exec(&["ip", "-6", "route", "get", &v6("10.99.0.1")]);
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    let st = stats(&lb_ns, &dir, &instance);
    assert!(
        counter(&st, "icmp_frag_needed_sent") > counter(&before, "icmp_frag_needed_sent"),
        "{st}"
    );
    assert!(
        route.contains("mtu 1360"),
        "the client learned the inner MTU over IPv6: {route}; balancer: {st}"
    );

    // MTU: with the backends' links at 1000 bytes, a 990-byte datagram (1018 bytes of IPv4, DF
    // set by the client's stack) no longer fits once encapsulated; the client's kernel learns
    // the inner MTU, 980, from the balancer's ICMP answer.
    for dev in &interfaces[1..] {
        lb_ns.exec(&["ip", "link", "set", dev, "mtu", "1000"]);
    }
    client_ns.exec(&[
        XDPLB,
        "demo-flood",
        "--target",
        "10.99.0.1:7000",
        "--flows",
        "1",
        "--seconds",
        "0.2",
        "--rate",
        "20",
        "--payload-bytes",
        "990",
    ]);
    let route = client_ns.exec(&["ip", "route", "get", "10.99.0.1"]);
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    let st = stats(&lb_ns, &dir, &instance);
    assert!(counter(&st, "icmp_frag_needed_sent") >= 1, "{st}");
    assert!(
        route.contains("mtu 980"),
        "the client learned the inner MTU: {route}; balancer: {st}"
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
    let hosts = backend_ns.iter().zip(&backend_devs);
    for (ns, dev) in std::iter::once((&client_ns, &client_dev)).chain(hosts) {
        ns.exec(&[
            "env",
            &env_fs,
            XDPLB,
            "decap",
            "--interface",
            dev,
            "--remove",
        ]);
        assert!(!xdp_attached(ns, dev), "decap detached from {dev}");
    }
}

/// Datagrams `xdplb decap --stats` reports decapsulated, summed over the backend hosts.
fn decapsulated_on(backend_ns: &[Netns], backend_devs: &[String], env_fs: &str) -> u64 {
    let mut decapsulated = 0;
    for (ns, dev) in backend_ns.iter().zip(backend_devs) {
        let out = ns.exec(&["env", env_fs, XDPLB, "decap", "--interface", dev, "--stats"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let n: u64 = text
            .split("decapsulated ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("decap stats: {text}"));
        decapsulated += n;
    }
    decapsulated
}

/// Backends on a segment of their own with no route to the client at all: fullnat's source
/// rewrite is the only reason their replies find the way back.
#[test]
fn fullnat_reaches_backends_that_have_no_route_to_clients() {
    with_offloads(
        Offloads::Off,
        &SERIAL_FULLNAT_REACHES_BACKENDS_THAT_HAVE_NO_ROUTE_TO_CLIENTS,
        fullnat_reaches_backends_that_have_no_route_to_clients_case,
    );
}

/// The same with the offloads a veth (or a container) has by default: senders hand over
/// partial UDP checksums.
#[test]
fn fullnat_reaches_backends_that_have_no_route_to_clients_with_default_offloads() {
    with_offloads(
        Offloads::Default,
        &SERIAL_FULLNAT_REACHES_BACKENDS_THAT_HAVE_NO_ROUTE_TO_CLIENTS,
        fullnat_reaches_backends_that_have_no_route_to_clients_case,
    );
}

static SERIAL_FULLNAT_REACHES_BACKENDS_THAT_HAVE_NO_ROUTE_TO_CLIENTS: std::sync::Mutex<()> =
    std::sync::Mutex::new(());

fn fullnat_reaches_backends_that_have_no_route_to_clients_case() {
    require_root();
    let pid = std::process::id();
    let switch = Netns::new("fnats");
    switch.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    switch.exec(&["ip", "link", "set", "br0", "up"]);
    let client_ns = Netns::new("fnatc");
    let lb_ns = Netns::new("fnatl");
    let backend_ns: Vec<Netns> = (1..=3).map(|k| Netns::new(&format!("fnatb{k}"))).collect();
    let lb_client_dev = format!("fl0{pid}");
    link(
        &client_ns,
        &format!("fc0{pid}"),
        "10.87.0.1/24",
        &lb_ns,
        &lb_client_dev,
        "10.87.0.2/24",
    );
    route_both(&client_ns, "10.99.0.0/24", "10.87.0.2");
    let lb_backend_dev = format!("fl1{pid}");
    plug(
        &switch,
        &format!("sl{pid}"),
        &lb_ns,
        &lb_backend_dev,
        "10.86.0.1/24",
    );
    for (k, ns) in (1..=3).zip(&backend_ns) {
        plug(
            &switch,
            &format!("s{k}{pid}"),
            ns,
            &format!("fb{k}{pid}"),
            &format!("10.86.0.1{k}/24"),
        );
        let routes = ns.exec(&["ip", "route", "show"]);
        assert!(
            !String::from_utf8_lossy(&routes.stdout).contains("default"),
            "backends have no default route"
        );
    }
    lb_ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    lb_ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let _backends: Vec<Daemon> = (1..=3)
        .zip(&backend_ns)
        .map(|(k, ns)| {
            let b = format!("10.86.0.1{k}:7000");
            start_backends(ns, &format!("{b},{}", v6_socket(&b)))
        })
        .collect();

    let dir = run_dir("fnat");
    let backends: Vec<String> = (1..=3).map(|k| format!("10.86.0.1{k}:7000")).collect();
    let cfg_path = write_dual_stack_config(
        &dir,
        "fullnat",
        &[lb_client_dev.clone(), lb_backend_dev.clone()],
        "",
        "forwarding = \"fullnat\"\nfullnat_source = \"10.86.0.1\"\nfullnat_ports = \"30000-30999\"\n",
        &backends,
    );
    let instance = format!("t-fnat-{pid}");
    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut lb = start_balancer(&lb_ns, &env, &cfg_path, &instance);
    // The daemon has asked the kernel to resolve the backends' MAC addresses; give ARP a moment.
    std::thread::sleep(Duration::from_millis(300));

    let flows = round_trip_through_balancer(&client_ns, &backend_ns);
    let st = stats(&lb_ns, &dir, &instance);
    assert_eq!(counter(&st, "fullnat_reply_translated"), 180, "{st}");
    assert_eq!(counter(&st, "drop_ports_exhausted"), 0, "{st}");
    assert_eq!(counter(&st, "drop_no_neighbour"), 0, "{st}");
    assert_eq!(
        counter(&st, "forwarded_fib")
            + counter(&st, "forwarded_cached")
            + counter(&st, "pass_no_neighbour"),
        360,
        "every request and reply routed: {st}"
    );
    println!(
        "fullnat: 60 flows x 3 datagrams, flows per backend {flows:?}, forwarded_fib {}",
        counter(&st, "forwarded_fib")
    );
    let (_, d) = dual_stack_round_trip(&client_ns, &backend_ns, (&lb_ns, &dir, &instance));
    assert_eq!(d.get("fullnat_reply_translated"), 180, "{}", d.after);
    assert_eq!(d.get("drop_ports_exhausted"), 0, "{}", d.after);
    assert_eq!(
        d.get("forwarded_fib") + d.get("forwarded_cached") + d.get("pass_no_neighbour"),
        360,
        "every IPv6 request and reply routed: {}",
        d.after
    );
    fragmented_round_trip(&client_ns, "10.99.0.1:7000", &lb_ns, &dir, &instance);
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

/// `xdplb decap` under plain `ip netns exec` (which gives the command a private /sys and so a
/// bpffs that dies with it): the program must stay attached after the command exits, and a
/// later, separate `ip netns exec` must find it for `--stats` and `--remove`.
#[test]
fn decap_attached_under_ip_netns_exec_outlives_the_command() {
    require_root();
    let ns = Netns::new("decap");
    let pid = std::process::id();
    let (a, b) = (format!("dcpa{pid}"), format!("dcpb{pid}"));
    ns.exec(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
    ns.exec(&["ip", "link", "set", &a, "up"]);
    ns.exec(&["ip", "link", "set", &b, "up"]);

    let out = ns.exec(&[XDPLB, "decap", "--interface", &a]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("decap attached"), "{text}");
    // A new `ip netns exec`: the command above and its mount namespace are gone.
    let link = ns.exec(&["ip", "-d", "link", "show", "dev", &a]);
    let link = String::from_utf8_lossy(&link.stdout).to_string();
    assert!(
        link.contains("prog/xdp"),
        "decap stays attached after the command exits: {link}"
    );
    let again = ns.exec_unchecked(&[XDPLB, "decap", "--interface", &a]);
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already attached"),
        "a second attach is refused: {again:?}"
    );
    let st = ns.exec(&[XDPLB, "decap", "--interface", &a, "--stats"]);
    let st = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(
        st.contains(&format!("{a}: decapsulated 0, left to the kernel")),
        "stats found from a later command: {st}"
    );
    let rm = ns.exec(&[XDPLB, "decap", "--interface", &a, "--remove"]);
    assert!(
        String::from_utf8_lossy(&rm.stdout).contains("decap detached"),
        "{rm:?}"
    );
    assert!(!xdp_attached(&ns, &a), "--remove detached it");
    let twice = ns.exec_unchecked(&[XDPLB, "decap", "--interface", &a, "--remove"]);
    assert!(
        !twice.status.success()
            && String::from_utf8_lossy(&twice.stderr).contains("no XDP program is attached"),
        "removing again says there is nothing: {twice:?}"
    );
}

/// Two `xdplb run` of one instance started at the same instant, 20 times: every time exactly
/// one runs, and the other fails at once naming the pid of the one that runs.
#[test]
fn two_daemons_of_one_instance_never_run_at_once() {
    require_root();
    let ns = Netns::new("lock");
    let dir = run_dir("lock");
    let instance = format!("t-lock-{}", std::process::id());
    let env = format!("XDPLB_RUN_DIR={dir}");
    let args = in_ns(
        &ns,
        &[
            "env",
            &env,
            XDPLB,
            "run",
            "--cleanup",
            "--instance",
            &instance,
        ],
    );
    for round in 1..=20 {
        let mut pair = [Daemon::spawn(&args), Daemon::spawn(&args)];
        // The loser must exit on its own; two daemons still running after this is the defect.
        let deadline = std::time::Instant::now() + START;
        let loser = loop {
            let exited: Vec<usize> = (0..2)
                .filter(|&i| {
                    pair[i]
                        .child
                        .as_mut()
                        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
                })
                .collect();
            match exited.as_slice() {
                [i] => break *i,
                [] if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                [] => panic!("round {round}: both daemons of instance {instance} still run"),
                _ => panic!(
                    "round {round}: both daemons exited: {:?} / {:?}",
                    pair[0].seen, pair[1].seen
                ),
            }
        };
        let winner = 1 - loser;
        pair[loser].wait_for("is already running (pid", Duration::from_secs(5));
        let status = pair[loser]
            .child
            .take()
            .expect("child")
            .wait()
            .expect("wait");
        assert!(!status.success(), "round {round}: the loser exits non-zero");
        pair[winner].wait_for("running instance", START);
        let status = pair[winner].terminate(Duration::from_secs(10));
        assert!(
            status.success(),
            "round {round}: the survivor ran and stopped cleanly: {}",
            pair[winner].seen.join("\n")
        );
        assert!(
            !xdp_attached(&ns, "lo"),
            "round {round}: nothing left attached"
        );
    }
}

/// Removes an instance's pins in the host's /sys/fs/bpf on drop, whatever the test did.
struct HostPins(String);

impl Drop for HostPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `bpftool net show` lists on `dev` inside `ns` (XDP and tcx attachments).
fn net_attachments(ns: &Netns, dev: &str) -> String {
    let out = ns.exec(&["bpftool", "net", "show", "dev", dev]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The daemon runs in the host's mount namespace inside a test namespace (`nsenter --net`),
/// pinning in the host's /sys/fs/bpf; `xdplb stop` runs under `ip netns exec`, which cannot
/// see those pins. It must find the instance through its records, detach everything, say so
/// only when the kernel agrees, and exit 0; both after the daemon stopped on its own (the
/// pinned data plane forwarding without it) and while it runs.
#[test]
fn stop_from_another_mount_namespace_detaches_everything() {
    require_root();
    let ns = Netns::new("stopx");
    let dir = run_dir("stopx");
    let instance = format!("t-stopx-{}", std::process::id());
    let pins = HostPins(format!("/sys/fs/bpf/xdplb/{instance}"));
    let env = format!("XDPLB_RUN_DIR={dir}");
    let netns_path = format!("--net=/run/netns/{}", ns.name);
    let _backends = start_backends(&ns, "127.0.0.1:9876,127.0.0.1:9877,127.0.0.1:9878");
    let run = || {
        let mut d = Daemon::spawn(&s(&[
            "nsenter",
            &netns_path,
            "env",
            &env,
            XDPLB,
            "run",
            "--instance",
            &instance,
        ]));
        d.wait_for("running instance", START);
        d
    };
    let stop = || {
        let out = ns.exec_unchecked(&["env", &env, XDPLB, "stop", "--instance", &instance]);
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    // 1. The daemon stops on SIGTERM; its pinned data plane keeps forwarding without it.
    let mut first = run();
    assert!(first.terminate(Duration::from_secs(10)).success());
    assert!(xdp_attached(&ns, "lo"), "the pinned data plane stays");
    assert_every_reply_from_vip(&client(&ns, "127.0.0.1:9875", 3, 1), 3, 1);
    let (status, text) = stop();
    assert!(status.success(), "stop exits 0: {text}");
    assert!(text.contains("detached from lo"), "{text}");
    assert!(!xdp_attached(&ns, "lo"), "XDP detached: {text}");
    let left = net_attachments(&ns, "lo");
    assert!(
        !left.contains("xdplb"),
        "no XDP or tcx program of xdplb on lo: {left}"
    );
    assert_eq!(client(&ns, "127.0.0.1:9875", 1, 1)["replies"], 0);
    for f in [format!("{instance}.json"), format!("{instance}.pins.json")] {
        assert!(
            !std::path::Path::new(&dir).join(&f).exists(),
            "record {f} removed"
        );
    }
    assert!(
        !std::path::Path::new(&pins.0).exists(),
        "the pins in the daemon's mount namespace are removed too"
    );

    // 2. The same while the daemon runs.
    let mut second = run();
    let (status, text) = stop();
    assert!(status.success(), "stop exits 0: {text}");
    assert!(
        text.contains("detached from lo") && text.contains("daemon pid"),
        "{text}"
    );
    assert!(second.terminate(Duration::from_secs(5)).success());
    assert!(!xdp_attached(&ns, "lo"), "XDP detached: {text}");
    assert!(!net_attachments(&ns, "lo").contains("xdplb"));
    assert!(!std::path::Path::new(&pins.0).exists(), "pins removed");
}

/// `xdplb run` under plain `ip netns exec` (no shared bpffs): it says at start that the data
/// plane cannot outlive it, cleans up fully on SIGTERM and says why, and `xdplb stop` afterwards
/// exits 0, says there was nothing left, and leaves no record.
#[test]
fn run_under_ip_netns_exec_tells_the_truth_about_stopping() {
    require_root();
    let ns = Netns::new("privfs");
    let dir = run_dir("privfs");
    let instance = format!("t-privfs-{}", std::process::id());
    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut d = Daemon::spawn(&in_ns(
        &ns,
        &["env", &env, XDPLB, "run", "--instance", &instance],
    ));
    d.wait_for("running instance", START);
    assert!(
        d.seen
            .iter()
            .any(|l| l.contains("cannot outlive it") && l.contains("nsenter --net=")),
        "warned at start: {:?}",
        d.seen
    );
    assert!(xdp_attached(&ns, "lo"));
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", d.seen.join("\n"));
    let log = d.seen.join("\n");
    assert!(
        log.contains("detached and removed every pin because the bpffs was private")
            && !log.contains("keeps forwarding"),
        "{log}"
    );
    assert!(!xdp_attached(&ns, "lo"), "nothing attached after SIGTERM");
    let pins_record = format!("{dir}/{instance}.pins.json");
    assert!(
        !std::path::Path::new(&pins_record).exists(),
        "no record left"
    );
    let out = ns.exec_unchecked(&["env", &env, XDPLB, "stop", "--instance", &instance]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("nothing to stop"),
        "{out:?}"
    );
    assert!(
        !std::path::Path::new(&pins_record).exists(),
        "no record left"
    );
}

/// The daemon's report on veth `dev`, from `xdplb stats --json`.
fn veth_report(ns: &Netns, dir: &str, instance: &str, dev: &str) -> Value {
    let st = stats(ns, dir, instance);
    let v = st["veths"][dev].clone();
    assert!(v.is_object(), "no report on veth {dev} in {st}");
    v
}

/// nat over native XDP_REDIRECT onto veths: while every peer has GRO on, every veth takes
/// redirects, nothing is dropped and nothing is said; once backend 1's end has GRO off (and no
/// XDP program), the balancer's veth to it refuses redirected frames, which are lost, and the
/// daemon says so in its log, in `xdplb stats` and in the metrics.
#[test]
fn veth_drops_of_redirects_to_a_peer_without_napi_are_reported() {
    require_root();
    let pid = std::process::id();
    let Routed {
        client: client_ns,
        lb: lb_ns,
        backends: backend_ns,
        lb_devs: interfaces,
        backend_devs,
    } = routed_topology("v", 87);
    let _backends: Vec<Daemon> = (1..=3)
        .zip(&backend_ns)
        .map(|(k, ns)| start_backends(ns, &format!("10.88.{k}.2:7000")))
        .collect();
    let dir = run_dir("vethdrop");
    let backends: Vec<String> = (1..=3).map(|k| format!("10.88.{k}.2:7000")).collect();
    let cfg_path = write_service_config(
        &dir,
        "vethdrop",
        &interfaces,
        "xdp_mode = \"native\"\nmetrics_listen = \"127.0.0.1:9100\"\n",
        "forwarding = \"nat\"\n",
        &backends,
    );
    let instance = format!("t-vethdrop-{pid}");
    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut lb = start_balancer(&lb_ns, &env, &cfg_path, &instance);

    // GRO on at every peer: everything arrives, nothing dropped, nothing said.
    round_trip_through_balancer(&client_ns, &backend_ns);
    std::thread::sleep(Duration::from_millis(1500));
    for dev in &interfaces {
        let v = veth_report(&lb_ns, &dir, &instance, dev);
        assert_eq!(v["accepts_xdp_redirect"], true, "{dev}: {v}");
        assert_eq!(v["tx_dropped"], 0, "{dev}: {v}");
        assert_eq!(v["rx_dropped"], 0, "{dev}: {v}");
    }
    let quiet = lb.seen.join("\n");
    assert!(!quiet.contains("WARN"), "no warning yet: {quiet}");

    // GRO off on backend 1's end, which has no XDP program: redirects to it are lost.
    let (ingress, target) = (&interfaces[0], &interfaces[1]);
    backend_ns[0].exec(&["ethtool", "-K", &backend_devs[0], "gro", "off"]);
    lb.wait_for(
        &format!("veth {target} cannot take XDP_REDIRECT"),
        Duration::from_secs(5),
    );
    let out = client_ns.exec(&[
        XDPLB,
        "demo-client",
        "--target",
        "10.99.0.1:7000",
        "--flows",
        "30",
        "--packets",
        "1",
        "--timeout-ms",
        "1000",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("client prints JSON");
    let lost = 30 - report["replies"].as_u64().expect("replies");
    assert!(lost > 0, "frames to backend 1 are lost: {report}");
    lb.wait_for(
        &format!("veth {ingress} dropped frames"),
        Duration::from_secs(5),
    );
    let warning = lb.seen.last().cloned().unwrap_or_default();
    assert!(warning.contains("ethtool -K PEER gro on"), "{warning}");
    let v = veth_report(&lb_ns, &dir, &instance, target);
    assert_eq!(v["accepts_xdp_redirect"], false, "{target}: {v}");
    let v = veth_report(&lb_ns, &dir, &instance, ingress);
    let dropped = v["rx_dropped"].as_u64().expect("rx_dropped")
        + v["tx_dropped"].as_u64().expect("tx_dropped");
    assert!(
        dropped >= lost,
        "every lost request is counted on {ingress}: {v}, lost {lost}"
    );
    for dev in &interfaces[2..] {
        let v = veth_report(&lb_ns, &dir, &instance, dev);
        assert_eq!(v["accepts_xdp_redirect"], true, "{dev}: {v}");
    }
    let text = lb_ns.exec(&["env", &env, XDPLB, "stats", "--instance", &instance]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains(&format!("WARNING: veth {target} cannot take XDP_REDIRECT")),
        "{text}"
    );
    let metrics = lb_ns.exec(&["curl", "-s", "http://127.0.0.1:9100/metrics"]);
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    let value = |name: &str, dev: &str| -> u64 {
        let line = format!("{name}{{interface=\"{dev}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in the metrics: {metrics}"))
    };
    assert_eq!(value("xdplb_veth_xdp_redirect_blocked", target), 1);
    assert_eq!(value("xdplb_veth_xdp_redirect_blocked", ingress), 0);
    assert!(
        value("xdplb_veth_rx_dropped_total", ingress) >= lost,
        "{metrics}"
    );
    println!("veth drops: lost {lost} of 30; {ingress}: {v}; {warning}");
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}

type NextHopMap = aya::maps::HashMap<aya::maps::MapData, u32, xdplb_common::NextHop>;

/// The next-hop cache (`NEXTHOPS_V1`) of the XDP program attached to `dev` in `ns`: the
/// program's own map (it is not pinned).
fn next_hop_map(ns: &Netns, dev: &str) -> NextHopMap {
    use aya::maps::{Map, MapData, MapInfo};
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", dev]);
    let link: Value = serde_json::from_slice(&out.stdout).expect("ip -j link prints JSON");
    let prog_id = link[0]["xdp"]["prog"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no XDP program on {dev}: {link}")) as u32;
    let prog = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .expect("the attached program");
    let map_id = prog
        .map_ids()
        .expect("map ids")
        .unwrap_or_default()
        .into_iter()
        .find(|id| MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some("NEXTHOPS_V1")))
        .expect("the program uses NEXTHOPS_V1");
    let map = Map::from_map_data(MapData::from_id(map_id).expect("open the map")).expect("map");
    NextHopMap::try_from(map).expect("a hash map of next hops")
}

/// Polls `hops` every 100 µs until `want` holds for the entry of `backend` (`None`: no
/// entry), for at most `bound`; returns how long it took.
fn wait_for_next_hop(
    hops: &NextHopMap,
    backend: std::net::Ipv4Addr,
    bound: Duration,
    what: &str,
    want: impl Fn(Option<&xdplb_common::NextHop>) -> bool,
) -> Duration {
    let addr = xdplb::dataplane::reconcile::addr_v4(backend);
    let started = std::time::Instant::now();
    loop {
        let entry = hops
            .iter()
            .filter_map(Result::ok)
            .map(|(_, h)| h)
            .find(|h| h.addr == addr);
        if want(entry.as_ref()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{what}: not in the data plane after {bound:?}: {entry:?}"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Runs `change` in `ns`, then [`wait_for_next_hop`]. Returns the time until the data plane
/// had it, from starting the command and from its return (the kernel changed in between:
/// the two bound the latency from both sides).
fn time_change(
    ns: &Netns,
    change: &[&str],
    hops: &NextHopMap,
    backend: std::net::Ipv4Addr,
    what: &str,
    want: impl Fn(Option<&xdplb_common::NextHop>) -> bool,
) -> (Duration, Duration) {
    let spawned = std::time::Instant::now();
    ns.exec(change);
    let after_return = wait_for_next_hop(hops, backend, Duration::from_secs(2), what, want);
    (spawned.elapsed(), after_return)
}

fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", dev]);
    let link: Value = serde_json::from_slice(&out.stdout).expect("ip -j link prints JSON");
    let text = link[0]["address"].as_str().expect("an address");
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

fn ifindex_of(ns: &Netns, dev: &str) -> u32 {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", dev]);
    let link: Value = serde_json::from_slice(&out.stdout).expect("ip -j link prints JSON");
    link[0]["ifindex"].as_u64().expect("an ifindex") as u32
}

/// `nat` through real veths with their default offloads: the daemon fills the next-hop cache
/// once the backend's neighbour is known and traffic then goes through it; a neighbour change
/// (the backend's MAC address), a route's MTU, a blackhole route and its removal each reach
/// the data plane's entry within 2 s (the latencies are printed).
#[test]
fn next_hop_cache_follows_neighbour_and_route_changes_with_default_offloads() {
    with_offloads(
        Offloads::Default,
        &SERIAL_NEXT_HOP_CACHE,
        next_hop_cache_follows_neighbour_and_route_changes_case,
    );
}

static SERIAL_NEXT_HOP_CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn next_hop_cache_follows_neighbour_and_route_changes_case() {
    require_root();
    let pid = std::process::id();
    let Routed {
        client: client_ns,
        lb: lb_ns,
        backends: backend_ns,
        lb_devs: interfaces,
        backend_devs,
    } = routed_topology("h", 93);
    let backend: std::net::Ipv4Addr = "10.94.1.2".parse().expect("literal");
    let _backend = start_backends(&backend_ns[0], "10.94.1.2:7000");
    let dir = run_dir("nexthop");
    let cfg_path = write_service_config(
        &dir,
        "nexthop",
        &interfaces,
        "",
        "forwarding = \"nat\"\n",
        &["10.94.1.2:7000".to_string()],
    );
    let instance = format!("t-nexthop-{pid}");
    let env = format!("XDPLB_RUN_DIR={dir}");
    let mut lb = start_balancer(&lb_ns, &env, &cfg_path, &instance);
    let (client_dev, backend_dev) = (&interfaces[0], &interfaces[1]);

    // The first packets go through the kernel, which resolves the backend's neighbour; the
    // daemon sees the neighbour appear and writes the entry.
    let report = client(&client_ns, "10.99.0.1:7000", 10, 3);
    assert_every_reply_from_vip(&report, 10, 3);
    let mac = mac_of(&backend_ns[0], &backend_devs[0]);
    let egress = ifindex_of(&lb_ns, backend_dev);
    let hops = next_hop_map(&lb_ns, client_dev);
    wait_for_next_hop(
        &hops,
        backend,
        Duration::from_secs(5),
        "the first entry",
        |h| h.is_some_and(|h| h.dmac == mac && h.ifindex == egress && h.mtu == 1500),
    );

    // Traffic now goes through the cache.
    let before = counter(&stats(&lb_ns, &dir, &instance), "forwarded_cached");
    let report = client(&client_ns, "10.99.0.1:7000", 20, 3);
    assert_every_reply_from_vip(&report, 20, 3);
    let st = stats(&lb_ns, &dir, &instance);
    assert_eq!(
        counter(&st, "forwarded_cached") - before,
        60,
        "every request sent with the cache: {st}"
    );

    // The backend's MAC address changes, and the balancer's neighbour entry with it.
    let new_mac = "02:00:00:00:93:01";
    backend_ns[0].exec(&[
        "ip",
        "link",
        "set",
        "dev",
        &backend_devs[0],
        "address",
        new_mac,
    ]);
    let neighbour = time_change(
        &lb_ns,
        &[
            "ip",
            "neigh",
            "replace",
            "10.94.1.2",
            "lladdr",
            new_mac,
            "dev",
            backend_dev,
            "nud",
            "reachable",
        ],
        &hops,
        backend,
        "the new MAC address",
        |h| h.is_some_and(|h| h.dmac == [0x02, 0, 0, 0, 0x93, 0x01]),
    );
    let before = counter(&stats(&lb_ns, &dir, &instance), "forwarded_cached");
    let report = client(&client_ns, "10.99.0.1:7000", 20, 3);
    assert_every_reply_from_vip(&report, 20, 3);
    let st = stats(&lb_ns, &dir, &instance);
    assert_eq!(
        counter(&st, "forwarded_cached") - before,
        60,
        "sent with the cache to the new MAC address (the backend answered): {st}"
    );

    // A route to the backend with a lower MTU: the entry takes it.
    let mtu = time_change(
        &lb_ns,
        &[
            "ip",
            "route",
            "add",
            "10.94.1.2/32",
            "dev",
            backend_dev,
            "mtu",
            "lock",
            "1400",
        ],
        &hops,
        backend,
        "the route's MTU",
        |h| h.is_some_and(|h| h.mtu == 1400),
    );
    // A blackhole route: the entry goes, and packets take the FIB (dropped there, counted).
    let blackhole = time_change(
        &lb_ns,
        &["ip", "route", "replace", "blackhole", "10.94.1.2/32"],
        &hops,
        backend,
        "deleting the entry",
        |h| h.is_none(),
    );
    let before = stats(&lb_ns, &dir, &instance);
    // Unanswered: the client's exit status says so, and is not the point here.
    client_ns.exec_unchecked(&[
        XDPLB,
        "demo-client",
        "--target",
        "10.99.0.1:7000",
        "--flows",
        "2",
        "--packets",
        "1",
        "--timeout-ms",
        "300",
    ]);
    let st = stats(&lb_ns, &dir, &instance);
    assert_eq!(
        counter(&st, "drop_no_route") - counter(&before, "drop_no_route"),
        2,
        "without an entry, the FIB decides: {st}"
    );
    assert_eq!(
        counter(&st, "forwarded_cached"),
        counter(&before, "forwarded_cached")
    );
    // The blackhole goes: the entry is back.
    let restored = time_change(
        &lb_ns,
        &["ip", "route", "del", "10.94.1.2/32"],
        &hops,
        backend,
        "the restored entry",
        |h| h.is_some_and(|h| h.dmac == [0x02, 0, 0, 0, 0x93, 0x01] && h.mtu == 1500),
    );
    println!(
        "next-hop cache, from the `ip` command's start / its return to the data plane's entry (map polled every 100 µs): neighbour MAC {:?} / {:?}, route MTU {:?} / {:?}, blackhole {:?} / {:?}, route removed {:?} / {:?}",
        neighbour.0, neighbour.1, mtu.0, mtu.1, blackhole.0, blackhole.1, restored.0, restored.1
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}
