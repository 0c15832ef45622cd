//! xdplb: an XDP layer-4 UDP load balancer. This library is the control plane; the data plane
//! is the eBPF object built from `xdplb-ebpf` by build.rs.
//!
//! No `unsafe` outside [`sys`], the module of reviewed wrappers over the system calls that
//! neither aya nor rustix exposes.

#![deny(unsafe_code)]

pub mod addr;
pub mod announce;
pub mod api;
pub mod bench;
pub mod bpf_link;
pub mod capture;
pub mod cli;
pub mod confdiff;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod demo;
pub mod explain;
pub mod flows;
pub mod health;
pub mod http;
pub mod instance;
pub mod list;
pub mod logs;
pub mod metrics;
pub mod netlink;
pub mod nexthop;
pub mod packet;
pub mod stats;
pub mod stop;
#[allow(
    unsafe_code,
    reason = "the reviewed wrappers: one system call each, every block with its SAFETY comment"
)]
pub mod sys;
pub mod testrun;
pub mod top;
pub mod veth;
pub mod view;
