#!/usr/bin/env bash
# Installs what building and testing xdplb needs, and skips whatever is already present,
# so that a second run takes seconds. Needs root (apt-get) on Debian 12.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

BPF_LINKER_VERSION=0.13.0
CARGO_DEB_VERSION=3.8.0
LLVM_MAJOR=22
LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR}
APT_PACKAGES=(
  "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" zlib1g-dev libzstd-dev
  bpftool iproute2 ethtool nftables tmux curl
  python3-prometheus-client  # the namespace tests parse /metrics with the reference client
  musl-tools file binutils man-db systemd  # the static build, the package and its tests
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (apt-get, and later BPF); run it as root" >&2
  exit 1
fi

export PATH="$HOME/.cargo/bin:$PATH"

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi
# promtool (Debian package prometheus, without the recommended extras) checks and tests
# examples/monitoring/ (xdplb/tests/monitoring.rs).
if command -v promtool >/dev/null; then
  log "promtool present"
else
  log "installing promtool (Debian package prometheus)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # Only promtool is wanted: stop and disable the server the package starts.
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# BIRD 2 speaks BGP and BFD in the fleet test (xdplb/tests/fleet.rs), which runs its own bird
# processes inside namespaces. The package enables a system bird.service: keep it from starting
# during the install (policy-rc.d, for hosts without a booted systemd), and disable it after.
if command -v bird >/dev/null && command -v birdc >/dev/null; then
  log "bird2 present"
else
  log "installing bird2 (its system service left disabled)"
  apt-get update -qq
  policy_rc=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy_rc" ]; then
    # Ours only: removed on any exit from here on (a failed install exits under `set -e`), and
    # a policy-rc.d the host had already is left alone.
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
    chmod +x "$policy_rc"
    own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bird2 >/dev/null
  if [ -n "$own_policy" ]; then
    rm -f "$policy_rc"
    trap - EXIT
  fi
  systemctl disable --now bird >/dev/null 2>&1 || systemctl disable bird >/dev/null 2>&1 || true
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
else
  log "nightly rust-src present"
fi

if bpf-linker --version 2>/dev/null | grep -q "${BPF_LINKER_VERSION}"; then
  log "bpf-linker ${BPF_LINKER_VERSION} present"
else
  log "building bpf-linker ${BPF_LINKER_VERSION} against LLVM ${LLVM_MAJOR} (about 2 minutes)"
  env LLVM_PREFIX="${LLVM_PREFIX}" "LLVM_SYS_${LLVM_MAJOR}1_PREFIX=${LLVM_PREFIX}" \
    cargo install bpf-linker --locked --version "${BPF_LINKER_VERSION}" \
    --no-default-features --features "llvm-${LLVM_MAJOR}"
fi

if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  log "adding the x86_64-unknown-linux-musl target (the static binary)"
  rustup target add x86_64-unknown-linux-musl
else
  log "musl target present"
fi
if cargo deb --version 2>/dev/null | grep -q "${CARGO_DEB_VERSION}"; then
  log "cargo-deb ${CARGO_DEB_VERSION} present"
else
  log "building cargo-deb ${CARGO_DEB_VERSION} (the Debian package; about 3 minutes)"
  cargo install cargo-deb --locked --version "${CARGO_DEB_VERSION}"
fi

if [ ! -d /sys/fs/bpf ] || ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || log "note: could not mount bpffs (not needed yet)"
fi
log "done"
