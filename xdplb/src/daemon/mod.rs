//! The daemon: `xdplb run`. It loads (or adopts) the pinned data plane and attaches it
//! ([`startup`]), then owns config and data plane in one async loop ([`shell`]) on tokio that
//! serves signals, API calls (from the HTTP servers in [`crate::http`]), health results and
//! timers, and finally stops as it was asked ([`stop`]).

mod change;
mod reload;
mod shell;
mod startup;
mod state;
mod stop;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{self, Config},
    control::Core,
    health,
    http::{self, Readiness},
    instance,
    metrics::MetricsState,
};

/// Loads and validates a config file, interfaces included.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let cfg = config::load(path)?;
    check_host(&cfg, path)?;
    Ok(cfg)
}

/// [`load_config`], keeping the text read: API changes are edits of it.
fn load_config_file(path: &std::path::Path) -> anyhow::Result<(Config, config::ConfigFile)> {
    let (file, cfg) = config::ConfigFile::load(path)?;
    check_host(&cfg, path)?;
    Ok((cfg, file))
}

/// What a config needs of this host: its interfaces, and forwarding for the routed modes.
fn check_host(cfg: &Config, path: &std::path::Path) -> anyhow::Result<()> {
    let origin = path.display().to_string();
    config::check_interfaces(cfg, &origin, interface_exists)?;
    check_forwarding(cfg, &origin)?;
    Ok(())
}

/// Every mode but `local` finds next hops with bpf_fib_lookup, which the kernel answers only for
/// packets received on an interface with forwarding on for their family (IPv4 forwarding for
/// IPv4 services, IPv6 forwarding for IPv6 ones); without it every packet of those services
/// would be dropped, so such a config is refused with the fix.
fn check_forwarding(cfg: &Config, origin: &str) -> anyhow::Result<()> {
    for (family, proc_dir, sysctl, ipv4) in [
        ("IPv4", "ipv4", "net.ipv4.conf.all.forwarding", true),
        ("IPv6", "ipv6", "net.ipv6.conf.all.forwarding", false),
    ] {
        let routed: Vec<&str> = cfg
            .services
            .iter()
            .filter(|s| s.forwarding != config::Forwarding::Local && s.vip.is_ipv4() == ipv4)
            .map(|s| s.name.as_str())
            .collect();
        if routed.is_empty() {
            continue;
        }
        let off: Vec<&str> = cfg
            .interfaces
            .iter()
            .filter(|i| {
                std::fs::read_to_string(format!("/proc/sys/net/{proc_dir}/conf/{i}/forwarding"))
                    .map_or(true, |v| v.trim() != "1")
            })
            .map(String::as_str)
            .collect();
        if !off.is_empty() {
            bail!(
                "{origin}: {family} service(s) {} forward with nat, fullnat, dsr-l2 or dsr-ipip, which needs {family} forwarding on every attached interface, but it is off on {}; turn it on with `sysctl -w {sysctl}=1` (or per interface)",
                routed.join(", "),
                off.join(", ")
            );
        }
    }
    Ok(())
}

pub fn interface_exists(name: &str) -> bool {
    interface_index(name).is_some()
}

/// The ifindex of `name` in the calling thread's network namespace, as the kernel answers it
/// (SIOCGIFINDEX on a socket of that namespace, as if_nametoindex(3) does).
pub fn interface_index(name: &str) -> Option<u32> {
    let socket = std::os::unix::net::UnixDatagram::unbound().ok()?;
    rustix::net::netdevice::name_to_index(&socket, name)
        .ok()
        .filter(|&index| index != 0)
}

/// How `xdplb run` starts and stops.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Config file; the built-in tutorial scenario without one.
    pub config: Option<PathBuf>,
    pub instance: String,
    /// Take over from a running daemon of the same instance (an upgrade or restart).
    pub replace: bool,
    /// On SIGINT/SIGTERM, detach and remove every pin instead of leaving the data plane
    /// forwarding.
    pub cleanup: bool,
}

