//! The load balancer's configuration: TOML parsing and validation.
//!
//! [`parse`] turns TOML text into a fully validated [`Config`]; [`load`] does the
//! same for a file; [`check_interfaces`] verifies the interfaces exist (kept
//! separate so parsing stays free of host state); [`to_toml`] writes a config back
//! as TOML text that parses to the same config; [`check`] validates a typed config
//! changed in memory (the live API) with the same rules; [`ConfigFile`] makes such a
//! change as an edit of the operator's file. Every failure is a
//! [`ConfigError`] whose message names the file, the line where known, the field,
//! the offending value and what would be valid.
//!
//! The schema (unknown fields are rejected everywhere):
//!
//! ```toml
//! interfaces = ["lo"]          # required, non-empty, no duplicates
//! xdp_mode = "auto"            # optional: auto | native | generic
//! debug_log = false            # optional
//! hash_seed = 1592597275       # optional, 0..=4294967295; the same on every node of an ECMP group
//! flow_guard_rate = 100000     # optional, 0..=4294967295 (0: off): new flow entries per second
//!                              # each CPU may create; above it new flows evict no live flow
//!                              # (dsr-* with maglev/source-hash: sent without an entry;
//!                              # other services: dropped); counted in guard_* stats
//! metrics_listen = "127.0.0.1:9100"  # optional; serve Prometheus metrics there
//! api_listen = "127.0.0.1:9180"      # optional, loopback only; the API over TCP too (off by default);
//!                              # not metrics_listen's socket address (nor a port 0.0.0.0 covers)
//!
//! [limits]                     # optional; each field defaults to Limits::DEFAULT
//! max_services = 1024              # 1..=65536
//! max_backends_per_service = 1024  # 1..=65536 (product with max_services <= 4194304)
//! max_flows = 262144               # 1024..=67108864
//! max_lookup_entries = 4194304     # 1024..=67108864; must hold 2 x table_capacity per service
//!
//! [announce]                   # optional: announce the VIPs (see crate::announce)
//! table = 4242                 # required: kernel routing table for the VIP routes; not 0,
//!                              # 253 (default), 254 (main) or 255 (local)
//! drained = true               # optional, default false: announce nothing (`xdplb node drain`)
//!
//! [[service]]                  # at least one
//! name = "demo"                # required, unique, 1..=64 of [A-Za-z0-9_.-]
//! vip = "127.0.0.1:9875"       # required, IPV4:PORT or [IPV6]:PORT; 0.0.0.0:PORT ([::]:PORT)
//!                              # matches any IPv4 (IPv6) address; not multicast, broadcast,
//!                              # another 0.0.0.0/8 address or IPv4-mapped IPv6; a wildcard
//!                              # port may not lie in any service's fullnat_ports. The vip,
//!                              # backends, fullnat_source and encap_source of a service are
//!                              # all of one family (no NAT64/NAT46)
//! protocol = "udp"             # optional, only udp for now
//! flow_idle_timeout = "30s"    # optional, 1s..=24h
//! flow_stale_after = "never"   # optional, maglev and source-hash only: never | 2s..=102.3s
//!                              # (steps of 100ms, < flow_idle_timeout; default 3s with
//!                              # [announce], never without); an entry idle longer whose
//!                              # backend the table no longer chooses follows the table
//! scheduler = "maglev"         # optional: maglev | round-robin | weighted-round-robin
//!                              #           | random | source-hash
//! hash = "5-tuple"             # optional, maglev and source-hash only: 5-tuple | source-ip
//!                              # | source-ip-port; default source-ip for source-hash, which
//!                              # allows nothing else
//! maglev_table_size = 65537    # optional, maglev only: a prime, >= 100 x backends, <= 2^24
//! flow_state = "first-packet"  # optional: first-packet | second-packet (dsr-l2/dsr-ipip with
//!                              # maglev or source-hash only): when a flow gets its entry
//! when_all_down = "drop"       # optional: drop | pass; what new flows get when no backend is
//!                              # healthy and undrained (pass hands them to the host's stack)
//! forwarding = "local"         # optional: local (hand to this host's stack) | nat (route to
//!                              # backends on other hosts; replies come back through here)
//!                              # | dsr-l2 (backends on this L2 segment hold the VIP and
//!                              # answer clients directly; backend port = VIP port)
//!                              # | dsr-ipip (backends anywhere, reached in IP-in-IP; they
//!                              # run `xdplb decap`, hold the VIP and answer directly)
//! encap_source = "10.200.0.0/24"  # dsr-ipip only, required: outer sources come from this
//!                              # prefix (the flow hash picks the host part, at most its low
//!                              # 32 bits); IPv4 /8 to /32, not in 0.0.0.0/8, 127.0.0.0/8 or
//!                              # 224.0.0.0/3; IPv6 (e.g. "2001:db8:ff::/64") /16 to /128, not
//!                              # in ::/8 or ff00::/8
//! fullnat_source = "10.86.0.1" # fullnat only, required: the balancer address backends see;
//!                              # not the vip address of any service
//! fullnat_ports = "20000-59999"  # fullnat only, optional (this default): source port range
//!
//! [service.health_check]       # optional; without it every backend is always healthy
//! type = "udp"                 # required: udp | tcp | http
//! interval = "1s"              # optional, 100ms..=1h
//! timeout = "500ms"            # optional, 10ms..=interval; default 500ms or interval if shorter
//! rise = 2                     # optional, 1..=100: consecutive successes to become healthy
//! fall = 3                     # optional, 1..=100: consecutive failures to become unhealthy
//! port = 8080                  # optional, 1..=65535; default the backend's own port
//! payload = "xdplb-health"     # optional, udp only: the datagram to send
//! payload_hex = "abcd01"       # optional, udp only: the datagram as hex digits (bytes that
//!                              # are not text, such as a DNS query); not with payload
//! expect = "pong"              # optional, udp only: the reply must contain this; default any
//! expect_hex = "abcd"          # optional, udp only: expect as hex digits; not with expect
//! path = "/"                   # optional, http only: starts with '/'
//! expect_status = 200          # optional, http only: 100..=599
//! on_failure = "keep-flows"    # optional: keep-flows | move-flows (an unhealthy backend's
//!                              # live flows move to healthy backends on their next packet)
//!
//! [[service.backend]]          # at least one per service
//! address = "127.0.0.1:9876"   # required, unicast IPV4:PORT or [IPV6]:PORT of the vip's
//!                              # family, unique within the service; for
//!                              # nat and fullnat not on the vip's address; not shared by two
//!                              # local/nat services (replies are matched by backend and client
//!                              # address:port only); fullnat and dsr services may share
//! weight = 1                   # optional, 1..=65535
//! drain = false                # optional; not every backend of a service may be drained
//! ```

