//! Bounds-checked packet access and the Ethernet / IPv4 / IPv6 / UDP parsers.
//!
//! Every read or write of packet memory goes through [`ptr_at`], with the bounds check right
//! before the access, so the verifier sees a proven range for each pointer.

use aya_ebpf::programs::{TcContext, XdpContext};
use core::mem::size_of;
use xdplb_common::{IPPROTO_UDP, Stat};

pub const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPV6_HDR_LEN: usize = 40;
/// ICMPv6's next-header value.
pub const IPPROTO_ICMPV6: u8 = 58;
/// The IPv6 extension headers the parser skips (see [`ipv6_upper`]).
const NEXTHDR_HOP_BY_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST_OPTIONS: u8 = 60;
/// How many skippable extension headers [`ipv6_upper`] walks before giving up.
pub const IPV6_MAX_EXT_HEADERS: usize = 4;

/// The traffic class and flow label of an IPv6 header's first word, without the version (what
/// a FIB lookup takes, as the kernel's own), network order.
pub const IPV6_FLOWINFO_MASK_BE: u32 = 0x0fff_ffffu32.to_be();
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

/// IPv6 fixed header (40 bytes). Multi-byte fields and addresses in network order.
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow_be: u32,
    pub payload_len_be: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    /// Wire order, the layout of `xdplb_common::Addr`.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

const _: () = assert!(size_of::<Ipv6Hdr>() == IPV6_HDR_LEN);

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

/// Whether the frame's EtherType is IPv6.
#[inline(always)]
pub fn is_ipv6_frame<C: Packet>(ctx: &C) -> bool {
    let Some(eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: ptr_at proved the Ethernet header lies inside the packet.
    let ether_type_be = unsafe { (*eth).ether_type_be };
    ether_type_be == ETH_P_IPV6.to_be()
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

/// An IPv6 packet's fixed header and where its upper-layer header starts, once the
/// extension-header chain is walked (see [`ipv6_upper`]).
pub struct Ipv6Upper {
    pub ip6: *mut Ipv6Hdr,
    /// `IPPROTO_UDP` or `IPPROTO_ICMPV6`: [`ipv6_upper`] returns no other.
    pub next_header: u8,
    /// Offset of the upper-layer header from the start of the frame.
    pub l4_offset: usize,
    /// Bytes from `l4_offset` to the end of the IPv6 payload (the upper-layer length of the
    /// pseudo-header, before the upper layer's own length field is checked).
    pub l4_len: usize,
    /// Length of the whole frame.
    pub frame_len: usize,
}

/// Whether the parser skips `next` (`Ok(true)`), stops at it as the upper layer
/// (`Ok(false)`: UDP or ICMPv6), or passes the packet (`Err`, the reason).
#[inline(always)]
fn ipv6_next_header_policy(next: u8) -> Result<bool, Stat> {
    match next {
        IPPROTO_UDP | IPPROTO_ICMPV6 => Ok(false),
        NEXTHDR_HOP_BY_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST_OPTIONS => Ok(true),
        NEXTHDR_FRAGMENT => Err(Stat::PassIpv6Fragment),
        _ => Err(Stat::PassIpv6UnknownHeader),
    }
}

/// Parses Ethernet and IPv6 and walks the extension-header chain to the upper layer.
///
/// The policy (every `Err` is a "pass untouched" outcome, with its reason):
/// - version not 6, or a payload length past the frame: `PassBadIpv6Header`;
/// - hop-by-hop options (0, only as the first header, as RFC 8200 requires), routing (43) and
///   destination options (60) are skipped, `(hdr_ext_len + 1) * 8` bytes each, each within the
///   IPv6 payload; at most [`IPV6_MAX_EXT_HEADERS`] of them: more, a header running past the
///   payload, hop-by-hop anywhere but first, or a routing header with segments left > 0:
///   `PassIpv6ExtHeaders`. (With segments left, the destination is not the final one: the
///   UDP checksum covers the routing header's last address (RFC 8200 8.1) and a receiving
///   kernel would forward the packet, not deliver it, so it is not balanced.);
/// - a fragment header (44): `PassIpv6Fragment` (IPv6 fragments are not balanced);
/// - any other next header, an unknown extension header (ESP, AH, mobility, HIP, shim6, no
///   next header) or another transport than UDP (17) and ICMPv6 (58) alike:
///   `PassIpv6UnknownHeader`;
/// - UDP or ICMPv6: `Ok`, with where it starts.
///
/// Generic over [`Packet`], so that the TC egress program parses as XDP does.
#[inline(always)]
pub fn ipv6_upper<C: Packet>(ctx: &C) -> Result<Ipv6Upper, Stat> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Stat::PassTruncated)?;
    // SAFETY: ptr_at proved the Ethernet header lies inside the packet.
    if unsafe { (*eth).ether_type_be } != ETH_P_IPV6.to_be() {
        return Err(Stat::PassNotIpv4);
    }
    ipv6_upper_at(ctx, ETH_HDR_LEN)
}

