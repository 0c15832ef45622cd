//! Indices of the global per-CPU counters in `STATS_V1`.
//!
//! Each packet the XDP program sees ends in exactly one verdict, and each verdict has a reason
//! counted here. The reply path (TC egress) and flow-table events have counters of their own.

/// A counter index. The numeric values are the array indices and part of the map contract.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A service packet rewritten to a backend and passed to the stack.
    Forwarded = 0,
    /// Passed: the frame is too short for the headers it claims.
    PassTruncated = 1,
    /// Passed: neither IPv4 nor IPv6 (EtherType). The name predates IPv6 and is kept, so
    /// that dashboards and alerts keep their meaning.
    PassNotIpv4 = 2,
    /// Passed: an IPv4 header with a bad version, IHL or total length.
    PassBadIpv4Header = 3,
    /// Passed: IPv4 but not UDP.
    PassNotUdp = 4,
    /// Passed: the first fragment of a fragmented IPv4 datagram (MF set, offset 0) that does
    /// not hold the whole UDP header, so cannot be balanced.
    PassFirstFragment = 5,
    /// Passed: a later fragment (offset non-zero) that matches no recorded first fragment
    /// (not ours, arrived before its first fragment, or its first fragment's route expired).
    PassLaterFragment = 6,
    /// Passed: a UDP header whose length field disagrees with the IPv4 total length.
    PassBadUdpHeader = 7,
    /// Passed: UDP to no configured service.
    PassNoService = 8,
    /// Dropped: a service with no usable backend.
    DropNoBackend = 9,
    /// Event: a new flow was created (first packet, or the old one idled out or lost its backend).
    FlowCreated = 10,
    /// Event: a flow entry had idled out and was replaced.
    FlowExpired = 11,
    /// Event: a flow's backend had changed or gone and it was rescheduled.
    FlowRescheduled = 12,
    /// Event: inserting a flow or reply entry failed (the packet is still forwarded).
    FlowInsertFailed = 13,
    /// Reply path: a backend reply rewritten to come from VIP:port.
    ReplyTranslated = 14,
    /// Reply path, dropped: a reply whose headers could not be rewritten (a helper failed), so it
    /// could be half-translated.
    DropReplyRewriteFailed = 15,
    /// Event: a flow was inserted under a key the flow table did not hold. The table only loses
    /// entries to LRU eviction (flows are replaced in place, never deleted), so evictions are
    /// these inserts minus the entries the table holds now (`xdplb stats` shows both).
    FlowTableInsert = 16,
    /// Passed: a new flow of a service with no backend taking new flows, whose policy
    /// (`when_all_down = "pass"`) hands it to the local stack.
    PassNoBackend = 17,
    /// A service packet (`nat`, `fullnat`, `dsr-*`) or a backend's reply sent straight out of an
    /// interface (XDP_TX or XDP_REDIRECT) after a FIB lookup, with its MAC addresses set (a
    /// request sent with the next-hop cache instead counts as `ForwardedCached`).
    ForwardedFib = 18,
    /// Passed, rewritten: the FIB knows the route but has no neighbour entry for the next hop
    /// yet; the kernel forwards this packet and resolves the neighbour for the next ones.
    PassNoNeighbour = 19,
    /// Passed, rewritten: the packet is bigger than the egress MTU; the kernel fragments it or
    /// answers ICMP "fragmentation needed" (DF set).
    PassFragNeeded = 20,
    /// Passed, rewritten: TTL (IPv6: hop limit) 1 or 0; the kernel answers ICMP "time
    /// exceeded".
    PassTtlExceeded = 21,
    /// Dropped, rewritten: the FIB has no usable route to the backend or client (unreachable,
    /// blackhole, prohibit, forwarding disabled).
    DropNoRoute = 22,
    /// Event: a `nat` backend's reply rewritten by XDP to come from VIP:port.
    NatReplyTranslated = 23,
    /// Dropped: a `dsr-l2` backend whose MAC address the neighbour table does not hold yet
    /// (the daemon resolves its backends' neighbours whenever it applies a config).
    DropNoNeighbour = 24,
    /// Dropped: a `dsr-ipip` packet that would exceed the egress MTU once encapsulated, or a
    /// `dsr-l2` packet bigger than the egress MTU; the client gets ICMP "fragmentation needed"
    /// (for `dsr-ipip` with the inner MTU; see `IcmpFragNeededSent`), except when the packet
    /// is itself an ICMP error (no ICMP error is ever sent about one).
    DropFragNeeded = 25,
    /// Event: an ICMP "fragmentation needed" (IPv6: ICMPv6 "packet too big") sent back to a
    /// client.
    IcmpFragNeededSent = 26,
    /// Dropped: the packet could not be grown for the outer header (`bpf_xdp_adjust_head`
    /// failed: no headroom).
    DropEncapFailed = 27,
    /// Dropped: a new `fullnat` flow found no free source port after `FULLNAT_PORT_TRIES`
    /// tries (or the translation table is full). No live flow's port is ever taken.
    DropPortsExhausted = 28,
    /// Event: a `fullnat` backend's reply rewritten back to VIP:port -> client.
    FullnatReplyTranslated = 29,
    /// Event: an ICMP error from a `nat` or `fullnat` backend's side, about a balanced flow,
    /// translated so that it reaches the client as if the VIP had sent the flow.
    IcmpErrorToClient = 30,
    /// Event: an ICMP error sent to the VIP about a balanced flow's reply (a router could not
    /// deliver it), sent on to the backend that owns the flow.
    IcmpErrorToBackend = 31,
    /// Dropped: a packet for a service, or a known reply, whose IPv4 header checksum is wrong.
    /// Checked before any state is created or anything is rewritten.
    DropBadIpv4Checksum = 32,
    /// Passed untouched: a frame whose Ethernet destination is not the receiving interface's
    /// address (flooded unknown unicast, a promiscuous NIC, a bridge port): another host's.
    PassNotForUs = 33,
    /// Dropped: a packet sent with a partial UDP checksum (the sender's tx checksum offload
    /// left only the pseudo-header sum) that leaves through XDP and is too long for the data
    /// plane to complete its checksum (4,096 bytes or more), or whose hand-over to the
    /// completing program failed.
    DropChecksumTooLong = 34,
    /// Passed untouched: an ICMP error whose lengths do not cover the quoted packet or whose
    /// ICMP checksum is wrong.
    PassBadIcmp = 35,
    /// Event: a UDP checksum left partial by the sender's checksum offload was completed (the
    /// packet left through XDP_TX or XDP_REDIRECT) or kept partial and updated (passed).
    PartialChecksumFixed = 36,
    /// Event: the first fragment of a datagram was balanced or translated, and its route
    /// recorded for the fragments that follow (`FRAGMENTS_V1`).
    FragmentRouteRecorded = 37,
    /// Event: a later fragment followed its first fragment's route (rewritten and sent the
    /// same way; its verdict is counted as for any packet of its mode).
    FragmentFollowed = 38,
    /// Event: the first packet of a new flow of a `flow_state = "second-packet"` service, sent
    /// where the scheduler put it without a flow entry (its 5-tuple marked in `SEEN`).
    FlowStateDeferred = 39,
    /// Event: a new flow above the flood guard's rate, of a service with a consistent
    /// scheduler, sent where the scheduler put it without a flow entry, so it evicted none.
    GuardStateless = 40,
    /// Dropped: a new flow above the flood guard's rate, of a service that needs a flow entry
    /// (its replies are translated, or its scheduler is not consistent). Named
    /// `drop_flood_guard`, so that it counts among the drops.
    GuardDropped = 41,
    /// A request sent straight to its backend (XDP_TX or XDP_REDIRECT) with the MAC addresses
    /// and egress of the next-hop cache (`NEXTHOPS_V1`), without a FIB lookup. A request whose
    /// backend has no usable entry goes through the FIB (`ForwardedFib` and the others).
    ForwardedCached = 42,
    /// Event: a flow entry idle longer than its service's `flow_stale_after`, whose backend
    /// was not the one the scheduling table now chooses for the flow, was rewritten to the
    /// table's choice (the flow had been away, on another node of an ECMP fleet, or silent).
    FlowStaleFollowedTable = 43,
    /// Passed untouched: an IPv6 packet with a fragment header (any fragment, first or
    /// later). IPv6 fragments are not balanced: only the sender fragments in IPv6, so a
    /// fragmented datagram to a service is rare, and the kernel reassembles it for `local`.
    PassIpv6Fragment = 44,
    /// Passed untouched: an IPv6 packet with more skippable extension headers (hop-by-hop,
    /// routing, destination options) than the parser walks, or one that runs past the packet.
    PassIpv6ExtHeaders = 45,
    /// Passed untouched: an IPv6 packet whose next header is none the parser knows: another
    /// transport than UDP and ICMPv6, or an extension header it does not skip (ESP, AH,
    /// mobility, HIP, shim6, no next header).
    PassIpv6UnknownHeader = 46,
    /// Passed untouched: UDP over IPv6 with a zero checksum, which RFC 8200 forbids (the
    /// receiving stack drops it).
    PassUdpZeroChecksum = 47,
    /// Passed: an IPv6 header with a bad version or a payload length past the frame.
    PassBadIpv6Header = 48,
}

