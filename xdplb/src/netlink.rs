//! rtnetlink, for what bpf_links cannot say: which XDP program an interface runs (however it
//! was attached), attaching one that outlives every process without a pin, and the interface
//! counters of this network namespace (for veth drops that XDP cannot see); and the blackhole
//! /32 routes that hand the announced VIPs to a BGP speaker (see `announce`).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, BorrowedFd},
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `XDP_FLAGS_*` from `<linux/if_link.h>`.
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink: {what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: {what}: cannot decode the kernel's answer: {reason}")]
    Decode { what: String, reason: String },
    #[error("interface {0:?} does not exist in this network namespace")]
    NoSuchInterface(String),
}

/// What the kernel says about one interface.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    /// The XDP program attached in driver or generic mode (0: none).
    pub xdp_prog_id: u32,
    /// `XDP_FLAGS_DRV_MODE` or `XDP_FLAGS_SKB_MODE` when a program is attached, else 0.
    pub xdp_mode_flag: u32,
    pub is_veth: bool,
    pub tx_dropped: u64,
    pub rx_dropped: u64,
    /// The interface's link-layer address when it is an Ethernet one (6 bytes).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        index: msg.header.index,
        ..LinkState::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => s.name.clone_from(n),
            LinkAttribute::Address(a) => s.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => s.mtu = *m,
            LinkAttribute::Stats64(st) => {
                s.tx_dropped = st.tx_dropped;
                s.rx_dropped = st.rx_dropped;
            }
            LinkAttribute::LinkInfo(infos) => {
                s.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::Xdp(xdp) => {
                for x in xdp {
                    match x {
                        LinkXdp::ProgId(id) => s.xdp_prog_id = *id,
                        LinkXdp::Attached(XdpAttached::Driver) => {
                            s.xdp_mode_flag = XDP_FLAGS_DRV_MODE;
                        }
                        LinkXdp::Attached(XdpAttached::SocketBuffer) => {
                            s.xdp_mode_flag = XDP_FLAGS_SKB_MODE;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Sends one request and collects every answer (a dump's parts, or the ACK).
pub(crate) fn request(
    what: &str,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    request_on(false, what, msg, flags)
}

/// [`request`], with `NETLINK_GET_STRICT_CHK` when `strict`: the kernel then checks the
/// request's header strictly and filters a dump by what it names (a route dump by table and
/// protocol), instead of sending everything.
fn request_on(
    strict: bool,
    what: &str,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
    if strict {
        socket
            .set_netlink_get_strict_chk(true)
            .map_err(NetlinkError::Socket)?;
    }
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(NetlinkError::Socket)?;
    let decode = |reason: String| NetlinkError::Decode {
        what: what.to_string(),
        reason,
    };
    let mut answers = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(NetlinkError::Socket)?;
        let mut offset = 0;
        while offset < data.len() {
            let part = &data[offset..];
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(part)
                .map_err(|e| decode(e.to_string()))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(decode("a message of length 0".into()));
            }
            offset += len;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(answers),
                        Some(code) => Err(NetlinkError::Kernel {
                            what: what.to_string(),
                            source: std::io::Error::from_raw_os_error(-code.get()),
                        }),
                    };
                }
                _ => {}
            }
            if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 && !answers.is_empty() {
                return Ok(answers);
            }
        }
    }
}

/// The state of interface `name` in this network namespace.
pub fn link(name: &str) -> Result<LinkState, NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let what = format!("RTM_GETLINK {name}");
    match request(&what, RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST) {
        Ok(answers) => answers
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_state(l)),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::NoSuchInterface(name.to_string())),
        Err(NetlinkError::Kernel { source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error()) =>
        {
            Err(NetlinkError::NoSuchInterface(name.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// Every interface of this network namespace.
pub fn links() -> Result<Vec<LinkState>, NetlinkError> {
    let answers = request(
        "RTM_GETLINK (dump)",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_state(l)),
            _ => None,
        })
        .collect())
}

/// Attaches `prog` to interface `index` through `IFLA_XDP` (`flags`: a mode and
/// `XDP_FLAGS_UPDATE_IF_NOEXIST`), or detaches with `prog = None` (`flags`: the attached mode,
/// and with `expected` and `XDP_FLAGS_REPLACE` only if that program is still the one there).
/// A netlink attachment belongs to the interface: it needs no pin and outlives the process.
pub fn set_xdp(
    index: u32,
    prog: Option<BorrowedFd<'_>>,
    expected: Option<BorrowedFd<'_>>,
    flags: u32,
) -> Result<(), NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let mut xdp = vec![LinkXdp::Fd(prog.map_or(-1, |fd| fd.as_raw_fd()))];
    if let Some(e) = expected {
        xdp.push(LinkXdp::ExpectedFd(e.as_raw_fd() as u32));
    }
    xdp.push(LinkXdp::Flags(flags));
    msg.attributes.push(LinkAttribute::Xdp(xdp));
    let what = format!(
        "RTM_SETLINK IFLA_XDP on interface index {index} ({})",
        if prog.is_some() { "attach" } else { "detach" }
    );
    request(
        &what,
        RouteNetlinkMessage::SetLink(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .map(|_| ())
}

/// `enum netdev_xdp_act` bit: the device accepts frames from `ndo_xdp_xmit`, i.e. it can be
/// the target of XDP_REDIRECT (a veth only when its peer has NAPI: GRO on or an XDP program).
const NETDEV_XDP_ACT_NDO_XMIT: u64 = 4;

fn nla(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// One generic-netlink request (`cmd` of family `family`, with `attrs`); returns the
/// attributes of the first answer as (type, payload).
fn genl_request(
    socket: &Socket,
    family: u16,
    cmd: u8,
    attrs: &[u8],
    what: &str,
) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
    let len = 16 + 4 + attrs.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&family.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    msg.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: cmd, version, reserved
    msg.extend_from_slice(attrs);
    socket.send(&msg, 0).map_err(NetlinkError::Socket)?;
    let (data, _) = socket.recv_from_full().map_err(NetlinkError::Socket)?;
    let decode = |reason: &str| NetlinkError::Decode {
        what: what.to_string(),
        reason: reason.to_string(),
    };
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let kind = u16_at(&data, 4).ok_or_else(|| decode("short message"))?;
    if kind == 2 {
        // NLMSG_ERROR: a negative errno follows the header.
        let code = data
            .get(16..20)
            .map(|s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or_else(|| decode("short error message"))?;
        return Err(NetlinkError::Kernel {
            what: what.to_string(),
            source: std::io::Error::from_raw_os_error(-code),
        });
    }
    let end = data
        .get(0..4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .ok_or_else(|| decode("short message"))?
        .min(data.len());
    let mut out = Vec::new();
    let mut i = 20;
    while i + 4 <= end {
        let (Some(len), Some(kind)) = (u16_at(&data, i), u16_at(&data, i + 2)) else {
            break;
        };
        let len = len as usize;
        if len < 4 || i + len > end {
            return Err(decode("attribute overruns the message"));
        }
        out.push((kind & 0x3fff, data[i + 4..i + len].to_vec()));
        i += len.next_multiple_of(4);
    }
    Ok(out)
}

/// Whether interface `index` accepts XDP_REDIRECT frames (its XDP features include
/// `ndo-xmit`), from the kernel's `netdev` generic-netlink family. `None` when the kernel
/// cannot say (no such family: Linux < 6.3).
pub fn accepts_xdp_redirect(index: u32) -> Result<Option<bool>, NetlinkError> {
    let mut socket =
        Socket::new(netlink_sys::protocols::NETLINK_GENERIC).map_err(NetlinkError::Socket)?;
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    // CTRL_CMD_GETFAMILY (3) of GENL_ID_CTRL (0x10), CTRL_ATTR_FAMILY_NAME (2).
    let mut attrs = Vec::new();
    nla(&mut attrs, 2, b"netdev\0");
    let family = match genl_request(
        &socket,
        0x10,
        3,
        &attrs,
        "resolving genetlink family netdev",
    ) {
        Ok(a) => a,
        Err(NetlinkError::Kernel { source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // CTRL_ATTR_FAMILY_ID (1), u16.
    let Some(id) = family
        .iter()
        .find(|(k, v)| *k == 1 && v.len() >= 2)
        .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
    else {
        return Ok(None);
    };
    // NETDEV_CMD_DEV_GET (1) with NETDEV_A_DEV_IFINDEX (1); answer NETDEV_A_DEV_XDP_FEATURES (3).
    let mut attrs = Vec::new();
    nla(&mut attrs, 1, &index.to_ne_bytes());
    let dev = genl_request(
        &socket,
        id,
        1,
        &attrs,
        &format!("netdev dev-get of interface index {index}"),
    )?;
    Ok(dev
        .iter()
        .find(|(k, v)| *k == 3 && v.len() >= 8)
        .map(|(_, v)| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[..8]);
            u64::from_ne_bytes(b) & NETDEV_XDP_ACT_NDO_XMIT != 0
        }))
}

/// A `blackhole VIP/32 table TABLE proto PROTOCOL` route message (IPv4).
fn vip_route_message(table: u32, protocol: u8, vip: Ipv4Addr) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = 32;
    // A table id above 255 travels only in RTA_TABLE, with RT_TABLE_UNSPEC in the header (as
    // iproute2 does).
    msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.protocol = RouteProtocol::from(protocol);
    msg.header.kind = RouteType::BlackHole;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(vip)));
    msg.attributes.push(RouteAttribute::Table(table));
    msg
}

/// The table a route answer belongs to: RTA_TABLE, or the header's for old kernels.
fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// The IPv4 /32 destinations of the routes of protocol `protocol` in table `table` of this
/// network namespace. The dump is filtered by the kernel (strict checking, table and protocol
/// in the request: a host with a full routing table in `main` is not dumped whole each
/// second), and again here for kernels that ignore the filter.
pub fn vip_routes(table: u32, protocol: u8) -> Result<Vec<Ipv4Addr>, NetlinkError> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.protocol = RouteProtocol::from(protocol);
    msg.attributes.push(RouteAttribute::Table(table));
    let answers = match request_on(
        true,
        &format!("RTM_GETROUTE (dump of table {table})"),
        RouteNetlinkMessage::GetRoute(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
    ) {
        // A table that never held a route does not exist yet.
        Err(NetlinkError::Kernel { source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
        {
            return Ok(Vec::new());
        }
        other => other?,
    };
    let mut out: Vec<Ipv4Addr> = answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.address_family == AddressFamily::Inet
                    && r.header.destination_prefix_length == 32
                    && u8::from(r.header.protocol) == protocol
                    && route_table(r) == table =>
            {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Installs (or keeps) `blackhole VIP/32 table TABLE proto PROTOCOL`.
pub fn add_vip_route(table: u32, protocol: u8, vip: Ipv4Addr) -> Result<(), NetlinkError> {
    request(
        &format!("RTM_NEWROUTE blackhole {vip}/32 table {table}"),
        RouteNetlinkMessage::NewRoute(vip_route_message(table, protocol, vip)),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(|_| ())
}

/// Removes `VIP/32` of protocol `protocol` from table `table`; a route already gone is fine.
pub fn del_vip_route(table: u32, protocol: u8, vip: Ipv4Addr) -> Result<(), NetlinkError> {
    match request(
        &format!("RTM_DELROUTE {vip}/32 table {table}"),
        RouteNetlinkMessage::DelRoute(vip_route_message(table, protocol, vip)),
        NLM_F_REQUEST | NLM_F_ACK,
    ) {
        Err(NetlinkError::Kernel { source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}
