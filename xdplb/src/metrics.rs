//! Prometheus metrics (`GET /metrics`, served by [`crate::http::metrics_router`] when
//! `metrics_listen` is set),
//! exposed with prometheus-client. Each scrape reads the data plane's per-CPU counters afresh;
//! the flow table's fill, which only a walk of the table can count, is sampled off the scrape
//! path (see [`FlowSampler`]), so a scrape costs the same whatever the table holds.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use xdplb_common::Stat;

use crate::{
    instance::InstanceState,
    stats::{self, Counters, StatsError},
};

/// The `Content-Type` of what [`render`] returns: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A flow-table sample older than this is refreshed (in the background) by the next scrape.
pub const FLOW_SAMPLE_MAX_AGE: Duration = Duration::from_secs(5);

/// What a scrape needs besides the maps: the instance description, the last config apply, and
/// the flow-table sampler.
#[derive(Debug, Clone)]
pub struct MetricsState {
    pub instance: InstanceState,
    /// Config changes applied since start (0 = the config loaded at start).
    generation: u64,
    /// How long the last successful config apply took.
    last_apply_seconds: f64,
    /// When the last apply was attempted, successful or not.
    last_apply_at: SystemTime,
    /// Whether the last attempted apply was applied.
    last_apply_ok: bool,
    flows: FlowSampler,
}

impl MetricsState {
    /// The state after the config loaded at start was applied (now, in `apply_seconds`).
    pub fn new(instance: InstanceState, apply_seconds: f64) -> Self {
        MetricsState {
            generation: instance.generation,
            instance,
            last_apply_seconds: apply_seconds,
            last_apply_at: SystemTime::now(),
            last_apply_ok: true,
            flows: FlowSampler::default(),
        }
    }

    /// Records a config apply (reload or API change) that just ended: `ok` if it was applied,
    /// `seconds` it took, and the config generation now (unchanged by a rejected apply). The
    /// duration is kept only for an apply that succeeded.
    pub fn applied(&mut self, ok: bool, seconds: f64, generation: u64) {
        self.last_apply_at = SystemTime::now();
        self.last_apply_ok = ok;
        if ok {
            self.last_apply_seconds = seconds;
        }
        self.generation = generation;
    }

    /// Counts the flow table now, in this thread, and keeps the result for the next scrapes
    /// (what the background refresh does; for tests and for a caller that wants a fresh count).
    pub fn sample_flows_now(&self) -> Result<FlowSample, StatsError> {
        self.flows.sample_now(&self.instance)
    }
}

/// The flow table's fill as last counted. The kernel keeps no count of an LRU hash's entries
/// that user space can read, and the data plane cannot count them either (the LRU evicts without
/// telling it), so counting means walking the table: one syscall per entry. That walk runs in a
/// background thread, at most one at a time, when a scrape finds the last sample older than
/// [`FLOW_SAMPLE_MAX_AGE`]; the scrape serves the last sample with its time
/// (`xdplb_flow_table_sampled_timestamp_seconds`) and never waits for a walk.
#[derive(Debug, Clone, Default)]
pub struct FlowSampler {
    inner: Arc<Mutex<SamplerState>>,
}

#[derive(Debug, Default)]
struct SamplerState {
    last: Option<FlowSample>,
    /// When the last sample was taken, for its age (monotonic).
    taken: Option<Instant>,
    walking: bool,
}

/// One count of the flow table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowSample {
    pub entries: u64,
    pub capacity: u32,
    /// Flows evicted to make room: `flow_table_inserts - entries` at the time of the walk (flows
    /// are never deleted, only evicted), never less than in the sample before.
    pub evictions: u64,
    /// When the walk ended.
    pub at: SystemTime,
}

