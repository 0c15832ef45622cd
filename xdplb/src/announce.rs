//! Announcing the VIPs: xdplb decides what is announced and when; a BGP speaker (BIRD 2) speaks
//! BGP.
//!
//! The hand-off is a kernel routing table of its own (`[announce] table`): while a VIP should
//! attract traffic, the daemon keeps `blackhole VIP/32 table TABLE proto 250` in it, and BIRD's
//! `kernel` protocol (`kernel table TABLE; learn;`) learns that table and exports it over BGP.
//! The table is only a list handed over: no `ip rule` points at it, so the blackhole never
//! routes a packet here (and BIRD's eBGP export sets the next hop to itself). The kernel keeps
//! the routes when the daemon is replaced or restarted, as it keeps the pinned data plane.
//!
//! A VIP is announced while all of these hold:
//! - the daemon has the data plane attached (it reconciles only from then on);
//! - one of the services on that VIP address takes new flows: a backend is healthy, undrained
//!   (what makes its scheduling table non-empty), or its `when_all_down = "pass"` hands them to
//!   the local stack. Several services on one address: announced while ANY of them qualifies,
//!   since one route attracts the traffic of all of them;
//! - the node is not drained (`[announce] drained`).
//!
//! Wildcard VIPs (`0.0.0.0:PORT`) are never announced: they have no address to route.
//!
//! [`plan`] decides (no I/O); [`Announcer::reconcile`] brings the kernel table to it.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    config::{Config, WhenAllDown},
    health::HealthBook,
    instance, netlink,
};

/// The routing protocol number (`rtm_protocol`) of xdplb's VIP routes. Values up to 255 are
/// free for user space; 250 is not in iproute2's `rt_protos` nor used by BIRD (12), FRR
/// (186-196) or keepalived (18). It marks the routes the daemon owns in the table: it adds,
/// withdraws and repairs only routes of this protocol.
pub const RTPROT_XDPLB: u8 = 250;

/// One VIP address and whether it should be announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipPlan {
    pub vip: Ipv4Addr,
    pub announced: bool,
    /// Why (announced or not), for the log, `xdplb node status` and `xdplb check`.
    pub reason: String,
    /// The services on this address.
    pub services: Vec<String>,
    /// What decides whether the services on this address take new flows: their backends as
    /// the health book and the drains leave them. A change restarts the hold-down.
    #[serde(skip)]
    pub signature: String,
    /// How long [`signature`](Self::signature) must hold still before a withdrawn VIP is
    /// announced again (see [`Holds`]).
    #[serde(skip)]
    pub hold: Duration,
    /// How long a VIP this daemon finds unannounced waits before it is first announced: time
    /// for its health checks to report (see [`Holds`]).
    #[serde(skip)]
    pub settle: Duration,
}

/// What should be in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub table: u32,
    pub drained: bool,
    /// One entry per distinct VIP address, in address order.
    pub vips: Vec<VipPlan>,
    /// Services that are never announced (wildcard VIP), with why.
    pub skipped: Vec<String>,
}

impl Plan {
    pub fn announced(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.vips.iter().filter(|v| v.announced).map(|v| v.vip)
    }
}

/// Why service `svc` of the effective config (unhealthy backends drained or left out) takes
/// new flows, or why not.
fn service_verdict(svc: &crate::config::ServiceConfig) -> (bool, String) {
    let name = &svc.name;
    // Weights are 1..=65535, so an undrained backend always has table slots.
    if svc.backends.iter().any(|b| !b.drain) {
        return (
            true,
            format!("service {name} has a backend taking new flows"),
        );
    }
    match svc.when_all_down {
        WhenAllDown::Pass => (
            true,
            format!(
                "service {name} has no backend taking new flows but passes them to the local stack (when_all_down = \"pass\")"
            ),
        ),
        WhenAllDown::Drop => (
            false,
            format!("service {name} has no backend taking new flows (when_all_down = \"drop\")"),
        ),
    }
}

