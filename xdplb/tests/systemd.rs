//! The daemon under systemd: the readiness protocol (`Type=notify`) against a notify socket of
//! the test's own, and `systemd-analyze verify` of the shipped unit. systemd is not PID 1 here,
//! so the unit itself cannot be started; `xdplb reload`'s non-zero exit on a rejected config
//! (what `ExecReload=` relies on) is asserted in netns.rs
//! (`reloads_under_traffic_lose_nothing_and_a_bad_config_changes_nothing`).

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use xdplb_test_support::{
    netns::{Daemon, Netns, run_bounded},
    require_root,
};

/// The `xdplb` binary under test.
const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");

/// A directory of this test's own, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xdplb-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The next notification datagram, within `timeout`.
fn next_notification(sock: &UnixDatagram, timeout: Duration) -> String {
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {timeout:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn xdp_attached(ns: &Netns) -> bool {
    let link = ns.exec(&["ip", "-d", "link", "show", "dev", "lo"]);
    String::from_utf8_lossy(&link.stdout).contains("prog/xdp")
}

#[test]
fn the_daemon_tells_systemd_ready_reloading_and_stopping() {
    require_root();
    let ns = Netns::new("notify");
    let tmp = TempDir::new("notify");
    let pid = std::process::id();
    let instance = format!("t-notify-{pid}");
    let socket_path = tmp.path("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let config = tmp.path("xdplb.toml");
    std::fs::write(
        &config,
        "interfaces = [\"lo\"]\n[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9876\"\n",
    )
    .expect("write config");
    let run_dir = tmp.path("run");
    let env_run = format!("XDPLB_RUN_DIR={run_dir}");
    let env_notify = format!("NOTIFY_SOCKET={socket_path}");
    let mut args = ns.prefix();
    for a in [
        "env",
        &env_run,
        &env_notify,
        XDPLB,
        "run",
        "--cleanup",
        "--config",
        &config,
        "--instance",
        &instance,
    ] {
        args.push(a.to_owned());
    }
    assert!(!xdp_attached(&ns), "nothing attached before the start");
    let started = Instant::now();
    let mut daemon = Daemon::spawn(&args);

    // READY=1 comes once the data plane is attached and the config applied, not before: at
    // that moment the program is on lo and the instance's state file names the service.
    let first = next_notification(&sock, Duration::from_secs(30));
    assert_eq!(first.trim(), "READY=1", "the first notification");
    assert!(xdp_attached(&ns), "READY=1 before XDP was attached");
    let state = std::fs::read_to_string(format!("{run_dir}/{instance}.json"))
        .expect("the state file exists when READY=1 arrives");
    assert!(state.contains("127.0.0.1:9876"), "{state}");
    daemon.wait_for("running instance", Duration::from_secs(5));
    eprintln!("READY=1 after {:?}", started.elapsed());

    // A reload: RELOADING=1 with the monotonic time systemd v253+ wants, then READY=1; a
    // rejected reload signals the same (the daemon runs on) and `xdplb reload` fails.
    let reload = || {
        let mut full: Vec<&str> = vec!["ip", "netns", "exec", &ns.name, "env", &env_run];
        full.extend_from_slice(&[XDPLB, "reload", "--instance", &instance]);
        run_bounded(&full, Duration::from_secs(20))
    };
    for (text, ok) in [
        (
            "interfaces = [\"lo\"]\n[[service]]\nname = \"demo\"\nvip = \"127.0.0.1:9875\"\n\
             [[service.backend]]\naddress = \"127.0.0.1:9877\"\n",
            true,
        ),
        ("interfaces = [\"lo\"\n", false),
    ] {
        std::fs::write(&config, text).expect("write config");
        let out = reload();
        assert_eq!(
            out.status.success(),
            ok,
            "xdplb reload: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let reloading = next_notification(&sock, Duration::from_secs(10));
        let lines: Vec<&str> = reloading.lines().collect();
        assert_eq!(lines.first(), Some(&"RELOADING=1"), "{reloading:?}");
        let usec: u64 = lines
            .iter()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
            .parse()
            .expect("a number");
        assert!(usec > 0);
        assert_eq!(
            next_notification(&sock, Duration::from_secs(10)).trim(),
            "READY=1"
        );
    }

    // SIGTERM: STOPPING=1, then exit 0.
    let status = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let stopping = next_notification(&sock, Duration::from_secs(5));
    assert_eq!(stopping.trim(), "STOPPING=1");
    assert!(!xdp_attached(&ns), "--cleanup detached");
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    // `verify` checks that ExecStart= and friends exist and that the Documentation= man pages
    // open: the unit's paths point at the binary under test, and the man pages are generated by
    // it into a MANPATH of the test's own, as the package installs them.
    let tmp = TempDir::new("verify");
    let unit_src = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/xdplb.service");
    let unit = std::fs::read_to_string(unit_src).expect("read the unit");
    assert!(unit.contains("ExecStart=/usr/bin/xdplb run"), "{unit}");
    let unit = unit.replace("/usr/bin/xdplb", XDPLB);
    let unit_path = tmp.path("xdplb.service");
    std::fs::write(&unit_path, unit).expect("write the unit");
    let docs = tmp.path("docs");
    let out = run_bounded(&[XDPLB, "generate-docs", &docs], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let man1 = tmp.path("man/man1");
    std::fs::create_dir_all(&man1).expect("man1");
    for entry in std::fs::read_dir(Path::new(&docs).join("man")).expect("man pages") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), Path::new(&man1).join(entry.file_name())).expect("copy");
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", &unit_path])
        .env("MANPATH", tmp.path("man"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    // Any line about the unit is a warning (verify prints nothing for a clean unit).
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("xdplb.service") || l.contains(&unit_path))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify: {text}");

    // The hardening keeps what the daemon needs: writable config dir, pins and run dir, and the
    // address families it uses.
    let unit = std::fs::read_to_string(&unit_path).expect("read");
    for needle in [
        "Type=notify",
        "ExecReload=",
        "ReadWritePaths=/run/xdplb /sys/fs/bpf /etc/xdplb",
        "AF_NETLINK",
        "AF_UNIX",
        "AF_INET",
    ] {
        assert!(unit.contains(needle), "the unit lacks {needle}");
    }
    assert!(
        unit.contains(&format!("ExecReload={XDPLB} reload --instance default")),
        "{unit}"
    );
    // And it rates OK or better (`systemd-analyze security`, offline: systemd is not PID 1).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", &unit_path])
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let level = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for xdplb.service: ").nth(1))
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    let score: f64 = level
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{level}"));
    assert!(
        score <= 4.0,
        "exposure {level} (3.6 when written; 7.0 before)"
    );
}
