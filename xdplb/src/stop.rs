//! `xdplb stop`: takes an instance down for good, from wherever it is run.
//!
//! The instance is found through its records in the run directory (`NAME.json`, written while
//! a daemon runs, and `NAME.pins.json`, kept while the pinned data plane lives), not through
//! this process's view of bpffs: under `ip netns exec` /sys is remounted and the daemon's pins
//! are invisible. Its programs are the loaded programs that use its `STATS_V1` map (kernel id
//! in the records); every XDP or TCX link of those programs is detached by kernel id
//! (`BPF_LINK_DETACH`, which works while a pin still holds the link), an XDP program attached
//! through netlink on a recorded interface is detached through netlink, the pins are removed
//! where this process can reach them, and then the kernel is asked again: anything of the
//! instance still attached is an error.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    bpf_link::{self, LinkKind},
    dataplane::{Pins, pin},
    instance, netlink,
};

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
    #[error("stopping the daemon of instance {name:?} (pid {pid}) with SIGTERM: {source}")]
    Daemon {
        name: String,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("listing bpf links: {0}")]
    Links(#[source] std::io::Error),
}

/// What `stop` found and did.
#[derive(Debug, Default)]
pub struct StopReport {
    /// The daemon that was running, stopped with SIGTERM.
    pub daemon: Option<u32>,
    /// Whether any trace of the instance was found (daemon, record, pins, links).
    pub found: bool,
    /// "xdp on lo (link 12)" and the like: what was attached and is detached now.
    pub detached: Vec<String>,
    /// Interfaces whose pinned links were removed.
    pub unpinned_from: Vec<String>,
    /// The pin directory removed, if this process could reach it.
    pub pins_removed: Option<PathBuf>,
    /// Pins this process could not reach (they hold maps and detached links, not traffic).
    pub pins_unreachable: Option<PathBuf>,
    /// What is still attached afterwards ("xdp on lo (program 41)"): must be empty.
    pub still_attached: Vec<String>,
    /// VIP routes withdrawn from the `[announce]` table the daemon left them in (`VIP/32`).
    pub withdrawn: Vec<String>,
    /// Why the recorded VIP routes could not be withdrawn.
    pub withdraw_error: Option<String>,
}

/// The instance's programs: every loaded program that uses map `stats_map_id`.
fn instance_programs(stats_map_id: u32) -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&stats_map_id))
        })
        .map(|p| p.id())
        .collect()
}

fn describe(kind: LinkKind, ifindex: u32, names: &[netlink::LinkState]) -> String {
    let name = names
        .iter()
        .find(|l| l.index == ifindex)
        .map_or_else(|| format!("ifindex {ifindex}"), |l| l.name.clone());
    match kind {
        LinkKind::Xdp => format!("xdp on {name}"),
        LinkKind::Tcx => format!("tc egress on {name}"),
        LinkKind::Other(_) => format!("link on {name}"),
    }
}

/// What of the instance is attached now: links of its programs, and XDP programs of its on the
/// recorded interfaces (however attached). (description, link id if any).
fn attached_now(
    programs: &BTreeSet<u32>,
    interfaces: &BTreeSet<String>,
) -> Result<Vec<(String, Option<u32>)>, StopError> {
    let names = netlink::links().unwrap_or_default();
    let mut out: Vec<(String, Option<u32>)> = bpf_link::all_net_links()
        .map_err(StopError::Links)?
        .into_iter()
        .filter(|l| l.ifindex != 0 && programs.contains(&l.prog_id))
        .map(|l| (describe(l.kind, l.ifindex, &names), Some(l.id)))
        .collect();
    for name in interfaces {
        if let Ok(link) = netlink::link(name)
            && programs.contains(&link.xdp_prog_id)
        {
            let what = format!("xdp on {name}");
            if !out.iter().any(|(w, _)| *w == what) {
                out.push((what, None));
            }
        }
    }
    Ok(out)
}

/// The pins as this process can reach them: where `pins` says, or, when the daemon pinned in
/// another mount namespace (this command runs under `ip netns exec`, say, and the daemon did
/// not), through `/proc/PID/root` of a live process of that mount namespace. Returns the pins
/// to remove, or the directory that stays out of reach.
fn reachable_pins(pins: &Pins, record: Option<&pin::PinRecord>) -> (Option<Pins>, Option<PathBuf>) {
    if pins.exist() {
        return (Some(pins.clone()), None);
    }
    let (Some(dir), Some(ns)) = (
        record.and_then(|r| r.pins_dir.clone()),
        record.and_then(|r| r.mount_ns.clone()),
    ) else {
        return (None, None);
    };
    if Some(&ns) == pin::own_mount_ns().as_ref() {
        // Our own mount namespace, and nothing there: already gone.
        return (None, None);
    }
    let relative = dir.strip_prefix("/").unwrap_or(&dir).to_path_buf();
    // A process of that namespace whose root we could look into without finding the pins:
    // they are gone.
    let mut looked = false;
    let mut ns_alive = false;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let proc_dir = entry.path();
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let same_ns = std::fs::read_link(proc_dir.join("ns/mnt"))
            .is_ok_and(|l| l.display().to_string() == ns);
        if !same_ns {
            continue;
        }
        ns_alive = true;
        looked |= std::fs::read_dir(proc_dir.join("root")).is_ok();
        let through = proc_dir.join("root").join(&relative);
        if through.exists() {
            return (
                Some(Pins {
                    dir: through,
                    record: pins.record.clone(),
                }),
                None,
            );
        }
    }
    // No process left in that mount namespace: it and its bpffs are gone, pins included.
    (None, (ns_alive && !looked).then_some(dir))
}