/// What should be announced for `cfg` with the health in `book`, with the data plane
/// `attached` or not. `None` without an `[announce]` section.
pub fn plan(cfg: &Config, book: &HealthBook, attached: bool) -> Option<Plan> {
    let announce = cfg.announce?;
    let effective = book.effective(cfg);
    let mut by_vip: BTreeMap<Ipv4Addr, Vec<(String, bool, String)>> = BTreeMap::new();
    let mut signatures: BTreeMap<Ipv4Addr, (String, Duration, Duration)> = BTreeMap::new();
    let mut skipped = Vec::new();
    for svc in &effective.services {
        let IpAddr::V4(ip) = svc.vip.ip() else {
            skipped.push(format!(
                "service {} has the IPv6 VIP {}, which [announce] does not announce (IPv4 routes only)",
                svc.name, svc.vip
            ));
            continue;
        };
        if ip.is_unspecified() {
            skipped.push(format!(
                "service {} has the wildcard VIP {}, which is never announced",
                svc.name, svc.vip
            ));
            continue;
        }
        let (ok, why) = service_verdict(svc);
        let (signature, hold, settle) =
            signatures
                .entry(ip)
                .or_insert((String::new(), Duration::ZERO, Duration::ZERO));
        let _ = write!(signature, "{}:", svc.name);
        for b in &svc.backends {
            let _ = write!(
                signature,
                "{}{},",
                b.address,
                if b.drain { "d" } else { "" }
            );
        }
        signature.push(';');
        if let Some(hc) = &svc.health_check {
            // Every backend that recovers with the first reports within one check (interval
            // plus timeout); a first verdict takes rise or fall checks.
            let one = hc.interval.saturating_add(hc.timeout);
            let first = hc
                .interval
                .saturating_mul(hc.rise.max(hc.fall))
                .saturating_add(hc.timeout);
            *hold = (*hold).max(one).max(MIN_HOLD);
            *settle = (*settle).max(first).max(MIN_HOLD);
        }
        by_vip
            .entry(ip)
            .or_default()
            .push((svc.name.clone(), ok, why));
    }
    let vips = by_vip
        .into_iter()
        .map(|(vip, services)| {
            let names = services.iter().map(|(n, _, _)| n.clone()).collect();
            let (signature, hold, settle) = signatures.remove(&vip).unwrap_or_default();
            let (announced, reason) = if !attached {
                (false, "the data plane is not attached".to_owned())
            } else if announce.drained {
                (false, "node drained".to_owned())
            } else if let Some((_, _, why)) = services.iter().find(|(_, ok, _)| *ok) {
                (true, why.clone())
            } else {
                let whys: Vec<&str> = services.iter().map(|(_, _, w)| w.as_str()).collect();
                (false, whys.join("; "))
            };
            VipPlan {
                vip,
                announced,
                reason,
                services: names,
                signature,
                hold,
                settle,
            }
        })
        .collect();
    Some(Plan {
        table: announce.table,
        drained: announce.drained,
        vips,
        skipped,
    })
}

/// The shortest hold-down of a health-checked VIP (see [`Holds`]).
const MIN_HOLD: Duration = Duration::from_secs(1);

/// Hold-down of announcements. A withdrawal is never held.
///
/// - Again after a withdrawal: a node cut off from its backends sees every health check fail
///   and withdraws; when it is back, the checks recover one by one, milliseconds apart.
///   Announced at the first recovery, the node would attract flows while its scheduling table
///   holds one backend instead of all (unlike every other node's), and their entries would pin
///   the wrong backends. So a withdrawn VIP is announced again only once what decides it (its
///   services' backends, as health and drains leave them: [`VipPlan::signature`]) has not
///   changed for [`VipPlan::hold`]: one check (interval plus timeout) of its services, at least
///   [`MIN_HOLD`].
/// - First: a VIP this daemon finds missing from the table (a fresh start, a predecessor that
///   had withdrawn it, a service just added) waits [`VipPlan::settle`], the time its checks
///   take to reach a first verdict (a starting daemon counts its backends healthy until then),
///   and then holds still as above. A VIP found in the table (a restart or an upgrade: the
///   predecessor's announcement) stays announced.
/// - Not held: an announced VIP (a backend going down keeps it announced while another takes
///   new flows), a VIP without health checks (both durations zero), and an undrain.
#[derive(Debug, Default)]
pub struct Holds {
    seen: BTreeMap<Ipv4Addr, Seen>,
}

