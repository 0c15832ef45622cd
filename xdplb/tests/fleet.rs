//! Tier 3: a fleet of three xdplb nodes behind an ECMP router, announced over BGP by BIRD 2
//! with BFD, as `examples/fleet/` sets it up (the test runs those very files, with the lab's
//! addresses substituted). Real BIRD, real sockets, namespaces only; needs root and `bird2`
//! (`scripts/setup.sh` installs it; the test runs it when `bird` is missing).
//!
//! ```text
//!  client 10.71.0.1 ──veth── router 10.71.0.2 | 10.70.0.1 (BIRD: BGP+BFD to each node, ECMP)
//!                                   │
//!                        bridge br0 (namespace "fab"), 10.70.0.0/24
//!        ┌──────────────┬───────────┴──┬──────────────┬──────── ... ──────┐
//!   node1 .11       node2 .12      node3 .13      backend1 .21 ... backend4 .24
//!   xdplb (XDP on its veth) + BIRD   (demo-backend answering with its name; dsr-ipip: VIP on
//!   learning table 4242               lo, `xdplb decap`, replies via the router)
//! ```
//!
//! One continuous stream of traffic (120 flows from one client address, one sequenced datagram
//! per flow every 20 ms) runs through every phase of a test, so the loss of each phase is read
//! off the sequence numbers: spread, node failure (link down), rejoin, planned drain, backend
//! added then node failure then rejoin; then path-MTU discovery with ICMP errors to the VIP.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdplb_test_support::{netns::*, require_root};

const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fleet");
const SETUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/setup.sh");

const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
const PORT: u16 = 7000;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 1);
const ROUTER_FABRIC: &str = "10.70.0.1";
const NODES: usize = 3;
/// Backends 1..=3 are in the config from the start; 4 is added during the test.
const BACKENDS: usize = 4;
const FLOWS: usize = 120;
const INTERVAL: Duration = Duration::from_millis(20);
/// BFD detection (100 ms x 3) plus BIRD's and the router kernel's convergence (the test has
/// measured 220-300 ms of loss in all), with room for a shared, loaded 2-CPU machine.
const FAILOVER_BOUND: Duration = Duration::from_millis(800);
/// A flow entry's timestamp is refreshed once a second at most (FLOW_REFRESH_NS): a flow seen
/// within this is live on the node.
const RECENT: Duration = Duration::from_millis(1500);
/// Whether the data plane routes an ICMP error addressed to a `fullnat` VIP (a router between
/// the node and the client could not deliver a translated reply) back to the backend, translated.
/// It does not yet (`icmp.rs`: dsr-l2, dsr-ipip, nat and local only), so the fullnat variant
/// prints its figure without asserting it; turn this on with that feature.
const FULLNAT_ICMP_TO_VIP: bool = false;
const CONVERGE: Duration = Duration::from_secs(30);

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

fn node_addr(k: usize) -> String {
    format!("10.70.0.1{k}")
}

fn backend_addr(k: usize) -> String {
    format!("10.70.0.2{k}")
}

fn vip() -> String {
    format!("{VIP}:{PORT}")
}

/// Installs bird2 with the project's setup script when it is missing (CI's first run).
fn ensure_bird() {
    let present = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(present("bird") && present("birdc")) {
        let out = run_bounded(&["bash", SETUP], Duration::from_mins(10));
        assert!(out.status.success(), "scripts/setup.sh failed: {out:?}");
    }
}

/// An example file with the lab's addresses in place of the documentation ones.
fn example(file: &str, extra: &[(&str, String)]) -> String {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/{file}"))
        .unwrap_or_else(|e| panic!("read examples/fleet/{file}: {e}"));
    let mut text = text
        .replace("log syslog all;", "log stderr all;")
        .replace("198.51.100.1", ROUTER_FABRIC)
        .replace("203.0.113.10", &VIP.to_string())
        .replace("203.0.113.", "10.100.0.");
    for (from, to) in extra {
        assert!(text.contains(from), "examples/fleet/{file} has no {from:?}");
        text = text.replace(from, to);
    }
    text.replace("192.0.2.", "10.70.0.")
}

/// The forwarding modes the fleet runs in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    DsrIpip,
    Fullnat,
}

/// `examples/fleet/xdplb-node.toml` for node `k` in `mode`, on `dev`, in generic XDP mode (a
/// veth on a bridge has no NAPI peer for native XDP_TX), backends `1..=backends`.
fn node_config(mode: Mode, k: usize, dev: &str, backends: usize) -> String {
    let mut text = example(
        "xdplb-node.toml",
        &[(
            "interfaces = [\"eth0\"]",
            format!("interfaces = [\"{dev}\"]\nxdp_mode = \"generic\""),
        )],
    );
    if mode == Mode::Fullnat {
        text = text
            .replace("forwarding = \"dsr-ipip\"", "forwarding = \"fullnat\"")
            .replace(
                "encap_source = \"10.200.0.0/24\"",
                &format!("fullnat_source = \"{}\"", node_addr(k)),
            );
        assert!(text.contains("fullnat_source = \"10.70"), "{text}");
    }
    for b in 4..=backends {
        text.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}:{PORT}\"\n",
            backend_addr(b)
        ));
    }
    text
}

/// `bird -f` in a namespace, stopped on drop.
struct Bird {
    _proc: Daemon,
    sock: String,
}

