#![no_std]
// This crate is only built for the bpf target, as binaries (see Cargo.toml). The empty library
// lets xdplb name it as a build-dependency so cargo rebuilds xdplb when it changes.
