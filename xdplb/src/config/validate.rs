//! Turns the raw TOML structures into a validated [`Config`].

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::Range,
    time::Duration,
};

use toml::Spanned;

use super::{
    BackendConfig, Config, ConfigError, FlowState, Forwarding, HashFields, HealthCheck,
    HealthCheckKind, HealthCheckType, Limits, Location, OnFailure, Protocol, Scheduler,
    ServiceConfig, WhenAllDown, XdpModeSetting,
    error::line_col,
    raw::{RawBackend, RawConfig, RawHealthCheck, RawLimits, RawService, TABLES},
};

/// Longest Linux interface name in bytes (IFNAMSIZ - 1).
const MAX_IFNAME_BYTES: usize = 15;
/// Longest service name in characters.
const MAX_SERVICE_NAME_CHARS: usize = 64;
/// Entries in the data plane's backend table: `max_services * max_backends_per_service`
/// may not exceed this.
const MAX_BACKEND_TABLE_ENTRIES: u64 = 4_194_304;
/// Range of `[limits] max_services` and `max_backends_per_service`.
const MIN_PER_TABLE: u32 = 1;
const MAX_PER_TABLE: u32 = 65_536;
/// Range of `[limits] max_flows`.
const MIN_FLOWS: u32 = 1024;
const MAX_FLOWS: u32 = 67_108_864;
/// Range and default of `flow_idle_timeout`.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_hours(24);
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Range and step of `flow_stale_after`. The minimum: a live flow's `last_seen_ns` is refreshed
/// at most once per `FLOW_REFRESH_NS` (1 s), so a flow that keeps sending looks idle for up to
/// 1 s plus its packet interval; 2 s leaves a flow that sends every second its backend. The
/// maximum and step: the data plane keeps it in 10 bits of `Service::flags` in units of 100 ms.
const MIN_STALE_AFTER: Duration = Duration::from_secs(2);
const STALE_AFTER_STEP: Duration = Duration::from_nanos(xdplb_common::SERVICE_STALE_AFTER_UNIT_NS);
const MAX_STALE_AFTER: Duration = Duration::from_nanos(
    xdplb_common::SERVICE_STALE_AFTER_UNIT_NS * xdplb_common::SERVICE_STALE_AFTER_MAX_UNITS as u64,
);
/// How `flow_stale_after` spells "off".
const STALE_AFTER_NEVER: &str = "never";
/// Range of `[limits] max_lookup_entries`.
const MIN_LOOKUP_ENTRIES: u32 = 1024;
const MAX_LOOKUP_ENTRIES: u32 = 67_108_864;
/// Default of `hash_seed`.
pub(crate) const DEFAULT_HASH_SEED: u32 = 0x5eed_1b1b;
/// Default and maximum of `maglev_table_size` (which must also be prime).
pub(crate) const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
const MAX_MAGLEV_TABLE_SIZE: u32 = 1 << 24;
/// A Maglev table needs at least this many entries per backend to spread flows evenly.
const MAGLEV_ENTRIES_PER_BACKEND: u64 = 100;
/// Entries in a weighted-round-robin scheduling table.
pub(crate) const WRR_TABLE_ENTRIES: u32 = 65_537;
/// Range and default of a health check's `interval`.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
const MAX_CHECK_INTERVAL: Duration = Duration::from_hours(1);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Minimum and default of a health check's `timeout` (at most the interval).
const MIN_CHECK_TIMEOUT: Duration = Duration::from_millis(10);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// Range of a health check's `rise` and `fall`, and their defaults.
const MIN_RISE_FALL: u16 = 1;
const MAX_RISE_FALL: u16 = 100;
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
/// Defaults of the type-specific health check fields.
const DEFAULT_UDP_PAYLOAD: &str = "xdplb-health";
const DEFAULT_HTTP_PATH: &str = "/";
const DEFAULT_HTTP_STATUS: u16 = 200;
/// Range of an HTTP health check's `expect_status`.
const MIN_HTTP_STATUS: u16 = 100;
const MAX_HTTP_STATUS: u16 = 599;
/// The largest UDP payload over IPv4 (65535 - 20 - 8).
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The source text and its name, for turning byte spans into locations.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub text: &'a str,
    pub origin: &'a str,
}

impl<'a> Source<'a> {
    /// A typed config lowered to the raw schema ([`super::typed`]): no text, so errors carry
    /// the origin alone (and lines of other items as 0, which
    /// [`change_error_message`](super::change_error_message) leaves out).
    pub(crate) fn typed(origin: &'a str) -> Self {
        Source { text: "", origin }
    }

    fn at(&self, span: &Range<usize>) -> Location {
        self.at_offset(span.start)
    }

    fn at_offset(&self, offset: usize) -> Location {
        if self.text.is_empty() {
            return Location::origin_only(self.origin);
        }
        Location::at_offset(self.origin, self.text, offset)
    }

    fn line_of(&self, offset: usize) -> u32 {
        if self.text.is_empty() {
            return 0;
        }
        line_col(self.text, offset).0
    }

    fn nowhere(&self) -> Location {
        Location::origin_only(self.origin)
    }
}

/// Converts an error from the `toml` crate (syntax, types, unknown fields).
pub(crate) fn from_toml_error(err: &toml::de::Error, src: Source<'_>) -> ConfigError {
    let at = match err.span() {
        Some(span) => src.at(&span),
        None => src.nowhere(),
    };
    let message = err
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let expected = tail.trim_start_matches(',').trim().to_owned();
        let table = TABLES
            .iter()
            .find(|(_, fields)| fields.iter().all(|f| expected.contains(&format!("`{f}`"))))
            .map_or("a table", |(name, _)| name);
        return ConfigError::UnknownField {
            at,
            field: field.to_owned(),
            table,
            expected,
        };
    }
    if ["invalid type:", "invalid value:", "invalid length"]
        .iter()
        .any(|p| message.starts_with(p))
    {
        let message = message.replace("expected i64", "expected an integer");
        return ConfigError::WrongType { at, message };
    }
    ConfigError::Syntax { at, message }
}

/// The `flow_stale_after` of a service that sets none (where its scheduler takes one and it is
/// shorter than the service's `flow_idle_timeout`; otherwise "never"). The one place the
/// default is decided: 3 s on a node that announces its VIPs (`[announce]`: a fleet behind
/// ECMP, where a flow that was away on another node must not be pulled back by this node's old
/// entry), never otherwise (a single balancer keeps the affinity of a flow idle across a table
/// change for its whole `flow_idle_timeout`).
fn default_flow_stale_after(raw: &RawConfig) -> Option<Duration> {
    raw.announce
        .as_ref()
        .map(|_| Duration::from_secs(FLEET_FLOW_STALE_AFTER_SECS))
}

/// `flow_stale_after` by default on an announcing node: above the 1 s refresh of an entry's
/// timestamp plus a live flow's packet interval, below any realistic time a flow spends on
/// another node before it comes back (BFD detection, then a BGP session coming up again).
const FLEET_FLOW_STALE_AFTER_SECS: u64 = 3;

/// Validates everything except whether the interfaces exist.
pub(crate) fn validate(raw: RawConfig, src: Source<'_>) -> Result<Config, ConfigError> {
    let stale_default = default_flow_stale_after(&raw);
    let interfaces = validate_interfaces(raw.interfaces, src)?;
    let xdp_mode = validate_xdp_mode(raw.xdp_mode, src)?;
    let hash_seed = validate_hash_seed(raw.hash_seed, src)?;
    let flow_guard_rate = match raw.flow_guard_rate {
        None => super::DEFAULT_FLOW_GUARD_RATE,
        Some(r) => u32::try_from(*r.get_ref()).map_err(|_| ConfigError::InvalidFlowGuardRate {
            at: src.at(&r.span()),
            value: *r.get_ref(),
        })?,
    };
    let metrics_span = raw.metrics_listen.as_ref().map(Spanned::span);
    let api_span = raw.api_listen.as_ref().map(Spanned::span);
    let metrics_listen = validate_metrics_listen(raw.metrics_listen, src)?;
    let api_listen = validate_api_listen(raw.api_listen, src)?;
    if let (Some(metrics), Some(api), Some(m_span), Some(a_span)) =
        (metrics_listen, api_listen, metrics_span, api_span)
        && listeners_collide(metrics, api)
    {
        // Point at whichever of the two comes second in the file.
        let span = if m_span.start > a_span.start {
            m_span
        } else {
            a_span
        };
        return Err(ConfigError::ListenersCollide {
            at: src.at(&span),
            metrics,
            api,
        });
    }
    let limits = validate_limits(raw.limits, src)?;
    let announce = validate_announce(raw.announce, src)?;
    let services = validate_services(raw.service.unwrap_or_default(), &limits, stale_default, src)?;
    Ok(Config {
        interfaces,
        xdp_mode,
        debug_log: raw.debug_log.unwrap_or(false),
        hash_seed,
        flow_guard_rate,
        metrics_listen,
        api_listen,
        limits,
        announce,
        services,
    })
}

