//! The demo backend (replaces the tutorial's server) and a client that checks what came back.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    thread,
    time::Duration,
};

use serde::Serialize;

pub mod new_flows;

/// Prefix of every demo-backend reply: `xdplb-backend <listen address>\n<echoed payload>`.
pub const REPLY_PREFIX: &str = "xdplb-backend ";

/// Serves every address in `listen`: answers each datagram with its own listening address and
/// the echoed payload. Runs until the process ends. Calls `ready` once every socket is bound.
///
/// With `name`, replies carry that name instead of the address (for backends that all listen on
/// the same address, as in direct server return).
pub fn serve_backends(
    listen: &[SocketAddr],
    name: Option<&str>,
    ready: impl FnOnce(),
) -> io::Result<()> {
    let mut sockets = Vec::new();
    for addr in listen {
        let s = UdpSocket::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
        sockets.push((*addr, s));
    }
    ready();
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|(addr, sock)| {
            let label = name.map_or_else(|| addr.to_string(), str::to_string);
            thread::spawn(move || serve_one(&label, &sock))
        })
        .collect();
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("a backend thread panicked")),
        }
    }
    Ok(())
}

fn serve_one(label: &str, sock: &UdpSocket) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = sock.recv_from(&mut buf)?;
        let mut reply = format!("{REPLY_PREFIX}{label}\n").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        // A reply that cannot be sent (e.g. the client is gone) is not the backend's problem.
        let _ = sock.send_to(&reply, peer);
    }
}

/// The unspecified address of `target`'s family, to bind a client socket to.
fn unspecified_like(target: SocketAddr) -> IpAddr {
    match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// What the client observed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ClientReport {
    pub target: String,
    pub flows: u32,
    pub sent: u32,
    pub replies: u32,
    /// Replies whose source (as the connected socket reports it) was not the target.
    pub replies_from_elsewhere: u32,
    /// Replies that did not echo the datagram sent.
    pub bad_echoes: u32,
    /// Datagrams answered, per backend address.
    pub per_backend: BTreeMap<String, u32>,
    /// New flows, per backend address (the backend of each flow's first reply).
    pub flows_per_backend: BTreeMap<String, u32>,
    /// Flows whose replies all came from one backend.
    pub sticky_flows: u32,
    /// The backend of each flow, in order (None when no reply came).
    pub flow_backends: Vec<Option<String>>,
}

impl ClientReport {
    /// True when every datagram was answered, from the target, by one backend per flow.
    pub fn all_good(&self) -> bool {
        self.replies == self.sent
            && self.replies_from_elsewhere == 0
            && self.bad_echoes == 0
            && self.sticky_flows == self.flows
    }

    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sent {} datagrams on {} flows (one connected socket each) to {}",
            self.sent, self.flows, self.target
        );
        let _ = writeln!(
            s,
            "replies received: {}/{}; from {}: {}; from elsewhere: {}; bad echoes: {}",
            self.replies,
            self.sent,
            self.target,
            self.replies - self.replies_from_elsewhere,
            self.replies_from_elsewhere,
            self.bad_echoes
        );
        let _ = writeln!(
            s,
            "flows that kept one backend: {}/{}",
            self.sticky_flows, self.flows
        );
        let _ = writeln!(s, "per backend (datagrams, flows):");
        for (b, n) in &self.per_backend {
            let f = self.flows_per_backend.get(b).copied().unwrap_or(0);
            let _ = writeln!(s, "  {b:<22} {n:>6} datagrams {f:>5} flows");
        }
        s
    }
}