impl Stat {
    /// Number of counters.
    pub const COUNT: u32 = 49;
    /// The length of `STATS_V1`: room for counters that later versions add, so that adding one
    /// does not change the pinned map's shape.
    pub const CAPACITY: u32 = 64;

    /// Every counter, in index order.
    pub const ALL: [Stat; Stat::COUNT as usize] = [
        Stat::Forwarded,
        Stat::PassTruncated,
        Stat::PassNotIpv4,
        Stat::PassBadIpv4Header,
        Stat::PassNotUdp,
        Stat::PassFirstFragment,
        Stat::PassLaterFragment,
        Stat::PassBadUdpHeader,
        Stat::PassNoService,
        Stat::DropNoBackend,
        Stat::FlowCreated,
        Stat::FlowExpired,
        Stat::FlowRescheduled,
        Stat::FlowInsertFailed,
        Stat::ReplyTranslated,
        Stat::DropReplyRewriteFailed,
        Stat::FlowTableInsert,
        Stat::PassNoBackend,
        Stat::ForwardedFib,
        Stat::PassNoNeighbour,
        Stat::PassFragNeeded,
        Stat::PassTtlExceeded,
        Stat::DropNoRoute,
        Stat::NatReplyTranslated,
        Stat::DropNoNeighbour,
        Stat::DropFragNeeded,
        Stat::IcmpFragNeededSent,
        Stat::DropEncapFailed,
        Stat::DropPortsExhausted,
        Stat::FullnatReplyTranslated,
        Stat::IcmpErrorToClient,
        Stat::IcmpErrorToBackend,
        Stat::DropBadIpv4Checksum,
        Stat::PassNotForUs,
        Stat::DropChecksumTooLong,
        Stat::PassBadIcmp,
        Stat::PartialChecksumFixed,
        Stat::FragmentRouteRecorded,
        Stat::FragmentFollowed,
        Stat::FlowStateDeferred,
        Stat::GuardStateless,
        Stat::GuardDropped,
        Stat::ForwardedCached,
        Stat::FlowStaleFollowedTable,
        Stat::PassIpv6Fragment,
        Stat::PassIpv6ExtHeaders,
        Stat::PassIpv6UnknownHeader,
        Stat::PassUdpZeroChecksum,
        Stat::PassBadIpv6Header,
    ];