/// `[announce]`: optional; when present, `table` is required and is not one of the tables the
/// host itself routes with (announcing there would route the VIPs into a blackhole).
fn validate_announce(
    raw: Option<Spanned<super::raw::RawAnnounce>>,
    src: Source<'_>,
) -> Result<Option<super::Announce>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let span = raw.span();
    let raw = raw.into_inner();
    let Some(table) = raw.table else {
        return Err(ConfigError::MissingField {
            at: src.at(&span),
            context: "[announce]".to_owned(),
            field: "table",
            hint: "; add the kernel routing table xdplb installs the VIP routes in, e.g. table = 4242",
        });
    };
    let value = *table.get_ref();
    let table = match u32::try_from(value) {
        Ok(t) if !super::Announce::RESERVED_TABLES.contains(&t) && t != 0 => t,
        _ => {
            return Err(ConfigError::InvalidAnnounceTable {
                at: src.at(&table.span()),
                value,
            });
        }
    };
    Ok(Some(super::Announce {
        table,
        drained: raw.drained.is_some_and(|d| *d.get_ref()),
    }))
}

fn validate_interfaces(
    raw: Option<Spanned<Vec<Spanned<String>>>>,
    src: Source<'_>,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Err(ConfigError::MissingField {
            at: src.nowhere(),
            context: "the top level".to_owned(),
            field: "interfaces",
            hint: "; e.g. interfaces = [\"eth0\"]",
        });
    };
    let list_span = list.span();
    let items = list.into_inner();
    if items.is_empty() {
        return Err(ConfigError::NoInterfaces {
            at: src.at(&list_span),
        });
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let span = item.span();
        let name = item.into_inner();
        if let Some(reason) = interface_name_problem(&name) {
            return Err(ConfigError::InvalidInterfaceName {
                at: src.at(&span),
                name,
                reason,
            });
        }
        if !seen.insert(name.clone()) {
            return Err(ConfigError::DuplicateInterface {
                at: src.at(&span),
                name,
            });
        }
        out.push(name);
    }
    Ok(out)
}

/// Why Linux would refuse `name` as an interface name, if it would.
fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > MAX_IFNAME_BYTES {
        Some(format!(
            "it is {} bytes long, the maximum is {MAX_IFNAME_BYTES}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not allowed".to_owned())
    } else if name.contains('/') {
        Some("it contains '/'".to_owned())
    } else if name.contains(':') {
        Some("it contains ':'".to_owned())
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains whitespace".to_owned())
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character".to_owned())
    } else {
        None
    }
}

fn validate_xdp_mode(
    raw: Option<Spanned<String>>,
    src: Source<'_>,
) -> Result<XdpModeSetting, ConfigError> {
    let Some(raw) = raw else {
        return Ok(XdpModeSetting::Auto);
    };
    raw.get_ref()
        .parse()
        .map_err(|_| ConfigError::InvalidXdpMode {
            at: src.at(&raw.span()),
            value: raw.get_ref().clone(),
        })
}

fn validate_hash_seed(raw: Option<Spanned<i64>>, src: Source<'_>) -> Result<u32, ConfigError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_HASH_SEED);
    };
    let value = *raw.get_ref();
    u32::try_from(value).map_err(|_| ConfigError::InvalidHashSeed {
        at: src.at(&raw.span()),
        value,
    })
}

/// The source ports of a `fullnat` service without `fullnat_ports`.
pub const DEFAULT_FULLNAT_PORTS: (u16, u16) = (20000, 59999);

/// `FIRST-LAST` with 1 <= FIRST <= LAST <= 65535.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a >= 1 && a <= b).then_some((a, b))
}

/// `A.B.C.D/N` with N in 0..=32, or `IPV6/N` with N in 0..=128, with no host bits set.
fn parse_encap_source(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let base: IpAddr = addr.parse().ok()?;
    let prefix_len: u8 = len.parse().ok()?;
    let host_bits_clear = match base {
        IpAddr::V4(v4) => {
            prefix_len <= 32
                && u32::from(v4) & u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0) == 0
        }
        IpAddr::V6(v6) => {
            prefix_len <= 128
                && u128::from(v6) & u128::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0) == 0
        }
    };
    host_bits_clear.then_some((base, prefix_len))
}

/// Refuses a service address (`field` = `value`, at `at`) of the other family than the vip:
/// the data plane translates within one family only (no NAT64/NAT46). `field` and `at` are
/// only computed for a refusal (a location costs a scan of the text, and a config has up to
/// 2^22 backends).
fn same_family_as_vip(
    ip: IpAddr,
    vip: SocketAddr,
    label: &str,
    field: impl FnOnce() -> String,
    value: &str,
    at: impl FnOnce() -> Location,
) -> Result<(), ConfigError> {
    if ip.is_ipv4() == vip.is_ipv4() {
        return Ok(());
    }
    Err(ConfigError::MixedFamilies {
        at: at(),
        what: format!("{label} {}", field()),
        value: value.to_owned(),
        vip,
    })
}

/// Whether a TCP listener on `metrics` and one on `api` cannot both bind: the same address
/// and port, or the same port with `metrics` on the unspecified address (0.0.0.0 covers every
/// IPv4 address; [::] also covers IPv4 on a dual-stack host). Port 0 picks a free port, so it
/// never collides.
fn listeners_collide(metrics: SocketAddr, api: SocketAddr) -> bool {
    metrics.port() != 0
        && metrics.port() == api.port()
        && (metrics.ip() == api.ip()
            || (metrics.ip().is_unspecified() && (metrics.is_ipv6() || api.is_ipv4())))
}

/// Why `ip` cannot be a vip, if it cannot. 0.0.0.0 and :: are the wildcards (any destination
/// address of their family). Loopback is allowed in both families (the tutorial balances on
/// `lo`).
fn vip_address_problem(ip: IpAddr) -> Option<String> {
    let ip = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) if v6.is_multicast() => {
            return Some(format!(
                "{v6} is a multicast address (ff00::/8); use a unicast address, or [::] for any address"
            ));
        }
        IpAddr::V6(v6) => return link_local_problem(v6),
    };
    if ip.is_unspecified() {
        None
    } else if ip.is_broadcast() {
        Some(
            "255.255.255.255 is the broadcast address, not one clients send a service to; use a unicast address, or 0.0.0.0 for any address"
                .to_owned(),
        )
    } else if ip.is_multicast() {
        Some(format!(
            "{ip} is a multicast address (224.0.0.0/4); use a unicast address, or 0.0.0.0 for any address"
        ))
    } else if ip.octets()[0] == 0 {
        Some(format!(
            "{ip} is in 0.0.0.0/8, which is not a destination address; 0.0.0.0 alone is the wildcard that matches any address"
        ))
    } else {
        None
    }
}

/// Why a link-local IPv6 address (fe80::/10) cannot be a VIP, a backend or a source: it names a
/// host only together with an interface, which the config cannot say (a map key, a FIB lookup
/// and `ip -6 route get` would each pick some link).
fn link_local_problem(ip: std::net::Ipv6Addr) -> Option<String> {
    ip.is_unicast_link_local().then(|| {
        format!(
            "{ip} is a link-local address (fe80::/10), which names a host only together with an interface, and the config has no way to say which; use a global or unique local (fd00::/8) address"
        )
    })
}