/// Sends `packets` datagrams on each of `flows` connected sockets (one source port each) to
/// `target`, waits up to `timeout` for each reply, and pauses `gap` after each reply. Each
/// datagram is padded with `x` to `payload_bytes` (more than the MTU makes IP fragments both
/// ways, since the backends echo it).
pub fn run_client(
    target: SocketAddr,
    bind: Option<IpAddr>,
    flows: u32,
    packets: u32,
    timeout: Duration,
    gap: Duration,
    payload_bytes: usize,
) -> io::Result<ClientReport> {
    let mut report = ClientReport {
        target: target.to_string(),
        flows,
        ..ClientReport::default()
    };
    let mut buf = vec![0u8; 65536];
    // Every socket stays open until the end, so no two flows share a source port.
    let mut open = Vec::with_capacity(flows as usize);
    for flow in 0..flows {
        let local = SocketAddr::new(bind.unwrap_or_else(|| unspecified_like(target)), 0);
        let sock = UdpSocket::bind(local)?;
        sock.connect(target)?;
        sock.set_read_timeout(Some(timeout))?;
        let mut backends_seen: Vec<String> = Vec::new();
        for seq in 0..packets {
            let mut payload = format!("flow {flow} seq {seq} ");
            while payload.len() < payload_bytes {
                payload.push('x');
            }
            sock.send(payload.as_bytes())?;
            report.sent += 1;
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                // ECONNREFUSED: an ICMP error came back; the datagram was not answered.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            report.replies += 1;
            if !gap.is_zero() {
                thread::sleep(gap);
            }
            if from != target {
                report.replies_from_elsewhere += 1;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            let Some((head, echo)) = text.split_once('\n') else {
                report.bad_echoes += 1;
                continue;
            };
            if echo != payload {
                report.bad_echoes += 1;
            }
            let backend = head.strip_prefix(REPLY_PREFIX).unwrap_or(head).to_string();
            *report.per_backend.entry(backend.clone()).or_default() += 1;
            if !backends_seen.contains(&backend) {
                backends_seen.push(backend);
            }
        }
        if let Some(first) = backends_seen.first() {
            *report.flows_per_backend.entry(first.clone()).or_default() += 1;
        }
        if backends_seen.len() == 1 {
            report.sticky_flows += 1;
        }
        report.flow_backends.push(backends_seen.first().cloned());
        open.push(sock);
    }
    Ok(report)
}

/// What [`flood`] sent.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    pub sent: u64,
    /// Sends that failed (full socket buffers, ICMP errors reported on the socket).
    pub errors: u64,
    pub seconds: f64,
}

/// Sends small datagrams, round robin over `flows` connected sockets (flow `i` to
/// `targets[i % targets.len()]`, each with its own source port), for `duration`: as fast as
/// possible when `rate` is 0, else at `rate` datagrams a second. For the forwarding benchmark;
/// nothing is read back.
pub fn flood(
    targets: &[SocketAddr],
    flows: u32,
    duration: Duration,
    rate: u64,
    payload_bytes: usize,
) -> io::Result<FloodReport> {
    if targets.is_empty() || flows == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "flood needs at least one target and one flow",
        ));
    }
    let mut sockets = Vec::with_capacity(flows as usize);
    for i in 0..flows as usize {
        let target = targets[i % targets.len()];
        let s = UdpSocket::bind(SocketAddr::new(unspecified_like(target), 0))?;
        s.connect(target)?;
        s.set_nonblocking(true)?;
        sockets.push(s);
    }
    let payload = vec![0x78u8; payload_bytes];
    let start = std::time::Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    const BATCH: u64 = 64;
    'outer: loop {
        for _ in 0..BATCH {
            let s = &sockets[(sent + errors) as usize % sockets.len()];
            match s.send(&payload) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break 'outer;
        }
        if rate > 0 {
            // Sleep until the time the datagrams sent so far are due at `rate`.
            let due = Duration::from_secs_f64((sent + errors) as f64 / rate as f64);
            if due > elapsed {
                thread::sleep(due.saturating_sub(elapsed));
            }
        }
    }
    Ok(FloodReport {
        sent,
        errors,
        seconds: start.elapsed().as_secs_f64(),
    })
}
