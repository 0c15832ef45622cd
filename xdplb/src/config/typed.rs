//! Validation of a typed [`Config`], for changes made to the model itself (the live API).
//!
//! The rules live in one place, the validator of the raw schema ([`super::validate`]), which
//! the file path runs with the source text so that errors carry `FILE:LINE:COLUMN`. A change
//! made to the typed model goes through the same rules: [`check`] lowers the model to the raw
//! schema (every value as written explicitly, with no source position) and validates that, so
//! no TOML text is written or parsed. Its errors name the service, backend and field, and
//! the origin given instead of a file position.

use toml::Spanned;

use std::fmt::Write as _;

use super::{
    Config, ConfigError, HealthCheck, HealthCheckKind, ServiceConfig,
    raw::{RawBackend, RawConfig, RawHealthCheck, RawLimits, RawService},
    validate::{self, Source},
    write::duration_text,
};

/// A value with no source position.
#[allow(
    clippy::unnecessary_wraps,
    reason = "the raw schema's fields are all optional; this builds them"
)]
fn at<T>(value: T) -> Option<Spanned<T>> {
    Some(Spanned::new(0..0, value))
}

fn int(value: impl Into<i64>) -> Option<Spanned<i64>> {
    at(value.into())
}

/// Validates `cfg` with every rule of the config file and returns it as the validator
/// rebuilds it (which equals `cfg` when `cfg` is valid and came from the validator or was
/// changed through the API). `origin` names the change in errors, e.g. `the change`.
pub fn check(cfg: &Config, origin: &str) -> Result<Config, ConfigError> {
    validate::validate(lower(cfg), Source::typed(origin))
}

fn lower(cfg: &Config) -> RawConfig {
    RawConfig {
        interfaces: at(cfg
            .interfaces
            .iter()
            .cloned()
            .map(|i| Spanned::new(0..0, i))
            .collect()),
        xdp_mode: at(cfg.xdp_mode.to_string()),
        debug_log: Some(cfg.debug_log),
        metrics_listen: cfg.metrics_listen.and_then(|a| at(a.to_string())),
        api_listen: cfg.api_listen.and_then(|a| at(a.to_string())),
        hash_seed: int(cfg.hash_seed),
        flow_guard_rate: int(cfg.flow_guard_rate),
        limits: at(RawLimits {
            max_services: int(cfg.limits.max_services),
            max_backends_per_service: int(cfg.limits.max_backends_per_service),
            max_flows: int(cfg.limits.max_flows),
            max_lookup_entries: int(cfg.limits.max_lookup_entries),
        }),
        announce: cfg.announce.and_then(|a| {
            at(super::raw::RawAnnounce {
                table: int(a.table),
                drained: a.drained.then(|| Spanned::new(0..0, true)),
            })
        }),
        service: Some(
            cfg.services
                .iter()
                .map(|s| Spanned::new(0..0, lower_service(s)))
                .collect(),
        ),
    }
}

pub(crate) fn lower_service(svc: &ServiceConfig) -> RawService {
    use super::Scheduler;
    let hashing = matches!(svc.scheduler, Scheduler::Maglev | Scheduler::SourceHash);
    RawService {
        name: at(svc.name.clone()),
        vip: at(svc.vip.to_string()),
        protocol: at(svc.protocol.to_string()),
        flow_idle_timeout: at(duration_text(svc.flow_idle_timeout)),
        scheduler: at(svc.scheduler.to_string()),
        // Only where the schema takes them (as the file writer does).
        hash: if hashing {
            at(svc.hash.to_string())
        } else {
            None
        },
        // Explicit where the schema takes it, so that a default that may change never
        // changes a service the model already holds.
        flow_stale_after: if hashing || svc.flow_stale_after.is_some() {
            at(validate::stale_after_text(svc.flow_stale_after))
        } else {
            None
        },
        maglev_table_size: if svc.scheduler == Scheduler::Maglev {
            int(svc.maglev_table_size)
        } else {
            None
        },
        health_check: svc
            .health_check
            .as_ref()
            .and_then(|h| at(lower_health_check(h))),
        when_all_down: at(svc.when_all_down.to_string()),
        flow_state: at(svc.flow_state.to_string()),
        forwarding: at(svc.forwarding.to_string()),
        encap_source: svc.encap_source.and_then(|e| at(e.to_string())),
        fullnat_source: svc.fullnat.and_then(|f| at(f.source.to_string())),
        fullnat_ports: svc
            .fullnat
            .and_then(|f| at(format!("{}-{}", f.port_first, f.port_last))),
        backend: at(svc
            .backends
            .iter()
            .map(|b| {
                Spanned::new(
                    0..0,
                    RawBackend {
                        address: at(b.address.to_string()),
                        weight: int(b.weight),
                        drain: at(b.drain),
                    },
                )
            })
            .collect()),
    }
}

