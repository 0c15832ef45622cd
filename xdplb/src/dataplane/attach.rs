//! Attaching the loaded programs to interfaces.

use std::path::{Path, PathBuf};

use aya::programs::{
    TcAttachType, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId},
    xdp::{XdpLink, XdpLinkId},
};

use super::{Dataplane, DataplaneError, Pins};
use crate::config::XdpModeSetting;

/// Where the data plane is attached, and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttachedInterface {
    pub name: String,
    /// "native" or "generic".
    pub xdp_mode: String,
}

/// A link this call made, undone if a later step fails.
enum Made {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
    /// A pinned link: removing the pin (the only reference left) detaches it.
    Pinned(PathBuf),
}

/// Attaches XDP ingress and TC egress to every interface.
///
/// `Auto` tries native (driver) XDP first and falls back to generic. On any failure every link
/// made so far is detached again, so nothing is left half-attached.
///
/// A pinned data plane (see [`Dataplane::load_pinned`]) pins every new link, and where a
/// link is pinned already (a restart or upgrade) swaps the new program into it atomically
/// with `bpf_link_update`: there is no instant without a program. Pinned links of interfaces
/// that are no longer listed are removed (detached) once the rest succeeded.
pub fn attach_all(
    dp: &mut Dataplane,
    interfaces: &[String],
    mode: XdpModeSetting,
) -> Result<Vec<AttachedInterface>, DataplaneError> {
    let pins = dp.pins().cloned();
    let previous = std::mem::take(&mut dp.interfaces);
    let mut made = Vec::new();
    let mut attached = Vec::new();
    let result = (|| {
        for name in interfaces {
            let (ifindex, mac) = interface_address(name)?;
            // Recorded before the attach (the first packets must find it), and again below
            // with the mode the attach used.
            dp.set_interface_mac(ifindex, mac, mode == XdpModeSetting::Generic)?;
            let pinned = |kind| {
                pins.as_ref()
                    .map(|p| p.link(kind, name))
                    .filter(|p| p.exists())
            };
            let xdp_mode = if let Some(path) = pinned("xdp") {
                let link =
                    XdpLink::try_from(open_pinned(&path)?).map_err(|e| pin_error(&path, &e))?;
                let xdp = dp.ingress()?;
                let id = xdp
                    .attach_to_link(link)
                    .map_err(|e| DataplaneError::program(super::PROGRAM_INGRESS, e))?;
                // Dropping our descriptor leaves the pin holding the link.
                drop(xdp.take_link(id));
                previous
                    .iter()
                    .find(|a| a.name == *name)
                    .map_or_else(|| "adopted".to_string(), |a| a.xdp_mode.clone())
            } else {
                let (id, used) = attach_xdp(dp.ingress()?, name, mode)?;
                match pins.as_ref().map(|p| p.link("xdp", name)) {
                    Some(path) => {
                        let link = dp
                            .ingress()?
                            .take_link(id)
                            .map_err(|e| DataplaneError::program(super::PROGRAM_INGRESS, e))?;
                        pin_link(FdLink::try_from(link), &path)?;
                        made.push(Made::Pinned(path));
                    }
                    None => made.push(Made::Xdp(id)),
                }
                used.to_string()
            };
            if let Some(path) = pinned("tc") {
                let link = SchedClassifierLink::try_from(open_pinned(&path)?)
                    .map_err(|e| pin_error(&path, &e))?;
                let tc = dp.reply()?;
                let id = tc
                    .attach_to_link(link)
                    .map_err(|e| DataplaneError::program(super::PROGRAM_REPLY, e))?;
                drop(tc.take_link(id));
            } else {
                let tc = dp.reply()?;
                let id = tc.attach(name, TcAttachType::Egress).map_err(|e| {
                    DataplaneError::AttachTc {
                        interface: name.clone(),
                        reason: error_chain(&e),
                    }
                })?;
                match pins.as_ref().map(|p| p.link("tc", name)) {
                    Some(path) => {
                        let link = tc
                            .take_link(id)
                            .map_err(|e| DataplaneError::program(super::PROGRAM_REPLY, e))?;
                        pin_link(FdLink::try_from(link), &path)?;
                        made.push(Made::Pinned(path));
                    }
                    None => made.push(Made::Tc(id)),
                }
            }
            dp.set_interface_mac(ifindex, mac, xdp_mode == "generic")?;
            attached.push(AttachedInterface {
                name: name.clone(),
                xdp_mode,
            });
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Best effort: a detach that fails here still happens when `dp` is dropped.
        for m in made {
            match m {
                Made::Xdp(id) => {
                    if let Ok(xdp) = dp.ingress() {
                        let _ = xdp.detach(id);
                    }
                }
                Made::Tc(id) => {
                    if let Ok(tc) = dp.reply() {
                        let _ = tc.detach(id);
                    }
                }
                Made::Pinned(path) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        dp.interfaces = previous;
        return Err(e);
    }
    if let Some(pins) = &pins {
        for kind in ["xdp", "tc"] {
            for gone in pins.linked_interfaces(kind) {
                if !interfaces.contains(&gone) {
                    let path = pins.link(kind, &gone);
                    std::fs::remove_file(&path).map_err(|e| pin_error(&path, &e))?;
                }
            }
        }
        pin_programs(dp, pins)?;
    }
    dp.interfaces.clone_from(&attached);
    dp.write_pin_record()?;
    Ok(attached)
}

/// Pins both programs (replacing the pins of the programs they took over from).
fn pin_programs(dp: &mut Dataplane, pins: &Pins) -> Result<(), DataplaneError> {
    let path = pins.prog("ingress");
    let _ = std::fs::remove_file(&path);
    dp.ingress()?.pin(&path).map_err(|e| pin_error(&path, &e))?;
    let path = pins.prog("reply");
    let _ = std::fs::remove_file(&path);
    dp.reply()?.pin(&path).map_err(|e| pin_error(&path, &e))
}

fn open_pinned(path: &Path) -> Result<FdLink, DataplaneError> {
    PinnedLink::from_pin(path)
        .map(FdLink::from)
        .map_err(|e| pin_error(path, &e))
}

fn pin_link<E: std::error::Error>(
    link: Result<FdLink, E>,
    path: &Path,
) -> Result<(), DataplaneError> {
    let link = link.map_err(|e| pin_error(path, &e))?;
    link.pin(path).map_err(|e| pin_error(path, &e))?;
    Ok(())
}

fn pin_error(path: &Path, e: &dyn std::error::Error) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_path_buf(),
        reason: error_chain(e),
    }
}

/// The ifindex and Ethernet address of an interface of this network namespace, from sysfs
/// (which `ip netns exec` remounts for the namespace). `lo` has address 00:00:00:00:00:00.
pub fn interface_address(name: &str) -> Result<(u32, [u8; 6]), DataplaneError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{name}/{file}")).map_err(|e| {
            DataplaneError::Interface {
                interface: name.to_string(),
                reason: format!("reading /sys/class/net/{name}/{file}: {e}"),
            }
        })
    };
    let bad = |what: &str, text: &str| DataplaneError::Interface {
        interface: name.to_string(),
        reason: format!("unexpected {what} {text:?} in sysfs"),
    };
    let index_text = read("ifindex")?;
    let ifindex = index_text
        .trim()
        .parse::<u32>()
        .map_err(|_| bad("ifindex", &index_text))?;
    // /sys describes the network namespace it was mounted in, which need not be ours (nsenter
    // --net, NetworkNamespacePath=): the kernel's own answer for this namespace must agree.
    if crate::daemon::interface_index(name) != Some(ifindex) {
        return Err(DataplaneError::Interface {
            interface: name.to_string(),
            reason: "/sys/class/net belongs to another network namespace than this process's; \
                     run xdplb with `ip netns exec NS` (which remounts /sys) or remount /sys"
                .to_string(),
        });
    }
    let address = read("address")?;
    let mut mac = [0u8; 6];
    let mut parts = address.trim().split(':');
    for byte in &mut mac {
        *byte = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| bad("address", &address))?;
    }
    if parts.next().is_some() {
        return Err(bad("address", &address));
    }
    Ok((ifindex, mac))
}

/// Attaches an XDP program in `mode` (`Auto`: native, else generic); returns the link and the
/// mode used.
pub(crate) fn attach_xdp(
    xdp: &mut aya::programs::Xdp,
    name: &str,
    mode: XdpModeSetting,
) -> Result<(XdpLinkId, &'static str), DataplaneError> {
    let try_mode = |xdp: &mut aya::programs::Xdp, m: XdpMode, label: &'static str| {
        xdp.attach(name, m)
            .map(|l| (l, label))
            .map_err(|e| DataplaneError::AttachXdp {
                interface: name.to_string(),
                mode: label,
                reason: error_chain(&e),
            })
    };
    match mode {
        XdpModeSetting::Native => try_mode(xdp, XdpMode::Driver, "native"),
        XdpModeSetting::Generic => try_mode(xdp, XdpMode::Skb, "generic"),
        XdpModeSetting::Auto => match try_mode(xdp, XdpMode::Driver, "native") {
            Ok(r) => Ok(r),
            Err(native) => try_mode(xdp, XdpMode::Skb, "generic").map_err(|generic| {
                DataplaneError::AttachXdp {
                    interface: name.to_string(),
                    mode: "auto",
                    reason: format!("native: {native}; generic: {generic}"),
                }
            }),
        },
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
