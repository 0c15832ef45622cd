//! The reviewed wrappers: the only module of the control plane allowed `unsafe` (lib.rs denies
//! it everywhere else, main.rs forbids it). Each function here is a safe interface over one
//! system call that neither aya nor rustix exposes:
//!
//! - three `bpf(2)` commands on links by kernel id (aya 0.14 can list links, but not open one by
//!   id, read where it is attached, or detach it): [`link_fd_by_id`], [`link_info`],
//!   [`link_detach`];
//! - `BPF_MAP_LOOKUP_BATCH` on a (non-per-CPU) hash map, which aya 0.14 does not expose: many
//!   entries per system call instead of two calls per entry ([`map_lookup_batch`]);
//! - `signal(SIGPIPE, SIG_DFL)` (rustix has no signal-disposition setter, nix's is `unsafe`
//!   too, and std's `-Zon-broken-pipe` is nightly-only): [`restore_default_sigpipe`].
//!
//! Everything else (interface indexes, signals to other processes, mounts, clocks) goes through
//! rustix's safe functions where it is used.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// `enum bpf_cmd` values, from linux/bpf.h.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `bpf_attr` for `BPF_LINK_GET_FD_BY_ID`.
#[repr(C)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}
const _: () = assert!(size_of::<GetFdById>() == 12);

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}
const _: () = assert!(size_of::<GetInfo>() == 16);

/// `bpf_attr` for `BPF_LINK_DETACH`.
#[repr(C)]
struct Detach {
    link_fd: u32,
}
const _: () = assert!(size_of::<Detach>() == 4);

/// The head of `struct bpf_link_info` (linux/bpf.h): type, id, prog_id, then (at byte 16) the
/// per-type union, whose first field is the ifindex for XDP and TCX links. The kernel fills
/// at most `info_len` bytes and leaves the rest as we set it (zero). All fields are in host
/// byte order.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkInfoHead {
    /// `enum bpf_link_type`.
    pub kind: u32,
    pub id: u32,
    pub prog_id: u32,
    _pad: u32,
    /// The first `u32` of the per-type union: the ifindex for XDP and TCX links.
    pub ifindex: u32,
    _rest: [u32; 7],
}
const _: () = assert!(size_of::<LinkInfoHead>() == 48);

/// `bpf_attr` for the `BPF_MAP_*_BATCH` commands (the `batch` member of linux/bpf.h).
#[repr(C)]
struct Batch {
    /// Where to start: NULL for the beginning, else the `out_batch` of the previous call.
    in_batch: u64,
    /// Where the kernel writes the token of the next call.
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: room for this many entries in `keys` and `values`; out: entries written.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<Batch>() == 56);

/// Marks the `bpf_attr` members this module passes to [`bpf`]; implemented only for the
/// `#[repr(C)]` structs above, each laid out as the member its command reads.
trait BpfAttr {}
impl BpfAttr for GetFdById {}
impl BpfAttr for GetInfo {}
impl BpfAttr for Detach {}
impl BpfAttr for Batch {}

fn bpf<T: BpfAttr>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed #[repr(C)] struct laid out as the
    // `bpf_attr` member that `cmd` reads (BpfAttr is implemented only for those); the size
    // passed is its exact size, and the kernel treats the rest of `bpf_attr` as zero. The one
    // pointer inside an attr (GetInfo::info) is set by `link_info` to a buffer of `info_len`
    // bytes that outlives the call; those of a Batch are set by `map_lookup_batch` to buffers
    // of the sizes it checked, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A descriptor of the bpf_link with kernel id `id` (`BPF_LINK_GET_FD_BY_ID`; ENOENT once it
/// is gone).
pub fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us (rc >= 0) and nothing else owns
    // it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the kernel says about the link behind `fd` (`BPF_OBJ_GET_INFO_BY_FD`).
pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfoHead> {
    let mut head = LinkInfoHead::default();
    let mut attr = GetInfo {
        bpf_fd: fd_u32(fd)?,
        info_len: size_of::<LinkInfoHead>() as u32,
        info: std::ptr::from_mut(&mut head) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(head)
}

/// Detaches the link behind `fd` from wherever it is attached (`BPF_LINK_DETACH`), even while
/// a pin still holds it; ENOLINK if it already is.
pub fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Detach {
        link_fd: fd_u32(fd)?,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Where a batched read of a map is: at the start, in the middle (the kernel's token), or done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchCursor {
    Start,
    /// The kernel's opaque token (for a hash map, a bucket number), in a buffer as long as a
    /// key (and at least 8 bytes): what the generic batch code of other map types would use.
    Next(Vec<u8>),
    Done,
}

/// Reads up to `keys.len()` (and `values.len()`) entries of the hash or LRU hash map `map` from
/// `cursor` with one `BPF_MAP_LOOKUP_BATCH`, and moves `cursor` on. Returns how many entries
/// were written to the front of `keys` and `values`. The kernel may return fewer than asked
/// (it stops at a bucket boundary), and fails with ENOSPC when one bucket holds more entries
/// than there is room for: call again with more room. Other errors (EINVAL from a kernel
/// without batch lookups for this map type) leave the caller to iterate key by key.
///
/// The map's key and value sizes are checked against `K` and `V` first, and per-CPU maps
/// (whose values are one slot per CPU) are refused, so the kernel never writes past the
/// buffers; `K` and `V` are `aya::Pod`, so whatever bytes it writes are valid values.
pub fn map_lookup_batch<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::MapData,
    cursor: &mut BatchCursor,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<usize> {
    use aya::maps::MapType;
    let info = map.info().map_err(io::Error::other)?;
    let kind = info.map_type().map_err(io::Error::other)?;
    if !matches!(kind, MapType::Hash | MapType::LruHash) {
        return Err(io::Error::other(format!(
            "batched lookups are wired for hash and LRU hash maps only, not {kind:?}"
        )));
    }
    let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
    if key_size != size_of::<K>() || value_size != size_of::<V>() {
        return Err(io::Error::other(format!(
            "the map has {key_size}-byte keys and {value_size}-byte values, the reader expects {} and {}",
            size_of::<K>(),
            size_of::<V>()
        )));
    }
    let token_len = key_size.max(8);
    let mut token_in = match cursor {
        BatchCursor::Done => return Ok(0),
        BatchCursor::Start => None,
        BatchCursor::Next(t) => {
            t.resize(token_len, 0);
            Some(t.clone())
        }
    };
    let mut token_out = vec![0u8; token_len];
    let room = keys.len().min(values.len()).min(u32::MAX as usize);
    let mut attr = Batch {
        in_batch: token_in.as_mut().map_or(0, |t| t.as_mut_ptr() as u64),
        out_batch: token_out.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: room as u32,
        map_fd: fd_u32(map.fd())?,
        elem_flags: 0,
        flags: 0,
    };
    // `attr.count` entries of `key_size` and `value_size` bytes fit in `keys` and `values`
    // (count <= room, sizes checked above); the tokens are `token_len` bytes, at least what
    // any map type's batch code copies.
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(_) => {
            *cursor = BatchCursor::Next(token_out);
        }
        // The end of the map: the last entries (possibly none) were written.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => *cursor = BatchCursor::Done,
        Err(e) => return Err(e),
    }
    Ok((attr.count as usize).min(room))
}

fn fd_u32(fd: impl AsFd) -> io::Result<u32> {
    u32::try_from(fd.as_fd().as_raw_fd()).map_err(|_| io::Error::other("descriptor out of range"))
}

/// Restores the default action of SIGPIPE (terminate), which Rust's runtime sets to ignore, so
/// that writing to a closed pipe ends the process the way it ends `cat` instead of making
/// `print!` panic with a backtrace (exit 101). Call it before any thread starts.
pub fn restore_default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler (no code runs in signal context) and
    // only changes this process's disposition of SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
