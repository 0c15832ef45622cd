//! The control plane's core, with no I/O (quinn-proto's model: state in, decisions out).
//!
//! [`Core`] holds the config in force and the health bookkeeping, and turns each event the
//! daemon sees (a config read from the file, an API request, probe results) into a decision:
//! what to apply to the data plane, what to write to the file, what to answer. The shell
//! (`daemon::shell`) does the I/O those decisions need (reading and writing the file, the data
//! plane's maps, sockets, logs) and reports back with [`Core::commit`] once a new config is in
//! force. The pieces underneath are I/O-free too: validation ([`crate::config`]), the plan of an
//! API request ([`crate::api::plan`]), the reconciler's diff (`dataplane::reconcile`, behind its
//! `MapWriter`) and the health thresholds ([`HealthBook`]).

use serde_json::Value;

use crate::{
    api::{self, Plan, Request, Response},
    config::{Config, ConfigEdit},
    health::{HealthBook, HealthEvent, Transition},
};

/// The config in force and what the health checks found.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    book: HealthBook,
}

/// What a config read from the file (a reload) leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigRead {
    /// Apply this (the new config with unhealthy backends drained or left out), then
    /// [`Core::commit`] the new config.
    Apply(Config),
    /// Refused whole: `field` changed, which takes a restart.
    NeedsRestart { field: &'static str },
}

/// What an API request leads to.
#[derive(Debug)]
pub enum ApiStep {
    /// Answer this; nothing changes.
    Answer(Response),
    /// Answer with the daemon's live status (counters, health), which the shell reads.
    Status,
    /// Answer with what the node announces, which the shell knows.
    Node,
    /// A validated change: write `edit` to the file, apply `effective`, then [`Core::commit`]
    /// `next` and answer `answer`. If any step fails, nothing is committed.
    Change(Box<Change>),
}

/// A validated API change, for the shell to persist and apply.
#[derive(Debug)]
pub struct Change {
    /// The config once the change is in force.
    pub next: Config,
    /// `next` with unhealthy backends drained or left out: what the data plane gets.
    pub effective: Config,
    /// The edit of the operator's file.
    pub edit: ConfigEdit,
    /// What changed, for the log and errors.
    pub what: String,
    /// The answer once applied.
    pub answer: Value,
}

/// What probe results lead to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Backends that went up or down, with why (for the log).
    pub transitions: Vec<Transition>,
    /// The config to apply when any backend went up or down.
    pub apply: Option<Config>,
}

impl Core {
    pub fn new(cfg: Config) -> Self {
        Core {
            cfg,
            book: HealthBook::default(),
        }
    }

