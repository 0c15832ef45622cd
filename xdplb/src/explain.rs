//! `xdplb explain`: which backend a new flow gets, and why, computed with the same code that
//! builds the data plane's tables and the same flow hash the data plane runs.

use std::net::SocketAddr;

use serde::Serialize;
use xdplb_common::hash::{FlowTuple, fast_range, flow_hash};

use crate::{
    addr::{addr_of, ip_of},
    config::{Config, Scheduler, ServiceConfig},
    dataplane::reconcile::scheduling_table,
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "no service matches {destination} (udp): none has that VIP, and none listens on {wildcard}; the packet would pass to the local stack untouched"
    )]
    NoService {
        destination: SocketAddr,
        /// The wildcard of the destination's family with its port.
        wildcard: SocketAddr,
    },
    #[error(
        "{client} and {destination} are of different families; a packet has one family (the balancer translates between IPv4 and IPv6 nowhere)"
    )]
    MixedFamilies {
        client: SocketAddr,
        destination: SocketAddr,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub client: String,
    pub destination: String,
    pub service: String,
    pub vip: String,
    pub scheduler: &'static str,
    /// Hash fields, for the hashing schedulers.
    pub hash_fields: Option<&'static str>,
    pub hash_seed: u32,
    pub hash: Option<u32>,
    pub table_len: u32,
    pub slot: Option<u32>,
    /// The backend, when the scheduler decides from the flow alone.
    pub backend: Option<String>,
    pub backend_number: Option<usize>,
    pub note: String,
}

/// Finds the service a packet from `client` to `destination` belongs to, the same way the data
/// plane does: the exact VIP first, then the wildcard of the destination's family (`0.0.0.0`
/// or `[::]`) with the same port.
pub fn find_service(cfg: &Config, destination: SocketAddr) -> Option<&ServiceConfig> {
    let destination = canonical(destination);
    cfg.services
        .iter()
        .find(|s| s.vip == destination)
        .or_else(|| {
            cfg.services.iter().find(|s| {
                s.vip.ip().is_unspecified()
                    && s.vip.is_ipv4() == destination.is_ipv4()
                    && s.vip.port() == destination.port()
            })
        })
}

/// An address as the data plane sees it: an IPv4-mapped IPv6 address (`[::ffff:10.0.0.1]`)
/// is IPv4 on the wire.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(ip_of(addr_of(a.ip())), a.port())
}

/// The backend a *new* flow gets. (A live flow keeps the backend it has while that backend
/// stays in the service; explain cannot see the flow table of a running instance.)
pub fn explain(
    cfg: &Config,
    client: SocketAddr,
    destination: SocketAddr,
) -> Result<Explanation, ExplainError> {
    let (client, destination) = (canonical(client), canonical(destination));
    if client.is_ipv4() != destination.is_ipv4() {
        return Err(ExplainError::MixedFamilies {
            client,
            destination,
        });
    }
    let unspecified = if destination.is_ipv4() {
        std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
    };
    let svc = find_service(cfg, destination).ok_or(ExplainError::NoService {
        destination,
        wildcard: SocketAddr::new(unspecified, destination.port()),
    })?;
    let table = scheduling_table(cfg, svc);
    let table_len = table.len() as u32;
    let mut e = Explanation {
        client: client.to_string(),
        destination: destination.to_string(),
        service: svc.name.clone(),
        vip: svc.vip.to_string(),
        scheduler: svc.scheduler.as_str(),
        hash_fields: None,
        hash_seed: cfg.hash_seed,
        hash: None,
        table_len,
        slot: None,
        backend: None,
        backend_number: None,
        note: String::new(),
    };
    match svc.scheduler {
        Scheduler::Maglev | Scheduler::SourceHash => {
            let tuple = FlowTuple {
                src: addr_of(client.ip()),
                dst: addr_of(destination.ip()),
                src_port_be: client.port().to_be(),
                dst_port_be: destination.port().to_be(),
                proto: svc.protocol.code(),
            };
            let hash = flow_hash(&tuple, svc.hash.code(), cfg.hash_seed);
            let slot = fast_range(hash, table_len);
            let number = table.get(slot as usize).map(|i| *i as usize);
            e.hash_fields = Some(svc.hash.as_str());
            e.hash = Some(hash);
            e.slot = Some(slot);
            e.backend_number = number;
            e.backend = number
                .and_then(|n| svc.backends.get(n))
                .map(|b| b.address.to_string());
            e.note = match svc.flow_stale_after {
                None => "a live flow keeps the backend it already has while that backend stays in the service".into(),
                Some(d) => format!(
                    "a live flow keeps the backend it already has while that backend stays in the service, unless its entry was idle longer than flow_stale_after ({}): then it follows this table",
                    humantime::format_duration(d)
                ),
            };
        }
        Scheduler::RoundRobin | Scheduler::WeightedRoundRobin => {
            e.note = "new flows take the table's slots in turn, with one cursor per CPU: the backend depends on how many new flows that CPU saw before, not on the flow".into();
        }
        Scheduler::Random => {
            e.note = "each new flow takes a random slot: the backend is not a function of the flow"
                .into();
        }
    }
    Ok(e)
}

