//! How the daemon stops: hand over to a `--replace` successor, leave the pinned data plane
//! forwarding, or (with `--cleanup`, or when the bpffs dies with this process) remove it all.

use anyhow::Context as _;
use tracing::{info, warn};

use super::RunOptions;
use crate::{dataplane, instance};

pub(super) enum Stop {
    /// SIGUSR2: a successor takes over the data plane.
    HandOver,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
}

/// Whether the data plane goes away with this stop (so its VIPs must be withdrawn), and why.
pub(super) fn data_plane_goes(
    stop: &Stop,
    opts: &RunOptions,
    private_bpffs: bool,
) -> Option<&'static str> {
    match stop {
        Stop::Signal(_) if opts.cleanup => Some("the daemon stops with --cleanup"),
        Stop::Signal(_) if private_bpffs => {
            Some("the daemon stops and its private bpffs takes the data plane with it")
        }
        _ => None,
    }
}

/// After the loop ended with `stop`: the data plane's descriptors are closed (`dp`, dropped
/// by the caller), the socket and the state file removed, and the pins left or removed.
pub(super) fn finish(
    stop: &Stop,
    opts: &RunOptions,
    api_socket: &std::path::Path,
    pins: &dataplane::Pins,
    private_bpffs: bool,
) -> anyhow::Result<()> {
    let instance_name = opts.instance.as_str();
    let _ = std::fs::remove_file(api_socket);
    instance::remove(instance_name);
    match stop {
        Stop::HandOver if private_bpffs => warn!(
            instance = instance_name,
            "handed over to a successor (SIGUSR2); this process's bpffs was private to it, so its pinned links go with it and the successor attaches its own"
        ),
        Stop::HandOver => info!(
            instance = instance_name,
            "handed over to a successor (SIGUSR2); the data plane keeps forwarding"
        ),
        Stop::Signal(sig) if opts.cleanup || private_bpffs => {
            let detached = pins
                .remove_all()
                .with_context(|| format!("{sig}: removing the pins in {}", pins.dir.display()))?;
            let why = if opts.cleanup {
                "(--cleanup)"
            } else {
                "because the bpffs was private to this process (`ip netns exec`), so the data plane could not outlive it; run the daemon in the host's mount namespace or with a shared XDPLB_BPFFS to keep it forwarding across restarts"
            };
            info!(
                instance = instance_name,
                detached = %detached.join(", "),
                "{sig}: detached and removed every pin {why}"
            );
        }
        Stop::Signal(sig) => info!(
            instance = instance_name,
            pins = %pins.dir.display(),
            "{sig}: stopped; the pinned data plane keeps forwarding (`xdplb run` adopts it, `xdplb stop` removes it)"
        ),
    }
    Ok(())
}
