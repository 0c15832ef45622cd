//! The load balancer's configuration: TOML parsing and validation.
//!
//! [`parse`] turns TOML text into a fully validated [`Config`]; [`load`] does the
//! same for a file; [`check_interfaces`] verifies the interfaces exist (kept
//! separate so parsing stays free of host state). Every failure is a
//! [`ConfigError`] whose message names the file, the line where known, the field,
//! the offending value and what would be valid.
//!
//! The schema (unknown fields are rejected everywhere):
//!
//! ```toml
//! interfaces = ["lo"]          # required, non-empty, no duplicates
//! xdp_mode = "auto"            # optional: auto | native | generic
//! debug_log = false            # optional
//!
//! [limits]                     # optional; each field defaults to Limits::DEFAULT
//! max_services = 1024              # 1..=65536
//! max_backends_per_service = 1024  # 1..=65536 (product with max_services <= 4194304)
//! max_flows = 262144               # 1024..=67108864
//!
//! [[service]]                  # at least one
//! name = "demo"                # required, unique, 1..=64 of [A-Za-z0-9_.-]
//! vip = "127.0.0.1:9875"       # required, IPV4:PORT; 0.0.0.0:PORT matches any address
//! protocol = "udp"             # optional, only udp for now
//! flow_idle_timeout = "30s"    # optional, 1s..=24h
//!
//! [[service.backend]]          # at least one per service
//! address = "127.0.0.1:9876"   # required, unicast IPV4:PORT, unique within the service
//! weight = 1                   # optional, 1..=65535
//! ```

mod error;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::{fmt, fmt::Write as _, net::SocketAddrV4, path::Path, time::Duration};

pub use error::{ConfigError, Location};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interfaces to attach the XDP program to (non-empty, no duplicates).
    pub interfaces: Vec<String>,
    /// How to attach the XDP program.
    pub xdp_mode: XdpModeSetting,
    /// Optional field `debug_log`, default false.
    pub debug_log: bool,
    /// Table sizes.
    pub limits: Limits,
    /// At least one service; names and (vip, protocol) pairs are unique.
    pub services: Vec<ServiceConfig>,
}

/// How to attach the XDP program: `"auto" | "native" | "generic"`, default `Auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpModeSetting {
    /// Native (driver) mode if the driver supports it, otherwise generic.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

/// Sizes of the data plane's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// 1..=65536.
    pub max_services: u32,
    /// 1..=65536; `max_services * max_backends_per_service <= 4_194_304`.
    pub max_backends_per_service: u32,
    /// 1024..=67108864.
    pub max_flows: u32,
}

impl Limits {
    /// The limits used when `[limits]` (or one of its fields) is absent.
    pub const DEFAULT: Limits = Limits {
        max_services: 1024,
        max_backends_per_service: 1024,
        max_flows: 262_144,
    };
}

/// A service's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
}

/// The spelling of `protocol` used in the config file. (A free function rather than
/// a `Display` impl so that other modules stay free to add their own impls.)
pub(crate) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "udp",
    }
}

/// One load-balanced service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    /// `0.0.0.0:PORT` matches any destination address.
    pub vip: SocketAddrV4,
    pub protocol: Protocol,
    /// 1s..=24h.
    pub flow_idle_timeout: Duration,
    /// At least one; addresses are unique within the service.
    pub backends: Vec<BackendConfig>,
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// A unicast IPv4 address with a non-zero port.
    pub address: SocketAddrV4,
    /// 1..=65535.
    pub weight: u16,
}

/// Parses and validates config text. `origin` names the source in errors (a file
/// path or `"<built-in>"`). Does everything except checking that interfaces exist.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let src = validate::Source { text, origin };
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|e| validate::from_toml_error(&e, src))?;
    validate::validate(raw, src)
}

/// Reads `path` and calls [`parse`]. A missing or unreadable file is a
/// [`ConfigError::Read`] naming the path and the OS error.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Checks every interface with `exists`; the first missing one gives
/// [`ConfigError::InterfaceNotFound`] naming it.
pub fn check_interfaces(
    cfg: &Config,
    origin: &str,
    exists: impl Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    match cfg.interfaces.iter().find(|name| !exists(name)) {
        Some(name) => Err(ConfigError::InterfaceNotFound {
            at: Location::origin_only(origin),
            name: name.clone(),
        }),
        None => Ok(()),
    }
}

