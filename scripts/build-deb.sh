#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and prints its path (target/debian/xdplb_*.deb):
# the static binary (scripts/build-static.sh), the systemd unit, /etc/xdplb/xdplb.toml (a
# conffile), the README, and the man pages and bash/zsh/fish completions, generated here by
# the very binary that is packaged (`xdplb generate-docs`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

TARGET=x86_64-unknown-linux-musl
bin=$(bash scripts/build-static.sh)
docs="target/$TARGET/release/docs"
rm -rf "$docs"
"$bin" generate-docs "$docs" >/dev/null
# Debian policy: man pages gzipped (cargo-deb compresses only the assets it did not build).
gzip -9n "$docs"/man/*.1
# --no-build: the binary above; cargo-deb finds it under target/$TARGET/release.
cargo deb --locked --no-build --no-strip --target "$TARGET" -p xdplb --output target/debian >&2
ls -t target/debian/xdplb_*.deb | head -n 1
