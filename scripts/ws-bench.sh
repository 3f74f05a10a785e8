#!/usr/bin/env bash
# WebSocket echo under `tcpkali --websocket`: edgeloop's `echo --framing ws`
# beside peer WebSocket echoes written as their communities write them, in
# one run, on the same CPUs, with the same load.
#
#   TCPKALI=/path/to/tcpkali scripts/ws-bench.sh
#   TCPKALI=... REPS=1 DURATION=5 SIZES=64 scripts/ws-bench.sh     # quick
#
# Environment:
#   TCPKALI   path of a tcpkali binary (default scripts/peers/bin/tcpkali,
#             which `TCPKALI=1 scripts/peers/build.sh` builds)
#   CONNS     connections (default 50)
#   SIZES     message sizes in bytes (default "64 16384")
#   DURATION  seconds of each tcpkali run (default 10)
#   REPS      repetitions; the table gives medians (default 3)
#   SERVERS   subset of: edgeloop tungstenite-echo gorilla-echo (default:
#             edgeloop and every peer scripts/peers/build.sh built)
#
# Peers (scripts/peers/, built by scripts/peers/build.sh):
#   tungstenite-echo  tokio-tungstenite on tokio's current-thread runtime,
#                     after the crate's own echo example (read half forwarded
#                     to the write half)
#   gorilla-echo      Go, gorilla/websocket's echo example (goroutine per
#                     connection, ReadMessage/WriteMessage), from Debian's
#                     golang-github-gorilla-websocket-dev
#
# Method:
#   - Every server is started fresh for every run, pinned to CPU 0
#     (`taskset -c 0`; Go then runs one P); tcpkali runs on CPU 1 with one
#     worker (`-w 1`). Runs alternate (A B C A B C ...), so drifts of a
#     shared machine hit every server alike.
#   - tcpkali floods: no --message-rate, each connection writes the message
#     over and over as fast as the server takes it (`-m`, wrapped in one
#     WebSocket frame each), for DURATION seconds (`-T`), and reads
#     everything that comes back.
#   - msg/s: the bytes tcpkali received (its "Total data received") ÷ the
#     size of one server frame (payload + 2, 4 or 10 header bytes) ÷
#     DURATION. tcpkali connects at its default 100 connections a second,
#     so the 0.5 s ramp and the handshakes are inside the window, for every
#     server alike (with a higher --connect-rate, the tcpkali at hand opened
#     more connections than -c asked for: 98 or 368 instead of 50).
#   - server CPU: utime + stime of the server process (all threads) from
#     /proc/PID/stat across the run, ÷ the messages echoed = CPU per
#     message; also as a share of one core.
#
# Output: a markdown table on stdout (also target/bench/ws-bench.md); every
# run in target/bench/ws-bench-runs.tsv; tcpkali's output in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

TCPKALI=${TCPKALI:-scripts/peers/bin/tcpkali}
[[ -x $TCPKALI ]] || { echo "no tcpkali at $TCPKALI: TCPKALI=1 scripts/peers/build.sh builds one" >&2; exit 1; }
CONNS=${CONNS:-50}
SIZES=${SIZES:-"64 16384"}
DURATION=${DURATION:-10}
REPS=${REPS:-3}
OUT=target/bench
mkdir -p "$OUT"
TICK=$(getconf CLK_TCK)

if [[ -z ${SERVERS:-} ]]; then
    SERVERS=edgeloop
    for peer in tungstenite-echo gorilla-echo; do
        [[ -x scripts/peers/bin/$peer ]] && SERVERS+=" $peer"
    done
fi
[[ -x target/release/edgeloop ]] || cargo build --release --quiet

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start SERVER: runs it pinned on CPU 0 on a free port; sets PID and ADDR.
start() {
    local log="$OUT/ws-$1.log"
    case $1 in
        edgeloop) taskset -c 0 target/release/edgeloop echo --framing ws --listen 127.0.0.1:0 >"$log" 2>&1 & ;;
        *) taskset -c 0 "scripts/peers/bin/$1" 127.0.0.1:0 >"$log" 2>&1 & ;;
    esac
    PID=$!
    pids+=("$PID")
    for _ in $(seq 100); do
        ADDR=$(sed -n 's/^listening on //p' "$log" | head -1)
        [[ -n $ADDR ]] && return 0
        sleep 0.05
    done
    echo "$1 did not start: $(cat "$log")" >&2
    exit 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

frame_size() {
    local n=$1
    if ((n < 126)); then echo $((n + 2)); elif ((n <= 65535)); then echo $((n + 4)); else echo $((n + 10)); fi
}

runs="$OUT/ws-bench-runs.tsv"
printf 'rep\tsize\tserver\tmsgs_per_s\tcpu_share\tns_per_msg\n' >"$runs"
for rep in $(seq "$REPS"); do
    for size in $SIZES; do
        msg=$(head -c "$size" /dev/zero | tr '\0' 'x')
        for server in $SERVERS; do
            start "$server"
            before=$(cpu_ticks "$PID")
            report="$OUT/ws-tcpkali-$server-$size-$rep.txt"
            timeout $((DURATION + 30)) taskset -c 1 "$TCPKALI" --websocket -w 1 -c "$CONNS" \
                -m "$msg" -T "${DURATION}s" "$ADDR" >"$report" 2>&1 || true
            after=$(cpu_ticks "$PID")
            kill "$PID" 2>/dev/null || true
            wait "$PID" 2>/dev/null || true
            bytes=$(sed -n 's/^Total data received:.*(\([0-9]*\) bytes).*/\1/p' "$report" | head -1)
            if [[ -z $bytes ]]; then
                echo "tcpkali gave no total for $server, $size B: see $report" >&2
                bytes=0
            fi
            awk -v b="$bytes" -v f="$(frame_size "$size")" -v d="$DURATION" -v t=$((after - before)) -v hz="$TICK" \
                -v rep="$rep" -v size="$size" -v s="$server" 'BEGIN {
                    msgs = b / f; rate = msgs / d; cpu = t / hz
                    printf "%s\t%s\t%s\t%.0f\t%.3f\t%.0f\n", rep, size, s, rate, cpu / d, msgs ? cpu * 1e9 / msgs : 0
                }' >>"$runs"
            tail -1 "$runs" >&2
        done
    done
done

# Medians per (size, server), in the order run.
{
    echo "| message | server | msg/s (median of $REPS) | server CPU (share of a core) | server CPU per message |"
    echo "|---|---|---|---|---|"
    awk -F'\t' 'NR > 1 {
            key = $2 "\t" $3
            if (!(key in n)) order[++k] = key
            n[key]++; rate[key, n[key]] = $4; share[key, n[key]] = $5; ns[key, n[key]] = $6
        }
        function median(a, key, m,   i, j, t, v) {
            for (i = 1; i <= m; i++) v[i] = a[key, i]
            for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
        }
        END {
            for (i = 1; i <= k; i++) {
                key = order[i]; split(key, p, "\t"); m = n[key]
                printf "| %s B | %s | %\047.0f | %.2f | %.0f ns |\n", p[1], p[2], median(rate, key, m), median(share, key, m), median(ns, key, m)
            }
        }' "$runs"
} | tee "$OUT/ws-bench.md"
