//! `xdplb bench` runs: a quick matrix (three modes, both families, the smallest table, few
//! iterations) whose figures are not checked, only that it measured what it says: a full
//! table, the forwarding path of the remote modes (not their drop path), and its namespace
//! gone afterwards.

use std::time::Duration;

use xdplb_test_support::{netns::run_bounded, require_root};

const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");

#[test]
fn bench_matrix_smoke() {
    require_root();
    let out = run_bounded(
        &[
            XDPLB,
            "bench",
            "--matrix-only",
            "--modes",
            "local,nat,dsr-l2",
            "--tables",
            "2048",
            "--repeat",
            "2000",
            "--new-flow-repeat",
            "2000",
            "--rounds",
            "5",
            "--json",
        ],
        Duration::from_mins(4),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xdplb bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench --json printed no JSON ({e}): {stderr}"));
    let m = &v["matrix"];
    let runs = m["runs"].as_array().expect("matrix.runs");
    // One run per mode and family, and dsr-l2 also with flow_state = second-packet. A full
    // table says that the family's packets created flows (an IPv6 frame that the data plane
    // did not balance would pass too, but create none).
    assert_eq!(runs.len(), 8, "runs: {m}");
    let expected = [
        ("local", "IPv4", "default"),
        ("local", "IPv6", "default"),
        ("nat", "IPv4", "default"),
        ("nat", "IPv6", "default"),
        ("dsr-l2", "IPv4", "default"),
        ("dsr-l2", "IPv4", "flow_state = second-packet"),
        ("dsr-l2", "IPv6", "default"),
        ("dsr-l2", "IPv6", "flow_state = second-packet"),
    ];
    for (run, (mode, family, variant)) in runs.iter().zip(expected) {
        assert_eq!(run["mode"], mode);
        assert_eq!(run["family"], family);
        assert_eq!(run["variant"], variant);
        assert_eq!(run["flows_per_cpu"], 2048);
        assert_eq!(
            run["prefill"]["full"], true,
            "prefilled table not full: {run}"
        );
        assert!(
            run["prefill"]["evicted"].as_u64().unwrap_or(0) > 0,
            "nothing evicted: {run}"
        );
        let action = |case: &str| {
            let c = run["cases"]
                .as_array()
                .expect("cases")
                .iter()
                .find(|c| c["case"] == case)
                .unwrap_or_else(|| panic!("case {case:?} missing: {run}"));
            assert!(
                c["net_ns"]["min"].as_f64().is_some() && c["net_ns"]["max"].as_f64().is_some(),
                "no spread: {c}"
            );
            c["action_name"].as_str().expect("action_name").to_string()
        };
        let forwarded = if mode == "local" {
            vec!["PASS"]
        } else {
            vec!["TX", "REDIRECT"]
        };
        for case in [
            "existing flow",
            "new flow, first packet",
            "new flow, second packet",
        ] {
            let a = action(case);
            assert!(
                forwarded.contains(&a.as_str()),
                "{mode} {case}: action {a}, expected one of {forwarded:?}"
            );
        }
        for case in ["no service (other address)", "no service (VIP, other port)"] {
            assert_eq!(action(case), "PASS", "{mode} {case}");
        }
    }
    // The namespace the bench made is gone.
    let ns = m["namespace"].as_str().expect("matrix.namespace");
    assert!(ns.starts_with("xdplb-bench-"), "namespace {ns:?}");
    assert!(
        !std::path::Path::new("/run/netns").join(ns).exists(),
        "the bench left its namespace {ns} behind"
    );
}
