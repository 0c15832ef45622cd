//! The error type for loading and validating configuration.
//!
//! Every message is written for the operator who edits the file: it starts with
//! `FILE:LINE:COL` (or just `FILE` when no position is known), names the field and
//! the offending value, and says what would be valid.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use super::{Forwarding, Protocol, Scheduler};

/// Where in the configuration a problem was found.
///
/// Displays as `ORIGIN:LINE:COL`, or just `ORIGIN` when the position is unknown.
/// Lines and columns are 1-based; the column counts characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file path, or a label such as `<built-in>`.
    pub origin: String,
    /// 1-based line, if known.
    pub line: Option<u32>,
    /// 1-based column (in characters), if known.
    pub column: Option<u32>,
}

impl Location {
    /// A location naming only the source, with no position.
    pub fn origin_only(origin: &str) -> Self {
        Location {
            origin: origin.to_owned(),
            line: None,
            column: None,
        }
    }

    /// The location of byte `offset` in `text`.
    pub fn at_offset(origin: &str, text: &str, offset: usize) -> Self {
        let (line, column) = line_col(text, offset);
        Location {
            origin: origin.to_owned(),
            line: Some(line),
            column: Some(column),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// Converts a byte offset into a 1-based (line, column) pair. Offsets past the end
/// or inside a multi-byte character are clamped to the previous character boundary.
/// Values beyond `u32::MAX` saturate.
pub(crate) fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or("");
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (to_u32(line), to_u32(column))
}

/// Everything that can be wrong with a configuration.
///
/// Service labels (`service`, `other`) read `service "NAME"`, or `service #N` (1-based)
/// when the service has no usable name. Backend indices are 1-based, in file order.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The text is not valid TOML (or violates a TOML rule such as a duplicate key).
    #[error("{at}: TOML syntax error: {message}")]
    Syntax { at: Location, message: String },

    /// A field has the wrong TOML type (e.g. a number where a string is expected).
    #[error("{at}: {message}")]
    WrongType { at: Location, message: String },

    /// A field that the schema does not know.
    #[error(
        "{at}: unknown field `{field}` in {table}; {expected}; {}",
        super::raw::unknown_field_advice(field, table)
    )]
    UnknownField {
        at: Location,
        field: String,
        /// The table the field appeared in, e.g. `[[service]]`, or `a table`.
        table: &'static str,
        /// The valid field names, as reported by the parser.
        expected: String,
    },

    /// A required field is absent.
    #[error("{at}: {context} is missing the required field `{field}`{hint}")]
    MissingField {
        at: Location,
        /// What lacks the field: `the top level`, `service #2`, `service "demo" backend #1`.
        context: String,
        field: &'static str,
        /// An example of what to add, starting with "; ", or empty.
        hint: &'static str,
    },

    /// `interfaces = []`.
    #[error(
        "{at}: `interfaces` is empty; list at least one network interface to attach to, e.g. interfaces = [\"eth0\"]"
    )]
    NoInterfaces { at: Location },

    /// An interface name that Linux would never accept.
    #[error(
        "{at}: invalid interface name {name:?} in `interfaces`: {reason}; a valid name is 1 to 15 bytes with no '/', ':' or whitespace and is not \".\" or \"..\""
    )]
    InvalidInterfaceName {
        at: Location,
        name: String,
        reason: String,
    },

    /// The same interface listed twice.
    #[error(
        "{at}: interface {name:?} is listed more than once in `interfaces`; list each interface once"
    )]
    DuplicateInterface { at: Location, name: String },

    /// An interface that does not exist on this host (see [`super::check_interfaces`]).
    #[error(
        "{at}: interface {name:?} listed in `interfaces` does not exist on this host; check the name with `ip link`"
    )]
    InterfaceNotFound { at: Location, name: String },

    /// `xdp_mode` is not one of the known modes.
    #[error(
        "{at}: invalid xdp_mode {value:?}; expected {}",
        super::XdpModeSetting::expected()
    )]
    InvalidXdpMode { at: Location, value: String },

    /// A `[limits]` value out of its allowed range.
    #[error("{at}: [limits] {field} must be {min}..={max}, got {value}")]
    LimitOutOfRange {
        at: Location,
        field: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },

    /// A `hash_seed` outside 0..=4294967295.
    #[error(
        "{at}: hash_seed must be 0..=4294967295, got {value}; note that every load balancer behind the same ECMP group must use the same hash_seed"
    )]
    InvalidHashSeed { at: Location, value: i64 },

    /// `metrics_listen` is not an address:port.
    #[error(
        "{at}: metrics_listen must be an address and port such as \"127.0.0.1:9100\" or \"[::1]:9100\", got {value:?}"
    )]
    InvalidMetricsListen { at: Location, value: String },

    /// `api_listen` is not a loopback address:port.
    #[error(
        "{at}: api_listen must be a loopback address and port such as \"127.0.0.1:9180\" or \"[::1]:9180\" (the API has no authentication of its own; reach it remotely through an SSH tunnel or an authenticating proxy), got {value:?}"
    )]
    InvalidApiListen { at: Location, value: String },

    /// The services' scheduling tables do not fit in `[limits] max_lookup_entries`.
    #[error(
        "{at}: the services need {needed} lookup-table entries in total (two scheduling tables per service, so that changes switch atomically) but [limits] max_lookup_entries is {limit}; {service} is the first that does not fit; raise `[limits] max_lookup_entries` to at least {needed} (the maximum is 67108864) or use a smaller `maglev_table_size`"
    )]
    LookupPoolTooSmall {
        at: Location,
        /// The first service whose tables do not fit.
        service: String,
        needed: u64,
        limit: u32,
    },

    /// `max_services * max_backends_per_service` does not fit in the backend table.
    #[error(
        "{at}: [limits] max_services ({max_services}) x max_backends_per_service ({max_backends_per_service}) = {product}, which exceeds the backend table's size limit of {limit} entries; lower one of them"
    )]
    BackendTableTooLarge {
        at: Location,
        max_services: u32,
        max_backends_per_service: u32,
        product: u64,
        limit: u64,
    },

    /// No `[[service]]` tables at all.
    #[error(
        "{at}: no services are configured; add at least one [[service]] table with a name, a vip and a [[service.backend]]"
    )]
    NoServices { at: Location },

    /// More services than `[limits] max_services`.
    #[error(
        "{at}: {count} services are configured but the limit is {limit}; raise `[limits] max_services` to at least {count} or remove services"
    )]
    TooManyServices {
        at: Location,
        count: usize,
        limit: u32,
    },

    /// A service with more backends than `[limits] max_backends_per_service`.
    #[error(
        "{at}: {service} has {count} backends but the limit is {limit} per service; raise `[limits] max_backends_per_service` to at least {count} or remove backends"
    )]
    TooManyBackends {
        at: Location,
        service: String,
        count: usize,
        limit: u32,
    },

    /// A service name with bad length or characters.
    #[error(
        "{at}: service #{index} has an invalid name {name:?}: {reason}; a name is 1 to 64 characters of A-Z a-z 0-9 '_' '.' '-'"
    )]
    InvalidServiceName {
        at: Location,
        /// 1-based position of the service in the file.
        index: usize,
        name: String,
        reason: String,
    },

    /// Two services with the same name.
    #[error(
        "{at}: service #{index} is named {name:?}, but service #{first_index} (line {first_line}) already has that name; service names must be unique"
    )]
    DuplicateServiceName {
        at: Location,
        name: String,
        index: usize,
        first_index: usize,
        /// Line of the first service's name.
        first_line: u32,
    },

    /// A vip that is not `IPV4:PORT` or `[IPV6]:PORT`.
    #[error(
        "{at}: {service} has an invalid vip {value:?}: {reason}; expected IPV4:PORT such as \"192.0.2.10:53\" or [IPV6]:PORT such as \"[2001:db8::10]:53\" (0.0.0.0:PORT or [::]:PORT matches any destination address of that family)"
    )]
    InvalidVip {
        at: Location,
        service: String,
        value: String,
        reason: String,
    },

    /// A service address of the other family than its vip: a service's vip, backends,
    /// `fullnat_source` and `encap_source` are all IPv4 or all IPv6.
    #[error(
        "{at}: {what} {value:?} is {} but the service's vip {vip} is {}; a service's vip, backends, fullnat_source and encap_source must all be of one family (translating between IPv4 and IPv6, NAT64/NAT46, is not supported): use an {} address, or a separate service for {}",
        family_name(!.vip.is_ipv4()),
        family_name(.vip.is_ipv4()),
        family_name(.vip.is_ipv4()),
        family_name(!.vip.is_ipv4())
    )]
    MixedFamilies {
        at: Location,
        /// The service and the field, e.g. `service "demo" backend #2 address`.
        what: String,
        value: String,
        vip: SocketAddr,
    },

    /// Two services listening on the same VIP, port and protocol.
    #[error(
        "{at}: {service} uses vip {vip} ({protocol}), which is already used by {other} (line {other_line}); each vip, port and protocol may belong to only one service"
    )]
    DuplicateVip {
        at: Location,
        service: String,
        other: String,
        /// Line of the other service's vip.
        other_line: u32,
        vip: SocketAddr,
        protocol: Protocol,
    },

    /// A protocol that exists but is not implemented (tcp).
    #[error("{at}: {service} protocol {value:?} is not supported yet; only \"udp\" is supported")]
    UnsupportedProtocol {
        at: Location,
        service: String,
        value: String,
    },

    /// A protocol string that is not a protocol at all.
    #[error(
        "{at}: {service} has an invalid protocol {value:?}; expected {}",
        super::Protocol::expected()
    )]
    InvalidProtocol {
        at: Location,
        service: String,
        value: String,
    },

    /// A `flow_idle_timeout` that does not parse or is out of range.
    #[error(
        "{at}: {service} has an invalid flow_idle_timeout {value:?}: {reason}; expected a duration from 1s to 24h such as \"30s\", \"5m\" or \"1h 30m\""
    )]
    InvalidTimeout {
        at: Location,
        service: String,
        value: String,
        reason: String,
    },

    /// A `flow_stale_after` that does not parse or is out of range.
    #[error(
        "{at}: {service} has an invalid flow_stale_after {value:?}: {reason}; expected \"never\" or a duration from 2s to 102.3s in steps of 100ms, shorter than flow_idle_timeout, such as \"3s\""
    )]
    InvalidStaleAfter {
        at: Location,
        service: String,
        value: String,
        reason: String,
    },

    /// A `flow_stale_after` on a scheduler whose choice is not a function of the flow.
    #[error(
        "{at}: {service}: flow_stale_after = {value:?} needs scheduler = \"maglev\" or \"source-hash\": a stale entry follows what the scheduling table chooses for its flow, and with scheduler = \"{scheduler}\" that choice is not a function of the flow (it would move flows at random); remove flow_stale_after or set it to \"never\""
    )]
    StaleAfterNeedsConsistentScheduler {
        at: Location,
        service: String,
        scheduler: Scheduler,
        value: String,
    },

    /// A `scheduler` that is not one of the known schedulers.
    #[error(
        "{at}: {service} has an invalid scheduler {value:?}; expected {}",
        super::Scheduler::expected()
    )]
    InvalidScheduler {
        at: Location,
        service: String,
        value: String,
    },

    /// A `hash` that is not one of the known field sets.
    #[error(
        "{at}: {service} has an invalid hash {value:?}; expected {}",
        super::HashFields::expected()
    )]
    InvalidHash {
        at: Location,
        service: String,
        value: String,
    },

    /// `hash` given with a scheduler that does not hash.
    #[error(
        "{at}: {service} sets hash = {value:?} but its scheduler \"{scheduler}\" does not hash; `hash` only applies to the \"{}\" and \"{}\" schedulers, so remove it or change the scheduler",
        super::Scheduler::Maglev,
        super::Scheduler::SourceHash
    )]
    HashNotApplicable {
        at: Location,
        service: String,
        scheduler: Scheduler,
        value: String,
    },

    /// `scheduler = "source-hash"` with a `hash` other than `"source-ip"`.
    #[error(
        "{at}: {service} uses scheduler \"source-hash\" with hash = {value:?}, but source-hash by definition hashes only the client address; remove `hash` (or set it to \"source-ip\"), or use scheduler = \"maglev\" to hash {value:?}"
    )]
    SourceHashFields {
        at: Location,
        service: String,
        value: String,
    },

    /// `maglev_table_size` given with a scheduler other than Maglev.
    #[error(
        "{at}: {service} sets maglev_table_size = {value} but its scheduler is \"{scheduler}\"; maglev_table_size only applies to scheduler = \"{}\", so remove it or change the scheduler",
        super::Scheduler::Maglev
    )]
    MaglevSizeNotApplicable {
        at: Location,
        service: String,
        scheduler: Scheduler,
        value: i64,
    },

    /// A `maglev_table_size` that is not a prime of at most 2^24.
    #[error(
        "{at}: {service} has an invalid maglev_table_size {value}: {reason}; the size must be a prime, at least 100 x the number of backends and at most 16777216"
    )]
    InvalidMaglevTableSize {
        at: Location,
        service: String,
        value: i64,
        reason: String,
    },

    /// A Maglev table with fewer than 100 entries per backend.
    #[error(
        "{at}: {service} has {backends} backends, so its maglev_table_size {size}{} is too small: Maglev needs at least 100 x {backends} = {min} entries to spread flows evenly; set maglev_table_size to a prime of at least {min}, such as {suggestion}",
        if *defaulted { " (the default)" } else { "" }
    )]
    MaglevTableTooSmall {
        at: Location,
        service: String,
        size: u32,
        /// The size was not given, so it is the default.
        defaulted: bool,
        backends: usize,
        /// 100 x `backends`.
        min: u64,
        /// The smallest prime >= `min`.
        suggestion: u64,
    },

    /// A `forwarding` that is not one of the known modes.
    #[error(
        "{at}: {service} has an invalid forwarding {value:?}; expected {}",
        super::enums::described(super::Forwarding::ALL, super::Forwarding::meaning)
    )]
    InvalidForwarding {
        at: Location,
        service: String,
        value: String,
    },

    /// A `nat` or `dsr-l2` service with a backend this host cannot send to (a loopback address).
    #[error(
        "{at}: {service} forwards with {mode}, which sends packets to other hosts, but its backend {address} is a loopback address; use forwarding = \"local\" for backends on this host"
    )]
    NatLoopbackBackend {
        at: Location,
        service: String,
        mode: Forwarding,
        address: SocketAddr,
    },

    /// A `nat` or `fullnat` backend on the service's own vip address.
    #[error(
        "{at}: {service} forwards with {mode}, which routes packets to another host, but its backend {address} is on the service's own vip address {vip}: packets sent there come back to this balancer, so they would loop; give the backend's own address"
    )]
    BackendIsVip {
        at: Location,
        service: String,
        mode: Forwarding,
        address: SocketAddr,
        /// The vip's address (its port is not part of the problem).
        vip: IpAddr,
    },

    /// Two `local`/`nat` services with one backend address and port: their replies could not
    /// be told apart.
    #[error(
        "{at}: {service} and {other} (line {other_line}) both send flows to backend {address}, and both forward with local or nat; replies of local and nat services are matched to their flow only by (backend address:port, client address:port), so replies from {address} could not be told apart between the two services; give each service its own backend address or port (fullnat, dsr-l2 and dsr-ipip services may share backends)"
    )]
    SharedReplyBackend {
        at: Location,
        service: String,
        other: String,
        /// Line of the other service's backend address.
        other_line: u32,
        address: SocketAddr,
    },

    /// A `fullnat_source` that is some service's vip address.
    #[error(
        "{at}: {service} has fullnat_source {address}, which is the vip address of {other} (line {other_line}); backends' replies to the fullnat source would be taken for client traffic to that vip; use an address of this balancer that no service has as its vip"
    )]
    FullnatSourceIsVip {
        at: Location,
        service: String,
        address: IpAddr,
        other: String,
        /// Line of the other service's vip.
        other_line: u32,
    },

    /// A wildcard service whose port is inside a `fullnat_ports` range.
    #[error(
        "{at}: {service} has the wildcard vip 0.0.0.0:{port}, which matches every address, but port {port} is inside the fullnat_ports {first}-{last} of {other} (line {other_line}); backends' replies come back to those ports and the wildcard service would take them for new client flows; move the wildcard service to a port outside {first}-{last} or narrow fullnat_ports"
    )]
    WildcardInFullnatPorts {
        at: Location,
        service: String,
        port: u16,
        other: String,
        other_line: u32,
        first: u16,
        last: u16,
    },

    /// `metrics_listen` and `api_listen` on one socket address.
    #[error(
        "{at}: metrics_listen {metrics} and api_listen {api} are the same socket address (or one covers the other), so the second could not listen; give them different ports, such as metrics_listen = \"127.0.0.1:9100\" and api_listen = \"127.0.0.1:9180\""
    )]
    ListenersCollide {
        at: Location,
        metrics: SocketAddr,
        api: SocketAddr,
    },

    /// An `encap_source` prefix that cannot serve as outer source addresses.
    #[error(
        "{at}: {service} has encap_source {value:?}, which cannot be used for outer source addresses: {reason}; expected a prefix (IPv4 /8 to /32, IPv6 /16 to /128; 16 host bits already give 65536 addresses) of unicast addresses that route back to this balancer, such as \"10.200.0.0/24\" or \"2001:db8:ff::/64\""
    )]
    UnusableEncapSource {
        at: Location,
        service: String,
        value: String,
        reason: String,
    },

    /// A `dsr-l2` or `dsr-ipip` backend whose port differs from the VIP's.
    #[error(
        "{at}: {service} forwards with {mode}, which leaves the client's packet as it was sent, so backend {address} must listen on the VIP's port {vip_port} (it answers the client directly, from the VIP)"
    )]
    DsrPortMismatch {
        at: Location,
        service: String,
        mode: Forwarding,
        address: SocketAddr,
        vip_port: u16,
    },

    /// `encap_source` is not an IPv4 or IPv6 prefix without host bits.
    #[error(
        "{at}: {service} has an invalid encap_source {value:?}; expected an IPv4 or IPv6 prefix with no host bits set, such as \"10.200.0.0/24\" or \"2001:db8:ff::/64\""
    )]
    InvalidEncapSource {
        at: Location,
        service: String,
        value: String,
    },

    /// `fullnat_source` or `fullnat_ports` that do not parse or make no sense.
    #[error("{at}: {service} has an invalid {field} {value:?}; {expected}")]
    InvalidFullnat {
        at: Location,
        service: String,
        field: &'static str,
        value: String,
        expected: &'static str,
    },

    /// `dsr-ipip` without `encap_source`, `fullnat` without `fullnat_source`, or either
    /// field with another mode.
    #[error("{at}: {service}: {problem}")]
    EncapSourceMismatch {
        at: Location,
        service: String,
        problem: &'static str,
    },

    /// A `flow_guard_rate` outside 0..=4294967295.
    #[error(
        "{at}: flow_guard_rate must be 0..=4294967295 new flow entries per second per CPU (0 switches the guard off), got {value}"
    )]
    InvalidFlowGuardRate { at: Location, value: i64 },

    /// `[announce] table` outside 1..=4294967295 or one of the kernel's own tables.
    #[error(
        "{at}: [announce] table must be a kernel routing table id in 1..=4294967295 other than 253 (default), 254 (main) and 255 (local), which the host routes with; got {value}; pick an unused id such as 4242 and use the same one in BIRD's `kernel table` protocol"
    )]
    InvalidAnnounceTable { at: Location, value: i64 },

    /// A `flow_state` that is not one of the known spellings.
    #[error(
        "{at}: {service} has an invalid flow_state {value:?}; expected {}",
        super::enums::described(super::FlowState::ALL, super::FlowState::meaning)
    )]
    InvalidFlowState {
        at: Location,
        service: String,
        value: String,
    },

    /// `flow_state = "second-packet"` where a flow needs its entry from the first packet.
    #[error(
        "{at}: {service}: flow_state = \"second-packet\" needs forwarding = \"dsr-l2\" or \"dsr-ipip\" (replies of other modes are translated through the flow's entry) and scheduler = \"maglev\" or \"source-hash\" (so that a flow's packets reach one backend before it has an entry); this service has forwarding = \"{forwarding}\" and scheduler = \"{scheduler}\""
    )]
    FlowStateNeedsConsistentDsr {
        at: Location,
        service: String,
        forwarding: Forwarding,
        scheduler: Scheduler,
    },

    /// A `when_all_down` that is not one of the known policies.
    #[error(
        "{at}: {service} has an invalid when_all_down {value:?}; expected {}",
        super::enums::described(super::WhenAllDown::ALL, super::WhenAllDown::meaning)
    )]
    InvalidWhenAllDown {
        at: Location,
        service: String,
        value: String,
    },

    /// A health check `type` that is not one of the known types.
    #[error(
        "{at}: {service} has an invalid health_check type {value:?}; expected {}",
        super::HealthCheckType::expected()
    )]
    InvalidHealthCheckType {
        at: Location,
        service: String,
        value: String,
    },

    /// A type-specific health check field (`payload`, `expect`, `path`, `expect_status`)
    /// given with another type.
    #[error(
        "{at}: {service} health_check sets {field} = {value} but its type is \"{kind}\"; `{field}` only applies to type = \"{}\", so remove it or change the type",
        super::validate::health_check_field_type(field)
    )]
    HealthCheckFieldNotApplicable {
        at: Location,
        service: String,
        field: &'static str,
        /// The check's type.
        kind: super::HealthCheckType,
        /// The value as written in TOML (strings quoted).
        value: String,
    },

    /// A health check `interval` that does not parse or is out of range.
    #[error(
        "{at}: {service} has an invalid health_check interval {value:?}: {reason}; expected a duration from 100ms to 1h such as \"1s\", \"500ms\" or \"1m\""
    )]
    InvalidHealthCheckInterval {
        at: Location,
        service: String,
        value: String,
        reason: String,
    },

    /// A health check `timeout` that does not parse or is out of range.
    #[error(
        "{at}: {service} has an invalid health_check timeout {value:?}: {reason}; expected a duration of at least 10ms and at most the interval, such as \"500ms\" or \"2s\""
    )]
    InvalidHealthCheckTimeout {
        at: Location,
        service: String,
        value: String,
        reason: String,
    },

    /// A health check `timeout` longer than its `interval`.
    #[error(
        "{at}: {service} has health_check timeout {value:?}, which is longer than its interval {}{}; a check must end before the next one is due, so set timeout to at most {} or raise interval",
        humantime::format_duration(*interval),
        if *interval_defaulted { " (the default)" } else { "" },
        humantime::format_duration(*interval)
    )]
    HealthCheckTimeoutTooLong {
        at: Location,
        service: String,
        /// The timeout as written.
        value: String,
        interval: std::time::Duration,
        /// `interval` was not given, so it is the default.
        interval_defaulted: bool,
    },

    /// A health check `rise`, `fall`, `port` or `expect_status` out of its range.
    #[error(
        "{at}: {service} health_check {field} must be {min}..={max}, got {value}{}",
        super::validate::health_check_field_meaning(field)
    )]
    HealthCheckOutOfRange {
        at: Location,
        service: String,
        field: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },

    /// A health check `path` that is not an absolute HTTP path.
    #[error(
        "{at}: {service} has an invalid health_check path {value:?}: {reason}; expected an absolute path such as \"/\" or \"/healthz\""
    )]
    InvalidHealthCheckPath {
        at: Location,
        service: String,
        value: String,
        reason: String,
    },

    /// A health check `payload` or `expect` longer than a UDP datagram can carry.
    #[error(
        "{at}: {service} health_check {field} is {len} bytes long, but a UDP datagram carries at most {max} bytes; shorten it"
    )]
    HealthCheckPayloadTooLong {
        at: Location,
        service: String,
        field: &'static str,
        len: usize,
        max: usize,
    },

    /// A health check `payload_hex` or `expect_hex` that is not hex bytes.
    #[error(
        "{at}: {service} health_check {field} is not hex bytes: {reason}; write two hex digits a byte, such as \"abcd0100\""
    )]
    InvalidHealthCheckHex {
        at: Location,
        service: String,
        field: &'static str,
        /// Names the value and what is wrong with it.
        reason: String,
    },

    /// Both the text and the hex form of a health check payload (or expectation).
    #[error(
        "{at}: {service} health_check sets both {field} and {other}; give one: {field} as text or {other} as hex digits"
    )]
    HealthCheckBothForms {
        at: Location,
        service: String,
        field: &'static str,
        other: &'static str,
    },

    /// A health check `on_failure` that is not one of the known policies.
    #[error(
        "{at}: {service} has an invalid health_check on_failure {value:?}; expected {}",
        super::enums::described(super::OnFailure::ALL, super::OnFailure::meaning)
    )]
    InvalidOnFailure {
        at: Location,
        service: String,
        value: String,
    },

    /// A service without backends.
    #[error(
        "{at}: {service} has no backends; add at least one [[service.backend]] table with an address"
    )]
    NoBackends { at: Location, service: String },

    /// A backend address that is not a unicast `IPV4:PORT` or `[IPV6]:PORT`.
    #[error(
        "{at}: {service} backend #{index} has an invalid address {value:?}: {reason}; expected a unicast IPV4:PORT such as \"10.0.0.5:53\" or [IPV6]:PORT such as \"[2001:db8::5]:53\""
    )]
    InvalidBackendAddress {
        at: Location,
        service: String,
        index: usize,
        value: String,
        reason: String,
    },

    /// The same backend address twice within one service.
    #[error(
        "{at}: {service} backend #{index} has address {address}, which backend #{first_index} (line {first_line}) already has; list each backend once per service"
    )]
    DuplicateBackend {
        at: Location,
        service: String,
        index: usize,
        first_index: usize,
        /// Line of the first backend's address.
        first_line: u32,
        address: SocketAddr,
    },

    /// A backend weight outside 1..=65535.
    #[error(
        "{at}: {service} backend #{index} (address {address:?}): weight must be 1..=65535, got {value}"
    )]
    InvalidWeight {
        at: Location,
        service: String,
        index: usize,
        address: String,
        value: i64,
    },

    /// Every backend of a service has `drain = true`.
    #[error(
        "{at}: every backend of {service} is drained; at least one must accept new flows, so set drain = false on one of them or add a backend"
    )]
    AllBackendsDrained { at: Location, service: String },
}

/// "IPv4" or "IPv6".
fn family_name(ipv4: bool) -> &'static str {
    if ipv4 { "IPv4" } else { "IPv6" }
}
