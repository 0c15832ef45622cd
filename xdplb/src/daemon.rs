//! The daemon: `xdplb run`. It loads (or adopts) the pinned data plane, attaches it, and then
//! owns config and data plane in one loop that serves signals, API calls and health results.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tracing::{info, warn};
use xdplb_common::{MAP_BACKEND_STATS, MAP_FLOWS, MAP_SERVICE_STATS, MAP_STATS};

use crate::{
    config::{self, Config},
    dataplane::{self, Dataplane},
    health::{self, HealthBook},
    instance, stats,
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
/// packets received on an interface with IPv4 forwarding on; without it every packet of those
/// services would be dropped, so such a config is refused with the fix.
fn check_forwarding(cfg: &Config, origin: &str) -> anyhow::Result<()> {
    let routed: Vec<&str> = cfg
        .services
        .iter()
        .filter(|s| s.forwarding != config::Forwarding::Local)
        .map(|s| s.name.as_str())
        .collect();
    if routed.is_empty() {
        return Ok(());
    }
    let off: Vec<&str> = cfg
        .interfaces
        .iter()
        .filter(|i| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{i}/forwarding"))
                .map_or(true, |v| v.trim() != "1")
        })
        .map(String::as_str)
        .collect();
    if !off.is_empty() {
        bail!(
            "{origin}: service(s) {} forward with nat, fullnat, dsr-l2 or dsr-ipip, which needs IPv4 forwarding on every attached interface, but it is off on {}; turn it on with `sysctl -w net.ipv4.conf.all.forwarding=1` (or per interface)",
            routed.join(", "),
            off.join(", ")
        );
    }
    Ok(())
}

pub fn interface_exists(name: &str) -> bool {
    interface_index(name).is_some()
}

/// The ifindex of `name` in this process's network namespace, as the kernel answers it.
pub fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
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

/// Removes a fresh start's pins if start-up fails before the data plane is attached.
struct FreshPins(Option<dataplane::Pins>);

