//! The config's mode enums, each spelled in exactly one place.
//!
//! [`spelled_enum!`] takes one table per enum (variant, spelling, and the data plane's numeric
//! code where there is one) and generates from it everything that needs the spelling:
//! `Display`, `FromStr`, serde's `Serialize`/`Deserialize`, clap's `ValueEnum`, the list of
//! valid spellings for error messages, and `code()`. Written by hand rather than with strum:
//! strum's `Display`/`EnumString`, serde's `rename` and clap's `value(name)` each take the
//! spelling in their own attribute on every variant, which is the three-places-per-spelling
//! this module exists to remove.

use xdplb_common::{
    FORWARD_DSR_IPIP, FORWARD_DSR_L2, FORWARD_FULLNAT, FORWARD_LOCAL, FORWARD_NAT, IPPROTO_UDP,
    SCHED_MAGLEV, SCHED_RANDOM, SCHED_ROUND_ROBIN, SCHED_SOURCE_HASH, SCHED_WEIGHTED_ROUND_ROBIN,
    hash::{HASH_FIVE_TUPLE, HASH_SOURCE_IP, HASH_SOURCE_IP_PORT},
};

/// A spelling that names no variant of an enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {what}; expected {expected}")]
pub struct UnknownSpelling {
    /// What the enum is, e.g. `scheduler`.
    pub what: &'static str,
    pub value: String,
    /// The valid spellings, quoted and separated by commas and "or".
    pub expected: String,
}

