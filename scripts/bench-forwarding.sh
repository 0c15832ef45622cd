#!/usr/bin/env bash
# Forwarding benchmark (prints figures; not a test). One topology, one run, four ways through
# the middle host:
#   routing   plain IPv4 forwarding, the client sending to the backends directly (the ceiling)
#   nftables  DNAT to the three backends with `numgen inc mod 3` (what a user would otherwise pick)
#   nat       xdplb, forwarding = "nat"
#   dsr-ipip  xdplb, forwarding = "dsr-ipip", backends running `xdplb decap`
# and then ns/packet of every forwarding mode through BPF_PROG_TEST_RUN in the same namespace.
# For each: datagrams/s delivered to the backends' UDP layer while the client floods as fast as
# it can, and the CPU the whole machine uses while the client sends at a fixed rate. Then, for
# each of the four, a new-flow flood: BENCH_NEW_FLOWS (1 million) datagrams, each from a source
# address and port of its own (a raw socket, `xdplb demo-flood --new-flow-per-datagram`), so
# every datagram is the first of a new flow: datagrams/s delivered and the share lost, median
# over BENCH_FLOOD_ROUNDS rounds, each round from fresh sources (172.16+r.0.0/16). The xdplb
# cases run with the default `max_flows` (262,144), so a million flows overflow the flow table;
# nftables meets the same with its conntrack table (nf_conntrack_max). That is the point.
# Over veth the receiving side runs in the sender's softirq on the sender's CPU, so the sender
# slows to what the whole path sustains: delivered/s is the figure to compare, and loss counts
# what the middle drops (a full table, a flood guard) rather than overrun queues.
#
#   client --veth-- balancer --veth-- backend 1..3      (namespaces of this script's own)
#
# Usage: bash scripts/bench-forwarding.sh (as root)
#   (BENCH_SECONDS, BENCH_FIXED_SECONDS, BENCH_RATE, BENCH_FLOWS, BENCH_REPEAT, BENCH_ROUNDS,
#    BENCH_NEW_FLOWS, BENCH_NEW_FLOW_RATE (0: as fast as the sender can), BENCH_FLOOD_ROUNDS)
# CPU is the whole machine's (sender included, the same in every phase), from /proc/stat.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p xdplb
XDPLB="$PWD/target/release/xdplb"
SECS="${BENCH_SECONDS:-3}"
RATE="${BENCH_RATE:-100000}"
FIXED_SECS="${BENCH_FIXED_SECONDS:-6}"
FLOWS="${BENCH_FLOWS:-256}"
NEW_FLOWS="${BENCH_NEW_FLOWS:-1000000}"
NEW_FLOW_RATE="${BENCH_NEW_FLOW_RATE:-0}"
FLOOD_ROUNDS="${BENCH_FLOOD_ROUNDS:-3}"
if ! [ "$FLOOD_ROUNDS" -ge 1 ] 2>/dev/null || [ "$FLOOD_ROUNDS" -gt 16 ]; then
  echo "bench: BENCH_FLOOD_ROUNDS=$FLOOD_ROUNDS: expected 1 to 16 (one 172.16+r.0.0/16 each)" >&2
  exit 1
fi

