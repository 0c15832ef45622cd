//! The daemon's loop: one `tokio::select!` over signals, API requests, health results and
//! timers. It alone owns config and data plane, so every change is applied in one place, one
//! at a time.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    time::MissedTickBehavior,
};
use tracing::{info, warn};

use super::{
    change::{persist_and_apply, status},
    reload::reload,
    resolve_neighbours,
    state::{any_native, instance_state, sample_veths},
    stop::Stop,
};
use crate::{
    api, config,
    control::{ApiStep, Change, Core},
    dataplane::{self, Dataplane},
    health::{self, HealthEvent},
    http::Readiness,
    instance::{self, InstanceState},
    metrics::MetricsState,
    nexthop::NextHopCache,
    veth::{VethEvent, VethWatch},
};

/// How often the veths are sampled for drops, and idle fullnat ports freed.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the data plane's debug log (`debug_log`) is flushed to ours.
const FLUSH_LOGS_EVERY: Duration = Duration::from_millis(100);

/// The signals the daemon handles, installed before start-up so that one arriving then is
/// handled too (it waits in its stream until the loop runs).
pub(super) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    /// Must be called inside the tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// What the loop owns.
pub(super) struct Shell<'a> {
    pub dp: Dataplane,
    /// The config in force and the health book: the decisions, with no I/O.
    pub core: Core,
    /// The operator's config file; `None` for the built-in config.
    pub config_file: Option<config::ConfigFile>,
    pub instance: &'a str,
    pub origin: String,
    pub attached: Vec<dataplane::AttachedInterface>,
    pub checkers: health::Checkers,
    /// A health change that the data plane refused, retried every second.
    pub health_apply_pending: bool,
    pub health_tx: mpsc::UnboundedSender<HealthEvent>,
    pub state: InstanceState,
    /// What a metrics scrape sees; written by [`Shell::publish`] only.
    pub metrics: Arc<Mutex<MetricsState>>,
    pub ready: watch::Sender<Readiness>,
    pub veths: VethWatch,
    pub veth_warned: BTreeMap<String, Instant>,
    /// The next-hop cache; `None` when route events cannot be watched (then it stays empty).
    pub next_hops: Option<NextHopCache>,
    /// The VIP routes handed to the BGP speaker (`[announce]`).
    pub announcer: crate::announce::Announcer,
}

/// What one turn of the loop changed, for [`Shell::publish`].
#[derive(Default)]
struct Turn {
    publish: bool,
    /// Whether a config apply was attempted in this turn: applied or not, and the seconds it took.
    applied_in: Option<(bool, f64)>,
}

