#!/usr/bin/env bash
# Chat fan-out benchmark: one room of M members, K of them sending.
#
#   scripts/chat-fanout.sh                 # M = 10 100 1000, K = 4, 5 s each
#   REDIS=1 scripts/chat-fanout.sh         # each M on one server, on one server
#                                          # through Redis, then on two servers
#                                          # sharing one Redis
#   PEERS=1 REPEAT=2 scripts/chat-fanout.sh  # beside the chat peers of
#                                          # scripts/peers/ (go-chat, tokio-chat)
#   MEMBERS="10 1000" SENDERS=2 DURATION=3 TEXT_BYTES=100 REPEAT=3 WINDOW=4096 \
#       scripts/chat-fanout.sh
#   EDGELOOP_BEFORE=/tmp/edgeloop-old REDIS=1 scripts/chat-fanout.sh
#                                          # another edgeloop build beside this
#                                          # one, as server "before" (a
#                                          # before/after from one run)
#
# Builds the release binary and the C driver (scripts/chat/fanout.c, see
# its header for the method), then for each M starts a fresh
# `edgeloop chat --stats 1 --chat-rate 0` (flood control off: this
# measures the server flat out, senders unthrottled), runs the driver (1 s warm-up, DURATION s
# measured) and prints one row:
#
#   server         edgeloop, or a peer (PEERS=1)
#   mode           single: one server; redis1: one server with `--redis`
#                  (every line makes the round trip through Redis, one
#                  server fans out); redis: two servers on one Redis, the
#                  members split between them, the senders too — each
#                  message crosses Redis once and every server fans it out
#                  to its own members
#   deliveries/s   message lines received by all members per second
#   msgs/s         messages sent per second (deliveries / M)
#   srv CPU        the server's CPU use during the measurement (100% = one
#                  core; both servers together in redis mode)
#   ns/delivery    server CPU time (utime+stime, /proc/PID/stat) per delivery
#                  (both servers; Redis's own CPU is the next column)
#   M deliv/CPU-s  the same upside down: millions of deliveries per second of
#                  server CPU (the figure to compare servers by)
#   redis CPU      redis-server's CPU use (redis1 and redis modes)
#   deliv/sendmsg  deliveries per sendmsg, from the servers' --stats counters:
#                  how many queued messages one vectored write carried
#   own p50/p99    how long a sender waits to see its own line come back,
#                  in microseconds (queueing under this load included)
#   drv CPU        the driver's CPU use: near 100% means the driver, not the
#                  server, was the limit (under load it counts lines without
#                  reading them, see its header; FANOUT_READ_ALL=1 reads them)
#
# PEERS=1 also runs, for every M, each chat peer that scripts/peers/build.sh
# built (bin/go-chat, bin/tokio-chat: one room, the subset of the chat the
# driver speaks, see their headers), the same way: started fresh, pinned to
# the server's CPU (so Go runs GOMAXPROCS=1), measured by the same driver.
# SERVERS="edgeloop go-chat" picks a subset. Runs alternate (for each
# repetition, for each M, every server in turn) so that a noisy machine hits
# all alike; the peers have no --stats, so their deliv/sendmsg is "-". After
# the rows, with PEERS=1 or REPEAT > 1, a summary: per M and server the range
# (min-max) over the repetitions, and with PEERS=1 edgeloop's median
# deliveries per CPU-second divided by the best peer's.
#
# The server is pinned to CPU 0 and the driver to CPU 1 when taskset exists
# and there are two CPUs; in redis mode both servers share CPU 0 (so the
# servers have one core between them, as the single server has) and Redis
# runs beside the driver on CPU 1. Each redis-mode row starts a fresh
# `redis-server` (persistence off) on a free port. Note that on loopback
# the kernel's TCP receive work for the driver's sockets mostly runs on the
# sending (server's) CPU and counts as the server's system time. Run as
# root, it raises net.core.netdev_max_backlog (see DESIGN-NOTES) and prints
# the values in force. Every run is bounded by `timeout`; a row takes
# 10-20 s (the own-line phase takes at least 1 000 lines: about 10 s at
# M = 1 000), so about a minute per REPEAT, three with PEERS=1 or REDIS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBERS=${MEMBERS:-"10 100 1000"}
SENDERS=${SENDERS:-4}
DURATION=${DURATION:-5}
TEXT_BYTES=${TEXT_BYTES:-32}
# Messages in flight (sent, not yet received by every member): enough to
# keep the server busy, capped at 4 million deliveries so that M = 1000
# does not park hundreds of megabytes in socket buffers.
WINDOW=${WINDOW:-}
REPEAT=${REPEAT:-${REPS:-1}} # rows per M (alternating over M), to see the spread
PEERS=${PEERS:-0}
MODES=single
if [[ ${REDIS:-0} == 1 ]]; then
    MODES="single redis1 redis"
    command -v redis-server >/dev/null || { echo "REDIS=1 needs redis-server" >&2; exit 1; }
