//! Bounds-checked packet access and the Ethernet / IPv4 / UDP parser.
//!
//! Every read or write of packet memory goes through [`ptr_at`], with the bounds check right
//! before the access, so the verifier sees a proven range for each pointer.

use aya_ebpf::programs::{TcContext, XdpContext};
use core::mem::size_of;
use xdplb_common::{IPPROTO_UDP, Stat};

pub const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// Ethernet header. Multi-byte fields in network order.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type_be: u16,
}

/// IPv4 header without options. Multi-byte fields in network order.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// UDP header. Multi-byte fields in network order.
#[repr(C)]
pub struct UdpHdr {
    pub source_be: u16,
    pub dest_be: u16,
    pub len_be: u16,
    pub check: u16,
}

/// A context whose packet data can be accessed directly.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `None` when the packet is
/// too short. The only way this crate touches packet memory.
#[inline(always)]
pub fn ptr_at<C: Packet, T>(ctx: &C, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A fully validated, unfragmented IPv4/UDP packet.
pub struct Ipv4Udp {
    pub ip: *mut Ipv4Hdr,
    pub udp: *mut UdpHdr,
    /// Offset of the UDP header from the start of the frame.
    pub l4_offset: usize,
    /// Length of the whole frame, for byte counters.
    pub frame_len: u32,
    /// The UDP checksum field held a partial checksum when the packet arrived (see
    /// `csum::udp_checksum_is_partial`); set by the ingress path before it rewrites anything.
    /// Never for a fragment (the sender completes a fragmented datagram's checksum).
    pub partial_csum: bool,
    /// `NOT_FRAGMENT`, `FIRST_FRAGMENT` (MF set, offset 0: it holds the UDP header, whose
    /// length and checksum cover the whole datagram) or `LATER_FRAGMENT` (no UDP header:
    /// `udp` then points at the IPv4 header, only so that it is a valid pointer, and must not
    /// be read or written as UDP).
    pub fragment: u8,
    /// The program runs in generic (skb) mode on the receiving interface: a packet it sends
    /// keeps its skb, partial checksum state included. Set with `partial_csum`.
    pub generic_xdp: bool,
}

impl Ipv4Udp {
    /// Source and destination address and port, as on the wire. Only for a packet with a UDP
    /// header (not a `LATER_FRAGMENT`).
    #[inline(always)]
    pub fn addresses(&self) -> (u32, u32, u16, u16) {
        // SAFETY: the parser validated both headers; nothing moved the packet since.
        unsafe {
            (
                (*self.ip).saddr,
                (*self.ip).daddr,
                (*self.udp).source_be,
                (*self.udp).dest_be,
            )
        }
    }
}

pub const NOT_FRAGMENT: u8 = 0;
pub const FIRST_FRAGMENT: u8 = 1;
pub const LATER_FRAGMENT: u8 = 2;

/// Parses Ethernet, IPv4 (options skipped, bounds-checked) and UDP.
///
/// Expects nothing of the packet. Returns the validated headers, or the reason the packet is not
/// one this load balancer may rewrite: every `Err` is a "pass untouched" outcome.
#[inline(always)]
pub fn ipv4_udp<C: Packet>(ctx: &C) -> Result<Ipv4Udp, Stat> {
    let frame_len = ctx.data_end() - ctx.data();
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Stat::PassTruncated)?;
    // SAFETY: ptr_at proved the Ethernet header lies inside the packet.
    if unsafe { (*eth).ether_type_be } != ETH_P_IP.to_be() {
        return Err(Stat::PassNotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(Stat::PassTruncated)?;
    // SAFETY: ptr_at proved the fixed 20-byte IPv4 header lies inside the packet.
    let (version_ihl, tot_len, frag_off, protocol) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len_be) as usize,
            u16::from_be((*ip).frag_off_be),
            (*ip).protocol,
        )
    };
    // IHL is 4 bits, so the header is at most 60 bytes and the UDP header at most at 74.
    let ip_hdr_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ip_hdr_len < IPV4_MIN_HDR_LEN || tot_len < ip_hdr_len {
        return Err(Stat::PassBadIpv4Header);
    }
    if ETH_HDR_LEN + tot_len > frame_len {
        return Err(Stat::PassTruncated);
    }
    if protocol != IPPROTO_UDP {
        return Err(Stat::PassNotUdp);
    }
    let l4_offset = ETH_HDR_LEN + ip_hdr_len;
    if frag_off & IP_OFFSET_MASK != 0 {
        // A later fragment: addresses and IP ID are all it has; the caller decides.
        return Ok(Ipv4Udp {
            ip,
            udp: ip.cast(),
            l4_offset,
            frame_len: frame_len as u32,
            partial_csum: false,
            fragment: LATER_FRAGMENT,
            generic_xdp: false,
        });
    }
    let first = frag_off & IP_MF != 0;
    let udp: *mut UdpHdr = ptr_at(ctx, l4_offset).ok_or(if first {
        Stat::PassFirstFragment
    } else {
        Stat::PassTruncated
    })?;
    // SAFETY: ptr_at proved the UDP header lies inside the packet.
    let udp_len = u16::from_be(unsafe { (*udp).len_be }) as usize;
    // The UDP header must lie inside the IPv4 total length, not just the frame. (Checked after
    // `ptr_at`: before it, the compiler would drop the bounds check the verifier needs.)
    if tot_len - ip_hdr_len < UDP_HDR_LEN {
        return Err(if first {
            Stat::PassFirstFragment
        } else {
            Stat::PassBadUdpHeader
        });
    }
    // A UDP length shorter than the IP payload is legal (the stack trims); longer is not,
    // except in a first fragment, whose UDP length covers the whole datagram.
    if udp_len < UDP_HDR_LEN || (!first && udp_len > tot_len - ip_hdr_len) {
        return Err(Stat::PassBadUdpHeader);
    }
    Ok(Ipv4Udp {
        ip,
        udp,
        l4_offset,
        frame_len: frame_len as u32,
        partial_csum: false,
        fragment: if first { FIRST_FRAGMENT } else { NOT_FRAGMENT },
        generic_xdp: false,
    })
}
