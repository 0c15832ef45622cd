//! `xdplb capture`: what the data plane balanced, before and after the rewrite, as pcapng (or
//! one line per packet).
//!
//! The data plane copies packets into a ring buffer only while a capture holds a lease in
//! `CAPTURE_V1` (see `xdplb_common::MAP_CAPTURE`): a deadline on the kernel's monotonic clock,
//! renewed here every second, and a service filter. Killed without cleaning up (even by
//! SIGKILL), a capture stops costing the data plane when its lease runs out, within
//! [`CAPTURE_LEASE_NS`]. On a normal exit the lease is cleared at once.
//!
//! Every captured packet gives two records: "before" (the frame as it arrived, where ingress
//! found its service) and "after" (the frame the last program returned, after the rewrite and
//! any checksum completion, with its XDP action). They share a CPU and a sequence number. In
//! the pcapng file each packet carries a comment saying which it is, the service, the action
//! and the pair's identity; tcpdump and Wireshark read the file (Wireshark shows the comments).
//!
//! Covered: service requests of every mode (balanced, or passed/dropped after their service was
//! found) and `nat`/`fullnat` replies the XDP program translates (only without `--service`:
//! their records carry no service). Not covered: later fragments, ICMP errors about flows,
//! and `local` replies, which TC egress translates.

use std::{
    borrow::Cow,
    io::Write,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, Map, MapData, RingBuf};
use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};
use xdplb_common::{
    CAPTURE_AFTER, CAPTURE_ANY_SERVICE, CAPTURE_LEASE_NS, CAPTURE_REPLY, CAPTURE_SNAP_LEN,
    CaptureLease, MAP_CAPTURE, MAP_CAPTURE_RING,
};

use crate::instance::{self, InstanceState};

/// What to capture and where to write it.
#[derive(Debug, Clone)]
pub struct Options {
    pub instance: String,
    /// Only this service's packets (by name).
    pub service: Option<String>,
    /// Stop after this many packets (each a before and an after).
    pub count: Option<u64>,
    /// pcapng to this file (`-`: standard output); one line per record without it.
    pub write: Option<PathBuf>,
}

/// One record of the ring buffer, decoded (see `xdplb_common::CaptureRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub timestamp_ns: u64,
    pub orig_len: u32,
    pub ifindex: u32,
    pub service_id: u32,
    pub cpu: u32,
    pub seq: u32,
    pub after: bool,
    pub action: u32,
    pub data: Vec<u8>,
}

/// Bytes of `CaptureRecord` before the frame.
const HEADER_LEN: usize = 40;

impl Record {
    /// Decodes a ring buffer item; `None` if it is not a whole record.
    pub fn parse(bytes: &[u8]) -> Option<Record> {
        let u32_at = |off: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(
                bytes.get(off..off + 4)?.try_into().ok()?,
            ))
        };
        let timestamp_ns = u64::from_ne_bytes(bytes.get(0..8)?.try_into().ok()?);
        let cap_len = (u32_at(12)? as usize).min(CAPTURE_SNAP_LEN);
        let data = bytes.get(HEADER_LEN..HEADER_LEN + cap_len)?.to_vec();
        Some(Record {
            timestamp_ns,
            orig_len: u32_at(8)?,
            ifindex: u32_at(16)?,
            service_id: u32_at(20)?,
            cpu: u32_at(24)?,
            seq: u32_at(28)?,
            after: u32_at(32)? == CAPTURE_AFTER,
            action: u32_at(36)?,
            data,
        })
    }
}

/// Keeps an "after" only when this capture saw its "before": a CPU whose packet was in flight
/// when an earlier capture cleared its lease keeps that packet's mark, and emits a stray
/// "after" (of whatever packet leaves next) when the next capture starts.
#[derive(Debug, Default)]
pub struct Pairing {
    /// The last "before" seen per CPU, by sequence number.
    open: std::collections::HashMap<u32, u32>,
}

impl Pairing {
    pub fn admit(&mut self, r: &Record) -> bool {
        if !r.after {
            self.open.insert(r.cpu, r.seq);
            return true;
        }
        if self.open.get(&r.cpu) == Some(&r.seq) {
            self.open.remove(&r.cpu);
            return true;
        }
        false
    }
}

/// The name of an XDP action.
pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "?",
    }
}

