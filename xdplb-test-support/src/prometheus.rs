//! `/metrics` as Prometheus's reference parser reads it (the Python client's
//! `text_string_to_metric_families`, through `prometheus_families.py` beside this crate): the
//! oracle for the exposition, instead of the code under test.

use serde_json::Value;

/// Every family the daemon exports, in order, with its type, as the reference client names them
/// (a counter family without `_total`).
pub const FAMILIES: [(&str, &str); 25] = [
    ("xdplb_service_packets", "counter"),
    ("xdplb_backend_packets", "counter"),
    ("xdplb_service_bytes", "counter"),
    ("xdplb_backend_bytes", "counter"),
    ("xdplb_service_flows", "counter"),
    ("xdplb_backend_flows", "counter"),
    ("xdplb_backend_up", "gauge"),
    ("xdplb_service_table_info", "gauge"),
    ("xdplb_packets", "counter"),
    ("xdplb_events", "counter"),
    ("xdplb_flow_table_entries", "gauge"),
    ("xdplb_flow_table_capacity", "gauge"),
    ("xdplb_flow_table_evictions", "counter"),
    ("xdplb_flow_table_sampled_timestamp_seconds", "gauge"),
    ("xdplb_config_generation", "gauge"),
    ("xdplb_config_last_apply_duration_seconds", "gauge"),
    ("xdplb_config_last_apply_timestamp_seconds", "gauge"),
    ("xdplb_config_last_apply_success", "gauge"),
    ("xdplb_config_last_reload_success", "gauge"),
    ("xdplb_veth_tx_dropped", "counter"),
    ("xdplb_veth_rx_dropped", "counter"),
    ("xdplb_veth_xdp_redirect_blocked", "gauge"),
    ("xdplb_vip_announced", "gauge"),
    ("xdplb_node_drained", "gauge"),
    ("xdplb_build_info", "gauge"),
];

/// Parses a scrape with the reference client; panics (with the parser's complaint and the
/// text) if it refuses it. Returns the families in order, as JSON: name, type, samples (name,
/// labels, value).
pub fn parse(text: &str) -> Vec<Value> {
    let path = std::env::temp_dir().join(format!(
        "xdplb-metrics-{}-{:?}.txt",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, text).expect("save the scrape");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/prometheus_families.py");
    // Debian's interpreter, which has python3-prometheus-client (scripts/setup.sh).
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&path)
        .output()
        .expect("run python3");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "the reference parser rejects the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser prints JSON")
}

/// The families' (name, type), in order.
pub fn names_and_types(families: &[Value]) -> Vec<(&str, &str)> {
    families
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or_default(),
                f["type"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

/// The value of the one sample `name` with exactly `labels`; panics unless there is exactly one.
pub fn value(families: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect();
    let hits: Vec<f64> = families
        .iter()
        .flat_map(|f| f["samples"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == name && s["labels"].as_object() == Some(&want))
        .filter_map(|s| s["value"].as_f64())
        .collect();
    match hits.as_slice() {
        [v] => *v,
        _ => panic!("{} samples {name}{labels:?} in {families:#?}", hits.len()),
    }
}
