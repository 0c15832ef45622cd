//! Turns a [`Config`] back into TOML text (the canonical form of a whole config, and the
//! `[[service]]` table that an API change appends to the operator's file), and saves text to
//! the config file keeping its identity ([`save`]).

use std::{
    fmt::{self, Write as _},
    time::Duration,
};

use super::{Config, HealthCheck, HealthCheckKind, Scheduler, ServiceConfig};

/// The first line of every file [`to_toml`] writes.
pub(crate) const HEADER: &str =
    "# Written by xdplb in canonical form: every field, defaults included.";

/// Writes `cfg` as TOML text that [`parse`](super::parse) turns back into exactly
/// `cfg`: `parse(&to_toml(&cfg), origin) == Ok(cfg)` for every valid config (every
/// config that `parse` can return).
///
/// Every field is written explicitly, defaults included, in the schema's order (see
/// the module documentation), after a header comment saying that xdplb wrote it in
/// canonical form. The only fields left out are
/// those the schema forbids or that are absent: `metrics_listen` when `None`, `hash`
/// unless the scheduler is maglev or source-hash, `maglev_table_size` unless it is
/// maglev, a missing `[service.health_check]`, its `port` when `None` and its `expect`
/// when `None`. So a config that breaks the invariants `parse` guarantees (say, a
/// round-robin service whose `hash` or `maglev_table_size` is not the default) does not
/// round-trip: the parser fills in the defaults for the fields not written.
///
/// Durations are written in the largest single unit that represents them exactly
/// (`"2h"`, `"90s"`, `"1500ms"`, `"250us"`), so they parse back to the same value.
/// Strings are escaped by the `toml` crate.
///
/// A UDP health check's `payload` and `expect` are written as text where they are UTF-8
/// and as `payload_hex`/`expect_hex` otherwise, so any bytes round-trip. An IPv6
/// `metrics_listen` is written without its flow label, which `parse` always leaves 0.
pub fn to_toml(cfg: &Config) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_config(&mut out, cfg);
    out
}

fn write_config(out: &mut String, cfg: &Config) -> fmt::Result {
    writeln!(out, "{HEADER}")?;
    writeln!(out)?;
    let interfaces = toml::Value::Array(
        cfg.interfaces
            .iter()
            .map(|name| toml::Value::String(name.clone()))
            .collect(),
    );
    writeln!(out, "interfaces = {interfaces}")?;
    writeln!(out, "xdp_mode = \"{}\"", cfg.xdp_mode)?;
    writeln!(out, "debug_log = {}", cfg.debug_log)?;
    writeln!(out, "hash_seed = {}", cfg.hash_seed)?;
    writeln!(out, "flow_guard_rate = {}", cfg.flow_guard_rate)?;
    if let Some(addr) = cfg.metrics_listen {
        writeln!(out, "metrics_listen = {}", toml_string(&addr.to_string()))?;
    }
    if let Some(addr) = cfg.api_listen {
        writeln!(out, "api_listen = {}", toml_string(&addr.to_string()))?;
    }

    let limits = &cfg.limits;
    writeln!(out)?;
    writeln!(out, "[limits]")?;
    writeln!(out, "max_services = {}", limits.max_services)?;
    writeln!(
        out,
        "max_backends_per_service = {}",
        limits.max_backends_per_service
    )?;
    writeln!(out, "max_flows = {}", limits.max_flows)?;
    writeln!(out, "max_lookup_entries = {}", limits.max_lookup_entries)?;
    if let Some(a) = cfg.announce {
        writeln!(out)?;
        writeln!(out, "[announce]")?;
        writeln!(out, "table = {}", a.table)?;
        if a.drained {
            writeln!(out, "drained = true")?;
        }
    }

    for svc in &cfg.services {
        write_service(out, svc)?;
    }
    Ok(())
}