/// The shortest `encap_source` prefix accepted: a /8 already spans 2^24 addresses, and a
/// shorter one takes in reserved space (0.0.0.0/8, loopback, multicast).
const MIN_ENCAP_PREFIX_LEN: u8 = 8;

/// The shortest IPv6 `encap_source` prefix accepted: shorter ones take in reserved space
/// (::/8, multicast ff00::/8), and only the low 32 bits carry the flow hash anyway.
const MIN_ENCAP_PREFIX_LEN_V6: u8 = 16;

/// Why `base/prefix_len` cannot supply outer source addresses, if it cannot.
fn encap_source_problem(base: IpAddr, prefix_len: u8) -> Option<String> {
    let base = match base {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => {
            let first = v6.octets()[0];
            return if prefix_len < MIN_ENCAP_PREFIX_LEN_V6 {
                Some(format!(
                    "/{prefix_len} is shorter than /{MIN_ENCAP_PREFIX_LEN_V6} and would take in reserved ranges (::/8 with the unspecified, loopback and IPv4-mapped addresses, multicast ff00::/8)"
                ))
            } else if first == 0 {
                Some(
                    "::/8 holds the unspecified, loopback and IPv4-mapped addresses, not a source address range"
                        .to_owned(),
                )
            } else if first == 0xff {
                Some(format!(
                    "{v6} is in multicast space (ff00::/8), not unicast"
                ))
            } else {
                link_local_problem(v6)
            };
        }
    };
    let first = base.octets()[0];
    if prefix_len < MIN_ENCAP_PREFIX_LEN {
        Some(format!(
            "/{prefix_len} is shorter than /{MIN_ENCAP_PREFIX_LEN} and would take in reserved ranges (0.0.0.0/8, loopback 127.0.0.0/8, multicast 224.0.0.0/4)"
        ))
    } else if first == 0 {
        Some("0.0.0.0/8 is not a source address range".to_owned())
    } else if first == 127 {
        Some(
            "127.0.0.0/8 is loopback, which receivers drop as a source from the network".to_owned(),
        )
    } else if first >= 224 {
        Some(format!(
            "{base} is in multicast or reserved space (224.0.0.0/3), not unicast"
        ))
    } else {
        None
    }
}

fn validate_api_listen(
    raw: Option<Spanned<String>>,
    src: Source<'_>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match raw.get_ref().parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => Ok(Some(addr)),
        _ => Err(ConfigError::InvalidApiListen {
            at: src.at(&raw.span()),
            value: raw.get_ref().clone(),
        }),
    }
}

fn validate_metrics_listen(
    raw: Option<Spanned<String>>,
    src: Source<'_>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    raw.get_ref()
        .parse()
        .map(Some)
        .map_err(|_| ConfigError::InvalidMetricsListen {
            at: src.at(&raw.span()),
            value: raw.get_ref().clone(),
        })
}

fn validate_limits(
    raw: Option<Spanned<RawLimits>>,
    src: Source<'_>,
) -> Result<Limits, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Limits::DEFAULT);
    };
    let table_span = raw.span();
    let raw = raw.into_inner();
    let d = Limits::DEFAULT;
    let services_span = raw.max_services.as_ref().map(Spanned::span);
    let backends_span = raw.max_backends_per_service.as_ref().map(Spanned::span);
    let limits = Limits {
        max_services: limit_field(
            raw.max_services,
            "max_services",
            d.max_services,
            MIN_PER_TABLE..=MAX_PER_TABLE,
            src,
        )?,
        max_backends_per_service: limit_field(
            raw.max_backends_per_service,
            "max_backends_per_service",
            d.max_backends_per_service,
            MIN_PER_TABLE..=MAX_PER_TABLE,
            src,
        )?,
        max_flows: limit_field(
            raw.max_flows,
            "max_flows",
            d.max_flows,
            MIN_FLOWS..=MAX_FLOWS,
            src,
        )?,
        max_lookup_entries: limit_field(
            raw.max_lookup_entries,
            "max_lookup_entries",
            d.max_lookup_entries,
            MIN_LOOKUP_ENTRIES..=MAX_LOOKUP_ENTRIES,
            src,
        )?,
    };
    let product = u64::from(limits.max_services) * u64::from(limits.max_backends_per_service);
    if product > MAX_BACKEND_TABLE_ENTRIES {
        let span = backends_span.or(services_span).unwrap_or(table_span);
        return Err(ConfigError::BackendTableTooLarge {
            at: src.at(&span),
            max_services: limits.max_services,
            max_backends_per_service: limits.max_backends_per_service,
            product,
            limit: MAX_BACKEND_TABLE_ENTRIES,
        });
    }
    Ok(limits)
}

fn limit_field(
    raw: Option<Spanned<i64>>,
    field: &'static str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    src: Source<'_>,
) -> Result<u32, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let value = *raw.get_ref();
    match u32::try_from(value) {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(ConfigError::LimitOutOfRange {
            at: src.at(&raw.span()),
            field,
            value,
            min: i64::from(*range.start()),
            max: i64::from(*range.end()),
        }),
    }
}

fn validate_services(
    raw: Vec<Spanned<RawService>>,
    limits: &Limits,
    stale_default: Option<Duration>,
    src: Source<'_>,
) -> Result<Vec<ServiceConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::NoServices { at: src.nowhere() });
    }
    let max = usize::try_from(limits.max_services).unwrap_or(usize::MAX);
    if raw.len() > max {
        let at = raw
            .get(max)
            .map_or_else(|| src.nowhere(), |s| src.at(&s.span()));
        return Err(ConfigError::TooManyServices {
            at,
            count: raw.len(),
            limit: limits.max_services,
        });
    }

    // name -> (1-based index, offset of the name)
    let mut names: HashMap<String, (usize, usize)> = HashMap::with_capacity(raw.len());
    // (vip, protocol) -> (service label, offset of the vip)
    let mut vips: HashMap<(SocketAddr, Protocol), (String, usize)> =
        HashMap::with_capacity(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    let mut offsets = Vec::with_capacity(raw.len());
    // Lookup-table entries needed so far, and the first service that did not fit.
    let mut lookup_entries = 0u64;
    let mut first_misfit: Option<(String, Range<usize>)> = None;

    for (i, svc) in raw.into_iter().enumerate() {
        let index = i + 1;
        let svc_span = svc.span();
        let checked = validate_service(index, svc, limits, stale_default, src)?;
        let service = checked.service;
        lookup_entries += 2 * u64::from(super::table_capacity(&service, limits));
        if lookup_entries > u64::from(limits.max_lookup_entries) && first_misfit.is_none() {
            first_misfit = Some((service_label(&service.name), svc_span));
        }
        match names.entry(service.name.clone()) {
            Entry::Occupied(first) => {
                let (first_index, first_offset) = *first.get();
                return Err(ConfigError::DuplicateServiceName {
                    at: src.at_offset(checked.name_offset),
                    name: service.name,
                    index,
                    first_index,
                    first_line: src.line_of(first_offset),
                });
            }
            Entry::Vacant(slot) => {
                slot.insert((index, checked.name_offset));
            }
        }
        match vips.entry((service.vip, service.protocol)) {
            Entry::Occupied(other) => {
                let (other_label, other_offset) = other.get();
                return Err(ConfigError::DuplicateVip {
                    at: src.at_offset(checked.vip_offset),
                    service: service_label(&service.name),
                    other: other_label.clone(),
                    other_line: src.line_of(*other_offset),
                    vip: service.vip,
                    protocol: service.protocol,
                });
            }
            Entry::Vacant(slot) => {
                slot.insert((service_label(&service.name), checked.vip_offset));
            }
        }
        out.push(service);
        offsets.push(checked.offsets);
    }
    check_between_services(&out, &offsets, src)?;
    if let Some((service, span)) = first_misfit {
        return Err(ConfigError::LookupPoolTooSmall {
            at: src.at(&span),
            service,
            needed: lookup_entries,
            limit: limits.max_lookup_entries,
        });
    }
    Ok(out)
}