/// Runs the daemon until SIGINT or SIGTERM (SIGUSR2: hand over to a `--replace` successor).
pub fn run(opts: &RunOptions) -> anyhow::Result<()> {
    // The loop runs on this thread (blocking in map updates as it must); the HTTP servers and
    // the metrics rendering run on the workers, so they answer while it is busy.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("xdplb-io")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = runtime.block_on(serve(opts));
    // Connections still open get a moment to finish; nothing waits on a stuck client.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The instance lock is released last, when nothing of this daemon is left.
    outcome.map(drop)
}

/// Start-up, the loop, the stop. Returns the instance lock, to be released by the caller.
async fn serve(opts: &RunOptions) -> anyhow::Result<Option<instance::InstanceLock>> {
    // Installed first, so a signal during start-up is handled too.
    let mut signals = shell::Signals::install().context("installing signal handlers")?;
    let cancel = CancellationToken::new();
    let (ready, ready_rx) = watch::channel(Readiness::Starting);
    let (api_tx, mut api_rx) = mpsc::channel(64);
    let started = startup::start(opts, |api, api_tcp| {
        let router = crate::api::router(api_tx, ready_rx.clone());
        if let Some(listener) = api_tcp {
            tokio::spawn(http::serve(listener, router.clone(), cancel.clone()));
        }
        tokio::spawn(http::serve(api, router, cancel.clone()));
    })?;
    let startup::Started {
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
        metrics: metrics_listener,
    } = started;
    let instance_name = opts.instance.as_str();

    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let core = Core::new(cfg);
    let checkers = health::start(core.config(), &health_tx);
    let mut state = state::instance_state(
        &dp,
        core.config(),
        core.health(),
        instance_name,
        &origin,
        attached.clone(),
    )?;
    // The veths' drops from now on, and whether they can take redirected frames (see `veth`).
    let mut veths = crate::veth::VethWatch::default();
    match state::sample_veths(state::any_native(&attached)) {
        Ok(sample) => {
            for event in veths.update(&sample) {
                warn!("{}", event.message());
            }
        }
        Err(e) => warn!("cannot watch the veths of this network namespace: {e}"),
    }
    state.veths = veths.report.clone();
    let state_path = instance::write(&state)?;
    let metrics = Arc::new(Mutex::new(MetricsState::new(state.clone(), apply_seconds)));
    if let Some(listener) = metrics_listener {
        let router = http::metrics_router(metrics.clone(), ready_rx.clone());
        tokio::spawn(http::serve(listener, router, cancel.clone()));
    }
    let where_ = attached
        .iter()
        .map(|a| format!("{} ({} XDP + TC egress)", a.name, a.xdp_mode))
        .collect::<Vec<_>>()
        .join(", ");
    info!(
        instance = instance_name,
        config = %origin,
        services = core.config().services.len(),
        backends = core
            .config()
            .services
            .iter()
            .map(|s| s.backends.len())
            .sum::<usize>(),
        attached = %where_,
        adopted = adopting,
        took_over_from = predecessor,
        start_ms = started.elapsed().as_millis() as u64,
        pins = %pins.dir.display(),
        state = %state_path.display(),
        "running instance"
    );
    ready.send_replace(Readiness::Ready);
    // Attached and applied: `systemctl start` (Type=notify) returns now.
    notify_systemd(&[sd_notify::NotifyState::Ready]);

    // The next-hop cache is filled only while its route, neighbour and link events are
    // watched: a cache nobody keeps up to date could send to a neighbour that moved.
    let (next_hop_tx, mut next_hop_rx) = mpsc::unbounded_channel();
    let next_hops = match crate::nexthop::Watcher::open() {
        Ok(watcher) => {
            tokio::spawn(watcher.run(next_hop_tx));
            Some(crate::nexthop::NextHopCache::default())
        }
        Err(e) => {
            warn!(
                "cannot watch route and neighbour changes ({e}): no next-hop cache, every remote backend's packets take bpf_fib_lookup"
            );
            None
        }
    };

    let mut shell = shell::Shell {
        dp,
        core,
        config_file,
        instance: instance_name,
        origin,
        attached,
        health_apply_pending: false,
        checkers,
        health_tx,
        state,
        metrics,
        ready,
        veths,
        veth_warned: Default::default(),
        next_hops,
        announcer: crate::announce::Announcer::resume(instance_name),
    };
    // Attached and applied: announce (a successor finds the routes its predecessor left and
    // keeps them), then publish what is announced.
    shell.publish(None);
    let stop = shell
        .run(&mut signals, &mut api_rx, &mut health_rx, &mut next_hop_rx)
        .await;
    shell.ready.send_replace(Readiness::Stopping);
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    // Withdrawn before the data plane goes (routers take tens to hundreds of milliseconds to
    // stop sending after that: `xdplb node drain` first is what loses nothing); kept when it
    // stays (a successor, or the pins keep it forwarding).
    if let Some(why) = stop::data_plane_goes(&stop, opts, private_bpffs) {
        shell.announcer.withdraw_for_good(instance_name, why);
    }
    // The data plane may outlive this process (pinned), but nobody would keep its next-hop
    // cache up to date: emptied, every backend takes bpf_fib_lookup, which is always current.
    if let Some(mut cache) = shell.next_hops.take()
        && let Err(e) = cache.clear(&mut shell.dp)
    {
        warn!("emptying the next-hop cache on the way out failed: {e}");
    }
    cancel.cancel();
    // Requests still queued are answered "stopping" by their servers.
    drop(api_rx);
    let shell::Shell {
        mut dp, checkers, ..
    } = shell;
    // Retired reply translations are not recorded for a successor: removed now rather than
    // left behind for good.
    if let Err(e) =
        dp.retire_expired(std::time::Instant::now() + crate::dataplane::reconcile::RETIRE_GRACE)
    {
        warn!("removing the reply translations of removed backends on the way out failed: {e}");
    }
    drop(checkers);
    drop(dp); // closes this process's descriptors; the pins keep the data plane
    stop::finish(&stop, opts, &api_socket, &pins, private_bpffs)?;
    Ok(lock)
}

