//! xdplb: an XDP layer-4 UDP load balancer. This library is the control plane; the data plane
//! is the eBPF object built from `xdplb-ebpf` by build.rs.

pub mod api;
pub mod bench;
pub mod bpf_link;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod demo;
pub mod explain;
pub mod health;
pub mod http;
pub mod instance;
pub mod metrics;
pub mod netlink;
pub mod packet;
pub mod stats;
pub mod stop;
pub mod testrun;
pub mod top;
pub mod veth;
