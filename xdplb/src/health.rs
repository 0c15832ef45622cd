//! Active health checks: one checker thread per checked backend, and the book that turns their
//! results into up/down states with rise and fall thresholds.
//!
//! The data plane learns about health through the config it is given: [`HealthBook::effective`]
//! marks an unhealthy backend drained (`on_failure = "keep-flows"`: no new flows, live flows
//! stay) or leaves it out (`"move-flows"`: its flows move on their next packet), and the
//! reconciler applies that like any other change, atomically.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{Arc, Condvar, Mutex, PoisonError, mpsc::Sender},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

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

/// Runs one check of `kind` against `target` within `timeout`.
pub fn check_once(
    kind: &HealthCheckKind,
    target: SocketAddr,
    timeout: Duration,
) -> Result<String, String> {
    match kind {
        HealthCheckKind::Udp { payload, expect } => {
            let any = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let sock = UdpSocket::bind(any).map_err(|e| format!("udp socket: {e}"))?;
            sock.connect(target)
                .map_err(|e| format!("udp connect: {e}"))?;
            sock.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            sock.send(payload).map_err(|e| format!("udp send: {e}"))?;
            let mut buf = [0u8; 2048];
            let n = sock.recv(&mut buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    format!("no udp reply within {timeout:?}")
                }
                std::io::ErrorKind::ConnectionRefused => "udp port unreachable".to_string(),
                _ => format!("udp receive: {e}"),
            })?;
            match expect {
                Some(want) if !buf[..n].windows(want.len().max(1)).any(|w| w == &want[..]) => {
                    Err(format!(
                        "udp reply does not contain {:?}",
                        String::from_utf8_lossy(want)
                    ))
                }
                _ => Ok(format!("udp reply of {n} bytes")),
            }
        }
        HealthCheckKind::Tcp => TcpStream::connect_timeout(&target, timeout)
            .map(|_| "tcp connect".to_string())
            .map_err(|e| format!("tcp connect: {e}")),
        HealthCheckKind::Http {
            path,
            expect_status,
        } => {
            let deadline = Instant::now() + timeout;
            let mut conn = TcpStream::connect_timeout(&target, timeout)
                .map_err(|e| format!("http connect: {e}"))?;
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            conn.set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            conn.set_write_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            write!(
                conn,
                "GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: xdplb-health\r\nConnection: close\r\n\r\n"
            )
            .map_err(|e| format!("http send: {e}"))?;
            let mut head = [0u8; 64];
            let n = conn
                .read(&mut head)
                .map_err(|e| format!("http receive: {e}"))?;
            let line = String::from_utf8_lossy(&head[..n]);
            let status: Option<u16> = line
                .strip_prefix("HTTP/1.")
                .and_then(|r| r.get(2..5))
                .and_then(|c| c.parse().ok());
            match status {
                Some(s) if s == *expect_status => Ok(format!("http status {s}")),
                Some(s) => Err(format!("http status {s}, expected {expect_status}")),
                None => Err("no http status line".to_string()),
            }
        }
    }
}

/// A stop flag that wakes its waiters: a checker waits for its next check on it, so a stop
/// ends the wait at once instead of after up to an `interval` (an hour at most).
#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopSignal {
    fn stop(&self) {
        // A poisoned lock still holds the flag: set it anyway.
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        *stopped = true;
        self.wake.notify_all();
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `deadline` or a stop, whichever comes first; returns whether it stopped.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            stopped = match self.wake.wait_timeout(stopped, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        *stopped
    }
}

/// The checker threads of one config; they stop when this is dropped (or [`Checkers::stop`]
/// is called): a checker between checks ends at once, one in a check ends when that check does
/// (within its `timeout`).
pub struct Checkers {
    stop: Arc<StopSignal>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Checkers {
    /// Tells every checker to stop, without waiting for them.
    pub fn stop(&mut self) {
        self.stop.stop();
    }

    /// How many checker threads have not ended yet.
    pub fn running(&self) -> usize {
        self.threads.iter().filter(|t| !t.is_finished()).count()
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a checker per backend of every service with a health check. Each checks at a fixed
/// rate (`interval` from one start to the next) and sends every result to `tx`.
pub fn start(cfg: &Config, tx: &Sender<HealthEvent>) -> Checkers {
    let stop = Arc::new(StopSignal::default());
    let mut threads = Vec::new();
    for svc in &cfg.services {
        let Some(hc) = &svc.health_check else {
            continue;
        };
        for b in &svc.backends {
            let target = SocketAddr::new(b.address.ip(), hc.port.unwrap_or(b.address.port()));
            let (service, backend, hc, tx, stop) = (
                svc.name.clone(),
                b.address,
                hc.clone(),
                tx.clone(),
                stop.clone(),
            );
            threads.push(thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.is_stopped() {
                    let result = check_once(&hc.kind, target, hc.timeout);
                    if stop.is_stopped() {
                        break;
                    }
                    let (ok, detail) = match result {
                        Ok(d) => (true, d),
                        Err(d) => (false, d),
                    };
                    let event = HealthEvent {
                        service: service.clone(),
                        backend,
                        ok,
                        detail,
                    };
                    if tx.send(event).is_err() {
                        break;
                    }
                    next += hc.interval;
                    let now = Instant::now();
                    if next <= now {
                        next = now;
                    } else if stop.wait_until(next) {
                        break;
                    }
                }
            }));
        }
    }
    Checkers { stop, threads }
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

    #[test]
    fn stopping_checkers_ends_them_at_once_not_after_their_interval() {
        // A closed TCP port: each check fails at once, then the checker waits an hour.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let text = format!(
            "interfaces = [\"lo\"]\n[[service]]\nname = \"s\"\nvip = \"127.0.0.1:9875\"\n\
             [service.health_check]\ntype = \"tcp\"\ninterval = \"1h\"\ntimeout = \"200ms\"\n\
             [[service.backend]]\naddress = \"127.0.0.1:{port}\"\n\
             [[service.backend]]\naddress = \"127.0.0.2:{port}\"\n"
        );
        let c = parse(&text, "test").expect("valid");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut checkers = start(&c, &tx);
        assert_eq!(checkers.running(), 2, "one checker per backend");
        // Both have checked once and now wait for their next check, an hour away.
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(5))
                .expect("a first result from each checker");
        }
        let stopped = Instant::now();
        checkers.stop();
        while checkers.running() > 0 && stopped.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            checkers.running(),
            0,
            "checkers still running {:?} after the stop (interval 1h)",
            stopped.elapsed()
        );
    }

    #[test]
    fn checks_see_a_listening_and_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = listener.local_addr().expect("addr");
        let t = Duration::from_millis(300);
        assert!(check_once(&HealthCheckKind::Tcp, open, t).is_ok());
        drop(listener);
        let err = check_once(&HealthCheckKind::Tcp, open, t).expect_err("closed");
        assert!(err.contains("tcp connect"), "{err}");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let closed = udp.local_addr().expect("addr");
        drop(udp);
        let kind = HealthCheckKind::Udp {
            payload: b"hi".to_vec(),
            expect: None,
        };
        let err = check_once(&kind, closed, t).expect_err("nothing listens");
        assert!(
            err.contains("unreachable") || err.contains("no udp reply"),
            "{err}"
        );
    }
}