impl Drop for FreshPins {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.remove_all();
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM (SIGUSR2: hand over to a `--replace` successor).
pub fn run(opts: &RunOptions) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    let instance_name = opts.instance.as_str();
    let config_path = opts.config.as_deref();
    // Installed first, so a signal during start-up is handled too.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])
        .context("installing signal handlers")?;
    // The file as last loaded or written: API changes edit it, and are refused while it holds
    // edits that were not applied.
    let mut config_file = None;
    let (mut cfg, origin) = match config_path {
        Some(p) => {
            let (cfg, file) = load_config_file(p)?;
            config_file = Some(file);
            (cfg, p.display().to_string())
        }
        None => {
            let cfg = config::default_config();
            config::check_interfaces(&cfg, "<built-in>", interface_exists)?;
            (cfg, "<built-in default>".to_string())
        }
    };
    if !dataplane::has_bpf_privileges() {
        bail!(
            "xdplb run needs root (or CAP_NET_ADMIN plus CAP_BPF and CAP_PERFMON) to load and attach BPF programs; nothing was attached"
        );
    }
    // One daemon per instance: the lock is taken before anything is loaded or attached, and
    // held until this function returns. With --replace, the running daemon holds it; it is
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
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("metrics_listen {addr}: cannot listen"))?,
        ),
        None => None,
    };
    let api_tcp = match cfg.api_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("api_listen {addr}: cannot listen"))?,
        ),
        None => None,
    };
    let api_socket = crate::api::socket_path(instance_name)?;
    std::fs::create_dir_all(instance::run_dir())
        .with_context(|| format!("creating {}", instance::run_dir().display()))?;
    let api_listener = crate::api::bind(&api_socket)
        .with_context(|| format!("API socket {}", api_socket.display()))?;
    let attached = dataplane::attach_all(&mut dp, &cfg.interfaces, cfg.xdp_mode)?;
    fresh.0 = None;
    let (api_tx, api_rx) = std::sync::mpsc::channel();
    if let Some(listener) = api_tcp {
        let tx = api_tx.clone();
        std::thread::spawn(move || crate::api::serve_tcp(listener, tx));
    }
    std::thread::spawn(move || crate::api::serve(api_listener, api_tx));

    let (health_tx, health_rx) = std::sync::mpsc::channel();
    let mut book = HealthBook::default();
    let mut checkers = health::start(&cfg, &health_tx);
    let mut state = instance_state(&dp, &cfg, &book, instance_name, &origin, attached.clone())?;
    // The veths' drops from now on, and whether they can take redirected frames (see `veth`).
    let mut veths = crate::veth::VethWatch::default();
    let mut veth_warned: std::collections::BTreeMap<String, Instant> = Default::default();
    match sample_veths() {
        Ok(sample) => {
            for event in veths.update(&sample) {
                warn!("{}", event.message());
            }
        }
        Err(e) => warn!("cannot watch the veths of this network namespace: {e}"),
    }
    state.veths = veths.report.clone();
    let state_path = instance::write(&state)?;
    let metrics = std::sync::Arc::new(std::sync::Mutex::new(crate::metrics::MetricsState {
        instance: state.clone(),
        last_apply_seconds: apply_seconds,
    }));
    if let Some(listener) = metrics_listener {
        let shared = metrics.clone();
        std::thread::spawn(move || crate::metrics::serve(listener, shared));
    }
    let where_ = attached
        .iter()
        .map(|a| format!("{} ({} XDP + TC egress)", a.name, a.xdp_mode))
        .collect::<Vec<_>>()
        .join(", ");
    info!(
        instance = instance_name,
        config = %origin,
        services = cfg.services.len(),
        backends = cfg.services.iter().map(|s| s.backends.len()).sum::<usize>(),
        attached = %where_,
        adopted = adopting,
        took_over_from = predecessor,
        start_ms = started.elapsed().as_millis() as u64,
        pins = %pins.dir.display(),
        state = %state_path.display(),
        "running instance"
    );

    let mut last_sweep = Instant::now();
    let mut last_veth_sample = Instant::now();
    let stop = loop {
        let mut stop = None;
        let mut publish = false;
        let mut applied_in = None;
        for sig in signals.pending() {
            match sig {
                SIGHUP => {
                    let outcome = reload(&mut dp, config_file.as_mut(), &mut cfg, &book);
                    applied_in = outcome.as_ref().ok().map(|(_, seconds)| *seconds);
                    let outcome = outcome.map(|(msg, _)| msg);
                    state.reloads += 1;
                    match &outcome {
                        Ok(msg) => {
                            state.generation += 1;
                            info!(
                                reload = state.reloads,
                                generation = state.generation,
                                "{msg}"
                            );
                        }
                        Err(e) => warn!(
                            reload = state.reloads,
                            "reload rejected, the data plane is unchanged: {e:#}"
                        ),
                    }
                    if outcome.is_ok() {
                        book.retain_checked(&cfg);
                        // Dropping the old checkers stops them.
                        checkers = health::start(&cfg, &health_tx);
                    }
                    state.last_reload = Some(instance::ReloadOutcome {
                        ok: outcome.is_ok(),
                        message: match outcome {
                            Ok(m) => m,
                            Err(e) => format!("{e:#}"),
                        },
                    });
                    publish = true;
                }
                SIGUSR2 => stop = Some(Stop::HandOver),
                SIGINT => stop = Some(Stop::Signal("SIGINT")),
                _ => stop = Some(Stop::Signal("SIGTERM")),
            }
        }
        if let Some(s) = stop {
            break s;
        }
        if apply_health(&health_rx, &mut book, &cfg, &mut dp) {
            publish = true;
        }
        // API requests, answered one at a time by this loop, which owns config and data plane.
        while let Ok((req, reply)) = api_rx.try_recv() {
            let started = Instant::now();
            let (response, changed) =
                answer_api(&req, &mut dp, config_file.as_mut(), &mut cfg, &book, &state);
            if changed {
                state.generation += 1;
                applied_in = Some(started.elapsed().as_secs_f64());
                book.retain_checked(&cfg);
                checkers = health::start(&cfg, &health_tx);
                publish = true;
            }
            let _ = reply.send(response);
        }
        // Frames redirected onto a veth whose peer cannot take them are lost where XDP cannot
        // see it (see `veth`). Sampled once a second.
        if last_veth_sample.elapsed() >= Duration::from_secs(1) {
            last_veth_sample = Instant::now();
            match sample_veths() {
                Ok(sample) => {
                    for event in veths.update(&sample) {
                        if let crate::veth::VethEvent::Dropped { interface, .. } = &event {
                            // Growing drops are repeated at most once a minute.
                            if veth_warned
                                .get(interface)
                                .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
                            {
                                continue;
                            }
                            veth_warned.insert(interface.clone(), Instant::now());
                        }
                        warn!("{}", event.message());
                    }
                    if state.veths != veths.report {
                        state.veths = veths.report.clone();
                        publish = true;
                    }
                }
                Err(e) => tracing::debug!("sampling the veths: {e}"),
            }
        }
        if publish {
            resolve_neighbours(&cfg);
            if let Ok(fresh) =
                instance_state(&dp, &cfg, &book, instance_name, &origin, attached.clone())
            {
                state.services = fresh.services;
            }
            if let Err(e) = instance::write(&state) {
                warn!("could not update the state file: {e}");
            }
            if let Ok(mut m) = metrics.lock() {
                m.instance = state.clone();
                if let Some(seconds) = applied_in {
                    m.last_apply_seconds = seconds;
                }
            }
        }
        // fullnat ports of flows that idled out are freed once a second.
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            if cfg
                .services
                .iter()
                .any(|s| s.forwarding == config::Forwarding::FullNat)
            {
                match dp.sweep_fullnat() {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(released = n, "fullnat ports of idle flows freed"),
                    Err(e) => warn!("sweeping fullnat translations failed: {e}"),
                }
            }
        }
        dp.flush_logs();
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(checkers);
    let _ = std::fs::remove_file(&api_socket);
    instance::remove(instance_name);
    drop(dp); // closes this process's descriptors; the pins keep the data plane
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
    // Released last, when nothing of this daemon is left to clean up.
    drop(lock);
    Ok(())
}

