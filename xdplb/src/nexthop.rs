//! The next-hop cache (`NEXTHOPS_V1`): for every backend of a `nat`, `fullnat`, `dsr-l2` or
//! `dsr-ipip` service, the egress interface, the MAC addresses and the MTU of its route, so
//! that the data plane sends to it without a `bpf_fib_lookup` per packet.
//!
//! The daemon resolves each backend, IPv4 or IPv6, with rtnetlink (`RTM_GETROUTE` for the
//! backend in its family: egress, gateway, `mtu` metric; the ARP or NDP neighbour table for the
//! gateway or the backend; the egress
//! interface's address and MTU), writes what resolved and deletes what did not (the data
//! plane then asks the FIB, which for `nat` hands the packet to the kernel so that it
//! resolves the neighbour). It resolves again at start-up, after every applied change, and
//! on any route, neighbour or link event ([`watch`], debounced).
//!
//! The decision ([`resolve`]) is a pure function over what the kernel answered; the netlink
//! I/O around it is thin. The messages are built with `netlink-packet-route`, like the rest of
//! `netlink`; the event socket is `netlink-sys`'s tokio socket.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType},
};
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc;
use tracing::{info, warn};
use xdplb_common::{FORWARD_LOCAL, NextHop, SERVICE_FORWARDING_MASK, SERVICE_FORWARDING_SHIFT};

use crate::{
    addr::addr_of,
    dataplane::{Dataplane, DataplaneError, DesiredState},
    netlink::{self, NetlinkError},
};

#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// What `RTM_GETROUTE` answered for a backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteAnswer {
    /// `RTN_UNICAST`: a route that forwards (not local, blackhole, unreachable...).
    pub unicast: bool,
    /// The egress interface.
    pub oif: u32,
    /// The gateway (for IPv6 often a link-local address); `None` on a directly connected
    /// segment.
    pub gateway: Option<IpAddr>,
    /// The route's `mtu` metric (or a learnt path MTU), if any.
    pub mtu: Option<u32>,
}

/// An interface, as far as the cache needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// Its Ethernet address; `None` for an interface without one (a tunnel, `lo`).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
}

/// A neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub state: NeighbourState,
    pub lladdr: Option<[u8; 6]>,
}

/// The interfaces and the IPv4 (ARP) and IPv6 (NDP) neighbour tables, dumped once per refresh.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub interfaces: HashMap<u32, Interface>,
    /// By (interface, address).
    pub neighbours: HashMap<(u32, IpAddr), Neighbour>,
}

/// Why a backend has no cache entry (its packets then go through the FIB).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("its route does not forward (local, blackhole, unreachable or prohibit)")]
    NotUnicast,
    #[error("its route's interface (index {0}) is gone")]
    NoInterface(u32),
    #[error("its route's interface (index {0}) has no Ethernet address")]
    NotEthernet(u32),
    #[error("no neighbour entry for next hop {hop} on interface index {ifindex}")]
    NoNeighbour { hop: IpAddr, ifindex: u32 },
    #[error("the neighbour entry of next hop {hop} is not usable (state {state:?})")]
    UnusableNeighbour { hop: IpAddr, state: NeighbourState },
}

/// Whether a neighbour entry in `state` holds an address the kernel itself would send to:
/// REACHABLE, STALE, DELAY and PROBE (a STALE entry is used and re-confirmed by the kernel;
/// `bpf_fib_lookup` uses it too), PERMANENT and NOARP; not INCOMPLETE, FAILED or NONE.
pub fn neighbour_usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// The cache entry for `backend`, from its route and the interface and neighbour tables.
///
/// The MTU is the egress interface's, or the route's when that is lower (as
/// `bpf_fib_lookup`'s own check takes it); the next hop is the route's gateway, or the
/// backend itself on a directly connected segment.
pub fn resolve(
    backend: IpAddr,
    route: Result<&RouteAnswer, &str>,
    tables: &Tables,
) -> Result<NextHop, Unresolved> {
    let route = route.map_err(|e| Unresolved::NoRoute(e.to_string()))?;
    if !route.unicast {
        return Err(Unresolved::NotUnicast);
    }
    let interface = tables
        .interfaces
        .get(&route.oif)
        .ok_or(Unresolved::NoInterface(route.oif))?;
    let smac = interface.mac.ok_or(Unresolved::NotEthernet(route.oif))?;
    let hop = route.gateway.unwrap_or(backend);
    let neighbour = tables
        .neighbours
        .get(&(route.oif, hop))
        .ok_or(Unresolved::NoNeighbour {
            hop,
            ifindex: route.oif,
        })?;
    let dmac = match neighbour.lladdr {
        Some(mac) if neighbour_usable(neighbour.state) => mac,
        _ => {
            return Err(Unresolved::UnusableNeighbour {
                hop,
                state: neighbour.state,
            });
        }
    };
    let mtu = match route.mtu {
        Some(m) if m > 0 => m.min(interface.mtu),
        _ => interface.mtu,
    };
    Ok(NextHop {
        addr: addr_of(backend),
        ifindex: route.oif,
        mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
        flags: 0,
        dmac,
        smac,
    })
}

