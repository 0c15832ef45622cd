//! Tier 3: `scripts/lab.sh MODE` builds its namespace lab, every backend answers in every
//! forwarding mode, and nothing is left behind, whether the script ends or is interrupted
//! (Ctrl-C). Needs root. The script runs the binary under test (`XDPLB_LAB_BIN`), so it skips
//! its setup and build steps.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process_group};
use xdplb_test_support::require_root;

const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lab.sh");
/// One mode takes about 4 s on an idle 2-CPU VM.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The namespaces the lab of the script with process id `pid` makes: `xdplb-lab-PID-*`.
fn lab_namespaces(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let prefix = format!("xdplb-lab-{pid}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// A running `lab.sh`, in a process group of its own (as a shell's job is, so that a signal
/// to the group is what Ctrl-C does). On drop (a failed test), the group is killed and the
/// lab's namespaces deleted.
struct Lab {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
}

impl Lab {
    fn start(args: &[&str]) -> Lab {
        let mut child = Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .env("XDPLB_LAB_BIN", XDPLB)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start lab.sh");
        let (tx, lines) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Lab {
            child,
            lines,
            output: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        let group = Pid::from_raw(self.pid() as i32).expect("a child's pid is positive");
        let _ = kill_process_group(group, signal);
    }

    /// Collects output until a line contains `needle`; fails after [`TIMEOUT`].
    fn wait_for_line(&mut self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.output.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.output.push(line),
                Err(e) => panic!(
                    "no line {needle:?} within {TIMEOUT:?} ({e}):\n{}",
                    self.text()
                ),
            }
        }
    }

    /// Waits for the script to exit (interrupting it after [`TIMEOUT`]), and collects the rest
    /// of its output.
    fn finish(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for lab.sh") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "lab.sh did not finish within {TIMEOUT:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The pipes close once every process of the lab is gone; wait a little for that.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.output.push(line);
        }
        status
    }

    fn text(&self) -> String {
        self.output.join("\n")
    }

    /// The config file the script reported (its path names the lab's run directory).
    fn config_path(&self) -> String {
        self.output
            .iter()
            .find_map(|l| l.strip_prefix("lab: the balancer's config ("))
            .and_then(|rest| rest.strip_suffix("):"))
            .unwrap_or_else(|| panic!("no config path in:\n{}", self.text()))
            .to_string()
    }

    /// Asserts that nothing of the lab is left: no namespace, no process running on its
    /// config, no run directory.
    fn assert_nothing_left(&self) {
        let pid = self.pid();
        assert_eq!(
            lab_namespaces(pid),
            Vec::<String>::new(),
            "namespaces left behind:\n{}",
            self.text()
        );
        let config = self.config_path();
        let run_dir = std::path::Path::new(&config).parent().expect("a run dir");
        assert!(!run_dir.exists(), "{} left behind", run_dir.display());
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                assert!(
                    !cmdline.contains(&config),
                    "a process of the lab is still running: {cmdline}"
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(Signal::KILL);
            let _ = self.child.wait();
        }
        for ns in lab_namespaces(self.pid()) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

#[test]
fn every_mode_answers_from_every_backend_and_leaves_nothing() {
    every_mode(&[], "10.99.0.1:7000");
}

/// `lab.sh --ipv6`: the same lab on IPv6 alone.
#[test]
fn every_mode_over_ipv6_answers_from_every_backend_and_leaves_nothing() {
    every_mode(&["--ipv6"], "[fd00:99::1]:7000");
}

fn every_mode(flags: &[&str], vip: &str) {
    require_root();
    for mode in ["local", "nat", "fullnat", "dsr-l2", "dsr-ipip"] {
        let started = Instant::now();
        let args: Vec<&str> = flags.iter().copied().chain([mode]).collect();
        let mut lab = Lab::start(&args);
        let status = lab.finish();
        let text = lab.text();
        assert!(status.success(), "lab.sh {args:?}: {status}\n{text}");
        assert!(
            text.contains(&format!(
                "replies received: 90/90; from {vip}: 90; from elsewhere: 0"
            )),
            "{mode}: every datagram answered from the VIP:\n{text}"
        );
        assert!(
            text.contains(&format!("vip = \"{vip}\"")),
            "{mode}: the config has the VIP of its family:\n{text}"
        );
        for k in 1..=3 {
            assert!(
                lab.output
                    .iter()
                    .any(|l| l.trim_start().starts_with(&format!("backend-{k} "))
                        && l.contains("datagrams")),
                "{mode}: backend-{k} answered:\n{text}"
            );
        }
        assert!(
            text.contains("lab: xdplb list") || text.contains("lab: xdplb stats"),
            "{mode}: the listing is shown:\n{text}"
        );
        assert!(
            text.contains(&format!("forwarding = \"{mode}\"")),
            "{mode}: the config runs the mode:\n{text}"
        );
        // The lab runs generic XDP, whose redirects need no NAPI on a veth's peer: no warning.
        assert!(
            !text.contains("cannot take XDP_REDIRECT"),
            "{mode}: a veth warning that does not apply to generic XDP:\n{text}"
        );
        assert!(text.contains("lab: removed the namespaces"), "{text}");
        lab.assert_nothing_left();
        println!(
            "lab.sh {args:?}: exit 0 in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn an_interrupted_lab_removes_everything() {
    require_root();
    let mut lab = Lab::start(&["nat"]);
    // Interrupt while the daemon starts, with the backends running.
    lab.wait_for_line("lab: starting xdplb run");
    lab.signal(Signal::INT);
    let status = lab.finish();
    assert_eq!(
        status.code(),
        Some(130),
        "exit 130 on Ctrl-C:\n{}",
        lab.text()
    );
    assert!(
        lab.text().contains("lab: removed the namespaces"),
        "{}",
        lab.text()
    );
    lab.assert_nothing_left();
}