/// The tutorial's scenario: one UDP service "demo" on 127.0.0.1:9875 on `lo`,
/// spread over three local backends on ports 9876..=9878.
pub fn default_config() -> Config {
    let lo = std::net::Ipv4Addr::LOCALHOST;
    Config {
        interfaces: vec!["lo".to_owned()],
        xdp_mode: XdpModeSetting::Auto,
        debug_log: false,
        limits: Limits::DEFAULT,
        services: vec![ServiceConfig {
            name: "demo".to_owned(),
            vip: SocketAddrV4::new(lo, 9875),
            protocol: Protocol::Udp,
            flow_idle_timeout: validate::DEFAULT_TIMEOUT,
            backends: [9876, 9877, 9878]
                .into_iter()
                .map(|port| BackendConfig {
                    address: SocketAddrV4::new(lo, port),
                    weight: 1,
                })
                .collect(),
        }],
    }
}

/// [`default_config`] as TOML text; `parse` turns it into exactly `default_config()`.
pub const DEFAULT_CONFIG_TOML: &str = r#"# xdplb configuration: the tutorial scenario.
#
# UDP packets sent to 127.0.0.1:9875 on the loopback interface are spread
# round-robin over three local backends on ports 9876, 9877 and 9878.

# Network interfaces to attach the XDP program to.
interfaces = ["lo"]

# How to attach: "auto" (native driver mode if supported, else generic),
# "native" or "generic".
xdp_mode = "auto"

# Extra debug logging.
debug_log = false

# Table sizes (these are the defaults; the whole table is optional).
[limits]
max_services = 1024
max_backends_per_service = 1024
max_flows = 262144

[[service]]
name = "demo"
# Address and port clients send to. 0.0.0.0:PORT matches any destination address.
vip = "127.0.0.1:9875"
protocol = "udp"
# A flow (client address and port) sticks to its backend until idle this long.
flow_idle_timeout = "30s"

[[service.backend]]
address = "127.0.0.1:9876"
weight = 1

[[service.backend]]
address = "127.0.0.1:9877"
weight = 1

[[service.backend]]
address = "127.0.0.1:9878"
weight = 1
"#;

impl Config {
    /// A human-readable, multi-line description of what running this config would do.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_description(&mut out);
        out
    }

    fn write_description(&self, out: &mut String) -> fmt::Result {
        let mode = match self.xdp_mode {
            XdpModeSetting::Auto => "auto (native driver mode if supported, otherwise generic)",
            XdpModeSetting::Native => "native (driver mode; fails if the driver lacks XDP support)",
            XdpModeSetting::Generic => "generic (SKB mode; works everywhere, slower)",
        };
        writeln!(
            out,
            "Attach to interface{}: {}",
            if self.interfaces.len() == 1 { "" } else { "s" },
            self.interfaces.join(", ")
        )?;
        writeln!(out, "XDP mode: {mode}")?;
        writeln!(
            out,
            "Debug logging: {}",
            if self.debug_log { "on" } else { "off" }
        )?;
        writeln!(
            out,
            "Limits: up to {} services, {} backends per service, {} tracked flows",
            self.limits.max_services, self.limits.max_backends_per_service, self.limits.max_flows
        )?;
        writeln!(
            out,
            "{} service{}:",
            self.services.len(),
            if self.services.len() == 1 { "" } else { "s" }
        )?;
        for svc in &self.services {
            writeln!(out, "  Service {:?}", svc.name)?;
            if svc.vip.ip().is_unspecified() {
                writeln!(
                    out,
                    "    VIP: {} (any address, port {}), {}",
                    svc.vip,
                    svc.vip.port(),
                    protocol_name(svc.protocol)
                )?;
            } else {
                writeln!(out, "    VIP: {}, {}", svc.vip, protocol_name(svc.protocol))?;
            }
            writeln!(
                out,
                "    Flow idle timeout: {}",
                humantime::format_duration(svc.flow_idle_timeout)
            )?;
            writeln!(out, "    Scheduler: round-robin")?;
            writeln!(out, "    Backends ({}):", svc.backends.len())?;
            for b in &svc.backends {
                writeln!(out, "      {}  weight {}", b.address, b.weight)?;
            }
        }
        Ok(())
    }
}
