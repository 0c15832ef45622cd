#!/usr/bin/env bash
# Try a forwarding mode in a lab of network namespaces: a client, the balancer and three
# backends, each a namespace of its own with real UDP servers, plugged into one switch (a
# bridge in a fifth namespace). Runs `xdplb run` in MODE in the balancer's namespace, sends
# traffic from the client, shows who answered and the balancer's listing, and removes
# everything on exit (also on Ctrl-C or failure). Needs root; nothing touches the host's own
# interfaces.
#
#   bash scripts/lab.sh [--ipv6] MODE        MODE: local | nat | fullnat | dsr-l2 | dsr-ipip
#
# Addresses: the client 10.90.0.1/24; the balancer 10.90.0.2/24 (client side) and 10.91.0.1/24
# (backend side), both on its one veth; backend k 10.91.0.1k/24; the VIP 10.99.0.1:7000, which
# the client routes via the balancer. Per mode:
#   local     backends route via the balancer; it rewrites to the backend and its kernel
#             forwards; replies get source = VIP in TC egress on the way back.
#   nat       backends route via the balancer (their gateway), which translates the replies.
#   fullnat   backends have no route at all: the balancer's 10.91.0.1 is the source they see.
#   dsr-l2    backends hold the VIP on lo (arp_ignore) and answer the client directly.
#   dsr-ipip  as dsr-l2, and strip the IP-in-IP header with `xdplb decap`.
# With --ipv6 the same lab runs on IPv6 alone: fd00:90::1/64 for 10.90.0.1/24 and so on, the VIP
# [fd00:99::1]:7000, encap_source fd00:200::/64 (dsr-ipip is then IPv6-in-IPv6, which
# `xdplb decap` strips as well), and no ARP settings (neighbour discovery answers only for
# addresses of the receiving interface, so a VIP on lo needs none).
# The veths keep their default offloads. XDP runs in generic mode: on a veth, native XDP_TX and
# XDP_REDIRECT need the peer to have NAPI (GRO on or an XDP program), which a bridge port has not.
set -euo pipefail
cd "$(dirname "$0")/.."

MODES="local nat fullnat dsr-l2 dsr-ipip"
IPV6=
if [ "${1:-}" = --ipv6 ]; then
  IPV6=1
  shift
fi
MODE="${1:-}"
if [[ " $MODES " != *" $MODE "* ]] || [ -z "$MODE" ] || [ $# -ne 1 ]; then
  echo "usage: bash scripts/lab.sh [--ipv6] MODE   (MODE: ${MODES// / | })" >&2
  exit 2
fi

# The lab's addresses in its family: a() maps the IPv4 plan to its IPv6 twin.
if [ -n "$IPV6" ]; then
  a() { # 10.X.0.Y[/24|/32] -> fd00:X::Y[/64|/128]
    local addr=${1%/*} len= o
    [[ "$1" == */* ]] && len=${1#*/}
    IFS=. read -r -a o <<<"$addr"
    printf 'fd00:%s::%s' "${o[1]}" "${o[3]}"
    case "$len" in 24) printf '/64' ;; 32) printf '/128' ;; esac
  }
  sock() { printf '[%s]:%s' "$(a "$1")" "$2"; }
  ENCAP_SOURCE=fd00:200::/64
  FAMILY=-6
else
  a() { printf '%s' "$1"; }
  sock() { printf '%s:%s' "$1" "$2"; }
  ENCAP_SOURCE=10.200.0.0/24
  FAMILY=-4
fi
VIP="$(sock 10.99.0.1 7000)"

# XDPLB_LAB_BIN: an xdplb binary to use instead of setting up and building (the test does).
if [ -n "${XDPLB_LAB_BIN:-}" ]; then
  XDPLB="$XDPLB_LAB_BIN"
else
  bash scripts/setup.sh
  export PATH="$HOME/.cargo/bin:$PATH"
  echo "lab: building (release)"
  cargo build --release --quiet -p xdplb
  XDPLB="$PWD/target/release/xdplb"
fi

