//! Building Ethernet/IPv4/UDP and Ethernet/IPv6/UDP frames in user space, for BPF_PROG_TEST_RUN cases and the
//! benchmark. Checksums are computed in full with `xdplb_common::checksum`, which is
//! independent of the data plane's incremental updates. (The tests decode what comes out with
//! etherparse, in xdplb-test-support, not with code of this crate.)

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use xdplb_common::checksum::{ipv4_header_checksum, udp_checksum_v4, udp_checksum_v6};

pub const ETH_HDR_LEN: usize = 14;
/// The Ethernet destination of the frames [`UdpFrame::build`] makes: the address tests and the
/// benchmark register for the interface they run frames on.
pub const FRAME_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The Ethernet source of those frames.
pub const FRAME_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A UDP-in-IPv4-in-Ethernet frame to build.
#[derive(Debug, Clone)]
pub struct UdpFrame {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
    /// IPv4 options, padded by the builder to a multiple of 4 bytes (at most 40).
    pub ip_options: Vec<u8>,
    /// The flags-and-fragment-offset field, host order (0x2000 = more fragments).
    pub frag_off: u16,
    /// IP protocol number; 17 for UDP.
    pub protocol: u8,
    /// Send UDP checksum 0 ("none").
    pub zero_udp_checksum: bool,
    /// IPv4 time to live.
    pub ttl: u8,
}

impl UdpFrame {
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        UdpFrame {
            src,
            dst,
            payload: payload.to_vec(),
            ip_options: Vec::new(),
            frag_off: 0,
            protocol: 17,
            zero_udp_checksum: false,
            ttl: 64,
        }
    }

    /// The frame's bytes, with correct IPv4 and UDP checksums.
    pub fn build(&self) -> Vec<u8> {
        let mut opts = self.ip_options.clone();
        opts.resize(opts.len().div_ceil(4) * 4, 0);
        let ihl = 5 + opts.len() / 4;
        let udp_len = 8 + self.payload.len();
        let tot_len = ihl * 4 + udp_len;
        let mut f = Vec::with_capacity(ETH_HDR_LEN + tot_len);
        f.extend_from_slice(&FRAME_DST_MAC);
        f.extend_from_slice(&FRAME_SRC_MAC);
        f.extend_from_slice(&[0x08, 0x00]);
        let ip_start = f.len();
        f.push(0x40 | ihl as u8);
        f.push(0);
        f.extend_from_slice(&(tot_len as u16).to_be_bytes());
        f.extend_from_slice(&0x1234u16.to_be_bytes());
        f.extend_from_slice(&self.frag_off.to_be_bytes());
        f.push(self.ttl);
        f.push(self.protocol);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src.ip().octets());
        f.extend_from_slice(&self.dst.ip().octets());
        f.extend_from_slice(&opts);
        let c = ipv4_header_checksum(&f[ip_start..]);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
        let udp_start = f.len();
        f.extend_from_slice(&self.src.port().to_be_bytes());
        f.extend_from_slice(&self.dst.port().to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.payload);
        if !self.zero_udp_checksum {
            let c = udp_checksum_v4(
                self.src.ip().octets(),
                self.dst.ip().octets(),
                &f[udp_start..],
            );
            f[udp_start + 6..udp_start + 8].copy_from_slice(&c.to_be_bytes());
        }
        f
    }
}

/// A UDP-in-IPv6-in-Ethernet frame (no extension headers), hop limit 64, with a correct UDP
/// checksum.
pub fn udp6_frame(src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut f = Vec::with_capacity(ETH_HDR_LEN + 40 + udp_len);
    f.extend_from_slice(&FRAME_DST_MAC);
    f.extend_from_slice(&FRAME_SRC_MAC);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.push(17);
    f.push(64);
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    let udp_start = f.len();
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let c = udp_checksum_v6(src.ip().octets(), dst.ip().octets(), &f[udp_start..]);
    f[udp_start + 6..udp_start + 8].copy_from_slice(&c.to_be_bytes());
    f
}

/// A UDP frame of either family from `src` to `dst` (one family), with `payload`.
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => Some(UdpFrame::new(s, d, payload).build()),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => Some(udp6_frame(s, d, payload)),
        _ => None,
    }
}
