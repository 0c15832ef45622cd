//! bpf_links by kernel id: what aya 0.14 does not expose. A link pinned in a bpffs that this
//! process cannot see (another mount namespace, as `ip netns exec` makes) can still be found
//! by id, asked where it is attached, and detached (`BPF_LINK_DETACH`), which is how `xdplb
//! stop` takes an instance down from anywhere.
//!
//! The raw `bpf(2)` calls themselves are in the reviewed wrapper module [`crate::sys`].

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
};

use rustix::io::Errno;

use crate::sys;

/// `enum bpf_link_type` values.
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// Where a link attaches a program to a network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Xdp,
    Tcx,
    Other(u32),
}

/// One bpf_link, as the kernel describes it.
#[derive(Debug, Clone, Copy)]
pub struct KernelLink {
    pub id: u32,
    pub prog_id: u32,
    pub kind: LinkKind,
    /// The interface (XDP and TCX links); 0 once the link is detached.
    pub ifindex: u32,
}

fn info(fd: &OwnedFd) -> io::Result<KernelLink> {
    let head = sys::link_info(fd.as_fd())?;
    let kind = match head.kind {
        BPF_LINK_TYPE_XDP => LinkKind::Xdp,
        BPF_LINK_TYPE_TCX => LinkKind::Tcx,
        other => LinkKind::Other(other),
    };
    Ok(KernelLink {
        id: head.id,
        prog_id: head.prog_id,
        kind,
        ifindex: match kind {
            LinkKind::Xdp | LinkKind::Tcx => head.ifindex,
            LinkKind::Other(_) => 0,
        },
    })
}

fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

/// The link with kernel id `id`, or `None` if it no longer exists.
pub fn get(id: u32) -> io::Result<Option<KernelLink>> {
    match sys::link_fd_by_id(id) {
        Ok(fd) => info(&fd).map(Some),
        Err(e) if is_errno(&e, Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every XDP and TCX link in the kernel (all network namespaces).
pub fn all_net_links() -> io::Result<Vec<KernelLink>> {
    let mut out = Vec::new();
    for l in aya::programs::loaded_links() {
        let id = match l {
            Ok(l) => l.id(),
            // A link that went away between listing and opening.
            Err(_) => continue,
        };
        if let Some(k) = get(id)?
            && matches!(k.kind, LinkKind::Xdp | LinkKind::Tcx)
        {
            out.push(k);
        }
    }
    Ok(out)
}

/// Detaches link `id` from wherever it is attached (`BPF_LINK_DETACH`), even while a pin
/// still holds it. A link that no longer exists is fine.
pub fn detach(id: u32) -> io::Result<()> {
    let fd = match sys::link_fd_by_id(id) {
        Ok(fd) => fd,
        Err(e) if is_errno(&e, Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    match sys::link_detach(fd.as_fd()) {
        Ok(()) => Ok(()),
        // Already detached (its interface went away, or another detach came first).
        Err(e) if is_errno(&e, Errno::NOLINK) => Ok(()),
        Err(e) => Err(e),
    }
}