fn write_service(out: &mut String, svc: &ServiceConfig) -> fmt::Result {
    writeln!(out)?;
    writeln!(out, "[[service]]")?;
    writeln!(out, "name = {}", toml_string(&svc.name))?;
    writeln!(out, "vip = \"{}\"", svc.vip)?;
    writeln!(out, "protocol = \"{}\"", svc.protocol)?;
    writeln!(
        out,
        "flow_idle_timeout = \"{}\"",
        duration_text(svc.flow_idle_timeout)
    )?;
    writeln!(out, "scheduler = \"{}\"", svc.scheduler)?;
    if matches!(svc.scheduler, Scheduler::Maglev | Scheduler::SourceHash) {
        writeln!(out, "hash = \"{}\"", svc.hash)?;
        writeln!(
            out,
            "flow_stale_after = \"{}\"",
            super::validate::stale_after_text(svc.flow_stale_after)
        )?;
    }
    if svc.scheduler == Scheduler::Maglev {
        writeln!(out, "maglev_table_size = {}", svc.maglev_table_size)?;
    }
    writeln!(out, "when_all_down = \"{}\"", svc.when_all_down)?;
    writeln!(out, "flow_state = \"{}\"", svc.flow_state)?;
    writeln!(out, "forwarding = \"{}\"", svc.forwarding)?;
    if let Some(e) = svc.encap_source {
        writeln!(out, "encap_source = \"{e}\"")?;
    }
    if let Some(f) = svc.fullnat {
        writeln!(out, "fullnat_source = \"{}\"", f.source)?;
        writeln!(out, "fullnat_ports = \"{}-{}\"", f.port_first, f.port_last)?;
    }

    if let Some(hc) = &svc.health_check {
        write_health_check(out, hc)?;
    }

    for backend in &svc.backends {
        writeln!(out)?;
        writeln!(out, "[[service.backend]]")?;
        writeln!(out, "address = \"{}\"", backend.address)?;
        writeln!(out, "weight = {}", backend.weight)?;
        writeln!(out, "drain = {}", backend.drain)?;
    }
    Ok(())
}

fn write_health_check(out: &mut String, hc: &HealthCheck) -> fmt::Result {
    writeln!(out)?;
    writeln!(out, "[service.health_check]")?;
    writeln!(out, "type = \"{}\"", hc.kind.kind())?;
    writeln!(out, "interval = \"{}\"", duration_text(hc.interval))?;
    writeln!(out, "timeout = \"{}\"", duration_text(hc.timeout))?;
    writeln!(out, "rise = {}", hc.rise)?;
    writeln!(out, "fall = {}", hc.fall)?;
    if let Some(port) = hc.port {
        writeln!(out, "port = {port}")?;
    }
    match &hc.kind {
        HealthCheckKind::Udp { payload, expect } => {
            write_bytes(out, "payload", payload)?;
            if let Some(expect) = expect {
                write_bytes(out, "expect", expect)?;
            }
        }
        HealthCheckKind::Tcp => {}
        HealthCheckKind::Http {
            path,
            expect_status,
        } => {
            writeln!(out, "path = {}", toml_string(path))?;
            writeln!(out, "expect_status = {expect_status}")?;
        }
    }
    writeln!(out, "on_failure = \"{}\"", hc.on_failure)?;
    Ok(())
}

/// `s` as a TOML string value, quoted and escaped by the `toml` crate.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `field = "text"` where the bytes are UTF-8, else `field_hex = "hex digits"`, so that any
/// bytes read back the same.
fn write_bytes(out: &mut String, field: &str, bytes: &[u8]) -> fmt::Result {
    match std::str::from_utf8(bytes) {
        Ok(text) => writeln!(out, "{field} = {}", toml_string(text)),
        Err(_) => writeln!(out, "{field}_hex = \"{}\"", super::typed::hex(bytes)),
    }
}

/// One `[[service]]` table (with its health check and backends) as TOML text, every field
/// written as [`to_toml`] writes it; starts with a blank line.
pub(crate) fn service_toml(svc: &ServiceConfig) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_service(&mut out, svc);
    out
}

/// `d` in a form that `humantime::parse_duration` (and so the config parser) turns
/// back into exactly `d`: the largest single unit of h, m, s, ms, us and ns that
/// represents it exactly, e.g. `"2h"`, `"90m"`, `"90s"`, `"1500ms"`.
pub(super) fn duration_text(d: Duration) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 {
        return if secs != 0 && secs.is_multiple_of(HOUR) {
            format!("{}h", secs / HOUR)
        } else if secs != 0 && secs.is_multiple_of(MINUTE) {
            format!("{}m", secs / MINUTE)
        } else {
            format!("{secs}s")
        };
    }
    match u64::try_from(d.as_nanos()) {
        Ok(nanos) if nanos.is_multiple_of(1_000_000) => format!("{}ms", nanos / 1_000_000),
        Ok(nanos) if nanos.is_multiple_of(1_000) => format!("{}us", nanos / 1_000),
        Ok(nanos) => format!("{nanos}ns"),
        // Over 584 years: no single small unit fits in the parser's u64.
        Err(_) => format!("{secs}s {}ns", d.subsec_nanos()),
    }
}