TAG="xb$$"
C="$TAG-c"; L="$TAG-l"; B=("$TAG-b1" "$TAG-b2" "$TAG-b3")
RUN_DIR="$(mktemp -d /tmp/xdplb-bench.XXXXXX)"
BPFFS="$RUN_DIR/bpffs"
LB_PID=""
cleanup() {
  [ -n "$LB_PID" ] && kill "$LB_PID" 2>/dev/null && wait "$LB_PID" 2>/dev/null || true
  for ns in "$C" "$L" "${B[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  umount -l "$BPFFS" 2>/dev/null || true
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

for ns in "$C" "$L" "${B[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
mkdir -p "$BPFFS" && mount -t bpf bpf "$BPFFS"
veth() { # NS_A DEV_A ADDR_A NS_B DEV_B ADDR_B
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"; ip -n "$4" addr add "$6" dev "$5"
  for x in "$1 $2" "$4 $5"; do
    set -- $x
    ip -n "$1" link set "$2" up
    ip netns exec "$1" ethtool -K "$2" tx off gro on >/dev/null
  done
}
veth "$C" c0 10.91.0.1/24 "$L" l0 10.91.0.2/24
ip -n "$C" route add 10.92.0.0/16 via 10.91.0.2
ip -n "$C" route add 10.99.0.0/24 via 10.91.0.2
for k in 1 2 3; do
  ns="${B[$((k - 1))]}"
  veth "$L" "l$k" "10.92.$k.1/24" "$ns" "b$k" "10.92.$k.2/24"
  ip -n "$ns" route add default via "10.92.$k.1"
  ip -n "$ns" addr add 10.99.0.1/32 dev lo
done
ip netns exec "$L" sysctl -qw net.ipv4.ip_forward=1
# The new-flow flood's sources (172.16+r.0.0/16, configured nowhere) route back to the client,
# so that nothing on the way refuses them and the backends' ICMP errors have a way back (the
# client drops them: it does not forward).
ip -n "$L" route add 172.16.0.0/12 via 10.91.0.1
BACKENDS="10.92.1.2:7000,10.92.2.2:7000,10.92.3.2:7000"

delivered() { # datagrams that reached the backends' UDP layer (no listener: NoPorts)
  local sum=0 ns line
  for ns in "${B[@]}"; do
    line=$(ip netns exec "$ns" awk '/^Udp:/ {n++} n==2 && /^Udp:/ {print $2 + $3; exit}' /proc/net/snmp)
    sum=$((sum + line))
  done
  echo "$sum"
}
cpu_ticks() { awk '/^cpu / {busy=$2+$3+$4+$7+$8+$9; total=busy+$5+$6; print busy, total}' /proc/stat; }

RESULTS=()
measure() { # NAME TARGETS
  local name="$1" targets="$2" d0 d1 out sent b0 t0 b1 t1
  d0=$(delivered)
  out=$(ip netns exec "$C" "$XDPLB" demo-flood --target "$targets" --flows "$FLOWS" --seconds "$SECS")
  sleep 0.2
  d1=$(delivered)
  sent=$(echo "$out" | sed -E 's/.*"sent":([0-9]+).*/\1/')
  local max_pps=$(( (d1 - d0) / SECS )) sent_pps=$(( sent / SECS ))
  read -r b0 t0 < <(cpu_ticks)
  d0=$(delivered)
  ip netns exec "$C" "$XDPLB" demo-flood --target "$targets" --flows "$FLOWS" --seconds "$FIXED_SECS" --rate "$RATE" >/dev/null
  sleep 0.2
  d1=$(delivered)
  read -r b1 t1 < <(cpu_ticks)
  local cores
  cores=$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v n="$(nproc)" 'BEGIN {printf "%.2f", b / t * n}')
  RESULTS+=("$(printf '%-10s %12s %12s %10s %14s' "$name" "$max_pps" "$sent_pps" "$cores" "$((d1 - d0))")")
  echo "bench: $name: delivered $max_pps/s of $sent_pps/s sent; at $RATE/s: $cores cores busy, $((d1 - d0)) delivered"
}

FLOOD_RESULTS=()
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
# What the middle's state table holds after a mode's flood rounds, for the table's last column.
conntrack_note() {
  echo "conntrack: $(ip netns exec "$L" cat /proc/sys/net/netfilter/nf_conntrack_count) entries"
}
flow_table_note() { # "flow table: N of M entries; I inserted, E evicted", from `xdplb stats`
  ip netns exec "$L" env XDPLB_RUN_DIR="$RUN_DIR" XDPLB_BPFFS="$BPFFS" "$XDPLB" stats \
    --instance bench | grep '^flow table' || echo "flow table: ?"
}
measure_new_flows() { # NAME TARGETS [NOTE_COMMAND]
  local name="$1" targets="$2" note_cmd="${3:-}" note="" r d0 d1 out sent secs got rates=() sent_rates=() losses=()
  for r in $(seq 0 $((FLOOD_ROUNDS - 1))); do
    d0=$(delivered)
    out=$(ip netns exec "$C" "$XDPLB" demo-flood --target "$targets" --new-flow-per-datagram \
      --flows "$NEW_FLOWS" --rate "$NEW_FLOW_RATE" --source-net "172.$((16 + r)).0.0/16")
    sleep 0.5
    d1=$(delivered)
    sent=$(echo "$out" | sed -E 's/.*"sent":([0-9]+).*/\1/')
    secs=$(echo "$out" | sed -E 's/.*"seconds":([0-9.eE+-]+).*/\1/')
    got=$((d1 - d0))
    rates+=("$(awk -v n="$got" -v s="$secs" 'BEGIN {printf "%d", n / s}')")
    sent_rates+=("$(awk -v n="$sent" -v s="$secs" 'BEGIN {printf "%d", n / s}')")
    losses+=("$(awk -v n="$got" -v t="$sent" 'BEGIN {if (t > 0) printf "%.1f", (t - n) / t * 100; else print 0}')")
    echo "bench: $name new flows, round $((r + 1)): $sent sent in $secs s, $got delivered"
  done
  local rate sent_rate loss
  rate=$(printf '%s\n' "${rates[@]}" | median)
  sent_rate=$(printf '%s\n' "${sent_rates[@]}" | median)
  loss=$(printf '%s\n' "${losses[@]}" | median)
  [ -n "$note_cmd" ] && note=$("$note_cmd")
  FLOOD_RESULTS+=("$(printf '%-10s %12s %12s %8s   %-16s %s' "$name" "$rate" "$sent_rate" "$loss" \
    "${losses[*]}" "$note")")
  echo "bench: $name new flows: delivered $rate/s of $sent_rate/s sent, $loss% lost (medians)${note:+; $note}"
}