impl Bird {
    fn start(ns: &Netns, dir: &str, name: &str, conf: &str) -> Bird {
        let path = format!("{dir}/{name}.conf");
        std::fs::write(&path, conf).expect("write bird config");
        let sock = format!("{dir}/{name}.ctl");
        let pid = format!("{dir}/{name}.pid");
        let parse = run_bounded(&["bird", "-p", "-c", &path], Duration::from_secs(10));
        assert!(
            parse.status.success(),
            "bird rejects {path}: {}\n{conf}",
            String::from_utf8_lossy(&parse.stderr)
        );
        let mut argv = ns.prefix();
        argv.extend(s(&["bird", "-f", "-c", &path, "-s", &sock, "-P", &pid]));
        Bird {
            _proc: Daemon::spawn(&argv),
            sock,
        }
    }

    fn cli(&self, what: &str) -> String {
        let mut argv = vec!["birdc", "-s", &self.sock];
        argv.extend(what.split(' '));
        let out = run_bounded(&argv, Duration::from_secs(10));
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// One namespace per role, a bridge for the fabric, everything removed on drop (the fields drop
/// in order: processes first, then namespaces).
struct Fleet {
    mode: Mode,
    dir: RunDir,
    bpffs: Bpffs,
    lbs: Vec<Option<Daemon>>,
    birds: Vec<Bird>,
    router_bird: Option<Bird>,
    backend_procs: Vec<Daemon>,
    client: Netns,
    router: Netns,
    nodes: Vec<Netns>,
    backends: Vec<Netns>,
    node_devs: Vec<String>,
    router_client_dev: String,
    client_dev: String,
    fab: Netns,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.lbs.clear();
        self.birds.clear();
        self.router_bird.take();
        self.backend_procs.clear();
    }
}

/// The test's directory (configs, BIRD sockets, xdplb's run dir), removed on drop.
struct RunDir(String);

impl RunDir {
    fn create(path: String) -> RunDir {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("run dir");
        RunDir(path)
    }
}

impl std::ops::Deref for RunDir {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn plug(fab: &Netns, ns: &Netns, dev: &str, port: &str, addr: &str) {
    sh(&[
        "ip", "link", "add", dev, "netns", &ns.name, "type", "veth", "peer", "name", port, "netns",
        &fab.name,
    ]);
    fab.exec(&["ip", "link", "set", port, "master", "br0", "up"]);
    ns.exec(&["ip", "addr", "add", addr, "dev", dev]);
    ns.exec(&["ip", "link", "set", dev, "up"]);
}

impl Fleet {
    fn build(mode: Mode) -> Fleet {
        require_root();
        ensure_bird();
        let tag = match mode {
            Mode::DsrIpip => "fi",
            Mode::Fullnat => "ff",
        };
        let pid = std::process::id();
        let dir = std::env::temp_dir()
            .join(format!("xdplb-test-fleet-{tag}-{pid}"))
            .display()
            .to_string();
        let dir = RunDir::create(dir);
        let bpffs = Bpffs::mount(&format!("fleet-{tag}"));
        let fab = Netns::new(&format!("{tag}fab"));
        fab.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        fab.exec(&["ip", "link", "set", "br0", "up"]);
        let client = Netns::new(&format!("{tag}c"));
        let router = Netns::new(&format!("{tag}r"));
        let nodes: Vec<Netns> = (1..=NODES)
            .map(|k| Netns::new(&format!("{tag}n{k}")))
            .collect();
        let backends: Vec<Netns> = (1..=BACKENDS)
            .map(|k| Netns::new(&format!("{tag}b{k}")))
            .collect();

        // Client <-> router.
        let (cdev, rcdev) = (format!("{tag}c{pid}"), format!("{tag}rc{pid}"));
        sh(&[
            "ip",
            "link",
            "add",
            &cdev,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &rcdev,
            "netns",
            &router.name,
        ]);
        client.exec(&["ip", "addr", "add", "10.71.0.1/24", "dev", &cdev]);
        router.exec(&["ip", "addr", "add", "10.71.0.2/24", "dev", &rcdev]);
        client.exec(&["ip", "link", "set", &cdev, "up"]);
        router.exec(&["ip", "link", "set", &rcdev, "up"]);
        client.exec(&["ip", "route", "add", "10.100.0.0/24", "via", "10.71.0.2"]);
        // An XDP program on the client's veth makes its NAPI run for frames its peer sends with
        // XDP_TX-like paths (see the netns tests); decap passes everything that is not IPIP.
        let env_fs = format!("XDPLB_BPFFS={}", bpffs.path);
        client.exec(&["env", &env_fs, XDPLB, "decap", "--interface", &cdev]);

        // Router: the fabric, its sysctls from the example file.
        plug(
            &fab,
            &router,
            &format!("{tag}r{pid}"),
            &format!("p{tag}r{pid}"),
            "10.70.0.1/24",
        );
        let sysctl = std::fs::read_to_string(format!("{EXAMPLES}/router-sysctl.conf"))
            .expect("router-sysctl.conf");
        for line in sysctl.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let kv: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            router.exec(&["sysctl", "-qw", &kv]);
        }
        router.exec(&["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"]);

        // Nodes.
        let mut node_devs = Vec::new();
        for (k, ns) in (1..=NODES).zip(&nodes) {
            let dev = format!("{tag}n{k}{pid}");
            plug(
                &fab,
                ns,
                &dev,
                &format!("p{tag}n{k}{pid}"),
                &format!("{}/24", node_addr(k)),
            );
            ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
            ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"]);
            // fullnat: translated replies go to the client through the router.
            ns.exec(&["ip", "route", "add", "10.71.0.0/24", "via", ROUTER_FABRIC]);
            node_devs.push(dev);
        }

