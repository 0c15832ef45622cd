//! Network namespaces and child processes that clean up after themselves, even on panic.

use std::{
    io::{BufRead, BufReader, Read},
    os::fd::AsFd,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use rustix::process::Signal;

/// Runs a command to completion within `timeout`; panics with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = run_bounded(args, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "`{}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command within `timeout` (killing it after), returning its output whatever the status.
/// Its output is read while it runs, so a child that writes more than a pipe holds never blocks
/// on a full pipe (and so never looks hung).
pub fn run_bounded(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{}`: {e}", args.join(" ")));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status, false),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                break (child.wait().expect("reap the killed child"), true);
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{}`: {e}", args.join(" ")),
        }
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        !timed_out,
        "`{}` did not finish within {timeout:?}; stderr: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `xdplb-<tag>-<pid>` with its loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("xdplb-{tag}{}-{}", name_suffix(), std::process::id());
        // A leftover from a crashed run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The argv prefix that runs a command inside this namespace.
    pub fn prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn exec_unchecked(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_bounded(&full, Duration::from_secs(30))
    }

    /// `Udp InCsumErrors` and `Udp InDatagrams` from /proc/net/snmp inside the namespace.
    pub fn udp_counters(&self) -> (u64, u64) {
        let out = self.exec(&["cat", "/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let names: Vec<&str> = lines
            .next()
            .expect("Udp header")
            .split_whitespace()
            .collect();
        let values: Vec<&str> = lines
            .next()
            .expect("Udp values")
            .split_whitespace()
            .collect();
        let get = |n: &str| -> u64 {
            let i = names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("no {n}"));
            values[i].parse().expect("number")
        };
        (get("InCsumErrors"), get("InDatagrams"))
    }

    /// `Udp6InCsumErrors` and `Udp6InDatagrams` from /proc/net/snmp6 inside the namespace.
    pub fn udp6_counters(&self) -> (u64, u64) {
        let out = self.exec(&["cat", "/proc/net/snmp6"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |n: &str| -> u64 {
            text.lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next() == Some(n)).then(|| f.next().and_then(|v| v.parse().ok()))
                })
                .flatten()
                .unwrap_or_else(|| panic!("no {n} in /proc/net/snmp6: {text}"))
        };
        (get("Udp6InCsumErrors"), get("Udp6InDatagrams"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces, XDP/TC attachments go with them.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A background process, killed on drop, whose stdout and stderr lines are collected.
pub struct Daemon {
    pub child: Option<Child>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    what: String,
}

impl Daemon {
    pub fn spawn(args: &[String]) -> Self {
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Daemon {
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
            what: args.join(" "),
        }
    }

    /// Waits up to `timeout` for a line containing `needle`; panics with everything seen if none.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                let hit = line.contains(needle);
                self.seen.push(line);
                if hit {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                while let Ok(l) = self.lines.try_recv() {
                    self.seen.push(l);
                }
                if self.seen.iter().any(|l| l.contains(needle)) {
                    return;
                }
                panic!(
                    "`{}` exited ({status}) before printing {needle:?}:\n{}",
                    self.what,
                    self.seen.join("\n")
                );
            }
        }
        panic!(
            "`{}` did not print {needle:?} within {timeout:?}:\n{}",
            self.what,
            self.seen.join("\n")
        );
    }

    /// After the process exited: collects the lines still on their way (stdout and stderr are
    /// read by two threads, so a line of one may arrive after a later line of the other), until
    /// both streams end or `timeout` passes.
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        sigterm(&child);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.seen.push(l);
                }
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{}` ignored SIGTERM for {timeout:?}", self.what);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` passes signals on; SIGKILL of the wrapper would orphan the child,
            // so ask politely first.
            sigterm(&c);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asks our own child `child` to stop (SIGTERM); one that has exited already is fine.
fn sigterm(child: &Child) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), Signal::TERM);
}

