//! Pinning in bpffs, so that the data plane outlives the daemon.
//!
//! An instance pins under `<bpffs>/xdplb/<instance>/v2/`:
//! - `maps/<MAP>`: every map that holds state (services, backends, tables, flows, counters);
//! - `progs/ingress`, `progs/reply`: the programs last attached;
//! - `links/xdp-<if>`, `links/tc-<if>`: the bpf_links that attach them.
//!
//! The `v2` is the layout version: it changes with the map layout (the maps' `_V1`, `_V2`
//! names), so a daemon never adopts maps it cannot read, and one that finds another version
//! pinned refuses to start and names the upgrade step (see [`Pins::refuse_other_layouts`]).
//! `v1` had IPv4-only `SERVICES_V1` and `FULLNAT_SOURCES_V1`; `v2` holds either family. Beside the pins, `<run dir>/<instance>.pins.json`
//! records what the reconciler needs to take over (ids, positions, table regions and halves).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::MapData;
use serde::{Deserialize, Serialize};
use xdplb_common::{
    Backend, Counter, Flow, FlowKey, FullnatPeer, FullnatSource, GLOBALS_LEN, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_FLOWS, MAP_FULLNAT, MAP_FULLNAT_SOURCES, MAP_GLOBALS, MAP_LOOKUP, MAP_PORTS,
    MAP_REPLIES, MAP_REPLY_OWNERS, MAP_RR_CURSOR, MAP_SERVICE_STATS, MAP_SERVICES, MAP_STATS,
    PORTS_LEN, Reply, ReplyKey, Service, ServiceKey,
};

use super::{AttachedInterface, DataplaneError, DesiredState};
use crate::config::Limits;

/// The pin layout version (see the module docs).
pub const PIN_VERSION: &str = "v2";
/// The default bpffs mount; `XDPLB_BPFFS` overrides it.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The maps that are pinned, and so kept across restarts. Debug-log and global-data maps
/// belong to one program load and are not.
pub const PINNED_MAPS: [&str; 14] = [
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_LOOKUP,
    MAP_RR_CURSOR,
    MAP_FLOWS,
    MAP_REPLIES,
    MAP_STATS,
    MAP_SERVICE_STATS,
    MAP_BACKEND_STATS,
    MAP_FULLNAT_SOURCES,
    MAP_FULLNAT,
    MAP_GLOBALS,
    MAP_PORTS,
    MAP_REPLY_OWNERS,
];

/// The bpffs mount to pin in.
pub fn bpffs() -> PathBuf {
    std::env::var_os("XDPLB_BPFFS").map_or_else(|| PathBuf::from(DEFAULT_BPFFS), PathBuf::from)
}

/// What `<instance>.pins.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinRecord {
    pub version: String,
    pub interfaces: Vec<AttachedInterface>,
    pub state: DesiredState,
    /// Kernel id of the instance's `STATS_V1` map, which every program of the instance uses:
    /// `xdplb stop` finds the instance's programs, and their links, by it from anywhere.
    #[serde(default)]
    pub stats_map_id: Option<u32>,
    /// Where the pins are, seen from `mount_ns` (`/proc/self/ns/mnt` of the writer).
    #[serde(default)]
    pub pins_dir: Option<PathBuf>,
    #[serde(default)]
    pub mount_ns: Option<String>,
}

/// This process's mount namespace, as `/proc/self/ns/mnt` names it (`mnt:[N]`).
pub fn own_mount_ns() -> Option<String> {
    fs::read_link("/proc/self/ns/mnt")
        .ok()
        .map(|p| p.display().to_string())
}

/// Where one instance pins.
#[derive(Debug, Clone)]
pub struct Pins {
    pub dir: PathBuf,
    pub record: PathBuf,
}

impl Pins {
    pub fn new(bpffs: &Path, run_dir: &Path, instance: &str) -> Self {
        Pins {
            dir: bpffs.join("xdplb").join(instance).join(PIN_VERSION),
            record: run_dir.join(format!("{instance}.pins.json")),
        }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.dir.join("progs").join(name)
    }