        // Backends: answer with their name, on their own address (the health check) and, in
        // dsr-ipip, on the VIP held on lo.
        let mut backend_procs = Vec::new();
        for (k, ns) in (1..=BACKENDS).zip(&backends) {
            let dev = format!("{tag}b{k}{pid}");
            plug(
                &fab,
                ns,
                &dev,
                &format!("p{tag}b{k}{pid}"),
                &format!("{}/24", backend_addr(k)),
            );
            ns.exec(&["ip", "route", "add", "10.71.0.0/24", "via", ROUTER_FABRIC]);
            let mut listen = format!("{}:{PORT}", backend_addr(k));
            if mode == Mode::DsrIpip {
                ns.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
                ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"]);
                ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"]);
                // The ICMP errors forwarded to a backend come encapsulated too, from a node's
                // encap_source address; no reverse-path check on the decapsulated packets.
                ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
                let out = ns.exec(&["env", &env_fs, XDPLB, "decap", "--interface", &dev]);
                assert!(
                    String::from_utf8_lossy(&out.stdout).contains("decap attached"),
                    "{out:?}"
                );
                listen = format!("{},{listen}", vip());
            }
            let mut argv = ns.prefix();
            argv.extend(s(&[
                XDPLB,
                "demo-backend",
                "--listen",
                &listen,
                "--name",
                &format!("b{k}"),
            ]));
            let mut p = Daemon::spawn(&argv);
            p.wait_for("listening", Duration::from_secs(20));
            backend_procs.push(p);
        }

        let mut fleet = Fleet {
            mode,
            dir,
            bpffs,
            lbs: Vec::new(),
            birds: Vec::new(),
            router_bird: None,
            backend_procs,
            client,
            router,
            nodes,
            backends,
            node_devs,
            router_client_dev: rcdev,
            client_dev: cdev,
            fab,
        };

        // BIRD on the router, from the example (two nodes there; the third added the same way).
        let mut rconf = example("bird-router.conf", &[]);
        rconf.push_str("protocol bgp node3 from xdplb_node { neighbor 192.0.2.13 as 65010; }\n");
        let rconf = rconf.replace("192.0.2.", "10.70.0.");
        fleet.router_bird = Some(Bird::start(&fleet.router, &fleet.dir, "router", &rconf));
        for k in 1..=NODES {
            let conf = example("bird-node.conf", &[("192.0.2.11", node_addr(k))]);
            let b = Bird::start(&fleet.nodes[k - 1], &fleet.dir, &format!("node{k}"), &conf);
            fleet.birds.push(b);
        }
        for k in 1..=NODES {
            let cfg = node_config(mode, k, &fleet.node_devs[k - 1], 3);
            std::fs::write(fleet.config_path(k), cfg).expect("write node config");
            fleet.lbs.push(None);
            fleet.start_node(k);
        }
        fleet.wait_paths(NODES, "three nodes announce the VIP");
        fleet
    }

    fn config_path(&self, k: usize) -> String {
        format!("{}/node{k}.toml", &*self.dir)
    }

    fn instance(k: usize) -> String {
        format!("fleet{k}-{}", std::process::id())
    }