/// Tells the service manager (systemd, `Type=notify`) what the daemon is doing. Without
/// `$NOTIFY_SOCKET` (not under systemd) this does nothing; a failure is logged, not fatal: the
/// data plane works whether or not systemd heard.
pub(crate) fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("notifying systemd ({states:?}) failed: {e}");
    }
}

/// Makes the kernel resolve the MAC address of every `dsr-l2` and `fullnat` backend, which XDP
/// needs from the neighbour table and cannot resolve itself (the kernel cannot forward such a
/// packet for it either: a `dsr-l2` packet is for the VIP, a `fullnat` one comes from this
/// host's own address). An empty datagram to the backend's discard port (9) makes the kernel
/// send ARP (IPv6: a neighbour solicitation). Entries the kernel already holds cost nothing.
fn resolve_neighbours(cfg: &Config) {
    // One socket per family (a socket sends to its own family only), bound when needed.
    let v4 = std::net::UdpSocket::bind("0.0.0.0:0").ok();
    let v6 = std::net::UdpSocket::bind("[::]:0").ok();
    for svc in cfg.services.iter().filter(|s| {
        matches!(
            s.forwarding,
            config::Forwarding::DsrL2 | config::Forwarding::FullNat
        )
    }) {
        for b in &svc.backends {
            let sock = if b.address.is_ipv4() { &v4 } else { &v6 };
            if let Some(sock) = sock {
                let _ = sock.send_to(&[], (b.address.ip(), 9));
            }
        }
    }
}
