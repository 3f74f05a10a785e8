#!/usr/bin/env bash
# Scale on one machine: one `edgeloop echo` holding 19 000 connections.
#
#   scripts/scale.sh                                   # 19 000 conns, 19 000 msg/s, 20 s
#   CONNS=19000 RATE=38000 DURATION=30 WARMUP=2 SEND_WINDOW=1 scripts/scale.sh
#
# Builds the release binary, raises this shell's open-file soft limit to the
# hard one (the server and the generator each hold CONNS descriptors; they
# raise their own limits too), raises netdev_max_backlog and somaxconn when
# run as root (scripts/lib/bench.sh), then measures in two phases, each on a
# fresh `edgeloop echo --max-conns 100000` pinned to CPU 0:
#
#   1. idle: scripts/lib/idle_conns.py (pinned to CPU 1) opens CONNS
#      connections that send nothing, waits until the server holds them all,
#      and reads the server's VmRSS; then echoes one 64-byte message on each
#      and reads it again. /proc/net/sockstat and the socket slab caches
#      (/proc/slabinfo) are recorded at the same moments. Idle cost per
#      connection = RSS delta / CONNS. `edgeloop load` cannot measure this:
#      its connections start sending as soon as they open.
#   2. active: `edgeloop load --connect ... --conns CONNS --rate RATE
#      --send-window SEND_WINDOW --duration DURATION --warmup WARMUP --json`
#      (open loop, 64-byte raw
#      messages, every byte verified; pinned to CPU 1), while
#      scripts/lib/scale.py samples the server's RSS and descriptors,
#      sockstat and slabinfo twice a second. The samples in which the server
#      held all CONNS connections give the cost under load (median RSS).
#
# Prints a markdown result: connections held, achieved rate, latency,
# mismatches, user-space bytes per connection (idle, after one echo, under
# load), kernel bytes per socket (TCP buffer memory from sockstat's `mem`
# pages; socket objects from slabinfo), and a model of 1 000 000
# connections from those figures. On loopback both ends of every
# connection are on this machine: kernel deltas cover 2 x CONNS sockets and
# are divided accordingly. Exits 1 when a promise was not kept (fewer
# connections held, an echo differed, the load failed or the server died,
# more than 128 bytes per idle connection: the bound today's unit test
# guards); 3 when all held but the load's latency verdict was not `ok`
# (`edgeloop load` exit status 3: on a shared machine, usually other
# processes on the cores); else 0. Files in target/scale/. About a minute
# (more if an earlier run's TIME_WAIT sockets must expire first).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_OUT=${BENCH_OUT:-target/scale}
source scripts/lib/bench.sh

CONNS=${CONNS:-19000}
RATE=${RATE:-19000}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-2}
# 500 us: with one message per connection per second, nearly every message
# is its own wake-up at 1 us precision, and the generator's own lateness
# (not the server's) decided the verdict; in 500 us windows ten messages
# share one (BENCHMARKS.md, "The load generator's own cost").
SEND_WINDOW=${SEND_WINDOW:-500}

echo "building edgeloop (cargo build --release)..." >&2
cargo build --release --quiet
bench_tune

need=$((CONNS + 100))
if (($(ulimit -n) < need)); then
    echo "error: $CONNS connections need an open-file limit of at least $need per process;" \
        "this shell has $(ulimit -n) (hard limit $(ulimit -Hn))" >&2
    exit 1
fi
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
ports=$((port_hi - port_lo + 1))
# idle_conns.py connects from 127.0.0.1 only; `edgeloop load` spreads over
# 127.0.0.x above 20 000 connections.
if ((CONNS > ports)); then
    echo "error: $CONNS connections from one source address need $CONNS ephemeral ports;" \
        "net.ipv4.ip_local_port_range gives $ports" >&2
    exit 1
fi
rm -rf "$BENCH_OUT/idle" "$BENCH_OUT"/*.json "$BENCH_OUT"/*.jsonl

# TIME_WAIT left by an earlier run (the generator closes first) holds
# ports for 60 s: wait for it to drain rather than measure through it.
tw_count() { awk '/^TCP:/ { for (i = 2; i < NF; i++) if ($i == "tw") print $(i + 1) }' /proc/net/sockstat; }
for _ in $(seq 70); do
    (($(tw_count) < 2000)) && break
    ((_ == 1)) && echo "waiting (<= 70 s) for $(tw_count) TIME_WAIT sockets to expire..." >&2
    sleep 1
done

# ---- 1. idle connections
echo "phase 1: $CONNS idle connections..." >&2
server_start edgeloop
if ! timeout -k 5 180 "${PIN_LOAD[@]}" python3 scripts/lib/idle_conns.py \
    "$SERVER_PID" "$SERVER_ADDR" "$CONNS" "$BENCH_OUT/idle" >"$BENCH_OUT/idle.txt" 2>"$BENCH_OUT/idle.txt.err"; then
    echo "warning: the idle phase failed: $(tail -1 "$BENCH_OUT/idle.txt.err")" >&2
fi
kill -0 "$SERVER_PID" 2>/dev/null || echo "warning: the server died in the idle phase" >&2
server_stop

# ---- 2. the same number of connections under open-loop load
echo "phase 2: $CONNS connections at $RATE msg/s for ${DURATION}s (+${WARMUP}s warm-up)..." >&2
server_start edgeloop
sleep 0.5
python3 scripts/lib/scale.py snapshot "$BENCH_OUT/active-before.json" "$SERVER_PID"
"${PIN_LOAD[@]}" python3 scripts/lib/scale.py sample "$SERVER_PID" "$BENCH_OUT/active.jsonl" &
sampler=$!
bench_track "$sampler"
load_rc=0
# connecting (≤ 10 s per connection) + warm-up + window + drain, and slack
limit=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 60 }')
timeout -k 5 "$limit" "${PIN_LOAD[@]}" "$EDGELOOP" load --connect "$SERVER_ADDR" --conns "$CONNS" \
    --rate "$RATE" --send-window "$SEND_WINDOW" --duration "$DURATION" --warmup "$WARMUP" --json \
    >"$BENCH_OUT/load.json" 2>"$BENCH_OUT/load.err" || load_rc=$?
sleep 2 # the server has seen every close
python3 scripts/lib/scale.py snapshot "$BENCH_OUT/active-after.json" "$SERVER_PID"
kill -TERM "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
bench_untrack "$sampler"
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "error: the server died during the load" >&2
    load_rc=99
fi
server_stop

echo
bench_header
echo "- load: \`edgeloop load --conns $CONNS --rate $RATE --send-window $SEND_WINDOW --duration $DURATION --warmup $WARMUP\`" \
    "(64 B raw, fixed arrivals, 1 thread); ip_local_port_range $port_lo-$port_hi; page size $(getconf PAGESIZE) B"
echo
python3 scripts/lib/scale.py report "$BENCH_OUT" "$CONNS" "$RATE" "$load_rc"