fn lower_health_check(hc: &HealthCheck) -> RawHealthCheck {
    let mut raw = RawHealthCheck {
        kind: at(hc.kind.kind().to_string()),
        interval: at(duration_text(hc.interval)),
        timeout: at(duration_text(hc.timeout)),
        rise: int(hc.rise),
        fall: int(hc.fall),
        port: hc.port.and_then(int),
        payload: None,
        payload_hex: None,
        expect: None,
        expect_hex: None,
        path: None,
        expect_status: None,
        on_failure: at(hc.on_failure.to_string()),
    };
    match &hc.kind {
        HealthCheckKind::Udp { payload, expect } => {
            // Text where the bytes are UTF-8, hex otherwise, so any bytes survive.
            match String::from_utf8(payload.clone()) {
                Ok(text) => raw.payload = at(text),
                Err(_) => raw.payload_hex = at(hex(payload)),
            }
            if let Some(expect) = expect {
                match String::from_utf8(expect.clone()) {
                    Ok(text) => raw.expect = at(text),
                    Err(_) => raw.expect_hex = at(hex(expect)),
                }
            }
        }
        HealthCheckKind::Tcp => {}
        HealthCheckKind::Http {
            path,
            expect_status,
        } => {
            raw.path = at(path.clone());
            raw.expect_status = int(*expect_status);
        }
    }
    raw
}

/// Lower-case hex, two digits a byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// An error of a change to the typed model as an operator reads it: there is no file, so the
/// "(line N)" that points at another item of a file is left out.
pub fn change_error_message(e: &ConfigError) -> String {
    e.to_string().replace(" (line 0)", "")
}

/// The complete service as the model holds it, every default filled in, in the form of its
/// `[[service]]` table (the form [`with_service_from_json`] takes).
pub fn service_json(svc: &ServiceConfig) -> serde_json::Value {
    let mut value = serde_json::to_value(lower_service(svc)).unwrap_or_default();
    drop_nulls(&mut value);
    value
}

/// Removes the `null`s that absent optional fields serialize to.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Reads a JSON object as the TOML table `[header]` of the config file's own schema, so that
/// unknown fields and wrong types get the file's errors. (The schema's structs keep source
/// spans, which only the TOML deserializer provides: the object goes through TOML text,
/// whose positions are then dropped from the errors.)
fn from_json<T: serde::de::DeserializeOwned>(
    json: &serde_json::Value,
    header: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    let src = Source::typed(origin);
    let not_object = || ConfigError::WrongType {
        at: super::Location::origin_only(origin),
        message: format!("expected a JSON object with the fields of a {header} table"),
    };
    if !json.is_object() {
        return Err(not_object());
    }
    let table: toml::Value = toml::Value::try_from(json).map_err(|e| ConfigError::WrongType {
        at: super::Location::origin_only(origin),
        message: format!("{header}: {e}"),
    })?;
    let mut doc = toml::Table::new();
    doc.insert("item".to_owned(), toml::Value::Array(vec![table]));
    let text = toml::to_string(&doc).map_err(|e| ConfigError::WrongType {
        at: super::Location::origin_only(origin),
        message: format!("{header}: {e}"),
    })?;
    #[derive(serde::Deserialize)]
    struct One<T> {
        item: Vec<T>,
    }
    let one: One<T> = toml::from_str(&text).map_err(|e| validate::from_toml_error(&e, src))?;
    one.item.into_iter().next().ok_or_else(not_object)
}

/// `cfg` with a service added, given as the JSON form of its `[[service]]` table, validated
/// with every rule of the config file.
pub fn with_service_from_json(
    cfg: &Config,
    json: &serde_json::Value,
    origin: &str,
) -> Result<Config, ConfigError> {
    let svc: Spanned<RawService> = from_json(json, "[[service]]", origin)?;
    let mut raw = lower(cfg);
    raw.service.get_or_insert_with(Vec::new).push(svc);
    validate::validate(raw, Source::typed(origin))
}

/// `cfg` with a backend added to service `index`, given as the JSON form of its
/// `[[service.backend]]` table, validated with every rule of the config file.
pub fn with_backend_from_json(
    cfg: &Config,
    index: usize,
    json: &serde_json::Value,
    origin: &str,
) -> Result<Config, ConfigError> {
    let backend: Spanned<RawBackend> = from_json(json, "[[service.backend]]", origin)?;
    let mut raw = lower(cfg);
    if let Some(svc) = raw.service.as_mut().and_then(|s| s.get_mut(index)) {
        svc.get_mut()
            .backend
            .get_or_insert_with(|| Spanned::new(0..0, Vec::new()))
            .get_mut()
            .push(backend);
    }
    validate::validate(raw, Source::typed(origin))
}