/// Every interface of this network namespace, each veth with whether it can take
/// XDP_REDIRECT frames now.
fn sample_veths()
-> Result<Vec<(crate::netlink::LinkState, Option<bool>)>, crate::netlink::NetlinkError> {
    Ok(crate::netlink::links()?
        .into_iter()
        .map(|l| {
            let accepts = if l.is_veth {
                crate::netlink::accepts_xdp_redirect(l.index).ok().flatten()
            } else {
                None
            };
            (l, accepts)
        })
        .collect())
}

enum Stop {
    HandOver,
    Signal(&'static str),
}

/// Makes the kernel resolve the MAC address of every `dsr-l2` and `fullnat` backend, which XDP
/// needs from the neighbour table and cannot resolve itself (the kernel cannot forward such a
/// packet for it either: a `dsr-l2` packet is for the VIP, a `fullnat` one comes from this
/// host's own address). An empty datagram to the backend's discard port (9) makes the kernel
/// send ARP. Entries the kernel already holds cost nothing.
fn resolve_neighbours(cfg: &Config) {
    let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return;
    };
    for svc in cfg.services.iter().filter(|s| {
        matches!(
            s.forwarding,
            config::Forwarding::DsrL2 | config::Forwarding::FullNat
        )
    }) {
        for b in &svc.backends {
            let _ = sock.send_to(&[], (b.address.ip(), 9));
        }
    }
}

/// Asks the daemon `pid` to hand over (SIGUSR2) and waits for it to exit: it stops writing the
/// maps and the pin record, and leaves the data plane attached.
fn hand_over(pid: u32) -> anyhow::Result<()> {
    instance::signal_and_wait(pid, libc::SIGUSR2, Duration::from_secs(10)).with_context(|| {
        format!("the running daemon (pid {pid}) did not hand over (SIGUSR2); nothing was changed")
    })?;
    info!(pid, "the previous daemon handed over");
    Ok(())
}