/// The backends the cache is for: `(BACKENDS_V1 index, address)` of every backend (IPv4 or
/// IPv6) of a service that does not forward locally.
pub fn remote_backends(state: &DesiredState) -> Vec<(u32, IpAddr)> {
    let mut out = Vec::new();
    for plan in &state.services {
        let mode = (plan.service.flags & SERVICE_FORWARDING_MASK) >> SERVICE_FORWARDING_SHIFT;
        if mode == FORWARD_LOCAL {
            continue;
        }
        for (index, _, addr) in &plan.backends {
            out.push((*index, addr.ip()));
        }
    }
    out
}

/// What the cache holds, as this process last wrote it, so that a refresh writes only what
/// changed and logs each change once.
#[derive(Debug, Default)]
pub struct NextHopCache {
    written: BTreeMap<u32, NextHop>,
    /// Why each unresolved backend is, as last logged.
    unresolved: BTreeMap<u32, Unresolved>,
}

impl NextHopCache {
    /// Resolves every remote backend of what `dp` holds now and brings the cache to it:
    /// entries written or replaced where the answer changed, deleted where a backend went or
    /// no longer resolves. Returns how many entries it wrote or deleted.
    pub fn refresh(&mut self, dp: &mut Dataplane) -> Result<usize, NextHopError> {
        let backends = dp.current().map(remote_backends).unwrap_or_default();
        if backends.is_empty() && self.written.is_empty() {
            return Ok(0);
        }
        let tables = read_tables()?;
        let mut want: BTreeMap<u32, (IpAddr, Result<NextHop, Unresolved>)> = BTreeMap::new();
        for (index, ip) in backends {
            let route = route_to(ip);
            let hop = resolve(ip, route.as_ref().map_err(String::as_str), &tables);
            want.insert(index, (ip, hop));
        }
        let mut changes = 0;
        let stale: Vec<u32> = self
            .written
            .keys()
            .filter(|i| !want.contains_key(i))
            .copied()
            .collect();
        for index in stale {
            dp.remove_next_hop(index)?;
            self.written.remove(&index);
            changes += 1;
        }
        self.unresolved.retain(|i, _| want.contains_key(i));
        for (index, (ip, hop)) in want {
            match hop {
                Ok(hop) => {
                    if self.written.get(&index) == Some(&hop) {
                        continue;
                    }
                    dp.set_next_hop(index, &hop)?;
                    self.written.insert(index, hop);
                    self.unresolved.remove(&index);
                    changes += 1;
                    info!(
                        backend = %ip,
                        index,
                        ifindex = hop.ifindex,
                        mac = %mac_text(hop.dmac),
                        mtu = hop.mtu,
                        "next hop: backend {ip} now via interface index {} to {}",
                        hop.ifindex,
                        mac_text(hop.dmac)
                    );
                }
                Err(why) => {
                    if self.written.remove(&index).is_some() {
                        dp.remove_next_hop(index)?;
                        changes += 1;
                    }
                    if self.unresolved.get(&index) != Some(&why) {
                        info!(
                            backend = %ip,
                            index,
                            "next hop: backend {ip} unresolved ({why}); its packets take bpf_fib_lookup"
                        );
                        self.unresolved.insert(index, why);
                    }
                }
            }
        }
        Ok(changes)
    }
}