impl FlowSampler {
    fn lock(&self) -> std::sync::MutexGuard<'_, SamplerState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last sample (none before the first walk ends). Starts a walk in a background thread
    /// if that sample is older than `max_age`, or missing, and no walk is under way.
    pub fn latest(&self, instance: &InstanceState, max_age: Duration) -> Option<FlowSample> {
        let mut s = self.lock();
        let fresh = s.taken.is_some_and(|t| t.elapsed() < max_age);
        if !fresh && !s.walking {
            s.walking = true;
            let (sampler, instance) = (self.clone(), instance.clone());
            let spawned = std::thread::Builder::new()
                .name("flow-count".into())
                .spawn(move || {
                    if let Err(e) = sampler.sample_now(&instance) {
                        tracing::debug!("counting the flow table: {e}");
                    }
                    sampler.lock().walking = false;
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread to count the flow table: {e}");
                s.walking = false;
            }
        }
        s.last
    }

    /// Walks the flow table now, in this thread, and keeps the result.
    pub fn sample_now(&self, instance: &InstanceState) -> Result<FlowSample, StatsError> {
        let fill = stats::count_flows(instance)?;
        // Read after the walk: every flow it counted was inserted by then.
        let inserts = stats::read_counters(instance)?.get(Stat::FlowTableInsert);
        let mut s = self.lock();
        let before = s.last.map_or(0, |l| l.evictions);
        let sample = FlowSample {
            entries: fill.entries,
            capacity: fill.capacity,
            evictions: inserts.saturating_sub(fill.entries).max(before),
            at: SystemTime::now(),
        };
        s.last = Some(sample);
        s.taken = Some(Instant::now());
        Ok(sample)
    }
}

/// The metrics in the Prometheus text format (version 0.0.4, [`CONTENT_TYPE`]). Reads the
/// per-CPU counters (a fixed number of lookups) and serves the last flow-table sample, starting
/// a new one in the background if it is older than [`FLOW_SAMPLE_MAX_AGE`]: its cost does not
/// grow with the flow table. Blocking (map syscalls): call it from a blocking thread.
pub fn render(state: &MetricsState) -> Result<String, StatsError> {
    // Read before encoding, so that a map that is gone is a typed error (and a 500), not a
    // fmt::Error halfway through the text: prometheus-client's encoders only carry fmt::Error.
    let counters = stats::read_counters(&state.instance)?;
    let flows = state.flows.latest(&state.instance, FLOW_SAMPLE_MAX_AGE);
    let scrape = Scrape {
        counters,
        flows,
        state: state.clone(),
    };
    // Writing into a String cannot fail; an error here would be a bug in the encoder.
    scrape.text().map_err(|_| StatsError::Encode)
}

/// One scrape's values, encoded by prometheus-client as the families below, each one group
/// (HELP, TYPE, then its samples).
#[derive(Debug)]
struct Scrape {
    counters: Counters,
    flows: Option<FlowSample>,
    state: MetricsState,
}

impl Scrape {
    fn text(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// Labels as name/value pairs.
type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

/// Writes one family: its HELP and TYPE, then a sample per label set. A counter's `name` has no
/// `_total`: the encoder adds it to the family and its samples.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family with one sample without labels, or none when `value` is `None`.
fn gauge<N>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let none: Labels<0> = [];
    let samples = value.map(|v| (none, ConstGauge::new(v)));
    family(enc, name, help, MetricType::Gauge, samples)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let services = &self.counters.services;
        type Field = fn(&stats::TrafficRow) -> u64;
        let traffic: [(&str, &str, Field); 3] = [
            ("packets", "Packets sent to", |t| t.packets),
            ("bytes", "Bytes (Ethernet frames) sent to", |t| t.bytes),
            ("flows", "New flows scheduled to", |t| t.flows),
        ];
        for (what, help, get) in traffic {
            family(
                &mut enc,
                &format!("xdplb_service_{what}"),
                &format!("{help} the service's backends."),
                MetricType::Counter,
                services.iter().map(|s| {
                    let t = &s.traffic;
                    let labels: Labels<2> = [("service", &t.name), ("vip", &t.address)];
                    (labels, ConstCounter::new(get(t)))
                }),
            )?;
            family(
                &mut enc,
                &format!("xdplb_backend_{what}"),
                &format!("{help} the backend."),
                MetricType::Counter,
                services.iter().flat_map(|s| {
                    s.backends.iter().map(|b| {
                        let labels: Labels<2> =
                            [("service", &s.traffic.name), ("backend", &b.address)];
                        (labels, ConstCounter::new(get(b)))
                    })
                }),
            )?;
        }
        family(
            &mut enc,
            "xdplb_backend_up",
            "1 if the backend's health check passes, 0 if not (health-checked backends only).",
            MetricType::Gauge,
            services.iter().flat_map(|s| {
                s.backends.iter().filter_map(|b| {
                    let up = b.health.as_deref()? == "up";
                    let labels: Labels<2> = [("service", &s.traffic.name), ("backend", &b.address)];
                    Some((labels, ConstGauge::new(u64::from(up))))
                })
            }),
        )?;
        family(
            &mut enc,
            "xdplb_service_table_info",
            "Always 1; the fingerprint of how the service picks backends (scheduler, hash settings, the backend of every table slot). Nodes of a fleet that agree on it pick the same backend for every flow of a hashing scheduler.",
            MetricType::Gauge,
            services
                .iter()
                .filter(|s| !s.table_fingerprint.is_empty())
                .map(|s| {
                    let labels: Labels<2> = [
                        ("service", &s.traffic.name),
                        ("fingerprint", &s.table_fingerprint),
                    ];
                    (labels, ConstGauge::new(1u64))
                }),
        )?;
        // One counter array, two families: by verdict and reason, and the other events.
        let split = |(name, value): &(String, u64), stat: Stat| match stat {
            Stat::Forwarded | Stat::ForwardedFib | Stat::ForwardedCached => {
                Some(("forward", name.clone(), *value))
            }
            _ => name
                .strip_prefix("pass_")
                .map(|r| ("pass", r.to_string(), *value))
                .or_else(|| {
                    name.strip_prefix("drop_")
                        .map(|r| ("drop", r.to_string(), *value))
                }),
        };
        let counters = || self.counters.counters.iter().zip(Stat::ALL);
        family(
            &mut enc,
            "xdplb_packets",
            "Packets seen by the XDP program, by verdict and reason.",
            MetricType::Counter,
            counters()
                .filter_map(|(c, stat)| split(c, stat))
                .map(|(verdict, reason, value)| {
                    let labels = [("verdict", verdict.to_string()), ("reason", reason)];
                    (labels, ConstCounter::new(value))
                }),
        )?;
        family(
            &mut enc,
            "xdplb_events",
            "Flow-table and reply-path events.",
            MetricType::Counter,
            counters()
                .filter(|(c, stat)| split(c, *stat).is_none())
                .map(|((name, value), _)| {
                    let labels: Labels<1> = [("event", name)];
                    (labels, ConstCounter::new(*value))
                }),
        )?;
        let flows = self.flows;
        gauge(
            &mut enc,
            "xdplb_flow_table_entries",
            "Flows in the flow table, as counted at xdplb_flow_table_sampled_timestamp_seconds (no sample before the first count ends).",
            flows.map(|f| f.entries),
        )?;
        gauge(
            &mut enc,
            "xdplb_flow_table_capacity",
            "Capacity of the flow table.",
            flows.map(|f| u64::from(f.capacity)),
        )?;
        let none: Labels<0> = [];
        family(
            &mut enc,
            "xdplb_flow_table_evictions",
            "Flows evicted to make room (inserts minus entries), as counted at xdplb_flow_table_sampled_timestamp_seconds.",
            MetricType::Counter,
            flows.map(|f| (none, ConstCounter::new(f.evictions))),
        )?;
        gauge(
            &mut enc,
            "xdplb_flow_table_sampled_timestamp_seconds",
            "When the flow table was last counted (Unix time): counting walks the table, so it is done in the background, at most every few seconds, not at each scrape.",
            flows.map(|f| unix_seconds(f.at)),
        )?;
        let state = &self.state;
        gauge(
            &mut enc,
            "xdplb_config_generation",
            "Config changes applied since start, by reload or API (0 = the config loaded at start).",
            Some(state.generation),
        )?;
        gauge(
            &mut enc,
            "xdplb_config_last_apply_duration_seconds",
            "How long the last successful config apply took.",
            Some(state.last_apply_seconds),
        )?;
        gauge(
            &mut enc,
            "xdplb_config_last_apply_timestamp_seconds",
            "When the last config apply (at start, by reload or API) was attempted (Unix time).",
            Some(unix_seconds(state.last_apply_at)),
        )?;
        gauge(
            &mut enc,
            "xdplb_config_last_apply_success",
            "1 if the last config apply was applied, 0 if it was rejected.",
            Some(u64::from(state.last_apply_ok)),
        )?;
        let reload_ok = state.instance.last_reload.as_ref().is_none_or(|r| r.ok);
        gauge(
            &mut enc,
            "xdplb_config_last_reload_success",
            "1 if the last reload was applied (or none was attempted), 0 if it was rejected.",
            Some(u64::from(reload_ok)),
        )?;
        type Veth = fn(&crate::veth::VethReport) -> u64;
        let veth: [(&str, &str, MetricType, Veth); 3] = [
            (
                "xdplb_veth_tx_dropped",
                "Increase of a veth's tx_dropped since the daemon started (veths of its network namespace).",
                MetricType::Counter,
                |v| v.tx_dropped,
            ),
            (
                "xdplb_veth_rx_dropped",
                "Increase of a veth's rx_dropped since the daemon started; a failed XDP_REDIRECT (target veth's peer without NAPI) is counted here on Linux 6.18.",
                MetricType::Counter,
                |v| v.rx_dropped,
            ),
            (
                "xdplb_veth_xdp_redirect_blocked",
                "1 if the veth cannot take XDP_REDIRECT/XDP_TX frames (its peer has no NAPI: GRO off and no XDP program), 0 if it can.",
                MetricType::Gauge,
                |v| u64::from(v.accepts_xdp_redirect == Some(false)),
            ),
        ];
        for (name, help, kind, value) in veth {
            let samples = state.instance.veths.iter().map(|(interface, v)| {
                let labels: Labels<1> = [("interface", interface)];
                (labels, value(v))
            });
            match kind {
                MetricType::Counter => family(
                    &mut enc,
                    name,
                    help,
                    kind,
                    samples.map(|(l, v)| (l, ConstCounter::new(v))),
                )?,
                _ => family(
                    &mut enc,
                    name,
                    help,
                    kind,
                    samples.map(|(l, v)| (l, ConstGauge::new(v))),
                )?,
            }
        }
        // What the node announces (`[announce]`); without the section no VIP is announced.
        let announce = state.instance.announce.as_ref();
        let vips: Vec<(String, u64)> = announce
            .iter()
            .flat_map(|p| &p.vips)
            .map(|v| (v.vip.to_string(), u64::from(v.announced)))
            .collect();
        family(
            &mut enc,
            "xdplb_vip_announced",
            "1 if the VIP's /32 route is announced (in the [announce] table), 0 if withdrawn; one per VIP address of a configured service (none without [announce]).",
            MetricType::Gauge,
            vips.iter().map(|(vip, v)| {
                let labels: Labels<1> = [("vip", vip.as_str())];
                (labels, ConstGauge::new(*v))
            }),
        )?;
        gauge(
            &mut enc,
            "xdplb_node_drained",
            "1 if the node is drained (`xdplb node drain`: every VIP withdrawn), else 0.",
            Some(u64::from(announce.is_some_and(|p| p.drained))),
        )?;
        let version: Labels<1> = [("version", env!("CARGO_PKG_VERSION"))];
        // The commit only when the build was given one (XDPLB_GIT_COMMIT=$(git rev-parse HEAD)):
        // reading git from build.rs would go stale, since the build script does not rerun
        // on each commit.
        let build = match option_env!("XDPLB_GIT_COMMIT") {
            Some(commit) => vec![version[0], ("commit", commit)],
            None => version.to_vec(),
        };
        family(
            &mut enc,
            "xdplb_build_info",
            "The xdplb build: version (and git commit, when the build was given XDPLB_GIT_COMMIT). Always 1.",
            MetricType::Gauge,
            [(build, ConstGauge::new(1u64))],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ServiceRow, TrafficRow};

    fn row(name: &str, address: &str, health: Option<&str>) -> TrafficRow {
        TrafficRow {
            name: name.into(),
            address: address.into(),
            packets: 3,
            bytes: 300,
            flows: 1,
            health: health.map(Into::into),
            drain: false,
        }
    }

    fn state() -> MetricsState {
        let veth = crate::veth::VethReport {
            tx_dropped: 1,
            rx_dropped: 2,
            accepts_xdp_redirect: Some(false),
        };
        MetricsState::new(
            InstanceState {
                instance: "t".into(),
                pid: 1,
                config: "test.toml".into(),
                interfaces: Vec::new(),
                map_ids: Default::default(),
                services: Vec::new(),
                generation: 4,
                reloads: 0,
                last_reload: None,
                veths: [("veth0".to_string(), veth)].into(),
                announce: Some(crate::announce::Plan {
                    table: 4242,
                    drained: false,
                    vips: vec![crate::announce::VipPlan {
                        vip: std::net::Ipv4Addr::new(10, 100, 0, 1),
                        announced: true,
                        reason: "service dns has a backend taking new flows".into(),
                        services: vec!["dns".into()],
                        signature: String::new(),
                        hold: Duration::ZERO,
                        settle: Duration::ZERO,
                    }],
                    skipped: vec![],
                }),
            },
            0.25,
        )
    }

    fn text_of(state: &MetricsState, flows: Option<FlowSample>) -> String {
        let counters = Counters {
            services: vec![ServiceRow {
                table_fingerprint: "0123456789abcdef".into(),
                traffic: row("dns", "192.0.2.1:53", None),
                backends: vec![
                    row("dns", "10.0.0.1:53", Some("up")),
                    row("dns", "10.0.0.2:53", Some("down")),
                ],
            }],
            counters: Stat::ALL
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name().to_string(), i as u64))
                .collect(),
        };
        Scrape {
            counters,
            flows,
            state: state.clone(),
        }
        .text()
        .unwrap()
    }

