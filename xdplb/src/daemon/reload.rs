//! What the loop does on SIGHUP: re-read the config file and apply it, as the core decides.

use std::time::Instant;

use super::check_host;
use crate::{
    config,
    control::{ConfigRead, Core},
    dataplane::Dataplane,
};
use anyhow::{Context as _, bail};

/// What a reload applied.
pub(super) struct Reloaded {
    /// One line: the file, its size, how long it took, how many changes.
    pub message: String,
    /// What changed, one line each ([`crate::confdiff::diff`]).
    pub changes: Vec<String>,
    /// How long the data plane took to apply it, in seconds.
    pub apply_seconds: f64,
}

/// Re-reads the config file and applies what changed. A config with an error, or a change that
/// needs a restart, is rejected whole and the data plane keeps the old one. Returns what was
/// done.
pub(super) fn reload(
    dp: &mut Dataplane,
    file: Option<&mut config::ConfigFile>,
    core: &mut Core,
) -> anyhow::Result<Reloaded> {
    let Some(file) = file else {
        bail!("running the built-in default config; there is no file to re-read");
    };
    let path = file.path().to_path_buf();
    let path = path.as_path();
    let started = Instant::now();
    let (next, text) = file.read()?;
    check_host(&next, path)?;
    let effective = match core.config_read(&next) {
        ConfigRead::Apply(effective) => effective,
        ConfigRead::NeedsRestart { field } => bail!(
            "{}: `{field}` changed, which takes a restart",
            path.display()
        ),
    };
    let apply_started = Instant::now();
    dp.apply_config(&effective)
        .with_context(|| format!("applying {}", path.display()))?;
    let apply_seconds = apply_started.elapsed().as_secs_f64();
    let changes = crate::confdiff::diff(core.config(), &next);
    let message = format!(
        "applied {} ({} service(s), {} backend(s)) in {} ms: {}",
        path.display(),
        next.services.len(),
        next.services
            .iter()
            .map(|s| s.backends.len())
            .sum::<usize>(),
        started.elapsed().as_millis(),
        match changes.len() {
            0 => "no change".to_string(),
            1 => "1 change".to_string(),
            n => format!("{n} changes"),
        }
    );
    core.commit(next);
    // Applied: API changes now edit this text.
    file.reloaded(text);
    Ok(Reloaded {
        message,
        changes,
        apply_seconds,
    })
}
