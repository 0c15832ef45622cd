//! `xdplb explain`: which backend a new flow gets, and why, computed with the same code that
//! builds the data plane's tables and the same flow hash the data plane runs.

use std::net::SocketAddr;

use serde::Serialize;
use xdplb_common::hash::{FlowTuple, fast_range, flow_hash};

use crate::{
    config::{Config, Scheduler, ServiceConfig},
    dataplane::reconcile::{addr_of, scheduling_table},
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "no service matches {destination} (udp): none has that VIP, and none listens on 0.0.0.0:{port}; the packet would pass to the local stack untouched"
    )]
    NoService { destination: SocketAddr, port: u16 },
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
/// plane does: the exact VIP first, then `0.0.0.0` with the same port.
pub fn find_service(cfg: &Config, destination: SocketAddr) -> Option<&ServiceConfig> {
    cfg.services
        .iter()
        .find(|s| s.vip == destination)
        .or_else(|| {
            cfg.services
                .iter()
                .find(|s| s.vip.ip().is_unspecified() && s.vip.port() == destination.port())
        })
}

/// The backend a *new* flow gets. (A live flow keeps the backend it has while that backend
/// stays in the service; explain cannot see the flow table of a running instance.)
pub fn explain(
    cfg: &Config,
    client: SocketAddr,
    destination: SocketAddr,
) -> Result<Explanation, ExplainError> {
    let svc = find_service(cfg, destination).ok_or(ExplainError::NoService {
        destination,
        port: destination.port(),
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
}
