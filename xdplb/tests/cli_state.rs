//! The reading commands against a real daemon in a network namespace: `list`, `flows`,
//! `explain` from the running instance, `reload --dry-run` and what a reload changed, and
//! `stats`/`list`/`flows` from the pinned data plane once the daemon is gone.
//! Needs root; run with the README test command. Traffic stays on the namespace's lo.

use std::time::{Duration, Instant};

use serde_json::Value;
use xdplb_test_support::{netns::*, require_root};

/// The `xdplb` binary under test.
const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");

/// `xdplb stop` on drop, so that a failing test leaves no pinned data plane behind.
struct StopOnDrop<'a> {
    ns: &'a Netns,
    env: Vec<String>,
    instance: String,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let mut args: Vec<&str> = vec!["env"];
        args.extend(self.env.iter().map(String::as_str));
        args.extend([XDPLB, "stop", "--instance", &self.instance]);
        let _ = self.ns.exec_unchecked(&args);
    }
}

/// Runs `xdplb ARGS` in `ns` with `env`; returns (success, stdout, stderr).
fn cli(ns: &Netns, env: &[String], args: &[&str]) -> (bool, String, String) {
    let mut full: Vec<&str> = vec!["env"];
    full.extend(env.iter().map(String::as_str));
    full.push(XDPLB);
    full.extend_from_slice(args);
    let out = ns.exec_unchecked(&full);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `xdplb ARGS -o json` in `ns`, which must succeed; its JSON.
fn json(ns: &Netns, env: &[String], args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let (ok, out, err) = cli(ns, env, &full);
    assert!(ok, "xdplb {args:?} failed: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("xdplb {args:?}: not JSON ({e}): {out}"))
}

fn backend<'a>(listing: &'a Value, service: &str, address: &str) -> &'a Value {
    listing["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == service)
        .and_then(|s| {
            s["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .find(|b| b["address"] == address)
        })
        .unwrap_or_else(|| panic!("no backend {address} of {service} in {listing}"))
}

/// The line of a table that mentions `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

#[test]
fn list_flows_explain_reload_and_reading_without_a_daemon() {
    require_root();
    let ns = Netns::new("clist");
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("xdplb-test-clist-{pid}"));
    std::fs::create_dir_all(&dir).expect("run dir");
    let dir = dir.display().to_string();
    // A bpffs every `ip netns exec` sees, so that the pinned data plane outlives the daemon.
    let bpffs = Bpffs::mount("clist");
    let env = vec![
        format!("XDPLB_RUN_DIR={dir}"),
        format!("XDPLB_BPFFS={}", bpffs.path),
    ];
    let instance = format!("t-clist-{pid}");
    let cfg_path = format!("{dir}/clist.toml");
    let config = "interfaces = [\"lo\"]\n\
        [[service]]\nname = \"dns\"\nvip = \"127.0.0.1:9875\"\nscheduler = \"round-robin\"\n\
        [service.health_check]\ntype = \"udp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n\
        [[service.backend]]\naddress = \"127.0.0.1:9876\"\n\
        [[service.backend]]\naddress = \"127.0.0.1:9877\"\n\
        [[service.backend]]\naddress = \"127.0.0.1:9878\"\ndrain = true\n\
        [[service.backend]]\naddress = \"127.0.0.1:9879\"\n\
        [[service]]\nname = \"other\"\nvip = \"127.0.0.1:9885\"\n\
        [[service.backend]]\naddress = \"127.0.0.1:9880\"\n";
    std::fs::write(&cfg_path, config).expect("write config");
    let mut backends = Daemon::spawn(&[
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        ns.name.clone(),
        XDPLB.into(),
        "demo-backend".into(),
        "--listen".into(),
        "127.0.0.1:9876,127.0.0.1:9877,127.0.0.1:9878".into(),
    ]);
    backends.wait_for("listening", Duration::from_secs(20));
    // No --cleanup: a SIGTERM leaves the pinned data plane forwarding.
    let mut run: Vec<String> = ["ip", "netns", "exec", &ns.name, "env"]
        .iter()
        .map(ToString::to_string)
        .collect();
    run.extend(env.iter().cloned());
    run.extend(
        [XDPLB, "run", "--config", &cfg_path, "--instance", &instance]
            .iter()
            .map(ToString::to_string),
    );
    let mut lb = Daemon::spawn(&run);
    let _stop = StopOnDrop {
        ns: &ns,
        env: env.clone(),
        instance: instance.clone(),
    };
    lb.wait_for("running instance", Duration::from_secs(20));

    // The health checks settle: 9879 has no server.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = json(&ns, &env, &["list", "--instance", &instance]);
        if backend(&l, "dns", "127.0.0.1:9879")["health"] == "down"
            && backend(&l, "dns", "127.0.0.1:9876")["health"] == "up"
            && backend(&l, "dns", "127.0.0.1:9877")["health"] == "up"
        {
            break;
        }
        assert!(Instant::now() < deadline, "health did not settle: {l}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // On one CPU, so that the per-CPU round robin is one sequence: 15 flows each.
    let out = ns.exec(&[
        "taskset",
        "-c",
        "0",
        XDPLB,
        "demo-client",
        "--target",
        "127.0.0.1:9875",
        "--flows",
        "30",
        "--packets",
        "3",
        "--timeout-ms",
        "2000",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    assert_eq!(report["replies"], 90, "every datagram answered: {report}");

    // `list`, table: the service with its mode, scheduler and policy; every backend marked.
    let (ok, table, err) = cli(&ns, &env, &["--instance", &instance, "list"]);
    assert!(ok, "{table}{err}");
    println!("{table}");
    let svc = line_with(&table, "127.0.0.1:9875");
    for word in ["dns", "udp", "local", "round-robin", "drop", "90"] {
        assert!(
            svc.contains(word),
            "{word:?} missing from {svc:?}:\n{table}"
        );
    }
    assert!(table.contains("udp check"), "{table}");
    assert!(
        line_with(&table, "-> 127.0.0.1:9878").contains(" drain "),
        "{table}"
    );
    assert!(
        line_with(&table, "-> 127.0.0.1:9879").contains(" down"),
        "{table}"
    );
    let up = line_with(&table, "-> 127.0.0.1:9876");
    assert!(
        up.contains(" up ") && up.contains(" 45 "),
        "15 flows x 3 packets: {up}"
    );
    assert!(
        line_with(&table, "127.0.0.1:9885").contains("maglev"),
        "{table}"
    );
    // `list -o json`: the same, with the counters and the live flows per backend.
    let l = json(&ns, &env, &["list", "--instance", &instance]);
    assert_eq!(l["daemon_running"], true, "{l}");
    let dns = &l["services"][0];
    assert_eq!(
        (&dns["forwarding"], &dns["scheduler"], &dns["when_all_down"]),
        (
            &Value::from("local"),
            &Value::from("round-robin"),
            &Value::from("drop")
        ),
        "{l}"
    );
    assert_eq!(dns["packets"], 90, "{l}");
    // The table fingerprint: 16 hex digits, in the JSON and on the service's line.
    let fingerprint = dns["table_fingerprint"].as_str().unwrap_or_default();
    assert!(
        fingerprint.len() == 16 && fingerprint.chars().all(|c| c.is_ascii_hexdigit()),
        "{l}"
    );
    assert!(svc.contains(&format!("table {fingerprint}")), "{svc}");
    assert_eq!(dns["active_flows"], 30, "{l}");
    let drained = backend(&l, "dns", "127.0.0.1:9878");
    assert_eq!(
        (&drained["drain"], &drained["state"]),
        (&Value::from(true), &Value::from("drain")),
        "{l}"
    );
    assert_eq!(
        drained["packets"], 0,
        "a drained backend gets no new flow: {l}"
    );
    for addr in ["127.0.0.1:9876", "127.0.0.1:9877"] {
        let b = backend(&l, "dns", addr);
        assert_eq!(
            (&b["packets"], &b["flows"], &b["active_flows"]),
            (&Value::from(45), &Value::from(15), &Value::from(15)),
            "{addr}: {l}"
        );
    }

    // The API's views as tables (JSON with -o json).
    let (ok, table, err) = cli(&ns, &env, &["status", "--instance", &instance]);
    assert!(ok && table.contains("generation"), "{table}{err}");
    assert!(
        line_with(&table, "127.0.0.1:9879").contains("down"),
        "{table}"
    );
    let (ok, table, err) = cli(&ns, &env, &["service", "list", "--instance", &instance]);
    assert!(ok, "{table}{err}");
    let dns_line = line_with(&table, "127.0.0.1:9875");
    assert!(
        dns_line.contains("round-robin") && dns_line.trim_end().ends_with(" 4"),
        "{table}"
    );
    let (ok, table, err) = cli(
        &ns,
        &env,
        &["--instance", &instance, "backend", "list", "dns"],
    );
    assert!(ok, "{table}{err}");
    assert!(
        line_with(&table, "127.0.0.1:9878").contains("drain"),
        "{table}"
    );
    assert!(
        !line_with(&table, "127.0.0.1:9876").contains("drain"),
        "{table}"
    );
    let services = json(&ns, &env, &["service", "list", "--instance", &instance]);
    assert_eq!(services[0]["name"], "dns", "{services}");

    // `flows`: every flow with its client, VIP and backend; the filters and the limit.
    let f = json(
        &ns,
        &env,
        &["flows", "--instance", &instance, "--limit", "1000"],
    );
    assert_eq!(f["matched"], 30, "{f}");
    assert!(
        f["read"].to_string().contains("batched"),
        "read with batched lookups: {f}"
    );
    for flow in f["flows"].as_array().expect("flows") {
        assert!(
            flow["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{flow}"
        );
        assert_eq!(flow["vip"], "127.0.0.1:9875", "{flow}");
        assert_eq!(flow["service"], "dns", "{flow}");
        assert!(
            flow["backend"] == "127.0.0.1:9876" || flow["backend"] == "127.0.0.1:9877",
            "{flow}"
        );
        assert!(
            flow["idle_ms"].as_u64().is_some_and(|ms| ms < 30_000),
            "{flow}"
        );
    }
    let one = json(
        &ns,
        &env,
        &[
            "flows",
            "--instance",
            &instance,
            "--backend",
            "127.0.0.1:9876",
        ],
    );
    assert_eq!(one["matched"], 15, "{one}");
    assert!(
        one["flows"]
            .as_array()
            .expect("flows")
            .iter()
            .all(|f| f["backend"] == "127.0.0.1:9876"),
        "{one}"
    );
    let capped = json(
        &ns,
        &env,
        &["flows", "--instance", &instance, "--limit", "5"],
    );
    assert_eq!(
        (
            capped["matched"].as_u64(),
            capped["flows"].as_array().map(Vec::len)
        ),
        (Some(30), Some(5)),
        "{capped}"
    );
    let other = json(
        &ns,
        &env,
        &["flows", "--instance", &instance, "--service", "other"],
    );
    assert_eq!(other["matched"], 0, "{other}");
    let (ok, _, err) = cli(
        &ns,
        &env,
        &["flows", "--instance", &instance, "--service", "nosuch"],
    );
    assert!(!ok && err.contains("no such service"), "{err}");
    let (ok, table, err) = cli(
        &ns,
        &env,
        &["flows", "--instance", &instance, "--limit", "3"],
    );
    assert!(
        ok && table.contains("CLIENT") && table.contains("127.0.0.1:9875"),
        "{table}{err}"
    );
    println!("$ xdplb flows --limit 3\n{table}");

    // `explain` takes the running instance's config (127.0.0.1:9885 is not the tutorial's).
    let (ok, out, err) = cli(
        &ns,
        &env,
        &[
            "--instance",
            &instance,
            "explain",
            "127.0.0.1:5555",
            "127.0.0.1:9885",
        ],
    );
    assert!(
        ok && out.contains("service   other") && out.contains("maglev"),
        "{out}{err}"
    );
    let (ok, out, err) = cli(
        &ns,
        &env,
        &[
            "explain",
            "--instance",
            "nosuch",
            "127.0.0.1:5555",
            "127.0.0.1:9875",
        ],
    );
    assert!(
        !ok && err.contains("no running instance \"nosuch\"") && err.contains("--config"),
        "{out}{err}"
    );
    assert!(
        !out.contains("service "),
        "nothing explained from a config nobody runs: {out}"
    );

    // `reload --dry-run` says what would change and applies nothing; a reload applies it and
    // says the same.
    let changed = config
        .replace(
            "address = \"127.0.0.1:9877\"\n",
            "address = \"127.0.0.1:9877\"\nweight = 3\n",
        )
        .replace(
            "name = \"other\"\nvip = \"127.0.0.1:9885\"\n",
            "name = \"other\"\nvip = \"127.0.0.1:9885\"\nwhen_all_down = \"pass\"\n",
        );
    std::fs::write(&cfg_path, &changed).expect("write config");
    let expected = [
        "service \"dns\": backend 127.0.0.1:9877: weight: 1 -> 3",
        "service \"other\": when_all_down: drop -> pass",
    ];
    let (ok, dry, err) = cli(&ns, &env, &["reload", "--dry-run", "--instance", &instance]);
    assert!(ok, "{dry}{err}");
    println!("$ xdplb reload --dry-run\n{dry}");
    for e in expected {
        assert!(dry.contains(e), "dry run lacks {e:?}:\n{dry}");
    }
    let l = json(&ns, &env, &["list", "--instance", &instance]);
    assert_eq!(
        backend(&l, "dns", "127.0.0.1:9877")["weight"],
        1,
        "a dry run applies nothing: {l}"
    );
    let (ok, real, err) = cli(&ns, &env, &["--instance", &instance, "reload"]);
    assert!(ok && real.contains("2 changes"), "{real}{err}");
    println!("$ xdplb reload\n{real}");
    for e in expected {
        assert!(real.contains(e), "the reload lacks {e:?}:\n{real}");
    }
    let l = json(&ns, &env, &["list", "--instance", &instance]);
    assert_eq!(
        backend(&l, "dns", "127.0.0.1:9877")["weight"],
        3,
        "applied: {l}"
    );
    let (ok, dry, err) = cli(&ns, &env, &["reload", "--dry-run", "--instance", &instance]);
    assert!(ok && dry.contains("changes nothing"), "{dry}{err}");
    // A config the daemon would reject: both modes fail, and nothing changes.
    std::fs::write(&cfg_path, changed.replace("weight = 3", "weight = 0")).expect("write config");
    let (ok, dry, err) = cli(&ns, &env, &["reload", "--dry-run", "--instance", &instance]);
    assert!(!ok && err.contains("weight"), "{dry}{err}");
    let (ok, real, err) = cli(&ns, &env, &["reload", "--instance", &instance]);
    assert!(!ok && err.contains("rejected"), "{real}{err}");
    std::fs::write(&cfg_path, format!("debug_log = true\n{changed}")).expect("write config");
    let (ok, _, err) = cli(&ns, &env, &["reload", "--dry-run", "--instance", &instance]);
    assert!(
        !ok && err.contains("`debug_log` changed, which takes a restart"),
        "{err}"
    );
    std::fs::write(&cfg_path, &changed).expect("write config");

    // The fingerprint of the table the daemon runs now, which the pinned data plane must give
    // the same without it.
    let live = json(&ns, &env, &["list", "--instance", &instance]);
    let live_fingerprint = live["services"][0]["table_fingerprint"].clone();
    assert!(live_fingerprint.is_string(), "{live}");
    // The daemon stops (SIGTERM, no --cleanup): the pinned data plane keeps its state, and the
    // reading commands read it, saying that no daemon runs.
    let status = lb.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit 0 on SIGTERM: {}",
        lb.seen.join("\n")
    );
    let (ok, table, err) = cli(&ns, &env, &["list", "--instance", &instance]);
    assert!(ok, "{table}{err}");
    println!("{table}");
    assert!(table.starts_with("daemon not running ("), "{table}");
    assert!(table.contains("reading the pinned data plane"), "{table}");
    assert!(
        line_with(&table, "127.0.0.1:9875").contains("round-robin"),
        "{table}"
    );
    assert!(
        line_with(&table, "-> 127.0.0.1:9878").contains("drain"),
        "{table}"
    );
    let l = json(&ns, &env, &["list", "--instance", &instance]);
    assert_eq!(l["daemon_running"], false, "{l}");
    assert_eq!(l["services"][0]["packets"], 90, "{l}");
    assert_eq!(
        l["services"][0]["table_fingerprint"], live_fingerprint,
        "the same table with or without the daemon: {l}"
    );
    assert_eq!(backend(&l, "dns", "127.0.0.1:9877")["weight"], 3, "{l}");
    let (ok, table, err) = cli(&ns, &env, &["stats", "--instance", &instance]);
    assert!(
        ok && table.starts_with("daemon not running ("),
        "{table}{err}"
    );
    let st = json(&ns, &env, &["stats", "--instance", &instance]);
    assert_eq!(
        (&st["daemon_running"], &st["services"][0]["packets"]),
        (&Value::from(false), &Value::from(90)),
        "{st}"
    );
    let (ok, table, err) = cli(&ns, &env, &["flows", "--instance", &instance]);
    assert!(
        ok && table.starts_with("daemon not running ("),
        "{table}{err}"
    );
    let f = json(&ns, &env, &["flows", "--instance", &instance]);
    assert_eq!(
        (&f["daemon_running"], &f["matched"]),
        (&Value::from(false), &Value::from(30)),
        "{f}"
    );
    // From a mount namespace where the pins cannot be seen (as under another `ip netns exec`
    // without the shared bpffs): the maps are found through the programs that use them.
    let mut hidden: Vec<String> = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "umount -l \"$0\" && test ! -e \"$0/xdplb\" && exec \"$@\"",
        &bpffs.path,
        "env",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    hidden.extend(env.iter().cloned());
    hidden.extend(
        [XDPLB, "stats", "--instance", &instance, "-o", "json"]
            .iter()
            .map(ToString::to_string),
    );
    let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
    let out = ns.exec_unchecked(&hidden);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_str(&text).expect("stats JSON");
    assert_eq!(st["services"][0]["packets"], 90, "{st}");

    // `xdplb stop` removes it all; then there is nothing to read.
    let (ok, out, err) = cli(&ns, &env, &["stop", "--instance", &instance]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&ns, &env, &["stats", "--instance", &instance]);
    assert!(!ok && err.contains("no pinned data plane"), "{out}{err}");
}