/// How errors refer to a service that has a valid name.
fn service_label(name: &str) -> String {
    format!("service {name:?}")
}

struct CheckedService {
    service: ServiceConfig,
    name_offset: usize,
    vip_offset: usize,
    offsets: ServiceOffsets,
}

/// Where a service's fields are, for the rules between services.
struct ServiceOffsets {
    vip: usize,
    /// The address of each backend, in order.
    backends: Vec<usize>,
    /// `fullnat_source` (the service if absent).
    fullnat_source: usize,
    /// `fullnat_ports`, or `fullnat_source` when the default range applies.
    fullnat_ports: usize,
}

/// The rules between services, checked once every service is valid on its own:
/// - two `local`/`nat` services may not share a backend address and port, since their replies
///   are matched only by (backend address:port, client address:port);
/// - a `fullnat_source` may not be any service's vip address;
/// - a wildcard vip's port may not be inside any `fullnat_ports` range.
fn check_between_services(
    services: &[ServiceConfig],
    offsets: &[ServiceOffsets],
    src: Source<'_>,
) -> Result<(), ConfigError> {
    let label = |i: usize| service_label(&services[i].name);
    // backend -> (service index, offset of its address), for local and nat services.
    let mut reply_owner: HashMap<SocketAddr, (usize, usize)> = HashMap::new();
    for (i, (svc, at)) in services.iter().zip(offsets).enumerate() {
        if !matches!(svc.forwarding, Forwarding::Local | Forwarding::Nat) {
            continue;
        }
        for (b, &offset) in svc.backends.iter().zip(&at.backends) {
            match reply_owner.entry(b.address) {
                Entry::Occupied(first) => {
                    let (other, other_offset) = *first.get();
                    return Err(ConfigError::SharedReplyBackend {
                        at: src.at_offset(offset),
                        service: label(i),
                        other: label(other),
                        other_line: src.line_of(other_offset),
                        address: b.address,
                    });
                }
                Entry::Vacant(slot) => {
                    slot.insert((i, offset));
                }
            }
        }
    }
    for (i, (svc, at)) in services.iter().zip(offsets).enumerate() {
        let Some(f) = svc.fullnat else {
            continue;
        };
        if let Some(j) = services.iter().position(|t| t.vip.ip() == f.source) {
            return Err(ConfigError::FullnatSourceIsVip {
                at: src.at_offset(at.fullnat_source),
                service: label(i),
                address: f.source,
                other: if i == j {
                    format!("{} itself", label(j))
                } else {
                    label(j)
                },
                other_line: src.line_of(offsets[j].vip),
            });
        }
    }
    for (w, (wild, at)) in services.iter().zip(offsets).enumerate() {
        if !wild.vip.ip().is_unspecified() {
            continue;
        }
        let port = wild.vip.port();
        let hit = services.iter().enumerate().find_map(|(j, t)| {
            t.fullnat
                .filter(|f| (f.port_first..=f.port_last).contains(&port))
                .map(|f| (j, f))
        });
        if let Some((j, f)) = hit {
            return Err(ConfigError::WildcardInFullnatPorts {
                at: src.at_offset(at.vip),
                service: label(w),
                port,
                other: label(j),
                other_line: src.line_of(offsets[j].fullnat_ports),
                first: f.port_first,
                last: f.port_last,
            });
        }
    }
    Ok(())
}

