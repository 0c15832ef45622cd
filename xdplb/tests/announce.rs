//! Tier 3: the VIP announcements (`[announce]`): blackhole /32 routes in a kernel table of their
//! own, driven by the daemon's state, in network namespaces each test creates and deletes. No
//! BGP speaker is needed: the table is the contract with it (BIRD's `kernel` protocol learns
//! it). Needs root.

use std::{
    net::Ipv4Addr,
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use xdplb_test_support::{netns::*, require_root};

const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");
const START: Duration = Duration::from_secs(20);
const TABLE: u32 = 4242;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

fn in_ns(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut v = ns.prefix();
    v.extend(s(args));
    v
}

fn run_dir(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("xdplb-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create run dir");
    dir.display().to_string()
}

/// Removes the run directory on drop, even on failure.
struct Dir(String);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two checked services on their own VIP addresses (`dropper`: when_all_down = "drop",
/// `passer`: "pass"), both checked on the demo backends at 127.0.0.1:9876 and :9877, and a
/// wildcard service, never announced. `announce` is the body of the `[announce]` table.
fn config(announce: &str) -> String {
    format!(
        "interfaces = [\"lo\"]\n\n[announce]\n{announce}\n\
         [[service]]\nname = \"dropper\"\nvip = \"127.0.0.2:9875\"\nwhen_all_down = \"drop\"\n\
         [service.health_check]\ntype = \"udp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2\nexpect = \"xdplb-backend\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9876\"\n\n\
         [[service]]\nname = \"passer\"\nvip = \"127.0.0.3:9875\"\nwhen_all_down = \"pass\"\n\
         [service.health_check]\ntype = \"udp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2\nexpect = \"xdplb-backend\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9877\"\n\n\
         [[service]]\nname = \"anywhere\"\nvip = \"0.0.0.0:9979\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9878\"\n"
    )
}

const DROPPER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PASSER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// One test's namespace, run directory, config file and instance.
struct Case {
    ns: Netns,
    dir: Dir,
    cfg: String,
    instance: String,
    /// `XDPLB_BPFFS=...` when the test runs the daemon with a shared bpffs.
    bpffs: Option<Bpffs>,
}

impl Case {
    fn new(tag: &str, announce: &str, shared_bpffs: bool) -> Self {
        let ns = Netns::new(&format!("an{tag}"));
        let dir = Dir(run_dir(&format!("an{tag}")));
        let cfg = format!("{}/xdplb.toml", dir.0);
        std::fs::write(&cfg, config(announce)).expect("write config");
        Case {
            ns,
            instance: format!("t-an{tag}-{}", std::process::id()),
            cfg,
            dir,
            bpffs: shared_bpffs.then(|| Bpffs::mount(&format!("an{tag}"))),
        }
    }

    fn env(&self) -> Vec<String> {
        let mut v = vec!["env".to_owned(), format!("XDPLB_RUN_DIR={}", self.dir.0)];
        if let Some(b) = &self.bpffs {
            v.push(format!("XDPLB_BPFFS={}", b.path));
        }
        v
    }

    /// `xdplb ARGS --instance I` in the namespace, as an argv.
    fn xdplb(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.ns.prefix();
        v.extend(self.env());
        v.push(XDPLB.to_owned());
        v.extend(s(args));
        v.extend(["--instance".to_owned(), self.instance.clone()]);
        v
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let argv = self.xdplb(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        run_bounded(&argv, Duration::from_mins(1))
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "xdplb {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["run", "--config", &self.cfg];
        args.extend_from_slice(extra);
        let mut d = Daemon::spawn(&self.xdplb(&args));
        d.wait_for("running instance", START);
        d
    }

    fn backends(&self) -> Daemon {
        let mut b = Daemon::spawn(&in_ns(
            &self.ns,
            &[
                XDPLB,
                "demo-backend",
                "--listen",
                "127.0.0.1:9876,127.0.0.1:9877",
            ],
        ));
        b.wait_for("listening", START);
        b
    }

    /// The /32 routes of protocol 250 in `table`, as the kernel lists them now.
    fn routes(&self, table: u32) -> Vec<Ipv4Addr> {
        let out = self.ns.exec_unchecked(&[
            "ip",
            "-4",
            "route",
            "show",
            "table",
            &table.to_string(),
            "proto",
            "250",
        ]);
        if !out.status.success() {
            // A table that never held a route does not exist.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("FIB table does not exist"), "{err}");
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                assert_eq!(w.next(), Some("blackhole"), "a blackhole route: {l}");
                w.next()?.parse().ok()
            })
            .collect()
    }

    /// Waits until table `table` holds exactly `want` (bounded), and returns how long it took.
    fn wait_routes(&self, table: u32, want: &[Ipv4Addr], limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let mut got = self.routes(table);
            got.sort_unstable();
            let mut w = want.to_vec();
            w.sort_unstable();
            if got == w {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "table {table} holds {got:?}, expected {w:?} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(&self.cfg).expect("read config")
    }

    fn node_json(&self) -> Value {
        serde_json::from_str(&self.cli_ok(&["node", "status", "-o", "json"])).expect("JSON")
    }
}

/// A thread in `ns` that lists table `table` every 2 ms through rtnetlink until stopped, and
/// reports every time `vip` was not as `present` says, and how many times it looked.
struct RoutePoller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl RoutePoller {
    fn start(ns: &Netns, table: u32, vip: Ipv4Addr, present: bool) -> Self {
        let path = format!("/run/netns/{}", ns.name);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let netns = std::fs::File::open(&path).expect("open the namespace");
            rustix::thread::move_into_link_name_space(
                netns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            let (mut looks, mut missing) = (0u64, Vec::new());
            let started = Instant::now();
            while !stopped.load(Ordering::SeqCst) && started.elapsed() < Duration::from_mins(2) {
                match xdplb::netlink::vip_routes(table, xdplb::announce::RTPROT_XDPLB) {
                    Ok(v) if v.contains(&vip) == present => {}
                    Ok(v) => missing.push(format!("{:?}: {v:?}", started.elapsed())),
                    Err(e) => missing.push(format!("{:?}: {e}", started.elapsed())),
                }
                looks += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (looks, missing)
        });
        RoutePoller {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("poller thread")
    }
}

impl Drop for RoutePoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits up to `timeout` for `process` to exit by itself and returns its status; past that,
/// kills it (SIGKILL, reaped, so bounded too) and fails the test with what it printed.
fn exit_within(process: &mut Daemon, timeout: Duration, why: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    let child = process.child.as_mut().expect("running");
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            process.child = None;
            process.drain(Duration::from_secs(1));
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            process.child = None;
            process.drain(Duration::from_secs(1));
            panic!(
                "still running after {timeout:?}, killed: {why}\n{}",
                process.seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client in `ns` sending to the dropper's VIP one datagram every ~2 ms (each answered by
/// the backend), `packets` of them.
fn sender(ns: &Netns, packets: u32) -> Daemon {
    Daemon::spawn(&in_ns(
        ns,
        &[
            XDPLB,
            "demo-client",
            "--target",
            "127.0.0.2:9875",
            "--flows",
            "1",
            "--packets",
            &packets.to_string(),
            "--gap-us",
            "2000",
            "--timeout-ms",
            "500",
            "--json",
        ],
    ))
}

#[test]
fn vips_are_announced_on_start_follow_health_and_go_with_a_private_data_plane() {
    require_root();
    let case = Case::new("health", &format!("table = {TABLE}"), false);
    let mut backends = case.backends();
    // Plain `ip netns exec`, as users run it: the bpffs is private to the daemon.
    let mut lb = case.daemon(&[]);
    lb.wait_for(
        "service anywhere has the wildcard VIP 0.0.0.0:9979, which is never announced",
        Duration::from_secs(5),
    );
    lb.wait_for(
        &format!("announced 127.0.0.2/32 in table {TABLE}: service dropper has a backend taking new flows"),
        Duration::from_secs(5),
    );
    case.wait_routes(TABLE, &[DROPPER, PASSER], Duration::from_secs(2));
    let node = case.node_json();
    assert_eq!(node["table"], TABLE, "{node}");
    assert_eq!(node["drained"], false, "{node}");
    assert_eq!(node["in_table"], true, "{node}");
    let status = case.cli_ok(&["status"]);
    assert!(
        status.contains(&format!(
            "announce: table {TABLE}, not drained, 2 of 2 VIP(s) announced"
        )),
        "{status}"
    );

    // Every backend fails its check: "drop" withdraws its VIP, "pass" keeps it announced.
    let _ = backends.terminate(Duration::from_secs(5));
    lb.wait_for(
        &format!("withdrew 127.0.0.2/32 from table {TABLE}: service dropper has no backend taking new flows (when_all_down = \"drop\")"),
        Duration::from_secs(5),
    );
    case.wait_routes(TABLE, &[PASSER], Duration::from_secs(1));
    let node = case.node_json();
    let passer = node["vips"]
        .as_array()
        .expect("vips")
        .iter()
        .find(|v| v["vip"] == "127.0.0.3")
        .expect("passer's VIP")
        .clone();
    assert_eq!(passer["announced"], true, "{node}");
    assert!(
        passer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("when_all_down = \"pass\"")),
        "{node}"
    );

    // Recovery announces it again, and says why.
    let _backends = case.backends();
    lb.wait_for(
        &format!("announced 127.0.0.2/32 in table {TABLE}: service dropper has a backend taking new flows"),
        Duration::from_secs(5),
    );
    case.wait_routes(TABLE, &[DROPPER, PASSER], Duration::from_secs(1));

    // Someone deletes a route: the periodic reconcile puts it back.
    case.ns.exec(&[
        "ip",
        "route",
        "del",
        "blackhole",
        "127.0.0.3/32",
        "table",
        "4242",
        "proto",
        "250",
    ]);
    case.wait_routes(TABLE, &[DROPPER, PASSER], Duration::from_secs(3));

    // SIGTERM with a private bpffs: the data plane goes, and so do the routes.
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", lb.seen.join("\n"));
    assert_eq!(case.routes(TABLE), Vec::<Ipv4Addr>::new());
    assert!(
        lb.seen.iter().any(|l| l.contains(&format!(
            "withdrew 127.0.0.2/32 from table {TABLE}: the daemon stops and its private bpffs takes the data plane with it"
        ))),
        "{}",
        lb.seen.join("\n")
    );
}

#[test]
fn drain_and_undrain_persist_survive_a_restart_and_wait_for_the_traffic_to_stop() {
    require_root();
    let case = Case::new(
        "drain",
        &format!("# the hand-off to BIRD\ntable = {TABLE}"),
        false,
    );
    let _backends = case.backends();
    let mut lb = case.daemon(&[]);
    case.wait_routes(TABLE, &[DROPPER, PASSER], Duration::from_secs(5));

    let out = case.cli_ok(&["node", "drain", "--no-wait"]);
    assert_eq!(
        out.trim(),
        format!("drained: withdrew 127.0.0.2/32, 127.0.0.3/32 from table {TABLE}")
    );
    assert_eq!(
        case.routes(TABLE),
        Vec::<Ipv4Addr>::new(),
        "checked before it printed"
    );
    assert!(
        case.config_text()
            .contains("# the hand-off to BIRD\ntable = 4242\ndrained = true\n")
    );
    lb.wait_for(
        &format!("withdrew 127.0.0.2/32 from table {TABLE}: node drained"),
        Duration::from_secs(2),
    );
    let status = case.cli_ok(&["node", "status"]);
    assert!(
        status.starts_with(&format!(
            "node drained, table {TABLE}: 0 of 2 VIP(s) announced"
        )),
        "{status}"
    );

    // A restart while drained announces nothing (start-up reconciles from the drained config).
    let _ = lb.terminate(Duration::from_secs(10));
    let poller = RoutePoller::start(&case.ns, TABLE, DROPPER, false);
    let mut lb = case.daemon(&[]);
    let node = case.node_json();
    assert_eq!(node["drained"], true, "{node}");
    std::thread::sleep(Duration::from_millis(1200));
    let (looks, announced) = poller.finish();
    assert!(
        looks > 100 && announced.is_empty(),
        "{looks}: {announced:?}"
    );

    let out = case.cli_ok(&["node", "undrain"]);
    assert_eq!(
        out.trim(),
        format!("undrained: announced 127.0.0.2/32, 127.0.0.3/32 in table {TABLE}")
    );
    assert_eq!(
        case.routes(TABLE),
        vec![DROPPER, PASSER],
        "checked before it printed"
    );
    assert!(
        !case.config_text().contains("drained"),
        "{}",
        case.config_text()
    );

    // Traffic that goes on arriving: --timeout gives up, non-zero, with the rate.
    let mut traffic = sender(&case.ns, 5000);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = case.cli(&["node", "drain", "--timeout", "1s", "--quiet", "500ms"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("but traffic still arrives after 1s") && stderr.contains("packets/s now"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        case.routes(TABLE),
        Vec::<Ipv4Addr>::new(),
        "drained all the same"
    );
    let _ = traffic.terminate(Duration::from_secs(5));
    case.cli_ok(&["node", "undrain"]);

    // Traffic that stops: reported quiet only after the sender stopped.
    let mut traffic = sender(&case.ns, 800);
    std::thread::sleep(Duration::from_millis(300));
    let drain = std::thread::spawn({
        let argv = case.xdplb(&["node", "drain", "--quiet", "700ms", "--timeout", "30s"]);
        move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = run_bounded(&argv, Duration::from_mins(1));
            (out, Instant::now())
        }
    });
    // 800 datagrams ~2 ms apart take ~1.6 s when answered; 15 s leaves room for a loaded
    // machine without letting a stuck sender (500 ms timeout per datagram) run for minutes.
    let sender_status = exit_within(
        &mut traffic,
        Duration::from_secs(15),
        "the sender of 800 datagrams",
    );
    let sender_done = Instant::now();
    assert!(sender_status.success());
    let (out, drain_done) = drain.join().expect("drain thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        drain_done >= sender_done + Duration::from_millis(500),
        "quiet was reported {:?} before the sender stopped: {stdout}",
        sender_done.saturating_duration_since(drain_done)
    );
    let re = format!(
        "drained: withdrew 127.0.0.2/32, 127.0.0.3/32 from table {TABLE}; traffic stopped "
    );
    assert!(
        stdout.starts_with(&re) && stdout.contains(" packets arrived meanwhile)"),
        "{stdout}"
    );
    let arrived: u64 = stdout
        .split(" s after the withdrawal (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("packet count");
    assert!(arrived > 50, "the sender's packets kept arriving: {stdout}");
    println!("{}", stdout.trim());
    let _ = lb.terminate(Duration::from_secs(10));
}

#[test]
fn a_replace_restart_never_withdraws_and_stop_removes_the_routes() {
    require_root();
    // A shared bpffs, as the restart tests run: the data plane outlives the daemon.
    let case = Case::new("replace", &format!("table = {TABLE}"), true);
    let _backends = case.backends();
    let mut first = case.daemon(&[]);
    case.wait_routes(TABLE, &[DROPPER, PASSER], Duration::from_secs(5));
    let record = format!("{}/{}.announce.json", case.dir.0, case.instance);
    assert!(
        std::path::Path::new(&record).exists(),
        "the table is recorded for `xdplb stop`"
    );

    let poller = RoutePoller::start(&case.ns, TABLE, DROPPER, true);
    std::thread::sleep(Duration::from_millis(200));
    let mut second = case.daemon(&["--replace"]);
    let handed_over = exit_within(
        &mut first,
        Duration::from_secs(20),
        "the first daemon did not exit after `--replace` (hand-over failed?)",
    );
    assert!(
        first
            .seen
            .iter()
            .any(|l| l.contains("handed over to a successor")),
        "{handed_over}:\n{}\nsuccessor:\n{}",
        first.seen.join("\n"),
        second.seen.join("\n")
    );
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM without --cleanup: the pinned data plane keeps forwarding, so it stays announced.
    let status = second.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", second.seen.join("\n"));
    std::thread::sleep(Duration::from_millis(200));
    let mut third = case.daemon(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let (looks, missing) = poller.finish();
    assert!(looks > 100, "polled {looks} times");
    println!(
        "the VIP route was present at each of {looks} looks across a --replace restart, a SIGTERM and a start"
    );
    assert!(
        missing.is_empty(),
        "the VIP went missing {} of {looks} times: {missing:?}",
        missing.len()
    );
    assert!(
        !first
            .seen
            .iter()
            .chain(&second.seen)
            .chain(&third.seen)
            .any(|l| l.contains("withdrew")),
        "nothing withdrawn:\n{}\n{}\n{}",
        first.seen.join("\n"),
        second.seen.join("\n"),
        third.seen.join("\n")
    );

    let _ = third.terminate(Duration::from_secs(10));
    assert_eq!(
        case.routes(TABLE),
        vec![DROPPER, PASSER],
        "kept with the pinned data plane"
    );

    // A restart with another table moves the routes its predecessor left.
    std::fs::write(&case.cfg, config("table = 4343")).expect("write");
    let mut fourth = case.daemon(&[]);
    case.wait_routes(4343, &[DROPPER, PASSER], Duration::from_secs(3));
    assert_eq!(case.routes(TABLE), Vec::<Ipv4Addr>::new());
    fourth.wait_for(
        &format!("withdrew 127.0.0.2/32 from table {TABLE}: [announce] table changed to 4343"),
        Duration::from_secs(2),
    );
    let _ = fourth.terminate(Duration::from_secs(10));

    // Stopped for good while no daemon runs: `xdplb stop` withdraws them.
    let out = case.cli_ok(&["stop"]);
    assert!(
        out.contains("withdrew 127.0.0.2/32, 127.0.0.3/32 (its announced VIP routes)"),
        "{out}"
    );
    assert_eq!(case.routes(4343), Vec::<Ipv4Addr>::new());
    assert!(!std::path::Path::new(&record).exists());
}

#[test]
fn bad_announce_sections_are_refused_and_a_reload_moves_the_routes() {
    require_root();
    let case = Case::new("bad", &format!("table = {TABLE}"), false);
    for (announce, needle) in [
        (
            "table = 254",
            "[announce] table must be a kernel routing table id",
        ),
        (
            "table = 4242\nprefix = 32",
            "unknown field `prefix` in [announce]",
        ),
        (
            "drained = true",
            "[announce] is missing the required field `table`",
        ),
    ] {
        std::fs::write(&case.cfg, config(announce)).expect("write");
        let out = case.cli(&["check", "--config", &case.cfg]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{announce}: {stderr}"
        );
        let out = case.cli(&["run", "--config", &case.cfg]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{announce}: {stderr}"
        );
        let link = case.ns.exec(&["ip", "-d", "link", "show", "dev", "lo"]);
        assert!(
            !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
            "nothing attached"
        );
        assert_eq!(case.routes(TABLE), Vec::<Ipv4Addr>::new());
    }
    std::fs::write(&case.cfg, config(&format!("table = {TABLE}"))).expect("write");
    let out = case.cli_ok(&["check", "--config", &case.cfg]);
    assert!(out.contains(&format!("announce: table {TABLE}")), "{out}");
    assert!(
        out.contains("127.0.0.2/32 (dropper): announced while"),
        "{out}"
    );
    assert!(
        out.contains("wildcard VIP 0.0.0.0:9979, which is never announced"),
        "{out}"
    );

    let _backends = case.backends();
    let mut lb = case.daemon(&[]);
    case.wait_routes(TABLE, &[DROPPER, PASSER], Duration::from_secs(5));
    // A reload with a bad table is refused whole: the routes stay.
    std::fs::write(&case.cfg, config("table = 255")).expect("write");
    let out = case.cli(&["reload"]);
    assert!(!out.status.success());
    assert_eq!(case.routes(TABLE), vec![DROPPER, PASSER]);
    // A reload with another table moves them.
    std::fs::write(&case.cfg, config("table = 4343")).expect("write");
    case.cli_ok(&["reload"]);
    case.wait_routes(4343, &[DROPPER, PASSER], Duration::from_secs(2));
    assert_eq!(case.routes(TABLE), Vec::<Ipv4Addr>::new());
    lb.wait_for(
        &format!("withdrew 127.0.0.2/32 from table {TABLE}: [announce] table changed to 4343"),
        Duration::from_secs(2),
    );
    let _ = lb.terminate(Duration::from_secs(10));
    assert_eq!(case.routes(4343), Vec::<Ipv4Addr>::new());
}

/// "Attached" is asked of the kernel, not assumed: an interface that loses its XDP program
/// (here it is removed) withdraws every VIP, while the daemon goes on running.
#[test]
fn an_interface_that_loses_its_xdp_program_withdraws_every_vip() {
    require_root();
    let case = Case::new("detach", &format!("table = {TABLE}"), false);
    // A veth pair (this kernel has no dummy module); removing one end removes both.
    case.ns.exec(&[
        "ip", "link", "add", "xd0", "type", "veth", "peer", "name", "xd1",
    ]);
    case.ns.exec(&["ip", "link", "set", "xd0", "up"]);
    case.ns.exec(&["ip", "link", "set", "xd1", "up"]);
    let text =
        case.config_text()
            .replacen("interfaces = [\"lo\"]", "interfaces = [\"lo\", \"xd0\"]", 1);
    assert!(text.contains("\"xd0\""), "{text}");
    std::fs::write(&case.cfg, text).expect("write config");
    let _backends = case.backends();
    let mut lb = case.daemon(&[]);
    case.wait_routes(TABLE, &[DROPPER, PASSER], Duration::from_secs(5));
    case.ns.exec(&["ip", "link", "del", "xd0"]);
    lb.wait_for(
        &format!("withdrew 127.0.0.2/32 from table {TABLE}: the data plane is not attached"),
        Duration::from_secs(5),
    );
    case.wait_routes(TABLE, &[], Duration::from_secs(2));
    let node = case.node_json();
    assert_eq!(node["in_table"], true, "{node}");
    assert!(
        node["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .all(|v| v["announced"] == false && v["reason"] == "the data plane is not attached"),
        "{node}"
    );
    let _ = lb.terminate(Duration::from_secs(10));
}
