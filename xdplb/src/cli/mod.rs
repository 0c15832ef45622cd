//! The commands behind `xdplb`'s command line; `main.rs` only parses and dispatches.

mod args;
mod docs;
mod node;

use std::{
    collections::BTreeSet,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub use args::{BackendAction, Cli, Command, NodeAction, Output, OutputFormat, ServiceAction};

use crate::{bench, config, daemon, demo, explain, flows, instance, list, stats, view};

/// Calls the API and prints the answer as JSON; an error status prints the error and fails.
fn api_command(
    instance: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    api_command_as(instance, method, path, body, None)
}

/// Renders an API answer as a table.
type Table = fn(&serde_json::Value) -> String;

/// [`api_command`], printing the answer with `table` unless JSON is asked for.
fn api_command_as(
    instance: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    table: Option<(Output, Table)>,
) -> anyhow::Result<ExitCode> {
    let (status, value) = crate::api::call(instance, method, path, body)?;
    if status == 200 {
        match table {
            Some((output, render)) if !output.is_json() => print!("{}", render(&value)),
            _ => println!("{}", serde_json::to_string_pretty(&value)?),
        }
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

/// The JSON form of the `[[service]]` table that `spec` describes (the API's body for a new
/// service): the fields given, under the names the config file uses.
pub fn service_body(spec: &args::ServiceSpec) -> anyhow::Result<serde_json::Value> {
    use serde_json::{Map, Value};
    fn put(map: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
        if let Some(v) = value {
            map.insert(key.to_owned(), v.into());
        }
    }
    let text = |v: Option<&dyn std::fmt::Display>| v.map(ToString::to_string);
    let mut svc = Map::new();
    put(&mut svc, "name", Some(spec.name.clone()));
    put(&mut svc, "vip", Some(spec.vip.clone()));
    put(
        &mut svc,
        "protocol",
        text(spec.protocol.as_ref().map(|v| v as _)),
    );
    put(
        &mut svc,
        "flow_idle_timeout",
        spec.flow_idle_timeout.clone(),
    );
    put(
        &mut svc,
        "scheduler",
        text(spec.scheduler.as_ref().map(|v| v as _)),
    );
    put(&mut svc, "hash", text(spec.hash.as_ref().map(|v| v as _)));
    put(&mut svc, "maglev_table_size", spec.maglev_table_size);
    put(
        &mut svc,
        "when_all_down",
        text(spec.when_all_down.as_ref().map(|v| v as _)),
    );
    put(
        &mut svc,
        "forwarding",
        text(spec.forwarding.as_ref().map(|v| v as _)),
    );
    put(&mut svc, "encap_source", spec.encap_source.clone());
    put(&mut svc, "fullnat_source", spec.fullnat_source.clone());
    put(&mut svc, "fullnat_ports", spec.fullnat_ports.clone());
    if let Some(kind) = spec.check {
        let mut hc = Map::new();
        put(&mut hc, "type", Some(kind.to_string()));
        put(&mut hc, "interval", spec.check_interval.clone());
        put(&mut hc, "timeout", spec.check_timeout.clone());
        put(&mut hc, "rise", spec.check_rise);
        put(&mut hc, "fall", spec.check_fall);
        put(&mut hc, "port", spec.check_port);
        put(&mut hc, "payload", spec.check_payload.clone());
        put(&mut hc, "payload_hex", spec.check_payload_hex.clone());
        put(&mut hc, "expect", spec.check_expect.clone());
        put(&mut hc, "expect_hex", spec.check_expect_hex.clone());
        put(&mut hc, "path", spec.check_path.clone());
        put(&mut hc, "expect_status", spec.check_expect_status);
        put(
            &mut hc,
            "on_failure",
            text(spec.check_on_failure.as_ref().map(|v| v as _)),
        );
        svc.insert("health_check".to_owned(), Value::Object(hc));
    }
    let backends = spec
        .backends
        .iter()
        .map(|b| backend_body(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    svc.insert("backend".to_owned(), Value::Array(backends));
    Ok(Value::Object(svc))
}

/// `ADDRESS[,weight=N][,drain[=BOOL]]` as the JSON form of a `[[service.backend]]` table.
pub fn backend_body(spec: &str) -> anyhow::Result<serde_json::Value> {
    let mut parts = spec.split(',');
    let address = parts.next().unwrap_or_default().trim();
    let mut b = serde_json::Map::new();
    b.insert("address".to_owned(), address.into());
    for part in parts {
        match part.trim().split_once('=') {
            None if part.trim() == "drain" => {
                b.insert("drain".to_owned(), true.into());
            }
            Some(("weight", w)) => {
                let w: i64 = w
                    .parse()
                    .with_context(|| format!("--backend {spec:?}: weight {w:?} is not a number"))?;
                b.insert("weight".to_owned(), w.into());
            }
            Some(("drain", d)) => {
                let d: bool = d.parse().with_context(|| {
                    format!("--backend {spec:?}: drain={d:?}: expected true or false")
                })?;
                b.insert("drain".to_owned(), d.into());
            }
            _ => bail!(
                "--backend {spec:?}: {part:?} is not weight=N or drain; write ADDRESS[,weight=N][,drain]"
            ),
        }
    }
    Ok(serde_json::Value::Object(b))
}

/// Runs the command `cli` parsed.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli { instance, command } = cli;
    match command {
        Command::Run {
            config,
            replace,
            cleanup,
        } => daemon::run(&daemon::RunOptions {
            config,
            instance,
            replace,
            cleanup,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Stop => stop(&instance),
        Command::Decap {
            interface,
            xdp_mode,
            remove,
            stats,
            output,
        } => decap(&interface, xdp_mode, remove, stats, output),
        Command::Check { config } => {
            let cfg = daemon::load_config(&config)?;
            print!("{}: OK\n{}", config.display(), cfg.describe());
            print!("{}", crate::announce::describe(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Command::Node { action } => node::run(&instance, action),
        Command::Explain {
            config,
            client,
            destination,
            output,
        } => {
            let cfg = match &config {
                Some(p) => config::load(p)?,
                None => running_config(&instance)?,
            };
            let e = explain::explain(&cfg, client, destination)?;
            if output.is_json() {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", e.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::GenerateDocs { dir } => {
            for path in docs::generate(&dir)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { dry_run: true } => reload_dry_run(&instance),
        Command::Reload { dry_run: false } => reload_instance(&instance),
        Command::Status { output } => api_command_as(
            &instance,
            "GET",
            "/v1/status",
            None,
            Some((output, tables::status)),
        ),
        Command::List { output } => {
            let view = view::resolve(&instance)?;
            let facts = view::facts(&view)?;
            let listing = list::build(&view, &facts)?;
            if output.is_json() {
                print_offline_note(&view);
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", listing.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Flows {
            service,
            backend,
            limit,
            output,
        } => {
            let view = view::resolve(&instance)?;
            let facts = view::facts(&view)?;
            if let Some(name) = &service
                && !facts.iter().any(|s| &s.summary.name == name)
            {
                let names: Vec<&str> = facts.iter().map(|s| s.summary.name.as_str()).collect();
                bail!(
                    "--service {name}: instance {instance:?} has no such service (it has {})",
                    names.join(", ")
                );
            }
            let (entries, read) = flows::read_table(&view.state)?;
            let mut listing = flows::listing(
                &view.state,
                &facts,
                &entries,
                read,
                flows::monotonic_ns(),
                &flows::Filter {
                    service,
                    backend,
                    limit,
                },
            );
            listing.daemon_running = view.running();
            listing.note.clone_from(&view.offline);
            if output.is_json() {
                print_offline_note(&view);
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", listing.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Service { action } => match action {
            ServiceAction::List { output } => api_command_as(
                &instance,
                "GET",
                "/v1/services",
                None,
                Some((output, tables::services)),
            ),
            ServiceAction::Add(spec) => {
                let body = service_body(&spec)?;
                api_command(&instance, "POST", "/v1/services", Some(&body))
            }
            ServiceAction::Remove { name } => {
                api_command(&instance, "DELETE", &format!("/v1/services/{name}"), None)
            }
        },
        Command::Backend { action } => {
            let path = |service: &str, address: Option<&str>| match address {
                // Service names and addresses (IPV4:PORT, [IPV6]:PORT) never contain '/';
                // brackets are valid in a request path.
                Some(a) => format!("/v1/services/{service}/backends/{a}"),
                None => format!("/v1/services/{service}/backends"),
            };
            match action {
                BackendAction::List { service, output } => api_command_as(
                    &instance,
                    "GET",
                    &path(&service, None),
                    None,
                    Some((output, tables::backends)),
                ),
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
                    api_command(&instance, "POST", &path(&service, None), Some(&body))
                }
                BackendAction::Remove { service, address } => {
                    api_command(&instance, "DELETE", &path(&service, Some(&address)), None)
                }
                BackendAction::Drain { service, address } => api_command(
                    &instance,
                    "PATCH",
                    &path(&service, Some(&address)),
                    Some(&serde_json::json!({"drain": true})),
                ),
                BackendAction::Undrain { service, address } => api_command(
                    &instance,
                    "PATCH",
                    &path(&service, Some(&address)),
                    Some(&serde_json::json!({"drain": false})),
                ),
                BackendAction::Weight {
                    service,
                    address,
                    weight,
                } => api_command(
                    &instance,
                    "PATCH",
                    &path(&service, Some(&address)),
                    Some(&serde_json::json!({"weight": weight})),
                ),
            }
        }
        Command::Top => crate::top::run(&instance).map(|()| ExitCode::SUCCESS),
        Command::Stats { output } => {
            let view = view::resolve(&instance)?;
            let snap = stats::read(&view.state)?;
            if output.is_json() {
                print_offline_note(&view);
                let mut value = serde_json::to_value(&snap)?;
                value["daemon_running"] = view.running().into();
                if let Some(note) = &view.offline {
                    value["note"] = note.clone().into();
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                if let Some(note) = &view.offline {
                    println!("{note}");
                }
                print!("{}", stats::render(&snap));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Capture {
            service,
            count,
            write,
        } => crate::capture::run(&crate::capture::Options {
            instance,
            service,
            count,
            write,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::DemoBackend { listen, name } => {
            demo::serve_backends(&listen, name.as_deref(), || {
                let list: Vec<String> = listen.iter().map(ToString::to_string).collect();
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
            payload_bytes,
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
                payload_bytes,
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
        Command::DemoFlood {
            target,
            flows,
            seconds,
            rate,
            payload_bytes,
            new_flow_per_datagram,
            source_net,
        } => {
            if new_flow_per_datagram {
                // Raw IPv4 datagrams from many source addresses: IPv4 targets only.
                let v4: Vec<std::net::SocketAddrV4> = target
                    .iter()
                    .map(|t| match t {
                        std::net::SocketAddr::V4(v4) => Ok(*v4),
                        std::net::SocketAddr::V6(_) => Err(anyhow::anyhow!(
                            "--new-flow-per-datagram sends raw IPv4: target {t} is IPv6"
                        )),
                    })
                    .collect::<Result<_, _>>()?;
                let report =
                    demo::new_flows::flood_new_flows(&v4, flows, source_net, rate, payload_bytes)?;
                println!("{}", serde_json::to_string(&report)?);
                return Ok(ExitCode::SUCCESS);
            }
            if !(seconds > 0.0 && seconds <= 3600.0) {
                bail!("--seconds {seconds}: expected more than 0 and at most 3600");
            }
            if payload_bytes > 65_507 {
                bail!("--payload-bytes {payload_bytes}: a UDP payload holds at most 65507 bytes");
            }
            let report = demo::flood(
                &target,
                flows,
                Duration::from_secs_f64(seconds),
                rate,
                payload_bytes,
            )?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            repeat,
            new_flow_repeat,
            rounds,
            max_flows,
            tables,
            modes,
            families,
            cpu,
            matrix_only,
            no_matrix,
            modes_backend,
            source,
            json,
        } => {
            if let Some(backend) = modes_backend {
                let rows = bench::forwarding_modes(backend, source, repeat.max(1), rounds.max(1))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", bench::render_modes(&rows));
                }
                return Ok(ExitCode::SUCCESS);
            }
            if no_matrix {
                let report = bench::run(repeat.max(1), rounds.max(1), max_flows)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", bench::render(&report));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let modes = modes
                .iter()
                .map(|m| {
                    config::Forwarding::ALL
                        .iter()
                        .copied()
                        .find(|f| f.as_str() == m)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "--modes {m}: expected {}",
                                config::Forwarding::expected()
                            )
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let families = families
                .iter()
                .map(|f| match f.to_ascii_lowercase().as_str() {
                    "ipv4" | "v4" | "4" => Ok(bench::Family::V4),
                    "ipv6" | "v6" | "6" => Ok(bench::Family::V6),
                    _ => Err(anyhow::anyhow!("--families {f}: expected ipv4 or ipv6")),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = bench::MatrixOptions {
                modes,
                families,
                tables,
                variants: bench::Variant::ALL.to_vec(),
                repeat: repeat.max(2),
                new_flow_repeat: new_flow_repeat.max(2),
                rounds,
                cpu,
            };
            let started = Instant::now();
            let (matrix, classic) = bench::run_matrix(opts, (!matrix_only).then_some(max_flows))?;
            if json {
                let out = serde_json::json!({ "matrix": matrix, "default_service": classic });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", bench::render_matrix(&matrix));
                if let Some(c) = &classic {
                    println!();
                    print!("{}", bench::render(c));
                }
            }
            eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `xdplb decap`: attach, remove, or report the decapsulation program of an interface.
fn decap(
    interface: &str,
    mode: config::XdpModeSetting,
    remove: bool,
    stats: bool,
    output: Output,
) -> anyhow::Result<ExitCode> {
    use crate::decap;
    if stats {
        let (done, left, failed) = decap::stats(interface)?;
        if output.is_json() {
            let value = serde_json::json!({
                "interface": interface,
                "decapsulated": done,
                "left_to_kernel": left,
                "failed": failed,
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!(
                "{interface}: decapsulated {done}, left to the kernel {left}, failed {failed}"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if remove {
        let id = decap::remove(interface)?;
        println!("{interface}: decap detached (XDP program id {id} is no longer attached)");
        return Ok(ExitCode::SUCCESS);
    }
    if !daemon::interface_exists(interface) {
        bail!("interface {interface:?} does not exist");
    }
    let (used, id) = decap::attach(interface, mode)?;
    println!(
        "{interface}: decap attached ({used} XDP, program id {id}, checked through netlink); it stays attached after this command until `xdplb decap --interface {interface} --remove`"
    );
    Ok(ExitCode::SUCCESS)
}

/// `xdplb stop`: stops the daemon (if one runs), detaches everything of the instance by
/// kernel id, removes its pins and records, and checks with the kernel that nothing of it is
/// attached any more (see `crate::stop`).
fn stop(name: &str) -> anyhow::Result<ExitCode> {
    let r = crate::stop::stop(name)?;
    if !r.still_attached.is_empty() {
        eprintln!(
            "xdplb: instance {name:?} is NOT stopped: still attached: {}; detach by hand (`bpftool link detach id ID`, `ip link set dev IF xdp off`) or run `xdplb stop` in the network namespace the instance runs in (the record {} is kept)",
            r.still_attached.join(", "),
            instance::run_dir()
                .join(format!("{name}.pins.json"))
                .display()
        );
        return Ok(ExitCode::FAILURE);
    }
    if !r.found {
        println!(
            "instance {name:?}: no daemon runs it, it has no record in {} and none of its programs is attached; nothing to stop",
            instance::run_dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(e) = &r.withdraw_error {
        eprintln!("xdplb: instance {name:?}: its VIP routes were not withdrawn: {e}");
    }
    if !r.withdrawn.is_empty() {
        println!(
            "instance {name:?}: withdrew {} (its announced VIP routes)",
            r.withdrawn.join(", ")
        );
    }
    let mut detached: Vec<String> = r.detached.clone();
    for i in &r.unpinned_from {
        if !detached.iter().any(|d| d.contains(&format!(" on {i}"))) {
            detached.push(format!("pinned links on {i}"));
        }
    }
    let interfaces: BTreeSet<String> = r
        .detached
        .iter()
        .filter_map(|d| d.split(" on ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap_or(rest).to_string())
        .chain(r.unpinned_from.iter().cloned())
        .collect();
    println!(
        "instance {name:?} stopped{}; {}; detached from {} ({}); checked: nothing of it is attached{}",
        r.daemon
            .map_or_else(String::new, |pid| format!(" (daemon pid {pid})")),
        r.pins_removed.as_ref().map_or_else(
            || "no pins to remove here".to_string(),
            |d| format!("removed the pins in {}", d.display())
        ),
        if interfaces.is_empty() {
            "nothing (it was not attached)".to_string()
        } else {
            interfaces.into_iter().collect::<Vec<_>>().join(", ")
        },
        if detached.is_empty() {
            "none".to_string()
        } else {
            detached.join(", ")
        },
        r.pins_unreachable
            .as_ref()
            .map_or_else(String::new, |d| format!(
                "; its pins in {} are in another mount namespace and hold only its maps now",
                d.display()
            )),
    );
    Ok(ExitCode::SUCCESS)
}

/// Sends SIGHUP to a running instance and waits (up to 10 s) for it to record the outcome.
fn reload_instance(name: &str) -> anyhow::Result<ExitCode> {
    let before = instance::read(name)?;
    let pid = before.pid;
    if let Err(e) = instance::signal(pid, rustix::process::Signal::HUP) {
        bail!("signalling instance {name:?} (pid {pid}): {e}");
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
                for change in &outcome.changes {
                    println!("  {change}");
                }
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

/// The config the running daemon of `name` applies, for `explain` without `--config`.
fn running_config(name: &str) -> anyhow::Result<config::Config> {
    match instance::running_pid(name)? {
        Some(_) => Ok(view::applied_config(name)?),
        None => bail!(
            "no running instance {name:?} to take the config from (see `xdplb run --instance {name}`); give a config file with --config FILE, or name the running instance with --instance"
        ),
    }
}

/// `xdplb reload --dry-run`: reads the instance's config file with the daemon's code (the same
/// checks, the host's interfaces included), and prints how it differs from the config the
/// daemon applies now, without applying anything. Fails as the reload would.
fn reload_dry_run(name: &str) -> anyhow::Result<ExitCode> {
    let state = instance::read(name)?;
    if !instance::pid_alive(state.pid) {
        bail!(
            "instance {name:?}: its daemon (pid {}) is not running; there is nothing to reload",
            state.pid
        );
    }
    let current = view::applied_config(name)?;
    let mut path = std::path::PathBuf::from(&state.config);
    // A relative path is the daemon's, from its working directory.
    if path.is_relative()
        && let Ok(cwd) = std::fs::read_link(format!("/proc/{}/cwd", state.pid))
    {
        path = cwd.join(path);
    }
    if !path.is_file() {
        bail!(
            "instance {name:?} runs {}, not a config file: there is no file to re-read",
            state.config
        );
    }
    let next = match daemon::load_config(&path) {
        Ok(next) => next,
        Err(e) => {
            eprintln!(
                "xdplb: reload --dry-run: a reload would be rejected, instance {name:?} would keep its config: {e:#}"
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    if let crate::control::ConfigRead::NeedsRestart { field } =
        crate::control::Core::new(current.clone()).config_read(&next)
    {
        eprintln!(
            "xdplb: reload --dry-run: a reload would be rejected: {}: `{field}` changed, which takes a restart",
            path.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let changes = crate::confdiff::diff(&current, &next);
    if changes.is_empty() {
        println!(
            "dry run: {} holds the config instance {name:?} applies: a reload changes nothing",
            path.display()
        );
    } else {
        println!(
            "dry run: reloading {} would make {} change(s) (nothing applied):",
            path.display(),
            changes.len()
        );
        for change in &changes {
            println!("  {change}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With JSON output, the note that no daemon runs goes to stderr (stdout stays one document).
fn print_offline_note(view: &view::InstanceView) {
    if let Some(note) = &view.offline {
        eprintln!("{note}");
    }
}

/// Tables for the API's answers (`-o table`).
mod tables {
    use std::fmt::Write as _;

    use serde_json::Value;

    fn text(v: &Value) -> String {
        match v {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// The width of an address column: 22, or the widest of `values` (an IPv6 address with
    /// its port takes up to 47 characters), so that the columns after it stay aligned.
    fn width<'a>(values: impl Iterator<Item = &'a Value>) -> usize {
        values
            .map(|v| text(v).chars().count())
            .max()
            .unwrap_or(0)
            .max(22)
    }

    /// `GET /v1/status`: the instance, then every service and backend with health and
    /// counters.
    pub fn status(v: &Value) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "instance {} (pid {}), config {}, generation {}",
            text(&v["instance"]),
            text(&v["pid"]),
            text(&v["config"]),
            text(&v["generation"])
        );
        let empty = Vec::new();
        let services = v["stats"]["services"].as_array().unwrap_or(&empty);
        let aw = width(services.iter().flat_map(|svc| {
            std::iter::once(&svc["address"]).chain(
                svc["backends"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .map(|b| &b["address"]),
            )
        }));
        let _ = writeln!(
            out,
            "{:<24} {:<aw$} {:<7} {:>14} {:>16} {:>10}  LAST CHECK",
            "SERVICE / BACKEND", "ADDRESS", "HEALTH", "PACKETS", "BYTES", "FLOWS"
        );
        let infos = v["services"].as_array().unwrap_or(&empty);
        for svc in services {
            let _ = writeln!(
                out,
                "{:<24} {:<aw$} {:<7} {:>14} {:>16} {:>10}",
                text(&svc["name"]),
                text(&svc["address"]),
                "",
                text(&svc["packets"]),
                text(&svc["bytes"]),
                text(&svc["flows"])
            );
            let info = infos.iter().find(|i| i["name"] == svc["name"]);
            for b in svc["backends"].as_array().unwrap_or(&empty) {
                let detail = info
                    .and_then(|i| i["backends"].as_array())
                    .and_then(|bs| bs.iter().find(|x| x["address"] == b["address"]))
                    .map(|x| x["health_detail"].as_str().unwrap_or_default().to_string())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {:<22} {:<aw$} {:<7} {:>14} {:>16} {:>10}  {detail}",
                    text(&b["name"]),
                    text(&b["address"]),
                    text(&b["health"]),
                    text(&b["packets"]),
                    text(&b["bytes"]),
                    text(&b["flows"])
                );
            }
        }
        let a = &v["announce"];
        if a.is_object() {
            let vips = a["vips"].as_array().map_or(&[][..], Vec::as_slice);
            let _ = writeln!(
                out,
                "announce: table {}, {}, {} of {} VIP(s) announced (`xdplb node status`)",
                text(&a["table"]),
                if a["drained"] == true {
                    "node drained"
                } else {
                    "not drained"
                },
                vips.iter().filter(|x| x["announced"] == true).count(),
                vips.len()
            );
        }
        let f = &v["stats"]["flow_table"];
        let _ = writeln!(
            out,
            "flow table: {} of {} entries; {} inserted, {} evicted",
            text(&f["entries"]),
            text(&f["capacity"]),
            text(&f["inserts"]),
            text(&f["evictions"])
        );
        out
    }

    /// `GET /v1/services`: one line per service.
    pub fn services(v: &Value) -> String {
        let mut out = String::new();
        let services = v.as_array().map(Vec::as_slice).unwrap_or_default();
        let vw = width(services.iter().map(|s| &s["vip"]));
        let _ = writeln!(
            out,
            "{:<16} {:<vw$} {:<5} {:<9} {:<19} {:<8} {:>8}",
            "NAME", "VIP", "PROTO", "MODE", "SCHEDULER", "ALL-DOWN", "BACKENDS"
        );
        for s in services {
            let _ = writeln!(
                out,
                "{:<16} {:<vw$} {:<5} {:<9} {:<19} {:<8} {:>8}",
                text(&s["name"]),
                text(&s["vip"]),
                text(&s["protocol"]),
                text(&s["forwarding"]),
                text(&s["scheduler"]),
                text(&s["when_all_down"]),
                s["backend"].as_array().map_or(0, Vec::len)
            );
        }
        out
    }

    /// `GET /v1/services/NAME/backends`: one line per backend.
    pub fn backends(v: &Value) -> String {
        let mut out = String::new();
        let backends = v.as_array().map(Vec::as_slice).unwrap_or_default();
        let aw = width(backends.iter().map(|b| &b["address"]));
        let _ = writeln!(out, "{:<aw$} {:>6}  DRAIN", "ADDRESS", "WEIGHT");
        for b in backends {
            let _ = writeln!(
                out,
                "{:<aw$} {:>6}  {}",
                text(&b["address"]),
                text(&b["weight"]),
                if b["drain"] == Value::Bool(true) {
                    "drain"
                } else {
                    "-"
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::api::{Plan, Request, plan};

    /// The API tables show bracketed IPv6 addresses whole, the columns after them aligned.
    #[test]
    fn api_tables_show_ipv6_addresses_whole_and_aligned() {
        let long = "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:53";
        let services = serde_json::json!([
            {"name": "v4", "vip": "10.0.0.1:53", "protocol": "udp", "forwarding": "nat",
             "scheduler": "maglev", "when_all_down": "drop", "backend": [{}]},
            {"name": "v6", "vip": long, "protocol": "udp", "forwarding": "nat",
             "scheduler": "maglev", "when_all_down": "drop", "backend": [{}]},
        ]);
        let text = tables::services(&services);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains(long), "{text}");
        let proto = lines[0].find("PROTO").expect("heading");
        assert_eq!(lines[1].find("udp"), Some(proto), "{text}");
        assert_eq!(lines[2].find("udp"), Some(proto), "{text}");
        let backends = serde_json::json!([
            {"address": "10.1.0.1:53", "weight": 1, "drain": false},
            {"address": long, "weight": 2, "drain": true},
        ]);
        let text = tables::backends(&backends);
        let lines: Vec<&str> = text.lines().collect();
        let drain = lines[0].find("DRAIN").expect("heading");
        assert_eq!(lines[1].find('-'), Some(drain), "{text}");
        assert_eq!(lines[2].find("drain"), Some(drain), "{text}");
    }

    /// A service given to `xdplb service add` with every option is, through the API, the
    /// service the same `[[service]]` table in the file gives.
    #[test]
    fn service_add_says_everything_a_service_table_says() {
        let args = [
            "xdplb",
            "service",
            "add",
            "--name",
            "full",
            "--vip",
            "10.9.0.1:53",
            "--protocol",
            "udp",
            "--flow-idle-timeout",
            "45s",
            "--scheduler",
            "maglev",
            "--hash",
            "source-ip-port",
            "--maglev-table-size",
            "1009",
            "--when-all-down",
            "pass",
            "--forwarding",
            "fullnat",
            "--fullnat-source",
            "10.86.0.1",
            "--fullnat-ports",
            "30000-30999",
            "--check",
            "udp",
            "--check-interval",
            "2s",
            "--check-timeout",
            "300ms",
            "--check-rise",
            "3",
            "--check-fall",
            "4",
            "--check-port",
            "5353",
            "--check-payload-hex",
            "abcd01000001",
            "--check-expect-hex",
            "abcd",
            "--check-on-failure",
            "move-flows",
            "--backend",
            "10.0.0.1:53,weight=3",
            "--backend",
            "10.0.0.2:53,drain",
        ];
        let Command::Service {
            action: ServiceAction::Add(spec),
            ..
        } = Cli::try_parse_from(args).expect("parses").command
        else {
            panic!("service add expected")
        };
        let body = service_body(&spec).expect("a body");
        let cfg = config::default_config();
        let req = Request {
            method: "POST".into(),
            path: "/v1/services".into(),
            body: body.to_string().into_bytes(),
        };
        let Ok(Plan::Change { next, .. }) = plan(&req, &cfg) else {
            panic!("a change expected for {body}")
        };
        let file = format!(
            "{}\n{}",
            config::to_toml(&cfg),
            r#"[[service]]
name = "full"
vip = "10.9.0.1:53"
flow_idle_timeout = "45s"
hash = "source-ip-port"
maglev_table_size = 1009
when_all_down = "pass"
forwarding = "fullnat"
fullnat_source = "10.86.0.1"
fullnat_ports = "30000-30999"
[service.health_check]
type = "udp"
interval = "2s"
timeout = "300ms"
rise = 3
fall = 4
port = 5353
payload_hex = "abcd01000001"
expect_hex = "abcd"
on_failure = "move-flows"
[[service.backend]]
address = "10.0.0.1:53"
weight = 3
[[service.backend]]
address = "10.0.0.2:53"
drain = true
"#
        );
        assert_eq!(next, config::parse(&file, "file").expect("the file parses"));
    }

    /// Every subcommand and every argument says what it is in `--help` (clap's own help and
    /// version flags aside): a walk over the whole command tree, naming what lacks it.
    #[test]
    fn every_subcommand_and_argument_has_help() {
        use clap::CommandFactory as _;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() {
                    missing.push(format!("{name} (the subcommand)"));
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "xdplb", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }

    /// `--instance` is one global option: before or after the subcommand (and its action), and
    /// on `run` as before.
    #[test]
    fn instance_is_valid_in_any_position() {
        let cases: &[&[&str]] = &[
            &["xdplb", "--instance", "x", "service", "list"],
            &["xdplb", "service", "--instance", "x", "list"],
            &["xdplb", "service", "list", "--instance", "x"],
            &["xdplb", "backend", "list", "demo", "--instance", "x"],
            &["xdplb", "run", "--instance", "x"],
            &["xdplb", "stats", "--instance", "x"],
            &[
                "xdplb",
                "explain",
                "--instance",
                "x",
                "1.2.3.4:5",
                "6.7.8.9:53",
            ],
            &["xdplb", "--instance", "x", "flows", "--limit", "3"],
        ];
        for args in cases {
            let cli = Cli::try_parse_from(*args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.instance, "x", "{args:?}");
        }
        let cli = Cli::try_parse_from(["xdplb", "status"]).expect("parses");
        assert_eq!(cli.instance, "default");
    }

    /// `-o table|json` on every command that prints state, `--json` kept as its alias.
    #[test]
    fn every_state_command_takes_output_json() {
        let commands: &[&[&str]] = &[
            &["status"],
            &["service", "list"],
            &["backend", "list", "demo"],
            &["stats"],
            &["list"],
            &["flows"],
            &["explain", "1.2.3.4:5", "6.7.8.9:53"],
            &["decap", "--interface", "eth0", "--stats"],
            &["node", "status"],
        ];
        let output = |cli: Cli| -> Output {
            match cli.command {
                Command::Status { output }
                | Command::Stats { output }
                | Command::List { output }
                | Command::Flows { output, .. }
                | Command::Explain { output, .. }
                | Command::Decap { output, .. }
                | Command::Node {
                    action: NodeAction::Status { output },
                }
                | Command::Service {
                    action: ServiceAction::List { output },
                }
                | Command::Backend {
                    action: BackendAction::List { output, .. },
                } => output,
                _ => panic!("not a state command"),
            }
        };
        for cmd in commands {
            for (extra, json) in [
                (&[][..], false),
                (&["-o", "table"][..], false),
                (&["-o", "json"][..], true),
                (&["--output", "json"][..], true),
                (&["--json"][..], true),
            ] {
                let args: Vec<&str> = std::iter::once("xdplb")
                    .chain(cmd.iter().copied())
                    .chain(extra.iter().copied())
                    .collect();
                let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
                assert_eq!(output(cli).is_json(), json, "{args:?}");
            }
        }
        assert!(Cli::try_parse_from(["xdplb", "stats", "-o", "yaml"]).is_err());
    }

    #[test]
    fn backend_specs() {
        let cases: &[(&str, Result<serde_json::Value, &str>)] = &[
            (
                "10.0.0.1:53",
                Ok(serde_json::json!({"address": "10.0.0.1:53"})),
            ),
            (
                "10.0.0.1:53,weight=3,drain",
                Ok(serde_json::json!({"address": "10.0.0.1:53", "weight": 3, "drain": true})),
            ),
            (
                "10.0.0.1:53,drain=false",
                Ok(serde_json::json!({"address": "10.0.0.1:53", "drain": false})),
            ),
            ("10.0.0.1:53,weight=x", Err("is not a number")),
            ("10.0.0.1:53,colour=red", Err("is not weight=N or drain")),
        ];
        for (spec, expected) in cases {
            match (backend_body(spec), expected) {
                (Ok(v), Ok(e)) => assert_eq!(&v, e, "{spec}"),
                (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{spec}: {e}"),
                (got, _) => panic!("{spec}: {got:?}"),
            }
        }
    }
}
