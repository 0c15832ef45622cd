//! The forwarding benchmark's new-flow flood: every datagram from a (source address, source
//! port) of its own, so that each one is the first packet of a new flow for whatever sits in
//! the middle (a conntrack entry for nftables, a flow-table insert for xdplb).
//!
//! Ports alone give fewer than 64 k flows per address, and one UDP socket per datagram would
//! cost a socket, a bind and a close each. So the datagrams go out on one raw socket
//! (`IPPROTO_RAW`, which implies `IP_HDRINCL`) with headers built by etherparse, from
//! addresses of a prefix that is not configured anywhere (replies do not matter: the
//! backends have no listener, and the kernel routes by the destination alone), sent in
//! batches with `sendmmsg(2)`.

use std::{
    fmt, io,
    io::IoSlice,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, SocketType,
    addr::SocketAddrArg, ipproto, sendmmsg, socket,
};

use super::FloodReport;

/// The first source port of every address; the ports below are left to real services.
const FIRST_PORT: u16 = 1024;
/// Source ports per address: 1024..=65535.
const PORTS_PER_ADDRESS: u64 = 65_536 - FIRST_PORT as u64;
/// Datagrams per `sendmmsg(2)`.
const BATCH: usize = 64;
/// The headers etherparse writes: IPv4 without options, then UDP.
const HEADERS: usize = 20 + 8;

/// An IPv4 prefix whose host addresses are the flood's source addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceNet {
    base: Ipv4Addr,
    prefix_len: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "source prefix {0:?}: expected an IPv4 prefix with no host bits set, such as \"10.93.0.0/16\""
    )]
    BadPrefix(String),
    #[error(
        "source prefix {0:?}: expected a prefix length of 8 to 30 (a /16 gives 65534 addresses)"
    )]
    PrefixLength(String),
    #[error(
        "{flows} new flows need more than {net}'s {addresses} addresses times {PORTS_PER_ADDRESS} ports; use a shorter prefix"
    )]
    TooManyFlows {
        flows: u32,
        net: SourceNet,
        addresses: u64,
    },
    #[error("the new-flow flood needs at least one target")]
    NoTarget,
    #[error(
        "--payload-bytes {0}: the new-flow flood builds datagrams of at most 1472 payload bytes (one Ethernet frame)"
    )]
    PayloadTooLarge(usize),
    #[error("raw socket: {0} (the new-flow flood needs CAP_NET_RAW)")]
    Socket(io::Error),
    #[error("building a datagram: {0}")]
    Build(String),
    #[error("sending: {0}")]
    Send(io::Error),
}

impl fmt::Display for SourceNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

impl FromStr for SourceNet {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadPrefix(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix_len) {
            return Err(Error::PrefixLength(s.to_string()));
        }
        if u32::from(base) & (u32::MAX >> prefix_len) != 0 {
            return Err(bad());
        }
        Ok(Self { base, prefix_len })
    }
}

impl SourceNet {
    /// Host addresses: all but the network and broadcast addresses.
    fn addresses(self) -> u64 {
        (1u64 << (32 - self.prefix_len)) - 2
    }

    /// The source of flow `i`: addresses first (flow `i` from host `i mod addresses`), then
    /// ports, so that consecutive flows differ in address and port alike. Distinct for every
    /// `i` below `addresses() * PORTS_PER_ADDRESS`.
    fn source(self, i: u64) -> SocketAddrV4 {
        let hosts = self.addresses();
        let addr = u32::from(self.base) + 1 + (i % hosts) as u32;
        let port = FIRST_PORT + (i / hosts) as u16;
        SocketAddrV4::new(Ipv4Addr::from(addr), port)
    }
}