/// Runs a capture until `--count` packets, SIGINT or SIGTERM.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let state = instance::read(&opts.instance)?;
    let filter = match &opts.service {
        None => CAPTURE_ANY_SERVICE,
        Some(name) => {
            state
                .services
                .iter()
                .find(|s| &s.name == name)
                .with_context(|| {
                    format!(
                        "instance {:?} has no service {name:?} (it has: {})",
                        opts.instance,
                        names(&state)
                    )
                })?
                .id
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(capture(&state, opts, filter))
}

fn names(state: &InstanceState) -> String {
    let v: Vec<&str> = state.services.iter().map(|s| s.name.as_str()).collect();
    v.join(", ")
}

/// Opens a map of the instance by the id in its state file, checking the id still names it.
fn open_map(state: &InstanceState, name: &'static str) -> anyhow::Result<Map> {
    let id = state.map_ids.get(name).copied().with_context(|| {
        format!(
            "instance {:?} publishes no {name} map: its daemon predates `xdplb capture`; restart it",
            state.instance
        )
    })?;
    let data = MapData::from_id(id)
        .with_context(|| format!("map {name} (id {id}) is gone: the instance probably exited"))?;
    let info = data.info()?;
    let kernel_name = info.name_as_str().unwrap_or_default();
    if kernel_name.is_empty() || !name.starts_with(kernel_name) {
        bail!("map id {id} now belongs to map {kernel_name:?}, not {name}: the instance restarted");
    }
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

/// Whether the instance's daemon now publishes other capture maps than `state` (it restarted
/// and loaded a new data plane, which copies into its own ring). A state file that cannot be
/// read (the daemon stopped) changes nothing: the pinned data plane may still run.
fn restarted(state: &InstanceState) -> bool {
    let Ok(now) = instance::read(&state.instance) else {
        return false;
    };
    [MAP_CAPTURE, MAP_CAPTURE_RING]
        .iter()
        .any(|m| now.map_ids.get(*m) != state.map_ids.get(*m))
}

/// The kernel's monotonic clock (what `bpf_ktime_get_ns` reads), in nanoseconds.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// The lease map of an instance, with the lease cleared when it is dropped (any exit but
/// SIGKILL; then the deadline runs out).
struct Lease {
    map: Array<MapData, CaptureLease>,
    service_id: u32,
}

impl Lease {
    fn renew(&mut self) -> anyhow::Result<()> {
        let lease = CaptureLease {
            deadline_ns: monotonic_ns() + CAPTURE_LEASE_NS,
            service_id: self.service_id,
            _pad: 0,
        };
        self.map
            .set(0, lease, 0)
            .context("writing the capture lease")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.map.set(0, CaptureLease::default(), 0);
    }
}

/// Where records go.
enum Sink {
    Lines(std::io::Stdout),
    Pcap(Box<PcapNgWriter<Box<dyn Write>>>),
}

impl Sink {
    fn new(opts: &Options, state: &InstanceState) -> anyhow::Result<Sink> {
        let Some(path) = &opts.write else {
            return Ok(Sink::Lines(std::io::stdout()));
        };
        let out: Box<dyn Write> = if path.as_os_str() == "-" {
            Box::new(std::io::BufWriter::new(std::io::stdout()))
        } else {
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ))
        };
        let mut w = PcapNgWriter::new(out).context("writing the pcapng header")?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: CAPTURE_SNAP_LEN as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(format!("xdplb:{}", state.instance))),
                // Timestamps in nanoseconds (pcap-file writes Duration::as_nanos).
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        w.write_pcapng_block(idb)
            .context("writing the pcapng interface")?;
        Ok(Sink::Pcap(Box::new(w)))
    }

    fn write(&mut self, r: &Record, wall: Duration, service: &str) -> anyhow::Result<()> {
        match self {
            Sink::Lines(out) => {
                writeln!(out, "{}", summary(r, wall, service)).context("writing to stdout")?;
            }
            Sink::Pcap(w) => {
                let comment = comment(r, service);
                w.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: wall,
                    original_len: r.orig_len,
                    data: Cow::Borrowed(&r.data),
                    options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
                })
                .context("writing a packet")?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Sink::Lines(out) => out.flush()?,
            Sink::Pcap(w) => w.get_mut().flush()?,
        }
        Ok(())
    }
}

/// The pcapng comment of a record: `before`/`after`, service, action, pair identity.
pub fn comment(r: &Record, service: &str) -> String {
    if r.after {
        format!(
            "xdplb after service={service} action={} ifindex={} cpu={} seq={}",
            action_name(r.action),
            r.ifindex,
            r.cpu,
            r.seq
        )
    } else {
        format!(
            "xdplb before service={service} ifindex={} cpu={} seq={}",
            r.ifindex, r.cpu, r.seq
        )
    }
}

