//! BPF_PROG_TEST_RUN for XDP programs: runs a loaded program on a frame in the kernel, without
//! an interface, through aya's [`TestRun`].
//!
//! What is ours here is only the shape the tests and the benchmark want: the frame behind an
//! optional metadata prefix, the receiving interface through the `xdp_md` context, and the
//! output frame cut to what the kernel wrote.

use std::{borrow::Cow, io};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;

/// Room for the program to grow the frame (it never does today) and the metadata prefix.
const OUT_SLACK: usize = 256;

/// `struct xdp_md` from linux/bpf.h, which the kernel reads as the context (`ctx_in`):
/// `data`, `data_end`, `data_meta`, `ingress_ifindex`, `rx_queue_index`, `egress_ifindex`, each
/// a `u32` in host byte order. `data_meta` must be 0 and `data` is where the frame starts after
/// the metadata; `data_end` is the length of the whole buffer.
fn xdp_md(data: u32, data_end: u32, ingress_ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    for (field, value) in ctx
        .chunks_exact_mut(4)
        .zip([data, data_end, 0, ingress_ifindex, 0, 0])
    {
        field.copy_from_slice(&value.to_ne_bytes());
    }
    ctx
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

/// An owned handle to the already loaded program `prog`, independent of the [`aya::Ebpf`] that
/// loaded it (so that a test can keep running it while it changes that object's maps, or run it
/// from another thread). Dropping the handle closes only its own descriptor.
pub fn handle(prog: &Xdp) -> Result<Xdp, ProgramError> {
    Xdp::from_program_info(
        prog.info()?,
        Cow::Borrowed("xdplb test run"),
        XdpAttachType::Interface,
    )
}

/// Runs `prog` on `frame` `repeat` times (at least once). The kernel requires at least 14 bytes;
/// use [`run_xdp_short`] for shorter frames.
pub fn run_xdp(prog: &Xdp, frame: &[u8], repeat: u32) -> io::Result<XdpRun> {
    run(prog, frame, 0, repeat, 0)
}

/// Runs `prog` once on `frame` as if received on interface `ifindex` of the calling thread's
/// network namespace (what FIB lookups then see).
pub fn run_xdp_on(prog: &Xdp, frame: &[u8], ifindex: u32) -> io::Result<XdpRun> {
    run(prog, frame, 0, 1, ifindex)
}

/// Tries to run `prog` on a frame shorter than an Ethernet header, placed behind XDP metadata
/// (4-byte multiples, at most 32) so that the test buffer itself is long enough.
///
/// Linux 6.18 refuses this with EINVAL whenever `data`..`data_end` is under 14 bytes: an XDP
/// program never sees such a frame. The tests assert exactly that refusal.
pub fn run_xdp_short(prog: &Xdp, frame: &[u8]) -> io::Result<XdpRun> {
    let meta = if frame.len() >= 14 {
        0
    } else {
        (14 - frame.len()).div_ceil(4) * 4
    };
    let mut buf = vec![0u8; meta];
    buf.extend_from_slice(frame);
    run(prog, &buf, meta, 1, 0)
}

fn run(prog: &Xdp, buf: &[u8], meta: usize, repeat: u32, ifindex: u32) -> io::Result<XdpRun> {
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "test frame over 4 GiB");
    let mut out = vec![0u8; buf.len() + OUT_SLACK];
    // The kernel fills in the context itself unless it is given one; give it one only when it
    // says something (a metadata prefix, a receiving interface).
    let ctx = (meta > 0 || ifindex != 0)
        .then(|| {
            Ok::<_, io::Error>(xdp_md(
                u32::try_from(meta).map_err(|_| too_long())?,
                u32::try_from(buf.len()).map_err(|_| too_long())?,
                ifindex,
            ))
        })
        .transpose()?;
    let opts = TestRunOptions {
        data_in: Some(buf),
        data_out: Some(&mut out),
        ctx_in: ctx.as_ref().map(|c| &c[..]),
        repeat,
        ..TestRunOptions::default()
    };
    let result = prog.test_run(opts).map_err(into_io)?;
    out.truncate(result.data_size_out as usize);
    // The output starts at data_meta; drop the metadata prefix.
    let frame = out.get(meta..).unwrap_or_default().to_vec();
    Ok(XdpRun {
        action: result.return_value,
        frame,
        duration_ns: u32::try_from(result.duration.as_nanos()).unwrap_or(u32::MAX),
    })
}

/// The kernel's answer as an [`io::Error`] (what the callers match on, e.g. EINVAL for a short
/// frame); aya's other errors as they print.
fn into_io(e: ProgramError) -> io::Error {
    match e {
        ProgramError::SyscallError(s) => s.io_error,
        other => io::Error::other(other),
    }
}