#[derive(Debug)]
struct Seen {
    /// The last signature seen.
    signature: String,
    /// When it last changed, or when the VIP was first seen missing from the table.
    changed: Option<Instant>,
    /// Not announced yet by this daemon and missing from the table when first seen: it waits
    /// `settle` rather than `hold`.
    settling: bool,
}

impl Holds {
    /// Marks as not announced (with why) every VIP of `plan` that would be announced now
    /// while held. `previous` is the plan reconciled last (`None` at start); `in_table` lists
    /// the VIPs in the kernel table, asked only when a VIP is first seen.
    pub fn apply(
        &mut self,
        plan: &mut Plan,
        previous: Option<&Plan>,
        now: Instant,
        in_table: &dyn Fn() -> Vec<Ipv4Addr>,
    ) {
        let mut listed: Option<Vec<Ipv4Addr>> = None;
        let drain_lifted = previous.is_some_and(|p| p.drained) && !plan.drained;
        for v in &mut plan.vips {
            let seen = match self.seen.entry(v.vip) {
                std::collections::btree_map::Entry::Occupied(e) => {
                    let seen = e.into_mut();
                    if seen.signature != v.signature {
                        seen.signature.clone_from(&v.signature);
                        seen.changed = Some(now);
                    }
                    seen
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    let missing = !listed.get_or_insert_with(in_table).contains(&v.vip);
                    e.insert(Seen {
                        signature: v.signature.clone(),
                        changed: missing.then_some(now),
                        settling: missing,
                    })
                }
            };
            let was_announced = previous
                .and_then(|p| p.vips.iter().find(|p| p.vip == v.vip))
                .map_or(!seen.settling, |p| p.announced);
            if !v.announced {
                continue;
            }
            let wait = if seen.settling { v.settle } else { v.hold };
            if !was_announced
                && !drain_lifted
                && let Some(at) = seen.changed
            {
                let quiet = now.saturating_duration_since(at);
                if quiet < wait {
                    v.announced = false;
                    v.reason = format!(
                        "held down: its backends' health changed {:.1} s ago; announced once it holds still for {:.1} s ({})",
                        quiet.as_secs_f64(),
                        wait.as_secs_f64(),
                        v.reason
                    );
                    continue;
                }
            }
            seen.settling = false;
        }
        self.seen
            .retain(|vip, _| plan.vips.iter().any(|v| v.vip == *vip));
    }
}

/// What `xdplb check` says about `[announce]`: the table and what a healthy, attached node
/// would announce (nothing without the section).
pub fn describe(cfg: &Config) -> String {
    let Some(p) = plan(cfg, &HealthBook::default(), true) else {
        return "announce: off (no [announce] section): no VIP route is installed\n".to_owned();
    };
    let mut out = format!(
        "announce: table {} (blackhole VIP/32 routes of protocol {RTPROT_XDPLB}){}\n",
        p.table,
        if p.drained {
            "; the node is drained: nothing is announced"
        } else {
            ""
        }
    );
    for v in &p.vips {
        let _ = writeln!(
            out,
            "  {}/32 ({}): {}",
            v.vip,
            v.services.join(", "),
            if v.announced {
                "announced while a service on it takes new flows"
            } else {
                &v.reason
            }
        );
    }
    for s in &p.skipped {
        let _ = writeln!(out, "  {s}");
    }
    out
}

/// What the daemon leaves next to the pin record so that `xdplb stop` can withdraw the routes
/// when no daemon is left to do it: `RUN_DIR/NAME.announce.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub table: u32,
    /// The network namespace the routes are in (`net:[INODE]`), so that a `stop` run
    /// elsewhere does not touch another namespace's table.
    pub net_ns: Option<String>,
}

pub fn record_path(instance: &str) -> PathBuf {
    instance::run_dir().join(format!("{instance}.announce.json"))
}

fn own_net_ns() -> Option<String> {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|l| l.display().to_string())
}