fi

out=target/chat-fanout
mkdir -p "$out"
echo "building..." >&2
cargo build --release --quiet
${CC:-cc} -O3 -Wall -Wextra -o "$out/fanout" scripts/chat/fanout.c
bin=target/release/edgeloop
peers_bin=scripts/peers/bin
if [[ $PEERS == 1 ]]; then
    # build.sh exits 1 if one peer failed to build; the others are still usable.
    scripts/peers/build.sh >&2 || echo "warning: scripts/peers/build.sh reported a failure" >&2
    if [[ -z ${SERVERS:-} ]]; then
        SERVERS=edgeloop
        for p in go-chat tokio-chat erlang-chat; do
            if [[ -x $peers_bin/$p ]]; then SERVERS+=" $p"; fi
        done
    fi
fi
SERVERS=${SERVERS:-edgeloop}
EDGELOOP_BEFORE=${EDGELOOP_BEFORE:-}
if [[ -n $EDGELOOP_BEFORE && " $SERVERS " != *" before "* ]]; then
    SERVERS+=" before"
fi
# edgeloop and "before" are edgeloop builds: they have --stats and a Redis mode.
is_edgeloop() { [[ $1 == edgeloop || $1 == before ]]; }
for srv in $SERVERS; do
    [[ $srv == edgeloop || -x $peers_bin/$srv || ($srv == before && -x $EDGELOOP_BEFORE) ]] ||
        { echo "no server $srv (scripts/peers/build.sh, or EDGELOOP_BEFORE)" >&2; exit 1; }
done

pin_server=() pin_driver=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    pin_server=(taskset -c 0) pin_driver=(taskset -c 1)
fi
if [[ $(id -u) == 0 ]]; then
    backlog=/proc/sys/net/core/netdev_max_backlog
    if [[ -w $backlog && $(cat $backlog) -lt 10000 ]]; then
        echo 10000 >$backlog || true
    fi
fi
echo "# $(uname -sr), $(nproc) CPUs, pinning: ${pin_server[*]:-none} / ${pin_driver[*]:-none}," \
    "netdev_max_backlog=$(cat /proc/sys/net/core/netdev_max_backlog)," \
    "somaxconn=$(cat /proc/sys/net/core/somaxconn)"
echo "# K=$SENDERS senders, ${TEXT_BYTES}-byte texts, window ${WINDOW:-min(16384, 4000000/M)} messages," \
    "${DURATION}s measured per row; servers: $SERVERS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-11s %-6s %6s %3s %14s %10s %8s %12s %13s %9s %14s %9s %9s %8s %7s\n' \
    server mode M K deliveries/s msgs/s "srv CPU" ns/delivery "M deliv/CPU-s" "redis CPU" deliv/sendmsg \
    "own p50" "own p99" "drv CPU" closed
: >"$out/rows.tsv"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# The value of KEY=... in a line of key=value pairs.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

