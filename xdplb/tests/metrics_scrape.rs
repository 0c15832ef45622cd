//! `/metrics` against a loaded data plane: what Prometheus's reference parser reads from it, and
//! a scrape's cost with an empty and with a nearly full flow table. Needs root (loads BPF).

use std::time::{Duration, Instant};

use aya::maps::HashMap;
use xdplb::{
    config::Config,
    dataplane::Dataplane,
    instance::{BackendInfo, InstanceState, ServiceInfo},
    metrics::{self, MetricsState},
    stats,
};
use xdplb_common::{
    Flow, FlowKey, MAP_BACKEND_STATS, MAP_FLOWS, MAP_SERVICE_STATS, MAP_STATS, Stat,
};
use xdplb_test_support::*;

const CONFIG: &str = r#"
interfaces = ["lo"]

[[service]]
name = "demo"
vip = "127.0.0.1:9875"
scheduler = "round-robin"
[[service.backend]]
address = "127.0.0.1:9876"
[[service.backend]]
address = "127.0.0.1:9877"
"#;

/// What the daemon publishes for a loaded data plane (as `daemon::instance_state` does).
fn instance_state(dp: &Dataplane, cfg: &Config) -> InstanceState {
    let map_ids = [MAP_STATS, MAP_SERVICE_STATS, MAP_BACKEND_STATS, MAP_FLOWS]
        .into_iter()
        .map(|m| (m.to_string(), dp.map_id(m).expect("map id")))
        .collect();
    let plans = &dp.current().expect("config applied").services;
    let services = cfg
        .services
        .iter()
        .map(|svc| {
            let plan = plans.iter().find(|p| p.name == svc.name).expect("plan");
            ServiceInfo {
                name: svc.name.clone(),
                vip: svc.vip.to_string(),
                id: plan.service.id,
                table_fingerprint: xdplb::dataplane::reconcile::table_fingerprint(plan),
                backends: plan
                    .backends
                    .iter()
                    .map(|(index, _, address)| BackendInfo {
                        address: address.to_string(),
                        index: Some(*index),
                        health: None,
                        health_detail: None,
                        drain: false,
                    })
                    .collect(),
            }
        })
        .collect();
    InstanceState {
        instance: format!("t-metrics-{}", std::process::id()),
        pid: std::process::id(),
        config: "test".into(),
        interfaces: Vec::new(),
        map_ids,
        services,
        generation: 0,
        reloads: 0,
        last_reload: None,
        veths: Default::default(),
        announce: None,
    }
}

#[test]
fn a_scrape_of_a_loaded_data_plane_parses_with_the_reference_client() {
    let (cfg, mut dp) = load_toml(CONFIG);
    for port in 5000..5004 {
        let frame = udp(&format!("10.1.2.3:{port}"), "127.0.0.1:9875").build();
        // Backends on lo: the rewritten frame goes up the local stack.
        assert_eq!(run(&mut dp, &frame).action, XDP_PASS, "forwarded");
    }
    let mut state = MetricsState::new(instance_state(&dp, &cfg), 0.125);
    state.applied(true, 0.25, 1);
    state.sample_flows_now().expect("count the flows");
    let text = metrics::render(&state).expect("render");
    let families = prometheus::parse(&text);
    assert_eq!(
        prometheus::names_and_types(&families),
        prometheus::FAMILIES,
        "families as the reference client reads them"
    );
    let value = |name: &str, labels: &[(&str, &str)]| prometheus::value(&families, name, labels);
    let svc = [("service", "demo"), ("vip", "127.0.0.1:9875")];
    assert_eq!(value("xdplb_service_packets_total", &svc), 4.0);
    assert_eq!(value("xdplb_service_flows_total", &svc), 4.0);
    for backend in ["127.0.0.1:9876", "127.0.0.1:9877"] {
        let b = [("service", "demo"), ("backend", backend)];
        assert_eq!(value("xdplb_backend_flows_total", &b), 2.0, "{backend}");
    }
    let fingerprint = &instance_state(&dp, &cfg).services[0].table_fingerprint;
    assert_eq!(fingerprint.len(), 16, "{fingerprint}");
    let table = [("service", "demo"), ("fingerprint", fingerprint.as_str())];
    assert_eq!(value("xdplb_service_table_info", &table), 1.0);
    let forwarded = [("verdict", "forward"), ("reason", "forwarded")];
    assert_eq!(value("xdplb_packets_total", &forwarded), 4.0);
    let inserts = [("event", Stat::FlowTableInsert.name())];
    assert_eq!(value("xdplb_events_total", &inserts), 4.0);
    assert_eq!(value("xdplb_flow_table_entries", &[]), 4.0);
    assert_eq!(
        value("xdplb_flow_table_capacity", &[]),
        f64::from(cfg.limits.max_flows)
    );
    assert_eq!(value("xdplb_flow_table_evictions_total", &[]), 0.0);
    assert_eq!(value("xdplb_config_generation", &[]), 1.0);
    assert_eq!(value("xdplb_config_last_apply_duration_seconds", &[]), 0.25);
    assert_eq!(value("xdplb_config_last_apply_success", &[]), 1.0);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    if option_env!("XDPLB_GIT_COMMIT").is_none() {
        assert_eq!(value("xdplb_build_info", &version), 1.0);
    }
}

