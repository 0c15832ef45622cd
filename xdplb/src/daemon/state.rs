//! The instance description the loop publishes (state file, metrics), and the veth sample.

use xdplb_common::{
    MAP_BACKEND_STATS, MAP_CAPTURE, MAP_CAPTURE_RING, MAP_FLOWS, MAP_SERVICE_STATS, MAP_STATS,
};

use crate::{config::Config, dataplane, dataplane::Dataplane, health::HealthBook, instance};

pub(super) fn instance_state(
    dp: &Dataplane,
    cfg: &Config,
    book: &HealthBook,
    name: &str,
    origin: &str,
    interfaces: Vec<dataplane::AttachedInterface>,
) -> anyhow::Result<instance::InstanceState> {
    let mut map_ids = std::collections::BTreeMap::new();
    // The capture maps too: `xdplb capture` opens them by id.
    for m in [
        MAP_STATS,
        MAP_SERVICE_STATS,
        MAP_BACKEND_STATS,
        MAP_FLOWS,
        MAP_CAPTURE,
        MAP_CAPTURE_RING,
    ] {
        map_ids.insert(m.to_string(), dp.map_id(m)?);
    }
    let plans = dp
        .current()
        .map(|s| s.services.as_slice())
        .unwrap_or_default();
    let services = cfg
        .services
        .iter()
        .filter_map(|svc| {
            let plan = plans.iter().find(|p| p.name == svc.name)?;
            let checked = svc.health_check.is_some();
            Some(instance::ServiceInfo {
                name: svc.name.clone(),
                vip: svc.vip.to_string(),
                id: plan.service.id,
                table_fingerprint: dataplane::reconcile::table_fingerprint(plan),
                backends: svc
                    .backends
                    .iter()
                    .map(|b| instance::BackendInfo {
                        address: b.address.to_string(),
                        index: plan
                            .backends
                            .iter()
                            .find(|(_, _, a)| *a == b.address)
                            .map(|(i, _, _)| *i),
                        health: checked.then(|| {
                            if book.is_up(&svc.name, b.address) {
                                "up"
                            } else {
                                "down"
                            }
                            .to_string()
                        }),
                        health_detail: book.get(&svc.name, b.address).map(|h| h.detail.clone()),
                        drain: b.drain,
                    })
                    .collect(),
            })
        })
        .collect();
    Ok(instance::InstanceState {
        instance: name.to_string(),
        pid: std::process::id(),
        config: origin.to_string(),
        interfaces,
        map_ids,
        services,
        generation: 0,
        reloads: 0,
        last_reload: None,
        veths: Default::default(),
        announce: None,
    })
}

/// Every interface of this network namespace, each veth with whether it can take
/// XDP_REDIRECT frames now.
///
/// Whether a veth can take redirected frames matters only to native XDP: a frame that generic
/// XDP redirects leaves through the target's ordinary transmit path, which needs no NAPI on
/// the peer. So with no interface attached natively (`native_attached` false) it is not asked,
/// and no warning about it is given.
pub(super) fn sample_veths(
    native_attached: bool,
) -> Result<Vec<(crate::netlink::LinkState, Option<bool>)>, crate::netlink::NetlinkError> {
    Ok(crate::netlink::links()?
        .into_iter()
        .map(|l| {
            let accepts = if l.is_veth && native_attached {
                crate::netlink::accepts_xdp_redirect(l.index).ok().flatten()
            } else {
                None
            };
            (l, accepts)
        })
        .collect())
}

/// Whether any interface of the instance runs the data plane in native (driver) mode.
pub(super) fn any_native(interfaces: &[dataplane::AttachedInterface]) -> bool {
    interfaces.iter().any(|i| i.xdp_mode == "native")
}
