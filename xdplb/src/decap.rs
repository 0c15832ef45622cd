//! `xdplb decap`: attaches the IP-in-IP decapsulation program (IPv4-in-IPv4 and IPv6-in-IPv6)
//! on a backend host, for `forwarding = "dsr-ipip"`.
//!
//! It is attached through netlink (`IFLA_XDP`), not with a pinned bpf_link: a netlink
//! attachment belongs to the interface, needs no bpffs and outlives the command wherever it
//! runs (under `ip netns exec`, a bpffs mounted by the command dies with it, and so would a
//! pinned link). `--stats` and `--remove` find the program again by the interface's XDP
//! program id, and its counters by the program's map ids, so they work from any later
//! command in the same network namespace.

use std::{os::fd::AsFd, path::PathBuf};

use aya::{
    EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{ProgramInfo, Xdp},
};

use crate::{
    config::XdpModeSetting,
    dataplane::{DECAP_OBJECT, DataplaneError, attach::error_chain, pin},
    netlink::{self, NetlinkError},
};

const PROGRAM: &str = "xdplb_decap";
const MAP: &str = "DECAP_STATS_V1";

#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "{interface}: xdplb decap is already attached (XDP program id {id}); remove it first with `xdplb decap --interface {interface} --remove`"
    )]
    AlreadyAttached { interface: String, id: u32 },
    #[error(
        "{interface}: another XDP program is attached (id {id}, name {name:?}); detach it first (`ip link set dev {interface} xdp off`)"
    )]
    OtherProgram {
        interface: String,
        id: u32,
        name: String,
    },
    #[error(
        "{interface}: no XDP program is attached, so no xdplb decap either; attach it with `xdplb decap --interface {interface}`"
    )]
    NotAttached { interface: String },
    #[error("{interface}: attaching XDP in {mode} mode failed: {reason}")]
    Attach {
        interface: String,
        mode: &'static str,
        reason: String,
    },
    #[error(
        "{interface}: the kernel accepted the attachment, but the interface runs XDP program id {found} instead of ours ({ours}); nothing is attached by this command"
    )]
    NotVerified {
        interface: String,
        ours: u32,
        found: u32,
    },
    #[error("{interface}: detaching program {id} failed: the interface still runs it")]
    StillAttached { interface: String, id: u32 },
    #[error("XDP program {id}: {reason}")]
    Program { id: u32, reason: String },
}

/// Where decap used to be pinned (before it attached through netlink); `--remove` clears it.
pub fn legacy_pin_dir(interface: &str) -> PathBuf {
    pin::bpffs().join("xdplb-decap").join(interface)
}

/// The program with kernel id `id`.
fn program(id: u32) -> Result<ProgramInfo, DecapError> {
    for p in aya::programs::loaded_programs() {
        match p {
            Ok(p) if p.id() == id => return Ok(p),
            _ => {}
        }
    }
    Err(DecapError::Program {
        id,
        reason: "no longer loaded".into(),
    })
}

/// The interface's XDP program if it is xdplb decap: (interface state, program).
fn attached(interface: &str) -> Result<(netlink::LinkState, ProgramInfo), DecapError> {
    let link = netlink::link(interface)?;
    if link.xdp_prog_id == 0 {
        return Err(DecapError::NotAttached {
            interface: interface.to_string(),
        });
    }
    let prog = program(link.xdp_prog_id)?;
    let name = prog.name_as_str().unwrap_or("").to_string();
    if name != PROGRAM {
        return Err(DecapError::OtherProgram {
            interface: interface.to_string(),
            id: link.xdp_prog_id,
            name,
        });
    }
    Ok((link, prog))
}

