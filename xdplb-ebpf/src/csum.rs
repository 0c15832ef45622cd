//! Checksums over packet bytes: the IPv4 header check, sums over a whole UDP datagram or ICMP
//! message, and partial UDP checksums left by the sender's tx checksum offload.
//!
//! Why partial checksums matter: a veth or container interface has tx checksum offload on by
//! default. The sending kernel then hands the frame over as CHECKSUM_PARTIAL: the UDP checksum
//! field holds only the folded pseudo-header sum (not complemented), and whoever transmits the
//! skb last is trusted to finish it. XDP sees only bytes, not that state.
//! - When it leaves through XDP_TX or XDP_REDIRECT it becomes an xdp_frame and loses that
//!   state; the receiver checks the field as a full checksum. So we compute the full checksum
//!   over the pseudo-header and the whole datagram before it leaves.
//! - When the packet goes back to the kernel (XDP_PASS), the skb keeps its partial state.
//!   Delivered locally (`local`), a partial skb is trusted as it is, so the ordinary
//!   incremental update (right for every complete checksum) is all it needs. Routed on by the
//!   kernel (`nat` packets passed for a neighbour, an MTU or a TTL), the field must be the
//!   pseudo-header sum of the *new* addresses: there the whole datagram is summed, and a
//!   field that does not verify as complete is replaced by that sum.
//!
//! A partial checksum is recognised by its value: the field equals the folded pseudo-header
//! sum of the packet as received. A complete checksum has that value only by chance (about 1
//! in 65,536); both treatments above are right for it too, so a false match costs only time.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_csum_diff, bpf_redirect, bpf_xdp_load_bytes},
};
use xdplb_common::{IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, Stat, checksum::fold};

use crate::{
    parse::{
        ETH_HDR_LEN, ETH_P_IPV6, EthHdr, IPV6_HDR_LEN, Ipv4Hdr, Ipv4Udp, Ipv6Hdr, Ipv6Udp, Packet,
        UdpHdr, ptr_at,
    },
    service::Verdict,
};

/// How many 256-byte chunks [`sum_bytes`] sums for a UDP datagram: up to 4,095 bytes. The
/// program is not multi-buffer (xdp.frags), so a frame it sees fits in one page (under 4 KiB
/// after the headroom); longer ones never reach it. Each chunk costs verifier work.
pub const DATAGRAM_CHUNKS: usize = 15;
/// The same for an ICMP error: up to 1,535 bytes. Routers quote at most 576 (RFC 1812), and
/// the verifier walks every chunk of the loop on every path that follows, so the ICMP
/// program's loop is kept short; a longer ICMP error is not translated.
pub const ICMP_CHUNKS: usize = 5;
const CHUNK: usize = 256;

/// The one's-complement sum (unfolded, native word order) of `len` bytes of the packet from
/// `offset`. Expects `offset` even (checksummed regions start at even offsets here). Returns
/// `None` when the bytes are not all inside the packet or `len` is more than `CHUNKS` chunks
/// and the pieces after them hold.
///
/// `bpf_csum_diff` sums a constant-size slice per call (the verifier needs the size bounded
/// and the bytes proven inside the packet), so the run is cut into 256-byte chunks, then
/// power-of-two pieces, then the last bytes one by one.
#[inline(always)]
pub fn sum_bytes<const CHUNKS: usize>(
    ctx: &aya_ebpf::programs::XdpContext,
    offset: usize,
    len: usize,
) -> Option<u64> {
    if len >= (CHUNKS + 1) * CHUNK {
        return None;
    }
    let mut off = offset;
    let mut left = len;
    let mut sum = 0u64;
    for _ in 0..CHUNKS {
        if left < CHUNK {
            break;
        }
        sum += chunk::<_, CHUNK>(ctx, off)?;
        off += CHUNK;
        left -= CHUNK;
    }
    macro_rules! piece {
        ($n:literal) => {
            if left >= $n {
                sum += chunk::<_, $n>(ctx, off)?;
                off += $n;
                left -= $n;
            }
        };
    }
    piece!(128);
    piece!(64);
    piece!(32);
    piece!(16);
    piece!(8);
    piece!(4);
    // The last 0 to 3 bytes, copied out by the kernel (`bpf_xdp_load_bytes` checks the
    // offset itself): a direct read of a 1- or 2-byte tail is compiled into a comparison the
    // verifier cannot tie to the access. A trailing odd byte is the high-order byte of a
    // big-endian word padded with zero, which the zeroed buffer gives.
    // SAFETY: a read of a local. Volatile so that the mask below stays: the compiler knows
    // `left < 4` here, the verifier does not.
    let left = unsafe { core::ptr::read_volatile(&left) } & 3;
    if left > 0 {
        let mut tail = [0u8; 4];
        // SAFETY: the helper writes at most `left` (< 4) bytes into the 4-byte buffer.
        let rc = unsafe {
            bpf_xdp_load_bytes(ctx.ctx, off as u32, tail.as_mut_ptr().cast(), left as u32)
        };
        if rc != 0 {
            return None;
        }
        sum += u64::from(u32::from_ne_bytes(tail));
    }
    Some(sum)
}