echo "bench: flood $SECS s, then $FIXED_SECS s at $RATE datagrams/s; $FLOWS flows; $(nproc) CPUs"
echo "bench: then $NEW_FLOWS new flows (one datagram each) x $FLOOD_ROUNDS rounds per mode, at" \
  "$([ "$NEW_FLOW_RATE" = 0 ] && echo "the sender's best" || echo "$NEW_FLOW_RATE/s");" \
  "xdplb max_flows 262144 (default), nf_conntrack_max $(sysctl -n net.netfilter.nf_conntrack_max 2>/dev/null || echo '?')"
measure routing "$BACKENDS"
measure_new_flows routing "$BACKENDS"

ip netns exec "$L" nft -f - <<'EOF'
table ip xdplb_bench {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    ip daddr 10.99.0.1 udp dport 7000 dnat to numgen inc mod 3 map { 0 : 10.92.1.2, 1 : 10.92.2.2, 2 : 10.92.3.2 }
  }
}
EOF
measure nftables 10.99.0.1:7000
measure_new_flows nftables 10.99.0.1:7000 conntrack_note
ip netns exec "$L" nft delete table ip xdplb_bench

start_lb() { # CONFIG_TEXT
  printf '%s\n' "$1" >"$RUN_DIR/lb.toml"
  ip netns exec "$L" env XDPLB_RUN_DIR="$RUN_DIR" XDPLB_BPFFS="$BPFFS" "$XDPLB" run --cleanup \
    --config "$RUN_DIR/lb.toml" --instance bench >"$RUN_DIR/lb.log" 2>&1 &
  LB_PID=$!
  for _ in $(seq 1 100); do grep -q "running instance" "$RUN_DIR/lb.log" && return 0; sleep 0.1; done
  cat "$RUN_DIR/lb.log" >&2; exit 1
}
stop_lb() { kill "$LB_PID"; wait "$LB_PID" || true; LB_PID=""; }
SERVICE_HEAD='interfaces = ["l0", "l1", "l2", "l3"]
[[service]]
name = "bench"
vip = "10.99.0.1:7000"'
SERVICE_TAIL='[[service.backend]]
address = "10.92.1.2:7000"
[[service.backend]]
address = "10.92.2.2:7000"
[[service.backend]]
address = "10.92.3.2:7000"'

start_lb "$SERVICE_HEAD
forwarding = \"nat\"
$SERVICE_TAIL"
measure nat 10.99.0.1:7000
measure_new_flows nat 10.99.0.1:7000 flow_table_note
stop_lb

for k in 1 2 3; do
  ip netns exec "${B[$((k - 1))]}" env XDPLB_BPFFS="$BPFFS" "$XDPLB" decap --interface "b$k" >/dev/null
done
start_lb "$SERVICE_HEAD
forwarding = \"dsr-ipip\"
encap_source = \"10.200.0.0/24\"
$SERVICE_TAIL"
measure dsr-ipip 10.99.0.1:7000
measure_new_flows dsr-ipip 10.99.0.1:7000 flow_table_note
stop_lb

echo
echo "bench: ns/packet of an existing flow through BPF_PROG_TEST_RUN, in the balancer's namespace"
echo "bench: (backend 10.92.1.2 routed and its neighbour resolved by the runs above)"
ip netns exec "$L" "$XDPLB" bench --modes-backend 10.92.1.2:7000 --source 10.92.1.1 \
  --repeat "${BENCH_REPEAT:-200000}" --rounds "${BENCH_ROUNDS:-7}"

echo
printf '%-10s %12s %12s %10s %14s\n' mode "delivered/s" "sent/s" "cores@$RATE" "delivered@$RATE"
for r in "${RESULTS[@]}"; do echo "$r"; done
echo
echo "new-flow flood: $NEW_FLOWS datagrams, each a new flow; medians over $FLOOD_ROUNDS rounds"
printf '%-10s %12s %12s %8s   %-16s %s\n' mode "delivered/s" "sent/s" "loss%" "loss% per round" \
  "state table after the rounds"
for r in "${FLOOD_RESULTS[@]}"; do echo "$r"; done
