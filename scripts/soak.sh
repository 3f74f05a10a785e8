#!/usr/bin/env bash
# Soak: an echo server and two chat servers on one Redis, under mixed load
# and hostile clients for DURATION seconds, sampled every second.
#
#   scripts/soak.sh              # 10 minutes
#   scripts/soak.sh 1800         # 30 minutes
#   ECHO_RATE=2000 SLOWLORIS=100 scripts/soak.sh 120
#   SERVER_BIN=path/to/edgeloop scripts/soak.sh 120   # another build as the servers
#
# Starts (servers pinned to CPU 0, everything else to CPU 1):
#   echo    `edgeloop echo --framing 4 --max-frame 65536 --stats 10`
#   redis   its own `redis-server` on a free loopback port, persistence off
#   chat1, chat2   `edgeloop chat --redis redis://127.0.0.1:PORT --stats 10`
# samples each one's RSS, descriptors and CPU once a second into
# target/soak/samples.csv (scripts/lib/soak.py), and after a few seconds of
# baseline runs, all at once, for DURATION seconds:
#   - `edgeloop load --framing 4 --rate ECHO_RATE --conns ECHO_CONNS --json`
#     against echo, in consecutive runs of LOAD_RUN seconds (every byte
#     verified; a latency verdict other than `ok` is reported, not fatal);
#   - scripts/lib/hostile.py against echo: slowloris (SLOWLORIS connections
#     dribbling frames), flood (FLOOD connections writing flat out, reading
#     slowly: flow control), storm (STORM_RATE connections a second opened
#     and closed, half with a reset), malformed (MALFORMED_RATE connections a
#     second with oversized headers, zero-length frames, byte-by-byte splits,
#     garbage);
#   - hostile.py against each chat server: slowloris (CHAT_SLOWLORIS lines
#     that never end), garbage (GARBAGE connections of junk lines);
#   - scripts/lib/chat_soak.py: CHAT_ROOMS rooms, CHAT_MEMBERS members of
#     each on each chat server, CHAT_RATE messages a second each, every
#     message checked at every member on both servers (through Redis).
# Then it waits (at most SETTLE seconds) for each server's descriptors to
# come back to their baseline, stops the servers with SIGTERM (each must
# exit 0), draws target/soak/soak.png with tools/soak-plot (RSS and
# descriptors over time), and prints a markdown summary. It FAILs (exit 1)
# if a server died, an echoed byte differed, a chat message was lost or
# garbled, a hostile client saw what the server promises cannot happen, RSS
# grew without bound, or descriptors did not come back: the criteria are in
# scripts/lib/soak.py. Every process it starts is stopped by its EXIT trap.
# Needs redis-server (Debian: redis-server); installs fonts-dejavu-core for
# the plot's text when run as root and the font is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_OUT=target/soak
source scripts/lib/bench.sh

DURATION=${1:-600}
if ! [[ $DURATION =~ ^[0-9]+$ ]] || ((DURATION < 30)); then
    echo "usage: scripts/soak.sh [DURATION_SECONDS >= 30] (default 600)" >&2
    exit 2
fi
SERVER_BIN=${SERVER_BIN:-target/release/edgeloop}
ECHO_RATE=${ECHO_RATE:-5000}
ECHO_CONNS=${ECHO_CONNS:-200}
LOAD_RUN=${LOAD_RUN:-60}
SLOWLORIS=${SLOWLORIS:-200}
FLOOD=${FLOOD:-2}
STORM_RATE=${STORM_RATE:-20}
MALFORMED_RATE=${MALFORMED_RATE:-10}
CHAT_SLOWLORIS=${CHAT_SLOWLORIS:-50}
GARBAGE=${GARBAGE:-5}
CHAT_ROOMS=${CHAT_ROOMS:-2}
CHAT_MEMBERS=${CHAT_MEMBERS:-6}
CHAT_RATE=${CHAT_RATE:-5}
SETTLE=${SETTLE:-30}
MAX_FRAME=65536
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
PLOT_BIN=target/soak-plot/release/soak-plot