    const SAMPLE: FlowSample = FlowSample {
        entries: 5,
        capacity: 1024,
        evictions: 2,
        at: UNIX_EPOCH,
    };

    fn rendered() -> String {
        text_of(&state(), Some(SAMPLE))
    }

    /// The family a line belongs to: the name in `# HELP NAME` / `# TYPE NAME`, or the sample's
    /// metric name.
    fn family_of(line: &str) -> &str {
        let rest = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "));
        match rest {
            Some(r) => r.split(' ').next().unwrap_or(r),
            None => line.split(['{', ' ']).next().unwrap_or(line),
        }
    }

    #[test]
    fn each_family_is_one_contiguous_group_of_help_type_and_samples() {
        let text = rendered();
        // Split the text into runs of lines of one family.
        let mut runs: Vec<(&str, Vec<&str>)> = Vec::new();
        for line in text.lines() {
            let f = family_of(line);
            match runs.last_mut() {
                Some((name, lines)) if *name == f => lines.push(line),
                _ => runs.push((f, vec![line])),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (name, lines) in &runs {
            assert!(
                seen.insert(*name),
                "family {name} appears in more than one group:\n{text}"
            );
            assert!(
                lines[0].starts_with(&format!("# HELP {name} "))
                    && lines
                        .get(1)
                        .is_some_and(|l| l.starts_with(&format!("# TYPE {name} "))),
                "family {name} does not start with HELP then TYPE: {lines:?}"
            );
            assert!(
                lines[2..].iter().all(|l| !l.starts_with('#')),
                "family {name} has comments among its samples: {lines:?}"
            );
        }
        for name in ["xdplb_packets_total", "xdplb_events_total"] {
            let (_, lines) = runs
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no family {name}:\n{text}"));
            assert!(lines.len() > 2, "{name} has no samples: {lines:?}");
        }
        assert!(
            text.contains("xdplb_packets_total{verdict=\"forward\",reason=\"forwarded\"} 0"),
            "{text}"
        );
        // Every family, in order, with its type and at least one sample.
        let found: Vec<(&str, &str, usize)> = runs
            .iter()
            .map(|(name, lines)| {
                let kind = lines[1].rsplit(' ').next().unwrap_or_default();
                (*name, kind, lines.len() - 2)
            })
            .collect();
        let names: Vec<(&str, &str)> = found.iter().map(|(n, k, _)| (*n, *k)).collect();
        assert_eq!(names, FAMILIES, "{text}");
        assert!(found.iter().all(|(_, _, n)| *n > 0), "{found:?}\n{text}");
    }

    /// Every family, in order, with its type, as the Prometheus text format names them.
    const FAMILIES: [(&str, &str); 25] = [
        ("xdplb_service_packets_total", "counter"),
        ("xdplb_backend_packets_total", "counter"),
        ("xdplb_service_bytes_total", "counter"),
        ("xdplb_backend_bytes_total", "counter"),
        ("xdplb_service_flows_total", "counter"),
        ("xdplb_backend_flows_total", "counter"),
        ("xdplb_backend_up", "gauge"),
        ("xdplb_service_table_info", "gauge"),
        ("xdplb_packets_total", "counter"),
        ("xdplb_events_total", "counter"),
        ("xdplb_flow_table_entries", "gauge"),
        ("xdplb_flow_table_capacity", "gauge"),
        ("xdplb_flow_table_evictions_total", "counter"),
        ("xdplb_flow_table_sampled_timestamp_seconds", "gauge"),
        ("xdplb_config_generation", "gauge"),
        ("xdplb_config_last_apply_duration_seconds", "gauge"),
        ("xdplb_config_last_apply_timestamp_seconds", "gauge"),
        ("xdplb_config_last_apply_success", "gauge"),
        ("xdplb_config_last_reload_success", "gauge"),
        ("xdplb_veth_tx_dropped_total", "counter"),
        ("xdplb_veth_rx_dropped_total", "counter"),
        ("xdplb_veth_xdp_redirect_blocked", "gauge"),
        ("xdplb_vip_announced", "gauge"),
        ("xdplb_node_drained", "gauge"),
        ("xdplb_build_info", "gauge"),
    ];

    /// The value of the sample written exactly as `name_and_labels`.
    fn sample(text: &str, name_and_labels: &str) -> f64 {
        let prefix = format!("{name_and_labels} ");
        let values: Vec<f64> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(values.len(), 1, "{name_and_labels} in\n{text}");
        values[0]
    }

    #[test]
    fn samples_carry_the_counters_labels_and_state() {
        let text = rendered();
        let svc = "service=\"dns\",vip=\"192.0.2.1:53\"";
        assert_eq!(
            sample(&text, &format!("xdplb_service_bytes_total{{{svc}}}")),
            300.0
        );
        assert_eq!(
            sample(
                &text,
                "xdplb_service_table_info{service=\"dns\",fingerprint=\"0123456789abcdef\"}"
            ),
            1.0
        );
        let up = "xdplb_backend_up{service=\"dns\",backend=\"10.0.0.1:53\"}";
        let down = "xdplb_backend_up{service=\"dns\",backend=\"10.0.0.2:53\"}";
        assert_eq!((sample(&text, up), sample(&text, down)), (1.0, 0.0));
        let drop = Stat::ALL
            .iter()
            .position(|s| s.name().starts_with("drop_"))
            .unwrap();
        let reason = &Stat::ALL[drop].name()["drop_".len()..];
        assert_eq!(
            sample(
                &text,
                &format!("xdplb_packets_total{{verdict=\"drop\",reason=\"{reason}\"}}")
            ),
            drop as f64
        );
        assert_eq!(sample(&text, "xdplb_flow_table_entries"), 5.0);
        assert_eq!(sample(&text, "xdplb_flow_table_capacity"), 1024.0);
        assert_eq!(sample(&text, "xdplb_flow_table_evictions_total"), 2.0);
        assert_eq!(
            sample(&text, "xdplb_flow_table_sampled_timestamp_seconds"),
            0.0
        );
        assert_eq!(sample(&text, "xdplb_config_generation"), 4.0);
        assert_eq!(
            sample(&text, "xdplb_config_last_apply_duration_seconds"),
            0.25
        );
        assert_eq!(sample(&text, "xdplb_config_last_apply_success"), 1.0);
        let blocked = "xdplb_veth_xdp_redirect_blocked{interface=\"veth0\"}";
        assert_eq!(sample(&text, blocked), 1.0);
        let rx = "xdplb_veth_rx_dropped_total{interface=\"veth0\"}";
        assert_eq!(sample(&text, rx), 2.0);
        assert_eq!(
            sample(&text, "xdplb_vip_announced{vip=\"10.100.0.1\"}"),
            1.0
        );
        assert_eq!(sample(&text, "xdplb_node_drained"), 0.0);
        let build = format!(
            "xdplb_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&build) && l.ends_with("} 1")),
            "{text}"
        );
    }

    #[test]
    fn an_apply_sets_time_result_generation_and_duration_if_it_succeeded() {
        let mut state = state();
        let started = unix_seconds(SystemTime::now());
        state.applied(false, 9.0, 4);
        let text = text_of(&state, Some(SAMPLE));
        assert_eq!(sample(&text, "xdplb_config_last_apply_success"), 0.0);
        assert_eq!(
            sample(&text, "xdplb_config_last_apply_duration_seconds"),
            0.25,
            "a rejected apply leaves the last successful apply's duration"
        );
        let at = sample(&text, "xdplb_config_last_apply_timestamp_seconds");
        assert!(
            at >= started.floor() && at < started + 60.0,
            "{at} vs {started}"
        );
        state.applied(true, 0.5, 5);
        let text = text_of(&state, Some(SAMPLE));
        assert_eq!(sample(&text, "xdplb_config_last_apply_success"), 1.0);
        assert_eq!(
            sample(&text, "xdplb_config_last_apply_duration_seconds"),
            0.5
        );
        assert_eq!(sample(&text, "xdplb_config_generation"), 5.0);
    }

    #[test]
    fn before_the_first_flow_count_the_sampled_families_have_no_sample() {
        let text = text_of(&state(), None);
        for name in [
            "xdplb_flow_table_entries",
            "xdplb_flow_table_evictions_total",
            "xdplb_flow_table_sampled_timestamp_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{text}");
            assert!(
                !text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} has a sample without a count:\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut state = state();
        state.instance.veths =
            [("we\"ird\\".to_string(), crate::veth::VethReport::default())].into();
        let text = text_of(&state, None);
        assert!(
            text.contains("xdplb_veth_tx_dropped_total{interface=\"we\\\"ird\\\\\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_sampler_without_maps_has_no_sample_and_is_not_stuck_walking() {
        let state = state();
        assert!(state.sample_flows_now().is_err(), "map id 0 is no map");
        assert_eq!(state.flows.latest(&state.instance, Duration::ZERO), None);
        // The walk started in the background fails, and clears the way for the next one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.flows.lock().walking {
            assert!(Instant::now() < deadline, "the background walk never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