/// [`ipv6_upper`] for an IPv6 header at `l3_offset` (after the Ethernet header, or inside an
/// IPv6-in-IPv6 packet), the EtherType already checked.
#[inline(always)]
pub fn ipv6_upper_at<C: Packet>(ctx: &C, l3_offset: usize) -> Result<Ipv6Upper, Stat> {
    let frame_len = ctx.data_end() - ctx.data();
    let ip6: *mut Ipv6Hdr = ptr_at(ctx, l3_offset).ok_or(Stat::PassTruncated)?;
    // SAFETY: ptr_at proved the 40-byte IPv6 header lies inside the packet.
    let (version, payload_len, mut next) = unsafe {
        (
            *(ip6 as *const u8) >> 4,
            u16::from_be((*ip6).payload_len_be) as usize,
            (*ip6).nexthdr,
        )
    };
    // A jumbogram (payload length 0, hop-by-hop jumbo option) fails the UDP length check.
    let end = l3_offset + IPV6_HDR_LEN + payload_len;
    if version != 6 || end > frame_len {
        return Err(Stat::PassBadIpv6Header);
    }
    let mut off = l3_offset + IPV6_HDR_LEN;
    // Bounded: at most IPV6_MAX_EXT_HEADERS headers, each at most 2,048 bytes, so `off` stays
    // a bounded scalar the verifier can follow.
    for walked in 0..IPV6_MAX_EXT_HEADERS {
        if !ipv6_next_header_policy(next)? {
            return Ok(Ipv6Upper {
                ip6,
                next_header: next,
                l4_offset: off,
                l4_len: end - off,
                frame_len,
            });
        }
        if next == NEXTHDR_HOP_BY_HOP && walked != 0 {
            return Err(Stat::PassIpv6ExtHeaders);
        }
        // Every extension header is at least 8 bytes, so its first 4 are inside it.
        let ext: *mut [u8; 4] = ptr_at(ctx, off).ok_or(Stat::PassIpv6ExtHeaders)?;
        // SAFETY: ptr_at proved the extension header's first four bytes lie inside the packet.
        let (following, ext_len, segments_left) = unsafe { ((*ext)[0], (*ext)[1], (*ext)[3]) };
        if next == NEXTHDR_ROUTING && segments_left != 0 {
            return Err(Stat::PassIpv6ExtHeaders);
        }
        off += (ext_len as usize + 1) * 8;
        if off > end {
            return Err(Stat::PassIpv6ExtHeaders);
        }
        next = following;
    }
    if ipv6_next_header_policy(next)? {
        return Err(Stat::PassIpv6ExtHeaders);
    }
    Ok(Ipv6Upper {
        ip6,
        next_header: next,
        l4_offset: off,
        l4_len: end - off,
        frame_len,
    })
}

/// A fully validated IPv6/UDP packet (never a fragment: see [`ipv6_upper`]).
pub struct Ipv6Udp {
    pub ip6: *mut Ipv6Hdr,
    pub udp: *mut UdpHdr,
    /// Offset of the UDP header from the start of the frame.
    pub l4_offset: usize,
    /// Length of the whole frame, for byte counters.
    pub frame_len: u32,
    /// As `Ipv4Udp::partial_csum`: set by the ingress path before it rewrites anything.
    pub partial_csum: bool,
    /// As `Ipv4Udp::generic_xdp`. Set with `partial_csum`.
    pub generic_xdp: bool,
}

impl Ipv6Udp {
    /// Source and destination address and port, as on the wire.
    #[inline(always)]
    pub fn addresses(&self) -> ([u32; 4], [u32; 4], u16, u16) {
        // SAFETY: the parser validated both headers; nothing moved the packet since.
        unsafe {
            (
                (*self.ip6).saddr,
                (*self.ip6).daddr,
                (*self.udp).source_be,
                (*self.udp).dest_be,
            )
        }
    }
}

/// Validates the UDP header of a packet [`ipv6_upper`] found to carry UDP.
///
/// The UDP header and length must fit the IPv6 payload (a UDP length shorter than the payload
/// is legal, the stack trims: `PassBadUdpHeader` otherwise); a zero checksum, which RFC 8200
/// forbids over IPv6, is `PassUdpZeroChecksum`. An ICMPv6 packet is `PassNotUdp`.
#[inline(always)]
pub fn ipv6_udp_at<C: Packet>(ctx: &C, upper: &Ipv6Upper) -> Result<Ipv6Udp, Stat> {
    if upper.next_header != IPPROTO_UDP {
        return Err(Stat::PassNotUdp);
    }
    let udp: *mut UdpHdr = ptr_at(ctx, upper.l4_offset).ok_or(Stat::PassBadUdpHeader)?;
    // SAFETY: ptr_at proved the UDP header lies inside the packet.
    let (udp_len, check) = unsafe { (u16::from_be((*udp).len_be) as usize, (*udp).check) };
    // Checked after `ptr_at`, as in `ipv4_udp`.
    if upper.l4_len < UDP_HDR_LEN || udp_len < UDP_HDR_LEN || udp_len > upper.l4_len {
        return Err(Stat::PassBadUdpHeader);
    }
    if check == 0 {
        return Err(Stat::PassUdpZeroChecksum);
    }
    Ok(Ipv6Udp {
        ip6: upper.ip6,
        udp,
        l4_offset: upper.l4_offset,
        frame_len: upper.frame_len as u32,
        partial_csum: false,
        generic_xdp: false,
    })
}

/// Parses Ethernet, IPv6 (extension headers per [`ipv6_upper`]) and UDP (per
/// [`ipv6_udp_at`]). Expects nothing of the packet; every `Err` is a "pass untouched" outcome.
/// Used by the TC egress program (IPv6 `local` replies); the XDP programs walk the chain
/// first, then settle the offset (see `lb6::settled`), then [`ipv6_udp_at`].
#[inline(always)]
pub fn ipv6_udp<C: Packet>(ctx: &C) -> Result<Ipv6Udp, Stat> {
    let upper = ipv6_upper(ctx)?;
    ipv6_udp_at(ctx, &upper)
}