# Start server number $1, named $2 (edgeloop: `edgeloop chat ARGS...`, with
# time-stamped --stats lines in $out/server$1.err; a peer: bin/NAME IP:PORT);
# sets server_pid and port.
start_server() {
    local n=$1 name=$2
    shift 2
    # The redirections below happen in the child, later: a stale file would
    # give the previous run's port.
    rm -f "$out/stderr$n.fifo" "$out/server$n.out"
    mkfifo "$out/stderr$n.fifo"
    # Stamp each --stats line with the time it arrived, to pick the ones
    # printed during the measurement.
    while IFS= read -r line; do echo "$EPOCHREALTIME $line"; done <"$out/stderr$n.fifo" >"$out/server$n.err" &
    pids+=($!)
    if is_edgeloop "$name"; then
        local exe=$bin
        [[ $name == before ]] && exe=$EDGELOOP_BEFORE
        "${pin_server[@]}" "$exe" chat --listen 127.0.0.1:0 --stats 1 --chat-rate 0 "$@" \
            >"$out/server$n.out" 2>"$out/stderr$n.fifo" &
    else
        "${pin_server[@]}" "$peers_bin/$name" 127.0.0.1:0 >"$out/server$n.out" 2>"$out/stderr$n.fifo" &
    fi
    server_pid=$!
    pids+=("$server_pid")
    port=
    for _ in $(seq 200); do
        port=$(sed -n 's/^listening on .*://p' "$out/server$n.out" 2>/dev/null)
        [[ -n $port ]] && break
        sleep 0.05
    done
    [[ -n $port ]] || { echo "server $n did not start" >&2; cat "$out/server$n.err" >&2; exit 1; }
}

# Stop every process of the row, gently first.
stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}

status=0
runs=()
for _ in $(seq "$REPEAT"); do runs+=($MEMBERS); done
# (server, mode) pairs, run in turn for each M; the peers have no Redis mode.
combos=()
for srv in $SERVERS; do
    for mode in $MODES; do
        [[ $mode == redis* ]] && ! is_edgeloop "$srv" || combos+=("$srv:$mode")
    done