/// A bpffs mounted on a fresh directory in the host's mount namespace, so that every
/// `ip netns exec` (which remounts /sys) sees the same pins. Unmounted on drop, which frees
/// whatever is still pinned in it.
pub struct Bpffs {
    pub path: String,
}

impl Bpffs {
    pub fn mount(tag: &str) -> Self {
        let path = std::env::temp_dir()
            .join(format!("xdplb-bpffs-{tag}-{}", std::process::id()))
            .display()
            .to_string();
        let _ = Command::new("umount").args(["-l", &path]).output();
        std::fs::create_dir_all(&path).expect("create bpffs mount point");
        sh(&["mount", "-t", "bpf", "bpf", &path]);
        Bpffs { path }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", &self.path]).output();
        let _ = std::fs::remove_dir(&self.path);
    }
}

thread_local! {
    static NAME_SUFFIX: std::cell::Cell<&'static str> = const { std::cell::Cell::new("") };
}

/// Makes the names of namespaces (and run directories) this thread creates from now on end in
/// `suffix`, so that two variants of one test never share a name.
pub fn set_name_suffix(suffix: &'static str) {
    NAME_SUFFIX.with(|s| s.set(suffix));
}

/// See [`set_name_suffix`].
pub fn name_suffix() -> &'static str {
    NAME_SUFFIX.with(std::cell::Cell::get)
}

/// The `ip` arguments that add `addr` as a permanent neighbour with MAC `mac` on `dev`.
pub fn permanent_neighbour<'a>(addr: &'a str, mac: &'a str, dev: &'a str) -> [&'a str; 9] {
    [
        "neigh",
        "add",
        addr,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]
}

/// The two-veth topology of the tier-2 forwarding tests: a namespace named after `tag` with a
/// veth `fa` (02:00:00:00:0a:01, 10.60.1.1/24, the backends' side) and its peer `fb`
/// (02:00:00:00:0b:01, 10.60.2.1/24, the clients' side), the permanent `neighbours` (address,
/// MAC, device) and IPv4 forwarding on. `cases` then runs in a thread moved into it, where FIB
/// lookups see it; a panic there fails the caller with `what`.
pub fn in_fib_topology(
    tag: &str,
    neighbours: &[(String, String, &str)],
    what: &str,
    cases: impl FnOnce() + Send,
) {
    let ns = Netns::new(tag);
    let n = |args: &[&str]| {
        let mut full = vec!["ip", "-n", ns.name.as_str()];
        full.extend_from_slice(args);
        sh(&full);
    };
    n(&[
        "link",
        "add",
        "fa",
        "address",
        "02:00:00:00:0a:01",
        "type",
        "veth",
        "peer",
        "name",
        "fb",
        "address",
        "02:00:00:00:0b:01",
    ]);
    n(&["addr", "add", "10.60.1.1/24", "dev", "fa"]);
    n(&["addr", "add", "10.60.2.1/24", "dev", "fb"]);
    n(&["link", "set", "fa", "up"]);
    n(&["link", "set", "fb", "up"]);
    for (addr, mac, dev) in neighbours {
        n(&permanent_neighbour(addr, mac, dev));
    }
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let path = format!("/run/netns/{}", ns.name);
    thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).expect("open the namespace");
            // setns(2) moves only this thread.
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the topology's namespace");
            cases();
        })
        .join()
        .unwrap_or_else(|_| panic!("{what}"));
    });
}

/// The neighbours of the forwarding tests' topology: two backends on `fa`, a client on `fb`.
pub fn fib_neighbours() -> Vec<(String, String, &'static str)> {
    [
        ("10.60.1.2", "02:00:00:00:01:02", "fa"),
        ("10.60.1.3", "02:00:00:00:01:03", "fa"),
        ("10.60.2.2", "02:00:00:00:02:02", "fb"),
    ]
    .into_iter()
    .map(|(a, m, d)| (a.to_string(), m.to_string(), d))
    .collect()
}
