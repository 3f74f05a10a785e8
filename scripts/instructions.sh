#!/usr/bin/env bash
# User-space instructions per message, counted by callgrind: the one
# figure of the hot path that this shared, noisy machine cannot blur.
#
#   scripts/instructions.sh                      # this build
#   scripts/instructions.sh /tmp/edgeloop-old    # another build beside it
#   RUNS=3 DURATION=3 scripts/instructions.sh target/release/edgeloop /tmp/edgeloop-old
#
# For each binary (built from this tree when none is given) and RUNS times
# each, alternated:
#   echo   `edgeloop echo` under `valgrind --tool=callgrind`, driven by
#          `edgeloop load --conns 50 --size 64 --depth 1` (ping-pong) for
#          DURATION s: instructions ÷ messages echoed;
#   chat   `edgeloop chat --chat-rate 0` under callgrind, driven by
#          scripts/chat/fanout.c with 10 members, 4 of them sending:
#          instructions ÷ lines handled (its calls of `on_frame`).
# Counts are of the whole process, start-up included (well under 1 %).
# Under callgrind a server runs ~50× slower and so batches more per
# wake-up than at full speed: compare builds with each other, not with a
# profile taken at speed. Kernel work is not counted: a system call is
# one instruction here.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }

RUNS=${RUNS:-2}
DURATION=${DURATION:-3}
out=target/instructions
mkdir -p "$out"
if [[ $# -eq 0 ]]; then
    cargo build --release --quiet
    set -- target/release/edgeloop
fi
cc -O3 -Wall -Wextra -o "$out/fanout" scripts/chat/fanout.c
load=target/release/edgeloop
[[ -x $load ]] || cargo build --release --quiet

# Start `$@` under callgrind, wait for its "listening on" line; sets
# $vg (valgrind's pid, which is the server's) and $port.
start() {
    local file=$1
    shift
    rm -f "$file" "$out/server.out"
    valgrind --tool=callgrind --callgrind-out-file="$file" "$@" --listen 127.0.0.1:0 \
        >"$out/server.out" 2>"$out/server.err" &
    vg=$!
    port=
    for _ in $(seq 300); do
        port=$(sed -n 's/^listening on .*://p' "$out/server.out")
        [[ -n $port ]] && return
        sleep 0.1
    done
    echo "server did not start" >&2
    cat "$out/server.err" >&2
    exit 1
}

stop() {
    kill -INT "$vg"
    wait "$vg" || true
}

total() { sed -n 's/^summary: //p' "$1"; }

printf '%-8s %-40s %12s %14s %10s\n' test binary messages instructions per_msg
for _ in $(seq "$RUNS"); do
    for bin in "$@"; do
        start "$out/echo.cg" "$bin" echo
        msgs=$(timeout 60 "$load" load --connect "127.0.0.1:$port" --conns 50 --size 64 --depth 1 \
            --duration "$DURATION" --warmup 0 2>/dev/null | awk '/^messages/ {print $2}')
        stop
        ir=$(total "$out/echo.cg")
        printf '%-8s %-40s %12s %14s %10s\n' echo "$bin" "$msgs" "$ir" $((ir / msgs))

        start "$out/chat.cg" "$bin" chat --chat-rate 0
        timeout 120 "$out/fanout" 127.0.0.1 "$port" 10 4 "$DURATION" "$vg" 32 16384 >/dev/null 2>&1
        stop
        ir=$(total "$out/chat.cg")
        # The calls of the chat's on_frame, one per line handled.
        lines=$(callgrind_annotate --tree=calling "$out/chat.cg" 2>/dev/null |
            sed -n 's/.*> .*Chat as edgeloop::handler::Handler>::on_frame (\([0-9,]*\)x).*/\1/p' |
            head -1 | tr -d ,)
        printf '%-8s %-40s %12s %14s %10s\n' chat "$bin" "$lines" "$ir" $((ir / lines))
    done
done