done
for m in "${runs[@]}"; do
    for combo in "${combos[@]}"; do
        srv=${combo%:*} mode=${combo#*:}
        redis_pid=
        rm -f "$out"/server[12].err
        if [[ $mode == redis* ]]; then
            rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
            "${pin_driver[@]}" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
                >"$out/redis.log" 2>&1 &
            redis_pid=$!
            pids+=("$redis_pid")
            for _ in $(seq 100); do
                redis-cli -p "$rport" ping >/dev/null 2>&1 && break
                sleep 0.05
            done
            start_server 1 "$srv" --redis "redis://127.0.0.1:$rport"
            ports=$port spids=$server_pid
            if [[ $mode == redis ]]; then
                start_server 2 "$srv" --redis "redis://127.0.0.1:$rport"
                ports+=",$port" spids+=",$server_pid"
            fi
        else
            start_server 1 "$srv"
            ports=$port spids=$server_pid
        fi

        if ! FANOUT_OTHER_PID=$redis_pid timeout 90 "${pin_driver[@]}" "$out/fanout" 127.0.0.1 "$ports" "$m" \
            "$SENDERS" "$DURATION" "$spids" "$TEXT_BYTES" \
            "${WINDOW:-$((m * 16384 > 4000000 ? 4000000 / m : 16384))}" >"$out/driver.out"; then
            status=1
        fi
        sleep 1.2 # one more --stats line after the measurement
        stop_all

        r=$(cat "$out/driver.out")
        if [[ -z $r ]]; then
            printf '%-11s %-6s %6s %3s  driver failed (see above)\n' "$srv" "$mode" "$m" "$SENDERS"
            continue
        fi
        from=$(field measure_wall_from "$r") to=$(field measure_wall_to "$r")
        # The first and last --stats lines of each server inside the
        # measurement; (nearly) every byte the servers wrote between them
        # is a message line (in redis mode a few are commands to Redis).
        per_write=- dbytes=0 dwrites=0
        for f in "$out"/server[12].err; do
            [[ -e $f ]] || continue
            [[ $mode != redis && $f == */server2.err ]] && continue
            stats=$(awk -v a="$from" -v b="$to" '$1 > a && $1 < b && $2 == "stats"' "$f")
            if [[ $(wc -l <<<"$stats") -ge 2 ]]; then
                first=$(head -1 <<<"$stats") last=$(tail -1 <<<"$stats")
                dbytes=$((dbytes + $(field bytes_out "$last") - $(field bytes_out "$first")))
                dwrites=$((dwrites + $(field writes "$last") - $(field writes "$first")))
            fi
        done
        ((dwrites > 0)) && per_write=$(awk -v b="$dbytes" -v w="$dwrites" -v l="$(field wire_bytes "$r")" \
            'BEGIN { printf "%.1f", b / l / w }')
        secs=$(field seconds "$r")
        redis_cpu=-
        [[ $mode == redis* ]] && redis_cpu=$(awk -v c="$(field other_cpu_s "$r")" -v s="$secs" \
            'BEGIN { printf "%.0f%%", 100 * c / s }')
        ns=$(field server_ns_per_delivery "$r")
        per_cpu_s=$(awk -v n="$ns" 'BEGIN { if (n > 0) printf "%.1f", 1000 / n; else print "-" }')
        printf '%-11s %-6s %6s %3s %14s %10.0f %7.0f%% %12s %13s %9s %14s %9s %9s %7s%% %7s\n' \
            "$srv" "$mode" "$m" "$SENDERS" "$(field deliveries_per_s "$r")" \
            "$(awk -v d="$(field deliveries_per_s "$r")" -v m="$m" 'BEGIN { print d / m }')" \
            "$(awk -v c="$(field server_cpu_s "$r")" -v s="$secs" 'BEGIN { print 100 * c / s }')" \
            "$ns" "$per_cpu_s" "$redis_cpu" "$per_write" \
            "$(field own_p50_us "$r")" "$(field own_p99_us "$r")" "$(field driver_cpu_pct "$r")" \
            "$(field closed "$r")"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$srv" "$mode" "$m" "$(field deliveries_per_s "$r")" \
            "$per_cpu_s" "$(field own_p99_us "$r")" >>"$out/rows.tsv"
    done
done

# Per M and server: the range over the repetitions; with peers, edgeloop's
# median deliveries per CPU-second over the best peer's (EDGELOOP_BEFORE's
# build is not a peer: edgeloop's median over its own is a line apart).
if [[ $PEERS == 1 || $REPEAT -gt 1 ]]; then
    echo
    echo "# summary: min-max over $REPEAT repetition(s); ratio = edgeloop median M deliv/CPU-s / best peer median"
    awk -F'\t' -v peers="$PEERS" -v order="$SERVERS" '
        function range(a, n,    i, lo, hi) {
            lo = hi = a[1]
            for (i = 2; i <= n; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
            return lo == hi ? lo : lo "-" hi
        }
        function median(a, n,    i, j, t, b) {
            for (i = 1; i <= n; i++) b[i] = a[i]
            for (i = 2; i <= n; i++) for (j = i; j > 1 && b[j - 1] > b[j]; j--) { t = b[j]; b[j] = b[j - 1]; b[j - 1] = t }
            return n % 2 ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2
        }
        $5 != "-" {
            k = $3 SUBSEP $1 SUBSEP $2
            if (!(k in n)) { keys[++nk] = k; if (!($3 in seen_m)) { seen_m[$3] = 1; ms[++nm] = $3 } }
            i = ++n[k]; d[k, i] = $4 / 1e6; c[k, i] = $5; p[k, i] = $6
        }
        END {
            printf "%-11s %-6s %6s %18s %16s %12s\n", "server", "mode", "M", "M deliveries/s", "M deliv/CPU-s", "own p99 us"
            ns = split(order, srv, " ")
            for (mi = 1; mi <= nm; mi++) {
                m = ms[mi]; best = 0; ours = 0; before = 0
                split("single redis1 redis", modes, " ")
                for (si = 1; si <= ns; si++) for (mode_i = 1; mode_i <= 3; mode_i++) {
                    mode = modes[mode_i]
                    k = m SUBSEP srv[si] SUBSEP mode
                    if (!(k in n)) continue
                    split("", a1); split("", a2); split("", a3)
                    for (i = 1; i <= n[k]; i++) { a1[i] = sprintf("%.1f", d[k, i]) + 0; a2[i] = c[k, i] + 0; a3[i] = p[k, i] + 0 }
                    printf "%-11s %-6s %6s %18s %16s %12s\n", srv[si], mode, m, range(a1, n[k]), range(a2, n[k]), range(a3, n[k])
                    med = median(a2, n[k])
                    if (mode != "single") continue
                    if (srv[si] == "edgeloop") ours = med
                    else if (srv[si] == "before") before = med # another build, not a peer
                    else if (med > best) best = med
                }
                if (peers == 1 && best > 0 && ours > 0) printf "%-11s %-6s %6s %18s %16.2f\n", "ratio", "", m, "", ours / best
                if (before > 0 && ours > 0) printf "%-11s %-6s %6s %18s %16.2f\n", "÷ before", "", m, "", ours / before
            }
        }' "$out/rows.tsv"
fi
exit $status
