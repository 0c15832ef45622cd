//! The kernel side, seen from user space: loading the eBPF object, attaching it, and writing
//! the desired state into its maps.

pub(crate) mod attach;
mod load;
pub mod pin;
pub mod reconcile;

pub use attach::{AttachedInterface, attach_all, interface_address};
pub use load::{
    BENCH_OBJECT, DECAP_OBJECT, Dataplane, KernelMaps, PROGRAM_INGRESS, PROGRAM_REPLY,
    sum_counters as sum,
};
pub use pin::{PinRecord, Pins};
pub use reconcile::{DesiredState, MapWriter, Reconciler, ServicePlan, desired_state};

use std::io;

/// Errors of the data-plane layer. Each names the map, program or interface involved.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "not allowed to use BPF: {0}. xdplb needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )]
    NotPermitted(String),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("interface {interface}: attaching XDP in {mode} mode failed: {reason}")]
    AttachXdp {
        interface: String,
        mode: &'static str,
        reason: String,
    },
    #[error("interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
    #[error("interface {interface}: attaching the TC egress reply program failed: {reason}")]
    AttachTc { interface: String, reason: String },
    #[error("{what} index {index} is beyond the map's capacity {capacity}")]
    OverCapacity {
        what: &'static str,
        index: u32,
        capacity: u32,
    },
    #[error(
        "the config's [limits] differ from the ones the data plane was loaded with; limits change only with a restart"
    )]
    LimitsChanged,
    #[error("pin {path}: {reason}")]
    Pin {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot adopt the pinned data plane: {0}")]
    PinnedIncompatible(String),
    #[error(transparent)]
    Plan(#[from] reconcile::PlanError),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

impl DataplaneError {
    pub(crate) fn map(name: &'static str, e: aya::maps::MapError) -> Self {
        DataplaneError::Map {
            name,
            source: Box::new(e),
        }
    }
    pub(crate) fn program(name: &'static str, e: aya::programs::ProgramError) -> Self {
        DataplaneError::Program {
            name,
            source: Box::new(e),
        }
    }
}

/// True when the calling process has the capabilities that loading and attaching need.
/// Checked up front so that an unprivileged run fails with one clear sentence.
pub fn has_bpf_privileges() -> bool {
    // CAP_NET_ADMIN = 12, CAP_SYS_ADMIN = 21, CAP_PERFMON = 38, CAP_BPF = 39.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    has(12) && (has(21) || (has(39) && has(38)))
}