/// Withdraws every route of the instance's record and removes the record (the data plane is
/// gone for good). Returns what was withdrawn, or why nothing could be.
pub fn withdraw_recorded(instance: &str) -> Result<Vec<String>, String> {
    let path = record_path(instance);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    let record: Record =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if record.net_ns.is_some() && record.net_ns != own_net_ns() {
        return Err(format!(
            "its VIP routes are in table {} of network namespace {}, not this one; run `xdplb stop` there to withdraw them (the record {} is kept)",
            record.table,
            record.net_ns.unwrap_or_default(),
            path.display()
        ));
    }
    let withdrawn = withdraw_all(record.table).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    Ok(withdrawn)
}

/// Removes every route of [`RTPROT_XDPLB`] from `table`; returns them as `VIP/32`.
fn withdraw_all(table: u32) -> Result<Vec<String>, netlink::NetlinkError> {
    let mut out = Vec::new();
    for vip in netlink::vip_routes(table, RTPROT_XDPLB)? {
        netlink::del_vip_route(table, RTPROT_XDPLB, vip)?;
        out.push(format!("{vip}/32"));
    }
    Ok(out)
}

/// The daemon's side: brings the kernel table to a [`Plan`] and remembers the table in use.
#[derive(Debug, Default)]
pub struct Announcer {
    /// The table routes were last reconciled into (a reload may move them).
    table: Option<u32>,
    /// The table a predecessor recorded, until the first reconcile.
    previous: Option<u32>,
    /// The last plan reconciled, for `xdplb node status` and the metrics.
    pub last: Option<Plan>,
    /// The last reconcile's failure, if it failed (retried on the next tick).
    pub error: Option<String>,
    /// Re-announcements held down while health settles.
    holds: Holds,
}

impl Announcer {
    /// The announcer of a daemon starting: the table its predecessor recorded (same network
    /// namespace), so that a config whose `table` changed, or lost its `[announce]` section,
    /// across the restart withdraws what the predecessor announced there.
    pub fn resume(instance: &str) -> Self {
        let table = std::fs::read_to_string(record_path(instance))
            .ok()
            .and_then(|t| serde_json::from_str::<Record>(&t).ok())
            .filter(|r| r.net_ns.is_none() || r.net_ns == own_net_ns())
            .map(|r| r.table);
        Announcer {
            previous: table,
            ..Announcer::default()
        }
    }

    /// Makes table `plan.table` hold exactly the announced VIPs of `plan` (routes of protocol
    /// [`RTPROT_XDPLB`]; others are not touched); withdraws everything from a previous table,
    /// or from the table in use when `plan` is `None` (the section was removed). Logs every
    /// announce and withdraw with the reason.
    pub fn reconcile(&mut self, instance: &str, mut plan: Option<Plan>) {
        if let Some(p) = plan.as_mut() {
            let table = p.table;
            let in_table = || netlink::vip_routes(table, RTPROT_XDPLB).unwrap_or_default();
            self.holds
                .apply(p, self.last.as_ref(), Instant::now(), &in_table);
        }
        let outcome = self.try_reconcile(instance, plan.as_ref());
        self.last = plan;
        match outcome {
            Ok(()) => self.error = None,
            Err(e) => {
                warn!("announce: {e} (retried every second)");
                self.error = Some(e);
            }
        }
    }

