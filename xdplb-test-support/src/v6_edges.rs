//! IPv6 frames for the tests of the data plane's IPv6 edges (ICMPv6, IPv6-in-IPv6, packet too
//! big), built with etherparse (never with the code under test), and the map entries those
//! tests write directly (the IPv6 state a config would make).

use std::net::{Ipv6Addr, SocketAddrV6};

use etherparse::{Icmpv6Slice, Icmpv6Type, IpNumber, Ipv6Header, PacketBuilder};
use xdplb::dataplane::Dataplane;
use xdplb_common::{Addr, Flow, FlowKey, IPPROTO_UDP, ReplyKey, ServiceKey};

use xdplb::packet::{FRAME_DST_MAC, FRAME_SRC_MAC};

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

pub fn sock6(s: &str) -> SocketAddrV6 {
    s.parse().expect("IPv6 socket address literal")
}

/// An address as the maps hold it (wire order words).
pub fn addr6(a: Ipv6Addr) -> Addr {
    let o = a.octets();
    let mut w = [0u32; 4];
    for (i, word) in w.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
    }
    w
}

/// A UDP/IPv6 frame `src` -> `dst` with hop limit `hop_limit`, from FRAME_SRC_MAC to
/// FRAME_DST_MAC, every checksum computed by etherparse.
pub fn udp6(src: SocketAddrV6, dst: SocketAddrV6, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(FRAME_SRC_MAC, FRAME_DST_MAC)
        .ipv6(src.ip().octets(), dst.ip().octets(), hop_limit)
        .udp(src.port(), dst.port());
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build a UDP/IPv6 frame");
    out
}

/// An ICMPv6 frame of `kind`/`code` with header bytes 4..8 `rest` and `body`, from `src` to
/// `dst` (hop limit `hop_limit`), from FRAME_SRC_MAC to FRAME_DST_MAC; the checksum (over the
/// pseudo-header) computed by etherparse.
pub fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(FRAME_SRC_MAC, FRAME_DST_MAC)
        .ipv6(src.octets(), dst.octets(), hop_limit)
        .icmpv6(Icmpv6Type::Unknown {
            type_u8: kind,
            code_u8: code,
            bytes5to8: rest,
        });
    let mut out = Vec::new();
    b.write(&mut out, body).expect("build an ICMPv6 frame");
    out
}

/// The IPv6 packet of an Ethernet frame (everything after the 14-byte header).
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// `frame` with its MAC addresses replaced.
pub fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// `frame` with the IPv6 hop limit set to `hop_limit` (no checksum covers it).
pub fn with_hop_limit(mut frame: Vec<u8>, hop_limit: u8) -> Vec<u8> {
    frame[14 + 7] = hop_limit;
    frame
}

/// `inner` (an IPv6 packet) inside an outer IPv6 header from `src` to `dst`, next header 41,
/// hop limit 64, the inner traffic class and flow label, in a frame from `eth_src` to
/// `eth_dst`.
pub fn ip6ip6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    inner: &[u8],
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
) -> Vec<u8> {
    // The inner traffic class and flow label, when the inner packet is IPv6.
    let (traffic_class, flow_label) = match Ipv6Header::from_slice(inner) {
        Ok((h, _)) => (h.traffic_class, h.flow_label),
        Err(_) => (0, Default::default()),
    };
    let outer = Ipv6Header {
        traffic_class,
        flow_label,
        payload_length: inner.len() as u16,
        // IPv6-in-IPv6.
        next_header: IpNumber(41),
        hop_limit: 64,
        source: src.octets(),
        destination: dst.octets(),
    };
    let mut f = eth_dst.to_vec();
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&outer.to_bytes());
    f.extend_from_slice(inner);
    f
}

/// Whether the ICMPv6 message of a frame holding one (no extension headers) has a correct
/// checksum, checked by etherparse over the pseudo-header.
pub fn icmp6_checksum_ok(frame: &[u8]) -> bool {
    let ip = Ipv6Header::from_slice(&frame[14..]).expect("IPv6 header").0;
    let len = usize::from(ip.payload_length);
    let msg = &frame[14 + 40..14 + 40 + len];
    Icmpv6Slice::from_slice(msg)
        .expect("an ICMPv6 message")
        .is_checksum_valid(ip.source, ip.destination)
}

pub fn service_key(vip: SocketAddrV6) -> ServiceKey {
    ServiceKey {
        addr: addr6(*vip.ip()),
        port_be: vip.port().to_be(),
        proto: IPPROTO_UDP,
        _pad: 0,
    }
}

pub fn flow_key(client: SocketAddrV6, vip: SocketAddrV6) -> FlowKey {
    FlowKey {
        client_addr: addr6(*client.ip()),
        vip_addr: addr6(*vip.ip()),
        client_port_be: client.port().to_be(),
        vip_port_be: vip.port().to_be(),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    }
}

/// The key of the reply (REPLIES, FULLNAT) of the UDP flow between `backend` and `client`.
pub fn reply_key(backend: SocketAddrV6, client: SocketAddrV6) -> ReplyKey {
    ReplyKey {
        backend_addr: addr6(*backend.ip()),
        client_addr: addr6(*client.ip()),
        backend_port_be: backend.port().to_be(),
        client_port_be: client.port().to_be(),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    }
}

/// Writes `value` under `key` in the data plane's hash (or LRU hash) map `name`.
pub fn put<K: aya::Pod, V: aya::Pod>(dp: &mut Dataplane, name: &str, key: K, value: V) {
    let map = dp
        .ebpf_mut()
        .map_mut(name)
        .unwrap_or_else(|| panic!("no map {name}"));
    let mut h = aya::maps::HashMap::<_, K, V>::try_from(map)
        .unwrap_or_else(|e| panic!("{name}: not a hash map: {e}"));
    h.insert(key, value, 0)
        .unwrap_or_else(|e| panic!("{name}: insert: {e}"));
}

/// A flow entry of `service_id` to `backend`.
pub fn flow_to(backend: SocketAddrV6, service_id: u32, tuple_hash: u32) -> Flow {
    Flow {
        backend_addr: addr6(*backend.ip()),
        backend_port_be: backend.port().to_be(),
        snat_port_be: 0,
        backend_index: 0,
        service_id,
        tuple_hash,
        last_seen_ns: 0,
    }
}
