#!/usr/bin/env bash
# Server memory per idle connection: RSS before and after IDLE_CONNS idle
# connections, divided by IDLE_CONNS.
#
#   scripts/idle-memory.sh                      # edgeloop and every built peer
#   scripts/idle-memory.sh edgeloop go-echo     # some of them
#   EDGELOOP_BEFORE=path/to/edgeloop scripts/idle-memory.sh edgeloop edgeloop-before
#       # another edgeloop build, run with `echo` like this one
#   scripts/idle-memory.sh "path/to/server --opt"   # any server binary that
#       takes IP:PORT as its last argument and prints "listening on IP:PORT"
#   IDLE_CONNS=5000 scripts/idle-memory.sh
#
# For each server: start it pinned to CPU 0, read VmRSS (/proc/PID/status),
# open IDLE_CONNS connections from one python3 process (scripts/lib/idle_conns.py),
# wait until the server holds them all, read VmRSS again ("opened"); then
# echo one 64-byte message on each and read VmRSS again ("after one echo":
# servers that allocate buffers lazily, or free them when drained, show it
# here). Per connection = (RSS - RSS before) / IDLE_CONNS. Kernel socket
# buffers are not in RSS, and they are the same for every server.
# edgeloop runs with --max-conns 100000 (its default limit is 10000).
# Prints a markdown table; about 5-10 s per server.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/bench.sh

IDLE_CONNS=${IDLE_CONNS:-10000}
if [[ ${NO_BUILD:-0} != 1 ]]; then
    bench_build
fi
bench_tune
servers=("$@")
if ((${#servers[@]} == 0)); then
    mapfile -t servers < <(bench_servers)
fi

echo "### Idle memory: $IDLE_CONNS connections"
echo
echo "| server | RSS before | RSS, $IDLE_CONNS opened | RSS after one echo each | bytes/conn opened | bytes/conn after echo | accepted / echoed |"
echo "|---|---:|---:|---:|---:|---:|---|"
status=0
for srv in "${servers[@]}"; do
    if ! server_start "$srv"; then
        echo "| $srv | server did not start | | | | | |"
        status=1
        continue
    fi
    out=$BENCH_OUT/idle-${srv//[^A-Za-z0-9_.-]/_}.txt
    if timeout -k 5 120 "${PIN_LOAD[@]}" python3 scripts/lib/idle_conns.py \
        "$SERVER_PID" "$SERVER_ADDR" "$IDLE_CONNS" >"$out" 2>"$out.err"; then
        read -r before opened used accepted echoed <"$out"
        awk -v s="$srv" -v b="$before" -v o="$opened" -v u="$used" -v n="$IDLE_CONNS" \
            -v a="$accepted" -v e="$echoed" 'BEGIN {
                printf "| %s | %.1f MiB | %.1f MiB | %.1f MiB | %.0f | %.0f | %d / %d |\n",
                    s, b / 1024, o / 1024, u / 1024, (o - b) * 1024 / n, (u - b) * 1024 / n, a, e }'
        if ((accepted < IDLE_CONNS || echoed < IDLE_CONNS)); then status=1; fi
    else
        echo "| $srv | failed: $(tail -1 "$out.err" | tr '|' '/') | | | | | |"
        status=1
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || echo "warning: $srv died" >&2
    server_stop
done
exit $status