impl Shell<'_> {
    /// Serves until a stop signal; returns which.
    pub async fn run(
        &mut self,
        signals: &mut Signals,
        api_rx: &mut mpsc::Receiver<(api::Request, oneshot::Sender<api::Response>)>,
        health_rx: &mut mpsc::UnboundedReceiver<HealthEvent>,
        next_hop_rx: &mut mpsc::UnboundedReceiver<()>,
    ) -> Stop {
        let mut veth_tick = interval(SAMPLE_EVERY);
        let mut sweep_tick = interval(SAMPLE_EVERY);
        let mut log_tick = interval(FLUSH_LOGS_EVERY);
        loop {
            let turn = tokio::select! {
                // Stops first: a stop and a reload together stop.
                biased;
                _ = signals.int.recv() => return Stop::Signal("SIGINT"),
                _ = signals.term.recv() => return Stop::Signal("SIGTERM"),
                _ = signals.usr2.recv() => return Stop::HandOver,
                _ = signals.hup.recv() => self.on_hangup(),
                Some((req, reply)) = api_rx.recv() => self.on_api(&req, reply),
                Some(first) = health_rx.recv() => {
                    // What else arrived with it is applied in the same go.
                    let mut events = vec![first];
                    while let Ok(ev) = health_rx.try_recv() {
                        events.push(ev);
                    }
                    self.on_health(events)
                }
                changed = next_hop_rx.recv(), if self.next_hops.is_some() => {
                    if changed.is_some() {
                        self.refresh_next_hops();
                    } else {
                        self.stop_next_hops();
                    }
                    Turn::default()
                }
                _ = veth_tick.tick() => self.on_veth_sample(),
                _ = sweep_tick.tick() => {
                    self.sweep_fullnat();
                    // Removed backends' reply translations, once their grace ended.
                    if let Err(e) = self.dp.retire_expired(Instant::now()) {
                        warn!("removing the reply translations of removed backends failed: {e} (retried every second)");
                    }
                    // Repairs routes someone removed from the table, retries a failed reconcile.
                    let before = self.state.announce.clone();
                    self.announce();
                    let announce_changed = self.state.announce != before;
                    // A health change that failed to apply is retried here; once it is in the
                    // data plane, the state file (backend positions, table fingerprints) says so.
                    let retried = self.health_apply_pending;
                    if retried {
                        let effective = self.core.effective();
                        self.apply_health(&effective);
                    }
                    Turn {
                        publish: (retried && !self.health_apply_pending) || announce_changed,
                        ..Turn::default()
                    }
                }
                _ = log_tick.tick() => {
                    self.dp.flush_logs();
                    Turn::default()
                }
            };
            if turn.publish {
                self.publish(turn.applied_in);
            }
        }
    }

    /// SIGHUP: re-read the config file and apply it, or keep the running one.
    fn on_hangup(&mut self) -> Turn {
        let started = Instant::now();
        // systemd (v253+) wants the reload's CLOCK_MONOTONIC time with RELOADING=1.
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => super::notify_systemd(&[sd_notify::NotifyState::Reloading, now]),
            Err(e) => warn!("reading CLOCK_MONOTONIC for systemd: {e}"),
        }
        let outcome = reload(&mut self.dp, self.config_file.as_mut(), &mut self.core);
        let applied_in = Some(match &outcome {
            Ok(r) => (true, r.apply_seconds),
            Err(_) => (false, started.elapsed().as_secs_f64()),
        });
        let mut changes = Vec::new();
        let outcome = outcome.map(|r| {
            changes = r.changes;
            r.message
        });
        self.state.reloads += 1;
        match &outcome {
            Ok(msg) => {
                self.state.generation += 1;
                info!(
                    reload = self.state.reloads,
                    generation = self.state.generation,
                    changes = %changes.join("; "),
                    "{msg}"
                );
                self.restart_checkers();
                self.health_apply_pending = false;
                self.ready.send_replace(Readiness::Ready);
            }
            Err(e) => warn!(
                reload = self.state.reloads,
                "reload rejected, the data plane is unchanged: {e:#}"
            ),
        }
        // Applied or rejected, the daemon runs on (the outcome is in the state file, which
        // `xdplb reload`, systemd's ExecReload, reads).
        super::notify_systemd(&[sd_notify::NotifyState::Ready]);
        self.state.last_reload = Some(instance::ReloadOutcome {
            ok: outcome.is_ok(),
            changes,
            message: match outcome {
                Ok(m) => m,
                Err(e) => format!("{e:#}"),
            },
        });
        Turn {
            publish: true,
            applied_in,
        }
    }

    /// One API request, answered here because this loop owns config and data plane.
    fn on_api(&mut self, req: &api::Request, reply: oneshot::Sender<api::Response>) -> Turn {
        let started = Instant::now();
        let mut turn = Turn::default();
        let response = match self.core.api_request(req) {
            ApiStep::Answer(response) => response,
            ApiStep::Status => status(&self.state),
            ApiStep::Node => self.node_status(),
            // The server answered 503 after waiting `http::ANSWER_TIMEOUT` for this loop: a
            // change the client was told did not happen must not happen later.
            ApiStep::Change(change) if reply.is_closed() => {
                warn!(
                    "API: {}: not applied: the client was answered 503 (the daemon was busy) before this loop reached it",
                    change.what
                );
                return turn;
            }
            ApiStep::Change(change) => {
                match persist_and_apply(&change, &mut self.dp, self.config_file.as_mut()) {
                    Ok(()) => {
                        let drain = matches!(change.edit, config::ConfigEdit::SetDrained(_));
                        let Change {
                            next, what, answer, ..
                        } = *change;
                        info!(generation = self.state.generation + 1, "API: {what}");
                        self.core.commit(next);
                        // A drain or undrain answers with the routes as the kernel has them now.
                        let answer = if drain {
                            self.announce();
                            self.node_status().body
                        } else {
                            answer
                        };
                        self.state.generation += 1;
                        turn.applied_in = Some((true, started.elapsed().as_secs_f64()));
                        self.restart_checkers();
                        self.health_apply_pending = false;
                        self.ready.send_replace(Readiness::Ready);
                        turn.publish = true;
                        api::Response::ok(answer)
                    }
                    Err(refused) => {
                        if refused.apply_failed {
                            turn.applied_in = Some((false, started.elapsed().as_secs_f64()));
                            turn.publish = true;
                        }
                        refused.response
                    }
                }
            }
        };
        // The client may have gone since; the change stands either way.
        let _ = reply.send(response);
        turn
    }

    fn on_health(&mut self, events: Vec<HealthEvent>) -> Turn {
        let outcome = self.core.probes(events);
        for t in &outcome.transitions {
            let (service, backend, reason) = (&t.service, t.backend, &t.reason);
            if t.up {
                info!(service, %backend, reason, "backend is up");
            } else {
                warn!(service, %backend, reason, "backend is down");
            }
        }
        let changed = outcome.apply.is_some();
        if let Some(effective) = outcome.apply {
            self.apply_health(&effective);
        }
        Turn {
            publish: changed,
            applied_in: None,
        }
    }

    /// Applies what the health book says. A failure is retried every second (the book already
    /// holds the transition, so no later probe result would bring it again), and `/readyz`
    /// says why until it succeeds.
    fn apply_health(&mut self, effective: &config::Config) {
        match self.dp.apply_config(effective) {
            Ok(()) => {
                self.health_apply_pending = false;
                self.ready.send_replace(Readiness::Ready);
            }
            Err(e) => {
                warn!("applying a health change failed (retried every second): {e}");
                self.health_apply_pending = true;
                self.ready.send_replace(Readiness::NotReady(format!(
                    "applying a health change failed: {e}"
                )));
            }
        }
    }

    /// The health checks of the config now in force; dropping the old checkers stops them.
    /// When the config checks the same backends the same way, the probes keep running: a
    /// restart would cancel checks under way, and a stream of API changes could then keep a
    /// dead backend's failures from ever being counted.
    fn restart_checkers(&mut self) {
        if health::checked(self.core.config()) == self.checkers.checks() {
            return;
        }
        self.checkers = health::start(self.core.config(), &self.health_tx);
    }

    /// Frames redirected onto a veth whose peer cannot take them are lost where XDP cannot see
    /// it (see `veth`): warn, and report it in the state file.
    fn on_veth_sample(&mut self) -> Turn {
        let sample = match sample_veths(any_native(&self.state.interfaces)) {
            Ok(sample) => sample,
            Err(e) => {
                tracing::debug!("sampling the veths: {e}");
                return Turn::default();
            }
        };
        for event in self.veths.update(&sample) {
            if let VethEvent::Dropped { interface, .. } = &event {
                // Growing drops are repeated at most once a minute.
                if self
                    .veth_warned
                    .get(interface)
                    .is_some_and(|t| t.elapsed() < Duration::from_mins(1))
                {
                    continue;
                }
                self.veth_warned.insert(interface.clone(), Instant::now());
            }
            warn!("{}", event.message());
        }
        let mut turn = Turn::default();
        if self.state.veths != self.veths.report {
            self.state.veths = self.veths.report.clone();
            turn.publish = true;
        }
        turn
    }

    /// fullnat ports of flows that idled out are freed once a second.
    fn sweep_fullnat(&mut self) {
        if !self
            .core
            .config()
            .services
            .iter()
            .any(|s| s.forwarding == config::Forwarding::FullNat)
        {
            return;
        }
        match self.dp.sweep_fullnat() {
            Ok(0) => {}
            Ok(n) => tracing::debug!(released = n, "fullnat ports of idle flows freed"),
            Err(e) => warn!("sweeping fullnat translations failed: {e}"),
        }
    }

    /// Brings the next-hop cache to the backends the data plane holds and the routes and
    /// neighbours the kernel holds now. A failure empties the cache (every backend then takes
    /// bpf_fib_lookup) until the next event or change.
    pub fn refresh_next_hops(&mut self) {
        let Some(cache) = self.next_hops.as_mut() else {
            return;
        };
        if let Err(e) = cache.refresh(&mut self.dp) {
            warn!(
                "next-hop cache: resolving the backends failed ({e}); emptied until the next change"
            );
            if let Err(e) = cache.clear(&mut self.dp) {
                warn!("next-hop cache: emptying it failed: {e}");
            }
        }
    }

    /// The route watcher stopped: the cache can no longer follow changes, so it goes.
    fn stop_next_hops(&mut self) {
        if let Some(mut cache) = self.next_hops.take() {
            warn!(
                "next-hop cache: route events are no longer watched; emptied, every remote backend's packets take bpf_fib_lookup"
            );
            if let Err(e) = cache.clear(&mut self.dp) {
                warn!("next-hop cache: emptying it failed: {e}");
            }
        }
    }

    /// Whether every interface start-up attached still runs an XDP program, as the kernel says
    /// now (checked, not assumed: someone may have detached it or removed the interface). Any
    /// program counts: a `--replace` successor swaps its own in while this daemon still runs.
    fn data_plane_attached(&self) -> bool {
        !self.attached.is_empty()
            && self
                .attached
                .iter()
                .all(|a| crate::netlink::link(&a.name).is_ok_and(|l| l.xdp_prog_id != 0))
    }

    /// Brings the announced VIP routes to what the config, the health book and the drain say
    /// (and whether the data plane is still attached), and records the outcome in the state.
    pub fn announce(&mut self) {
        let attached = self.data_plane_attached();
        let plan = crate::announce::plan(self.core.config(), self.core.health(), attached);
        self.announcer.reconcile(self.instance, plan);
        self.state.announce = self.announcer.last.clone();
    }

    /// `GET /v1/node` (and the answer to a drain or undrain): what the node announces, and
    /// whether the kernel table holds exactly that now (`in_table`).
    fn node_status(&self) -> api::Response {
        let Some(plan) = &self.announcer.last else {
            return api::Response::ok(serde_json::json!({ "configured": false }));
        };
        let in_table = self.announcer.confirmed();
        api::Response::ok(serde_json::json!({
            "configured": true,
            "drained": plan.drained,
            "table": plan.table,
            "vips": plan.vips,
            "skipped": plan.skipped,
            "in_table": in_table.as_ref().ok(),
            "error": self.announcer.error.clone().or(in_table.err()),
        }))
    }

    /// Writes what changed to the state file and to what metrics scrapes see.
    pub fn publish(&mut self, applied_in: Option<(bool, f64)>) {
        self.announce();
        resolve_neighbours(self.core.config());
        // The backend set may have changed.
        self.refresh_next_hops();
        if let Ok(fresh) = instance_state(
            &self.dp,
            self.core.config(),
            self.core.health(),
            self.instance,
            &self.origin,
            self.attached.clone(),
        ) {
            self.state.services = fresh.services;
        }
        if let Err(e) = instance::write(&self.state) {
            warn!("could not update the state file: {e}");
        }
        let mut m = match self.metrics.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.instance = self.state.clone();
        if let Some((ok, seconds)) = applied_in {
            m.applied(ok, seconds, self.state.generation);
        }
    }
}

/// A timer whose first tick is one `period` from now, and which does not burst after the
/// loop was busy.
fn interval(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}