    /// The config in force, as the operator wrote it.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn health(&self) -> &HealthBook {
        &self.book
    }

    /// The config in force with unhealthy backends drained or left out, as their policy says.
    pub fn effective(&self) -> Config {
        self.book.effective(&self.cfg)
    }

    /// The file was read again (a reload): what to apply, or why not. Settings that the
    /// running data plane and listeners were built with take a restart.
    pub fn config_read(&self, next: &Config) -> ConfigRead {
        let current = &self.cfg;
        let restart_only = [
            ("interfaces", next.interfaces != current.interfaces),
            ("xdp_mode", next.xdp_mode != current.xdp_mode),
            ("debug_log", next.debug_log != current.debug_log),
            ("[limits]", next.limits != current.limits),
            (
                "metrics_listen",
                next.metrics_listen != current.metrics_listen,
            ),
            ("api_listen", next.api_listen != current.api_listen),
        ];
        match restart_only.iter().find(|(_, changed)| *changed) {
            Some((field, _)) => ConfigRead::NeedsRestart { field },
            None => ConfigRead::Apply(self.book.effective(next)),
        }
    }

    /// An API request: a read answered from the config, or a change validated whole against
    /// the config in force (every rule of the file), not yet applied.
    pub fn api_request(&self, req: &Request) -> ApiStep {
        match api::plan(req, &self.cfg) {
            Err(response) => ApiStep::Answer(response),
            Ok(Plan::Read(body)) => ApiStep::Answer(Response::ok(body)),
            Ok(Plan::Status) => ApiStep::Status,
            Ok(Plan::Node) => ApiStep::Node,
            Ok(Plan::Change {
                next,
                edit,
                what,
                answer,
            }) => ApiStep::Change(Box::new(Change {
                effective: self.book.effective(&next),
                next,
                edit,
                what,
                answer,
            })),
        }
    }

    /// Probe results that arrived together. Results for what the config no longer checks
    /// (probes from before a reload may still report) are ignored.
    pub fn probes(&mut self, events: impl IntoIterator<Item = HealthEvent>) -> ProbeOutcome {
        let mut transitions = Vec::new();
        for ev in events {
            let Some(hc) = self
                .cfg
                .services
                .iter()
                .find(|s| {
                    s.name == ev.service && s.backends.iter().any(|b| b.address == ev.backend)
                })
                .and_then(|s| s.health_check.as_ref())
            else {
                continue;
            };
            if let Some(t) = self.book.record(&ev, hc) {
                transitions.push(t);
            }
        }
        let apply = (!transitions.is_empty()).then(|| self.book.effective(&self.cfg));
        ProbeOutcome { transitions, apply }
    }

    /// `next` is in force (applied after [`ConfigRead::Apply`] or an [`ApiStep::Change`]). The
    /// health of backends it no longer checks is forgotten; the shell restarts the probes.
    pub fn commit(&mut self, next: Config) {
        self.cfg = next;
        self.book.retain_checked(&self.cfg);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::{self, default_config};

    fn checked() -> Config {
        config::parse(
            r#"
interfaces = ["lo"]
[[service]]
name = "s"
vip = "127.0.0.1:9875"
[service.health_check]
type = "tcp"
rise = 1
fall = 2
on_failure = "move-flows"
[[service.backend]]
address = "127.0.0.1:9876"
[[service.backend]]
address = "127.0.0.1:9877"
"#,
            "test",
        )
        .expect("valid")
    }

    fn result(backend: &str, ok: bool) -> HealthEvent {
        HealthEvent {
            service: "s".into(),
            backend: backend.parse::<SocketAddr>().expect("address"),
            ok,
            detail: if ok { "ok".into() } else { "refused".into() },
        }
    }

    #[test]
    fn a_reload_that_changes_a_restart_only_setting_is_refused_and_others_apply() {
        let core = Core::new(default_config());
        let mut next = default_config();
        next.services[0].backends.pop();
        assert_eq!(core.config_read(&next), ConfigRead::Apply(next.clone()));
        type Change = fn(&mut Config);
        let changes: [(&str, Change); 6] = [
            ("interfaces", |c| c.interfaces.push("eth9".into())),
            ("xdp_mode", |c| c.xdp_mode = config::XdpModeSetting::Generic),
            ("debug_log", |c| c.debug_log = !c.debug_log),
            ("[limits]", |c| c.limits.max_flows *= 2),
            ("metrics_listen", |c| {
                c.metrics_listen = Some("127.0.0.1:9100".parse().expect("addr"));
            }),
            ("api_listen", |c| {
                c.api_listen = Some("127.0.0.1:9180".parse().expect("addr"));
            }),
        ];
        for (field, change) in changes {
            let mut next = default_config();
            change(&mut next);
            assert_eq!(
                core.config_read(&next),
                ConfigRead::NeedsRestart { field },
                "{field}"
            );
        }
    }

    #[test]
    fn probe_results_past_the_threshold_take_a_backend_out_and_stale_ones_are_ignored() {
        let mut core = Core::new(checked());
        // One failure is below fall = 2: nothing to apply.
        assert_eq!(
            core.probes([result("127.0.0.1:9876", false)]),
            ProbeOutcome::default()
        );
        // A result for a backend the config does not have (a probe from before a reload).
        assert_eq!(
            core.probes([
                result("127.0.0.1:9999", false),
                result("127.0.0.1:9999", false)
            ]),
            ProbeOutcome::default()
        );
        let out = core.probes([result("127.0.0.1:9876", false)]);
        assert_eq!(out.transitions.len(), 1);
        assert!(!out.transitions[0].up);
        let apply = out.apply.expect("a transition applies");
        // move-flows: the down backend is left out of what the data plane gets.
        let addresses: Vec<String> = apply.services[0]
            .backends
            .iter()
            .map(|b| b.address.to_string())
            .collect();
        assert_eq!(addresses, ["127.0.0.1:9877"]);
        assert_eq!(core.effective(), apply);
        // rise = 1: one success brings it back.
        let out = core.probes([result("127.0.0.1:9876", true)]);
        assert!(out.transitions[0].up);
        assert_eq!(out.apply.expect("applies").services[0].backends.len(), 2);
    }

    #[test]
    fn committing_a_config_without_the_check_forgets_the_health_it_found() {
        let mut core = Core::new(checked());
        core.probes([
            result("127.0.0.1:9876", false),
            result("127.0.0.1:9876", false),
        ]);
        assert!(
            !core
                .health()
                .is_up("s", "127.0.0.1:9876".parse().expect("addr"))
        );
        let mut next = checked();
        next.services[0].health_check = None;
        core.commit(next.clone());
        assert_eq!(core.config(), &next);
        assert_eq!(core.effective(), next, "no check: every backend is in");
        let addr = "127.0.0.1:9876".parse().expect("addr");
        assert!(
            core.health().get("s", addr).is_none(),
            "its health is forgotten"
        );
        // The check back: the backend starts up again, not down as it was.
        core.commit(checked());
        assert!(core.health().is_up("s", addr));
        assert_eq!(core.effective().services[0].backends.len(), 2);
    }

    #[test]
    fn api_changes_come_back_validated_with_their_effective_config() {
        let mut core = Core::new(checked());
        core.probes([
            result("127.0.0.1:9877", false),
            result("127.0.0.1:9877", false),
        ]);
        let req = Request {
            method: "POST".into(),
            path: "/v1/services/s/backends".into(),
            body: br#"{"address": "127.0.0.1:9878"}"#.to_vec(),
        };
        let ApiStep::Change(change) = core.api_request(&req) else {
            panic!("a valid change");
        };
        assert_eq!(change.next.services[0].backends.len(), 3);
        // The down backend stays out of what is applied, the new one is in.
        let applied: Vec<String> = change.effective.services[0]
            .backends
            .iter()
            .map(|b| b.address.to_string())
            .collect();
        assert_eq!(applied, ["127.0.0.1:9876", "127.0.0.1:9878"]);
        // Nothing is committed by planning.
        assert_eq!(core.config().services[0].backends.len(), 2);

        let bad = Request {
            method: "POST".into(),
            path: "/v1/services/s/backends".into(),
            body: br#"{"address": "127.0.0.1:9876"}"#.to_vec(),
        };
        let ApiStep::Answer(response) = core.api_request(&bad) else {
            panic!("a duplicate backend is refused");
        };
        assert_eq!(response.status, 409);
    }
}