/// Answers one API request; returns the response and whether the config changed.
///
/// A change is validated whole, made as an edit of the operator's config file (comments and
/// layout kept; refused with 409 while the file holds edits that were not applied; written
/// through a symlink, keeping owner and mode: [`config::ConfigFile`]), and only then applied to
/// the data plane; if the data plane refuses it the previous file is put back. So a rejected
/// change leaves the data plane and the file as they were, an applied one survives a restart
/// and a reload, and the answer matches both.
fn answer_api(
    req: &crate::api::Request,
    dp: &mut Dataplane,
    config_file: Option<&mut config::ConfigFile>,
    cfg: &mut Config,
    book: &HealthBook,
    state: &instance::InstanceState,
) -> (crate::api::Response, bool) {
    use crate::api::{Plan, Response};
    let plan = match crate::api::plan(req, cfg) {
        Ok(p) => p,
        Err(resp) => return (resp, false),
    };
    let (next, edit, what, answer) = match plan {
        Plan::Read(v) => return (Response::ok(v), false),
        Plan::Status => {
            let snapshot = stats::read(state).map(|s| serde_json::to_value(&s).unwrap_or_default());
            return match snapshot {
                Ok(stats) => (
                    Response::ok(serde_json::json!({
                        "instance": state.instance,
                        "pid": state.pid,
                        "config": state.config,
                        "generation": state.generation,
                        "services": state.services,
                        "stats": stats,
                    })),
                    false,
                ),
                Err(e) => (Response::error(500, e.to_string()), false),
            };
        }
        Plan::Change {
            next,
            edit,
            what,
            answer,
        } => (next, edit, what, answer),
    };
    let Some(file) = config_file else {
        return (
            Response::error(
                409,
                "this instance runs the built-in default config, so a live change could not survive a restart; start it with --config FILE",
            ),
            false,
        );
    };
    // Persist first, then apply: the edit is written (keeping a symlink, the owner and the
    // mode; in place if it is bind-mounted) before the data plane changes, and put back as it
    // was if the data plane refuses the change. So the answer always matches both.
    let path = file.path().to_path_buf();
    let original = match file.write_edit(&edit, &next) {
        Ok((original, _)) => original,
        Err(e) => {
            // A failed in-place rewrite may have left part of the text: put the old one back.
            let restored = match &e {
                config::FileError::Save(_) => {
                    let last = file.last_text().to_owned();
                    file.restore(last).map_or_else(
                        |e| format!("; restoring the previous file failed too: {e}"),
                        |_| String::new(),
                    )
                }
                _ => String::new(),
            };
            warn!("API: {what}, not applied: {e}{restored}");
            return (
                Response::error(
                    e.status(),
                    format!("{what}: not applied (the data plane is unchanged): {e}{restored}"),
                ),
                false,
            );
        }
    };
    if let Err(e) = dp.apply_config(&book.effective(&next)) {
        return match file.restore(original) {
            Ok(_) => (Response::error(400, format!("{what}: {e}")), false),
            Err(restore) => {
                warn!(
                    "API: {what}: the data plane refused it ({e}) and restoring {} failed ({restore}); the file holds the change, the data plane does not",
                    path.display()
                );
                (
                    Response::error(
                        500,
                        format!(
                            "{what}: the data plane refused it ({e}), and restoring {} failed ({restore}): the file holds the refused change, the data plane the previous config; fix the file before the next reload",
                            path.display()
                        ),
                    ),
                    false,
                )
            }
        };
    }
    info!(generation = state.generation + 1, "API: {what}");
    *cfg = next;
    (Response::ok(answer), true)
}

/// Takes the health results that arrived, logs every up/down transition with its reason, and
/// re-applies the config (with unhealthy backends drained or left out) if any happened.
/// Returns whether anything changed.
fn apply_health(
    rx: &std::sync::mpsc::Receiver<health::HealthEvent>,
    book: &mut HealthBook,
    cfg: &Config,
    dp: &mut Dataplane,
) -> bool {
    let mut changed = false;
    while let Ok(ev) = rx.try_recv() {
        // Results of checkers from before a reload may still trickle in: ignore what the
        // config no longer checks.
        let Some(hc) = cfg
            .services
            .iter()
            .find(|s| s.name == ev.service && s.backends.iter().any(|b| b.address == ev.backend))
            .and_then(|s| s.health_check.as_ref())
        else {
            continue;
        };
        if let Some(t) = book.record(&ev, hc) {
            let (service, backend, reason) = (&t.service, t.backend, &t.reason);
            if t.up {
                info!(service, %backend, reason, "backend is up");
            } else {
                warn!(service, %backend, reason, "backend is down");
            }
            changed = true;
        }
    }
    if changed && let Err(e) = dp.apply_config(&book.effective(cfg)) {
        warn!("applying a health change failed: {e}");
    }
    changed
}