    /// A stable snake_case name, used in `xdplb stats` and later as a metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Forwarded => "forwarded",
            Stat::PassTruncated => "pass_truncated",
            Stat::PassNotIpv4 => "pass_not_ipv4",
            Stat::PassBadIpv4Header => "pass_bad_ipv4_header",
            Stat::PassNotUdp => "pass_not_udp",
            Stat::PassFirstFragment => "pass_first_fragment",
            Stat::PassLaterFragment => "pass_later_fragment",
            Stat::PassBadUdpHeader => "pass_bad_udp_header",
            Stat::PassNoService => "pass_no_service",
            Stat::DropNoBackend => "drop_no_backend",
            Stat::FlowCreated => "flow_created",
            Stat::FlowExpired => "flow_expired",
            Stat::FlowRescheduled => "flow_rescheduled",
            Stat::FlowInsertFailed => "flow_insert_failed",
            Stat::ReplyTranslated => "reply_translated",
            Stat::DropReplyRewriteFailed => "drop_reply_rewrite_failed",
            Stat::FlowTableInsert => "flow_table_inserts",
            Stat::PassNoBackend => "pass_no_backend",
            Stat::ForwardedFib => "forwarded_fib",
            Stat::PassNoNeighbour => "pass_no_neighbour",
            Stat::PassFragNeeded => "pass_frag_needed",
            Stat::PassTtlExceeded => "pass_ttl_exceeded",
            Stat::DropNoRoute => "drop_no_route",
            Stat::NatReplyTranslated => "nat_reply_translated",
            Stat::DropNoNeighbour => "drop_no_neighbour",
            Stat::DropFragNeeded => "drop_frag_needed",
            Stat::IcmpFragNeededSent => "icmp_frag_needed_sent",
            Stat::DropEncapFailed => "drop_encap_failed",
            Stat::DropPortsExhausted => "drop_ports_exhausted",
            Stat::FullnatReplyTranslated => "fullnat_reply_translated",
            Stat::IcmpErrorToClient => "icmp_error_to_client",
            Stat::IcmpErrorToBackend => "icmp_error_to_backend",
            Stat::DropBadIpv4Checksum => "drop_bad_ipv4_checksum",
            Stat::PassNotForUs => "pass_not_for_us",
            Stat::DropChecksumTooLong => "drop_checksum_too_long",
            Stat::PassBadIcmp => "pass_bad_icmp",
            Stat::PartialChecksumFixed => "partial_checksum_fixed",
            Stat::FragmentRouteRecorded => "fragment_route_recorded",
            Stat::FragmentFollowed => "fragment_followed",
            Stat::FlowStateDeferred => "flow_state_deferred",
            Stat::GuardStateless => "guard_stateless",
            Stat::GuardDropped => "drop_flood_guard",
            Stat::ForwardedCached => "forwarded_cached",
            Stat::FlowStaleFollowedTable => "flow_stale_followed_table",
            Stat::PassIpv6Fragment => "pass_ipv6_fragment",
            Stat::PassIpv6ExtHeaders => "pass_ipv6_ext_headers",
            Stat::PassIpv6UnknownHeader => "pass_ipv6_unknown_header",
            Stat::PassUdpZeroChecksum => "pass_udp_zero_checksum",
            Stat::PassBadIpv6Header => "pass_bad_ipv6_header",
        }
    }
}

// New counters must fit the map's reserved length.
const _: () = assert!(Stat::COUNT <= Stat::CAPACITY);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_complete() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32, "{} is out of order", s.name());
        }
    }
}
