//! Active health checks: one probe task per checked backend on the daemon's tokio runtime, and
//! the book that turns their results into up/down states with rise and fall thresholds.
//!
//! A [`Probe`] checks one backend once, bounded by its timeout; [`start`] runs one per checked
//! backend at the service's interval and [`Checkers`] cancels them all at once (on reload, on
//! an API change, at exit), a probe in the middle of a check included.
//!
//! The data plane learns about health through the config it is given: [`HealthBook::effective`]
//! marks an unhealthy backend drained (`on_failure = "keep-flows"`: no new flows, live flows
//! stay) or leaves it out (`"move-flows"`: its flows move on their next packet), and the
//! reconciler applies that like any other change, atomically.

use std::{
    collections::HashMap,
    future::Future,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use hyper::{
    Request,
    body::Bytes,
    header::{CONNECTION, HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{
    net::{TcpStream, UdpSocket},
    sync::mpsc::UnboundedSender,
    time::{Instant, MissedTickBehavior, timeout_at},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::config::{Config, HealthCheck, HealthCheckKind, OnFailure};

/// The result of one check.
#[derive(Debug, Clone)]
pub struct HealthEvent {
    pub service: String,
    pub backend: SocketAddr,
    pub ok: bool,
    /// Why it failed, or what succeeded.
    pub detail: String,
}

/// What one check yields: what succeeded, or why it failed (for the log and `xdplb stats`).
pub type CheckResult = Result<String, String>;

/// A check under way, as a [`Probe`] returns it.
pub type Check<'a> = Pin<Box<dyn Future<Output = CheckResult> + Send + 'a>>;

/// One kind of health check. `check` probes `target` once and always ends within the probe's
/// timeout; dropping the future abandons the check at once (its sockets close).
pub trait Probe: Send + Sync {
    fn check(&self, target: SocketAddr) -> Check<'_>;
}

/// The probe for `kind` with `timeout`.
pub fn probe(kind: &HealthCheckKind, timeout: Duration) -> Arc<dyn Probe> {
    match kind {
        HealthCheckKind::Udp { payload, expect } => Arc::new(UdpProbe {
            payload: payload.clone(),
            expect: expect.clone(),
            timeout,
        }),
        HealthCheckKind::Tcp => Arc::new(TcpProbe { timeout }),
        HealthCheckKind::Http {
            path,
            expect_status,
        } => Arc::new(HttpProbe {
            path: path.clone(),
            expect_status: *expect_status,
            timeout,
        }),
    }
}

/// Runs one check of `kind` against `target` within `timeout`.
pub async fn check_once(
    kind: &HealthCheckKind,
    target: SocketAddr,
    timeout: Duration,
) -> CheckResult {
    probe(kind, timeout).check(target).await
}

/// Sends `payload` on a connected UDP socket; healthy if a reply comes back within `timeout`
/// (containing `expect`, if given). An ICMP port unreachable shows as "refused".
struct UdpProbe {
    payload: Vec<u8>,
    expect: Option<Vec<u8>>,
    timeout: Duration,
}

impl UdpProbe {
    async fn run(&self, target: SocketAddr) -> CheckResult {
        let deadline = Instant::now() + self.timeout;
        let any: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(any)
            .await
            .map_err(|e| format!("udp socket: {e}"))?;
        // Connected, so the kernel reports an ICMP error for this peer on the socket and
        // drops datagrams from anyone else.
        sock.connect(target)
            .await
            .map_err(|e| format!("udp connect: {e}"))?;
        let io_error = |what: &str, e: std::io::Error| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "udp refused: port unreachable (nothing listens there)".to_string()
            }
            _ => format!("udp {what}: {e}"),
        };
        let no_reply = || format!("no udp reply within {:?}", self.timeout);
        timeout_at(deadline, sock.send(&self.payload))
            .await
            .map_err(|_| no_reply())?
            .map_err(|e| io_error("send", e))?;
        // A datagram is at most 64 KiB, so `expect` is searched in the whole reply.
        let mut buf = vec![0u8; 65_536];
        let n = timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| no_reply())?
            .map_err(|e| io_error("receive", e))?;
        match &self.expect {
            Some(want) if !contains(&buf[..n], want) => Err(format!(
                "udp reply of {n} bytes does not contain {:?}",
                String::from_utf8_lossy(want)
            )),
            _ => Ok(format!("udp reply of {n} bytes")),
        }
    }
}

impl Probe for UdpProbe {
    fn check(&self, target: SocketAddr) -> Check<'_> {
        Box::pin(self.run(target))
    }
}