    /// `kind` is "xdp" or "tc".
    pub fn link(&self, kind: &str, interface: &str) -> PathBuf {
        self.dir.join("links").join(format!("{kind}-{interface}"))
    }

    /// Interfaces with a pinned link of `kind`.
    pub fn linked_interfaces(&self, kind: &str) -> Vec<String> {
        let prefix = format!("{kind}-");
        let Ok(entries) = fs::read_dir(self.dir.join("links")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .map(str::to_string)
            })
            .collect()
    }

    /// Whether anything is pinned for this instance.
    pub fn exist(&self) -> bool {
        self.dir.exists()
    }

    /// The pins of this instance under other layout versions (an older or newer xdplb's), which
    /// this build cannot read. They share this layout's record file.
    pub fn other_layouts(&self) -> Vec<Pins> {
        let Some(instance_dir) = self.dir.parent() else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(instance_dir) else {
            return Vec::new();
        };
        let mut found: Vec<Pins> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| e.file_name() != PIN_VERSION)
            .map(|e| Pins {
                dir: e.path(),
                record: self.record.clone(),
            })
            .collect();
        found.sort_by(|a, b| a.dir.cmp(&b.dir));
        found
    }

    /// Refuses to start beside a data plane pinned with another layout: its maps cannot be
    /// adopted, and a second data plane attached beside it would fight it for the interfaces.
    /// The error names the upgrade step.
    pub fn refuse_other_layouts(&self, instance: &str) -> Result<(), DataplaneError> {
        match self.other_layouts().first() {
            None => Ok(()),
            Some(other) => Err(DataplaneError::PinnedIncompatible(format!(
                "{} holds a data plane pinned with layout {:?} (another xdplb release), which this build (layout {PIN_VERSION:?}) cannot adopt; to upgrade, run `xdplb stop {instance}` with this build (it detaches the old data plane and removes its pins; live flows are dropped), then start again",
                other.dir.display(),
                other
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ))),
        }
    }

    /// Creates the directories (bpffs supports mkdir).
    pub fn create_dirs(&self) -> Result<(), DataplaneError> {
        for sub in ["maps", "progs", "links"] {
            let d = self.dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| DataplaneError::Pin {
                path: d.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Checks that every pinned map is there and has the shape this build and `limits` ask
    /// for, before anything is loaded. Returns false when nothing is pinned (a fresh start).
    pub fn check_maps(&self, limits: &Limits) -> Result<bool, DataplaneError> {
        let present: Vec<&str> = PINNED_MAPS
            .iter()
            .copied()
            .filter(|m| self.map(m).exists())
            .collect();
        if present.is_empty() {
            return Ok(false);
        }
        if present.len() != PINNED_MAPS.len() {
            let missing: Vec<&str> = PINNED_MAPS
                .iter()
                .copied()
                .filter(|m| !present.contains(m))
                .collect();
            return Err(DataplaneError::PinnedIncompatible(format!(
                "{} holds only part of a data plane (missing {})",
                self.dir.display(),
                missing.join(", ")
            )));
        }
        for (name, key, value, entries) in expected_shapes(limits) {
            let path = self.map(name);
            let data = MapData::from_pin(&path).map_err(|e| DataplaneError::Pin {
                path: path.clone(),
                reason: super::attach::error_chain(&e),
            })?;
            let info = data.info().map_err(|e| DataplaneError::map(name, e))?;
            let found = (info.key_size(), info.value_size(), info.max_entries());
            if found.0 != key || found.1 != value {
                return Err(DataplaneError::PinnedIncompatible(format!(
                    "pinned map {} has {}-byte keys and {}-byte values, this build uses {key} and {value}",
                    path.display(),
                    found.0,
                    found.1
                )));
            }
            if found.2 != entries {
                return Err(DataplaneError::PinnedIncompatible(format!(
                    "pinned map {} has {} entries but the config's [limits] ask for {entries}; limits change only with a fresh start (`xdplb stop`, which drops live flows)",
                    path.display(),
                    found.2
                )));
            }
        }
        Ok(true)
    }

    /// The record as written, of any layout version (for `xdplb stop`).
    pub fn read_record_any(&self) -> Option<PinRecord> {
        let text = fs::read_to_string(&self.record).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn read_record(&self) -> Result<PinRecord, DataplaneError> {
        let bad = |reason: String| {
            DataplaneError::PinnedIncompatible(format!(
                "{} is pinned, but its record {} {reason}; remove the pinned data plane with `xdplb stop` (drops live flows) and start again",
                self.dir.display(),
                self.record.display()
            ))
        };
        let text =
            fs::read_to_string(&self.record).map_err(|e| bad(format!("is unreadable: {e}")))?;
        let record: PinRecord =
            serde_json::from_str(&text).map_err(|e| bad(format!("is not valid: {e}")))?;
        if record.version != PIN_VERSION {
            return Err(bad(format!(
                "has layout {:?}, expected {PIN_VERSION:?}",
                record.version
            )));
        }
        Ok(record)
    }

    /// Writes the record atomically (temporary file, then rename).
    pub fn write_record(&self, record: &PinRecord) -> Result<(), DataplaneError> {
        let io_err = |e: io::Error| DataplaneError::Pin {
            path: self.record.clone(),
            reason: e.to_string(),
        };
        if let Some(parent) = self.record.parent() {
            fs::create_dir_all(parent).map_err(io_err)?;
        }
        let tmp = self.record.with_extension("json.tmp");
        let text = serde_json::to_string(record).map_err(|e| DataplaneError::Pin {
            path: self.record.clone(),
            reason: e.to_string(),
        })?;
        fs::write(&tmp, text).map_err(io_err)?;
        fs::rename(&tmp, &self.record).map_err(io_err)
    }

    /// Removes every pin and the record: links first (which detaches them once no process
    /// holds them), then programs, then maps. Returns the interfaces that were linked.
    pub fn remove_all(&self) -> Result<Vec<String>, DataplaneError> {
        let mut interfaces = self.linked_interfaces("xdp");
        for i in self.linked_interfaces("tc") {
            if !interfaces.contains(&i) {
                interfaces.push(i);
            }
        }
        for sub in ["links", "progs", "maps"] {
            remove_dir_files(&self.dir.join(sub))?;
        }
        for d in [
            self.dir.join("links"),
            self.dir.join("progs"),
            self.dir.join("maps"),
            self.dir.clone(),
        ] {
            remove_dir_if_present(&d)?;
        }
        // The instance directory and `xdplb/` go too when nothing else lives there.
        if let Some(instance_dir) = self.dir.parent() {
            let _ = fs::remove_dir(instance_dir);
            if let Some(top) = instance_dir.parent() {
                let _ = fs::remove_dir(top);
            }
        }
        match fs::remove_file(&self.record) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DataplaneError::Pin {
                    path: self.record.clone(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(interfaces)
    }
}

fn remove_dir_files(dir: &Path) -> Result<(), DataplaneError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(DataplaneError::Pin {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        fs::remove_file(&path).map_err(|e| DataplaneError::Pin {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> Result<(), DataplaneError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataplaneError::Pin {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// (map, key size, value size, max entries) as [`super::Dataplane::load`] creates them.
fn expected_shapes(limits: &Limits) -> [(&'static str, u32, u32, u32); 14] {
    let backends = limits.max_services * limits.max_backends_per_service;
    let size = |n: usize| n as u32;
    [
        (
            MAP_SERVICES,
            size(size_of::<ServiceKey>()),
            size(size_of::<Service>()),
            limits.max_services,
        ),
        (MAP_BACKENDS, 4, size(size_of::<Backend>()), backends),
        (MAP_LOOKUP, 4, 4, limits.max_lookup_entries),
        (MAP_RR_CURSOR, 4, 4, limits.max_services),
        (
            MAP_FLOWS,
            size(size_of::<FlowKey>()),
            size(size_of::<Flow>()),
            limits.max_flows,
        ),
        (
            MAP_REPLIES,
            size(size_of::<ReplyKey>()),
            size(size_of::<Reply>()),
            limits.max_flows,
        ),
        (MAP_STATS, 4, 8, xdplb_common::Stat::CAPACITY),
        (
            MAP_SERVICE_STATS,
            4,
            size(size_of::<Counter>()),
            limits.max_services,
        ),
        (MAP_BACKEND_STATS, 4, size(size_of::<Counter>()), backends),
        (
            MAP_FULLNAT_SOURCES,
            4,
            size(size_of::<FullnatSource>()),
            limits.max_services,
        ),
        (
            MAP_FULLNAT,
            size(size_of::<ReplyKey>()),
            size(size_of::<FullnatPeer>()),
            limits.max_flows,
        ),
        (MAP_GLOBALS, 4, 4, GLOBALS_LEN),
        (MAP_PORTS, 4, 4, PORTS_LEN),
        (
            MAP_REPLY_OWNERS,
            size(size_of::<ServiceKey>()),
            size(size_of::<Reply>()),
            backends,
        ),
    ]
}

/// Outcome of [`ensure_bpffs`].
#[derive(Debug, PartialEq, Eq)]
pub enum BpffsMount {
    /// A bpffs was already mounted there.
    Present,
    /// This process mounted one, visible to every process of its mount namespace.
    Mounted,
    /// This process mounted one in a mount namespace of its own (as `ip netns exec` makes):
    /// its pins last only as long as this process.
    MountedPrivate,
}

/// Makes sure `path` is a bpffs mount, mounting one there if it is not.
pub fn ensure_bpffs(path: &Path) -> Result<BpffsMount, DataplaneError> {
    let err = |reason: String| DataplaneError::Pin {
        path: path.to_path_buf(),
        reason,
    };
    fs::create_dir_all(path).map_err(|e| err(e.to_string()))?;
    if is_bpffs(path) {
        return Ok(BpffsMount::Present);
    }
    rustix::mount::mount("bpf", path, "bpf", rustix::mount::MountFlags::empty(), None).map_err(
        |e| {
            err(format!(
                "not a bpffs, and mounting one failed: {}",
                io::Error::from(e)
            ))
        },
    )?;
    let own = fs::read_link("/proc/self/ns/mnt").ok();
    let init = fs::read_link("/proc/1/ns/mnt").ok();
    Ok(if own.is_some() && own == init {
        BpffsMount::Mounted
    } else {
        BpffsMount::MountedPrivate
    })
}

fn is_bpffs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_plane_pinned_with_another_layout_is_refused_with_the_upgrade_step() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pins = Pins::new(tmp.path(), tmp.path(), "edge");
        assert!(pins.refuse_other_layouts("edge").is_ok(), "nothing pinned");
        // This build's own layout is no obstacle.
        fs::create_dir_all(pins.dir.join("maps")).expect("mkdir");
        assert!(pins.refuse_other_layouts("edge").is_ok(), "own layout");
        // The previous release's layout is.
        let old = tmp.path().join("xdplb/edge/v1");
        fs::create_dir_all(old.join("maps")).expect("mkdir");
        fs::write(old.join("maps/SERVICES_V1"), b"").expect("write");
        let e = pins.refuse_other_layouts("edge").expect_err("v1 refused");
        let msg = e.to_string();
        for want in ["layout \"v1\"", "layout \"v2\"", "`xdplb stop edge`", "v1"] {
            assert!(msg.contains(want), "{want:?} missing from: {msg}");
        }
        // `xdplb stop` removes it through `other_layouts`, after which a start may go on.
        for other in pins.other_layouts() {
            other.remove_all().expect("remove");
        }
        assert!(!old.exists());
        assert!(pins.refuse_other_layouts("edge").is_ok());
    }
}