    /// `xdplb ARGS` in node `k`'s namespace, for its instance.
    fn xdplb(&self, k: usize, args: &[&str]) -> String {
        let env_dir = format!("XDPLB_RUN_DIR={}", &*self.dir);
        let env_fs = format!("XDPLB_BPFFS={}", self.bpffs.path);
        let instance = Self::instance(k);
        let mut argv = vec!["env", &env_dir, &env_fs, XDPLB];
        argv.extend_from_slice(args);
        argv.extend(["--instance", &instance]);
        let out = self.nodes[k - 1].exec(&argv);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn start_node(&mut self, k: usize) {
        let env_dir = format!("XDPLB_RUN_DIR={}", &*self.dir);
        let env_fs = format!("XDPLB_BPFFS={}", self.bpffs.path);
        let mut argv = self.nodes[k - 1].prefix();
        argv.extend(s(&[
            "env",
            &env_dir,
            &env_fs,
            XDPLB,
            "run",
            "--cleanup",
            "--config",
            &self.config_path(k),
            "--instance",
            &Self::instance(k),
        ]));
        let mut d = Daemon::spawn(&argv);
        d.wait_for("running instance", Duration::from_secs(30));
        self.lbs[k - 1] = Some(d);
        // The daemon asks the kernel to resolve the backends' addresses; give ARP a moment.
        thread::sleep(Duration::from_millis(300));
    }

    fn stop_node(&mut self, k: usize) {
        let mut d = self.lbs[k - 1].take().expect("node running");
        let status = d.terminate(Duration::from_secs(15));
        assert!(status.success(), "node {k} exits 0 on SIGTERM: {status}");
    }

    /// `xdplb node drain`: withdraws the node's VIPs and returns once its traffic stopped.
    fn drain(&self, k: usize) -> Duration {
        let t0 = Instant::now();
        // Drain's own bound (20 s) is under the shell call's (30 s), so a drain that never sees
        // its traffic stop fails with drain's message (the rate still arriving).
        let out = self.xdplb(
            k,
            &["node", "drain", "--quiet", "600ms", "--timeout", "20s"],
        );
        assert!(out.contains("drained:"), "{out}");
        println!("node {k}: {}", out.trim());
        t0.elapsed()
    }

    /// Packets the node's service has balanced (its data plane's counter).
    fn node_packets(&self, k: usize) -> u64 {
        let v: Value =
            serde_json::from_str(&self.xdplb(k, &["stats", "-o", "json"])).expect("stats JSON");
        let svcs = if v["services"].is_array() {
            &v["services"]
        } else {
            &v["stats"]["services"]
        };
        svcs.as_array()
            .and_then(|a| a.first())
            .and_then(|s| s["packets"].as_u64())
            .unwrap_or_else(|| panic!("no service packets in {v}"))
    }

    /// The clients (ip:port) of the flows node `k` saw in the last `recent`.
    fn node_flows(&self, k: usize, recent: Duration) -> BTreeSet<String> {
        let v: Value =
            serde_json::from_str(&self.xdplb(k, &["flows", "-o", "json", "--limit", "100000"]))
                .expect("flows JSON");
        v["flows"]
            .as_array()
            .unwrap_or_else(|| panic!("flows: {v}"))
            .iter()
            .filter(|f| {
                f["idle_ms"]
                    .as_u64()
                    .is_some_and(|ms| u128::from(ms) < recent.as_millis())
            })
            .map(|f| f["client"].as_str().expect("client").to_string())
            .collect()
    }

    /// Waits until the router's route to the VIP has `n` next hops (0: no route).
    fn wait_paths(&self, n: usize, what: &str) -> Duration {
        let t0 = Instant::now();
        loop {
            let out = self
                .router
                .exec(&["ip", "route", "show", &format!("{VIP}/32")]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let hops = if text.trim().is_empty() {
                0
            } else if text.contains("nexthop") {
                text.matches("nexthop").count()
            } else {
                1
            };
            if hops == n {
                return t0.elapsed();
            }
            if t0.elapsed() > CONVERGE {
                let rb = self.router_bird.as_ref().expect("router bird");
                panic!(
                    "{what}: the router's route to {VIP} has {hops} next hops, not {n}: {text}\n{}\n{}",
                    rb.cli("show protocols"),
                    rb.cli("show bfd sessions")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts node `k` off (or plugs it back) at the switch: its bridge port goes down, so its
    /// own interface loses carrier, as with a pulled cable. (Setting the node's own interface
    /// down would also delete the routes through it, which a cable cut does not.)
    fn link(&self, k: usize, up: bool) {
        self.fab.exec(&[
            "ip",
            "link",
            "set",
            &format!("p{}", self.node_devs[k - 1]),
            if up { "up" } else { "down" },
        ]);
    }

    fn config_text(&self, backends: usize) -> xdplb::config::Config {
        // Node 1's config: the scheduling table is the same on every node (the point of it).
        let text = node_config(self.mode, 1, &self.node_devs[0], backends);
        xdplb::config::parse(&text, "fleet").expect("node config parses")
    }
}

/// Which backend `xdplb explain` names for each client port, with `backends` in the config.
fn explained(fleet: &Fleet, ports: &[u16], backends: usize) -> Vec<String> {
    let cfg = fleet.config_text(backends);
    let dest = SocketAddr::from((VIP, PORT));
    ports
        .iter()
        .map(|p| {
            let e = xdplb::explain::explain(&cfg, SocketAddr::from((CLIENT, *p)), dest)
                .expect("explain");
            e.backend.expect("maglev names a backend")
        })
        .collect()
}

/// Backend name in a reply (`b3`) to its address.
fn backend_of(name: u8) -> String {
    format!("{}:{PORT}", backend_addr(usize::from(name)))
}

/// One flow's replies: (round, backend number).
type ReplyLog = Arc<Mutex<Vec<(u32, u8)>>>;

/// Sequenced datagrams on many connected sockets, one round every `interval`, each reply
/// logged with the backend that sent it.
struct Traffic {
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<Instant>>>,
    replies: Vec<ReplyLog>,
    locals: Vec<SocketAddrV4>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    /// From each of `sources` (address, count of sockets), `payload` bytes per datagram.
    fn start(
        ns: &Netns,
        sources: &[(Ipv4Addr, usize)],
        interval: Duration,
        payload: usize,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let path = format!("/run/netns/{}", ns.name);
        let sources = sources.to_vec();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop2, rounds2) = (stop.clone(), rounds.clone());
        let sender = thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the client namespace");
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the client namespace");
            let mut socks = Vec::new();
            for (addr, n) in sources {
                for _ in 0..n {
                    let sock = UdpSocket::bind((addr, 0)).expect("bind");
                    sock.connect((VIP, PORT)).expect("connect");
                    sock.set_read_timeout(Some(Duration::from_millis(100)))
                        .expect("timeout");
                    socks.push(sock);
                }
            }
            tx.send(
                socks
                    .iter()
                    .map(|s| s.try_clone().expect("clone"))
                    .collect::<Vec<_>>(),
            )
            .expect("hand the sockets over");
            let mut seq: u32 = 0;
            let mut next = Instant::now();
            let mut buf = vec![b'x'; payload.max(16)];
            while !stop2.load(Ordering::Relaxed) {
                let head = format!("seq {seq:010} ");
                buf[..head.len()].copy_from_slice(head.as_bytes());
                rounds2.lock().expect("rounds").push(Instant::now());
                for sock in &socks {
                    // A refused send (ICMP port unreachable from earlier) is a lost datagram.
                    let _ = sock.send(&buf[..payload.max(16)]);
                }
                seq += 1;
                next += interval;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
        });
        let socks: Vec<UdpSocket> = rx.recv_timeout(Duration::from_secs(10)).expect("sockets");
        let locals: Vec<SocketAddrV4> = socks
            .iter()
            .map(|s| match s.local_addr().expect("local") {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(a) => panic!("{a}"),
            })
            .collect();
        let mut replies = Vec::new();
        let mut threads = vec![sender];
        for sock in socks {
            let log = Arc::new(Mutex::new(Vec::new()));
            replies.push(log.clone());
            let stop = stop.clone();
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = sock.recv(&mut buf) else { continue };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    // "xdplb-backend bK\nseq NNNNNNNNNN ..."
                    let name = text
                        .strip_prefix("xdplb-backend b")
                        .and_then(|t| t.split('\n').next())
                        .and_then(|k| k.parse::<u8>().ok());
                    let seq = text
                        .split("seq ")
                        .nth(1)
                        .and_then(|t| t.get(..10))
                        .and_then(|n| n.parse::<u32>().ok());
                    if let (Some(b), Some(q)) = (name, seq) {
                        log.lock().expect("log").push((q, b));
                    }
                }
            }));
        }
        Traffic {
            stop,
            rounds,
            replies,
            locals,
            threads,
        }
    }

