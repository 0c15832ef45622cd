//! `examples/monitoring/`: the Prometheus alert rules pass `promtool check rules` and their unit
//! tests (`promtool test rules`, a firing and a quiet case for each alert), the example scrape
//! config passes `promtool check config`, and the Grafana dashboard is importable JSON whose
//! queries are valid PromQL naming only metrics and labels the daemon exports. Tier 1 (no root):
//! needs `promtool` (Debian `prometheus`, installed by scripts/setup.sh).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use xdplb_test_support::prometheus::FAMILIES;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/monitoring")
}

fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `promtool ARGS` and returns its output; fails the test with it if promtool fails.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool (Debian package prometheus; scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn path_of(name: &str) -> String {
    dir().join(name).to_string_lossy().into_owned()
}

/// The sample names the daemon exports (a counter family's samples end in `_total`), with the
/// labels each carries besides the target labels Prometheus adds. `FAMILIES` is checked against
/// a real scrape parsed by Prometheus's reference client in `tests/metrics_scrape.rs`.
fn exported() -> BTreeMap<String, &'static [&'static str]> {
    FAMILIES
        .iter()
        .map(|(family, kind)| {
            let labels: &[&str] = match *family {
                "xdplb_service_table_info" => &["service", "fingerprint"],
                f if f.starts_with("xdplb_service_") => &["service", "vip"],
                f if f.starts_with("xdplb_backend_") => &["service", "backend"],
                "xdplb_packets" => &["verdict", "reason"],
                "xdplb_events" => &["event"],
                f if f.starts_with("xdplb_veth_") => &["interface"],
                "xdplb_build_info" => &["version", "commit"],
                "xdplb_vip_announced" => &["vip"],
                _ => &[],
            };
            let name = if *kind == "counter" {
                format!("{family}_total")
            } else {
                family.to_string()
            };
            (name, labels)
        })
        .collect()
}

/// Labels Prometheus adds to every series of a target (and `up`'s only ones).
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Every `xdplb_*` metric name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("xdplb_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The label names a selector `NAME{...}` matches on, for each selector of `name` in `expr`.
fn selector_labels(expr: &str, name: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for (at, _) in expr.match_indices(name) {
        let after = &expr[at + name.len()..];
        let Some(inner) = after.strip_prefix('{') else {
            continue;
        };
        let inner = &inner[..inner.find('}').expect("selector closed")];
        for matcher in inner.split(',') {
            let label = matcher.split(['=', '!']).next().unwrap_or_default().trim();
            if !label.is_empty() {
                labels.push(label.to_string());
            }
        }
    }
    labels
}

/// The labels of every `by (...)` clause in `expr`.
fn grouping_labels(expr: &str) -> Vec<String> {
    expr.match_indices("by (")
        .flat_map(|(at, m)| {
            let inner = &expr[at + m.len()..];
            inner[..inner.find(')').expect("by clause closed")]
                .split(',')
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Checks that `expr` names only exported metrics, and only labels those metrics carry; returns
/// the metric names it uses.
fn check_names_and_labels(what: &str, expr: &str) -> BTreeSet<String> {
    let exported = exported();
    let names: BTreeSet<String> = metric_names(expr).into_iter().collect();
    let mut allowed: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
    for name in &names {
        let labels = exported.get(name).unwrap_or_else(|| {
            panic!(
                "{what}: `{expr}` queries {name}, which the daemon does not export; it exports {:?}",
                exported.keys().collect::<Vec<_>>()
            )
        });
        allowed.extend(labels.iter());
        for label in selector_labels(expr, name) {
            assert!(
                labels.contains(&label.as_str()) || TARGET_LABELS.contains(&label.as_str()),
                "{what}: `{expr}` selects {name} on label {label:?}, which it does not carry ({labels:?})"
            );
        }
    }
    for label in grouping_labels(expr) {
        assert!(
            allowed.contains(label.as_str()),
            "{what}: `{expr}` groups by {label:?}, which none of its metrics carries"
        );
    }
    names
}

/// The `expr:` of every rule in a rules file, by alert name.
fn alert_exprs(rules: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut alert = None;
    for line in rules.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert: ") {
            alert = Some(name.trim().to_string());
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            out.push((
                alert.take().expect("expr after its alert"),
                expr.to_string(),
            ));
        }
    }
    out
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let check = promtool(&["check", "rules", &path_of("alerts.yml")]);
    assert!(check.contains("SUCCESS: 8 rules found"), "{check}");
    let tests = promtool(&["test", "rules", &path_of("alerts_test.yml")]);
    assert!(tests.contains("SUCCESS"), "{tests}");
    let config = promtool(&["check", "config", &path_of("prometheus.yml")]);
    assert!(config.contains("SUCCESS"), "{config}");
}

#[test]
fn every_alert_is_tested_firing_and_quiet_and_queries_exported_metrics() {
    let rules = read("alerts.yml");
    let alerts = alert_exprs(&rules);
    let names: Vec<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "XdplbBackendDown",
            "XdplbServiceNoHealthyBackend",
            "XdplbDropsRising",
            "XdplbFlowTableNearlyFull",
            "XdplbConfigApplyFailed",
            "XdplbDown",
            "XdplbNodesDisagree",
            "XdplbNodeDrained",
        ],
        "the alerts the issues ask for"
    );
    for (alert, expr) in &alerts {
        check_names_and_labels(alert, expr);
        assert!(expr.contains("job=\"xdplb\""), "{alert}: `{expr}`");
    }
    // Each alert has a case expecting it to fire and one expecting silence: the lines after
    // `alertname: X` up to the next `eval_time`.
    let tests = read("alerts_test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for alert in names {
        let (mut firing, mut quiet) = (false, false);
        for (i, line) in lines.iter().enumerate() {
            if *line != format!("alertname: {alert}") {
                continue;
            }
            match lines.get(i + 1) {
                Some(&"exp_alerts: []") => quiet = true,
                Some(&"exp_alerts:") => {
                    firing |= lines
                        .get(i + 2)
                        .is_some_and(|l| l.starts_with("- exp_labels:"));
                }
                other => panic!("{alert}: unexpected line after alertname: {other:?}"),
            }
        }
        assert!(
            firing && quiet,
            "{alert}: firing case {firing}, quiet case {quiet}"
        );
    }
}

