//! rtnetlink, for what bpf_links cannot say: which XDP program an interface runs (however it
//! was attached), attaching one that outlives every process without a pin, and the interface
//! counters of this network namespace (for veth drops that XDP cannot see).

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
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
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        index: msg.header.index,
        ..LinkState::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Stats64(st) => s.tx_dropped = st.tx_dropped,
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
                            s.xdp_mode_flag = XDP_FLAGS_DRV_MODE
                        }
                        LinkXdp::Attached(XdpAttached::SocketBuffer) => {
                            s.xdp_mode_flag = XDP_FLAGS_SKB_MODE
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
fn request(
    what: &str,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
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
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
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