    fn round(&self) -> u32 {
        u32::try_from(self.rounds.lock().expect("rounds").len()).expect("rounds fit")
    }

    fn ports(&self) -> Vec<u16> {
        self.locals.iter().map(SocketAddrV4::port).collect()
    }

    fn client(&self, i: usize) -> String {
        self.locals[i].to_string()
    }

    /// Per flow: the rounds in `from..to` without a reply. Waits first so that replies to the
    /// last rounds have arrived.
    fn lost(&self, from: u32, to: u32) -> Vec<Vec<u32>> {
        thread::sleep(Duration::from_millis(300));
        self.replies
            .iter()
            .map(|log| {
                let got: BTreeSet<u32> = log.lock().expect("log").iter().map(|(q, _)| *q).collect();
                (from..to).filter(|q| !got.contains(q)).collect()
            })
            .collect()
    }

    /// Per flow: the backends that answered rounds `from..to`, in order, repeats collapsed.
    fn backends(&self, from: u32, to: u32) -> Vec<Vec<u8>> {
        self.replies
            .iter()
            .map(|log| {
                let mut v: Vec<(u32, u8)> = log
                    .lock()
                    .expect("log")
                    .iter()
                    .filter(|(q, _)| (from..to).contains(q))
                    .copied()
                    .collect();
                v.sort_unstable();
                let mut seq: Vec<u8> = v.into_iter().map(|(_, b)| b).collect();
                seq.dedup();
                seq
            })
            .collect()
    }