impl NextHopCache {
    /// Deletes every entry this process wrote (the data plane then asks the FIB for every
    /// backend): for when the cache can no longer be kept up to date.
    pub fn clear(&mut self, dp: &mut Dataplane) -> Result<(), NextHopError> {
        while let Some((index, _)) = self.written.pop_first() {
            dp.remove_next_hop(index)?;
        }
        self.unresolved.clear();
        Ok(())
    }

    /// The entries this process wrote, by backend index.
    pub fn entries(&self) -> &BTreeMap<u32, NextHop> {
        &self.written
    }
}

/// Resolves and writes the next-hop cache for the backends `dp` holds now, once (for `xdplb
/// bench`, which loads a data plane without the daemon). Returns the entries written.
pub fn fill_cache(dp: &mut Dataplane) -> Result<usize, NextHopError> {
    let mut cache = NextHopCache::default();
    cache.refresh(dp)?;
    Ok(cache.written.len())
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `ip route get BACKEND` (`ip -6 route get` for IPv6): the kernel's own lookup (policy rules
/// included). `Err` with the kernel's reason when it has no route.
fn route_to(backend: IpAddr) -> Result<RouteAnswer, String> {
    let mut msg = RouteMessage::default();
    let (family, len, destination) = match backend {
        IpAddr::V4(v4) => (AddressFamily::Inet, 32, RouteAddress::Inet(v4)),
        IpAddr::V6(v6) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(v6)),
    };
    msg.header.address_family = family;
    msg.header.destination_prefix_length = len;
    msg.attributes
        .push(RouteAttribute::Destination(destination));
    let what = format!("RTM_GETROUTE {backend}");
    let answers = netlink::request(&what, RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST)
        .map_err(|e| e.to_string())?;
    answers
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(route_answer(r)),
            _ => None,
        })
        .ok_or_else(|| "the kernel answered no route".to_string())
}

fn route_answer(r: &RouteMessage) -> RouteAnswer {
    let mut a = RouteAnswer {
        unicast: r.header.kind == RouteType::Unicast,
        ..RouteAnswer::default()
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Oif(i) => a.oif = *i,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => a.gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => a.gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(v) = m {
                        a.mtu = Some(*v);
                    }
                }
            }
            _ => {}
        }
    }
    a
}

/// The interfaces and the IPv4 and IPv6 neighbour tables of this network namespace.
fn read_tables() -> Result<Tables, NetlinkError> {
    let interfaces = netlink::links()?
        .into_iter()
        .map(|l| {
            (
                l.index,
                Interface {
                    mac: l.mac,
                    mtu: l.mtu,
                },
            )
        })
        .collect();
    let mut answers = Vec::new();
    for (family, what) in [
        (AddressFamily::Inet, "RTM_GETNEIGH (IPv4 dump)"),
        (AddressFamily::Inet6, "RTM_GETNEIGH (IPv6 dump)"),
    ] {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        answers.extend(netlink::request(
            what,
            RouteNetlinkMessage::GetNeighbour(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?);
    }
    let mut neighbours = HashMap::new();
    for m in &answers {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        let mut ip = None;
        let mut lladdr = None;
        for attr in &n.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    ip = Some(IpAddr::V4(*a));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    ip = Some(IpAddr::V6(*a));
                }
                NeighbourAttribute::LinkLayerAddress(l) => {
                    lladdr = <[u8; 6]>::try_from(l.as_slice()).ok();
                }
                _ => {}
            }
        }
        if let Some(ip) = ip {
            neighbours.insert(
                (n.header.ifindex, ip),
                Neighbour {
                    state: n.header.state,
                    lladdr,
                },
            );
        }
    }
    Ok(Tables {
        interfaces,
        neighbours,
    })
}

/// rtnetlink multicast groups (`RTNLGRP_*` of `<linux/rtnetlink.h>`).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// How long the watcher waits after an event for more before it asks for a refresh (a route
/// change brings a burst of route, neighbour and link messages), and the longest a burst can
/// put the refresh off.
pub const DEBOUNCE: Duration = Duration::from_millis(5);
const DEBOUNCE_MAX: Duration = Duration::from_millis(50);

/// A socket subscribed to link, neighbour and IPv4 and IPv6 route events. Opened before the task runs,
/// so that a failure is reported at start-up.
pub struct Watcher {
    socket: TokioSocket,
}

