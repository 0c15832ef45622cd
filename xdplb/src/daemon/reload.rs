//! What the loop does on SIGHUP (re-read the config file) and on health results.

use std::time::Instant;

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use super::check_host;
use crate::{
    config::{self, Config},
    dataplane::Dataplane,
    health::{HealthBook, HealthEvent},
};

/// Takes health results (what arrived together), logs every up/down transition with its
/// reason, and re-applies the config (with unhealthy backends drained or left out) if any
/// happened. Returns whether anything changed, and the error if that apply failed.
pub(super) fn apply_health(
    events: impl IntoIterator<Item = HealthEvent>,
    book: &mut HealthBook,
    cfg: &Config,
    dp: &mut Dataplane,
) -> (bool, Option<String>) {
    let mut changed = false;
    for ev in events {
        // Results of checkers from before a reload may still trickle in: ignore what the
        // config no longer checks.
        let Some(hc) = cfg
            .services
            .iter()
            .find(|s| s.name == ev.service && s.backends.iter().any(|b| b.address == ev.backend))
            .and_then(|s| s.health_check.as_ref())
        else {
            continue;
        };
        if let Some(t) = book.record(&ev, hc) {
            let (service, backend, reason) = (&t.service, t.backend, &t.reason);
            if t.up {
                info!(service, %backend, reason, "backend is up");
            } else {
                warn!(service, %backend, reason, "backend is down");
            }
            changed = true;
        }
    }
    let mut failed = None;
    if changed && let Err(e) = dp.apply_config(&book.effective(cfg)) {
        warn!("applying a health change failed: {e}");
        failed = Some(format!("applying a health change failed: {e}"));
    }
    (changed, failed)
}

/// Re-reads the config file and applies what changed. A config with an error, or a change that
/// needs a restart, is rejected whole and the data plane keeps the old one. Returns what was
/// done and how long the apply took in seconds.
pub(super) fn reload(
    dp: &mut Dataplane,
    file: Option<&mut config::ConfigFile>,
    current: &mut Config,
    book: &HealthBook,
) -> anyhow::Result<(String, f64)> {
    let Some(file) = file else {
        bail!("running the built-in default config; there is no file to re-read");
    };
    let path = file.path().to_path_buf();
    let path = path.as_path();
    let started = Instant::now();
    let (next, text) = file.read()?;
    check_host(&next, path)?;
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
    if let Some((field, _)) = restart_only.iter().find(|(_, changed)| *changed) {
        bail!(
            "{}: `{field}` changed, which takes a restart",
            path.display()
        );
    }
    let apply_started = Instant::now();
    dp.apply_config(&book.effective(&next))
        .with_context(|| format!("applying {}", path.display()))?;
    let apply_seconds = apply_started.elapsed().as_secs_f64();
    let msg = format!(
        "applied {} ({} service(s), {} backend(s)) in {} ms",
        path.display(),
        next.services.len(),
        next.services
            .iter()
            .map(|s| s.backends.len())
            .sum::<usize>(),
        started.elapsed().as_millis()
    );
    *current = next;
    // Applied: API changes now edit this text.
    file.reloaded(text);
    Ok((msg, apply_seconds))
}