impl Explanation {
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "flow      {} -> {} (udp)", self.client, self.destination);
        let _ = writeln!(s, "service   {} (vip {})", self.service, self.vip);
        let _ = writeln!(
            s,
            "scheduler {}, table of {} slots",
            self.scheduler, self.table_len
        );
        if let (Some(fields), Some(hash)) = (self.hash_fields, self.hash) {
            let _ = writeln!(
                s,
                "hash      {fields}, seed {:#010x}: {hash:#010x}",
                self.hash_seed
            );
        }
        if let Some(slot) = self.slot {
            let _ = writeln!(s, "slot      {slot} of {}", self.table_len);
        }
        match (&self.backend, self.backend_number) {
            (Some(b), Some(n)) => {
                let _ = writeln!(s, "backend   {b} (backend #{} of the service)", n + 1);
            }
            _ => {
                let _ = writeln!(s, "backend   not determined by the flow");
            }
        }
        let _ = writeln!(s, "note      {}", self.note);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_names_flow_stale_after_when_it_is_set() {
        let text = |extra: &str| {
            format!(
                "interfaces = [\"lo\"]\n[[service]]\nname = \"m\"\nvip = \"10.0.0.1:53\"\n{extra}\
                 [[service.backend]]\naddress = \"10.0.1.1:53\"\n"
            )
        };
        let note = |extra: &str| {
            let cfg = crate::config::parse(&text(extra), "test").expect("valid config");
            let (client, vip) = ("10.9.9.9:4000".parse(), "10.0.0.1:53".parse());
            explain(&cfg, client.expect("addr"), vip.expect("addr"))
                .expect("explained")
                .note
        };
        assert!(!note("").contains("flow_stale_after"));
        let on = note("flow_stale_after = \"3s\"\n");
        assert!(
            on.contains("idle longer than flow_stale_after (3s): then it follows this table"),
            "{on}"
        );
    }

    /// An IPv6 flow: the service of its family is found (exact and wildcard), the hash is the
    /// data plane's over the 16-byte addresses, and the backend is the one the table names.
    #[test]
    fn an_ipv6_flow_is_explained() {
        let text = "interfaces = [\"lo\"]\n\
            [[service]]\nname = \"v4\"\nvip = \"0.0.0.0:53\"\n\
            [[service.backend]]\naddress = \"10.0.1.1:53\"\n\
            [[service]]\nname = \"v6\"\nvip = \"[2001:db8::1]:53\"\n\
            [[service.backend]]\naddress = \"[2001:db8:1::1]:53\"\n\
            [[service.backend]]\naddress = \"[2001:db8:1::2]:53\"\n\
            [[service]]\nname = \"any6\"\nvip = \"[::]:5353\"\n\
            [[service.backend]]\naddress = \"[2001:db8:1::3]:5353\"\n";
        let cfg = crate::config::parse(text, "test").expect("valid config");
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let client = a("[2001:db8::99]:4000");
        let e = explain(&cfg, client, a("[2001:db8::1]:53")).expect("explained");
        assert_eq!(e.service, "v6");
        assert_eq!(e.vip, "[2001:db8::1]:53");
        assert_eq!(e.client, "[2001:db8::99]:4000");
        // The hash the data plane computes over the 16-byte addresses.
        let tuple = FlowTuple {
            src: addr_of(client.ip()),
            dst: addr_of("2001:db8::1".parse().expect("ip")),
            src_port_be: 4000u16.to_be(),
            dst_port_be: 53u16.to_be(),
            proto: 17,
        };
        let svc = &cfg.services[1];
        let hash = flow_hash(&tuple, svc.hash.code(), cfg.hash_seed);
        assert_eq!(e.hash, Some(hash));
        let table = scheduling_table(&cfg, svc);
        let slot = fast_range(hash, table.len() as u32);
        let want = svc.backends[table[slot as usize] as usize]
            .address
            .to_string();
        assert_eq!(e.backend.as_deref(), Some(want.as_str()));
        assert!(
            e.render()
                .contains("[2001:db8::99]:4000 -> [2001:db8::1]:53")
        );
        // The IPv6 wildcard takes IPv6 destinations on its port, never IPv4 ones, and the
        // IPv4 wildcard never takes IPv6 ones.
        let w = explain(&cfg, client, a("[2001:db8::77]:5353")).expect("wildcard");
        assert_eq!(w.service, "any6");
        let none =
            explain(&cfg, a("10.9.9.9:4000"), a("10.0.0.7:5353")).expect_err("no v4 wildcard");
        assert!(
            none.to_string().contains("none listens on 0.0.0.0:5353"),
            "{none}"
        );
        let none = explain(&cfg, client, a("[2001:db8::7]:53")).expect_err("no v6 wildcard");
        assert!(
            none.to_string().contains("none listens on [::]:53"),
            "{none}"
        );
        let mixed = explain(&cfg, a("10.9.9.9:4000"), a("[2001:db8::1]:53")).expect_err("mixed");
        assert!(
            matches!(mixed, ExplainError::MixedFamilies { .. }),
            "{mixed}"
        );
        // An IPv4-mapped destination is IPv4 on the wire.
        let m =
            explain(&cfg, a("[::ffff:10.9.9.9]:4000"), a("[::ffff:10.0.0.7]:53")).expect("mapped");
        assert_eq!(m.service, "v4");
    }
}