/// One line per record, in the manner of tcpdump's summary.
pub fn summary(r: &Record, wall: Duration, service: &str) -> String {
    let secs = wall.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let what = if r.after {
        format!("after  {:<8}", action_name(r.action))
    } else {
        format!("before {:<8}", "")
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{:06} {what} {service} {} length {}",
        wall.subsec_micros(),
        describe(&r.data),
        r.orig_len
    )
}

/// `src > dst: proto` of an Ethernet frame's IPv4 or IPv6 packet (and of its inner packet for
/// IP in IP: IPv4-in-IPv4, IPv6-in-IPv6), in tcpdump's manner (`IP` / `IP6`, then
/// `ADDRESS.PORT`).
fn describe(frame: &[u8]) -> String {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return "(not IP)".to_string();
    };
    // (tag, source, destination, protocol or next header, payload)
    let (tag, src, dst, proto, payload): (&str, std::net::IpAddr, std::net::IpAddr, _, _) =
        match &p.net {
            Some(NetSlice::Ipv4(ip)) => (
                "IP",
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
                ip.header().protocol(),
                ip.payload().payload,
            ),
            Some(NetSlice::Ipv6(ip)) => (
                "IP6",
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
                ip.payload().ip_number,
                ip.payload().payload,
            ),
            _ => return "(not IP)".to_string(),
        };
    match &p.transport {
        Some(TransportSlice::Udp(u)) => format!(
            "{tag} {src}.{} > {dst}.{}: UDP",
            u.source_port(),
            u.destination_port()
        ),
        _ if proto == etherparse::IpNumber::IPV4 || proto == etherparse::IpNumber::IPV6 => {
            let inner = match SlicedPacket::from_ip(payload) {
                Ok(SlicedPacket {
                    net: Some(NetSlice::Ipv4(i)),
                    transport: Some(TransportSlice::Udp(u)),
                    ..
                }) => Some((
                    "IP",
                    std::net::IpAddr::from(i.header().source_addr()),
                    std::net::IpAddr::from(i.header().destination_addr()),
                    u,
                )),
                Ok(SlicedPacket {
                    net: Some(NetSlice::Ipv6(i)),
                    transport: Some(TransportSlice::Udp(u)),
                    ..
                }) => Some((
                    "IP6",
                    i.header().source_addr().into(),
                    i.header().destination_addr().into(),
                    u,
                )),
                _ => None,
            };
            match inner {
                Some((itag, isrc, idst, u)) => format!(
                    "{tag} {src} > {dst}: {itag} {isrc}.{} > {idst}.{}: UDP",
                    u.source_port(),
                    u.destination_port()
                ),
                None => format!("{tag} {src} > {dst}: IPIP"),
            }
        }
        _ => format!("{tag} {src} > {dst}: proto {}", proto.0),
    }
}