mod enums;
mod error;
mod file;
mod raw;
mod typed;
mod validate;
mod write;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

pub use enums::{
    FlowState, Forwarding, HashFields, HealthCheckType, OnFailure, Protocol, Scheduler,
    UnknownSpelling, WhenAllDown, XdpModeSetting,
};
pub use error::{ConfigError, Location};
pub use file::{ConfigEdit, ConfigFile, FileError, apply_edit};
pub use typed::{
    change_error_message, check, service_json, with_backend_from_json, with_service_from_json,
};
pub use write::{SaveError, Saved, save, to_toml};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interfaces to attach the XDP program to (non-empty, no duplicates).
    pub interfaces: Vec<String>,
    /// How to attach the XDP program.
    pub xdp_mode: XdpModeSetting,
    /// Optional field `debug_log`, default false.
    pub debug_log: bool,
    /// Optional field `hash_seed`, default `0x5eed_1b1b`. Seeds the flow hash and the
    /// Maglev permutations; every load balancer behind one ECMP group must use the same
    /// value so that they all send a flow to the same backend.
    pub hash_seed: u32,
    /// Optional field `flow_guard_rate`, default [`DEFAULT_FLOW_GUARD_RATE`]: the flood guard.
    /// Each CPU creates at most this many flow entries per second; above it a new flow evicts
    /// no live one (see [`FlowState`] and the `guard_*` counters). 0 switches it off.
    pub flow_guard_rate: u32,
    /// Optional field `metrics_listen`: where to serve Prometheus metrics (`GET /metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// Optional field `api_listen`: a loopback TCP address to serve the API on, besides the
    /// Unix socket. Off by default.
    pub api_listen: Option<SocketAddr>,
    /// Table sizes.
    pub limits: Limits,
    /// Optional `[announce]`: the VIP routes handed to a BGP speaker.
    pub announce: Option<Announce>,
    /// At least one service; names and (vip, protocol) pairs are unique.
    pub services: Vec<ServiceConfig>,
}

/// `[announce]`: xdplb installs a route for every VIP it should attract traffic for in kernel
/// routing table `table`, where the BGP speaker (BIRD's `kernel` protocol) learns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// The kernel routing table id: not 0 nor one the host routes with ([`Self::RESERVED_TABLES`]).
    pub table: u32,
    /// Optional field `drained`, default false: announce nothing (set by `xdplb node drain`).
    pub drained: bool,
}

