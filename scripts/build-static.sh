#!/usr/bin/env bash
# Builds a static, stripped xdplb for x86_64-unknown-linux-musl, with the eBPF objects embedded
# (xdplb/build.rs builds them with aya-build, whatever the user-space target), and prints its
# path: target/x86_64-unknown-linux-musl/release/xdplb. Needs what scripts/setup.sh installs
# (the musl target, musl-tools, nightly, bpf-linker). A rebuild after a change is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

TARGET=x86_64-unknown-linux-musl
# --locked: the versions of Cargo.lock, as the tests use.
cargo build --locked --release --target "$TARGET" -p xdplb --bin xdplb >&2
bin="target/$TARGET/release/xdplb"
# Stripped here rather than with `strip = true` in [profile.release]: that profile setting
# would also rebuild the test builds, whose backtraces want the symbols.
# Into a new file renamed over the old one: a running copy of the binary keeps its own.
if file "$bin" | grep -q 'not stripped'; then
  strip --strip-all -o "$bin.stripped" "$bin"
  mv -f "$bin.stripped" "$bin"
fi
if ! file "$bin" | grep -q 'static'; then
  echo "build-static: $bin is not static: $(file "$bin")" >&2
  exit 1
fi
echo "$bin"
