//! IPv6 frames for the tests: a builder of Ethernet/IPv6/UDP frames with any chain of
//! extension headers, and the oracle [`decode6`], which parses with etherparse (it walks the
//! extension headers itself), never with the code under test.
//!
//! The builder lays out the bytes by hand (etherparse's `PacketBuilder` builds no arbitrary
//! extension-header chains, and no partial checksums); the checksum it writes is etherparse's.

use std::net::{Ipv6Addr, SocketAddrV6};

use etherparse::{NetSlice, SlicedPacket, TransportSlice, UdpHeader};
use xdplb::packet::{FRAME_DST_MAC, FRAME_SRC_MAC};
use xdplb_common::checksum;

pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_DEST_OPTIONS: u8 = 60;
pub const NEXT_UDP: u8 = 17;
pub const NEXT_TCP: u8 = 6;
pub const NEXT_ESP: u8 = 50;

/// An Ethernet/IPv6/UDP frame to build.
#[derive(Debug, Clone)]
pub struct Udp6Frame {
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub payload: Vec<u8>,
    /// Extension headers in order: (its type, its `hdr_ext_len`: (n + 1) * 8 bytes). The
    /// bodies are zero (Pad1 options; a routing header of type 0 with no segments left; a
    /// fragment header with offset 0 and no more fragments).
    pub ext: Vec<(u8, u8)>,
    /// The next header after the extension headers (17: UDP).
    pub upper: u8,
    pub hop_limit: u8,
    /// Write 0 in the UDP checksum (invalid over IPv6).
    pub zero_udp_checksum: bool,
    /// Write the pseudo-header sum only, as a sender with tx checksum offload leaves it.
    pub partial_checksum: bool,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

pub fn addr6(s: &str) -> SocketAddrV6 {
    s.parse().expect("test IPv6 socket address literal")
}

/// A UDP frame from `src` to `dst` (`"[2001:db8::1]:53"`).
pub fn udp6(src: &str, dst: &str) -> Udp6Frame {
    Udp6Frame {
        src: addr6(src),
        dst: addr6(dst),
        payload: b"xdplb test payload".to_vec(),
        ext: Vec::new(),
        upper: NEXT_UDP,
        hop_limit: 64,
        zero_udp_checksum: false,
        partial_checksum: false,
        src_mac: FRAME_SRC_MAC,
        dst_mac: FRAME_DST_MAC,
    }
}

impl Udp6Frame {
    /// The frame's bytes. The UDP checksum is etherparse's (or 0, or partial, as asked).
    pub fn build(&self) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, (_, len)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.upper, |e| e.0);
            let mut h = vec![0u8; (usize::from(*len) + 1) * 8];
            h[0] = next;
            h[1] = *len;
            exts.extend_from_slice(&h);
        }
        let first = self.ext.first().map_or(self.upper, |e| e.0);
        let udp_len = 8 + self.payload.len();
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&0x6000_0000u32.to_be_bytes());
        f.extend_from_slice(&((exts.len() + udp_len) as u16).to_be_bytes());
        f.push(first);
        f.push(self.hop_limit);
        f.extend_from_slice(&self.src.ip().octets());
        f.extend_from_slice(&self.dst.ip().octets());
        f.extend_from_slice(&exts);
        let header = UdpHeader {
            source_port: self.src.port(),
            destination_port: self.dst.port(),
            length: udp_len as u16,
            checksum: 0,
        };
        let check = if self.zero_udp_checksum {
            0
        } else if self.partial_checksum {
            partial_checksum(self.src.ip(), self.dst.ip(), udp_len)
        } else {
            header
                .calc_checksum_ipv6_raw(
                    self.src.ip().octets(),
                    self.dst.ip().octets(),
                    &self.payload,
                )
                .expect("UDP length fits")
        };
        f.extend_from_slice(&header.source_port.to_be_bytes());
        f.extend_from_slice(&header.destination_port.to_be_bytes());
        f.extend_from_slice(&header.length.to_be_bytes());
        f.extend_from_slice(&check.to_be_bytes());
        f.extend_from_slice(&self.payload);
        f
    }
}

/// What a sender with tx checksum offload leaves in the UDP checksum: the folded pseudo-header
/// sum (RFC 8200 8.1), not complemented.
pub fn partial_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, udp_len: usize) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, NEXT_UDP]);
    checksum::fold(checksum::sum_be_words(&pseudo))
}

/// A decoded Ethernet/IPv6/UDP frame, its UDP checksum checked from scratch by etherparse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded6 {
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub hop_limit: u8,
    /// How many extension headers etherparse walked.
    pub ext_headers: usize,
    pub payload: Vec<u8>,
    pub udp_checksum: u16,
    /// The UDP checksum equals etherparse's full recomputation (false when it is 0).
    pub udp_checksum_ok: bool,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// Decodes an Ethernet/IPv6/UDP frame; `None` if it is not one.
pub fn decode6(frame: &[u8]) -> Option<Decoded6> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        return None;
    };
    let Some(TransportSlice::Udp(udp)) = &p.transport else {
        return None;
    };
    let h = ip.header();
    let (src, dst) = (h.source_addr(), h.destination_addr());
    let payload = udp.payload();
    let udp_checksum = udp.checksum();
    let udp_checksum_ok = udp_checksum != 0
        && udp
            .to_header()
            .calc_checksum_ipv6_raw(src.octets(), dst.octets(), payload)
            .is_ok_and(|c| c == udp_checksum);
    let eth = &frame[..14];
    Some(Decoded6 {
        src: SocketAddrV6::new(src, udp.source_port(), 0, 0),
        dst: SocketAddrV6::new(dst, udp.destination_port(), 0, 0),
        hop_limit: h.hop_limit(),
        ext_headers: ip.extensions().clone().into_iter().count(),
        payload: payload.to_vec(),
        udp_checksum,
        udp_checksum_ok,
        dst_mac: eth[0..6].try_into().ok()?,
        src_mac: eth[6..12].try_into().ok()?,
    })
}