    fn try_reconcile(&mut self, instance: &str, plan: Option<&Plan>) -> Result<(), String> {
        if let Some(previous) = self.previous.take()
            && plan.is_none_or(|p| p.table != previous)
        {
            // The predecessor announced in another table (or the section is gone).
            self.table = Some(previous);
        }
        if let Some(old) = self.table
            && plan.is_none_or(|p| p.table != old)
        {
            let why = match plan {
                Some(p) => format!("[announce] table changed to {}", p.table),
                None => "the [announce] section was removed".to_owned(),
            };
            for vip in withdraw_all(old).map_err(|e| e.to_string())? {
                info!(table = old, "withdrew {vip} from table {old}: {why}");
            }
            self.table = None;
            if plan.is_none() {
                let _ = std::fs::remove_file(record_path(instance));
            }
        }
        let Some(plan) = plan else {
            return Ok(());
        };
        let table = plan.table;
        if self.table != Some(table) {
            let record = Record {
                table,
                net_ns: own_net_ns(),
            };
            let text = serde_json::to_string(&record).map_err(|e| e.to_string())?;
            std::fs::write(record_path(instance), text)
                .map_err(|e| format!("writing {}: {e}", record_path(instance).display()))?;
            self.table = Some(table);
            for s in &plan.skipped {
                info!("announce: {s}");
            }
        }
        let present = netlink::vip_routes(table, RTPROT_XDPLB).map_err(|e| e.to_string())?;
        for v in &plan.vips {
            let vip = v.vip;
            let reason = &v.reason;
            match (v.announced, present.contains(&vip)) {
                (true, false) => {
                    netlink::add_vip_route(table, RTPROT_XDPLB, vip).map_err(|e| e.to_string())?;
                    info!(%vip, table, "announced {vip}/32 in table {table}: {reason}");
                }
                (false, true) => {
                    netlink::del_vip_route(table, RTPROT_XDPLB, vip).map_err(|e| e.to_string())?;
                    info!(%vip, table, "withdrew {vip}/32 from table {table}: {reason}");
                }
                _ => {}
            }
        }
        for vip in present {
            if !plan.vips.iter().any(|v| v.vip == vip) {
                netlink::del_vip_route(table, RTPROT_XDPLB, vip).map_err(|e| e.to_string())?;
                info!(
                    %vip,
                    table,
                    "withdrew {vip}/32 from table {table}: no service has this VIP address any more"
                );
            }
        }
        Ok(())
    }

    /// The data plane goes away for good: withdraw everything and remove the record.
    pub fn withdraw_for_good(&mut self, instance: &str, why: &str) {
        let Some(table) = self.table.take() else {
            return;
        };
        match withdraw_all(table) {
            Ok(withdrawn) => {
                for vip in withdrawn {
                    info!(table, "withdrew {vip} from table {table}: {why}");
                }
                let _ = std::fs::remove_file(record_path(instance));
            }
            Err(e) => warn!(
                "withdrawing the VIP routes from table {table} failed ({e}); `xdplb stop` retries from {}",
                record_path(instance).display()
            ),
        }
    }