/// Re-reads the config file and applies what changed. A config with an error, or a change that
/// needs a restart, is rejected whole and the data plane keeps the old one. Returns what was
/// done and how long the apply took in seconds.
fn reload(
    dp: &mut Dataplane,
    file: Option<&mut config::ConfigFile>,
    current: &mut Config,
    book: &HealthBook,
) -> anyhow::Result<(String, f64)> {
    let Some(file) = file else {
        bail!("running the built-in default config; there is no file to re-read");
    };
    let path = file.path().to_path_buf();
    let path = path.as_path();
    let started = Instant::now();
    let (next, text) = file.read()?;
    check_host(&next, path)?;
    let restart_only = [
        ("interfaces", next.interfaces != current.interfaces),
        ("xdp_mode", next.xdp_mode != current.xdp_mode),
        ("debug_log", next.debug_log != current.debug_log),
        ("[limits]", next.limits != current.limits),
        (
            "metrics_listen",
            next.metrics_listen != current.metrics_listen,
        ),
        ("api_listen", next.api_listen != current.api_listen),
    ];
    if let Some((field, _)) = restart_only.iter().find(|(_, changed)| *changed) {
        bail!(
            "{}: `{field}` changed, which takes a restart",
            path.display()
        );
    }
    let apply_started = Instant::now();
    dp.apply_config(&book.effective(&next))
        .with_context(|| format!("applying {}", path.display()))?;
    let apply_seconds = apply_started.elapsed().as_secs_f64();
    let msg = format!(
        "applied {} ({} service(s), {} backend(s)) in {} ms",
        path.display(),
        next.services.len(),
        next.services
            .iter()
            .map(|s| s.backends.len())
            .sum::<usize>(),
        started.elapsed().as_millis()
    );
    *current = next;
    // Applied: API changes now edit this text.
    file.reloaded(text);
    Ok((msg, apply_seconds))
}

fn instance_state(
    dp: &Dataplane,
    cfg: &Config,
    book: &HealthBook,
    name: &str,
    origin: &str,
    interfaces: Vec<dataplane::AttachedInterface>,
) -> anyhow::Result<instance::InstanceState> {
    let mut map_ids = std::collections::BTreeMap::new();
    for m in [MAP_STATS, MAP_SERVICE_STATS, MAP_BACKEND_STATS, MAP_FLOWS] {
        map_ids.insert(m.to_string(), dp.map_id(m)?);
    }
    let plans = dp
        .current()
        .map(|s| s.services.as_slice())
        .unwrap_or_default();
    let services = cfg
        .services
        .iter()
        .filter_map(|svc| {
            let plan = plans.iter().find(|p| p.name == svc.name)?;
            let checked = svc.health_check.is_some();
            Some(instance::ServiceInfo {
                name: svc.name.clone(),
                vip: svc.vip.to_string(),
                id: plan.service.id,
                backends: svc
                    .backends
                    .iter()
                    .map(|b| instance::BackendInfo {
                        address: b.address.to_string(),
                        index: plan
                            .backends
                            .iter()
                            .find(|(_, _, a)| *a == b.address)
                            .map(|(i, _, _)| *i),
                        health: checked.then(|| {
                            if book.is_up(&svc.name, b.address) {
                                "up"
                            } else {
                                "down"
                            }
                            .to_string()
                        }),
                        health_detail: book.get(&svc.name, b.address).map(|h| h.detail.clone()),
                    })
                    .collect(),
            })
        })
        .collect();
    Ok(instance::InstanceState {
        instance: name.to_string(),
        pid: std::process::id(),
        config: origin.to_string(),
        interfaces,
        map_ids,
        services,
        generation: 0,
        reloads: 0,
        last_reload: None,
        veths: Default::default(),
    })
}