/// Loads the decapsulation program and attaches it to `interface` through netlink, then checks
/// that the interface runs it. Returns the XDP mode used and the program id. Refuses an
/// interface that runs any XDP program already.
pub fn attach(interface: &str, mode: XdpModeSetting) -> Result<(&'static str, u32), DecapError> {
    if !crate::dataplane::has_bpf_privileges() {
        return Err(DataplaneError::NotPermitted(
            "the process lacks CAP_NET_ADMIN and CAP_BPF/CAP_SYS_ADMIN".into(),
        )
        .into());
    }
    let link = netlink::link(interface)?;
    if link.xdp_prog_id != 0 {
        let name = program(link.xdp_prog_id)
            .ok()
            .and_then(|p| p.name_as_str().map(str::to_string))
            .unwrap_or_default();
        if name == PROGRAM {
            return Err(DecapError::AlreadyAttached {
                interface: interface.to_string(),
                id: link.xdp_prog_id,
            });
        }
        return Err(DecapError::OtherProgram {
            interface: interface.to_string(),
            id: link.xdp_prog_id,
            name,
        });
    }
    let mut ebpf = EbpfLoader::new()
        .load(DECAP_OBJECT)
        .map_err(|e| DataplaneError::Load(Box::new(e)))?;
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or(DataplaneError::MissingProgram(PROGRAM))?
        .try_into()
        .map_err(|e| DataplaneError::program(PROGRAM, e))?;
    prog.load()
        .map_err(|e| DataplaneError::program(PROGRAM, e))?;
    let ours = prog
        .info()
        .map_err(|e| DataplaneError::program(PROGRAM, e))?
        .id();
    let fd = prog
        .fd()
        .map_err(|e| DataplaneError::program(PROGRAM, e))?
        .as_fd();
    let try_mode = |flag: u32, label: &'static str| {
        netlink::set_xdp(
            link.index,
            Some(fd),
            None,
            flag | netlink::XDP_FLAGS_UPDATE_IF_NOEXIST,
        )
        .map(|()| label)
        .map_err(|e| DecapError::Attach {
            interface: interface.to_string(),
            mode: label,
            reason: error_chain(&e),
        })
    };
    let used = match mode {
        XdpModeSetting::Native => try_mode(netlink::XDP_FLAGS_DRV_MODE, "native")?,
        XdpModeSetting::Generic => try_mode(netlink::XDP_FLAGS_SKB_MODE, "generic")?,
        XdpModeSetting::Auto => match try_mode(netlink::XDP_FLAGS_DRV_MODE, "native") {
            Ok(m) => m,
            Err(native) => try_mode(netlink::XDP_FLAGS_SKB_MODE, "generic").map_err(|generic| {
                DecapError::Attach {
                    interface: interface.to_string(),
                    mode: "auto",
                    reason: format!("{native}; {generic}"),
                }
            })?,
        },
    };
    let found = netlink::link(interface)?.xdp_prog_id;
    if found != ours {
        return Err(DecapError::NotVerified {
            interface: interface.to_string(),
            ours,
            found,
        });
    }
    // Dropping `ebpf` closes our descriptors; the interface keeps the program.
    Ok((used, ours))
}

/// Detaches the decapsulation program from `interface` (only if that is what runs there) and
/// checks that it is gone. Returns the id of the program detached.
pub fn remove(interface: &str) -> Result<u32, DecapError> {
    // A decap attached by an older xdplb is held by a pinned link: removing the pins detaches it.
    let legacy = legacy_pin_dir(interface);
    if legacy.exists() {
        for name in ["link", MAP] {
            let _ = std::fs::remove_file(legacy.join(name));
        }
        let _ = std::fs::remove_dir(&legacy);
    }
    let (link, prog) = attached(interface)?;
    let id = prog.id();
    let fd = prog.fd().map_err(|e| DecapError::Program {
        id,
        reason: error_chain(&e),
    })?;
    netlink::set_xdp(
        link.index,
        None,
        Some(fd.as_fd()),
        link.xdp_mode_flag | netlink::XDP_FLAGS_REPLACE,
    )?;
    if netlink::link(interface)?.xdp_prog_id == id {
        return Err(DecapError::StillAttached {
            interface: interface.to_string(),
            id,
        });
    }
    Ok(id)
}

/// The counters of the program on `interface`: (decapsulated, left alone, failed), found
/// through the interface's XDP program id and that program's map ids.
pub fn stats(interface: &str) -> Result<(u64, u64, u64), DecapError> {
    let (_, prog) = attached(interface)?;
    let id = prog.id();
    let map_ids = prog
        .map_ids()
        .map_err(|e| DecapError::Program {
            id,
            reason: error_chain(&e),
        })?
        .unwrap_or_default();
    let data = map_ids
        .into_iter()
        .filter_map(|m| MapData::from_id(m).ok())
        .find(|d| {
            d.info()
                .ok()
                .and_then(|i| i.name_as_str().map(str::to_string))
                == Some(MAP.into())
        })
        .ok_or_else(|| DecapError::Program {
            id,
            reason: format!("has no map {MAP}"),
        })?;
    let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
        .map_err(|e| DataplaneError::map(MAP, e))?;
    let sum = |i: u32| -> Result<u64, DecapError> {
        Ok(arr
            .get(&i, 0)
            .map_err(|e| DataplaneError::map(MAP, e))?
            .iter()
            .sum())
    };
    Ok((sum(0)?, sum(1)?, sum(2)?))
}