P="xdplb-lab-$$"
SW="$P-switch" CLIENT="$P-client" LB="$P-lb"
BACKENDS=("$P-b1" "$P-b2" "$P-b3")
RUN_DIR="$(mktemp -d /tmp/xdplb-lab.XXXXXX)"
PIDS=()
cleanup() {
  status=$?
  # Every process in the lab's namespaces too: one started just before Ctrl-C may not be in
  # PIDS yet (the trap runs between `cmd &` and `PIDS+=($!)`).
  for ns in "$CLIENT" "$LB" "${BACKENDS[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do PIDS+=("$p"); done
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # A child is waited for; a process found in a namespace is polled, for at most 5 s each.
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  done
  # Deleting a namespace deletes its veths (and their XDP programs) and the bridge.
  for ns in "$CLIENT" "$LB" "${BACKENDS[@]}" "$SW"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$RUN_DIR"
  echo "lab: removed the namespaces $P-*"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() { # FILE TEXT SECONDS
  for _ in $(seq 1 $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "lab: timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

# plug NS DEV ADDRESS...: a veth from NS (DEV) to a port of the switch's bridge.
plug() {
  local ns=$1 dev=$2
  shift 2
  ip link add "$dev" netns "$ns" type veth peer name "p-$dev" netns "$SW"
  ip -n "$SW" link set "p-$dev" master br0 up
  # nodad: an IPv6 address is usable at once (no duplicate address detection to wait for).
  for addr in "$@"; do ip -n "$ns" addr add "$(a "$addr")" dev "$dev" ${IPV6:+nodad}; done
  ip -n "$ns" link set "$dev" up
}

echo "lab: mode $MODE${IPV6:+ over IPv6}; namespaces $P-{switch,client,lb,b1,b2,b3}"
for ns in "$SW" "$CLIENT" "$LB" "${BACKENDS[@]}"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up

CDEV="c$$" LDEV="l$$"
plug "$CLIENT" "$CDEV" 10.90.0.1/24
ip -n "$CLIENT" route add "$(a 10.99.0.0/24)" via "$(a 10.90.0.2)"
plug "$LB" "$LDEV" 10.90.0.2/24 10.91.0.1/24
ip netns exec "$LB" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
# The balancer forwards out of the interface packets came in on: no ICMP redirects for that.
ip netns exec "$LB" sysctl -qw net.ipv4.conf.all.send_redirects=0 "net.ipv4.conf.$LDEV.send_redirects=0"

case "$MODE" in
  dsr-l2 | dsr-ipip) LISTEN_ON_VIP=1 ;;
  *) LISTEN_ON_VIP= ;;
esac
for k in 1 2 3; do
  ns="${BACKENDS[$((k - 1))]}" dev="b$k$$"
  plug "$ns" "$dev" "10.91.0.1$k/24"
  case "$MODE" in
    local | nat) ip "$FAMILY" -n "$ns" route add default via "$(a 10.91.0.1)" ;;
    fullnat) ;; # no route to the client: the balancer's source rewrite brings the replies back
    dsr-l2 | dsr-ipip)
      # Holds the VIP without answering ARP for it, and answers the client directly.
      ip -n "$ns" addr add "$(a 10.99.0.1/32)" dev lo
      ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
      ip -n "$ns" route add "$(a 10.90.0.0/24)" dev "$dev"
      if [ "$MODE" = dsr-ipip ]; then
        ip netns exec "$ns" "$XDPLB" decap --interface "$dev" | sed "s/^/lab: backend-$k: /"
      fi
      ;;
  esac
  if [ -n "$LISTEN_ON_VIP" ]; then listen="$VIP"; else listen="$(sock "10.91.0.1$k" 7000)"; fi
  ip netns exec "$ns" "$XDPLB" demo-backend --listen "$listen" --name "backend-$k" \
    >"$RUN_DIR/backend-$k.log" 2>&1 &
  PIDS+=($!)
  wait_for "$RUN_DIR/backend-$k.log" listening 10
done

CFG="$RUN_DIR/lab.toml"
{
  echo "interfaces = [\"$LDEV\"]"
  echo 'xdp_mode = "generic"'
  echo
  echo '[[service]]'
  echo 'name = "lab"'
  echo "vip = \"$VIP\""
  echo "forwarding = \"$MODE\""
  [ "$MODE" = fullnat ] && echo "fullnat_source = \"$(a 10.91.0.1)\""
  [ "$MODE" = dsr-ipip ] && echo "encap_source = \"$ENCAP_SOURCE\""
  for k in 1 2 3; do printf '[[service.backend]]\naddress = "%s"\n' "$(sock "10.91.0.1$k" 7000)"; done
} >"$CFG"
echo "lab: the balancer's config ($CFG):"
sed 's/^/    /' "$CFG"

echo "lab: starting xdplb run in $LB"
ip netns exec "$LB" env XDPLB_RUN_DIR="$RUN_DIR" "$XDPLB" run --cleanup --config "$CFG" --instance lab \
  >"$RUN_DIR/xdplb.log" 2>&1 &
LB_PID=$!
PIDS+=($LB_PID)
wait_for "$RUN_DIR/xdplb.log" "running instance" 20
if [ "$MODE" != local ]; then
  # The daemon asks the kernel to resolve the backends' MAC addresses; wait for the answers.
  for _ in $(seq 1 50); do
    [ "$(ip "$FAMILY" -n "$LB" neigh show dev "$LDEV" | grep -cE "^$(a 10.91.0.1 | sed 's/\./\\./g')[123] .*(REACHABLE|STALE|DELAY|PERMANENT)")" = 3 ] && break
    sleep 0.1
  done
fi

echo
echo "lab: 30 flows from the client ($(a 10.90.0.1)) to the VIP $VIP, 3 datagrams each"
ip netns exec "$CLIENT" "$XDPLB" demo-client --target "$VIP" --flows 30 --packets 3 --require-all

echo
in_lb() { ip netns exec "$LB" env XDPLB_RUN_DIR="$RUN_DIR" "$XDPLB" "$@"; }
if in_lb list --help >/dev/null 2>&1; then
  echo "lab: xdplb list"
  in_lb list --instance lab
else
  echo "lab: xdplb stats"
  in_lb stats --instance lab
fi

kill -TERM "$LB_PID"
if wait "$LB_PID"; then
  PIDS=("${PIDS[@]/$LB_PID/}")
  echo "lab: xdplb stopped: $(tail -n 1 "$RUN_DIR/xdplb.log")"
else
  echo "lab: xdplb exited with status $? on SIGTERM:" >&2
  cat "$RUN_DIR/xdplb.log" >&2
  exit 1
fi
