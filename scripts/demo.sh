#!/usr/bin/env bash
# README command 1: set up what is missing, build, and show xdplb balancing real traffic.
# Everything runs inside a network namespace of its own, so the host's lo is untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "demo: building (release)"
cargo build --release --quiet -p xdplb
XDPLB="$PWD/target/release/xdplb"

NS="xdplb-demo-$$"
RUN_DIR="$(mktemp -d /tmp/xdplb-demo.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
# Background processes are started as plain commands (not through a function), so that $! is
# the process itself and the signals below reach it.
in_ns() { ip netns exec "$NS" env XDPLB_RUN_DIR="$RUN_DIR" "$@"; }

wait_for() { # FILE TEXT SECONDS
  for _ in $(seq 1 $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "demo: timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

echo "demo: starting the demo backends in namespace $NS"
ip netns exec "$NS" "$XDPLB" demo-backend --listen 127.0.0.1:9876,127.0.0.1:9877,127.0.0.1:9878 \
  >"$RUN_DIR/backends.log" 2>&1 &
PIDS+=($!)
wait_for "$RUN_DIR/backends.log" listening 10

echo "demo: starting xdplb with the built-in tutorial scenario (127.0.0.1:9875 -> :9876 :9877 :9878 on lo)"
ip netns exec "$NS" env XDPLB_RUN_DIR="$RUN_DIR" "$XDPLB" run --cleanup --instance demo >"$RUN_DIR/xdplb.log" 2>&1 &
LB=$!
PIDS+=($LB)
wait_for "$RUN_DIR/xdplb.log" "running instance" 20
cat "$RUN_DIR/xdplb.log"

echo
echo "demo: 30 clients, each a connected UDP socket with its own source port, 3 datagrams each"
# Round robin keeps one cursor per CPU (no shared write on the hot path); pinning the client to
# one CPU shows the rotation as a single sequence.
in_ns taskset -c 0 "$XDPLB" demo-client --target 127.0.0.1:9875 --flows 30 --packets 3 --require-all

echo
echo "demo: the balancer's counters (xdplb stats)"
in_ns "$XDPLB" stats --instance demo

kill -TERM "$LB"
if wait "$LB"; then
  tail -n 1 "$RUN_DIR/xdplb.log"
else
  echo "demo: xdplb exited with status $? on SIGTERM" >&2
  exit 1
fi
if ip -n "$NS" -d link show dev lo | grep -q prog/xdp; then
  echo "demo: XDP is still attached to lo after exit" >&2
  exit 1
fi
echo "demo: done; xdplb (run --cleanup) stopped with exit 0 and left nothing attached or pinned"