/// The sum of `N` bytes (a multiple of 4, at most 512) at `off`.
#[inline(always)]
fn chunk<C: Packet, const N: usize>(ctx: &C, off: usize) -> Option<u64> {
    let start = ctx.data() + off;
    // SAFETY: a read of a local. Volatile, so that the compiler passes the helper the very
    // pointer it bounds-checked: otherwise it may pass `(start + N) - N`, which the verifier
    // cannot tie to the check.
    let start = unsafe { core::ptr::read_volatile(&start) };
    if start + N > ctx.data_end() {
        return None;
    }
    let p = start as *mut [u8; N];
    // SAFETY: `ptr_at` proved the N bytes lie inside the packet; the helper only reads them.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), N as u32, 0) };
    if r < 0 {
        return None;
    }
    // The helper returns a 32-bit partial sum (folded further on some kernels); either is the
    // same one's-complement value.
    Some(u64::from(r as u32))
}

/// Whether the IPv4 header of `pkt` (options included) has a correct checksum. Loop-free (it
/// runs for every service packet): the fixed 20 bytes, then the options in pieces.
#[inline(always)]
pub fn ipv4_header_is_valid<C: Packet>(ctx: &C, pkt: &Ipv4Udp) -> bool {
    let Some(fixed) = ptr_at::<_, [u32; 5]>(ctx, ETH_HDR_LEN) else {
        return false;
    };
    // SAFETY: bounds-checked just above.
    let w = unsafe { *fixed };
    let mut sum = u64::from(w[0]) + u64::from(w[1]) + u64::from(w[2]) + u64::from(w[3]);
    sum += u64::from(w[4]);
    let mut off = ETH_HDR_LEN + 20;
    let mut left = pkt.l4_offset - off;
    macro_rules! piece {
        ($n:literal) => {
            if left >= $n {
                match chunk::<C, $n>(ctx, off) {
                    Some(s) => sum += s,
                    None => return false,
                }
                off += $n;
                left -= $n;
            }
        };
    }
    piece!(32);
    piece!(16);
    piece!(8);
    piece!(4);
    let _ = (off, left);
    fold(sum) == 0xffff
}

/// The pseudo-header sum of a validated IPv4/UDP packet as it is now (raw, unfolded).
#[inline(always)]
fn pseudo_header_sum(pkt: &Ipv4Udp) -> u64 {
    // SAFETY: the parser proved both headers lie inside the packet.
    let (saddr, daddr, len_be) = unsafe { ((*pkt.ip).saddr, (*pkt.ip).daddr, (*pkt.udp).len_be) };
    u64::from(saddr)
        + u64::from(daddr)
        + u64::from(u16::from(IPPROTO_UDP).to_be())
        + u64::from(len_be)
}

/// The pseudo-header sum of a validated IPv6/UDP packet as it is now (raw, unfolded): both
/// addresses, the upper-layer length (the UDP length) and the next header (RFC 8200 8.1).
#[inline(always)]
fn pseudo_header_sum6(pkt: &Ipv6Udp) -> u64 {
    // SAFETY: the parser proved both headers lie inside the packet.
    let (saddr, daddr, len_be) = unsafe { ((*pkt.ip6).saddr, (*pkt.ip6).daddr, (*pkt.udp).len_be) };
    // The length is added as the header holds it (network order, the same sum once folded).
    crate::encap6::pseudo_header_sum(&saddr, &daddr, 0, IPPROTO_UDP) + u64::from(len_be)
}

/// Whether the UDP checksum field of the packet as received holds only the pseudo-header sum
/// (a partial checksum; see the module's documentation). Call before anything is rewritten.
#[inline(always)]
pub fn udp_checksum_is_partial(pkt: &Ipv4Udp) -> bool {
    // SAFETY: the parser proved the UDP header lies inside the packet.
    let check = unsafe { (*pkt.udp).check };
    check != 0 && check == fold(pseudo_header_sum(pkt))
}

/// [`udp_checksum_is_partial`] for IPv6.
#[inline(always)]
pub fn udp_checksum_is_partial6(pkt: &Ipv6Udp) -> bool {
    // SAFETY: the parser proved the UDP header lies inside the packet.
    let check = unsafe { (*pkt.udp).check };
    check != 0 && check == fold(pseudo_header_sum6(pkt))
}

