//! Building and decoding Ethernet/IPv4/UDP frames in user space, for BPF_PROG_TEST_RUN cases
//! and the benchmark. Checksums are computed in full with `xdplb_common::checksum`, which is
//! independent of the data plane's incremental updates.

use std::net::{Ipv4Addr, SocketAddrV4};

use xdplb_common::checksum::{fold, ipv4_header_checksum, sum_be_words, udp_checksum_v4};

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

/// A decoded UDP/IPv4 frame, with its checksums checked from scratch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ihl: usize,
    pub payload: Vec<u8>,
    /// The IPv4 header sums to all ones.
    pub ip_checksum_ok: bool,
    /// The UDP checksum field as sent (host order); 0 means none.
    pub udp_checksum: u16,
    /// The UDP checksum equals a full recomputation (true when it is 0).
    pub udp_checksum_ok: bool,
}

/// Decodes a frame built like [`UdpFrame::build`]. Returns `None` if it is not one.
pub fn decode(frame: &[u8]) -> Option<Decoded> {
    let ip = frame.get(ETH_HDR_LEN..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize;
    let tot_len = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
    let header = ip.get(..ihl * 4)?;
    let ip_checksum_ok = fold(sum_be_words(header)) == 0xffff;
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = ip.get(ihl * 4..tot_len)?;
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let udp_checksum = u16::from_be_bytes([*udp.get(6)?, *udp.get(7)?]);
    let udp_checksum_ok =
        udp_checksum == 0 || udp_checksum == udp_checksum_v4(src_ip.octets(), dst_ip.octets(), udp);
    Some(Decoded {
        src: SocketAddrV4::new(src_ip, sport),
        dst: SocketAddrV4::new(dst_ip, dport),
        ihl,
        payload: udp.get(8..)?.to_vec(),
        ip_checksum_ok,
        udp_checksum,
        udp_checksum_ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_decode_round_trip_with_valid_checksums() {
        let src: SocketAddrV4 = "10.1.2.3:4444".parse().expect("literal");
        let dst: SocketAddrV4 = "127.0.0.1:9875".parse().expect("literal");
        let mut f = UdpFrame::new(src, dst, b"hello");
        f.ip_options = vec![1, 1, 1];
        let d = decode(&f.build()).expect("decodes");
        assert_eq!((d.src, d.dst, d.ihl), (src, dst, 6));
        assert_eq!(d.payload, b"hello");
        assert!(d.ip_checksum_ok && d.udp_checksum_ok && d.udp_checksum != 0);
    }

    #[test]
    fn decode_notices_a_corrupted_checksum() {
        let src: SocketAddrV4 = "10.1.2.3:4444".parse().expect("literal");
        let dst: SocketAddrV4 = "127.0.0.1:9875".parse().expect("literal");
        let mut bytes = UdpFrame::new(src, dst, b"hello").build();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        bytes[ETH_HDR_LEN + 8] ^= 1; // TTL
        let d = decode(&bytes).expect("decodes");
        assert!(!d.ip_checksum_ok && !d.udp_checksum_ok);
    }
}