/// `"a", "b" or "c"`.
pub(crate) fn one_of(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Generates a fieldless enum and its spellings from one table; see the module docs.
macro_rules! spelled_enum {
    // With the data plane's numeric codes: the enum as below, plus `code()`.
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $what:literal, code $code_ty:ty {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $spelling:literal => $code:expr
            ),+ $(,)?
        }
    ) => {
        spelled_enum! {
            $(#[$meta])*
            pub enum $name: $what {
                $( $(#[$vmeta])* $variant = $spelling ),+
            }
        }

        impl $name {
            /// The data plane's numeric code (xdplb-common).
            pub const fn code(self) -> $code_ty {
                match self {
                    $( $name::$variant => $code, )+
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $what:literal {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $spelling:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in the table's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The valid spellings, for error messages: `"a", "b" or "c"`.
            pub fn expected() -> String {
                let all: Vec<String> =
                    Self::ALL.iter().map(|v| format!("{:?}", v.as_str())).collect();
                one_of(&all)
            }

            /// The spelling used in the config file, the API and the command line.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $spelling, )+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownSpelling;
            fn from_str(s: &str) -> Result<Self, UnknownSpelling> {
                match s {
                    $( $spelling => Ok($name::$variant), )+
                    _ => Err(UnknownSpelling {
                        what: $what,
                        value: s.to_owned(),
                        expected: Self::expected(),
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()))
            }
        }
    };
}

spelled_enum! {
    /// How to attach the XDP program: `"auto" | "native" | "generic"`, default `Auto`.
    pub enum XdpModeSetting: "xdp_mode" {
        /// Native (driver) mode if the driver supports it, otherwise generic.
        Auto = "auto",
        /// Native (driver) mode only.
        Native = "native",
        /// Generic (SKB) mode.
        Generic = "generic",
    }
}

spelled_enum! {
    /// A service's transport protocol (only udp for now).
    pub enum Protocol: "protocol", code u8 {
        Udp = "udp" => IPPROTO_UDP,
    }
}

spelled_enum! {
    /// How a service picks the backend for a new flow, default `Maglev`.
    pub enum Scheduler: "scheduler",
        code u32
    {
        /// Consistent hashing (Maglev) of [`ServiceConfig::hash`](super::ServiceConfig::hash)
        /// over a weighted table of `maglev_table_size` entries.
        Maglev = "maglev" => SCHED_MAGLEV,
        /// Each backend in turn, ignoring weights.
        RoundRobin = "round-robin" => SCHED_ROUND_ROBIN,
        /// Each backend in turn, as often as its weight.
        WeightedRoundRobin = "weighted-round-robin" => SCHED_WEIGHTED_ROUND_ROBIN,
        /// A uniformly random backend, ignoring weights.
        Random = "random" => SCHED_RANDOM,
        /// A hash of the client address only, so one client always reaches one backend.
        SourceHash = "source-hash" => SCHED_SOURCE_HASH,
    }
}

spelled_enum! {
    /// The packet fields a hashing scheduler hashes.
    pub enum HashFields: "hash", code u32
    {
        /// Source and destination address and port, and the protocol.
        FiveTuple = "5-tuple" => HASH_FIVE_TUPLE,
        /// The client (source) address only.
        SourceIp = "source-ip" => HASH_SOURCE_IP,
        /// The client (source) address and port.
        SourceIpPort = "source-ip-port" => HASH_SOURCE_IP_PORT,
    }
}

spelled_enum! {
    /// What new flows of a service get when no backend is healthy and undrained, default
    /// `Drop`.
    pub enum WhenAllDown: "when_all_down" {
        /// Drop the packets.
        Drop = "drop",
        /// Pass the packets on to the host's own network stack (`XDP_PASS`).
        Pass = "pass",
    }
}

spelled_enum! {
    /// How a service's packets reach its backends, default `Local`.
    pub enum Forwarding: "forwarding",
        code u32
    {
        /// Rewrite the destination and hand the packet to this host's stack (backends are
        /// local).
        Local = "local" => FORWARD_LOCAL,
        /// Rewrite the destination and route the packet out of an interface (FIB lookup,
        /// XDP_TX or XDP_REDIRECT); the backends' replies pass back through this host and are
        /// translated.
        Nat = "nat" => FORWARD_NAT,
        /// Direct server return on one L2 segment: only the destination MAC changes; backends
        /// hold the VIP and answer clients directly.
        DsrL2 = "dsr-l2" => FORWARD_DSR_L2,
        /// Direct server return over IP-in-IP: an outer IPv4 header to the backend; backends
        /// decapsulate (`xdplb decap`), hold the VIP and answer clients directly.
        DsrIpip = "dsr-ipip" => FORWARD_DSR_IPIP,
        /// Full NAT: source and destination rewritten (source: a balancer address and a port
        /// per flow), so replies come back on any topology; backends need no setup.
        FullNat = "fullnat" => FORWARD_FULLNAT,
    }
}

spelled_enum! {
    /// When a new flow gets its flow-table entry, default `FirstPacket`.
    pub enum FlowState: "flow_state" {
        /// With the flow's first packet: the flow keeps its backend across any table change.
        FirstPacket = "first-packet",
        /// With its second packet (`dsr-l2`, `dsr-ipip` with `maglev` or `source-hash` only):
        /// a flow of one packet (a DNS query) never costs an entry; until its entry exists a
        /// flow follows the scheduler, so a table change between its first and second packet
        /// may move it.
        SecondPacket = "second-packet",
    }
}

spelled_enum! {
    /// What happens to an unhealthy backend's live flows, default `KeepFlows`.
    pub enum OnFailure: "on_failure" {
        /// The backend gets no new flows but keeps its live ones.
        KeepFlows = "keep-flows",
        /// Its live flows move to healthy backends on their next packet.
        MoveFlows = "move-flows",
    }
}

spelled_enum! {
    /// A health check's `type`, without its type-specific fields (see
    /// [`HealthCheckKind`](super::HealthCheckKind)).
    pub enum HealthCheckType: "health check type" {
        /// A datagram, and a reply.
        Udp = "udp",
        /// A TCP connection.
        Tcp = "tcp",
        /// An HTTP GET.
        Http = "http",
    }
}

impl Forwarding {
    /// What the mode does, for error messages.
    pub fn meaning(self) -> &'static str {
        match self {
            Forwarding::Local => "the default: backends on this host",
            Forwarding::Nat => "backends on other hosts, routed through this one",
            Forwarding::DsrL2 => "backends on this L2 segment answer clients directly",
            Forwarding::DsrIpip => {
                "backends anywhere, reached in IP-in-IP, answer clients directly"
            }
            Forwarding::FullNat => "source and destination rewritten; backends need no setup",
        }
    }
}

impl WhenAllDown {
    /// What the policy does, for error messages.
    pub fn meaning(self) -> &'static str {
        match self {
            WhenAllDown::Drop => {
                "the default: new flows are dropped while no backend is healthy and undrained"
            }
            WhenAllDown::Pass => "they go to this host's own network stack",
        }
    }
}

impl FlowState {
    /// What the choice does, for error messages.
    pub fn meaning(self) -> &'static str {
        match self {
            FlowState::FirstPacket => {
                "the default: a flow's first packet creates its entry, so it keeps its backend"
            }
            FlowState::SecondPacket => {
                "dsr-* with maglev or source-hash: a flow of one packet never costs an entry"
            }
        }
    }
}

impl OnFailure {
    /// What the policy does, for error messages.
    pub fn meaning(self) -> &'static str {
        match self {
            OnFailure::KeepFlows => {
                "the default: an unhealthy backend gets no new flows but keeps its live ones"
            }
            OnFailure::MoveFlows => "its live flows move to healthy backends on their next packet",
        }
    }
}

/// `"a" (meaning of a), "b" (meaning of b) or "c" (...)`.
pub(crate) fn described<T: Copy + std::fmt::Display>(
    all: &[T],
    meaning: impl Fn(T) -> &'static str,
) -> String {
    let items: Vec<String> = all
        .iter()
        .map(|v| format!("\"{v}\" ({})", meaning(*v)))
        .collect();
    one_of(&items)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling parses back to its variant, through `FromStr`, serde and clap alike, and
    /// the `expected` list names exactly the spellings.
    fn round_trips<T>(all: &[T], expected: &str)
    where
        T: Copy
            + PartialEq
            + std::fmt::Debug
            + std::fmt::Display
            + std::str::FromStr
            + serde::Serialize
            + serde::de::DeserializeOwned
            + clap::ValueEnum,
    {
        for v in all {
            let text = v.to_string();
            assert!(v.to_string().parse::<T>().ok() == Some(*v), "{text}");
            let json = serde_json::to_string(v).expect("serialize");
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(serde_json::from_str::<T>(&json).expect("deserialize"), *v);
            assert_eq!(
                <T as clap::ValueEnum>::from_str(&text, false).expect("clap"),
                *v
            );
            assert!(
                expected.contains(&format!("\"{text}\"")),
                "{text} not in {expected}"
            );
        }
        assert_eq!(expected.matches('"').count(), 2 * all.len(), "{expected}");
        assert!("no-such-mode".parse::<T>().is_err());
    }

    #[test]
    fn every_spelling_round_trips_everywhere() {
        round_trips(XdpModeSetting::ALL, &XdpModeSetting::expected());
        round_trips(Protocol::ALL, &Protocol::expected());
        round_trips(Scheduler::ALL, &Scheduler::expected());
        round_trips(HashFields::ALL, &HashFields::expected());
        round_trips(WhenAllDown::ALL, &WhenAllDown::expected());
        round_trips(FlowState::ALL, &FlowState::expected());
        round_trips(Forwarding::ALL, &Forwarding::expected());
        round_trips(OnFailure::ALL, &OnFailure::expected());
        round_trips(HealthCheckType::ALL, &HealthCheckType::expected());
        assert_eq!(
            Scheduler::expected(),
            "\"maglev\", \"round-robin\", \"weighted-round-robin\", \"random\" or \"source-hash\""
        );
        assert_eq!(Protocol::expected(), "\"udp\"");
        let e = "x".parse::<HashFields>().expect_err("no such hash");
        assert_eq!(
            e.to_string(),
            "\"x\" is not a valid hash; expected \"5-tuple\", \"source-ip\" or \"source-ip-port\""
        );
    }

    #[test]
    fn codes_are_the_data_planes() {
        assert_eq!(Scheduler::Maglev.code(), SCHED_MAGLEV);
        assert_eq!(Scheduler::SourceHash.code(), SCHED_SOURCE_HASH);
        assert_eq!(Forwarding::FullNat.code(), FORWARD_FULLNAT);
        assert_eq!(HashFields::SourceIpPort.code(), HASH_SOURCE_IP_PORT);
        assert_eq!(Protocol::Udp.code(), IPPROTO_UDP);
        let mut codes: Vec<u32> = Scheduler::ALL.iter().map(|s| s.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), Scheduler::ALL.len(), "codes are distinct");
    }
}