fn validate_service(
    index: usize,
    svc: Spanned<RawService>,
    limits: &Limits,
    stale_default: Option<Duration>,
    src: Source<'_>,
) -> Result<CheckedService, ConfigError> {
    let svc_span = svc.span();
    let raw = svc.into_inner();

    let Some(name) = raw.name else {
        return Err(ConfigError::MissingField {
            at: src.at(&svc_span),
            context: format!("service #{index}"),
            field: "name",
            hint: "; e.g. name = \"dns\"",
        });
    };
    let name_span = name.span();
    let name = name.into_inner();
    if let Some(reason) = service_name_problem(&name) {
        return Err(ConfigError::InvalidServiceName {
            at: src.at(&name_span),
            index,
            name,
            reason,
        });
    }
    let label = service_label(&name);

    let Some(vip) = raw.vip else {
        return Err(ConfigError::MissingField {
            at: src.at(&svc_span),
            context: label,
            field: "vip",
            hint: "; e.g. vip = \"192.0.2.10:53\"",
        });
    };
    let vip_span = vip.span();
    let vip = match parse_socket(vip.get_ref()) {
        Ok(addr) => match vip_address_problem(addr.ip()) {
            None => addr,
            Some(reason) => {
                return Err(ConfigError::InvalidVip {
                    at: src.at(&vip_span),
                    service: label,
                    value: vip.into_inner(),
                    reason,
                });
            }
        },
        Err(reason) => {
            return Err(ConfigError::InvalidVip {
                at: src.at(&vip_span),
                service: label,
                value: vip.into_inner(),
                reason,
            });
        }
    };

    let protocol = match raw.protocol {
        None => Protocol::Udp,
        Some(p) => match p.get_ref().parse::<Protocol>() {
            Ok(protocol) => protocol,
            // Known, but not handled by the data plane yet.
            Err(_) if p.get_ref() == "tcp" => {
                return Err(ConfigError::UnsupportedProtocol {
                    at: src.at(&p.span()),
                    service: label,
                    value: p.into_inner(),
                });
            }
            Err(_) => {
                return Err(ConfigError::InvalidProtocol {
                    at: src.at(&p.span()),
                    service: label,
                    value: p.into_inner(),
                });
            }
        },
    };

    let flow_idle_timeout = match raw.flow_idle_timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => match timeout_value(t.get_ref()) {
            Ok(d) => d,
            Err(reason) => {
                return Err(ConfigError::InvalidTimeout {
                    at: src.at(&t.span()),
                    service: label,
                    value: t.into_inner(),
                    reason,
                });
            }
        },
    };

    let scheduler = match raw.scheduler {
        None => Scheduler::Maglev,
        Some(s) => match s.get_ref().parse() {
            Ok(scheduler) => scheduler,
            Err(_) => {
                return Err(ConfigError::InvalidScheduler {
                    at: src.at(&s.span()),
                    service: label,
                    value: s.into_inner(),
                });
            }
        },
    };

    let consistent = matches!(scheduler, Scheduler::Maglev | Scheduler::SourceHash);
    let flow_stale_after = match raw.flow_stale_after {
        None => stale_default.filter(|d| consistent && *d < flow_idle_timeout),
        Some(t) => {
            let value = stale_after_value(t.get_ref(), flow_idle_timeout).map_err(|reason| {
                ConfigError::InvalidStaleAfter {
                    at: src.at(&t.span()),
                    service: label.clone(),
                    value: t.get_ref().clone(),
                    reason,
                }
            })?;
            if value.is_some() && !consistent {
                return Err(ConfigError::StaleAfterNeedsConsistentScheduler {
                    at: src.at(&t.span()),
                    service: label,
                    scheduler,
                    value: t.into_inner(),
                });
            }
            value
        }
    };

    let hash = match raw.hash {
        None if scheduler == Scheduler::SourceHash => HashFields::SourceIp,
        None => HashFields::FiveTuple,
        Some(h) => {
            let Ok(fields) = h.get_ref().parse::<HashFields>() else {
                return Err(ConfigError::InvalidHash {
                    at: src.at(&h.span()),
                    service: label,
                    value: h.into_inner(),
                });
            };
            match scheduler {
                Scheduler::Maglev => fields,
                Scheduler::SourceHash if fields == HashFields::SourceIp => fields,
                Scheduler::SourceHash => {
                    return Err(ConfigError::SourceHashFields {
                        at: src.at(&h.span()),
                        service: label,
                        value: h.into_inner(),
                    });
                }
                Scheduler::RoundRobin | Scheduler::WeightedRoundRobin | Scheduler::Random => {
                    return Err(ConfigError::HashNotApplicable {
                        at: src.at(&h.span()),
                        service: label,
                        scheduler,
                        value: h.into_inner(),
                    });
                }
            }
        }
    };

    let maglev_span = raw.maglev_table_size.as_ref().map(Spanned::span);
    let maglev_table_size = match raw.maglev_table_size {
        None => DEFAULT_MAGLEV_TABLE_SIZE,
        Some(m) if scheduler != Scheduler::Maglev => {
            return Err(ConfigError::MaglevSizeNotApplicable {
                at: src.at(&m.span()),
                service: label,
                scheduler,
                value: *m.get_ref(),
            });
        }
        Some(m) => match maglev_size_value(*m.get_ref()) {
            Ok(size) => size,
            Err(reason) => {
                return Err(ConfigError::InvalidMaglevTableSize {
                    at: src.at(&m.span()),
                    service: label,
                    value: *m.get_ref(),
                    reason,
                });
            }
        },
    };

    let health_check = match raw.health_check {
        None => None,
        Some(hc) => Some(validate_health_check(&label, hc, src)?),
    };

    let when_all_down = match raw.when_all_down {
        None => WhenAllDown::Drop,
        Some(w) => match w.get_ref().parse() {
            Ok(policy) => policy,
            Err(_) => {
                return Err(ConfigError::InvalidWhenAllDown {
                    at: src.at(&w.span()),
                    service: label,
                    value: w.into_inner(),
                });
            }
        },
    };

    let forwarding = match raw.forwarding {
        None => Forwarding::Local,
        Some(f) => match f.get_ref().parse() {
            Ok(forwarding) => forwarding,
            Err(_) => {
                return Err(ConfigError::InvalidForwarding {
                    at: src.at(&f.span()),
                    service: label,
                    value: f.into_inner(),
                });
            }
        },
    };

    let flow_state = match raw.flow_state {
        None => FlowState::FirstPacket,
        Some(f) => {
            let state = f
                .get_ref()
                .parse()
                .map_err(|_| ConfigError::InvalidFlowState {
                    at: src.at(&f.span()),
                    service: label.clone(),
                    value: f.get_ref().clone(),
                })?;
            let dsr = matches!(forwarding, Forwarding::DsrL2 | Forwarding::DsrIpip);
            let consistent = matches!(scheduler, Scheduler::Maglev | Scheduler::SourceHash);
            if state == FlowState::SecondPacket && !(dsr && consistent) {
                return Err(ConfigError::FlowStateNeedsConsistentDsr {
                    at: src.at(&f.span()),
                    service: label,
                    forwarding,
                    scheduler,
                });
            }
            state
        }
    };

    let encap_source =
        validate_encap_source(raw.encap_source, forwarding, vip, &label, &svc_span, src)?;

    // Where the fullnat range comes from: `fullnat_ports`, or `fullnat_source` for the default.
    let fullnat_offset = raw
        .fullnat_ports
        .as_ref()
        .or(raw.fullnat_source.as_ref())
        .map(|f| f.span().start);
    let fullnat_source_offset = raw.fullnat_source.as_ref().map(|f| f.span().start);
    let fullnat = validate_fullnat(
        raw.fullnat_source,
        raw.fullnat_ports.as_ref(),
        forwarding,
        vip,
        &label,
        &svc_span,
        src,
    )?;

    let Some(backends) = raw.backend else {
        return Err(ConfigError::NoBackends {
            at: src.at(&svc_span),
            service: label,
        });
    };
    let list_span = backends.span();
    let backends = backends.into_inner();
    if backends.is_empty() {
        return Err(ConfigError::NoBackends {
            at: src.at(&list_span),
            service: label,
        });
    }
    let max = usize::try_from(limits.max_backends_per_service).unwrap_or(usize::MAX);
    if backends.len() > max {
        let at = backends
            .get(max)
            .map_or_else(|| src.at(&list_span), |b| src.at(&b.span()));
        return Err(ConfigError::TooManyBackends {
            at,
            service: label,
            count: backends.len(),
            limit: limits.max_backends_per_service,
        });
    }

    let (out, backend_offsets) =
        validate_backend_list(&label, backends, &list_span, forwarding, vip, src)?;

    if scheduler == Scheduler::Maglev {
        let backends = out.len();
        let min = MAGLEV_ENTRIES_PER_BACKEND * backends as u64;
        if u64::from(maglev_table_size) < min {
            return Err(ConfigError::MaglevTableTooSmall {
                at: src.at(maglev_span.as_ref().unwrap_or(&svc_span)),
                service: label,
                size: maglev_table_size,
                defaulted: maglev_span.is_none(),
                backends,
                min,
                suggestion: next_prime(min),
            });
        }
    }

    Ok(CheckedService {
        service: ServiceConfig {
            name,
            vip,
            protocol,
            flow_idle_timeout,
            flow_stale_after,
            scheduler,
            hash,
            maglev_table_size,
            health_check,
            when_all_down,
            flow_state,
            forwarding,
            encap_source,
            fullnat,
            backends: out,
        },
        name_offset: name_span.start,
        vip_offset: vip_span.start,
        offsets: ServiceOffsets {
            vip: vip_span.start,
            backends: backend_offsets,
            fullnat_source: fullnat_source_offset.unwrap_or(svc_span.start),
            fullnat_ports: fullnat_offset.unwrap_or(svc_span.start),
        },
    })
}