impl Watcher {
    /// Must be called inside the tokio runtime.
    pub fn open() -> std::io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        let s = socket.socket_mut();
        s.bind_auto()?;
        for group in [
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ] {
            s.add_membership(group)?;
        }
        Ok(Watcher { socket })
    }

    /// Sends `()` on `changed` once per burst of events (see [`DEBOUNCE`]), until the receiver
    /// is gone. What the messages say does not matter: any of them may change a backend's
    /// next hop, and a refresh costs one dump of each table and a route lookup per backend. A
    /// lost event (the socket's buffer overflowed: ENOBUFS) asks for a refresh too.
    pub async fn run(self, changed: mpsc::UnboundedSender<()>) {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            if let Err(e) = self.next(&mut buf).await
                && e.raw_os_error() != Some(rustix::io::Errno::NOBUFS.raw_os_error())
            {
                warn!("next-hop cache: reading route events failed, no longer watching: {e}");
                return;
            }
            // Wait for the burst to end, but not for ever.
            let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
            loop {
                let quiet = tokio::time::Instant::now() + DEBOUNCE;
                match tokio::time::timeout_at(quiet.min(deadline), self.next(&mut buf)).await {
                    Ok(_) if tokio::time::Instant::now() < deadline => {}
                    _ => break,
                }
            }
            if changed.send(()).is_err() {
                return;
            }
        }
    }

    /// Reads one datagram of events.
    async fn next(&self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.clear();
        self.socket.recv(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    const BACKEND: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2));
    const GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1));
    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const THEIR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn tables(hop: IpAddr, state: NeighbourState) -> Tables {
        Tables {
            interfaces: HashMap::from([(
                3,
                Interface {
                    mac: Some(OUR_MAC),
                    mtu: 1500,
                },
            )]),
            neighbours: HashMap::from([(
                (3, hop),
                Neighbour {
                    state,
                    lladdr: Some(THEIR_MAC),
                },
            )]),
        }
    }

    fn direct() -> RouteAnswer {
        RouteAnswer {
            unicast: true,
            oif: 3,
            gateway: None,
            mtu: None,
        }
    }

    #[test]
    fn a_directly_connected_backend_gets_its_own_mac_and_the_interface_mtu() {
        let hop = resolve(
            BACKEND,
            Ok(&direct()),
            &tables(BACKEND, NeighbourState::Reachable),
        )
        .unwrap();
        assert_eq!(
            hop,
            NextHop {
                addr: addr_of(BACKEND),
                ifindex: 3,
                mtu: 1500,
                flags: 0,
                dmac: THEIR_MAC,
                smac: OUR_MAC,
            }
        );
    }

    #[test]
    fn a_routed_backend_gets_the_gateways_mac_and_the_lower_mtu() {
        let route = RouteAnswer {
            gateway: Some(GATEWAY),
            mtu: Some(1400),
            ..direct()
        };
        let hop = resolve(BACKEND, Ok(&route), &tables(GATEWAY, NeighbourState::Stale)).unwrap();
        assert_eq!((hop.dmac, hop.mtu), (THEIR_MAC, 1400));
        // A route MTU above the interface's does not raise it.
        let route = RouteAnswer {
            mtu: Some(9000),
            ..route
        };
        let hop = resolve(BACKEND, Ok(&route), &tables(GATEWAY, NeighbourState::Delay)).unwrap();
        assert_eq!(hop.mtu, 1500);
        // The backend's own neighbour entry is not the next hop's.
        assert_eq!(
            resolve(
                BACKEND,
                Ok(&route),
                &tables(BACKEND, NeighbourState::Reachable)
            ),
            Err(Unresolved::NoNeighbour {
                hop: GATEWAY,
                ifindex: 3
            })
        );
    }

    #[test]
    fn only_states_that_hold_a_confirmed_or_configured_address_are_used() {
        for (state, usable) in [
            (NeighbourState::Reachable, true),
            (NeighbourState::Stale, true),
            (NeighbourState::Delay, true),
            (NeighbourState::Probe, true),
            (NeighbourState::Permanent, true),
            (NeighbourState::Noarp, true),
            (NeighbourState::Incomplete, false),
            (NeighbourState::Failed, false),
            (NeighbourState::None, false),
        ] {
            let r = resolve(BACKEND, Ok(&direct()), &tables(BACKEND, state));
            assert_eq!(r.is_ok(), usable, "{state:?}: {r:?}");
        }
    }

    #[test]
    fn no_route_a_route_that_does_not_forward_or_no_ethernet_address_is_unresolved() {
        let t = tables(BACKEND, NeighbourState::Reachable);
        assert!(matches!(
            resolve(BACKEND, Err("unreachable"), &t),
            Err(Unresolved::NoRoute(_))
        ));
        let local = RouteAnswer {
            unicast: false,
            ..direct()
        };
        assert_eq!(
            resolve(BACKEND, Ok(&local), &t),
            Err(Unresolved::NotUnicast)
        );
        let elsewhere = RouteAnswer { oif: 9, ..direct() };
        assert_eq!(
            resolve(BACKEND, Ok(&elsewhere), &t),
            Err(Unresolved::NoInterface(9))
        );
        let mut tunnel = t.clone();
        tunnel.interfaces.insert(
            3,
            Interface {
                mac: None,
                mtu: 1480,
            },
        );
        assert_eq!(
            resolve(BACKEND, Ok(&direct()), &tunnel),
            Err(Unresolved::NotEthernet(3))
        );
        let mut no_lladdr = t;
        no_lladdr.neighbours.insert(
            (3, BACKEND),
            Neighbour {
                state: NeighbourState::Reachable,
                lladdr: None,
            },
        );
        assert!(matches!(
            resolve(BACKEND, Ok(&direct()), &no_lladdr),
            Err(Unresolved::UnusableNeighbour { .. })
        ));
    }

    #[test]
    fn only_backends_of_remote_modes_are_cached() {
        use crate::dataplane::reconcile::desired_state;
        let text = r#"
interfaces = ["lo"]
[[service]]
name = "local"
vip = "10.99.0.1:53"
[[service.backend]]
address = "10.1.0.1:53"
[[service]]
name = "nat"
vip = "10.99.0.2:53"
forwarding = "nat"
[[service.backend]]
address = "10.1.0.2:53"
[[service.backend]]
address = "10.1.0.3:53"
"#;
        let cfg = crate::config::parse(text, "test").unwrap();
        let state = desired_state(&cfg, None).unwrap();
        let got: Vec<IpAddr> = remote_backends(&state)
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        assert_eq!(
            got,
            [
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)),
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, 3))
            ]
        );
        // IPv6 backends of remote modes are cached too.
        let text = r#"
