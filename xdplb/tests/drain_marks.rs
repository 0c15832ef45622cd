//! Tier 3: the operator's `drain` reaches what `xdplb stats` and `xdplb top` read (the state
//! file the daemon publishes), at start and after a reload. Needs root; runs in a namespace of
//! its own.

use std::time::Duration;

use serde_json::Value;
use xdplb_test_support::{netns::*, require_root};

const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");

fn config(drain: bool) -> String {
    format!(
        "interfaces = [\"lo\"]\nxdp_mode = \"generic\"\n[[service]]\nname = \"demo\"\n\
         vip = \"127.0.0.1:9875\"\n[[service.backend]]\naddress = \"127.0.0.1:9876\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9877\"\ndrain = {drain}\n"
    )
}

/// `xdplb stats` as text and as JSON.
fn stats(ns: &Netns, env: &str) -> (String, Value) {
    let base = ["env", env, XDPLB, "stats", "--instance", "drain"];
    let text = ns.exec(&base);
    let json = ns.exec(&[&base[..], &["--json"]].concat());
    (
        String::from_utf8_lossy(&text.stdout).into_owned(),
        serde_json::from_slice(&json.stdout).expect("stats prints JSON"),
    )
}

/// The `drain` of each backend of the first service, as `stats --json` shows it.
fn drains(json: &Value) -> Vec<bool> {
    json["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["drain"].as_bool().unwrap_or(false))
        .collect()
}

/// Removes a directory when dropped, also when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_drained_backend_is_marked_in_stats_at_start_and_after_a_reload() {
    require_root();
    let ns = Netns::new("drain");
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(format!("xdplb-test-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _remove = RemoveOnDrop(dir.clone());
    let cfg = dir.join("drain.toml").display().to_string();
    std::fs::write(&cfg, config(true)).unwrap();
    let env = format!("XDPLB_RUN_DIR={}", dir.display());
    let mut args = ns.prefix();
    args.extend(
        [
            "env",
            &env,
            XDPLB,
            "run",
            "--cleanup",
            "--config",
            &cfg,
            "--instance",
            "drain",
        ]
        .map(String::from),
    );
    let mut lb = Daemon::spawn(&args);
    lb.wait_for("running instance", Duration::from_secs(20));

    let (text, json) = stats(&ns, &env);
    assert_eq!(drains(&json), [false, true], "{json}");
    let marked: Vec<&str> = text.lines().filter(|l| l.ends_with(" drain")).collect();
    assert!(
        marked.len() == 1 && marked[0].contains("127.0.0.1:9877"),
        "{text}"
    );

    std::fs::write(&cfg, config(false)).unwrap();
    ns.exec(&["env", &env, XDPLB, "reload", "--instance", "drain"]);
    let (text, json) = stats(&ns, &env);
    assert_eq!(
        drains(&json),
        [false, false],
        "undrained by the reload: {json}"
    );
    assert!(!text.lines().any(|l| l.ends_with(" drain")), "{text}");

    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}