impl Announce {
    /// `RT_TABLE_DEFAULT`, `RT_TABLE_MAIN`, `RT_TABLE_LOCAL`: the host's own tables.
    pub const RESERVED_TABLES: [u32; 3] = [253, 254, 255];
}

/// The default flood guard: flow entries per second per CPU. High enough that only a flood
/// (or a very busy node, which should raise it) reaches it; a node whose table turns over in
/// less than its flows' idle time should lower it.
pub const DEFAULT_FLOW_GUARD_RATE: u32 = 100_000;

/// Sizes of the data plane's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// 1..=65536.
    pub max_services: u32,
    /// 1..=65536; `max_services * max_backends_per_service <= 4_194_304`.
    pub max_backends_per_service: u32,
    /// 1024..=67108864.
    pub max_flows: u32,
    /// 1024..=67108864. Size of the data plane's pool of scheduling-table entries (u32
    /// each); every service takes `2 * table_capacity` of them (see [`table_capacity`]).
    pub max_lookup_entries: u32,
}

impl Limits {
    /// The limits used when `[limits]` (or one of its fields) is absent.
    pub const DEFAULT: Limits = Limits {
        max_services: 1024,
        max_backends_per_service: 1024,
        max_flows: 262_144,
        max_lookup_entries: 4_194_304,
    };
}

/// Entries in one scheduling table of `svc`. The data plane keeps two tables per service
/// (it fills the idle one and then switches atomically), so the service takes twice this
/// many entries of the `[limits] max_lookup_entries` pool.
pub fn table_capacity(svc: &ServiceConfig, limits: &Limits) -> u32 {
    match svc.scheduler {
        Scheduler::Maglev => svc.maglev_table_size,
        Scheduler::WeightedRoundRobin => validate::WRR_TABLE_ENTRIES,
        Scheduler::RoundRobin | Scheduler::Random | Scheduler::SourceHash => {
            limits.max_backends_per_service
        }
    }
}

/// Lookup-table entries the services need in all: two tables of [`table_capacity`] each.
fn lookup_entries_needed(services: &[ServiceConfig], limits: &Limits) -> u64 {
    services
        .iter()
        .map(|svc| 2 * u64::from(table_capacity(svc, limits)))
        .sum()
}

/// One load-balanced service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    /// `0.0.0.0:PORT` matches any IPv4 destination address, `[::]:PORT` any IPv6 one. The
    /// backends, `encap_source` and `fullnat` source are of the same family.
    pub vip: SocketAddr,
    pub protocol: Protocol,
    /// 1s..=24h.
    pub flow_idle_timeout: Duration,
    /// An entry idle longer than this whose backend is not the table's choice for its flow is
    /// stale and follows the table (ECMP fleets; see the data plane's `existing_flow`).
    /// `None`: never. 2s..=102.3s in steps of 100 ms, shorter than `flow_idle_timeout`;
    /// `Maglev` and `SourceHash` only. Default: 3 s with `[announce]`, never without.
    pub flow_stale_after: Option<Duration>,
    /// Default `Maglev`.
    pub scheduler: Scheduler,
    /// What `Maglev` and `SourceHash` hash (always `SourceIp` for `SourceHash`); the
    /// other schedulers ignore it. Default `FiveTuple`, or `SourceIp` for `SourceHash`.
    pub hash: HashFields,
    /// Entries in the Maglev table: a prime, at least 100 x the number of backends and at
    /// most 2^24. Default 65537; only `Maglev` uses it.
    pub maglev_table_size: u32,
    /// Optional `[service.health_check]`; without it every backend is always healthy.
    pub health_check: Option<HealthCheck>,
    /// What new flows get when no backend is healthy and undrained. Default `Drop`.
    pub when_all_down: WhenAllDown,
    /// When a new flow gets its flow-table entry. Default `FirstPacket`.
    pub flow_state: FlowState,
    /// How packets reach the backends. Default `Local`.
    pub forwarding: Forwarding,
    /// `DsrIpip` only (and required there): the prefix the outer source addresses come from.
    pub encap_source: Option<EncapSource>,
    /// `FullNat` only (and required there): the source address and port range.
    pub fullnat: Option<FullnatConfig>,
    /// At least one, not all drained; addresses are unique within the service.
    pub backends: Vec<BackendConfig>,
}

/// How a service's backends are checked (`[service.health_check]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `type` and the fields that only that type takes.
    pub kind: HealthCheckKind,
    /// Time between checks of one backend: 100ms..=1h, default 1s.
    pub interval: Duration,
    /// How long a check may take: 10ms..=`interval`, default 500ms (or `interval` if
    /// that is shorter).
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy backend healthy: 1..=100, default 2.
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy: 1..=100, default 3.
    pub fall: u32,
    /// Check this port on the backend's address instead of the backend's own port.
    pub port: Option<u16>,
    /// What happens to an unhealthy backend's live flows. Default `KeepFlows`.
    pub on_failure: OnFailure,
}