/// Whether `needle` occurs in `haystack` (an empty needle always does).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Healthy if a TCP connection is accepted within `timeout`.
struct TcpProbe {
    timeout: Duration,
}

impl Probe for TcpProbe {
    fn check(&self, target: SocketAddr) -> Check<'_> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, TcpStream::connect(target)).await {
                Ok(Ok(_)) => Ok("tcp connect".to_string()),
                Ok(Err(e)) => Err(format!("tcp connect: {e}")),
                Err(_) => Err(format!("tcp connect: no answer within {:?}", self.timeout)),
            }
        })
    }
}

/// How much of an HTTP check's response body is read: enough to quote it in a failure, and
/// bounded so that a huge or endless body cannot hold the probe.
const HTTP_BODY_LIMIT: usize = 4096;

/// How much of the body a failure quotes.
const HTTP_BODY_QUOTE: usize = 100;

/// `GET path` with hyper's HTTP/1.1 client on a fresh connection; healthy if the response's
/// status is `expect_status`, all within `timeout`.
struct HttpProbe {
    path: String,
    expect_status: u16,
    timeout: Duration,
}

impl HttpProbe {
    async fn run(&self, target: SocketAddr) -> CheckResult {
        let deadline = Instant::now() + self.timeout;
        let stream = timeout_at(deadline, TcpStream::connect(target))
            .await
            .map_err(|_| format!("http connect: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("http connect: {e}"))?;
        let request = Request::get(self.path.as_str())
            .header(HOST, target.to_string())
            .header(USER_AGENT, "xdplb-health")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("http request for {:?}: {e}", self.path))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("http request: {e}"))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            // The start of the body, to quote, and how much of it was read.
            let (mut head, mut read) = (Vec::new(), 0);
            while read < HTTP_BODY_LIMIT {
                match body.frame().await {
                    None => break,
                    Some(Err(e)) => return Err(format!("http status {status}, then body: {e}")),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            read += data.len();
                            let room = HTTP_BODY_QUOTE.saturating_sub(head.len());
                            head.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                }
            }
            Ok((status, head))
        };
        // The connection is driven here, not in a task of its own, so that dropping this
        // future (a timeout, a cancellation) ends the connection with it.
        let checked = async {
            tokio::pin!(exchange, conn);
            tokio::select! {
                r = &mut exchange => r,
                // The server closed the connection: what it sent is still in the exchange.
                _ = &mut conn => exchange.await,
            }
        };
        let (status, head) = timeout_at(deadline, checked).await.map_err(|_| {
            format!(
                "http GET {}: no complete response within {:?}",
                self.path, self.timeout
            )
        })??;
        if status == self.expect_status {
            return Ok(format!("http status {status}"));
        }
        let quote = String::from_utf8_lossy(&head)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Err(if quote.is_empty() {
            format!("http status {status}, expected {}", self.expect_status)
        } else {
            format!(
                "http status {status}, expected {}: {quote:?}",
                self.expect_status
            )
        })
    }
}

impl Probe for HttpProbe {
    fn check(&self, target: SocketAddr) -> Check<'_> {
        Box::pin(self.run(target))
    }
}

/// The probe tasks of one config. Dropping this (or [`Checkers::stop`]) cancels them all at
/// once, a probe in the middle of a check included.
pub struct Checkers {
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// What the probes check, as [`checked`] lists it.
    checks: Vec<Checked>,
}

