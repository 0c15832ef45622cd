//! Desired state (from the config) to map writes.
//!
//! The map writes sit behind [`MapWriter`] so that the translation and its ordering are tested
//! without a kernel.

use std::net::{Ipv4Addr, SocketAddrV4};

use xdplb_common::{Backend, IPPROTO_UDP, Service, ServiceKey, addr_from_v4_wire};

use super::DataplaneError;
use crate::config::{Config, Limits, Protocol};

/// Writes into the data plane's maps.
pub trait MapWriter {
    fn put_backend(&mut self, index: u32, backend: &Backend) -> Result<(), DataplaneError>;
    fn put_service(&mut self, key: &ServiceKey, service: &Service) -> Result<(), DataplaneError>;
}

/// What the maps must hold for a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub services: Vec<(ServiceKey, Service)>,
    /// `(index into BACKENDS_V1, backend)`.
    pub backends: Vec<(u32, Backend)>,
}

/// The wire-order 16-byte form of an IPv4 address.
pub fn addr_v4(ip: Ipv4Addr) -> xdplb_common::Addr {
    addr_from_v4_wire(u32::from_ne_bytes(ip.octets()))
}

/// The `BACKENDS_V1` index of backend `i` of the service with id `service_id`: service `n` owns
/// the slots `[n * max_backends_per_service, (n + 1) * max_backends_per_service)`.
pub fn backend_index(limits: &Limits, service_id: u32, i: u32) -> u32 {
    service_id * limits.max_backends_per_service + i
}

/// Translates a validated config. Service `i` (in config order) gets id `i` and the backend
/// slots from [`backend_index`].
pub fn desired_state(cfg: &Config) -> DesiredState {
    let mut services = Vec::with_capacity(cfg.services.len());
    let mut backends = Vec::new();
    for (id, svc) in (0u32..).zip(&cfg.services) {
        let base = backend_index(&cfg.limits, id, 0);
        for (slot, b) in (0u32..).zip(&svc.backends) {
            backends.push((
                backend_index(&cfg.limits, id, slot),
                backend_entry(b.address, b.weight),
            ));
        }
        let proto = match svc.protocol {
            Protocol::Udp => IPPROTO_UDP,
        };
        services.push((
            service_key(svc.vip, proto),
            Service {
                id,
                backend_base: base,
                backend_count: svc.backends.len() as u32,
                flags: 0,
                flow_idle_timeout_ns: u64::try_from(svc.flow_idle_timeout.as_nanos())
                    .unwrap_or(u64::MAX),
            },
        ));
    }
    DesiredState { services, backends }
}

pub fn service_key(vip: SocketAddrV4, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: addr_v4(*vip.ip()),
        port_be: vip.port().to_be(),
        proto,
        _pad: 0,
    }
}

fn backend_entry(address: SocketAddrV4, weight: u16) -> Backend {
    Backend {
        addr: addr_v4(*address.ip()),
        port_be: address.port().to_be(),
        weight,
        flags: 0,
    }
}

/// Writes `state` into empty maps: every backend first, then the services that point at them,
/// so the data plane never sees a service whose backends are not yet written.
pub fn apply(state: &DesiredState, maps: &mut impl MapWriter) -> Result<(), DataplaneError> {
    for (index, backend) in &state.backends {
        maps.put_backend(*index, backend)?;
    }
    for (key, service) in &state.services {
        maps.put_service(key, service)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{default_config, parse};

    #[derive(Default)]
    struct Recorder {
        writes: Vec<String>,
    }
    impl MapWriter for Recorder {
        fn put_backend(&mut self, index: u32, b: &Backend) -> Result<(), DataplaneError> {
            self.writes
                .push(format!("backend {index} port {}", u16::from_be(b.port_be)));
            Ok(())
        }
        fn put_service(&mut self, _k: &ServiceKey, s: &Service) -> Result<(), DataplaneError> {
            self.writes
                .push(format!("service {} count {}", s.id, s.backend_count));
            Ok(())
        }
    }

    #[test]
    fn default_config_maps_to_one_service_and_three_backends() {
        let state = desired_state(&default_config());
        assert_eq!(state.services.len(), 1);
        let (key, svc) = state.services[0];
        assert_eq!(key.addr, addr_v4(Ipv4Addr::LOCALHOST));
        assert_eq!(u16::from_be(key.port_be), 9875);
        assert_eq!(key.proto, IPPROTO_UDP);
        assert_eq!((svc.id, svc.backend_base, svc.backend_count), (0, 0, 3));
        assert_eq!(svc.flow_idle_timeout_ns, 30_000_000_000);
        let ports: Vec<u16> = state
            .backends
            .iter()
            .map(|(_, b)| u16::from_be(b.port_be))
            .collect();
        assert_eq!(ports, [9876, 9877, 9878]);
    }

    #[test]
    fn services_get_disjoint_backend_ranges() {
        let cfg = parse(
            r#"
interfaces = ["lo"]
[limits]
max_backends_per_service = 4
[[service]]
name = "a"
vip = "10.0.0.1:53"
[[service.backend]]
address = "10.0.1.1:53"
[[service]]
name = "b"
vip = "0.0.0.0:53"
flow_idle_timeout = "5s"
[[service.backend]]
address = "10.0.2.1:53"
[[service.backend]]
address = "10.0.2.2:53"
weight = 7
"#,
            "test",
        )
        .expect("valid config");
        let state = desired_state(&cfg);
        let idx: Vec<u32> = state.backends.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, [0, 4, 5]);
        assert_eq!(state.backends[2].1.weight, 7);
        assert_eq!(state.services[1].1.backend_base, 4);
        assert_eq!(state.services[1].0.addr, addr_v4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(state.services[1].1.flow_idle_timeout_ns, 5_000_000_000);
    }

    #[test]
    fn apply_writes_backends_before_services() {
        let mut rec = Recorder::default();
        apply(&desired_state(&default_config()), &mut rec).expect("recorder never fails");
        assert_eq!(
            rec.writes,
            [
                "backend 0 port 9876",
                "backend 1 port 9877",
                "backend 2 port 9878",
                "service 0 count 3"
            ]
        );
    }
}
