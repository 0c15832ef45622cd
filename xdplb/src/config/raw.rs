//! The TOML schema as written by the operator, before validation.
//!
//! Everything is optional here so that validation, not serde, reports missing
//! fields (with the service and backend named). Values that can be wrong carry
//! their source span so errors can point at the line. The structs set
//! serde's `expecting` so that type errors name the table rather than a Rust type.

use serde::{Deserialize, Serialize};
use toml::Spanned;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document")]
pub(crate) struct RawConfig {
    pub interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    pub xdp_mode: Option<Spanned<String>>,
    pub debug_log: Option<bool>,
    pub metrics_listen: Option<Spanned<String>>,
    pub api_listen: Option<Spanned<String>>,
    pub hash_seed: Option<Spanned<i64>>,
    pub flow_guard_rate: Option<Spanned<i64>>,
    pub limits: Option<Spanned<RawLimits>>,
    pub announce: Option<Spanned<RawAnnounce>>,
    pub service: Option<Vec<Spanned<RawService>>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a [limits] table")]
pub(crate) struct RawLimits {
    pub max_services: Option<Spanned<i64>>,
    pub max_backends_per_service: Option<Spanned<i64>>,
    pub max_flows: Option<Spanned<i64>>,
    pub max_lookup_entries: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "an [announce] table")]
pub(crate) struct RawAnnounce {
    pub table: Option<Spanned<i64>>,
    pub drained: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a [[service]] table")]
pub(crate) struct RawService {
    pub name: Option<Spanned<String>>,
    pub vip: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub flow_idle_timeout: Option<Spanned<String>>,
    pub scheduler: Option<Spanned<String>>,
    pub hash: Option<Spanned<String>>,
    pub flow_stale_after: Option<Spanned<String>>,
    pub maglev_table_size: Option<Spanned<i64>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub when_all_down: Option<Spanned<String>>,
    pub flow_state: Option<Spanned<String>>,
    pub forwarding: Option<Spanned<String>>,
    pub encap_source: Option<Spanned<String>>,
    pub fullnat_source: Option<Spanned<String>>,
    pub fullnat_ports: Option<Spanned<String>>,
    pub backend: Option<Spanned<Vec<Spanned<RawBackend>>>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a [service.health_check] table")]
pub(crate) struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub port: Option<Spanned<i64>>,
    pub payload: Option<Spanned<String>>,
    /// `payload` as hex digits, for bytes that are not text (exclusive with `payload`).
    pub payload_hex: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    /// `expect` as hex digits (exclusive with `expect`).
    pub expect_hex: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<i64>>,
    pub on_failure: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a [[service.backend]] table")]
pub(crate) struct RawBackend {
    pub address: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub drain: Option<Spanned<bool>>,
}

/// Names of the fields of each table, used to tell which table an unknown field
/// was found in (the parser only reports the list of expected fields).
pub(crate) const TABLES: &[(&str, &[&str])] = &[
    (
        "the top level",
        &[
            "interfaces",
            "xdp_mode",
            "debug_log",
            "hash_seed",
            "flow_guard_rate",
            "metrics_listen",
            "api_listen",
            "limits",
            "announce",
            "service",
        ],
    ),
    ("[announce]", &["table", "drained"]),
    (
        "[limits]",
        &[
            "max_services",
            "max_backends_per_service",
            "max_flows",
            "max_lookup_entries",
        ],
    ),
    (
        "[[service]]",
        &[
            "name",
            "vip",
            "protocol",
            "flow_idle_timeout",
            "scheduler",
            "hash",
            "flow_stale_after",
            "maglev_table_size",
            "health_check",
            "when_all_down",
            "flow_state",
            "forwarding",
            "encap_source",
            "fullnat_source",
            "fullnat_ports",
            "backend",
        ],
    ),
    (
        "[service.health_check]",
        &[
            "type",
            "interval",
            "timeout",
            "rise",
            "fall",
            "port",
            "payload",
            "payload_hex",
            "expect",
            "expect_hex",
            "path",
            "expect_status",
            "on_failure",
        ],
    ),
    ("[[service.backend]]", &["address", "weight", "drain"]),
];

/// Advice for an unknown `field` found in `table`. A field that is valid in another
/// table was most likely written below the wrong header: in TOML, keys belong to
/// the most recent `[table]` header.
pub(crate) fn unknown_field_advice(field: &str, table: &str) -> String {
    match TABLES
        .iter()
        .find(|(name, fields)| *name != table && fields.contains(&field))
    {
        Some((home, _)) => format!(
            "`{field}` belongs in {home}: in TOML every key after a [table] header belongs to that table, so move it above the header"
        ),
        None => "remove it or fix the spelling".to_owned(),
    }
}