impl Checkers {
    /// What these probes check: a config with the same [`checked`] list needs no new ones.
    pub fn checks(&self) -> &[Checked] {
        &self.checks
    }

    /// Cancels every probe, without waiting for them to end.
    pub fn stop(&mut self) {
        self.cancel.cancel();
    }

    /// How many probe tasks have not ended yet.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// The probe tasks, to wait for their end (`wait()`) after a stop or a drop.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts a probe task per backend of every service with a health check, on the current tokio
/// runtime (call it from inside one). Each checks at once, then every `interval` (a check that
/// overruns delays the next rather than bunching them up), and sends every result to `tx`.
pub fn start(cfg: &Config, tx: &UnboundedSender<HealthEvent>) -> Checkers {
    let mut checkers = Checkers {
        cancel: CancellationToken::new(),
        tasks: TaskTracker::new(),
        checks: Vec::new(),
    };
    checkers.tasks.close();
    let runtime = match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!("health checks not started: {e}");
            return checkers;
        }
    };
    checkers.checks = checked(cfg);
    for svc in &cfg.services {
        let Some(hc) = &svc.health_check else {
            continue;
        };
        let probe = probe(&hc.kind, hc.timeout);
        for b in &svc.backends {
            let mut target = b.address;
            target.set_port(hc.port.unwrap_or(target.port()));
            let checker = Checker {
                probe: probe.clone(),
                target,
                service: svc.name.clone(),
                backend: b.address,
                // tokio's interval refuses a zero period; the config allows 100ms..=1h.
                interval: hc.interval.max(Duration::from_millis(1)),
                tx: tx.clone(),
            };
            let cancel = checkers.cancel.clone();
            checkers.tasks.spawn_on(
                async move { cancel.run_until_cancelled(checker.run()).await },
                &runtime,
            );
        }
    }
    checkers
}

/// A checked backend: its service, its address and its check.
pub type Checked = (String, SocketAddr, HealthCheck);

/// Every checked backend of `cfg`, in config order: what [`start`] starts a probe for. Two
/// configs with the same list need no new probes.
pub fn checked(cfg: &Config) -> Vec<Checked> {
    cfg.services
        .iter()
        .filter_map(|svc| svc.health_check.as_ref().map(|hc| (svc, hc)))
        .flat_map(|(svc, hc)| {
            svc.backends
                .iter()
                .map(|b| (svc.name.clone(), b.address, hc.clone()))
        })
        .collect()
}

/// One backend's probe task.
struct Checker {
    probe: Arc<dyn Probe>,
    /// Where the probe goes: the backend's address, with the check's own port if it has one.
    target: SocketAddr,
    service: String,
    backend: SocketAddr,
    interval: Duration,
    tx: UnboundedSender<HealthEvent>,
}

impl Checker {
    /// Checks until the receiver is gone (or the task is cancelled from outside).
    async fn run(self) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // The first tick is immediate.
            ticks.tick().await;
            let (ok, detail) = match self.probe.check(self.target).await {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            let event = HealthEvent {
                service: self.service.clone(),
                backend: self.backend,
                ok,
                detail,
            };
            if self.tx.send(event).is_err() {
                return;
            }
        }
    }
}

/// Health of one backend.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackendHealth {
    pub up: bool,
    /// Consecutive results that disagree with `up`.
    #[serde(skip)]
    pub streak: u32,
    /// The last check's outcome.
    pub detail: String,
}

/// A state change, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub service: String,
    pub backend: SocketAddr,
    pub up: bool,
    pub reason: String,
}

/// Up/down state of every checked backend. A backend starts up, so a fresh daemon forwards at
/// once; `fall` consecutive failures take it out, `rise` consecutive successes bring it back.
#[derive(Debug, Default)]
pub struct HealthBook {
    states: HashMap<(String, SocketAddr), BackendHealth>,
}