    /// Whether every VIP of the last plan is (announced) or is not (withdrawn) in the kernel
    /// table now, as the plan says.
    pub fn confirmed(&self) -> Result<bool, String> {
        let Some(plan) = &self.last else {
            return Ok(true);
        };
        let present = netlink::vip_routes(plan.table, RTPROT_XDPLB).map_err(|e| e.to_string())?;
        Ok(plan
            .vips
            .iter()
            .all(|v| v.announced == present.contains(&v.vip)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{config, health::HealthEvent};

    fn cfg(extra: &str) -> Config {
        config::parse(
            &format!(
                r#"interfaces = ["lo"]
[announce]
table = 4242
{extra}
[[service]]
name = "dns"
vip = "10.100.0.1:53"
[service.health_check]
type = "tcp"
rise = 1
fall = 1
[[service.backend]]
address = "10.0.0.1:53"
[[service.backend]]
address = "10.0.0.2:53"

[[service]]
name = "ntp"
vip = "10.100.0.1:123"
when_all_down = "pass"
[service.health_check]
type = "tcp"
rise = 1
fall = 1
[[service.backend]]
address = "10.0.0.1:123"

[[service]]
name = "syslog"
vip = "10.100.0.2:514"
[service.health_check]
type = "tcp"
rise = 1
fall = 1
on_failure = "move-flows"
[[service.backend]]
address = "10.0.0.3:514"

[[service]]
name = "any"
vip = "0.0.0.0:9999"
[[service.backend]]
address = "10.0.0.4:9999"
"#
            ),
            "test",
        )
        .expect("valid")
    }

    fn down(book: &mut HealthBook, c: &Config, service: &str, backend: &str) {
        let svc = c
            .services
            .iter()
            .find(|s| s.name == service)
            .expect("service");
        let ev = HealthEvent {
            service: service.into(),
            backend: backend.parse::<SocketAddr>().expect("addr"),
            ok: false,
            detail: "refused".into(),
        };
        book.record(&ev, svc.health_check.as_ref().expect("checked"));
    }

    fn announced(p: &Plan) -> Vec<String> {
        p.announced().map(|v| v.to_string()).collect()
    }

    #[test]
    fn every_vip_address_is_announced_once_when_healthy_and_wildcards_never() {
        let c = cfg("");
        let p = plan(&c, &HealthBook::default(), true).expect("announce section");
        assert_eq!(p.table, 4242);
        assert_eq!(announced(&p), ["10.100.0.1", "10.100.0.2"]);
        assert_eq!(p.vips[0].services, ["dns", "ntp"]);
        assert_eq!(p.skipped.len(), 1);
        assert!(p.skipped[0].contains("wildcard VIP 0.0.0.0:9999"), "{p:?}");
        assert_eq!(
            plan(&config::default_config(), &HealthBook::default(), true),
            None
        );
    }

    #[test]
    fn nothing_is_announced_before_the_data_plane_is_attached_or_while_drained() {
        let c = cfg("");
        let p = plan(&c, &HealthBook::default(), false).expect("plan");
        assert!(announced(&p).is_empty());
        assert_eq!(p.vips[0].reason, "the data plane is not attached");
        let c = cfg("drained = true");
        let p = plan(&c, &HealthBook::default(), true).expect("plan");
        assert!(announced(&p).is_empty());
        assert!(p.drained);
        assert!(p.vips.iter().all(|v| v.reason == "node drained"), "{p:?}");
    }

    #[test]
    fn a_withdrawn_vip_is_announced_again_only_once_its_health_held_still() {
        let c = cfg("");
        let mut book = HealthBook::default();
        let mut holds = Holds::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let svc = c
            .services
            .iter()
            .find(|s| s.name == "syslog")
            .expect("syslog");
        let hc = svc.health_check.as_ref().expect("checked");
        // One check: interval plus timeout (defaults 1 s + 0.5 s), above the 1 s floor.
        let hold = hc.interval + hc.timeout;
        assert!(hold > MIN_HOLD);
        let hold_ms = u64::try_from(hold.as_millis()).expect("ms");
        // A restart: the predecessor's routes are in the table.
        let both = || vec![Ipv4Addr::new(10, 100, 0, 1), Ipv4Addr::new(10, 100, 0, 2)];
        let mut step = |book: &HealthBook, prev: Option<&Plan>, ms: u64| {
            let mut p = plan(&c, book, true).expect("plan");
            holds.apply(&mut p, prev, at(ms), &both);
            p
        };
        // Start: found in the table, nothing held.
        let p0 = step(&book, None, 0);
        assert_eq!(announced(&p0), ["10.100.0.1", "10.100.0.2"]);
        assert_eq!(p0.vips[1].hold, hold);
        // syslog's only backend fails: withdrawn at once (a withdrawal is never held).
        down(&mut book, &c, "syslog", "10.0.0.3:514");
        let p1 = step(&book, Some(&p0), 1_000);
        assert_eq!(announced(&p1), ["10.100.0.1"]);
        // It recovers: held while its health is younger than the hold...
        book.record(
            &HealthEvent {
                service: "syslog".into(),
                backend: "10.0.0.3:514".parse().expect("addr"),
                ok: true,
                detail: "connected".into(),
            },
            hc,
        );
        let p2 = step(&book, Some(&p1), 2_000);
        assert_eq!(announced(&p2), ["10.100.0.1"]);
        assert!(p2.vips[1].reason.starts_with("held down: "), "{p2:?}");
        let p3 = step(&book, Some(&p2), 2_000 + hold_ms - 1);
        assert_eq!(announced(&p3), ["10.100.0.1"]);
        // ...and announced once it held still that long.
        let p4 = step(&book, Some(&p3), 2_000 + hold_ms);
        assert_eq!(announced(&p4), ["10.100.0.1", "10.100.0.2"]);
        assert_eq!(
            p4.vips[1].reason,
            "service syslog has a backend taking new flows"
        );
        // An announced VIP whose backends change is not held (10.100.0.1 keeps ntp).
        down(&mut book, &c, "dns", "10.0.0.1:53");
        let p5 = step(&book, Some(&p4), 2_000 + hold_ms + 10);
        assert_eq!(announced(&p5), ["10.100.0.1", "10.100.0.2"]);
        // An undrain announces at once, even right after a health change.
        let mut drained = p5.clone();
        drained.drained = true;
        for v in &mut drained.vips {
            v.announced = false;
        }
        down(&mut book, &c, "dns", "10.0.0.2:53");
        let p6 = step(&book, Some(&drained), 2_000 + hold_ms + 20);
        assert_eq!(announced(&p6), ["10.100.0.1", "10.100.0.2"]);
    }

    #[test]
    fn a_fresh_start_announces_once_the_checks_could_reach_a_verdict() {
        let c = cfg("");
        let book = HealthBook::default();
        let mut holds = Holds::default();
        let t0 = Instant::now();
        let hc = c.services[0].health_check.as_ref().expect("checked");
        // rise = fall = 1: one interval plus the timeout.
        let settle = hc.interval + hc.timeout;
        let empty = Vec::new;
        let mut p = plan(&c, &book, true).expect("plan");
        assert_eq!(p.vips[0].settle, settle);
        holds.apply(&mut p, None, t0, &empty);
        assert!(announced(&p).is_empty(), "{p:?}");
        assert!(p.vips[0].reason.starts_with("held down: "), "{p:?}");
        let mut q = plan(&c, &book, true).expect("plan");
        holds.apply(
            &mut q,
            Some(&p),
            t0 + settle.saturating_sub(Duration::from_millis(1)),
            &empty,
        );
        assert!(announced(&q).is_empty(), "{q:?}");
        let mut r = plan(&c, &book, true).expect("plan");
        holds.apply(&mut r, Some(&q), t0 + settle, &empty);
        assert_eq!(announced(&r), ["10.100.0.1", "10.100.0.2"]);
    }

    #[test]
    fn a_vip_is_withdrawn_when_no_service_on_it_takes_new_flows_and_pass_keeps_it() {
        let c = cfg("");
        let mut book = HealthBook::default();
        // syslog (move-flows, drop) loses its only backend: withdrawn.
        down(&mut book, &c, "syslog", "10.0.0.3:514");
        let p = plan(&c, &book, true).expect("plan");
        assert_eq!(announced(&p), ["10.100.0.1"]);
        assert_eq!(
            p.vips[1].reason,
            "service syslog has no backend taking new flows (when_all_down = \"drop\")"
        );
        // dns (keep-flows: drained) loses both backends, but ntp on the same address still
        // has one: the address stays announced.
        down(&mut book, &c, "dns", "10.0.0.1:53");
        down(&mut book, &c, "dns", "10.0.0.2:53");
        let p = plan(&c, &book, true).expect("plan");
        assert_eq!(announced(&p), ["10.100.0.1"]);
        assert_eq!(
            p.vips[0].reason,
            "service ntp has a backend taking new flows"
        );
        // ntp down too: its when_all_down = "pass" keeps the address announced.
        down(&mut book, &c, "ntp", "10.0.0.1:123");
        let p = plan(&c, &book, true).expect("plan");
        assert_eq!(announced(&p), ["10.100.0.1"]);
        assert!(
            p.vips[0].reason.contains("when_all_down = \"pass\""),
            "{p:?}"
        );
        // With drop everywhere, the reasons of all its services are given.
        let mut c2 = c.clone();
        c2.services[1].when_all_down = WhenAllDown::Drop;
        let p = plan(&c2, &book, true).expect("plan");
        assert!(announced(&p).is_empty());
        assert_eq!(
            p.vips[0].reason,
            "service dns has no backend taking new flows (when_all_down = \"drop\"); service ntp has no backend taking new flows (when_all_down = \"drop\")"
        );
    }

    #[test]
    fn drained_is_set_and_removed_in_the_file_keeping_the_rest() {
        let text = "interfaces = [\"lo\"]\n\n# the hand-off to BIRD\n[announce]\ntable = 4242 # ours\n\n[[service]]\nname = \"s\"\nvip = \"10.1.1.1:53\"\nbackend = [{ address = \"10.0.0.1:53\" }]\n";
        let drained =
            config::apply_edit(text, &config::ConfigEdit::SetDrained(true)).expect("edit");
        assert!(
            drained.contains("table = 4242 # ours\ndrained = true\n"),
            "{drained}"
        );
        assert!(
            config::parse(&drained, "t")
                .expect("valid")
                .announce
                .expect("section")
                .drained
        );
        let back =
            config::apply_edit(&drained, &config::ConfigEdit::SetDrained(false)).expect("edit");
        assert_eq!(back, text);
    }
}