fn validate_health_check(
    label: &str,
    hc: Spanned<RawHealthCheck>,
    src: Source<'_>,
) -> Result<HealthCheck, ConfigError> {
    let span = hc.span();
    let raw = hc.into_inner();

    let Some(kind) = raw.kind else {
        return Err(ConfigError::MissingField {
            at: src.at(&span),
            context: format!("{label} health_check"),
            field: "type",
            hint: "; e.g. type = \"udp\" (or \"tcp\" or \"http\")",
        });
    };
    let Ok(kind_name) = kind.get_ref().parse::<HealthCheckType>() else {
        return Err(ConfigError::InvalidHealthCheckType {
            at: src.at(&kind.span()),
            service: label.to_owned(),
            value: kind.into_inner(),
        });
    };
    // Type-specific fields given with another type, in file order.
    let mut misplaced: Vec<(Range<usize>, &'static str, String)> = Vec::new();
    if kind_name != HealthCheckType::Udp {
        for (field, value) in [
            ("payload", &raw.payload),
            ("payload_hex", &raw.payload_hex),
            ("expect", &raw.expect),
            ("expect_hex", &raw.expect_hex),
        ] {
            if let Some(v) = value {
                misplaced.push((v.span(), field, format!("{:?}", v.get_ref())));
            }
        }
    }
    if kind_name != HealthCheckType::Http {
        if let Some(v) = &raw.path {
            misplaced.push((v.span(), "path", format!("{:?}", v.get_ref())));
        }
        if let Some(v) = &raw.expect_status {
            misplaced.push((v.span(), "expect_status", v.get_ref().to_string()));
        }
    }
    if let Some((span, field, value)) = misplaced.into_iter().min_by_key(|(s, ..)| s.start) {
        return Err(ConfigError::HealthCheckFieldNotApplicable {
            at: src.at(&span),
            service: label.to_owned(),
            field,
            kind: kind_name,
            value,
        });
    }

    let interval_defaulted = raw.interval.is_none();
    let interval = match raw.interval {
        None => DEFAULT_CHECK_INTERVAL,
        Some(i) => match duration_in(i.get_ref(), MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL) {
            Ok(d) => d,
            Err(reason) => {
                return Err(ConfigError::InvalidHealthCheckInterval {
                    at: src.at(&i.span()),
                    service: label.to_owned(),
                    value: i.into_inner(),
                    reason,
                });
            }
        },
    };
    let timeout = match raw.timeout {
        // A short interval shortens the default timeout with it.
        None => DEFAULT_CHECK_TIMEOUT.min(interval),
        // No upper bound here: anything longer than the interval gets its own error.
        Some(t) => match duration_in(t.get_ref(), MIN_CHECK_TIMEOUT, Duration::MAX) {
            Ok(d) if d > interval => {
                return Err(ConfigError::HealthCheckTimeoutTooLong {
                    at: src.at(&t.span()),
                    service: label.to_owned(),
                    value: t.into_inner(),
                    interval,
                    interval_defaulted,
                });
            }
            Ok(d) => d,
            Err(reason) => {
                return Err(ConfigError::InvalidHealthCheckTimeout {
                    at: src.at(&t.span()),
                    service: label.to_owned(),
                    value: t.into_inner(),
                    reason,
                });
            }
        },
    };

    let in_range = |raw: Option<Spanned<i64>>,
                    field: &'static str,
                    range: std::ops::RangeInclusive<u16>|
     -> Result<Option<u16>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let value = *raw.get_ref();
        match u16::try_from(value) {
            Ok(v) if range.contains(&v) => Ok(Some(v)),
            _ => Err(ConfigError::HealthCheckOutOfRange {
                at: src.at(&raw.span()),
                service: label.to_owned(),
                field,
                value,
                min: i64::from(*range.start()),
                max: i64::from(*range.end()),
            }),
        }
    };
    let rise =
        in_range(raw.rise, "rise", MIN_RISE_FALL..=MAX_RISE_FALL)?.map_or(DEFAULT_RISE, u32::from);
    let fall =
        in_range(raw.fall, "fall", MIN_RISE_FALL..=MAX_RISE_FALL)?.map_or(DEFAULT_FALL, u32::from);
    let port = in_range(raw.port, "port", 1..=u16::MAX)?;

    let kind = match kind_name {
        HealthCheckType::Udp => {
            // Text or hex digits (for bytes that are not text, such as a DNS query), not both.
            let bytes = |text: Option<Spanned<String>>,
                         hex: Option<Spanned<String>>,
                         field: &'static str,
                         hex_field: &'static str| {
                let (value, field, span) = match (text, hex) {
                    (None, None) => return Ok(None),
                    (Some(_), Some(h)) => {
                        return Err(ConfigError::HealthCheckBothForms {
                            at: src.at(&h.span()),
                            service: label.to_owned(),
                            field,
                            other: hex_field,
                        });
                    }
                    (Some(t), None) => (t.get_ref().as_bytes().to_vec(), field, t.span()),
                    (None, Some(h)) => match parse_hex(h.get_ref()) {
                        Ok(bytes) => (bytes, hex_field, h.span()),
                        Err(reason) => {
                            return Err(ConfigError::InvalidHealthCheckHex {
                                at: src.at(&h.span()),
                                service: label.to_owned(),
                                field: hex_field,
                                reason: format!("{:?}: {reason}", h.get_ref()),
                            });
                        }
                    },
                };
                if value.len() > MAX_UDP_PAYLOAD {
                    return Err(ConfigError::HealthCheckPayloadTooLong {
                        at: src.at(&span),
                        service: label.to_owned(),
                        field,
                        len: value.len(),
                        max: MAX_UDP_PAYLOAD,
                    });
                }
                Ok(Some(value))
            };
            HealthCheckKind::Udp {
                payload: bytes(raw.payload, raw.payload_hex, "payload", "payload_hex")?
                    .unwrap_or_else(|| DEFAULT_UDP_PAYLOAD.as_bytes().to_vec()),
                expect: bytes(raw.expect, raw.expect_hex, "expect", "expect_hex")?,
            }
        }
        HealthCheckType::Http => {
            let path = match raw.path {
                None => DEFAULT_HTTP_PATH.to_owned(),
                Some(p) => match http_path_problem(p.get_ref()) {
                    None => p.into_inner(),
                    Some(reason) => {
                        return Err(ConfigError::InvalidHealthCheckPath {
                            at: src.at(&p.span()),
                            service: label.to_owned(),
                            value: p.into_inner(),
                            reason,
                        });
                    }
                },
            };
            let expect_status = in_range(
                raw.expect_status,
                "expect_status",
                MIN_HTTP_STATUS..=MAX_HTTP_STATUS,
            )?
            .unwrap_or(DEFAULT_HTTP_STATUS);
            HealthCheckKind::Http {
                path,
                expect_status,
            }
        }
        HealthCheckType::Tcp => HealthCheckKind::Tcp,
    };

    let on_failure = match raw.on_failure {
        None => OnFailure::KeepFlows,
        Some(o) => match o.get_ref().parse() {
            Ok(policy) => policy,
            Err(_) => {
                return Err(ConfigError::InvalidOnFailure {
                    at: src.at(&o.span()),
                    service: label.to_owned(),
                    value: o.into_inner(),
                });
            }
        },
    };

    Ok(HealthCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
        port,
        on_failure,
    })
}

/// Hex digits, two a byte (upper or lower case; no prefix, no separators), or why not.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    if text.is_empty() {
        return Err("it is empty".to_owned());
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{c:?} is not a hex digit"));
    }
    if !text.len().is_multiple_of(2) {
        return Err(format!(
            "it has {} digits, an odd number (two digits make a byte)",
            text.len()
        ));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{:?} is not a hex byte", text.get(i..i + 2)))
        })
        .collect()
}

/// The health check type that a type-specific field belongs to (for error messages).
pub(crate) fn health_check_field_type(field: &str) -> &'static str {
    match field {
        "payload" | "expect" | "payload_hex" | "expect_hex" => HealthCheckType::Udp.as_str(),
        "path" | "expect_status" => HealthCheckType::Http.as_str(),
        _ => "udp, tcp or http",
    }
}

/// What a numeric health check field means, as a "; ..." suffix for error messages.
pub(crate) fn health_check_field_meaning(field: &str) -> &'static str {
    match field {
        "rise" => {
            "; rise is how many checks in a row must succeed before a backend counts as healthy"
        }
        "fall" => {
            "; fall is how many checks in a row must fail before a backend counts as unhealthy"
        }
        "port" => {
            "; port is the port to check on the backend's address (without it, the backend's own port)"
        }
        "expect_status" => {
            "; expect_status is the HTTP status code a healthy backend answers with, such as 200 or 204"
        }
        _ => "",
    }
}

/// Why `path` cannot be the path of an HTTP request, if it cannot.
fn http_path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some("it does not start with '/'".to_owned());
    }
    path.chars()
        .find(|c| c.is_whitespace() || c.is_control())
        .map(|c| {
            format!(
                "it contains {c:?}, which cannot appear in an HTTP request line; percent-encode it"
            )
        })
}

/// A service's `encap_source`: required with `dsr-ipip` and refused with any other mode.
fn validate_encap_source(
    encap_source: Option<Spanned<String>>,
    forwarding: Forwarding,
    vip: SocketAddr,
    label: &str,
    svc_span: &Range<usize>,
    src: Source<'_>,
) -> Result<Option<super::EncapSource>, ConfigError> {
    match (encap_source, forwarding) {
        (None, Forwarding::DsrIpip) => Err(ConfigError::EncapSourceMismatch {
            at: src.at(svc_span),
            service: label.to_owned(),
            problem: "forwarding = \"dsr-ipip\" needs encap_source, the prefix the outer source addresses come from, of the vip's family (such as \"10.200.0.0/24\" or \"2001:db8:ff::/64\"; backends see it as the sender)",
        }),
        (None, _) => Ok(None),
        (Some(e), Forwarding::DsrIpip) => {
            let (base, prefix_len) =
                parse_encap_source(e.get_ref()).ok_or_else(|| ConfigError::InvalidEncapSource {
                    at: src.at(&e.span()),
                    service: label.to_owned(),
                    value: e.get_ref().clone(),
                })?;
            same_family_as_vip(
                base,
                vip,
                label,
                || "encap_source".to_owned(),
                e.get_ref(),
                || src.at(&e.span()),
            )?;
            if let Some(reason) = encap_source_problem(base, prefix_len) {
                return Err(ConfigError::UnusableEncapSource {
                    at: src.at(&e.span()),
                    service: label.to_owned(),
                    value: e.into_inner(),
                    reason,
                });
            }
            Ok(Some(super::EncapSource { base, prefix_len }))
        }
        (Some(e), _) => Err(ConfigError::EncapSourceMismatch {
            at: src.at(&e.span()),
            service: label.to_owned(),
            problem: "encap_source applies only to forwarding = \"dsr-ipip\"",
        }),
    }
}

