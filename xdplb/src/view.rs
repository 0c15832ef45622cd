//! What the reading commands (`stats`, `list`, `flows`, `explain`, `reload --dry-run`) see of
//! an instance: its running daemon's description and applied config, or, when no daemon runs,
//! the pinned data plane it left behind, which keeps forwarding (a plain SIGTERM leaves it).

use std::collections::BTreeMap;

use aya::maps::MapData;
use serde::Serialize;
use xdplb_common::{
    BACKEND_FLAG_DRAINING, MAP_BACKEND_STATS, MAP_FLOWS, MAP_SERVICE_STATS, MAP_STATS,
    SERVICE_FLAG_PASS_WHEN_EMPTY, SERVICE_FLAG_STATE_ON_SECOND_PACKET, SERVICE_FORWARDING_MASK,
    SERVICE_FORWARDING_SHIFT,
};

use crate::{
    config::{self, Config},
    dataplane::{PinRecord, Pins, ServicePlan, pin},
    instance::{self, BackendInfo, InstanceError, InstanceState, ServiceInfo},
};

/// The maps the reading commands use.
const READ_MAPS: [&str; 4] = [MAP_STATS, MAP_SERVICE_STATS, MAP_BACKEND_STATS, MAP_FLOWS];

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(
        "instance {name:?}: no daemon runs it ({why}) and it left no pinned data plane (no record {record}); start it with `xdplb run --instance {name}`"
    )]
    Nothing {
        name: String,
        why: String,
        record: String,
    },
    #[error(
        "instance {name:?}: no daemon runs it ({why}); its pinned data plane is recorded in {record}, but map {map} cannot be found: neither pinned where this process can see it ({pins}) nor used by a loaded program of the instance"
    )]
    MapNotFound {
        name: String,
        why: String,
        record: String,
        pins: String,
        map: &'static str,
    },
    #[error("asking the daemon of instance {name:?} for its config: {reason}")]
    Api { name: String, reason: String },
    #[error("the config the daemon of instance {name:?} returned does not parse: {source}")]
    Config {
        name: String,
        #[source]
        source: Box<config::ConfigError>,
    },
}

/// An instance as the reading commands find it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    /// Map ids, service ids, backend positions and health: the running daemon's state file,
    /// or, without a daemon, the same built from the pin record.
    pub state: InstanceState,
    /// `None` while a daemon runs; else the line that says it does not and where the data
    /// comes from.
    pub offline: Option<String>,
    /// The pin record, when one was read.
    pub record: Option<PinRecord>,
}

impl InstanceView {
    pub fn running(&self) -> bool {
        self.offline.is_none()
    }
}

/// Finds instance `name`: its live daemon, else its pinned data plane.
pub fn resolve(name: &str) -> Result<InstanceView, ViewError> {
    let why = match instance::read(name) {
        Ok(state) if instance::pid_alive(state.pid) => {
            return Ok(InstanceView {
                state,
                offline: None,
                record: None,
            });
        }
        Ok(state) => format!("pid {} gone", state.pid),
        Err(InstanceError::NotRunning { path, .. }) => {
            format!("no state file {}", path.display())
        }
        Err(e) => return Err(e.into()),
    };
    pinned(name, why)
}

