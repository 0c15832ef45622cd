//! Attaching the loaded programs to interfaces.

use aya::programs::{TcAttachType, XdpMode};

use super::{Dataplane, DataplaneError};
use crate::config::XdpModeSetting;

/// Where the data plane is attached, and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttachedInterface {
    pub name: String,
    /// "native" or "generic".
    pub xdp_mode: String,
}

/// Attaches XDP ingress and TC egress to every interface.
///
/// `Auto` tries native (driver) XDP first and falls back to generic. On any failure every link
/// made so far is detached again, so nothing is left half-attached.
pub fn attach_all(
    dp: &mut Dataplane,
    interfaces: &[String],
    mode: XdpModeSetting,
) -> Result<Vec<AttachedInterface>, DataplaneError> {
    let mut xdp_links = Vec::new();
    let mut tc_links = Vec::new();
    let mut attached = Vec::new();
    let result = (|| {
        for name in interfaces {
            let (link, used) = attach_xdp(dp, name, mode)?;
            xdp_links.push(link);
            let tc = dp.reply()?;
            let link =
                tc.attach(name, TcAttachType::Egress)
                    .map_err(|e| DataplaneError::AttachTc {
                        interface: name.clone(),
                        reason: error_chain(&e),
                    })?;
            tc_links.push(link);
            attached.push(AttachedInterface {
                name: name.clone(),
                xdp_mode: used.into(),
            });
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(attached),
        Err(e) => {
            // Best effort: a detach that fails here still happens when `dp` is dropped.
            if let Ok(xdp) = dp.ingress() {
                for l in xdp_links {
                    let _ = xdp.detach(l);
                }
            }
            if let Ok(tc) = dp.reply() {
                for l in tc_links {
                    let _ = tc.detach(l);
                }
            }
            Err(e)
        }
    }
}

fn attach_xdp(
    dp: &mut Dataplane,
    name: &str,
    mode: XdpModeSetting,
) -> Result<(aya::programs::xdp::XdpLinkId, &'static str), DataplaneError> {
    let xdp = dp.ingress()?;
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
