//! The bench's own network namespace, in which the remote forwarding modes find their backends
//! routed and resolved, so that they measure their forwarding path and not their drop path.
//!
//! One veth pair (both ends in the namespace) carries 10.201.0.1/16, and every backend has a
//! permanent neighbour entry on it. BPF_PROG_TEST_RUN runs as if the frame arrived on the
//! calling thread's namespace's `lo` and sends nothing, so nothing leaves the namespace.
//!
//! The namespace is made with iproute2 (`ip netns add`, `ip -batch`): one command per setup step,
//! the same commands an operator would type, instead of a netlink client written for the bench.
//! The guard deletes it when dropped, on error too; the thread that entered it keeps it alive
//! until the thread ends.

use std::{
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
};

use super::BenchError;

/// The address of the balancer's side of the veth pair (also the fullnat source).
pub const LOCAL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The namespace's IPv6 address (its `/32` holds the IPv6 backends, `fd00:201:2::/64`).
pub const LOCAL_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 1);
const DEV: &str = "xb0";
const PEER: &str = "xb1";

/// A named network namespace, deleted on drop.
pub struct BenchNetns {
    name: String,
}

impl BenchNetns {
    /// Creates `xdplb-bench-PID` with `lo` up, forwarding on, the veth pair and a permanent
    /// neighbour entry for each of `backends` (which must lie in 10.201.0.0/16).
    pub fn create(backends: &[Ipv4Addr], backends6: &[Ipv6Addr]) -> Result<Self, BenchError> {
        let name = format!("xdplb-bench-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]), None)?;
        let ns = BenchNetns { name };
        let mut batch = format!(
            "link set lo up\n\
             link add {DEV} type veth peer name {PEER}\n\
             addr add {LOCAL_ADDR}/16 dev {DEV}\n\
             addr add {LOCAL_ADDR6}/32 dev {DEV} nodad\n\
             link set {DEV} up\n\
             link set {PEER} up\n"
        );
        for b in backends {
            // A locally administered MAC per backend.
            let [_, _, hi, lo] = b.octets();
            batch.push_str(&format!(
                "neigh add {b} lladdr 02:00:0a:c9:{hi:02x}:{lo:02x} dev {DEV} nud permanent\n"
            ));
        }
        for b in backends6 {
            let [.., hi, lo] = b.octets();
            batch.push_str(&format!(
                "neigh add {b} lladdr 02:00:fd:c9:{hi:02x}:{lo:02x} dev {DEV} nud permanent\n"
            ));
        }
        run(
            Command::new("ip").args(["-n", &ns.name, "-batch", "-"]),
            Some(&batch),
        )?;
        // bpf_fib_lookup answers "forwarding disabled" unless the receiving interface forwards.
        run(
            Command::new("ip").args([
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ]),
            None,
        )?;
        Ok(ns)
    }

    /// Moves the calling thread (only it) into the namespace.
    pub fn enter(&self) -> Result<(), BenchError> {
        let path = format!("/run/netns/{}", self.name);
        let f = std::fs::File::open(&path)
            .map_err(|e| BenchError::Harness(format!("opening {path}: {e}")))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| BenchError::Harness(format!("entering network namespace {path}: {e}")))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` (with `stdin` fed to it), failing with its stderr unless it succeeds.
fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<(), BenchError> {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| BenchError::Harness(format!("running {what}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| BenchError::Harness(format!("writing to {what}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BenchError::Harness(format!("running {what}: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Harness(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