/// Instance `name` from its pin record and pinned maps; `why` says why not from its daemon.
fn pinned(name: &str, why: String) -> Result<InstanceView, ViewError> {
    // Validates the name before it is used in a path.
    instance::state_path(name)?;
    let pins = Pins::new(&pin::bpffs(), &instance::run_dir(), name);
    let Some(record) = pins.read_record_any() else {
        return Err(ViewError::Nothing {
            name: name.to_string(),
            why,
            record: pins.record.display().to_string(),
        });
    };
    let mut map_ids = BTreeMap::new();
    for map in READ_MAPS {
        let id = pinned_map_id(&pins, &record, map).ok_or_else(|| ViewError::MapNotFound {
            name: name.to_string(),
            why: why.clone(),
            record: pins.record.display().to_string(),
            pins: pins.dir.display().to_string(),
            map,
        })?;
        map_ids.insert(map.to_string(), id);
    }
    let services = record
        .state
        .services
        .iter()
        .map(|plan| ServiceInfo {
            name: plan.name.clone(),
            vip: plan.vip.to_string(),
            id: plan.service.id,
            table_fingerprint: crate::dataplane::reconcile::table_fingerprint(plan),
            backends: plan
                .backends
                .iter()
                .map(|(index, backend, address)| BackendInfo {
                    address: address.to_string(),
                    index: Some(*index),
                    health: None,
                    health_detail: None,
                    // As the data plane holds it: the operator's drain, or a down backend
                    // keeping its flows.
                    drain: backend.flags & BACKEND_FLAG_DRAINING != 0,
                })
                .collect(),
        })
        .collect();
    let note = format!(
        "daemon not running ({why}); reading the pinned data plane of instance {name} (health unknown)"
    );
    Ok(InstanceView {
        state: InstanceState {
            instance: name.to_string(),
            // No daemon (the note names the one that is gone).
            pid: 0,
            config: "(no daemon)".to_string(),
            interfaces: record.interfaces.clone(),
            map_ids,
            services,
            generation: 0,
            reloads: 0,
            last_reload: None,
            veths: BTreeMap::new(),
            announce: None,
        },
        offline: Some(note),
        record: Some(record),
    })
}

/// The kernel id of pinned map `map`: through its pin where this process sees it, else
/// through the programs that use the instance's `STATS_V1` map (they stay loaded while their
/// pinned links attach them, from any mount namespace).
fn pinned_map_id(pins: &Pins, record: &PinRecord, map: &str) -> Option<u32> {
    let dirs = [Some(pins.dir.clone()), record.pins_dir.clone()];
    for dir in dirs.into_iter().flatten() {
        let path = dir.join("maps").join(map);
        if let Ok(data) = MapData::from_pin(&path)
            && let Ok(info) = data.info()
        {
            return Some(info.id());
        }
    }
    let stats_id = record.stats_map_id?;
    for prog in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Ok(Some(ids)) = prog.map_ids() else {
            continue;
        };
        if !ids.contains(&stats_id) {
            continue;
        }
        for id in ids {
            let named = MapData::from_id(id)
                .ok()
                .and_then(|d| d.info().ok())
                .is_some_and(|i| {
                    let n = i.name_as_str().unwrap_or_default();
                    !n.is_empty() && map.starts_with(n)
                });
            if named {
                return Some(id);
            }
        }
    }
    None
}

/// The config the running daemon of `name` applies now (`GET /v1/config`), parsed with the
/// config code the daemon uses.
pub fn applied_config(name: &str) -> Result<Config, ViewError> {
    let api = |reason: String| ViewError::Api {
        name: name.to_string(),
        reason,
    };
    let (status, body) =
        crate::api::call(name, "GET", "/v1/config", None).map_err(|e| api(format!("{e:#}")))?;
    if status != 200 {
        return Err(api(format!("{status}: {body}")));
    }
    let text = body
        .get("toml")
        .and_then(|t| t.as_str())
        .ok_or_else(|| api(format!("no \"toml\" in the answer: {body}")))?;
    config::parse(text, &format!("the config of instance {name}")).map_err(|source| {
        ViewError::Config {
            name: name.to_string(),
            source: Box::new(source),
        }
    })
}

/// What describes a service, as the listings name it (`list` shows it as it is).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSummary {
    pub name: String,
    pub vip: String,
    pub protocol: String,
    pub forwarding: String,
    pub scheduler: String,
    pub when_all_down: String,
    pub flow_state: String,
    /// The health check's type, when the service has one (unknown without a daemon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<String>,
}

/// One service as `list` and `flows` read it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceFacts {
    #[serde(flatten)]
    pub summary: ServiceSummary,
    pub flow_idle_timeout_ns: u64,
    /// `Service::id` in the data plane.
    pub id: Option<u32>,
    pub backends: Vec<BackendFacts>,
}

/// One backend as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendFacts {
    pub address: String,
    pub weight: u16,
    pub drain: bool,
    /// "up" or "down" for a health-checked backend of a running daemon.
    pub health: Option<String>,
    /// Position in `BACKENDS_V1`; `None` while left out of the data plane.
    pub index: Option<u32>,
}