/// A health check's `type`: `"udp" | "tcp" | "http"`, with its type-specific fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// Send `payload` in a datagram; healthy if a reply comes back within the timeout
    /// (and contains `expect`, if given). Default payload `"xdplb-health"`.
    Udp {
        payload: Vec<u8>,
        expect: Option<Vec<u8>>,
    },
    /// Healthy if a TCP connection is accepted within the timeout.
    Tcp,
    /// `GET path` over HTTP/1.1; healthy if the status is `expect_status`. Default path
    /// `"/"` (always starts with '/'), default status 200 (100..=599).
    Http { path: String, expect_status: u16 },
}

impl HealthCheckKind {
    /// The check's `type`.
    pub fn kind(&self) -> HealthCheckType {
        match self {
            HealthCheckKind::Udp { .. } => HealthCheckType::Udp,
            HealthCheckKind::Tcp => HealthCheckType::Tcp,
            HealthCheckKind::Http { .. } => HealthCheckType::Http,
        }
    }
}

/// A `fullnat` service's source: packets to backends come from `source`, with a port of
/// `port_first..=port_last` allocated per flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullnatConfig {
    pub source: IpAddr,
    pub port_first: u16,
    pub port_last: u16,
}

/// An IPv4 or IPv6 prefix for outer source addresses, `base/prefix_len`, with no host bits set
/// in `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapSource {
    pub base: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for EncapSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

/// An IPv6 address given to a user-space tool that builds IPv4 frames only (the bench's frame
/// builder); the data plane and its writers take both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is an IPv6 address; this tool builds IPv4 frames only")]
pub struct Ipv6Unsupported(pub IpAddr);

