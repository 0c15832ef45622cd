//! Start-up: load the config, take the instance (or take it over with `--replace`), load or
//! adopt the pinned data plane, fill its maps, bind the listeners, attach.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use super::{RunOptions, interface_exists, load_config_file, resolve_neighbours};
use crate::{
    config::{self, Config},
    dataplane::{self, Dataplane},
    http::Listener,
    instance,
};

/// Everything start-up made, for the loop and the stop.
pub(super) struct Started {
    pub cfg: Config,
    /// The file as last loaded or written: API changes edit it, and are refused while it holds
    /// edits that were not applied. `None` for the built-in config.
    pub config_file: Option<config::ConfigFile>,
    /// Where the config came from, for the log and the state file.
    pub origin: String,
    /// Held until the daemon has cleaned up; `None` only while waiting for a predecessor.
    pub lock: Option<instance::InstanceLock>,
    pub predecessor: Option<u32>,
    pub started: Instant,
    /// The bpffs is private to this process, so the data plane cannot outlive it.
    pub private_bpffs: bool,
    pub pins: dataplane::Pins,
    pub adopting: bool,
    pub dp: Dataplane,
    pub apply_seconds: f64,
    pub attached: Vec<dataplane::AttachedInterface>,
    pub api_socket: PathBuf,
    pub metrics: Option<Listener>,
}

/// Removes a fresh start's pins if start-up fails before the data plane is attached.
struct FreshPins(Option<dataplane::Pins>);

impl Drop for FreshPins {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.remove_all();
        }
    }
}

/// Runs start-up up to and including the attach. Blocking; called inside the tokio runtime
/// (the listeners are registered with it). `serve_api` gets the API's listeners (the socket,
/// `api_listen`) once they are bound, before the attach: from then on `/healthz` and `/readyz`
/// answer, and API requests wait for the loop.
pub(super) fn start(
    opts: &RunOptions,
    serve_api: impl FnOnce(Listener, Option<Listener>),
) -> anyhow::Result<Started> {
    let instance_name = opts.instance.as_str();
    let mut config_file = None;
    let (cfg, origin) = if let Some(p) = opts.config.as_deref() {
        let (cfg, file) = load_config_file(p)?;
        config_file = Some(file);
        (cfg, p.display().to_string())
    } else {
        let cfg = config::default_config();
        config::check_interfaces(&cfg, "<built-in>", interface_exists)?;
        (cfg, "<built-in default>".to_string())
    };
    if !dataplane::has_bpf_privileges() {
        bail!(
            "xdplb run needs root (or CAP_NET_ADMIN plus CAP_BPF and CAP_PERFMON) to load and attach BPF programs; nothing was attached"
        );
    }
    // One daemon per instance: the lock is taken before anything is loaded or attached, and
    // held until the daemon has stopped. With --replace, the running daemon holds it; it is
    // taken once that daemon has handed over.
    let (mut lock, predecessor) = match instance::try_lock(instance_name)? {
        Ok(lock) => {
            instance::ensure_not_running(instance_name)?;
            (Some(lock), None)
        }
        Err(held) if opts.replace => match held.pid() {
            Some(pid) => (None, Some(pid)),
            None => return Err(held.into_error(instance_name).into()),
        },
        Err(held) => return Err(held.into_error(instance_name).into()),
    };

    let started = Instant::now();
    let bpffs = dataplane::pin::bpffs();
    // A bpffs private to this process (mounted in a mount namespace of its own, as `ip netns
    // exec` makes) dies with it, and its pins with it: the data plane cannot outlive the
    // daemon, so a stop cleans up fully instead of pretending it keeps forwarding.
    let private_bpffs =
        dataplane::pin::ensure_bpffs(&bpffs)? == dataplane::pin::BpffsMount::MountedPrivate;
    if private_bpffs && !opts.cleanup {
        warn!(
            bpffs = %bpffs.display(),
            "the bpffs here is private to this process (it runs in a mount namespace of its own, as `ip netns exec` makes), so the data plane cannot outlive it: on SIGTERM or SIGINT it detaches and removes everything, as with --cleanup, and a restart will not be zero-loss. For restarts without loss run the daemon in the host's mount namespace (`nsenter --net=/run/netns/NS xdplb run`) or set XDPLB_BPFFS to a bpffs mounted outside"
        );
    }
    let pins = dataplane::Pins::new(&bpffs, &instance::run_dir(), instance_name);
    pins.refuse_other_layouts(instance_name)?;
    let adopting = pins.check_maps(&cfg.limits)?;
    // Without a predecessor the record must be there now; with one, it is read after the
    // predecessor stopped writing it.
    let mut record = match (adopting, predecessor) {
        (true, None) => Some(pins.read_record()?),
        _ => None,
    };
    let mut dp = Dataplane::load_pinned(cfg.limits, cfg.debug_log, &pins)?;
    let mut fresh = FreshPins((!adopting).then(|| pins.clone()));
    if let Some(pid) = predecessor {
        hand_over(pid)?;
        lock = Some(
            instance::lock_within(instance_name, Duration::from_secs(10))
                .context("taking over the instance lock")?,
        );
        if adopting {
            record = Some(pins.read_record()?);
        }
    }
    if let Some(record) = record {
        dp.adopt(record)?;
    }
    let apply_started = Instant::now();
    dp.apply_config(&cfg).context("filling the maps")?;
    let apply_seconds = apply_started.elapsed().as_secs_f64();
    resolve_neighbours(&cfg);
    if adopting {
        let stray = dp.remove_stray_services()?;
        if stray > 0 {
            warn!(stray, "removed service entries the pin record did not know");
        }
    }
    // Bound before attaching, so a taken port leaves nothing attached.
    let metrics = cfg
        .metrics_listen
        .map(|addr| bind_tcp(addr, "metrics_listen"))
        .transpose()?;
    let api_tcp = cfg
        .api_listen
        .map(|addr| bind_tcp(addr, "api_listen"))
        .transpose()?;
    let api_socket = crate::api::socket_path(instance_name)?;
    std::fs::create_dir_all(instance::run_dir())
        .with_context(|| format!("creating {}", instance::run_dir().display()))?;
    let api = crate::api::bind(&api_socket)
        .with_context(|| format!("API socket {}", api_socket.display()))?;
    serve_api(Listener::Unix(api), api_tcp);
    let attached = dataplane::attach_all(&mut dp, &cfg.interfaces, cfg.xdp_mode)?;
    fresh.0 = None;
    Ok(Started {
        cfg,
        config_file,
        origin,
        lock,
        predecessor,
        started,
        private_bpffs,
        pins,
        adopting,
        dp,
        apply_seconds,
        attached,
        api_socket,
        metrics,
    })
}

/// Binds `addr` for the tokio runtime this runs in.
fn bind_tcp(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<Listener> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("{what} {addr}: cannot listen"))?;
    Ok(Listener::Tcp(listener))
}

/// Asks the daemon `pid` to hand over (SIGUSR2) and waits for it to exit: it stops writing the
/// maps and the pin record, and leaves the data plane attached.
fn hand_over(pid: u32) -> anyhow::Result<()> {
    instance::signal_and_wait(pid, rustix::process::Signal::USR2, Duration::from_secs(10))
        .with_context(|| {
            format!(
                "the running daemon (pid {pid}) did not hand over (SIGUSR2); nothing was changed"
            )
        })?;
    info!(pid, "the previous daemon handed over");
    Ok(())
}