impl HealthBook {
    /// Records a result; returns the transition it caused, if any.
    pub fn record(&mut self, ev: &HealthEvent, hc: &HealthCheck) -> Option<Transition> {
        let entry = self
            .states
            .entry((ev.service.clone(), ev.backend))
            .or_insert_with(|| BackendHealth {
                up: true,
                streak: 0,
                detail: String::new(),
            });
        entry.detail.clone_from(&ev.detail);
        if ev.ok == entry.up {
            entry.streak = 0;
            return None;
        }
        entry.streak += 1;
        let needed = if entry.up { hc.fall } else { hc.rise };
        if entry.streak < needed {
            return None;
        }
        entry.up = ev.ok;
        entry.streak = 0;
        Some(Transition {
            service: ev.service.clone(),
            backend: ev.backend,
            up: ev.ok,
            reason: if ev.ok {
                format!("{} consecutive successes ({})", hc.rise, ev.detail)
            } else {
                format!("{} consecutive failures ({})", hc.fall, ev.detail)
            },
        })
    }

    pub fn is_up(&self, service: &str, backend: SocketAddr) -> bool {
        self.states
            .get(&(service.to_string(), backend))
            .is_none_or(|h| h.up)
    }

    pub fn get(&self, service: &str, backend: SocketAddr) -> Option<&BackendHealth> {
        self.states.get(&(service.to_string(), backend))
    }

    /// Forgets backends that `cfg` no longer checks.
    pub fn retain_checked(&mut self, cfg: &Config) {
        self.states.retain(|(service, backend), _| {
            cfg.services.iter().any(|s| {
                s.name == *service
                    && s.health_check.is_some()
                    && s.backends.iter().any(|b| b.address == *backend)
            })
        });
    }

