#!/usr/bin/env bash
# Chat fan-out benchmark: one room of M members, K of them sending.
#
#   scripts/chat-fanout.sh                 # M = 10 100 1000, K = 4, 5 s each
#   MEMBERS="10 1000" SENDERS=2 DURATION=3 TEXT_BYTES=100 REPEAT=3 WINDOW=4096 \
#       scripts/chat-fanout.sh
#
# Builds the release binary and the C driver (scripts/chat/fanout.c, see
# its header for the method), then for each M starts a fresh
# `edgeloop chat --stats 1 --chat-rate 0` (flood control off: this
# measures the server flat out, senders unthrottled), runs the driver (1 s warm-up, DURATION s
# measured) and prints one row:
#
#   deliveries/s   message lines received by all members per second
#   msgs/s         messages sent per second (deliveries / M)
#   srv CPU        the server's CPU use during the measurement (100% = one core)
#   ns/delivery    server CPU time (utime+stime, /proc/PID/stat) per delivery
#   deliv/sendmsg  deliveries per sendmsg, from the server's --stats counters:
#                  how many queued messages one vectored write carried
#   drv CPU        the driver's CPU use: near 100% means the driver, not the
#                  server, was the limit
#
# The server is pinned to CPU 0 and the driver to CPU 1 when taskset exists
# and there are two CPUs. Note that on loopback the kernel's TCP receive
# work for the driver's sockets mostly runs on the sending (server's) CPU
# and counts as the server's system time. Run as root, it raises
# net.core.netdev_max_backlog (see DESIGN-NOTES) and prints the values in
# force. Every run is bounded by `timeout`; the whole script takes well
# under two minutes.
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
REPEAT=${REPEAT:-1} # rows per M (alternating over M), to see the spread

out=target/chat-fanout
mkdir -p "$out"
echo "building..." >&2
cargo build --release --quiet
${CC:-cc} -O2 -Wall -Wextra -o "$out/fanout" scripts/chat/fanout.c
bin=target/release/edgeloop

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
    "${DURATION}s measured per row"
printf '%6s %3s %14s %10s %8s %12s %14s %8s %7s\n' \
    M K deliveries/s msgs/s "srv CPU" ns/delivery deliv/sendmsg "drv CPU" closed

server_pid=
stamper_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null || true
    [[ -n $stamper_pid ]] && kill "$stamper_pid" 2>/dev/null || true
}
trap cleanup EXIT

# The value of KEY=... in a line of key=value pairs.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

status=0
runs=()
for _ in $(seq "$REPEAT"); do runs+=($MEMBERS); done
for m in "${runs[@]}"; do
    # Stamp each --stats line with the time it arrived, to pick the ones
    # printed during the measurement.
    rm -f "$out/stderr.fifo"
    mkfifo "$out/stderr.fifo"
    while IFS= read -r line; do echo "$EPOCHREALTIME $line"; done <"$out/stderr.fifo" >"$out/server.err" &
    stamper_pid=$!
    "${pin_server[@]}" "$bin" chat --listen 127.0.0.1:0 --stats 1 --chat-rate 0 >"$out/server.out" 2>"$out/stderr.fifo" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q '^listening on' "$out/server.out" 2>/dev/null && break
        sleep 0.05
    done
    port=$(sed -n 's/^listening on .*://p' "$out/server.out")
    [[ -n $port ]] || { echo "server did not start" >&2; exit 1; }

    if ! timeout 90 "${pin_driver[@]}" "$out/fanout" 127.0.0.1 "$port" "$m" "$SENDERS" "$DURATION" \
        "$server_pid" "$TEXT_BYTES" "${WINDOW:-$((m * 16384 > 4000000 ? 4000000 / m : 16384))}" \
        >"$out/driver.out"; then
        status=1
    fi
    sleep 1.2 # one more --stats line after the measurement
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    wait "$stamper_pid" 2>/dev/null || true
    server_pid= stamper_pid=

    r=$(cat "$out/driver.out")
    if [[ -z $r ]]; then
        printf '%6s %3s  driver failed (see above)\n' "$m" "$SENDERS"
        continue
    fi
    from=$(field measure_wall_from "$r") to=$(field measure_wall_to "$r")
    # The first and last --stats lines inside the measurement; every byte
    # the server wrote between them is a message line of a fixed size.
    stats=$(awk -v a="$from" -v b="$to" '$1 > a && $1 < b && $2 == "stats"' "$out/server.err")
    per_write=-
    if [[ $(wc -l <<<"$stats") -ge 2 ]]; then
        first=$(head -1 <<<"$stats") last=$(tail -1 <<<"$stats")
        wire=$(($(field line_bytes "$r") + ${#SENDERS} + 7)) # "guestN: " + text + "\n"
        dbytes=$(($(field bytes_out "$last") - $(field bytes_out "$first")))
        dwrites=$(($(field writes "$last") - $(field writes "$first")))
        ((dwrites > 0)) && per_write=$(awk -v b="$dbytes" -v w="$dwrites" -v l="$wire" 'BEGIN { printf "%.1f", b / l / w }')
    fi
    secs=$(field seconds "$r")
    printf '%6s %3s %14s %10.0f %7.0f%% %12s %14s %7s%% %7s\n' \
        "$m" "$SENDERS" "$(field deliveries_per_s "$r")" \
        "$(awk -v d="$(field deliveries_per_s "$r")" -v m="$m" 'BEGIN { print d / m }')" \
        "$(awk -v c="$(field server_cpu_s "$r")" -v s="$secs" 'BEGIN { print 100 * c / s }')" \
        "$(field server_ns_per_delivery "$r")" "$per_write" "$(field driver_cpu_pct "$r")" "$(field closed "$r")"
done
exit $status