/// Stops instance `name`; see the module docs.
pub fn stop(name: &str) -> Result<StopReport, StopError> {
    let mut report = StopReport::default();
    let pins = Pins::new(&pin::bpffs(), &instance::run_dir(), name);
    let state = instance::read(name).ok();

    // The daemon: whoever holds the instance lock (or, for a daemon of an older build, the
    // live pid of the state file).
    let lock = match instance::try_lock(name)? {
        Ok(lock) => {
            report.daemon = instance::running_pid(name)?;
            Some(lock)
        }
        Err(held) => {
            report.daemon = held.pid();
            None
        }
    };
    if let Some(pid) = report.daemon {
        report.found = true;
        instance::signal_and_wait(pid, rustix::process::Signal::TERM, Duration::from_secs(10))
            .map_err(|source| StopError::Daemon {
                name: name.to_string(),
                pid,
                source,
            })?;
    }
    // Held while cleaning up, so that no `xdplb run` starts in the middle.
    let _lock = match lock {
        Some(l) => l,
        None => instance::lock_within(name, Duration::from_secs(10))?,
    };

    // Read after the daemon exited: it may have cleaned up itself (--cleanup, private bpffs).
    let record = pins.read_record_any();
    let stats_map_id = record.as_ref().and_then(|r| r.stats_map_id).or_else(|| {
        state
            .as_ref()
            .and_then(|s| s.map_ids.get(xdplb_common::MAP_STATS).copied())
    });
    let mut interfaces: BTreeSet<String> = BTreeSet::new();
    for i in record.iter().flat_map(|r| &r.interfaces) {
        interfaces.insert(i.name.clone());
    }
    for i in state.iter().flat_map(|s| &s.interfaces) {
        interfaces.insert(i.name.clone());
    }
    report.found |= record.is_some();
    let programs = stats_map_id.map(instance_programs).unwrap_or_default();

    // 0. The announced VIPs first, so that routers stop sending before the data plane goes.
    match crate::announce::withdraw_recorded(name) {
        Ok(withdrawn) => {
            report.found |= !withdrawn.is_empty();
            report.withdrawn = withdrawn;
        }
        Err(e) => report.withdraw_error = Some(e),
    }

    // 1. Detach by kernel id: immediate, and it works while a pin we cannot see holds a link.
    let before = attached_now(&programs, &interfaces)?;
    report.found |= !before.is_empty();
    for (what, id) in &before {
        if let Some(id) = id {
            let _ = bpf_link::detach(*id);
            report.detached.push(format!("{what} (link {id})"));
        } else {
            // Attached through netlink (no link): detach only that program.
            let iface = what.trim_start_matches("xdp on ");
            if let Ok(link) = netlink::link(iface)
                && let Some(prog) = aya::programs::loaded_programs()
                    .filter_map(Result::ok)
                    .find(|p| p.id() == link.xdp_prog_id)
                && let Ok(fd) = prog.fd()
            {
                use std::os::fd::AsFd as _;
                let _ = netlink::set_xdp(
                    link.index,
                    None,
                    Some(fd.as_fd()),
                    link.xdp_mode_flag | netlink::XDP_FLAGS_REPLACE,
                );
            }
            report.detached.push(what.clone());
        }
    }

    // 2. The pins (maps, programs, defunct links), where this process can reach them.
    let (reachable, unreachable) = reachable_pins(&pins, record.as_ref());
    if let Some(p) = reachable {
        report.found = true;
        if let Ok(ifaces) = p.remove_all() {
            report.unpinned_from = ifaces;
            report.pins_removed = Some(p.dir.clone());
        }
    }
    report.pins_unreachable = unreachable;
    // Pins of another layout version (an older release's): detached by id above; their files
    // go too, so that the upgrade step a new daemon names (`xdplb stop`) completes.
    for other in pins.other_layouts() {
        report.found = true;
        if let Ok(ifaces) = other.remove_all() {
            report.unpinned_from.extend(ifaces);
            report.pins_removed = Some(other.dir.clone());
        }
    }

    // 3. Ask the kernel again (a link freed by removing its last pin goes a moment later).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = attached_now(&programs, &interfaces)?;
        if now.is_empty() || Instant::now() > deadline {
            report.still_attached = now
                .into_iter()
                .map(|(w, id)| match id {
                    Some(id) => format!("{w} (link {id})"),
                    None => w,
                })
                .collect();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // 4. The records: what they describe is gone (or reported as still attached).
    if report.still_attached.is_empty() {
        for path in [pins.record.clone(), instance::state_path(name)?] {
            if path.exists() {
                report.found = true;
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(report)
}