async fn capture(state: &InstanceState, opts: &Options, filter: u32) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let lease_map: Array<MapData, CaptureLease> = Array::try_from(open_map(state, MAP_CAPTURE)?)
        .with_context(|| format!("map {MAP_CAPTURE}"))?;
    if let Ok(current) = lease_map.get(&0, 0)
        && current.deadline_ns > monotonic_ns()
    {
        bail!(
            "another capture of instance {:?} is running (its lease runs for {} ms more)",
            state.instance,
            (current.deadline_ns - monotonic_ns()) / 1_000_000
        );
    }
    let mut ring = RingBuf::try_from(open_map(state, MAP_CAPTURE_RING)?)
        .with_context(|| format!("map {MAP_CAPTURE_RING}"))?;
    // Records left by an earlier capture that died: not ours.
    while ring.next().is_some() {}

    let mut sink = Sink::new(opts, state)?;
    let mut names: std::collections::BTreeMap<u32, String> = state
        .services
        .iter()
        .map(|s| (s.id, s.name.clone()))
        .collect();
    names.insert(CAPTURE_REPLY, "(reply)".to_string());
    // bpf_ktime_get_ns counts from boot; the file wants wall-clock time.
    let wall_offset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(Duration::from_nanos(monotonic_ns()));

    let mut lease = Lease {
        map: lease_map,
        service_id: filter,
    };
    lease.renew()?;
    eprintln!(
        "xdplb: capturing {} of instance {:?}{}",
        opts.service
            .as_deref()
            .map_or("every service".to_string(), |s| format!("service {s:?}")),
        state.instance,
        opts.count
            .map_or(String::new(), |n| format!(", {n} packets"))
    );
    let mut renew = tokio::time::interval(Duration::from_secs(1));
    // The ring is drained on a timer rather than woken by epoll: tokio's safe `AsyncFd`
    // constructors are deprecated (I/O safety) and its `register` is `unsafe`, which the
    // control plane keeps to `sys.rs`; 20 drains a second cost nothing and bound the latency.
    let mut drain = tokio::time::interval(Duration::from_millis(50));
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut pairing = Pairing::default();
    let mut packets = 0u64;
    let mut records = 0u64;
    'outer: loop {
        tokio::select! {
            _ = renew.tick() => {
                if restarted(state) {
                    eprintln!(
                        "xdplb: instance {:?} restarted (its data plane has new capture maps); this capture ends",
                        state.instance
                    );
                    break;
                }
                lease.renew()?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = drain.tick() => {
                while let Some(item) = ring.next() {
                    let Some(r) = Record::parse(&item) else { continue };
                    drop(item);
                    if filter != CAPTURE_ANY_SERVICE && r.service_id != filter {
                        continue;
                    }
                    if !pairing.admit(&r) {
                        continue;
                    }
                    let service = names
                        .get(&r.service_id)
                        .map_or_else(|| format!("#{}", r.service_id), Clone::clone);
                    let wall = wall_offset + Duration::from_nanos(r.timestamp_ns);
                    sink.write(&r, wall, &service)?;
                    records += 1;
                    if r.after {
                        packets += 1;
                        if opts.count.is_some_and(|n| packets >= n) {
                            break 'outer;
                        }
                    }
                }
                sink.flush()?;
            }
        }
    }
    drop(lease);
    sink.flush()?;
    eprintln!("xdplb: {packets} packets captured ({records} records)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv6 frames are described as tcpdump does (`IP6 ADDRESS.PORT > ADDRESS.PORT`), IPv4
    /// ones as before.
    #[test]
    fn ipv6_frames_are_described_with_ip6() {
        let udp6 = |src: [u8; 16], dst: [u8; 16]| {
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv6(src, dst, 64)
                .udp(4000, 53)
                .write(&mut frame, b"q")
                .expect("frame");
            frame
        };
        let a: std::net::Ipv6Addr = "2001:db8::99".parse().expect("literal");
        let b: std::net::Ipv6Addr = "2001:db8::1".parse().expect("literal");
        assert_eq!(
            describe(&udp6(a.octets(), b.octets())),
            "IP6 2001:db8::99.4000 > 2001:db8::1.53: UDP"
        );
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 9], [10, 0, 0, 1], 64)
            .udp(4000, 53)
            .write(&mut frame, b"q")
            .expect("frame");
        assert_eq!(describe(&frame), "IP 10.0.0.9.4000 > 10.0.0.1.53: UDP");
    }

    fn raw(after: bool, frame: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&7u64.to_ne_bytes());
        b.extend_from_slice(&(frame.len() as u32 + 100).to_ne_bytes());
        b.extend_from_slice(&(frame.len() as u32).to_ne_bytes());
        for v in [3u32, 1, 0, 42, u32::from(after), if after { 3 } else { 0 }] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        let mut data = frame.to_vec();
        data.resize(CAPTURE_SNAP_LEN, 0);
        b.extend_from_slice(&data);
        b
    }

    #[test]
    fn a_record_decodes_with_its_captured_bytes_only() {
        let r = Record::parse(&raw(true, &[1, 2, 3])).unwrap();
        assert_eq!(r.data, vec![1, 2, 3]);
        assert_eq!(r.orig_len, 103);
        assert_eq!((r.ifindex, r.service_id, r.cpu, r.seq), (3, 1, 0, 42));
        assert!(r.after);
        assert_eq!(action_name(r.action), "tx");
        assert!(comment(&r, "dns").starts_with("xdplb after service=dns action=tx"));
        let b = Record::parse(&raw(false, &[9])).unwrap();
        assert!(!b.after);
        assert!(Record::parse(&raw(false, &[9])[..30]).is_none());
    }

    #[test]
    fn an_after_without_its_before_is_dropped() {
        let after = Record::parse(&raw(true, &[1])).unwrap();
        let before = Record::parse(&raw(false, &[1])).unwrap();
        let mut p = Pairing::default();
        assert!(!p.admit(&after), "stray: no before seen");
        assert!(p.admit(&before));
        assert!(p.admit(&after));
        assert!(!p.admit(&after), "once");
    }
}
