//! `xdplb node drain|undrain|status`: the node's VIP announcements through the daemon's API
//! (`/v1/node`; see `crate::announce`).

use std::{
    fmt::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{NodeAction, Output};

/// How often `drain` reads the packet counters while it waits.
const POLL: Duration = Duration::from_millis(50);

pub(super) fn run(instance: &str, action: NodeAction) -> anyhow::Result<ExitCode> {
    match action {
        NodeAction::Status { output } => status(instance, output),
        NodeAction::Drain {
            no_wait,
            timeout,
            quiet,
        } => drain(instance, no_wait, timeout, quiet),
        NodeAction::Undrain => undrain(instance),
    }
}

/// Calls the API; an error status is an error with the daemon's message.
fn call(instance: &str, method: &str, path: &str) -> anyhow::Result<Value> {
    let (status, value) = crate::api::call(instance, method, path, None)?;
    if status != 200 {
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_string);
        bail!("{method} {path}: {status}: {msg}");
    }
    Ok(value)
}

fn vips(v: &Value) -> &[Value] {
    v["vips"].as_array().map_or(&[], Vec::as_slice)
}

fn route(v: &Value) -> String {
    format!("{}/32", v["vip"].as_str().unwrap_or("?"))
}

/// The answer of a drain or undrain must say the kernel table matches it.
fn confirmed(answer: &Value, what: &str) -> anyhow::Result<()> {
    if answer["in_table"] == Value::Bool(true) {
        return Ok(());
    }
    bail!(
        "{what}: the daemon changed its config but the kernel table does not match yet: {}",
        answer["error"]
            .as_str()
            .unwrap_or("routes differ from the plan")
    )
}

fn status(instance: &str, output: Output) -> anyhow::Result<ExitCode> {
    let v = call(instance, "GET", "/v1/node")?;
    if output.is_json() {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(ExitCode::SUCCESS)
}

/// `node status` as a table.
fn render(v: &Value) -> String {
    if v["configured"] != Value::Bool(true) {
        return "this node announces nothing: its config has no [announce] section\n".to_owned();
    }
    let announced = vips(v).iter().filter(|x| x["announced"] == true).count();
    let mut out = format!(
        "node {}, table {}: {announced} of {} VIP(s) announced{}\n",
        if v["drained"] == true {
            "drained"
        } else {
            "not drained"
        },
        v["table"],
        vips(v).len(),
        match v["in_table"].as_bool() {
            Some(true) => String::new(),
            _ => format!(
                " (the kernel table does not match: {})",
                v["error"].as_str().unwrap_or("unknown")
            ),
        }
    );
    let _ = writeln!(
        out,
        "{:<20} {:<9} {:<24} REASON",
        "VIP", "ANNOUNCED", "SERVICES"
    );
    for x in vips(v) {
        let services: Vec<&str> = x["services"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:<24} {}",
            route(x),
            if x["announced"] == true { "yes" } else { "no" },
            services.join(","),
            x["reason"].as_str().unwrap_or_default()
        );
    }
    for s in v["skipped"].as_array().map_or(&[][..], Vec::as_slice) {
        let _ = writeln!(out, "{}", s.as_str().unwrap_or_default());
    }
    out
}

/// Packets that reached the services `names` so far (the daemon's per-service counters).
fn packets(instance: &str, names: &[String]) -> anyhow::Result<u64> {
    let v = call(instance, "GET", "/v1/status")?;
    Ok(v["stats"]["services"]
        .as_array()
        .context("the daemon's status has no per-service counters")?
        .iter()
        .filter(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| names.iter().any(|m| m == n))
        })
        .filter_map(|s| s["packets"].as_u64())
        .sum())
}

fn drain(
    instance: &str,
    no_wait: bool,
    timeout: Duration,
    quiet: Duration,
) -> anyhow::Result<ExitCode> {
    let before = call(instance, "GET", "/v1/node")?;
    if before["configured"] != Value::Bool(true) {
        bail!("this node announces nothing: its config has no [announce] section");
    }
    let table = before["table"].clone();
    let was: Vec<String> = vips(&before)
        .iter()
        .filter(|x| x["announced"] == true)
        .map(route)
        .collect();
    // Only the traffic the withdrawn routes attracted: the services on the announced VIPs
    // (a wildcard VIP's or an unannounced one's traffic does not stop with a drain).
    let services: Vec<String> = vips(&before)
        .iter()
        .filter(|x| x["announced"] == true)
        .flat_map(|x| x["services"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    let start_packets = if no_wait {
        0
    } else {
        packets(instance, &services)?
    };
    let answer = call(instance, "POST", "/v1/node/drain")?;
    let withdrawn_at = Instant::now();
    confirmed(&answer, "drain")?;
    let withdrew = if was.is_empty() {
        format!("nothing was announced in table {table}")
    } else {
        format!("withdrew {} from table {table}", was.join(", "))
    };
    if no_wait {
        println!("drained: {withdrew}");
        return Ok(ExitCode::SUCCESS);
    }
    // The traffic reaching the node stops once the routers have withdrawn the routes: wait
    // for `quiet` without a packet.
    let mut last = start_packets;
    let mut last_change = withdrawn_at;
    // (when, total) over the last second, for the rate on timeout.
    let mut window: std::collections::VecDeque<(Instant, u64)> = Default::default();
    loop {
        std::thread::sleep(POLL);
        let now_packets = packets(instance, &services)?;
        let now = Instant::now();
        if now_packets != last {
            last = now_packets;
            last_change = now;
        }
        window.push_back((now, now_packets));
        while window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
        {
            window.pop_front();
        }
        if now.duration_since(last_change) >= quiet {
            println!(
                "drained: {withdrew}; traffic stopped {:.1} s after the withdrawal ({} packets arrived meanwhile)",
                last_change.duration_since(withdrawn_at).as_secs_f64(),
                last.saturating_sub(start_packets)
            );
            return Ok(ExitCode::SUCCESS);
        }
        if now.duration_since(withdrawn_at) >= timeout {
            let rate = match (window.front(), window.back()) {
                (Some((t0, p0)), Some((t1, p1))) if t1 > t0 => {
                    p1.saturating_sub(*p0) as f64 / t1.duration_since(*t0).as_secs_f64()
                }
                _ => 0.0,
            };
            eprintln!(
                "xdplb: drained ({withdrew}), but traffic still arrives after {}: {rate:.0} packets/s now ({} packets since the withdrawal); the node stays drained and keeps forwarding",
                humantime::format_duration(timeout),
                last.saturating_sub(start_packets)
            );
            return Ok(ExitCode::FAILURE);
        }
    }
}

fn undrain(instance: &str) -> anyhow::Result<ExitCode> {
    let answer = call(instance, "POST", "/v1/node/undrain")?;
    confirmed(&answer, "undrain")?;
    let table = &answer["table"];
    let announced: Vec<String> = vips(&answer)
        .iter()
        .filter(|x| x["announced"] == true)
        .map(route)
        .collect();
    let not: Vec<String> = vips(&answer)
        .iter()
        .filter(|x| x["announced"] != true)
        .map(|x| {
            format!(
                "{} ({})",
                route(x),
                x["reason"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let mut line = if announced.is_empty() {
        format!("undrained: nothing qualifies for table {table}")
    } else {
        format!(
            "undrained: announced {} in table {table}",
            announced.join(", ")
        )
    };
    if !not.is_empty() {
        let _ = write!(line, "; not announced: {}", not.join("; "));
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