/// Median wall time of `n` renders.
fn median_scrape(state: &MetricsState, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let text = metrics::render(state).expect("render");
            let took = t.elapsed();
            assert!(text.contains("# TYPE xdplb_flow_table_entries gauge"));
            took
        })
        .collect();
    times.sort();
    times[n / 2]
}

/// The sample `xdplb_flow_table_entries` in `text`.
fn entries_in(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("xdplb_flow_table_entries "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_scrape_costs_the_same_with_an_empty_and_a_full_flow_table() {
    const FLOWS: u32 = 200_000;
    // The flow table is an LRU without a common free list (BPF_F_NO_COMMON_LRU): each possible
    // CPU gets max_flows / CPUs of it, and this thread writes from CPU 0 only.
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
    let max_flows = (FLOWS * cpus + FLOWS / 4 * cpus).next_power_of_two();
    let (cfg, mut dp) = load_toml(&format!("{CONFIG}\n[limits]\nmax_flows = {max_flows}\n"));
    let state = MetricsState::new(instance_state(&dp, &cfg), 0.0);
    state.sample_flows_now().expect("count the empty table");
    let empty = median_scrape(&state, 21);

    // Fill the flow table from user space: one entry per client port and address.
    let filled = Instant::now();
    {
        let map = dp.ebpf_mut().map_mut(MAP_FLOWS).expect("FLOWS_V1");
        let mut flows: HashMap<_, FlowKey, Flow> = HashMap::try_from(map).expect("flow map");
        for i in 0..FLOWS {
            let mut key = FlowKey {
                client_port_be: ((i % 60_000) as u16 + 1024).to_be(),
                vip_port_be: 9875u16.to_be(),
                proto: 17,
                ..Default::default()
            };
            // Addresses are in network order: the bytes as on the wire.
            key.client_addr[0] = u32::from_ne_bytes([10, 9, (i / 60_000) as u8, 1]);
            key.vip_addr[0] = u32::from_ne_bytes([127, 0, 0, 1]);
            flows
                .insert(key, Flow::default(), 0)
                .expect("insert a flow");
        }
    }
    let filled = filled.elapsed();
    let walk = Instant::now();
    let sample = state.sample_flows_now().expect("count the full table");
    let walk = walk.elapsed();
    assert!(
        sample.entries > u64::from(FLOWS) * 9 / 10,
        "the table holds the flows written: {sample:?}"
    );
    let full = median_scrape(&state, 21);
    let text = metrics::render(&state).expect("render");
    assert_eq!(entries_in(&text), Some(sample.entries), "{text}");
    // What each scrape cost before: reading the counters and walking the table.
    let per_scrape_walk = Instant::now();
    let snap = stats::read(&state.instance).expect("stats");
    let per_scrape_walk = per_scrape_walk.elapsed();
    assert_eq!(snap.flow_table.entries, sample.entries);
    println!(
        "scrape (median of 21): empty table {empty:?}, {} entries {full:?}; \
         filling took {filled:?}; one walk of the table {walk:?}; stats::read (walks) {per_scrape_walk:?}",
        sample.entries
    );
    let bound = empty * 3 + Duration::from_millis(20);
    assert!(
        full < bound,
        "a scrape with {} flows took {full:?}, with none {empty:?}: it grows with the table",
        sample.entries
    );
}

#[test]
fn a_stale_sample_is_refreshed_in_the_background_not_by_the_scrape() {
    let (cfg, mut dp) = load_toml(CONFIG);
    let state = MetricsState::new(instance_state(&dp, &cfg), 0.0);
    // The first scrape has no count yet and starts one; a later scrape serves it.
    let first = metrics::render(&state).expect("render");
    assert_eq!(entries_in(&first), None, "{first}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let zero = loop {
        let text = metrics::render(&state).expect("render");
        if let Some(n) = entries_in(&text) {
            break n;
        }
        assert!(Instant::now() < deadline, "no count after 10 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(zero, 0);
    // A new flow shows once the sample is older than FLOW_SAMPLE_MAX_AGE and a scrape has
    // started the next count.
    let frame = udp("10.1.2.3:5000", "127.0.0.1:9875").build();
    assert_eq!(run(&mut dp, &frame).action, XDP_PASS, "forwarded");
    let text = metrics::render(&state).expect("render");
    assert_eq!(entries_in(&text), Some(0), "the sample is still fresh");
    std::thread::sleep(metrics::FLOW_SAMPLE_MAX_AGE);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics::render(&state).expect("render");
        if entries_in(&text) == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the count never refreshed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
