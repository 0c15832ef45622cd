//! BPF_PROG_TEST_RUN for XDP programs: runs a loaded program on a frame in the kernel, without
//! an interface. aya 0.14 has no wrapper for it, so this calls bpf(2) directly.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for the program to grow the frame (it never does today) and the metadata prefix.
const OUT_SLACK: usize = 256;

/// The `test` member of `union bpf_attr`, as in linux/bpf.h.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);

/// `struct xdp_md` from linux/bpf.h.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The outcome of one BPF_PROG_TEST_RUN.
#[derive(Debug, Clone)]
pub struct XdpRun {
    /// The XDP action the program returned.
    pub action: u32,
    /// The frame after the program ran (without any metadata prefix).
    pub frame: Vec<u8>,
    /// Average run time per iteration in nanoseconds, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs `prog` on `frame` `repeat` times (at least once). The kernel requires at least 14 bytes;
/// use [`run_xdp_short`] for shorter frames.
pub fn run_xdp(prog: &impl AsFd, frame: &[u8], repeat: u32) -> io::Result<XdpRun> {
    run(prog, frame, 0, repeat, 0)
}

/// Runs `prog` once on `frame` as if received on interface `ifindex` of the calling thread's
/// network namespace (what FIB lookups then see).
pub fn run_xdp_on(prog: &impl AsFd, frame: &[u8], ifindex: u32) -> io::Result<XdpRun> {
    run(prog, frame, 0, 1, ifindex)
}

/// Tries to run `prog` on a frame shorter than an Ethernet header, placed behind XDP metadata
/// (4-byte multiples, at most 32) so that the test buffer itself is long enough.
///
/// Linux 6.18 refuses this with EINVAL whenever `data`..`data_end` is under 14 bytes: an XDP
/// program never sees such a frame. The tests assert exactly that refusal.
pub fn run_xdp_short(prog: &impl AsFd, frame: &[u8]) -> io::Result<XdpRun> {
    let meta = if frame.len() >= 14 {
        0
    } else {
        (14 - frame.len()).div_ceil(4) * 4
    };
    let mut buf = vec![0u8; meta];
    buf.extend_from_slice(frame);
    run(prog, &buf, meta, 1, 0)
}

fn run(prog: &impl AsFd, buf: &[u8], meta: usize, repeat: u32, ifindex: u32) -> io::Result<XdpRun> {
    let mut out = vec![0u8; buf.len() + OUT_SLACK];
    let ctx = XdpMd {
        data: meta as u32,
        data_end: buf.len() as u32,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: buf.len() as u32,
        data_size_out: out.len() as u32,
        data_in: buf.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    if meta > 0 || ifindex != 0 {
        attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
        attr.ctx_in = &ctx as *const XdpMd as u64;
    }
    // SAFETY: attr points at a correctly laid out bpf_attr prefix whose buffers outlive the call;
    // the kernel writes at most data_size_out bytes into `out`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let size = (attr.data_size_out as usize).min(out.len());
    out.truncate(size);
    // The output starts at data_meta; drop the metadata prefix.
    let frame = out.get(meta.min(out.len())..).unwrap_or_default().to_vec();
    Ok(XdpRun {
        action: attr.retval,
        frame,
        duration_ns: attr.duration,
    })
}
