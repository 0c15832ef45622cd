//! The command line, as clap parses it.

use std::{net::SocketAddrV4, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config;

#[derive(Parser)]
#[command(name = "xdplb", version, about = "An XDP layer-4 UDP load balancer")]
pub struct Cli {
    /// Name of the instance to run or talk to, so several can run side by side (in different
    /// namespaces); valid before or after the subcommand.
    #[arg(long, global = true, default_value = "default")]
    pub instance: String,
    #[command(subcommand)]
    pub command: Command,
}

/// How a command that prints state prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// Pretty-printed JSON for scripts.
    Json,
}

/// `-o table|json`, with the older `--json` kept as a hidden alias of `-o json`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Output {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Same as `-o json` (kept for scripts written before -o).
    #[arg(long, hide = true)]
    pub json: bool,
}

impl Output {
    pub fn is_json(self) -> bool {
        self.json || self.format == OutputFormat::Json
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Load and attach the data plane, fill its maps, and run until SIGINT or SIGTERM.
    Run {
        /// Config file (TOML). Without it, the built-in tutorial scenario runs:
        /// 127.0.0.1:9875 balanced to 127.0.0.1:9876, :9877 and :9878 on lo.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Take over from the running daemon of this instance (an upgrade): the new programs
        /// are loaded and verified first, then swapped in without a gap.
        #[arg(long)]
        replace: bool,
        /// On SIGINT/SIGTERM, detach and remove every pin. Without it the pinned data plane
        /// keeps forwarding after the daemon exits, for a restart to adopt.
        #[arg(long)]
        cleanup: bool,
    },
    /// Stop an instance for good: stop its daemon, if one runs, then detach the data plane and
    /// remove everything it pinned.
    Stop,
    /// Backend side of forwarding = "dsr-ipip": attach the program that strips the outer header
    /// on an interface: IPv4-in-IPv4 (protocol 4) for an IPv4 VIP and IPv6-in-IPv6 (next
    /// header 41) for an IPv6 one (attached through netlink, so it stays after this command
    /// exits).
    Decap {
        /// The backend's interface that receives the encapsulated packets.
        #[arg(long)]
        interface: String,
        /// auto (native, else generic), native or generic.
        #[arg(long, value_enum, default_value_t = crate::config::XdpModeSetting::Auto)]
        xdp_mode: config::XdpModeSetting,
        /// Detach it instead.
        #[arg(long, conflicts_with = "stats")]
        remove: bool,
        /// Print its counters instead.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Validate a config and say what it would do.
    Check {
        /// The config file (TOML) to check.
        #[arg(long)]
        config: PathBuf,
    },
    /// Say which backend a flow gets, and why (service, scheduler, hash, table slot).
    ///
    /// The config is the running instance's (--instance), or the file given with --config.
    Explain {
        /// Explain with this config file instead of the running instance's config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The client's address and port (`10.0.0.9:4000`, `[2001:db8::9]:4000`).
        client: std::net::SocketAddr,
        /// The destination the client sends to (a VIP, or any address of its family for a
        /// 0.0.0.0 or [::] service), of the client's family.
        destination: std::net::SocketAddr,
        #[command(flatten)]
        output: Output,
    },
    /// Status of a running instance, through its API: services, backends, health, counters.
    Status {
        #[command(flatten)]
        output: Output,
    },
    /// Every service with its VIP, mode, scheduler and policy, and under it every backend with
    /// its weight, drain and health marks and counters (like `ipvsadm -Ln`).
    ///
    /// Works from the pinned data plane when no daemon runs (and says so).
    List {
        #[command(flatten)]
        output: Output,
    },
    /// The live flows: client, VIP, backend and idle time, read from the flow table.
    ///
    /// Works from the pinned data plane when no daemon runs (and says so).
    Flows {
        /// Only the flows of this service (its name).
        #[arg(long)]
        service: Option<String>,
        /// Only the flows on this backend (IPV4:PORT).
        #[arg(long)]
        backend: Option<std::net::SocketAddr>,
        /// Print at most this many flows (the most recently active first).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        output: Output,
    },
    /// List, add or remove services of a running instance (saved to its config file).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// List, add, remove, drain, undrain or reweight backends of a running instance.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// A live view of rates per service and backend, with health and drops (q quits).
    Top,
    /// Make a running instance re-read its config file (SIGHUP) and say what changed.
    ///
    /// Exits non-zero when the instance rejects the config (it keeps running on the old one).
    Reload {
        /// Say what a reload would change, without applying anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the counters of an instance (from the pinned data plane when no daemon runs).
    Stats {
        #[command(flatten)]
        output: Output,
    },
    /// Capture what the data plane balances, before and after the rewrite, as pcapng (or one
    /// line per packet). The data plane copies packets only while a capture runs.
    Capture {
        /// Only this service's packets (by name); replies are captured only without it.
        #[arg(long)]
        service: Option<String>,
        /// Stop after this many packets (each written twice: before and after).
        #[arg(long, short = 'c')]
        count: Option<u64>,
        /// Write pcapng to this file (`-`: standard output) instead of one line per packet.
        #[arg(long = "write", short = 'w', value_name = "FILE")]
        write: Option<PathBuf>,
    },
    /// Demo UDP backends: answer every datagram with the listening address and the payload.
    DemoBackend {
        /// Comma-separated ADDRESS:PORT (IPv6 in brackets: `[2001:db8::1]:53`).
        #[arg(long, value_delimiter = ',', required = true)]
        listen: Vec<std::net::SocketAddr>,
        /// Name the replies carry instead of the listening address.
        #[arg(long)]
        name: Option<String>,
    },
    /// Demo client: send datagrams on many connected sockets and report who answered.
    DemoClient {
        /// The ADDRESS:PORT to send to (a VIP; IPv6 in brackets: `[2001:db8::1]:53`).
        #[arg(long, default_value = "127.0.0.1:9875")]
        target: std::net::SocketAddr,
        /// Local address to bind the client sockets to (of the target's family).
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// Flows: connected sockets, each from its own port.
        #[arg(long, default_value_t = 30)]
        flows: u32,
        /// Datagrams per flow.
        #[arg(long, default_value_t = 3)]
        packets: u32,
        /// How long to wait for each reply, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Pause after each reply, to spread the traffic over time.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
        /// Pad each datagram to this many bytes (above the MTU, it travels as IP fragments).
        #[arg(long, default_value_t = 0)]
        payload_bytes: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Exit non-zero unless every datagram was answered from the target by one backend per flow.
        #[arg(long)]
        require_all: bool,
    },
    /// Send small datagrams as fast as possible (or at --rate) for the forwarding benchmark.
    DemoFlood {
        /// Comma-separated ADDRESS:PORT targets; flow i goes to target i mod their number.
        #[arg(long, value_delimiter = ',', required = true)]
        target: Vec<std::net::SocketAddr>,
        /// Flows (source ports) to spread the datagrams over.
        #[arg(long, default_value_t = 256)]
        flows: u32,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Datagrams per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// UDP payload size in bytes.
        #[arg(long, default_value_t = 18)]
        payload_bytes: usize,
        /// Instead: send --flows datagrams (and stop), each the first of a new flow, from
        /// addresses of --source-net through a raw socket (needs CAP_NET_RAW; --seconds unused).
        #[arg(long, conflicts_with = "seconds")]
        new_flow_per_datagram: bool,
        /// Source addresses of --new-flow-per-datagram (64512 ports each).
        #[arg(
            long,
            default_value = "10.93.0.0/16",
            requires = "new_flow_per_datagram"
        )]
        source_net: crate::demo::new_flows::SourceNet,
    },
    /// Measure the data plane's cost per packet with BPF_PROG_TEST_RUN.
    ///
    /// By default: every forwarding mode with flow tables of every --tables size, each
    /// prefilled until it evicts (new flow: first and second packet; existing flow; no
    /// service), measured on one CPU in a network namespace of the bench's own; then the
    /// default service, the schedulers and Maglev table builds.
    Bench {
        /// Iterations per BPF_PROG_TEST_RUN of the existing-flow cases.
        #[arg(long, default_value_t = 300_000)]
        repeat: u32,
        /// Iterations per run of the matrix's new-flow cases.
        #[arg(long, default_value_t = 100_000)]
        new_flow_repeat: u32,
        /// Rounds per figure (the matrix needs at least 5); figures are their median.
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Size of the flow and reply tables of the default-service sections (default: the
        /// config default, 262144).
        #[arg(long)]
        max_flows: Option<u32>,
        /// Flow-table sizes of the matrix, in entries per CPU (max_flows = this x possible CPUs).
        #[arg(long, value_delimiter = ',', default_value = "2048,131072,4194304")]
        tables: Vec<u32>,
        /// Forwarding modes of the matrix.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "local,nat,fullnat,dsr-l2,dsr-ipip"
        )]
        modes: Vec<String>,
        /// Address families of the matrix, each measured for every mode (`ipv4`, `ipv6`).
        #[arg(long, value_delimiter = ',', default_value = "ipv4,ipv6")]
        families: Vec<String>,
        /// The CPU to measure on (default: the first this process may use).
        #[arg(long)]
        cpu: Option<usize>,
        /// Only the matrix, not the default-service, scheduler and Maglev sections.
        #[arg(long, conflicts_with = "no_matrix")]
        matrix_only: bool,
        /// Only the default-service, scheduler and Maglev sections (in this namespace).
        #[arg(long)]
        no_matrix: bool,
        /// Instead: ns/packet of every forwarding mode towards this backend (routed and
        /// resolved in this network namespace), with --source as the fullnat source.
        #[arg(long)]
        modes_backend: Option<SocketAddrV4>,
        /// The fullnat source address of --modes-backend.
        #[arg(long, default_value = "10.0.0.1")]
        source: std::net::Ipv4Addr,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// This node's VIP announcements (`[announce]`): drain it before maintenance, undrain it,
    /// or see what it announces and why.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Write the man pages and the bash, zsh and fish completions into DIR (packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// The directory to write into: DIR/man/*.1 and DIR/completions/ (created if missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand, Clone, Copy)]
pub enum NodeAction {
    /// Withdraw every VIP of this node (persisted as `[announce] drained = true`), keep
    /// forwarding what still arrives, and wait until the traffic reaching the node stops.
    Drain {
        /// Return once the routes are withdrawn, without waiting for the traffic to stop.
        #[arg(long)]
        no_wait: bool,
        /// Give up (exit 1, with the current packet rate) if traffic still arrives after this.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// The traffic has stopped once no packet arrived for this long.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        quiet: std::time::Duration,
    },
    /// Announce again every VIP that qualifies (removes `drained` from `[announce]`).
    Undrain,
    /// Whether the node is drained, its table, and every VIP: announced or not, and why.
    Status {
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum ServiceAction {
    /// Every service with every field of its `[[service]]` table, defaults filled in.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Add a service: every field of a `[[service]]` table (see the config reference).
    Add(Box<ServiceSpec>),
    /// Remove a service (its live flows end).
    Remove {
        /// The service's name.
        name: String,
    },
}

/// A `[[service]]` table on the command line; each option is the field of the same name
/// (health check fields as `--check-FIELD`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceSpec {
    /// The service's name (unique).
    #[arg(long)]
    pub name: String,
    /// IPV4:PORT or [IPV6]:PORT (0.0.0.0:PORT or [::]:PORT for any address of that family).
    #[arg(long)]
    pub vip: String,
    /// The protocol balanced (default udp).
    #[arg(long, value_enum)]
    pub protocol: Option<config::Protocol>,
    /// Such as 30s (1s..=24h).
    #[arg(long)]
    pub flow_idle_timeout: Option<String>,
    /// How new flows pick a backend (default maglev).
    #[arg(long, value_enum)]
    pub scheduler: Option<config::Scheduler>,
    /// What maglev and source-hash hash.
    #[arg(long, value_enum)]
    pub hash: Option<config::HashFields>,
    /// Entries in the Maglev table: a prime, at least 100 x the backends (default 65537).
    #[arg(long)]
    pub maglev_table_size: Option<u32>,
    /// What new flows get when no backend is healthy and undrained (default drop).
    #[arg(long, value_enum)]
    pub when_all_down: Option<config::WhenAllDown>,
    /// How packets reach the backends (default local).
    #[arg(long, value_enum)]
    pub forwarding: Option<config::Forwarding>,
    /// dsr-ipip: the prefix outer sources come from, of the vip's family, such as
    /// 10.200.0.0/24 or 2001:db8:ff::/64.
    #[arg(long)]
    pub encap_source: Option<String>,
    /// fullnat: the balancer address backends see, of the vip's family.
    #[arg(long)]
    pub fullnat_source: Option<String>,
    /// fullnat: FIRST-LAST source ports.
    #[arg(long)]
    pub fullnat_ports: Option<String>,
    /// A health check of this type; the --check-* options set its other fields.
    #[arg(long = "check", value_enum)]
    pub check: Option<config::HealthCheckType>,
    /// Time between checks of one backend, such as 1s.
    #[arg(long, requires = "check")]
    pub check_interval: Option<String>,
    /// How long a check may take, such as 500ms.
    #[arg(long, requires = "check")]
    pub check_timeout: Option<String>,
    /// Successes in a row that bring a backend up.
    #[arg(long, requires = "check")]
    pub check_rise: Option<u32>,
    /// Failures in a row that take a backend down.
    #[arg(long, requires = "check")]
    pub check_fall: Option<u32>,
    /// Check this port instead of the backend's.
    #[arg(long, requires = "check")]
    pub check_port: Option<u16>,
    /// udp: the payload to send, as text.
    #[arg(long, requires = "check")]
    pub check_payload: Option<String>,
    /// The payload as hex digits (bytes that are not text, such as a DNS query).
    #[arg(long, requires = "check")]
    pub check_payload_hex: Option<String>,
    /// udp: text the reply must contain.
    #[arg(long, requires = "check")]
    pub check_expect: Option<String>,
    /// udp: bytes (hex digits) the reply must contain.
    #[arg(long, requires = "check")]
    pub check_expect_hex: Option<String>,
    /// http: the path to GET (default /).
    #[arg(long, requires = "check")]
    pub check_path: Option<String>,
    /// http: the status a healthy backend answers (default 200).
    #[arg(long, requires = "check")]
    pub check_expect_status: Option<u16>,
    /// What happens to an unhealthy backend's live flows.
    #[arg(long, value_enum, requires = "check")]
    pub check_on_failure: Option<config::OnFailure>,
    /// ADDRESS[,weight=N][,drain], such as 10.0.0.1:53,weight=3; repeat for more.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,
}

#[derive(Subcommand)]
pub enum BackendAction {
    /// The backends of a service with their weight and drain flag.
    List {
        /// The service's name.
        service: String,
        #[command(flatten)]
        output: Output,
    },
    /// Add a backend to a service.
    Add {
        /// The service's name.
        service: String,
        /// The backend's IPV4:PORT or [IPV6]:PORT.
        address: String,
        /// Scheduler weight, 1..=65535 (default 1).
        #[arg(long)]
        weight: Option<i64>,
        /// Add it drained: no new flows until undrained.
        #[arg(long)]
        drain: bool,
    },
    /// Remove a backend from a service (its live flows move to the others).
    Remove {
        /// The service's name.
        service: String,
        /// The backend's IPV4:PORT or [IPV6]:PORT.
        address: String,
    },
    /// Drain a backend: it keeps its live flows but gets no new ones.
    Drain {
        /// The service's name.
        service: String,
        /// The backend's IPV4:PORT or [IPV6]:PORT.
        address: String,
    },
    /// Undrain a backend: it takes new flows again.
    Undrain {
        /// The service's name.
        service: String,
        /// The backend's IPV4:PORT or [IPV6]:PORT.
        address: String,
    },
    /// Set a backend's scheduler weight.
    Weight {
        /// The service's name.
        service: String,
        /// The backend's IPV4:PORT or [IPV6]:PORT.
        address: String,
        /// The new weight, 1..=65535.
        weight: i64,
    },
}