/// Where a packet whose checksum `xdplb_finish_checksum` completes goes next. Written by the
/// ingress program right before the tail call, read by the finishing program (same CPU).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FinishArgs {
    /// XDP_TX (back out of the interface it came in on), XDP_REDIRECT to `ifindex`, or
    /// XDP_PASS (a rewritten packet handed to the kernel, which routes it on).
    pub action: u32,
    pub ifindex: u32,
    /// The verdict's counter.
    pub stat: Stat,
    /// Non-zero in generic (skb) mode: the skb keeps its state, so the checksum is kept fit
    /// for it (as for XDP_PASS) instead of completed.
    pub keep_partial: u32,
}

/// The finishing program: completes the UDP checksum of a packet that arrived with a partial
/// one and leaves through XDP (the frame, addresses and MACs already final), then sends it as
/// `FINISH_ARGS` says. The packet is IPv4/UDP, or IPv4-in-IPv4 around it (`dsr-ipip`), or
/// IPv6/UDP (extension headers walked as `parse::ipv6_upper` does), or IPv6-in-IPv6 around it.
///
/// A program of its own (ingress tail-calls it) so that the verifier walks the summing loop
/// once, not once per forwarding path.
#[inline(always)]
pub fn finish_and_send(ctx: &aya_ebpf::programs::XdpContext) -> Verdict {
    let drop = Verdict::drop(Stat::DropChecksumTooLong);
    let Some(args) = crate::FINISH_ARGS.get(0).copied() else {
        return drop;
    };
    let Some(eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        return drop;
    };
    // SAFETY: bounds-checked just above.
    let located = if unsafe { (*eth).ether_type_be } == ETH_P_IPV6.to_be() {
        locate_udp6(ctx)
    } else {
        locate_udp4(ctx)
    };
    let Some((pseudo, udp, l4_offset)) = located else {
        return drop;
    };
    complete_and_send(ctx, args, pseudo, udp, l4_offset)
}

/// The IPv4 packet's (or IPv4-in-IPv4 packet's inner) pseudo-header sum, UDP header and its
/// offset, for [`finish_and_send`].
#[inline(always)]
fn locate_udp4(ctx: &aya_ebpf::programs::XdpContext) -> Option<(u64, *mut UdpHdr, usize)> {
    let outer = ptr_at::<_, Ipv4Hdr>(ctx, ETH_HDR_LEN)?;
    // SAFETY: bounds-checked just above.
    let ip_off = if unsafe { (*outer).protocol } == IPPROTO_IPIP {
        ETH_HDR_LEN + 20
    } else {
        ETH_HDR_LEN
    };
    let ip = ptr_at::<_, Ipv4Hdr>(ctx, ip_off)?;
    // SAFETY: bounds-checked just above.
    let ihl = usize::from(unsafe { (*ip).version_ihl } & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let l4_offset = ip_off + ihl;
    let udp = ptr_at::<_, UdpHdr>(ctx, l4_offset)?;
    let pkt = Ipv4Udp {
        ip,
        udp,
        l4_offset,
        frame_len: 0,
        partial_csum: true,
        fragment: crate::parse::NOT_FRAGMENT,
        generic_xdp: false,
    };
    Some((pseudo_header_sum(&pkt), udp, l4_offset))
}

/// [`locate_udp4`] for IPv6, or IPv6-in-IPv6 (outer next header 41: the inner packet). The
/// UDP header's offset is the one `xdplb_ingress6` noted in `FINISH_L4` when it found the
/// checksum partial (see [`note_l4_offset`]), not walked again here: the extension-header
/// walk's every exit would have the verifier walk the summing loop once more.
#[inline(always)]
fn locate_udp6(ctx: &aya_ebpf::programs::XdpContext) -> Option<(u64, *mut UdpHdr, usize)> {
    let outer = ptr_at::<_, Ipv6Hdr>(ctx, ETH_HDR_LEN)?;
    // SAFETY: bounds-checked just above.
    let shift = if unsafe { (*outer).nexthdr } == IPPROTO_IPV6 {
        IPV6_HDR_LEN
    } else {
        0
    };
    let ip6 = ptr_at::<_, Ipv6Hdr>(ctx, ETH_HDR_LEN + shift)?;
    // SAFETY: bounds-checked just above.
    let (saddr, daddr) = unsafe { ((*ip6).saddr, (*ip6).daddr) };
    let mut pseudo = crate::encap6::pseudo_header_sum(&saddr, &daddr, 0, IPPROTO_UDP);
    // Through the map again: one state for the verifier whether or not encapsulated.
    note_l4_offset(noted_l4_offset()? + shift);
    let l4_offset = noted_l4_offset()?;
    let udp = ptr_at::<_, UdpHdr>(ctx, l4_offset)?;
    if l4_offset < ETH_HDR_LEN + IPV6_HDR_LEN {
        return None;
    }
    // SAFETY: bounds-checked just above.
    pseudo += u64::from(unsafe { (*udp).len_be });
    Some((pseudo, udp, l4_offset))
}

/// The mask of the UDP offsets noted in `FINISH_L4`: past any frame the program sees (under
/// 4 KiB), and past the longest extension-header chain the parser walks.
const MAX_L4_OFFSET: usize = 0x3fff;

/// Notes in `FINISH_L4` (per CPU) where an IPv6 packet has its UDP header: for
/// `xdplb_finish_checksum` (see [`locate_udp6`]), and read back at once by the IPv6 programs
/// (see `lb6::settled`).
#[inline(always)]
pub fn note_l4_offset(l4_offset: usize) {
    if let Some(slot) = crate::FINISH_L4.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot of this CPU.
        unsafe { *slot = l4_offset as u32 };
    }
}

