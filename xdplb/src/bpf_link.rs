//! bpf_links by kernel id: what aya 0.14 does not expose. A link pinned in a bpffs that this
//! process cannot see (another mount namespace, as `ip netns exec` makes) can still be found
//! by id, asked where it is attached, and detached (`BPF_LINK_DETACH`), which is how `xdplb
//! stop` takes an instance down from anywhere.
//!
//! This is the one place with raw `bpf(2)` calls; each is a fixed-size attribute struct laid
//! out as in `<linux/bpf.h>`.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `enum bpf_cmd` values.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;
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

/// `bpf_attr` for `BPF_LINK_GET_FD_BY_ID`.
#[repr(C)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `bpf_attr` for `BPF_LINK_DETACH`.
#[repr(C)]
struct Detach {
    link_fd: u32,
}

/// The head of `struct bpf_link_info`: type, id, prog_id, then (at byte 16) the per-type
/// union, whose first field is the ifindex for XDP and TCX links. The kernel fills at most
/// `info_len` bytes.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    kind: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    _rest: [u32; 7],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed #[repr(C)] struct laid out as the
    // `bpf_attr` member that `cmd` reads (and, for GET_INFO, it points at a buffer of
    // `info_len` bytes that outlives the call); the size passed is its exact size, and the
    // kernel zero-extends the rest of `bpf_attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn link_fd(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn info(fd: &OwnedFd) -> io::Result<KernelLink> {
    let mut head = LinkInfoHead::default();
    let mut attr = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<LinkInfoHead>() as u32,
        info: &mut head as *mut LinkInfoHead as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
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

/// The link with kernel id `id`, or `None` if it no longer exists.
pub fn get(id: u32) -> io::Result<Option<KernelLink>> {
    match link_fd(id) {
        Ok(fd) => info(&fd).map(Some),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
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
    let fd = match link_fd(id) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut attr = Detach {
        link_fd: fd.as_raw_fd() as u32,
    };
    match bpf(BPF_LINK_DETACH, &mut attr) {
        Ok(_) => Ok(()),
        // Already detached (its interface went away, or another detach came first).
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => Ok(()),
        Err(e) => Err(e),
    }
}