    /// The config the data plane should run: `cfg` with every unhealthy backend drained
    /// (keep-flows) or left out (move-flows).
    pub fn effective(&self, cfg: &Config) -> Config {
        let mut out = cfg.clone();
        for svc in &mut out.services {
            let Some(hc) = &svc.health_check else {
                continue;
            };
            let name = svc.name.clone();
            match hc.on_failure {
                OnFailure::KeepFlows => {
                    for b in &mut svc.backends {
                        if !self.is_up(&name, b.address) {
                            b.drain = true;
                        }
                    }
                }
                OnFailure::MoveFlows => svc.backends.retain(|b| self.is_up(&name, b.address)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::config::parse;

    fn cfg(on_failure: &str) -> Config {
        parse(
            &format!(
                r#"interfaces = ["lo"]
[[service]]
name = "s"
vip = "127.0.0.1:9875"
[service.health_check]
type = "tcp"
rise = 2
fall = 3
on_failure = "{on_failure}"
[[service.backend]]
address = "127.0.0.1:9876"
[[service.backend]]
address = "127.0.0.1:9877"
"#
            ),
            "test",
        )
        .expect("valid")
    }

    #[test]
    fn probes_need_restarting_only_when_what_is_checked_changes() {
        let base = cfg("keep-flows");
        assert_eq!(super::checked(&base).len(), 2);
        let mut reweighted = base.clone();
        reweighted.services[0].backends[1].weight = 7;
        reweighted.services[0].backends[0].drain = true;
        assert_eq!(
            super::checked(&reweighted),
            super::checked(&base),
            "weights and drains: same probes"
        );
        let mut other_policy = base.clone();
        other_policy.services[0]
            .health_check
            .as_mut()
            .expect("checked")
            .fall = 5;
        assert_ne!(
            super::checked(&other_policy),
            super::checked(&base),
            "another check"
        );
        let mut fewer = base.clone();
        fewer.services[0].backends.pop();
        assert_eq!(super::checked(&fewer).len(), 1);
        let mut unchecked = base;
        unchecked.services[0].health_check = None;
        assert!(super::checked(&unchecked).is_empty());
    }

    fn ev(ok: bool) -> HealthEvent {
        HealthEvent {
            service: "s".into(),
            backend: "127.0.0.1:9877".parse().expect("literal"),
            ok,
            detail: if ok { "fine".into() } else { "refused".into() },
        }
    }

    #[test]
    fn fall_and_rise_thresholds_gate_the_transitions() {
        let c = cfg("keep-flows");
        let hc = c.services[0].health_check.clone().expect("health check");
        let mut book = HealthBook::default();
        assert_eq!(book.record(&ev(false), &hc), None);
        assert_eq!(book.record(&ev(false), &hc), None);
        // A success in between resets the count.
        assert_eq!(book.record(&ev(true), &hc), None);
        assert_eq!(book.record(&ev(false), &hc), None);
        assert_eq!(book.record(&ev(false), &hc), None);
        let t = book
            .record(&ev(false), &hc)
            .expect("third failure in a row");
        assert!(
            !t.up && t.reason.contains("3 consecutive failures") && t.reason.contains("refused"),
            "{t:?}"
        );
        assert_eq!(book.record(&ev(true), &hc), None);
        let t = book
            .record(&ev(true), &hc)
            .expect("second success in a row");
        assert!(
            t.up && t.reason.contains("2 consecutive successes"),
            "{t:?}"
        );
    }

    #[test]
    fn an_unhealthy_backend_is_drained_or_removed_by_policy() {
        for (policy, keep) in [("keep-flows", true), ("move-flows", false)] {
            let c = cfg(policy);
            let hc = c.services[0].health_check.clone().expect("health check");
            let mut book = HealthBook::default();
            for _ in 0..3 {
                book.record(&ev(false), &hc);
            }
            let eff = book.effective(&c);
            let b = &eff.services[0].backends;
            if keep {
                assert_eq!(b.len(), 2, "{policy}");
                assert!(
                    b[1].drain && !b[0].drain,
                    "{policy}: the unhealthy backend is drained"
                );
            } else {
                assert_eq!(b.len(), 1, "{policy}: the unhealthy backend is left out");
                assert_eq!(b[0].address.port(), 9876);
            }
        }
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc::{UnboundedReceiver, unbounded_channel},
    };
    use tokio_util::task::AbortOnDropHandle;

    /// A config with one service whose health check is `check` (TOML lines) and whose
    /// backends are `backends`.
    fn checked(check: &str, backends: &[SocketAddr]) -> Config {
        let mut text = format!(
            "interfaces = [\"lo\"]\n[[service]]\nname = \"s\"\nvip = \"127.0.0.1:9875\"\n\
             [service.health_check]\n{check}\n"
        );
        for b in backends {
            let _ = writeln!(text, "[[service.backend]]\naddress = \"{b}\"");
        }
        parse(&text, "test").expect("valid")
    }

    /// A loopback port that nothing listens on (UDP and TCP alike, very likely).
    fn closed_port() -> SocketAddr {
        closed_port_on("127.0.0.1:0")
    }

    /// A port of `bind` (`ADDRESS:0`) that nothing listens on.
    fn closed_port_on(bind: &str) -> SocketAddr {
        let sock = std::net::UdpSocket::bind(bind).expect("bind");
        let addr = sock.local_addr().expect("addr");
        drop(sock);
        addr
    }

    /// A loopback UDP server that counts the datagrams it gets and answers each with `reply`
    /// (or never, if `None`), until the handle is dropped.
    async fn udp_server(
        reply: Option<&'static [u8]>,
    ) -> (SocketAddr, Arc<AtomicUsize>, AbortOnDropHandle<()>) {
        udp_server_on("127.0.0.1:0", reply).await
    }

    /// [`udp_server`] on `bind` (`ADDRESS:0`).
    async fn udp_server_on(
        bind: &str,
        reply: Option<&'static [u8]>,
    ) -> (SocketAddr, Arc<AtomicUsize>, AbortOnDropHandle<()>) {
        let sock = UdpSocket::bind(bind).await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = sock.recv_from(&mut buf).await {
                counter.fetch_add(1, Ordering::SeqCst);
                if let Some(r) = reply {
                    let _ = sock.send_to(r, from).await;
                }
            }
        });
        (addr, seen, AbortOnDropHandle::new(task))
    }

    /// A loopback HTTP server that sends `response` (raw bytes, or nothing if `None`) to every
    /// request and reports each request's head, until the handle is dropped.
    async fn http_server(
        response: Option<&'static str>,
    ) -> (SocketAddr, UnboundedReceiver<String>, AbortOnDropHandle<()>) {
        http_server_on("127.0.0.1:0", response).await
    }

    /// [`http_server`] on `bind` (`ADDRESS:0`).
    async fn http_server_on(
        bind: &str,
        response: Option<&'static str>,
    ) -> (SocketAddr, UnboundedReceiver<String>, AbortOnDropHandle<()>) {
        let listener = TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (heads_tx, heads) = unbounded_channel();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads_tx.send(String::from_utf8_lossy(&head).into_owned());
                match response {
                    Some(r) => {
                        let _ = conn.write_all(r.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    }
                    // Keep it open and say nothing.
                    None => open.push(conn),
                }
            }
        });
        (addr, heads, AbortOnDropHandle::new(task))
    }