/// The IPv4 form of a config socket address, for IPv4-only tools.
pub fn socket_v4(addr: SocketAddr) -> Result<SocketAddrV4, Ipv6Unsupported> {
    match addr {
        SocketAddr::V4(v4) => Ok(v4),
        SocketAddr::V6(_) => Err(Ipv6Unsupported(addr.ip())),
    }
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// A unicast address with a non-zero port, of the vip's family.
    pub address: SocketAddr,
    /// 1..=65535.
    pub weight: u16,
    /// Default false. A drained backend keeps its live flows but gets no new ones.
    pub drain: bool,
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
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    Config {
        interfaces: vec!["lo".to_owned()],
        xdp_mode: XdpModeSetting::Auto,
        debug_log: false,
        hash_seed: validate::DEFAULT_HASH_SEED,
        flow_guard_rate: DEFAULT_FLOW_GUARD_RATE,
        metrics_listen: None,
        api_listen: None,
        limits: Limits::DEFAULT,
        announce: None,
        services: vec![ServiceConfig {
            name: "demo".to_owned(),
            vip: SocketAddr::new(lo, 9875),
            protocol: Protocol::Udp,
            flow_idle_timeout: validate::DEFAULT_TIMEOUT,
            flow_stale_after: None,
            // The tutorial's scheduler; a service without `scheduler` gets Maglev.
            scheduler: Scheduler::RoundRobin,
            hash: HashFields::FiveTuple,
            maglev_table_size: validate::DEFAULT_MAGLEV_TABLE_SIZE,
            health_check: None,
            when_all_down: WhenAllDown::Drop,
            flow_state: FlowState::FirstPacket,
            forwarding: Forwarding::Local,
            encap_source: None,
            fullnat: None,
            backends: [9876, 9877, 9878]
                .into_iter()
                .map(|port| BackendConfig {
                    address: SocketAddr::new(lo, port),
                    weight: 1,
                    drain: false,
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

# Seeds the flow hash and the Maglev permutations. Every load balancer behind
# the same ECMP group must use the same value.
hash_seed = 1592597275

# Table sizes (these are the defaults; the whole table is optional).
[limits]
max_services = 1024
max_backends_per_service = 1024
max_flows = 262144
# Scheduling-table entries shared by all services (two tables per service).
max_lookup_entries = 4194304

[[service]]
name = "demo"
# Address and port clients send to. 0.0.0.0:PORT matches any destination address.
vip = "127.0.0.1:9875"
protocol = "udp"
# A flow (client address and port) sticks to its backend until idle this long.
flow_idle_timeout = "30s"
# How new flows are spread: "maglev" (the default when absent), "round-robin",
# "weighted-round-robin", "random" or "source-hash". The tutorial uses round-robin.
scheduler = "round-robin"

[[service.backend]]
address = "127.0.0.1:9876"
weight = 1
# A drained backend keeps its live flows but gets no new ones.
drain = false

[[service.backend]]
address = "127.0.0.1:9877"
weight = 1
drain = false

[[service.backend]]
address = "127.0.0.1:9878"
weight = 1
drain = false
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
            "Hash seed: {} (must be the same on every load balancer behind one ECMP group)",
            self.hash_seed
        )?;
        writeln!(
            out,
            "Limits: up to {} services, {} backends per service, {} tracked flows",
            self.limits.max_services, self.limits.max_backends_per_service, self.limits.max_flows
        )?;
        writeln!(
            out,
            "Scheduling tables: {} of {} lookup entries in use (two tables per service)",
            lookup_entries_needed(&self.services, &self.limits),
            self.limits.max_lookup_entries
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
                    svc.protocol
                )?;
            } else {
                writeln!(out, "    VIP: {}, {}", svc.vip, svc.protocol)?;
            }
            writeln!(
                out,
                "    Flow idle timeout: {}",
                humantime::format_duration(svc.flow_idle_timeout)
            )?;
            match svc.scheduler {
                Scheduler::Maglev => writeln!(
                    out,
                    "    Scheduler: maglev, hash {}, table size {}",
                    svc.hash, svc.maglev_table_size
                )?,
                Scheduler::SourceHash => {
                    writeln!(out, "    Scheduler: source-hash, hash {}", svc.hash)?;
                }
                other => writeln!(out, "    Scheduler: {other}")?,
            }
            if let Some(hc) = &svc.health_check {
                write_health_check(out, hc)?;
            }
            match svc.forwarding {
                Forwarding::Local => {}
                Forwarding::Nat => writeln!(
                    out,
                    "    Forwarding: nat (routed to the backends; their replies must come back through this host)"
                )?,
                Forwarding::DsrL2 => writeln!(
                    out,
                    "    Forwarding: dsr-l2 (frames readdressed to each backend's MAC; backends hold {} and answer clients directly)",
                    svc.vip.ip()
                )?,
                Forwarding::FullNat => writeln!(
                    out,
                    "    Forwarding: fullnat (to the backends from {}; their replies come back to it and are translated)",
                    svc.fullnat
                        .map(|f| format!("{}:{}-{}", f.source, f.port_first, f.port_last))
                        .unwrap_or_default()
                )?,
                Forwarding::DsrIpip => writeln!(
                    out,
                    "    Forwarding: dsr-ipip (IP-in-IP from {} to each backend; backends run `xdplb decap`, hold {} and answer clients directly)",
                    svc.encap_source.map(|e| e.to_string()).unwrap_or_default(),
                    svc.vip.ip()
                )?,
            }
            if svc.when_all_down == WhenAllDown::Pass {
                writeln!(
                    out,
                    "    When no backend is healthy and undrained: new flows pass to this host's network stack (when_all_down = \"pass\")"
                )?;
            }
            writeln!(out, "    Backends ({}):", svc.backends.len())?;
            for b in &svc.backends {
                let drain = if b.drain { ", draining" } else { "" };
                writeln!(out, "      {}  weight {}{drain}", b.address, b.weight)?;
            }
        }
        Ok(())
    }
}

/// Bytes as quoted text where they are UTF-8, else as hex (`hex abcd01`).
fn bytes_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("hex {}", typed::hex(bytes)),
    }
}

/// One line describing a service's health check.
fn write_health_check(out: &mut String, hc: &HealthCheck) -> fmt::Result {
    write!(
        out,
        "    Backend health check: {} every {}, timeout {}, rise {}, fall {}, {}",
        hc.kind.kind(),
        humantime::format_duration(hc.interval),
        humantime::format_duration(hc.timeout),
        hc.rise,
        hc.fall,
        hc.on_failure
    )?;
    let port = match hc.port {
        Some(port) => format!("port {port}"),
        None => "the backend's port".to_owned(),
    };
    match &hc.kind {
        HealthCheckKind::Udp { payload, expect } => {
            write!(out, "; sends {} to {port}, ", bytes_text(payload))?;
            match expect {
                Some(expect) => writeln!(out, "needs a reply containing {}", bytes_text(expect)),
                None => writeln!(out, "any reply counts"),
            }
        }
        HealthCheckKind::Tcp => writeln!(out, "; connects to {port}"),
        HealthCheckKind::Http {
            path,
            expect_status,
        } => writeln!(out, "; GET {path} on {port}, needs status {expect_status}"),
    }
}