/// What [`note_l4_offset`] noted, bounded by a mask (not compared: a comparison before
/// `ptr_at` lets the compiler drop the bounds check the verifier needs). To the verifier an
/// unknown value: every path that noted an offset continues as one.
#[inline(always)]
pub fn noted_l4_offset() -> Option<usize> {
    crate::FINISH_L4.get(0).map(|v| *v as usize & MAX_L4_OFFSET)
}

/// The end of [`finish_and_send`], for either family: `pseudo` is the packet's pseudo-header
/// sum, `udp` its UDP header at `l4_offset`.
#[inline(always)]
fn complete_and_send(
    ctx: &aya_ebpf::programs::XdpContext,
    args: FinishArgs,
    pseudo: u64,
    udp: *mut UdpHdr,
    l4_offset: usize,
) -> Verdict {
    let drop = Verdict::drop(Stat::DropChecksumTooLong);
    // SAFETY: bounds-checked by the caller.
    let (udp_len, field) = unsafe { (usize::from(u16::from_be((*udp).len_be)), (*udp).check) };
    // The datagram's sum with the field as it is now.
    let Some(data) = sum_bytes::<DATAGRAM_CHUNKS>(ctx, l4_offset, udp_len) else {
        return drop;
    };
    if args.action == xdp_action::XDP_PASS || args.keep_partial != 0 {
        // The skb goes on (handed to the kernel, or sent in generic mode): a checksum that
        // verifies was complete all along (its incremental update is right); otherwise the skb
        // is partial and the field must be the pseudo-header sum of the new addresses, which
        // the last transmitter completes.
        if fold(pseudo + data) != 0xffff {
            // SAFETY: bounds-checked above.
            unsafe { (*udp).check = fold(pseudo) };
            crate::stats::count(Stat::PartialChecksumFixed);
        }
        if args.action == xdp_action::XDP_PASS {
            return Verdict::pass(args.stat);
        }
    } else {
        // Leaving through XDP as an xdp_frame: the full checksum, computed with the field taken
        // as zero (adding its complement removes it from the sum). Right whether it was partial
        // or complete.
        let check = match !fold(pseudo + data + u64::from(!field)) {
            0 => 0xffff,
            c => c,
        };
        // SAFETY: bounds-checked above.
        unsafe { (*udp).check = check };
        crate::stats::count(Stat::PartialChecksumFixed);
    }
    let action = if args.action == xdp_action::XDP_TX {
        xdp_action::XDP_TX
    } else {
        // SAFETY: a helper taking plain integers; it returns XDP_REDIRECT (no flags).
        unsafe { bpf_redirect(args.ifindex, 0) as u32 }
    };
    Verdict {
        action,
        stat: args.stat,
    }
}

/// Hands a packet that arrived with a partial-looking checksum to `xdplb_finish_checksum`
/// (see [`finish_and_send`]) with what to do next. Returns only if that failed: the caller
/// drops the packet.
#[inline(always)]
pub fn tail_call_finish(ctx: &aya_ebpf::programs::XdpContext, args: FinishArgs) -> Verdict {
    if let Some(slot) = crate::FINISH_ARGS.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot of this CPU.
        unsafe { *slot = args };
        // SAFETY: a tail call into a program user space put in the array; it returns only if
        // that failed.
        unsafe { crate::PROGS.tail_call(ctx, crate::PROG_FINISH) };
    }
    // The tail call failed: a packet meant for the kernel still goes there.
    if args.action == xdp_action::XDP_PASS {
        return Verdict::pass(args.stat);
    }
    Verdict::drop(Stat::DropChecksumTooLong)
}