interfaces = ["lo"]
[[service]]
name = "nat6"
vip = "[2001:db8::1]:53"
forwarding = "nat"
[[service.backend]]
address = "[2001:db8:1::2]:53"
"#;
        let cfg = crate::config::parse(text, "test").unwrap();
        let state = desired_state(&cfg, None).unwrap();
        let got: Vec<IpAddr> = remote_backends(&state)
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        assert_eq!(got, ["2001:db8:1::2".parse::<IpAddr>().unwrap()]);
    }

    /// An IPv6 backend behind a link-local gateway resolves through the NDP entry of the
    /// gateway, and its entry holds the backend's 16-byte address.
    #[test]
    fn an_ipv6_backend_resolves_through_its_gateways_ndp_entry() {
        let backend = IpAddr::V6("2001:db8:1::2".parse::<Ipv6Addr>().unwrap());
        let gateway = IpAddr::V6("fe80::1".parse::<Ipv6Addr>().unwrap());
        let route = RouteAnswer {
            gateway: Some(gateway),
            ..direct()
        };
        let hop = resolve(
            backend,
            Ok(&route),
            &tables(gateway, NeighbourState::Reachable),
        )
        .unwrap();
        assert_eq!(hop.addr, addr_of(backend));
        assert_eq!((hop.dmac, hop.smac, hop.mtu), (THEIR_MAC, OUR_MAC, 1500));
        // Without the gateway's NDP entry: unresolved, naming the gateway.
        assert_eq!(
            resolve(
                backend,
                Ok(&route),
                &tables(backend, NeighbourState::Reachable)
            ),
            Err(Unresolved::NoNeighbour {
                hop: gateway,
                ifindex: 3
            })
        );
    }
}