/// A service's `fullnat_source` and `fullnat_ports`: the source is required with `fullnat`,
/// the ports default to [`DEFAULT_FULLNAT_PORTS`], and both are refused with any other mode.
fn validate_fullnat(
    fullnat_source: Option<Spanned<String>>,
    fullnat_ports: Option<&Spanned<String>>,
    forwarding: Forwarding,
    vip: SocketAddr,
    label: &str,
    svc_span: &Range<usize>,
    src: Source<'_>,
) -> Result<Option<super::FullnatConfig>, ConfigError> {
    let fullnat = match (fullnat_source, forwarding) {
        (None, Forwarding::FullNat) => {
            return Err(ConfigError::EncapSourceMismatch {
                at: src.at(svc_span),
                service: label.to_owned(),
                problem: "forwarding = \"fullnat\" needs fullnat_source, the balancer address that packets to the backends come from (one the backends route back to this balancer)",
            });
        }
        (None, _) => None,
        (Some(s), Forwarding::FullNat) => {
            let usable = |a: IpAddr| {
                !a.is_unspecified()
                    && !a.is_loopback()
                    && !a.is_multicast()
                    && match a {
                        IpAddr::V4(v4) => !v4.is_broadcast(),
                        IpAddr::V6(v6) => {
                            v6.to_ipv4_mapped().is_none() && link_local_problem(v6).is_none()
                        }
                    }
            };
            let parsed = s.get_ref().parse::<IpAddr>().ok();
            if let Some(a) = parsed {
                same_family_as_vip(
                    a,
                    vip,
                    label,
                    || "fullnat_source".to_owned(),
                    s.get_ref(),
                    || src.at(&s.span()),
                )?;
            }
            let source = match parsed {
                Some(a) if usable(a) => a,
                _ => {
                    return Err(ConfigError::InvalidFullnat {
                        at: src.at(&s.span()),
                        service: label.to_owned(),
                        field: "fullnat_source",
                        value: s.into_inner(),
                        expected: "expected a unicast IPv4 or IPv6 address (not IPv4-mapped) of this balancer that the backends can reach, such as \"10.86.0.1\" or \"2001:db8:86::1\"",
                    });
                }
            };
            let (port_first, port_last) = match fullnat_ports {
                None => (DEFAULT_FULLNAT_PORTS.0, DEFAULT_FULLNAT_PORTS.1),
                Some(p) => parse_port_range(p.get_ref()).ok_or_else(|| {
                    ConfigError::InvalidFullnat {
                        at: src.at(&p.span()),
                        service: label.to_owned(),
                        field: "fullnat_ports",
                        value: p.get_ref().clone(),
                        expected: "expected FIRST-LAST with 1 <= FIRST <= LAST <= 65535, such as \"20000-59999\"",
                    }
                })?,
            };
            Some(super::FullnatConfig {
                source,
                port_first,
                port_last,
            })
        }
        (Some(s), _) => {
            return Err(ConfigError::EncapSourceMismatch {
                at: src.at(&s.span()),
                service: label.to_owned(),
                problem: "fullnat_source applies only to forwarding = \"fullnat\"",
            });
        }
    };
    if forwarding != Forwarding::FullNat
        && let Some(p) = fullnat_ports
    {
        return Err(ConfigError::EncapSourceMismatch {
            at: src.at(&p.span()),
            service: label.to_owned(),
            problem: "fullnat_ports applies only to forwarding = \"fullnat\"",
        });
    }
    Ok(fullnat)
}

/// The backends of one service, each valid (see [`validate_backend`]), unique within the
/// service, fitting its forwarding mode, and not all drained; with the offset of each address.
fn validate_backend_list(
    label: &str,
    backends: Vec<Spanned<RawBackend>>,
    list_span: &Range<usize>,
    forwarding: Forwarding,
    vip: SocketAddr,
    src: Source<'_>,
) -> Result<(Vec<BackendConfig>, Vec<usize>), ConfigError> {
    // address -> (1-based index, offset of the address)
    let mut seen: HashMap<SocketAddr, (usize, usize)> = HashMap::with_capacity(backends.len());
    let mut out = Vec::with_capacity(backends.len());
    let mut backend_offsets = Vec::with_capacity(backends.len());
    // Offset of the last `drain = true`, for when every backend is drained.
    let mut last_drain_offset = list_span.start;
    for (j, backend) in backends.into_iter().enumerate() {
        let bindex = j + 1;
        let checked = validate_backend(label, bindex, backend, src)?;
        let (backend, addr_offset) = (checked.backend, checked.address_offset);
        same_family_as_vip(
            backend.address.ip(),
            vip,
            label,
            || format!("backend #{bindex} address"),
            &checked.address_text,
            || src.at_offset(addr_offset),
        )?;
        if let Some(offset) = checked.drain_offset.filter(|_| backend.drain) {
            last_drain_offset = offset;
        }
        match seen.entry(backend.address) {
            Entry::Occupied(first) => {
                let (first_index, first_offset) = *first.get();
                return Err(ConfigError::DuplicateBackend {
                    at: src.at_offset(addr_offset),
                    service: label.to_owned(),
                    index: bindex,
                    first_index,
                    first_line: src.line_of(first_offset),
                    address: backend.address,
                });
            }
            Entry::Vacant(slot) => {
                slot.insert((bindex, addr_offset));
            }
        }
        if forwarding != Forwarding::Local && backend.address.ip().is_loopback() {
            return Err(ConfigError::NatLoopbackBackend {
                at: src.at_offset(addr_offset),
                service: label.to_owned(),
                mode: forwarding,
                address: backend.address,
            });
        }
        if matches!(forwarding, Forwarding::Nat | Forwarding::FullNat)
            && backend.address.ip() == vip.ip()
        {
            return Err(ConfigError::BackendIsVip {
                at: src.at_offset(addr_offset),
                service: label.to_owned(),
                mode: forwarding,
                address: backend.address,
                vip: vip.ip(),
            });
        }
        if matches!(forwarding, Forwarding::DsrL2 | Forwarding::DsrIpip)
            && backend.address.port() != vip.port()
        {
            return Err(ConfigError::DsrPortMismatch {
                at: src.at_offset(addr_offset),
                service: label.to_owned(),
                mode: forwarding,
                address: backend.address,
                vip_port: vip.port(),
            });
        }
        out.push(backend);
        backend_offsets.push(addr_offset);
    }
    if out.iter().all(|b| b.drain) {
        return Err(ConfigError::AllBackendsDrained {
            at: src.at_offset(last_drain_offset),
            service: label.to_owned(),
        });
    }
    Ok((out, backend_offsets))
}

/// A validated backend and where its fields were.
struct CheckedBackend {
    backend: BackendConfig,
    /// Byte offset of the address.
    address_offset: usize,
    /// The address as written.
    address_text: String,
    /// Byte offset of the `drain` value, if given.
    drain_offset: Option<usize>,
}