command -v redis-server >/dev/null || { echo "error: needs redis-server (Debian: apt-get install redis-server)" >&2; exit 1; }
if [[ ! -f $FONT && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing fonts-dejavu-core for the plot..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends fonts-dejavu-core >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends fonts-dejavu-core >/dev/null; } || true
fi
echo "building edgeloop and tools/soak-plot (release)..." >&2
cargo build --release --quiet
cargo build --release --quiet --manifest-path tools/soak-plot/Cargo.toml --target-dir target/soak-plot
bench_tune

rm -rf "$BENCH_OUT" && mkdir -p "$BENCH_OUT"
T0=$EPOCHREALTIME
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
mark() { echo "$1 ${2:-$(elapsed)}" >>"$BENCH_OUT/phases"; }
mark duration "$DURATION"

# ---- the servers
declare -A PID ADDR
# start NAME CMD...: start a server pinned to CPU 0, wait for its
# "listening on" line (<= 20 s).
start() {
    local name=$1
    shift
    "${PIN_SERVER[@]}" "$@" >"$BENCH_OUT/$name.out" 2>"$BENCH_OUT/$name.err" &
    PID[$name]=$!
    bench_track "${PID[$name]}"
    for _ in $(seq 200); do
        ADDR[$name]=$(sed -n 's/^listening on \(.*\)$/\1/p' "$BENCH_OUT/$name.out" | head -1)
        [[ -n ${ADDR[$name]} ]] && return 0
        kill -0 "${PID[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: $name did not start:" >&2
    tail -5 "$BENCH_OUT/$name.err" >&2
    exit 1
}

rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${PIN_LOAD[@]}" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
    >"$BENCH_OUT/redis.log" 2>&1 &
PID[redis]=$!
bench_track "${PID[redis]}"
for _ in $(seq 100); do
    redis-cli -p "$rport" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$rport" ping >/dev/null || { echo "error: redis-server did not start" >&2; exit 1; }

start echo "$SERVER_BIN" echo --listen 127.0.0.1:0 --framing 4 --max-frame "$MAX_FRAME" --stats 10
start chat1 "$SERVER_BIN" chat --listen 127.0.0.1:0 --redis "redis://127.0.0.1:$rport" --stats 10
start chat2 "$SERVER_BIN" chat --listen 127.0.0.1:0 --redis "redis://127.0.0.1:$rport" --stats 10

"${PIN_LOAD[@]}" python3 scripts/lib/soak.py sample "$BENCH_OUT/samples.csv" "$T0" \
    echo="${PID[echo]}" chat1="${PID[chat1]}" chat2="${PID[chat2]}" redis="${PID[redis]}" &
sampler=$!
bench_track "$sampler"
sleep 4 # the baseline: a few samples with no client
mark redis_keys_start "$(redis-cli -p "$rport" dbsize)"

# ---- the clients, all at once for DURATION seconds
echo "soaking for ${DURATION}s: echo ${ADDR[echo]}, chat ${ADDR[chat1]} and ${ADDR[chat2]}, redis 127.0.0.1:$rport..." >&2
mark clients_start
declare -A CLIENTS # pid -> tag
# client TAG CMD...: run a client pinned to CPU 1 in the background, bounded
# in time; its exit status goes to $BENCH_OUT/TAG.rc when it ends. `timeout`
# is the tracked process: the EXIT trap's SIGTERM reaches the client
# through it.
client() {
    local tag=$1
    shift
    timeout -k 5 $((DURATION + 120)) "${PIN_LOAD[@]}" "$@" >"$BENCH_OUT/$tag.out" 2>"$BENCH_OUT/$tag.err" &
    CLIENTS[$!]=$tag
    bench_track "$!"
}

# The echo load: consecutive runs until DURATION is covered (a subshell
# that passes a SIGTERM on to the run in progress).
echo_load() {
    local end=$(($(date +%s) + DURATION)) k=0 left run rc child=
    trap 'kill -TERM $child 2>/dev/null; exit 143' TERM
    while :; do
        left=$((end - $(date +%s) - 3)) # connecting, warm-up, closing
        ((left >= 5)) || break
        run=$((left < LOAD_RUN ? left : LOAD_RUN))
        k=$((k + 1))
        timeout -k 5 $((run + 60)) "${PIN_LOAD[@]}" "$EDGELOOP" load --connect "${ADDR[echo]}" --framing 4 \
            --size 64 --rate "$ECHO_RATE" --conns "$ECHO_CONNS" --duration "$run" --warmup 1 --json \
            >"$BENCH_OUT/load-$k.json" 2>"$BENCH_OUT/load-$k.err" &
        child=$!
        rc=0
        wait "$child" || rc=$?
        echo "$rc" >"$BENCH_OUT/load-$k.rc"
    done
}
echo_load &
CLIENTS[$!]=echo-load
bench_track "$!"

h=(python3 scripts/lib/hostile.py --duration "$DURATION")
client hostile-echo-slowloris "${h[@]}" --connect "${ADDR[echo]}" --max-frame "$MAX_FRAME" \
    --mode slowloris --conns "$SLOWLORIS" --json "$BENCH_OUT/hostile-echo-slowloris.json"
client hostile-echo-flood "${h[@]}" --connect "${ADDR[echo]}" --max-frame "$MAX_FRAME" \
    --mode flood --conns "$FLOOD" --json "$BENCH_OUT/hostile-echo-flood.json"
client hostile-echo-storm "${h[@]}" --connect "${ADDR[echo]}" --max-frame "$MAX_FRAME" \
    --mode storm --rate "$STORM_RATE" --conns "$STORM_RATE" --json "$BENCH_OUT/hostile-echo-storm.json"
client hostile-echo-malformed "${h[@]}" --connect "${ADDR[echo]}" --max-frame "$MAX_FRAME" \
    --mode malformed --rate "$MALFORMED_RATE" --conns 20 --json "$BENCH_OUT/hostile-echo-malformed.json"
for c in chat1 chat2; do
    client "hostile-$c-slowloris" "${h[@]}" --connect "${ADDR[$c]}" --server chat \
        --mode slowloris --conns "$CHAT_SLOWLORIS" --json "$BENCH_OUT/hostile-$c-slowloris.json"
    client "hostile-$c-garbage" "${h[@]}" --connect "${ADDR[$c]}" --server chat \
        --mode garbage --conns "$GARBAGE" --json "$BENCH_OUT/hostile-$c-garbage.json"
done
client chat python3 scripts/lib/chat_soak.py --servers "${ADDR[chat1]},${ADDR[chat2]}" \
    --rooms "$CHAT_ROOMS" --members "$CHAT_MEMBERS" --rate "$CHAT_RATE" --duration "$DURATION" \
    --json "$BENCH_OUT/chat.json"

for p in "${!CLIENTS[@]}"; do
    rc=0
    wait "$p" || rc=$?
    [[ ${CLIENTS[$p]} == echo-load ]] || echo "$rc" >"$BENCH_OUT/${CLIENTS[$p]}.rc"
    bench_untrack "$p"
done
mark clients_stop
echo "clients done; waiting (<= ${SETTLE}s) for the servers' descriptors to come back..." >&2

# ---- after: descriptors back, servers stopped, the plot and the verdict
"${PIN_LOAD[@]}" python3 scripts/lib/soak.py settle "$BENCH_OUT" "$SETTLE" \
    echo="${PID[echo]}" chat1="${PID[chat1]}" chat2="${PID[chat2]}"
sleep 1
mark redis_keys_end "$(redis-cli -p "$rport" dbsize 2>/dev/null || echo nan)"
kill -TERM "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
bench_untrack "$sampler"
mark servers_stop
for name in echo chat1 chat2; do
    p=${PID[$name]}
    kill -TERM "$p" 2>/dev/null || true
done
for name in echo chat1 chat2; do
    p=${PID[$name]}
    # The drain takes at most 5 s; then SIGKILL (and exit 137 is reported).
    for _ in $(seq 80); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    rc=0
    wait "$p" 2>/dev/null || rc=$?
    echo "$rc" >"$BENCH_OUT/exit-$name"
    bench_untrack "$p"
done
redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || kill -TERM "${PID[redis]}" 2>/dev/null || true
wait "${PID[redis]}" 2>/dev/null || true
bench_untrack "${PID[redis]}"

if ! "$PLOT_BIN" "$BENCH_OUT/samples.csv" "$BENCH_OUT/soak.png" \
    --title "edgeloop soak, ${DURATION} s: echo ${ECHO_RATE} msg/s + hostile clients; two chat servers on Redis" >&2; then
    echo "warning: the plot failed (see above)" >&2
fi

echo
bench_header
echo "- servers: \`$SERVER_BIN\` (echo --framing 4 --max-frame $MAX_FRAME; chat x2 --redis); redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
echo "- clients: echo load $ECHO_RATE msg/s over $ECHO_CONNS conns (runs of ${LOAD_RUN}s); slowloris $SLOWLORIS," \
    "flood $FLOOD, storm $STORM_RATE/s, malformed $MALFORMED_RATE/s on echo; slowloris $CHAT_SLOWLORIS and garbage $GARBAGE" \
    "on each chat server; chat $CHAT_ROOMS rooms x $CHAT_MEMBERS members per server x $CHAT_RATE msg/s"
echo "- files: $BENCH_OUT/ (samples.csv, soak.png, each client's output)"
echo
python3 scripts/lib/soak.py report "$BENCH_OUT"