/// The services of a running daemon: its applied config, with the data plane's ids and the
/// health its state file reports.
pub fn facts_from_config(cfg: &Config, state: &InstanceState) -> Vec<ServiceFacts> {
    cfg.services
        .iter()
        .map(|svc| {
            let info = state.services.iter().find(|s| s.name == svc.name);
            ServiceFacts {
                summary: ServiceSummary {
                    name: svc.name.clone(),
                    vip: svc.vip.to_string(),
                    protocol: svc.protocol.as_str().to_string(),
                    forwarding: svc.forwarding.as_str().to_string(),
                    scheduler: svc.scheduler.as_str().to_string(),
                    when_all_down: svc.when_all_down.as_str().to_string(),
                    flow_state: svc.flow_state.as_str().to_string(),
                    health_check: svc.health_check.as_ref().map(|h| h.kind.kind().to_string()),
                },
                flow_idle_timeout_ns: u64::try_from(svc.flow_idle_timeout.as_nanos())
                    .unwrap_or(u64::MAX),
                id: info.map(|i| i.id),
                backends: svc
                    .backends
                    .iter()
                    .map(|b| {
                        let address = b.address.to_string();
                        let live =
                            info.and_then(|i| i.backends.iter().find(|x| x.address == address));
                        BackendFacts {
                            weight: b.weight,
                            drain: b.drain,
                            health: live.and_then(|l| l.health.clone()),
                            index: live.and_then(|l| l.index),
                            address,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The services as the pinned data plane holds them (no daemon: no config, no health).
pub fn facts_from_plans(plans: &[ServicePlan]) -> Vec<ServiceFacts> {
    plans
        .iter()
        .map(|plan| {
            let s = &plan.service;
            let forwarding = (s.flags & SERVICE_FORWARDING_MASK) >> SERVICE_FORWARDING_SHIFT;
            let name_of = |found: Option<&'static str>, code: u32| {
                found.map_or_else(|| format!("unknown ({code})"), str::to_string)
            };
            ServiceFacts {
                summary: ServiceSummary {
                    name: plan.name.clone(),
                    vip: plan.vip.to_string(),
                    protocol: config::Protocol::ALL
                        .iter()
                        .find(|p| p.code() == plan.key.proto)
                        .map_or_else(|| plan.key.proto.to_string(), |p| p.as_str().to_string()),
                    forwarding: name_of(
                        config::Forwarding::ALL
                            .iter()
                            .find(|f| f.code() == forwarding)
                            .map(|f| f.as_str()),
                        forwarding,
                    ),
                    scheduler: name_of(
                        config::Scheduler::ALL
                            .iter()
                            .find(|x| x.code() == s.scheduler)
                            .map(|x| x.as_str()),
                        s.scheduler,
                    ),
                    when_all_down: if s.flags & SERVICE_FLAG_PASS_WHEN_EMPTY != 0 {
                        config::WhenAllDown::Pass
                    } else {
                        config::WhenAllDown::Drop
                    }
                    .as_str()
                    .to_string(),
                    flow_state: if s.flags & SERVICE_FLAG_STATE_ON_SECOND_PACKET != 0 {
                        config::FlowState::SecondPacket
                    } else {
                        config::FlowState::FirstPacket
                    }
                    .as_str()
                    .to_string(),
                    health_check: None,
                },
                flow_idle_timeout_ns: s.flow_idle_timeout_ns,
                id: Some(s.id),
                backends: plan
                    .backends
                    .iter()
                    .map(|(index, b, address)| BackendFacts {
                        address: address.to_string(),
                        weight: b.weight,
                        drain: b.flags & BACKEND_FLAG_DRAINING != 0,
                        health: None,
                        index: Some(*index),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The services of `view`: from the daemon's applied config while it runs, else from the
/// pinned data plane.
pub fn facts(view: &InstanceView) -> Result<Vec<ServiceFacts>, ViewError> {
    if view.running() {
        let cfg = applied_config(&view.state.instance)?;
        return Ok(facts_from_config(&cfg, &view.state));
    }
    Ok(view
        .record
        .as_ref()
        .map(|r| facts_from_plans(&r.state.services))
        .unwrap_or_default())
}