fn validate_backend(
    label: &str,
    index: usize,
    backend: Spanned<RawBackend>,
    src: Source<'_>,
) -> Result<CheckedBackend, ConfigError> {
    let span = backend.span();
    let raw = backend.into_inner();
    let Some(address) = raw.address else {
        return Err(ConfigError::MissingField {
            at: src.at(&span),
            context: format!("{label} backend #{index}"),
            field: "address",
            hint: "; e.g. address = \"10.0.0.5:53\"",
        });
    };
    let addr_span = address.span();
    let invalid = |reason: String| ConfigError::InvalidBackendAddress {
        at: src.at(&addr_span),
        service: label.to_owned(),
        index,
        value: address.get_ref().clone(),
        reason,
    };
    let addr = parse_socket(address.get_ref()).map_err(invalid)?;
    let ip = addr.ip();
    if ip.is_unspecified() {
        return Err(invalid(format!(
            "{ip} is not a host address (it is only meaningful as a vip)"
        )));
    }
    if let IpAddr::V4(v4) = ip
        && v4.is_broadcast()
    {
        return Err(invalid(
            "255.255.255.255 is the broadcast address, not a host".to_owned(),
        ));
    }
    if ip.is_multicast() {
        let range = if ip.is_ipv4() {
            "224.0.0.0/4"
        } else {
            "ff00::/8"
        };
        return Err(invalid(format!(
            "{ip} is a multicast address ({range}), not a host"
        )));
    }
    if let IpAddr::V6(v6) = ip
        && let Some(reason) = link_local_problem(v6)
    {
        return Err(invalid(reason));
    }

    let weight = match raw.weight {
        None => 1,
        Some(w) => match u16::try_from(*w.get_ref()) {
            Ok(v) if v >= 1 => v,
            _ => {
                return Err(ConfigError::InvalidWeight {
                    at: src.at(&w.span()),
                    service: label.to_owned(),
                    index,
                    address: address.into_inner(),
                    value: *w.get_ref(),
                });
            }
        },
    };
    Ok(CheckedBackend {
        backend: BackendConfig {
            address: addr,
            weight,
            drain: raw.drain.as_ref().is_some_and(|d| *d.get_ref()),
        },
        address_offset: addr_span.start,
        address_text: address.into_inner(),
        drain_offset: raw.drain.map(|d| d.span().start),
    })
}

/// Checks a `maglev_table_size` value apart from the per-backend minimum, or says why it
/// is not acceptable.
fn maglev_size_value(value: i64) -> Result<u32, String> {
    if value > i64::from(MAX_MAGLEV_TABLE_SIZE) {
        return Err(format!(
            "it is larger than the maximum of {MAX_MAGLEV_TABLE_SIZE} (2^24)"
        ));
    }
    match u32::try_from(value) {
        Ok(v) if is_prime(u64::from(v)) => Ok(v),
        Ok(_) => Err("it is not prime; try 65537, 131071, 262147 or 655373".to_owned()),
        Err(_) => Err("it is negative".to_owned()),
    }
}

/// Trial division; the numbers here are at most a few million.
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The smallest prime `>= n`.
pub(crate) fn next_prime(n: u64) -> u64 {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

/// Why `name` is not a valid service name, if it is not.
fn service_name_problem(name: &str) -> Option<String> {
    let len = name.chars().count();
    if len == 0 {
        return Some("it is empty".to_owned());
    }
    if len > MAX_SERVICE_NAME_CHARS {
        return Some(format!(
            "it is {len} characters long, the maximum is {MAX_SERVICE_NAME_CHARS}"
        ));
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .map(|c| format!("it contains {c:?}"))
}

/// Parses a `flow_idle_timeout` value, or says why it is not acceptable.
fn timeout_value(text: &str) -> Result<Duration, String> {
    duration_in(text, MIN_TIMEOUT, MAX_TIMEOUT)
}

/// Parses a `flow_stale_after` value (`None`: "never"), or says why it is not acceptable.
fn stale_after_value(text: &str, idle_timeout: Duration) -> Result<Option<Duration>, String> {
    if text == STALE_AFTER_NEVER {
        return Ok(None);
    }
    let d = humantime::parse_duration(text).map_err(|e| format!("it is not a duration ({e})"))?;
    let shown = humantime::format_duration(d);
    if d < MIN_STALE_AFTER {
        return Err(format!(
            "{shown} is shorter than the minimum of 2s: a live flow's entry is refreshed at most \
             once a second, so a flow that keeps sending can look idle for 1s plus its packet \
             interval, and a shorter setting would move live flows"
        ));
    }
    if d > MAX_STALE_AFTER {
        return Err(format!(
            "{shown} is longer than the maximum of 102.3s (the data plane keeps it in 10 bits \
             of 100ms)"
        ));
    }
    if d.as_nanos() % STALE_AFTER_STEP.as_nanos() != 0 {
        return Err(format!(
            "{shown} is not a whole number of 100ms steps (the data plane's unit)"
        ));
    }
    if d >= idle_timeout {
        return Err(format!(
            "{shown} is not shorter than this service's flow_idle_timeout ({}): an entry idle \
             that long has expired anyway",
            humantime::format_duration(idle_timeout)
        ));
    }
    Ok(Some(d))
}

/// `flow_stale_after` as the config file spells it.
pub(crate) fn stale_after_text(d: Option<Duration>) -> String {
    d.map_or_else(|| STALE_AFTER_NEVER.to_owned(), super::write::duration_text)
}

/// Parses a duration of `min..=max`, or says why it is not acceptable.
fn duration_in(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("it is not a duration ({e})"))?;
    if d < min {
        Err(format!(
            "{} is shorter than the minimum of {}",
            humantime::format_duration(d),
            bound_text(min)
        ))
    } else if d > max {
        Err(format!(
            "{} is longer than the maximum of {}",
            humantime::format_duration(d),
            bound_text(max)
        ))
    } else {
        Ok(d)
    }
}

/// A range bound as the schema documents it: whole hours as hours ("24h" rather than
/// humantime's "1day").
fn bound_text(d: Duration) -> String {
    const HOUR: u64 = 60 * 60;
    if d.subsec_nanos() == 0 && d.as_secs() >= HOUR && d.as_secs().is_multiple_of(HOUR) {
        format!("{}h", d.as_secs() / HOUR)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Parses `IPV4:PORT` or `[IPV6]:PORT` with a non-zero port, explaining any problem. An IPv6
/// scope (`%eth0`) is refused (a map key holds no scope), and so is an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d` is how the maps hold IPv4: it is written as IPv4).
pub(crate) fn parse_socket(s: &str) -> Result<SocketAddr, String> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            Err("port 0 is not allowed; the port must be 1..=65535".to_owned())
        }
        Ok(SocketAddr::V6(a)) if a.scope_id() != 0 => Err(format!(
            "the scope %{} is not supported; use an address that needs no scope",
            a.scope_id()
        )),
        Ok(SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_some() => Err(format!(
            "{} is an IPv4-mapped IPv6 address; write the IPv4 address as IPv4 (\"{}:{}\")",
            a.ip(),
            a.ip()
                .to_ipv4_mapped()
                .map_or_else(String::new, |v4| v4.to_string()),
            a.port()
        )),
        Ok(a) => Ok(a),
        Err(_) => Err(diagnose_address(s)),
    }
}

fn diagnose_address(s: &str) -> String {
    if s.is_empty() {
        return "it is empty".to_owned();
    }
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => {
            return format!("the port is missing; write it as \"{s}:PORT\"");
        }
        Ok(IpAddr::V6(_)) => {
            return format!(
                "the port is missing; an IPv6 address is written in brackets before its port, as \"[{s}]:PORT\""
            );
        }
        Err(_) => {}
    }
    let port = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return "the '[' has no closing ']'; write an IPv6 address as \"[ADDRESS]:PORT\""
                .to_owned();
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return format!("{host:?} is not a valid IPv6 address");
        }
        let Some(port) = after.strip_prefix(':') else {
            return format!("the \":PORT\" after ']' is missing; write it as \"[{host}]:PORT\"");
        };
        port
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return format!("{} and there is no \":PORT\"", host_problem(s));
        };
        if host.contains(':') {
            return format!(
                "{host:?} looks like an IPv6 address, which is written in brackets before its port, as \"[ADDRESS]:PORT\""
            );
        }
        if host.parse::<Ipv4Addr>().is_err() {
            return host_problem(host);
        }
        port
    };
    if port.is_empty() {
        return "the port after ':' is missing".to_owned();
    }
    if port.chars().all(|c| c.is_ascii_digit()) {
        return format!("port {port} is out of range; the port must be 1..=65535");
    }
    format!("port {port:?} is not a number")
}

fn host_problem(host: &str) -> String {
    if host.is_empty() {
        "the IPv4 address before ':' is missing".to_owned()
    } else if host.chars().any(|c| c.is_ascii_alphabetic()) {
        format!("{host:?} is not a numeric IPv4 address (host names are not resolved)")
    } else {
        format!("{host:?} is not a valid IPv4 address (four numbers 0..=255 separated by dots)")
    }
}