/// Every query of the dashboard (panels and variables), with Grafana's variables replaced by
/// values Prometheus accepts.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title").to_string();
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title:?}: datasource"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title:?}");
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    for var in dash["templating"]["list"].as_array().expect("variables") {
        let query = var["query"]["query"].as_str().expect("variable query");
        // label_values(SELECTOR, LABEL): the selector is PromQL.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _)| selector.to_string())
            .expect("a label_values() query");
        out.push((format!("variable {}", var["name"]), inner));
    }
    out.into_iter()
        .map(|(title, expr)| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
                .replace("$service", ".*");
            assert!(!expr.contains('$'), "{title}: unknown variable in `{expr}`");
            (title, expr)
        })
        .collect()
}

#[test]
fn the_dashboard_is_importable_and_queries_only_exported_metrics() {
    let dash: Value = serde_json::from_str(&read("xdplb-dashboard.json")).expect("valid JSON");
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "the datasource is an import input: {inputs:?}"
    );
    let queries = dashboard_queries(&dash);
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        used.extend(check_names_and_labels(title, expr));
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "xdplb_service_packets_total",
        "xdplb_service_bytes_total",
        "xdplb_backend_packets_total",
        "xdplb_backend_bytes_total",
        "xdplb_backend_up",
        "xdplb_packets_total",
        "xdplb_flow_table_entries",
        "xdplb_flow_table_capacity",
        "xdplb_config_last_apply_success",
        "xdplb_config_generation",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}: {used:?}");
    }
    assert!(
        queries
            .iter()
            .any(|(_, e)| e.starts_with("up{job=\"xdplb\"")),
        "no panel shows whether the daemon is up"
    );
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    let unique: BTreeSet<&&str> = titles.iter().collect();
    assert_eq!(
        unique.len(),
        titles.len(),
        "duplicate panel titles: {titles:?}"
    );

    // PromQL syntax: promtool checks every query as a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let quoted = serde_json::to_string(expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let path =
        std::env::temp_dir().join(format!("xdplb-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&path, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_checks_catch_an_unknown_metric_or_label() {
    let caught = |expr: &'static str| {
        std::panic::catch_unwind(|| check_names_and_labels("t", expr)).is_err()
    };
    assert!(!caught(
        "sum by (service) (xdplb_backend_up{job=\"xdplb\"})"
    ));
    assert!(
        caught("rate(xdplb_service_packets[5m])"),
        "a counter without _total"
    );
    assert!(
        caught("xdplb_backend_up{vip=\"x\"}"),
        "a label the metric lacks"
    );
    assert!(
        caught("sum by (reason) (xdplb_backend_up)"),
        "grouping by a missing label"
    );
}
