//! The commands behind `xdplb`'s command line; `main.rs` only parses and dispatches.

mod args;
mod docs;

use std::{
    collections::BTreeSet,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub use args::{BackendAction, Cli, Command, ServiceAction};

use crate::{bench, config, daemon, demo, explain, instance, stats};

/// Calls the API and prints the answer; an error status prints the error and fails.
fn api_command(
    instance: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    let (status, value) = crate::api::call(instance, method, path, body)?;
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

pub fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            instance,
            replace,
            cleanup,
        } => daemon::run(&daemon::RunOptions {
            config,
            instance,
            replace,
            cleanup,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Stop { instance } => stop(&instance),
        Command::Decap {
            interface,
            xdp_mode,
            remove,
            stats,
        } => decap(&interface, xdp_mode, remove, stats),
        Command::Check { config } => {
            let cfg = daemon::load_config(&config)?;
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
        Command::GenerateDocs { dir } => {
            for path in docs::generate(&dir)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { instance } => api_command(&instance, "GET", "/v1/status", None),
        Command::Service { instance, action } => match action {
            ServiceAction::List => api_command(&instance, "GET", "/v1/services", None),
            ServiceAction::Add(spec) => {
                let body = service_body(&spec)?;
                api_command(&instance, "POST", "/v1/services", Some(&body))
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
        Command::Top { instance } => crate::top::run(&instance).map(|()| ExitCode::SUCCESS),
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
                let report = demo::new_flows::flood_new_flows(
                    &target,
                    flows,
                    source_net,
                    rate,
                    payload_bytes,
                )?;
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
            let opts = bench::MatrixOptions {
                modes,
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
) -> anyhow::Result<ExitCode> {
    use crate::decap;
    if stats {
        let (done, left, failed) = decap::stats(interface)?;
        println!("{interface}: decapsulated {done}, left to the kernel {left}, failed {failed}");
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::api::{Plan, Request, plan};

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