/// How [`save`] wrote the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// A complete new file was renamed over the old one (atomic).
    Replaced,
    /// The file is a mount point (a bind-mounted file, as containers and some config
    /// managers make), which rename cannot replace: it was rewritten in place.
    InPlace,
}

/// Why [`save`] could not write the config file.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The path, or the file a symlink points to, cannot be resolved or read.
    #[error("cannot resolve config file {}: {source}", path.display())]
    Resolve {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the new text failed; the file keeps its previous contents unless `step`
    /// says it was being rewritten in place.
    #[error("{step} {}: {source}", path.display())]
    Write {
        step: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile {
    path: std::path::PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `text` to the config file at `path` so that the file keeps its identity:
///
/// - a symlink stays a symlink: the file it points to (all the way down) gets the text;
/// - the file keeps its owner, group and mode (0600 stays 0600);
/// - the text is written to a temporary file next to the target (same owner and mode),
///   synced, and renamed over it, so a reader or a crash sees the old or the new file whole;
/// - a file that rename cannot replace because it is a mount point (`EBUSY`, or `EXDEV`
///   across mounts), or whose owner this process cannot give a new file, is rewritten in
///   place instead (written from the start, truncated to the new length, synced);
/// - the temporary file never stays behind.
pub fn save(path: &std::path::Path, text: &[u8]) -> Result<Saved, SaveError> {
    use std::{
        fs::{OpenOptions, Permissions},
        io::{ErrorKind, Write as _},
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    };
    let resolve = |source| SaveError::Resolve {
        path: path.to_path_buf(),
        source,
    };
    let target = std::fs::canonicalize(path).map_err(resolve)?;
    let meta = std::fs::metadata(&target).map_err(resolve)?;
    let mode = meta.mode() & 0o7777;
    let write_err = |step: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| SaveError::Write { step, path, source }
    };
    let (dir, name) = match (target.parent(), target.file_name()) {
        (Some(dir), Some(name)) => (dir, name.to_string_lossy()),
        _ => {
            return Err(resolve(std::io::Error::new(
                ErrorKind::InvalidInput,
                "not a file",
            )));
        }
    };
    let tmp = TempFile {
        path: dir.join(format!(".{name}.xdplb-tmp")),
        keep: false,
    };
    // A leftover of a crash: this process is the only writer (one daemon per instance).
    let _ = std::fs::remove_file(&tmp.path);
    let replaced = (|| -> Result<bool, SaveError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp.path)
            .map_err(write_err("creating", &tmp.path))?;
        if let Err(e) = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid())) {
            if e.kind() == ErrorKind::PermissionDenied {
                // Not allowed to create a file owned by the target's owner: keep the
                // target's inode, and so its owner, by rewriting it in place.
                return Ok(false);
            }
            return Err(write_err("setting the owner of", &tmp.path)(e));
        }
        // After the chown, which may clear set-id bits.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(write_err("setting the mode of", &tmp.path))?;
        file.write_all(text)
            .and_then(|()| file.sync_all())
            .map_err(write_err("writing", &tmp.path))?;
        match std::fs::rename(&tmp.path, &target) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ResourceBusy | ErrorKind::CrossesDevices
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(write_err("renaming the new config over", &target)(e)),
        }
    })()?;
    if replaced {
        let mut tmp = tmp;
        tmp.keep = true;
        // Makes the rename itself durable; the file is already complete either way.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        return Ok(Saved::Replaced);
    }
    drop(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .open(&target)
        .map_err(write_err("opening to rewrite in place", &target))?;
    file.write_all(text)
        .and_then(|()| file.set_len(text.len() as u64))
        .and_then(|()| file.sync_all())
        .map_err(write_err("rewriting in place", &target))?;
    Ok(Saved::InPlace)
}
