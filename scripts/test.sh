#!/usr/bin/env bash
# README command 2: set up what is missing, build, and run every test (all three tiers).
# Needs root: tiers 2 and 3 load BPF programs and create network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "test: formatting and lints"
cargo fmt --all --check
cargo clippy --all-targets --quiet -- -D warnings
(cd xdplb-ebpf && cargo +nightly clippy --quiet --target bpfel-unknown-none -Z build-std=core --bins -- -D warnings)

echo "test: the static binary and the Debian package (tests/packaging.rs checks and installs them)"
# Built here, outside the test timeout: a cold musl build of the whole tree takes minutes; the
# test's own run of the same scripts is then incremental.
timeout 2400 bash scripts/build-deb.sh

echo "test: tier 1 (host unit tests), tier 2 (BPF_PROG_TEST_RUN) and tier 3 (namespaces)"
# Every test is bounded; the timeout only stops a hung kernel interaction from eating CI.
timeout 1200 cargo test --release -- --test-threads=2