/// Sends `flows` datagrams of `payload_bytes`, each from a source of its own taken from
/// `sources`, datagram `i` to `targets[i % targets.len()]`: as fast as possible when `rate` is
/// 0, else at `rate` datagrams a second. Nothing is read back. Needs CAP_NET_RAW.
pub fn flood_new_flows(
    targets: &[SocketAddrV4],
    flows: u32,
    sources: SourceNet,
    rate: u64,
    payload_bytes: usize,
) -> Result<FloodReport, Error> {
    if targets.is_empty() {
        return Err(Error::NoTarget);
    }
    if payload_bytes > 1500 - HEADERS {
        return Err(Error::PayloadTooLarge(payload_bytes));
    }
    if u64::from(flows) > sources.addresses() * PORTS_PER_ADDRESS {
        return Err(Error::TooManyFlows {
            flows,
            net: sources,
            addresses: sources.addresses(),
        });
    }
    // IPPROTO_RAW: the kernel takes the IP header as given (IP_HDRINCL), filling in only the
    // total length, the header checksum and a zero identification.
    let sock = socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::RAW))
        .map_err(|e| Error::Socket(e.into()))?;
    let payload = vec![0x78u8; payload_bytes];
    let len = HEADERS + payload_bytes;
    let mut frames = vec![0u8; BATCH * len];
    let mut dests: Vec<SocketAddrAny> = Vec::with_capacity(BATCH);
    let (mut sent, mut errors) = (0u64, 0u64);
    let total = u64::from(flows);
    let start = Instant::now();
    let mut next = 0u64;
    while next < total {
        let n = (total - next).min(BATCH as u64) as usize;
        dests.clear();
        for (k, frame) in frames.chunks_exact_mut(len).take(n).enumerate() {
            let i = next + k as u64;
            let src = sources.source(i);
            let dst = targets[(i % targets.len() as u64) as usize];
            PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64)
                .udp(src.port(), dst.port())
                .write_to_slice(frame, &payload)
                .map_err(|e| Error::Build(e.to_string()))?;
            // A raw socket routes by the address it is given, not by the header's.
            dests.push(SocketAddrV4::new(*dst.ip(), 0).as_any());
        }
        let (ok, failed) = send_batch(&sock, &frames[..n * len], len, &dests)?;
        sent += ok;
        errors += failed;
        next += n as u64;
        if rate > 0 {
            // Sleep until the time the datagrams sent so far are due at `rate`.
            let due = Duration::from_secs_f64(next as f64 / rate as f64);
            let elapsed = start.elapsed();
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

/// Sends the frames (each `len` bytes, to the matching entry of `dests`) with as few
/// `sendmmsg(2)` calls as the kernel allows. A datagram the kernel refuses (`ENOBUFS`, an
/// unreachable route) is counted in the second figure and skipped; returns (sent, refused).
fn send_batch(
    sock: &impl rustix::fd::AsFd,
    frames: &[u8],
    len: usize,
    dests: &[SocketAddrAny],
) -> Result<(u64, u64), Error> {
    let iovs: Vec<[IoSlice<'_>; 1]> = frames
        .chunks_exact(len)
        .map(|f| [IoSlice::new(f)])
        .collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = (0..iovs.len())
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<MMsgHdr<'_>> = dests
        .iter()
        .zip(&iovs)
        .zip(&mut controls)
        .map(|((dest, iov), control)| MMsgHdr::new_with_addr(dest, iov, control))
        .collect();
    let (mut sent, mut refused) = (0u64, 0u64);
    let mut at = 0;
    while at < msgs.len() {
        match sendmmsg(sock, &mut msgs[at..], SendFlags::empty()) {
            Ok(0) => return Err(Error::Send(io::Error::other("sendmmsg sent nothing"))),
            Ok(k) => {
                sent += k as u64;
                at += k;
            }
            Err(Errno::INTR) => {}
            // The first message of the rest failed: count it and go on with the next.
            Err(
                Errno::NOBUFS | Errno::AGAIN | Errno::NETUNREACH | Errno::HOSTUNREACH | Errno::PERM,
            ) => {
                refused += 1;
                at += 1;
            }
            Err(e) => return Err(Error::Send(e.into())),
        }
    }
    Ok((sent, refused))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn source_net_parses_prefixes_and_refuses_the_rest() {
        let net: SourceNet = "10.93.0.0/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.93.0.0/16");
        assert_eq!(net.addresses(), 65_534);
        for bad in [
            "10.93.0.1/16",
            "10.93.0.0",
            "10.93.0.0/x",
            "::1/64",
            "10.93.0.0/33",
        ] {
            assert!(bad.parse::<SourceNet>().is_err(), "{bad} was accepted");
        }
        assert!(matches!(
            "10.0.0.0/31".parse::<SourceNet>(),
            Err(Error::PrefixLength(_))
        ));
    }

    #[test]
    fn a_million_flows_have_a_million_distinct_sources_inside_the_prefix() {
        let net: SourceNet = "10.93.0.0/16".parse().unwrap();
        let mut seen = HashSet::new();
        for i in 0..1_000_000u64 {
            let s = net.source(i);
            assert_eq!(s.ip().octets()[..2], [10, 93], "flow {i}: {s}");
            assert!(
                !matches!(&s.ip().octets()[2..], [0, 0] | [255, 255]),
                "flow {i}: {s}"
            );
            assert!(s.port() >= FIRST_PORT, "flow {i}: {s}");
            assert!(seen.insert(s), "flow {i}: {s} again");
        }
    }

    #[test]
    fn the_last_flow_a_prefix_holds_is_distinct_and_one_more_is_refused() {
        let net: SourceNet = "10.93.0.0/30".parse().unwrap();
        let last = net.addresses() * PORTS_PER_ADDRESS - 1;
        assert_eq!(net.source(last), "10.93.0.2:65535".parse().unwrap());
        assert_ne!(net.source(last), net.source(last - 1));
        let too_many = (last + 2) as u32;
        let target = ["127.0.0.1:7000".parse().unwrap()];
        assert!(matches!(
            flood_new_flows(&target, too_many, net, 0, 18),
            Err(Error::TooManyFlows { .. })
        ));
    }
}
