//! The `xdplb` command: daemon and CLI.

use std::{
    net::SocketAddrV4,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use xdplb::{
    bench,
    config::{self, Config},
    dataplane::{self, Dataplane},
    demo, explain,
    health::{self, HealthBook},
    instance, stats,
};
use xdplb_common::{MAP_BACKEND_STATS, MAP_FLOWS, MAP_SERVICE_STATS, MAP_STATS};

#[derive(Parser)]
#[command(name = "xdplb", version, about = "An XDP layer-4 UDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data plane, fill its maps, and run until SIGINT or SIGTERM.
    Run {
        /// Config file (TOML). Without it, the built-in tutorial scenario runs:
        /// 127.0.0.1:9875 balanced to 127.0.0.1:9876, :9877 and :9878 on lo.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Name of this instance, so several can run side by side (in different namespaces).
        #[arg(long, default_value = "default")]
        instance: String,
    },
    /// Validate a config and say what it would do.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Say which backend a flow gets, and why (service, scheduler, hash, table slot).
    Explain {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The client's address and port.
        client: SocketAddrV4,
        /// The destination the client sends to (a VIP, or any address for a 0.0.0.0 service).
        destination: SocketAddrV4,
        #[arg(long)]
        json: bool,
    },
    /// Status of a running instance, through its API: services, backends, health, counters.
    Status {
        #[arg(long, default_value = "default")]
        instance: String,
    },
    /// List, add or remove services of a running instance (saved to its config file).
    Service {
        #[arg(long, default_value = "default")]
        instance: String,
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// List, add, remove, drain, undrain or reweight backends of a running instance.
    Backend {
        #[arg(long, default_value = "default")]
        instance: String,
        #[command(subcommand)]
        action: BackendAction,
    },
    /// A live view of rates per service and backend, with health and drops (q quits).
    Top {
        #[arg(long, default_value = "default")]
        instance: String,
    },
    /// Make a running instance re-read its config file (SIGHUP) and report the outcome.
    Reload {
        #[arg(long, default_value = "default")]
        instance: String,
    },
    /// Print the counters of a running instance.
    Stats {
        #[arg(long, default_value = "default")]
        instance: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Demo UDP backends: answer every datagram with the listening address and the payload.
    DemoBackend {
        /// Comma-separated IPv4:port addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        listen: Vec<SocketAddrV4>,
    },
    /// Demo client: send datagrams on many connected sockets and report who answered.
    DemoClient {
        #[arg(long, default_value = "127.0.0.1:9875")]
        target: SocketAddrV4,
        /// Local address to bind the client sockets to.
        #[arg(long)]
        bind: Option<std::net::Ipv4Addr>,
        #[arg(long, default_value_t = 30)]
        flows: u32,
        #[arg(long, default_value_t = 3)]
        packets: u32,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Pause after each reply, to spread the traffic over time.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Exit non-zero unless every datagram was answered from the target by one backend per flow.
        #[arg(long)]
        require_all: bool,
    },
    /// Measure the data plane's cost per packet with BPF_PROG_TEST_RUN.
    Bench {
        #[arg(long, default_value_t = 300_000)]
        repeat: u32,
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Size of the flow and reply tables (default: the config default, 262144).
        #[arg(long)]
        max_flows: Option<u32>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    List,
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        vip: String,
        #[arg(long)]
        scheduler: Option<String>,
        #[arg(long)]
        flow_idle_timeout: Option<String>,
        /// A backend address (IPv4:port); repeat for more.
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
    },
    Remove {
        name: String,
    },
}

#[derive(Subcommand)]
enum BackendAction {
    List {
        service: String,
    },
    Add {
        service: String,
        address: String,
        #[arg(long)]
        weight: Option<i64>,
        #[arg(long)]
        drain: bool,
    },
    Remove {
        service: String,
        address: String,
    },
    Drain {
        service: String,
        address: String,
    },
    Undrain {
        service: String,
        address: String,
    },
    Weight {
        service: String,
        address: String,
        weight: i64,
    },
}

/// Calls the API and prints the answer; an error status prints the error and fails.
fn api_command(
    instance: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    let (status, value) = xdplb::api::call(instance, method, path, body.as_ref())?;
    if status == 200 {
        println!("{}", serde_json::to_string_pretty(&value)?);
        Ok(ExitCode::SUCCESS)
    } else {
        let msg = value
            .get("error")
            .and_then(|e| e.as_str())
            .map_or_else(|| value.to_string(), str::to_string);
        eprintln!("xdplb: {method} {path}: {status}: {msg}");
        Ok(ExitCode::FAILURE)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xdplb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, instance } => run(config, &instance).map(|()| ExitCode::SUCCESS),
        Command::Check { config } => {
            let cfg = load_config(&config)?;
            print!("{}: OK\n{}", config.display(), cfg.describe());
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            config,
            client,
            destination,
            json,
        } => {
            let cfg = match &config {
                Some(p) => config::load(p)?,
                None => config::default_config(),
            };
            let e = explain::explain(&cfg, client, destination)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", e.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { instance } => reload_instance(&instance),
        Command::Status { instance } => api_command(&instance, "GET", "/v1/status", None),
        Command::Service { instance, action } => match action {
            ServiceAction::List => api_command(&instance, "GET", "/v1/services", None),
            ServiceAction::Add {
                name,
                vip,
                scheduler,
                flow_idle_timeout,
                backends,
            } => {
                let mut body = serde_json::json!({
                    "name": name,
                    "vip": vip,
                    "backends": backends.iter().map(|a| serde_json::json!({"address": a})).collect::<Vec<_>>(),
                });
                if let Some(s) = scheduler {
                    body["scheduler"] = s.into();
                }
                if let Some(t) = flow_idle_timeout {
                    body["flow_idle_timeout"] = t.into();
                }
                api_command(&instance, "POST", "/v1/services", Some(body))
            }
            ServiceAction::Remove { name } => {
                api_command(&instance, "DELETE", &format!("/v1/services/{name}"), None)
            }
        },
        Command::Backend { instance, action } => {
            let path = |service: &str, address: Option<&str>| match address {
                // Service names and IPv4:port addresses never contain '/'.
                Some(a) => format!("/v1/services/{service}/backends/{a}"),
                None => format!("/v1/services/{service}/backends"),
            };
            match action {
                BackendAction::List { service } => {
                    api_command(&instance, "GET", &path(&service, None), None)
                }
                BackendAction::Add {
                    service,
                    address,
                    weight,
                    drain,
                } => {
                    let mut body = serde_json::json!({"address": address, "drain": drain});
                    if let Some(w) = weight {
                        body["weight"] = w.into();
                    }
                    api_command(&instance, "POST", &path(&service, None), Some(body))
                }
                BackendAction::Remove { service, address } => {
                    api_command(&instance, "DELETE", &path(&service, Some(&address)), None)
                }
                BackendAction::Drain { service, address } => api_command(
                    &instance,
                    "PATCH",
                    &path(&service, Some(&address)),
                    Some(serde_json::json!({"drain": true})),
                ),
                BackendAction::Undrain { service, address } => api_command(
                    &instance,
                    "PATCH",
                    &path(&service, Some(&address)),
                    Some(serde_json::json!({"drain": false})),
                ),
                BackendAction::Weight {
                    service,
                    address,
                    weight,
                } => api_command(
                    &instance,
                    "PATCH",
                    &path(&service, Some(&address)),
                    Some(serde_json::json!({"weight": weight})),
                ),
            }
        }
        Command::Top { instance } => xdplb::top::run(&instance).map(|()| ExitCode::SUCCESS),
        Command::Stats { instance, json } => {
            let state = instance::read(&instance)?;
            let snap = stats::read(&state)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
            } else {
                print!("{}", stats::render(&snap));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoBackend { listen } => {
            demo::serve_backends(&listen, || {
                let list: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
                println!("demo backends listening on {}", list.join(", "));
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoClient {
            target,
            bind,
            flows,
            packets,
            timeout_ms,
            gap_us,
            json,
            require_all,
        } => {
            let report = demo::run_client(
                target,
                bind,
                flows,
                packets,
                Duration::from_millis(timeout_ms),
                Duration::from_micros(gap_us),
            )?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.render());
            }
            if require_all && !report.all_good() {
                eprintln!("xdplb: demo client: not every datagram was answered correctly");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            repeat,
            rounds,
            max_flows,
            json,
        } => {
            let report = bench::run(repeat.max(1), rounds.max(1), max_flows)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", bench::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sends SIGHUP to a running instance and waits (up to 10 s) for it to record the outcome.
fn reload_instance(name: &str) -> anyhow::Result<ExitCode> {
    let before = instance::read(name)?;
    let pid = i32::try_from(before.pid).context("pid out of range")?;
    // SAFETY: kill(2) with a pid read from the instance's state file and a valid signal.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        bail!(
            "signalling instance {name:?} (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let Ok(now) = instance::read(name) else {
            continue;
        };
        if now.reloads > before.reloads
            && let Some(outcome) = now.last_reload
        {
            if outcome.ok {
                println!("reload {}: {}", now.reloads, outcome.message);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "xdplb: reload {} rejected, instance {name:?} keeps running on its previous config: {}",
                now.reloads, outcome.message
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    bail!("instance {name:?} (pid {pid}) did not report the reload within 10 s")
}

/// Loads and validates a config file, interfaces included.
fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let origin = path.display().to_string();
    let cfg = config::load(path)?;
    config::check_interfaces(&cfg, &origin, interface_exists)?;
    Ok(cfg)
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

fn run(config_path: Option<PathBuf>, instance_name: &str) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Installed first, so a signal during start-up is handled too.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let (mut cfg, origin) = match &config_path {
        Some(p) => (load_config(p)?, p.display().to_string()),
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
    instance::ensure_not_running(instance_name)?;

    let started = Instant::now();
    let mut dp = Dataplane::load(cfg.limits, cfg.debug_log)?;
    let apply_started = Instant::now();
    dp.apply_config(&cfg).context("filling the maps")?;
    let apply_seconds = apply_started.elapsed().as_secs_f64();
    // Bound before attaching, so a taken port leaves nothing attached.
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("metrics_listen {addr}: cannot listen"))?,
        ),
        None => None,
    };
    let api_socket = xdplb::api::socket_path(instance_name)?;
    std::fs::create_dir_all(instance::run_dir())
        .with_context(|| format!("creating {}", instance::run_dir().display()))?;
    let api_listener = xdplb::api::bind(&api_socket)
        .with_context(|| format!("API socket {}", api_socket.display()))?;
    let attached = dataplane::attach_all(&mut dp, &cfg.interfaces, cfg.xdp_mode)?;
    let (api_tx, api_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || xdplb::api::serve(api_listener, api_tx));

    let (health_tx, health_rx) = std::sync::mpsc::channel();
    let mut book = HealthBook::default();
    let mut checkers = health::start(&cfg, &health_tx);
    let mut state = instance_state(&dp, &cfg, &book, instance_name, &origin, attached.clone())?;
    let state_path = instance::write(&state)?;
    let metrics = std::sync::Arc::new(std::sync::Mutex::new(xdplb::metrics::MetricsState {
        instance: state.clone(),
        last_apply_seconds: apply_seconds,
    }));
    if let Some(listener) = metrics_listener {
        let shared = metrics.clone();
        std::thread::spawn(move || xdplb::metrics::serve(listener, shared));
    }
    let where_ = attached
        .iter()
        .map(|a| format!("{} ({} XDP + TC egress)", a.name, a.xdp_mode))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "xdplb: running instance {instance_name:?} from {origin}: {} service(s), {} backend(s), attached to {where_} in {} ms; state {}",
        cfg.services.len(),
        cfg.services.iter().map(|s| s.backends.len()).sum::<usize>(),
        started.elapsed().as_millis(),
        state_path.display()
    );

    let stop = loop {
        let mut stop = None;
        let mut publish = false;
        let mut applied_in = None;
        for sig in signals.pending() {
            match sig {
                SIGHUP => {
                    let outcome = reload(&mut dp, config_path.as_deref(), &mut cfg, &book);
                    applied_in = outcome.as_ref().ok().map(|(_, seconds)| *seconds);
                    let outcome = outcome.map(|(msg, _)| msg);
                    state.reloads += 1;
                    match &outcome {
                        Ok(msg) => {
                            state.generation += 1;
                            eprintln!("xdplb: reload {}: {msg}", state.reloads);
                        }
                        Err(e) => eprintln!(
                            "xdplb: reload {} rejected, the data plane is unchanged: {e:#}",
                            state.reloads
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
                SIGINT => stop = Some("SIGINT"),
                _ => stop = Some("SIGTERM"),
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
            let (response, changed) = answer_api(
                &req,
                &mut dp,
                config_path.as_deref(),
                &mut cfg,
                &book,
                &state,
            );
            if changed {
                state.generation += 1;
                applied_in = Some(started.elapsed().as_secs_f64());
                book.retain_checked(&cfg);
                checkers = health::start(&cfg, &health_tx);
                publish = true;
            }
            let _ = reply.send(response);
        }
        if publish {
            if let Ok(fresh) =
                instance_state(&dp, &cfg, &book, instance_name, &origin, attached.clone())
            {
                state.services = fresh.services;
            }
            if let Err(e) = instance::write(&state) {
                eprintln!("xdplb: could not update the state file: {e}");
            }
            if let Ok(mut m) = metrics.lock() {
                m.instance = state.clone();
                if let Some(seconds) = applied_in {
                    m.last_apply_seconds = seconds;
                }
            }
        }
        dp.flush_logs();
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(checkers);
    let _ = std::fs::remove_file(&api_socket);
    instance::remove(instance_name);
    drop(dp); // detaches every link and unloads the programs
    eprintln!("xdplb: {stop}; detached and stopped");
    Ok(())
}

/// Answers one API request; returns the response and whether the config changed.
///
/// A change is validated whole, written to a temporary file next to the config, applied to the
/// data plane, and only then renamed over the config file: a rejected change leaves the data
/// plane and the file as they were, and an applied one survives a restart.
fn answer_api(
    req: &xdplb::api::Request,
    dp: &mut Dataplane,
    config_path: Option<&std::path::Path>,
    cfg: &mut Config,
    book: &HealthBook,
    state: &instance::InstanceState,
) -> (xdplb::api::Response, bool) {
    use xdplb::api::{Plan, Response};
    let plan = match xdplb::api::plan(req, cfg) {
        Ok(p) => p,
        Err(resp) => return (resp, false),
    };
    let (next, what) = match plan {
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
        Plan::Change { next, what } => (next, what),
    };
    let Some(path) = config_path else {
        return (
            Response::error(
                409,
                "this instance runs the built-in default config, so a live change could not survive a restart; start it with --config FILE",
            ),
            false,
        );
    };
    let tmp = path.with_extension("toml.xdplb-tmp");
    if let Err(e) = std::fs::write(&tmp, config::to_toml(&next)) {
        return (
            Response::error(500, format!("writing {}: {e}", tmp.display())),
            false,
        );
    }
    if let Err(e) = dp.apply_config(&book.effective(&next)) {
        let _ = std::fs::remove_file(&tmp);
        return (Response::error(400, format!("{what}: {e}")), false);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        eprintln!(
            "xdplb: API: {what}, applied but not saved to {}: {e}",
            path.display()
        );
        *cfg = next;
        return (
            Response::error(
                500,
                format!("{what}: applied, but saving {} failed: {e}", path.display()),
            ),
            true,
        );
    }
    eprintln!("xdplb: API: {what}");
    *cfg = next;
    (
        Response::ok(serde_json::json!({ "ok": true, "change": what })),
        true,
    )
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
            eprintln!(
                "xdplb: service {:?} backend {} is {}: {}",
                t.service,
                t.backend,
                if t.up { "up" } else { "down" },
                t.reason
            );
            changed = true;
        }
    }
    if changed && let Err(e) = dp.apply_config(&book.effective(cfg)) {
        eprintln!("xdplb: applying a health change failed: {e}");
    }
    changed
}

/// Re-reads the config file and applies what changed. A config with an error, or a change that
/// needs a restart, is rejected whole and the data plane keeps the old one. Returns what was
/// done and how long the apply took in seconds.
fn reload(
    dp: &mut Dataplane,
    path: Option<&std::path::Path>,
    current: &mut Config,
    book: &HealthBook,
) -> anyhow::Result<(String, f64)> {
    let Some(path) = path else {
        bail!("running the built-in default config; there is no file to re-read");
    };
    let started = Instant::now();
    let next = load_config(path)?;
    let restart_only = [
        ("interfaces", next.interfaces != current.interfaces),
        ("xdp_mode", next.xdp_mode != current.xdp_mode),
        ("debug_log", next.debug_log != current.debug_log),
        ("[limits]", next.limits != current.limits),
        (
            "metrics_listen",
            next.metrics_listen != current.metrics_listen,
        ),
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
    })
}