    #[tokio::test]
    async fn tcp_probe_sees_a_listening_and_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let open = listener.local_addr().expect("addr");
        let t = Duration::from_millis(300);
        assert_eq!(
            check_once(&HealthCheckKind::Tcp, open, t).await,
            Ok("tcp connect".to_string())
        );
        drop(listener);
        let err = check_once(&HealthCheckKind::Tcp, open, t)
            .await
            .expect_err("closed");
        assert!(
            err.starts_with("tcp connect: ") && err.contains("refused"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn udp_probe_needs_a_reply_with_expect_and_says_refused_for_a_closed_port() {
        let (addr, seen, _server) = udp_server(Some(b"hello from xdplb-backend 1")).await;
        let t = Duration::from_millis(500);
        let kind = |expect: Option<&[u8]>| HealthCheckKind::Udp {
            payload: b"ping".to_vec(),
            expect: expect.map(<[u8]>::to_vec),
        };
        assert_eq!(
            check_once(&kind(None), addr, t).await,
            Ok("udp reply of 26 bytes".to_string())
        );
        assert!(
            check_once(&kind(Some(b"xdplb-backend")), addr, t)
                .await
                .is_ok()
        );
        let err = check_once(&kind(Some(b"other")), addr, t)
            .await
            .expect_err("wrong reply");
        assert!(err.contains("does not contain \"other\""), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), 3, "one datagram per check");

        let err = check_once(&kind(None), closed_port(), t)
            .await
            .expect_err("nothing listens");
        assert!(
            err.contains("refused") && err.contains("port unreachable"),
            "{err}"
        );
    }

    /// IPv6 backends are probed over IPv6 sockets: UDP (with its ICMPv6 port unreachable seen
    /// as "refused"), TCP and HTTP (with the bracketed Host header) on ::1.
    #[tokio::test]
    async fn probes_reach_ipv6_backends() {
        let t = Duration::from_millis(500);
        let (addr, seen, _server) = udp_server_on("[::1]:0", Some(b"pong over v6")).await;
        assert!(addr.is_ipv6());
        let udp = HealthCheckKind::Udp {
            payload: b"ping".to_vec(),
            expect: Some(b"pong".to_vec()),
        };
        assert_eq!(
            check_once(&udp, addr, t).await,
            Ok("udp reply of 12 bytes".to_string())
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        let err = check_once(&udp, closed_port_on("[::1]:0"), t)
            .await
            .expect_err("nothing listens");
        assert!(err.contains("refused"), "{err}");

        let listener = TcpListener::bind("[::1]:0").await.expect("bind");
        let open = listener.local_addr().expect("addr");
        assert_eq!(
            check_once(&HealthCheckKind::Tcp, open, t).await,
            Ok("tcp connect".to_string())
        );
        drop(listener);

        let (addr, mut heads, _server) = http_server_on(
            "[::1]:0",
            Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        )
        .await;
        let http = HealthCheckKind::Http {
            path: "/".to_string(),
            expect_status: 200,
        };
        assert_eq!(
            check_once(&http, addr, t).await,
            Ok("http status 200".to_string())
        );
        let head = heads.recv().await.expect("a request").to_ascii_lowercase();
        assert!(
            head.contains(&format!("host: [::1]:{}\r\n", addr.port())),
            "{head}"
        );
    }

    #[tokio::test]
    async fn http_probe_gets_the_path_and_compares_the_status() {
        let kind = |expect_status| HealthCheckKind::Http {
            path: "/healthz?full=1".to_string(),
            expect_status,
        };
        let t = Duration::from_secs(1);
        let (addr, mut heads, _server) =
            http_server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        assert_eq!(
            check_once(&kind(200), addr, t).await,
            Ok("http status 200".to_string())
        );
        let head = heads.recv().await.expect("a request").to_ascii_lowercase();
        assert!(
            head.starts_with("get /healthz?full=1 http/1.1\r\n")
                && head.contains(&format!("host: {addr}\r\n"))
                && head.contains("user-agent: xdplb-health\r\n"),
            "{head}"
        );
        // The status decides, whatever the body says.
        let err = check_once(&kind(204), addr, t)
            .await
            .expect_err("200 is not 204");
        assert_eq!(err, "http status 200, expected 204: \"ok\"");

        let (addr, _heads, _server) = http_server(Some(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 18\r\n\r\ndatabase\n  is down",
        ))
        .await;
        let err = check_once(&kind(200), addr, t).await.expect_err("503");
        assert_eq!(err, "http status 503, expected 200: \"database is down\"");

        let err = check_once(&kind(200), closed_port(), t)
            .await
            .expect_err("closed");
        assert!(
            err.starts_with("http connect: ") && err.contains("refused"),
            "{err}"
        );

        // Not HTTP at all.
        let (addr, _heads, _server) = http_server(Some("SSH-2.0-OpenSSH\r\n")).await;
        let err = check_once(&kind(200), addr, t).await.expect_err("garbage");
        assert!(err.starts_with("http request: "), "{err}");
    }

    #[tokio::test]
    async fn http_probe_reads_a_bounded_part_of_an_endless_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let written = Arc::new(AtomicUsize::new(0));
        let counter = written.clone();
        let _server = AbortOnDropHandle::new(tokio::spawn(async move {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
            // At most 64 MiB, in case the probe reads everything.
            for _ in 0..65_536 {
                if conn.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                counter.fetch_add(0x400, Ordering::SeqCst);
            }
        }));
        let kind = HealthCheckKind::Http {
            path: "/".to_string(),
            expect_status: 200,
        };
        let err = check_once(&kind, addr, Duration::from_secs(5))
            .await
            .expect_err("500");
        assert!(
            err.starts_with("http status 500, expected 200: \"xxx"),
            "{err}"
        );
        assert!(
            written.load(Ordering::SeqCst) < 16 << 20,
            "the probe stopped reading early ({} bytes written)",
            written.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn a_probe_that_gets_no_answer_ends_at_its_timeout() {
        let t = Duration::from_millis(200);
        let (udp, seen, _udp_server) = udp_server(None).await;
        let (http, _heads, _http_server) = http_server(None).await;
        let cases = [
            (
                HealthCheckKind::Udp {
                    payload: b"ping".to_vec(),
                    expect: None,
                },
                udp,
                "no udp reply within 200ms",
            ),
            (
                HealthCheckKind::Http {
                    path: "/healthz".to_string(),
                    expect_status: 200,
                },
                http,
                "http GET /healthz: no complete response within 200ms",
            ),
        ];
        for (kind, target, reason) in cases {
            let started = Instant::now();
            let err = check_once(&kind, target, t).await.expect_err("silence");
            let took = started.elapsed();
            assert_eq!(err, reason);
            assert!(
                took >= t && took < t + Duration::from_millis(300),
                "{reason}: took {took:?}"
            );
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the udp probe was sent");
    }

    #[tokio::test]
    async fn checkers_check_at_once_then_every_interval() {
        let closed = closed_port();
        let c = checked(
            "type = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"",
            &[closed],
        );
        let (tx, mut rx) = unbounded_channel();
        let started = Instant::now();
        let checkers = start(&c, &tx);
        assert_eq!(checkers.running(), 1);
        let mut at = Vec::new();
        for _ in 0..4 {
            let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("a result in time")
                .expect("open channel");
            assert!(
                !ev.ok && ev.service == "s" && ev.backend == closed,
                "{ev:?}"
            );
            assert!(ev.detail.contains("refused"), "{ev:?}");
            at.push(started.elapsed());
        }
        assert!(
            at[0] < Duration::from_millis(80),
            "the first check is immediate: {at:?}"
        );
        for pair in at.windows(2) {
            assert!(
                pair[1].saturating_sub(pair[0]) >= Duration::from_millis(80),
                "checks are an interval apart: {at:?}"
            );
        }
        assert!(
            at[3] < Duration::from_millis(600),
            "no check was skipped: {at:?}"
        );
    }

    #[tokio::test]
    async fn stopping_checkers_ends_them_at_once_not_after_their_interval() {
        // A closed TCP port: each check fails at once, then the checker waits an hour.
        let closed = closed_port();
        let other = SocketAddr::from(([127, 0, 0, 2], closed.port()));
        let c = checked(
            "type = \"tcp\"\ninterval = \"1h\"\ntimeout = \"200ms\"",
            &[closed, other],
        );
        let (tx, mut rx) = unbounded_channel();
        let mut checkers = start(&c, &tx);
        assert_eq!(checkers.running(), 2, "one checker per backend");
        // Both have checked once and now wait for their next check, an hour away.
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a first result from each checker");
        }
        let stopped = Instant::now();
        checkers.stop();
        tokio::time::timeout(Duration::from_secs(2), checkers.tasks().wait())
            .await
            .expect("checkers end after the stop (interval 1h)");
        println!("stopped between checks in {:?}", stopped.elapsed());
        assert_eq!(checkers.running(), 0);
    }

    #[tokio::test]
    async fn dropping_checkers_cancels_probes_in_the_middle_of_a_check() {
        // Silent servers and an hour-long timeout: every probe is stuck in its first check.
        let (a, seen_a, _server_a) = udp_server(None).await;
        let (b, seen_b, _server_b) = udp_server(None).await;
        let c = checked(
            "type = \"udp\"\ninterval = \"1h\"\ntimeout = \"1h\"",
            &[a, b],
        );
        let (tx, mut rx) = unbounded_channel();
        let checkers = start(&c, &tx);
        let tasks = checkers.tasks();
        assert_eq!(tasks.len(), 2);
        let probed = Instant::now();
        while seen_a.load(Ordering::SeqCst) + seen_b.load(Ordering::SeqCst) < 2 {
            assert!(
                probed.elapsed() < Duration::from_secs(5),
                "both probes sent"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let dropped = Instant::now();
        drop(checkers);
        tokio::time::timeout(Duration::from_millis(100), tasks.wait())
            .await
            .expect("every probe ends within 100 ms of the drop, timeout 1h");
        println!("cancelled mid-check in {:?}", dropped.elapsed());
        assert!(tasks.is_empty());
        assert!(rx.try_recv().is_err(), "a cancelled check reports nothing");
    }

    #[test]
    fn starting_outside_a_runtime_starts_nothing_and_does_not_panic() {
        let c = checked("type = \"tcp\"", &[closed_port()]);
        let (tx, _rx) = unbounded_channel();
        assert_eq!(start(&c, &tx).running(), 0);
    }
}