    /// Time from the first lost round to the round after the last lost one.
    fn window(&self, lost: &[u32]) -> Duration {
        let rounds = self.rounds.lock().expect("rounds");
        match (lost.first(), lost.last()) {
            (Some(a), Some(b)) => {
                let end = rounds
                    .get(*b as usize + 1)
                    .copied()
                    .unwrap_or_else(|| rounds[*b as usize] + INTERVAL);
                end.duration_since(rounds[*a as usize])
            }
            _ => Duration::ZERO,
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Flows that were on a node other than `skip` in `before` and are on another node other than
/// `skip` in `after` (each set: the clients a node saw recently).
fn moved_between(before: &[BTreeSet<String>], after: &[BTreeSet<String>], skip: usize) -> usize {
    let mut n = 0;
    for (a, from) in before.iter().enumerate() {
        for (b, to) in after.iter().enumerate() {
            if a != b && a + 1 != skip && b + 1 != skip {
                n += from
                    .iter()
                    .filter(|c| to.contains(*c) && !after[a].contains(*c))
                    .count();
            }
        }
    }
    n
}

/// How many flows lost datagrams, and the first few of them with their lost rounds.
fn summary(t: &Traffic, lost: &[Vec<u32>]) -> String {
    let hit: Vec<String> = lost
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            format!(
                "{} lost {} (rounds {}..={})",
                t.client(i),
                l.len(),
                l[0],
                l[l.len() - 1]
            )
        })
        .collect();
    format!(
        "{} flows lost datagrams: {}",
        hit.len(),
        hit.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Asserts the flows' backends in `from..to` are one each and what explain names; returns them.
fn assert_backends_explained(
    fleet: &Fleet,
    t: &Traffic,
    from: u32,
    to: u32,
    backends: usize,
    what: &str,
) -> Vec<u8> {
    let want = explained(fleet, &t.ports(), backends);
    let got = t.backends(from, to);
    let mut one = Vec::new();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), 1, "{what}: flow {} answered by {g:?}", t.client(i));
        assert_eq!(
            backend_of(g[0]),
            *w,
            "{what}: flow {} answered by b{}, explain names {w}",
            t.client(i),
            g[0]
        );
        one.push(g[0]);
    }
    one
}

fn fleet_case(mode: Mode) {
    let t_start = Instant::now();
    let label = match mode {
        Mode::DsrIpip => "dsr-ipip",
        Mode::Fullnat => "fullnat",
    };
    let mut fleet = Fleet::build(mode);
    println!(
        "{label}: topology up, three nodes announced, in {:?}",
        t_start.elapsed()
    );
    let rb = fleet.router_bird.as_ref().expect("router bird");
    let protocols = rb.cli("show protocols");
    assert_eq!(
        protocols.matches("Established").count(),
        NODES,
        "{protocols}"
    );
    let bfd = rb.cli("show bfd sessions");
    assert_eq!(bfd.matches(" Up ").count(), NODES, "{bfd}");
    for k in 1..=NODES {
        let learned = fleet.birds[k - 1].cli("show route protocol xdplb_vips");
        assert!(
            learned.contains(&format!("{VIP}/32")),
            "node {k}'s BIRD learned the VIP: {learned}"
        );
    }

    let traffic = Traffic::start(&fleet.client, &[(CLIENT, FLOWS)], INTERVAL, 32);
    thread::sleep(Duration::from_secs(2));

    // Spread: every node carries flows; every flow is answered by the backend explain names.
    let r_spread = traffic.round();
    let before: Vec<u64> = (1..=NODES).map(|k| fleet.node_packets(k)).collect();
    thread::sleep(Duration::from_secs(1));
    let after: Vec<u64> = (1..=NODES).map(|k| fleet.node_packets(k)).collect();
    let per_node: Vec<BTreeSet<String>> =
        (1..=NODES).map(|k| fleet.node_flows(k, RECENT)).collect();
    let r_now = traffic.round();
    let counts: Vec<usize> = per_node.iter().map(BTreeSet::len).collect();
    let rates: Vec<u64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    println!("{label}: spread: flows per node {counts:?}, packets per node in 1 s {rates:?}");
    for k in 0..NODES {
        assert!(
            counts[k] > 0 && rates[k] > 0,
            "node {} carries traffic: {counts:?} {rates:?}",
            k + 1
        );
    }
    let all: BTreeSet<&String> = per_node.iter().flatten().collect();
    assert_eq!(all.len(), FLOWS, "every flow on some node: {counts:?}");
    let lost = traffic.lost(10, r_now);
    assert!(lost.iter().all(Vec::is_empty), "no loss while steady");
    let original = assert_backends_explained(&fleet, &traffic, r_spread, r_now, 3, "spread");
    // The same answer from `xdplb explain` on every node (its running config), for a sample.
    for (i, port) in traffic.ports().iter().enumerate().step_by(17) {
        for k in 1..=NODES {
            let out = fleet.xdplb(
                k,
                &["explain", &format!("{CLIENT}:{port}"), &vip(), "-o", "json"],
            );
            let v: Value = serde_json::from_str(&out).expect("explain JSON");
            assert_eq!(
                v["backend"].as_str(),
                Some(backend_of(original[i]).as_str()),
                "xdplb explain on node {k} for flow {}: {v}",
                traffic.client(i)
            );
        }
    }

    // Node failure: node 3's link goes down under traffic.
    let victim = 3;
    let carried = fleet.node_flows(victim, RECENT);
    let r_fail = traffic.round();
    fleet.link(victim, false);
    let converged = fleet.wait_paths(NODES - 1, "the router drops node 3");
    thread::sleep(Duration::from_secs(2));
    let r_after = traffic.round();
    let lost = traffic.lost(r_fail, r_after);
    let mut windows = Vec::new();
    for (i, l) in lost.iter().enumerate() {
        let c = traffic.client(i);
        if carried.contains(&c) {
            windows.push(traffic.window(l));
        } else {
            assert!(
                l.is_empty(),
                "flow {c} was not on node {victim} but lost rounds {l:?}"
            );
        }
    }
    let max = windows.iter().max().copied().unwrap_or_default();
    println!(
        "{label}: node failure: router's route down to 2 next hops {converged:?} after the link went down; {} flows on the failed node, loss window max {max:?}, median {:?}; other flows lost 0",
        windows.len(),
        median(windows.clone())
    );
    assert!(!windows.is_empty(), "node {victim} carried flows");
    assert!(
        windows.iter().any(|w| !w.is_zero()),
        "no flow of node {victim} lost anything: the cut did not take effect"
    );
    assert!(
        max < FAILOVER_BOUND,
        "loss window {max:?} >= {FAILOVER_BOUND:?}"
    );
    // Linux ECMP re-slices its hash when a next hop goes: flows move between healthy nodes too.
    let during: Vec<BTreeSet<String>> = (1..=NODES).map(|k| fleet.node_flows(k, RECENT)).collect();
    let shuffled = moved_between(&per_node, &during, victim);
    println!(
        "{label}: node failure: {shuffled} flows moved between the two healthy nodes (plain multipath re-slices)"
    );
    let kept = traffic.backends(r_spread, r_after);
    for (i, b) in kept.iter().enumerate() {
        assert_eq!(
            b,
            &vec![original[i]],
            "flow {} keeps its backend across the failure",
            traffic.client(i)
        );
    }

    // Rejoin: the link comes back, BGP and BFD return, flows spread over three nodes again.
    let r_rejoin = traffic.round();
    let t_rejoin = Instant::now();
    fleet.link(victim, true);
    fleet.wait_paths(NODES, "node 3 rejoins");
    let rejoined = t_rejoin.elapsed();
    thread::sleep(Duration::from_secs(2));
    let back = fleet.node_flows(victim, RECENT);
    let rejoined_sets: Vec<BTreeSet<String>> =
        (1..=NODES).map(|k| fleet.node_flows(k, RECENT)).collect();
    let shuffled_back = moved_between(&during, &rejoined_sets, victim);
    let r_after = traffic.round();
    let lost = traffic.lost(r_rejoin, r_after);
    let lost_n: usize = lost.iter().map(Vec::len).sum();
    println!(
        "{label}: rejoin: announced again after {rejoined:?}, {} flows on node {victim} again, {shuffled_back} moved between the other two nodes, datagrams lost {lost_n}",
        back.len()
    );
    assert!(!back.is_empty(), "flows return to node {victim}");
    assert_eq!(
        lost_n,
        0,
        "a rejoin loses nothing: {}",
        summary(&traffic, &lost)
    );
    let kept = traffic.backends(r_spread, r_after);
    for (i, b) in kept.iter().enumerate() {
        assert_eq!(
            b,
            &vec![original[i]],
            "flow {} keeps its backend across the rejoin",
            traffic.client(i)
        );
    }

    // Planned drain of node 2 under traffic, then stop it: nothing lost.
    let drained_node = 2;
    let r_drain = traffic.round();
    let quiet = fleet.drain(drained_node);
    fleet.wait_paths(NODES - 1, "node 2 withdrawn");
    fleet.stop_node(drained_node);
    thread::sleep(Duration::from_secs(1));
    let r_after = traffic.round();
    let lost = traffic.lost(r_drain, r_after);
    let lost_n: usize = lost.iter().map(Vec::len).sum();
    println!(
        "{label}: drain: `xdplb node drain` returned after {quiet:?}, node stopped; datagrams lost {lost_n}"
    );
    assert_eq!(
        lost_n,
        0,
        "a planned drain loses nothing: {}",
        summary(&traffic, &lost)
    );
    // Back in service: the restarted node keeps `drained` (written to its config) until undrained.
    let r_undrain = traffic.round();
    fleet.start_node(drained_node);
    let out = fleet.xdplb(drained_node, &["node", "undrain"]);
    assert!(out.contains("undrained"), "{out}");
    fleet.wait_paths(NODES, "node 2 back");
    thread::sleep(Duration::from_secs(1));
    let lost = traffic.lost(r_undrain, traffic.round());
    let lost_n: usize = lost.iter().map(Vec::len).sum();
    println!("{label}: node {drained_node} restarted and announced again; datagrams lost {lost_n}");
    assert_eq!(
        lost_n,
        0,
        "a node's return loses nothing: {}",
        summary(&traffic, &lost)
    );

    // Backend change, then node failure, then rejoin: no flow changes backend twice.
    let r_change = traffic.round();
    for k in 1..=NODES {
        fleet.xdplb(
            k,
            &[
                "backend",
                "add",
                "fleet",
                &format!("{}:{PORT}", backend_addr(4)),
            ],
        );
    }
    thread::sleep(Duration::from_secs(1));
    let victim = 1;
    // Where each flow is at points of the phase (the clients each node saw recently): a flow
    // only moves when the router's route changes, so one seen on a single node, and on the same
    // one, at every point stayed there the whole phase.
    let snapshot =
        || -> Vec<BTreeSet<String>> { (1..=NODES).map(|k| fleet.node_flows(k, RECENT)).collect() };
    let mut where_ = vec![snapshot()];
    // Entries younger than flow_stale_after (3 s) on any node just before the cut: a flow with
    // none anywhere but on the victim meets, wherever the cut sends it, an entry idle past
    // flow_stale_after or none, so the new table places it there.
    let victim_only: BTreeSet<String> = {
        let young: Vec<BTreeSet<String>> = (1..=NODES)
            .map(|k| fleet.node_flows(k, Duration::from_secs(3)))
            .collect();
        young[victim - 1]
            .iter()
            .filter(|c| (1..=NODES).all(|k| k == victim || !young[k - 1].contains(*c)))
            .cloned()
            .collect()
    };
    fleet.link(victim, false);
    fleet.wait_paths(NODES - 1, "the router drops node 1");
    where_.push(snapshot());
    // Long enough that node 1's entries are idle beyond flow_stale_after (3 s) when it returns.
    thread::sleep(Duration::from_secs(3));
    where_.push(snapshot());
    fleet.link(victim, true);
    fleet.wait_paths(NODES, "node 1 rejoins");
    where_.push(snapshot());
    thread::sleep(Duration::from_secs(3));
    where_.push(snapshot());
    let r_end = traffic.round();
    let seqs = traffic.backends(r_change, r_end);
    let after_table = explained(&fleet, &traffic.ports(), 4);
    let stayed: Vec<usize> = (0..FLOWS)
        .filter(|i| {
            let c = traffic.client(*i);
            let homes: BTreeSet<usize> = where_
                .iter()
                .flat_map(|snap| (0..NODES).filter(|k| snap[*k].contains(&c)))
                .collect();
            homes.len() == 1
                && where_
                    .iter()
                    .all(|snap| snap.iter().any(|s| s.contains(&c)))
        })
        .collect();
    let once = seqs.iter().filter(|s| s.len() == 2).count();
    let twice: Vec<(String, Vec<u8>)> = seqs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.len() > 2)
        .map(|(i, s)| (traffic.client(i), s.clone()))
        .collect();
    let table_moves = original
        .iter()
        .zip(&after_table)
        .filter(|(o, a)| backend_of(**o) != **a)
        .count();
    let kept_all = seqs.iter().filter(|s| s.len() == 1).count();
    // Flows the new table had to place (on the victim just before the cut, no young entry
    // elsewhere) and for which it names another backend: each must have changed once.
    let must_change: Vec<usize> = (0..FLOWS)
        .filter(|i| {
            victim_only.contains(&traffic.client(*i)) && backend_of(original[*i]) != after_table[*i]
        })
        .collect();
    println!(
        "{label}: backend added, node {victim} failed and rejoined: {kept_all} of {FLOWS} flows kept their backend, {once} changed backend once, {} twice or more (the new table alone would move {table_moves} of {FLOWS}); {} flows stayed on one node throughout; {} flows had to follow the new table to another backend; a second-chance design would keep all {FLOWS} (by construction, not measured)",
        twice.len(),
        stayed.len(),
        must_change.len()
    );
    // Every flow ends on its original backend or on the one the new table names: nothing else.
    let mut wrong_end = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        let end = s.last().map(|b| backend_of(*b));
        if end.as_deref() != Some(backend_of(original[i]).as_str())
            && end.as_deref() != Some(after_table[i].as_str())
        {
            wrong_end.push(format!(
                "{} ends on {end:?} (original b{}, new table {})",
                traffic.client(i),
                original[i],
                after_table[i]
            ));
        }
    }
    // A flow that stayed on one node kept its entry there (it never idled), so its backend.
    let mut moved_in_place = Vec::new();
    for i in &stayed {
        if seqs[*i] != vec![original[*i]] {
            moved_in_place.push(format!(
                "{} stayed on one node but was answered by {:?} (original b{})",
                traffic.client(*i),
                seqs[*i],
                original[*i]
            ));
        }
    }
    // Hash-threshold ECMP: going from 3 next hops to 2 and back, the first survivor's new half
    // of the hash space overlaps its old third whatever the order, so about 1/6 of the flows
    // (20 of 120) or more never move; none staying means the snapshots or the router broke.
    assert!(
        !stayed.is_empty(),
        "no flow stayed on a single node through the phase"
    );
    // `once` itself is printed, not asserted: a flow changes backend only if the router moved
    // it and the new table disagrees for it, which a given set of client ports may miss. What
    // must hold is asserted instead: the flows the new table had to place moved to its choice.
    let mut missed = Vec::new();
    for i in &must_change {
        if seqs[*i].len() != 2 || backend_of(seqs[*i][1]) != after_table[*i] {
            missed.push(format!(
                "{} answered by {:?}, new table {}",
                traffic.client(*i),
                seqs[*i],
                after_table[*i]
            ));
        }
    }
    // Checked at the end, so that the ICMP case below runs whatever this says.
    let changed_twice = twice;
    let change_phase = [wrong_end, moved_in_place, missed];
    drop(traffic);

    // ICMP for the VIP: a 1000-byte route MTU toward the clients on the router; replies (1.2 kB)
    // do not fit, the router's "fragmentation needed" goes to the VIP, lands on any node, and
    // must reach the backend of the flow, which then fragments its replies.
    let sources: Vec<(Ipv4Addr, usize)> = (0..30u8)
        .map(|i| (Ipv4Addr::new(10, 71, 0, 100 + i), 1))
        .collect();
    for (a, _) in &sources {
        fleet.client.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{a}/32"),
            "dev",
            &fleet.client_dev,
        ]);
    }
    fleet.router.exec(&[
        "ip",
        "route",
        "change",
        "10.71.0.0/24",
        "dev",
        &fleet.router_client_dev,
        "proto",
        "kernel",
        "scope",
        "link",
        "src",
        "10.71.0.2",
        "mtu",
        "1000",
    ]);
    let probe = Traffic::start(&fleet.client, &sources, Duration::from_millis(100), 1200);
    let t0 = Instant::now();
    let answered = loop {
        thread::sleep(Duration::from_millis(200));
        let n = probe
            .replies
            .iter()
            .filter(|l| !l.lock().expect("log").is_empty())
            .count();
        if n == sources.len() || t0.elapsed() > Duration::from_secs(6) {
            break n;
        }
    };
    let rounds = probe.round();
    drop(probe);
    let mut learned = 0;
    for (k, ns) in (1..=BACKENDS).zip(&fleet.backends) {
        let out = ns.exec(&["ip", "route", "show", "cache"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let n = text.matches("mtu 1000").count();
        println!("{label}: icmp: backend b{k} learned mtu 1000 for {n} client addresses");
        learned += n;
    }
    println!(
        "{label}: icmp: {answered} of {} flows (each from its own address) got replies through a 1000-byte route MTU after {:?} ({rounds} rounds); {learned} path MTUs learned",
        sources.len(),
        t0.elapsed()
    );
    if mode == Mode::Fullnat && !FULLNAT_ICMP_TO_VIP {
        println!(
            "{label}: icmp: NOT ASSERTED: the data plane does not send an ICMP error addressed to a fullnat VIP back to the backend (icmp.rs handles dsr-*, nat and local only), so in fullnat no backend learns the path MTU, with one node or three"
        );
    } else {
        assert_eq!(
            answered,
            sources.len(),
            "every flow learns the path MTU and gets its replies"
        );
    }
    println!("{label}: test took {:?}", t_start.elapsed());
    assert!(
        changed_twice.is_empty(),
        "no flow changes backend twice : {changed_twice:?}"
    );
    let [wrong_end, moved_in_place, missed] = change_phase;
    assert!(
        wrong_end.is_empty(),
        "every flow ends on its original backend or the new table's: {wrong_end:?}"
    );
    assert!(
        moved_in_place.is_empty(),
        "a flow that stayed on one node keeps its backend: {moved_in_place:?}"
    );
    assert!(
        missed.is_empty(),
        "a flow the new table had to place follows it, once: {missed:?}"
    );
}

/// The two variants build topologies with distinct names, but run one at a time: each loads
/// the machine with three XDP nodes and BIRDs.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn fleet_dsr_ipip_failover_drain_rejoin_and_icmp() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    fleet_case(Mode::DsrIpip);
}

#[test]
fn fleet_fullnat_failover_drain_rejoin_and_icmp() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    fleet_case(Mode::Fullnat);
}
