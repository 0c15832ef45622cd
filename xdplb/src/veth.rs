//! Frames lost on veths where XDP cannot see it. Native XDP_REDIRECT or XDP_TX onto a veth
//! whose peer has no NAPI (GRO off and no XDP program on the peer) loses every frame, while the
//! XDP program counts it as sent (`forwarded_fib`). The kernel says so in two places:
//! - the target veth's XDP features lose `ndo-xmit` (netdev generic netlink), which the
//!   daemon checks at start and then once a second: a warning before any traffic;
//! - the failed frames are counted as dropped: on Linux 6.18 as `rx_dropped` of the veth the
//!   frame came in on (the redirect fails there), on older kernels as `tx_dropped` of the
//!   target.
//!
//! The daemon samples both for every veth of its network namespace (through netlink, so it is
//! the daemon's namespace whatever /sys shows) and reports the increase since it started.
//!
//! Not seen here: XDP_TX out of a veth (an ICMP "fragmentation needed" answer, or forwarding
//! back out of the interface a packet came in on) needs more than NAPI on the peer. The veth
//! queues the frame on the peer's NAPI ring (counted as `xdp_tx` in `ethtool -S`, no error),
//! but wakes that NAPI only when the peer has an XDP program (Linux 6.18 `veth_xdp_flush`); a
//! peer with GRO alone leaves the frame waiting until other traffic wakes it, often too late
//! (the socket the ICMP was for is gone). No counter shows it, and the peer's XDP program is in
//! another namespace: the warnings below name it as the fix.
//! Pure bookkeeping here; the sampling is in [`crate::netlink`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::netlink::LinkState;

/// What one veth of the daemon's namespace shows since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethReport {
    /// Increase of `tx_dropped` since start.
    pub tx_dropped: u64,
    /// Increase of `rx_dropped` since start.
    pub rx_dropped: u64,
    /// Whether it can take XDP_REDIRECT/XDP_TX frames now (`None`: the kernel cannot say).
    pub accepts_xdp_redirect: Option<bool>,
}

/// Something worth a warning, found by [`VethWatch::update`].
#[derive(Debug, PartialEq, Eq)]
pub enum VethEvent {
    /// The veth stopped accepting (or never accepted) XDP_REDIRECT frames.
    NoNapiPeer(String),
    /// Its drops grew; totals since start.
    Dropped { interface: String, tx: u64, rx: u64 },
}

impl VethEvent {
    /// The warning, naming the interface and the fix.
    pub fn message(&self) -> String {
        match self {
            VethEvent::NoNapiPeer(i) => format!(
                "veth {i} cannot take XDP_REDIRECT or XDP_TX frames (its XDP features lack ndo-xmit): its peer has no NAPI (GRO off and no XDP program), so every frame XDP sends onto {i} is dropped, though `xdplb stats` counts it as forwarded_fib; fix: `ethtool -K PEER gro on` on {i}'s peer, or attach an XDP program to the peer (XDP_TX out of {i}, such as ICMP fragmentation-needed answers, needs the XDP program: with GRO alone those frames wait in the peer's queue until other traffic arrives)"
            ),
            VethEvent::Dropped { interface, tx, rx } => format!(
                "veth {interface} dropped frames since the daemon started (tx_dropped +{tx}, rx_dropped +{rx}): a frame XDP redirects onto a veth whose peer has no NAPI (GRO off and no XDP program) is lost there (counted as rx_dropped of the veth it came in on, or tx_dropped of the target), though `xdplb stats` counts it as forwarded_fib; fix: `ethtool -K PEER gro on` on the target veth's peer, or attach an XDP program to the peer"
            ),
        }
    }
}

/// The counters at start, and the report since.
#[derive(Debug, Default)]
pub struct VethWatch {
    baseline: BTreeMap<String, (u64, u64)>,
    pub report: BTreeMap<String, VethReport>,
}

impl VethWatch {
    /// Records a sample of every interface with whether it accepts XDP_REDIRECT frames;
    /// returns what got worse since the last sample. The first sample is the baseline (and
    /// reports veths that accept no redirects already). A veth seen for the first time, or
    /// whose counters went down (recreated), starts from its current counters.
    pub fn update(&mut self, links: &[(LinkState, Option<bool>)]) -> Vec<VethEvent> {
        let mut events = Vec::new();
        for (l, accepts) in links.iter().filter(|(l, _)| l.is_veth) {
            let base = self
                .baseline
                .entry(l.name.clone())
                .or_insert((l.tx_dropped, l.rx_dropped));
            if l.tx_dropped < base.0 || l.rx_dropped < base.1 {
                *base = (l.tx_dropped, l.rx_dropped);
            }
            let now = VethReport {
                tx_dropped: l.tx_dropped - base.0,
                rx_dropped: l.rx_dropped - base.1,
                accepts_xdp_redirect: *accepts,
            };
            let before = self.report.insert(l.name.clone(), now.clone());
            let was_ok = before
                .as_ref()
                .is_none_or(|b| b.accepts_xdp_redirect != Some(false));
            if *accepts == Some(false) && was_ok {
                events.push(VethEvent::NoNapiPeer(l.name.clone()));
            }
            let (tx0, rx0) = before.map_or((0, 0), |b| (b.tx_dropped, b.rx_dropped));
            if now.tx_dropped > tx0 || now.rx_dropped > rx0 {
                events.push(VethEvent::Dropped {
                    interface: l.name.clone(),
                    tx: now.tx_dropped,
                    rx: now.rx_dropped,
                });
            }
        }
        self.report
            .retain(|name, _| links.iter().any(|(l, _)| l.name == *name));
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(name: &str, tx: u64, rx: u64, accepts: bool) -> (LinkState, Option<bool>) {
        (
            LinkState {
                name: name.into(),
                is_veth: true,
                tx_dropped: tx,
                rx_dropped: rx,
                ..LinkState::default()
            },
            Some(accepts),
        )
    }

    #[test]
    fn reports_increases_since_start_and_peers_without_napi_once() {
        let lo = (
            LinkState {
                name: "lo".into(),
                tx_dropped: 5,
                ..LinkState::default()
            },
            None,
        );
        let mut w = VethWatch::default();
        let first = w.update(&[veth("a", 10, 7, true), veth("b", 0, 0, false), lo.clone()]);
        assert_eq!(first, vec![VethEvent::NoNapiPeer("b".into())]);
        assert!(!w.report.contains_key("lo"));
        assert_eq!(w.report["a"].tx_dropped, 0);
        let grew = w.update(&[veth("a", 10, 9, true), veth("b", 3, 0, false), lo.clone()]);
        assert_eq!(
            grew,
            vec![
                VethEvent::Dropped {
                    interface: "a".into(),
                    tx: 0,
                    rx: 2
                },
                VethEvent::Dropped {
                    interface: "b".into(),
                    tx: 3,
                    rx: 0
                },
            ]
        );
        assert!(
            w.update(&[veth("a", 10, 9, true), veth("b", 3, 0, false), lo])
                .is_empty()
        );
        // GRO back on, then off again: warned again.
        w.update(&[veth("a", 10, 9, true), veth("b", 3, 0, true)]);
        let again = w.update(&[veth("a", 10, 9, true), veth("b", 3, 0, false)]);
        assert_eq!(again, vec![VethEvent::NoNapiPeer("b".into())]);
        // Recreated device: counters below the baseline start again.
        w.update(&[veth("a", 2, 0, true)]);
        assert_eq!(w.report["a"].tx_dropped, 0);
        assert!(again[0].message().contains("ethtool -K PEER gro on"));
    }
}
