#!/usr/bin/env bash
# Compare edgeloop's echo server with the peers in scripts/peers/, in one run,
# on the same CPUs, with the same load generator (`edgeloop load`).
#
#   scripts/compare.sh                       # defaults: ~8-10 minutes
#   QUICK=1 scripts/compare.sh               # 1 repetition, 2 s windows: ~2 minutes
#   REPS=5 DURATION=10 SERVERS="edgeloop c-epoll-echo" SCENARIOS="pingpong bulk" \
#       scripts/compare.sh
#
# Environment:
#   REPS        repetitions (default 3; QUICK: 1)
#   DURATION    measured window of each run, seconds (default 5; QUICK: 2)
#   WARMUP      warm-up before it, seconds (default 1; QUICK: 0.5)
#   SCENARIOS   subset of: pingpong pipelined bulk conns2k idle (default: all)
#   SERVERS     subset of: edgeloop edgeloop-wN edgeloop-before c-epoll-echo tokio-echo
#               go-echo erlang-echo (default: edgeloop, edgeloop-before if
#               EDGELOOP_BEFORE is set, and every peer scripts/peers/build.sh built).
#               The first is the reference of the ratio columns.
#               edgeloop-wN (N = 1, 2, ...) is this build as `echo --workers N`:
#               N reactor threads, all on the server's one CPU (see Method), so
#               it measures the cost per message of N shared-nothing workers,
#               not a speed-up: SERVERS="edgeloop-w1 edgeloop-w2 ..."
#   EDGELOOP_BEFORE  path (absolute, or relative to the repository root) of another
#               edgeloop binary, e.g. a build of the commit before a change; it
#               runs as the server "edgeloop-before" (`$EDGELOOP_BEFORE echo
#               --listen 127.0.0.1:0 --max-conns 100000`), alternated with the
#               others; its "÷ edgeloop" columns are before ÷ this build. The load
#               generator is always this build's target/release/edgeloop.
#               scripts/idle-memory.sh edgeloop-before uses it too.
#   IDLE_CONNS  connections of the idle-memory scenario (default 10000)
#
# Scenarios (conns × messages in flight per conn × message size):
#   pingpong    50 × 1 × 64 B       one message per wake-up: system-call bound
#   pipelined   50 × 32 × 64 B      many messages per read: batching
#   bulk        1 × 1 × 64 KiB      bytes, not messages
#   conns2k     2000 × 1 × 64 B     many connections, readiness fan-out
#   idle        IDLE_CONNS idle connections: server RSS per connection
#               (scripts/idle-memory.sh)
#
# Method:
#   - Every server is started fresh for every run, pinned to CPU 0
#     (`taskset -c 0`); the load generator runs on CPU 1 (`taskset -c 1`).
#     Go and Erlang size their schedulers from the CPU affinity, so pinned
#     they run one scheduler (GOMAXPROCS=1, +S 1), like the others.
#   - Runs alternate: for each repetition, for each scenario, every server in
#     turn (A B C, then B C A in the next repetition, ...), so slow drifts of
#     a shared machine hit all servers alike and none always runs first.
#     The table gives medians over repetitions; the ratios are paired
#     (peer ÷ the first of SERVERS within the same repetition, then the
#     median).
#   - msg/s, MB/s (one direction) and latency come from `edgeloop load
#     --json` and cover its measured window only (the warm-up is excluded).
#   - Server CPU: the ns on CPU of all the server's threads
#     (/proc/PID/task/*/schedstat, first field) are sampled every 50 ms from
#     CPU 1 during the run. From the generator's JSON (elapsed, warm-up,
#     window) the script locates an interval certainly inside the measured
#     window (see scripts/lib/bench.py, "bounds"): CPU ns in that interval ÷
#     its length ÷ the window's msg/s = server CPU ns per message. "server
#     CPU" is the same as a share of one core. This is the fairer figure in
#     ping-pong, where server and generator both saturate their core.
#     On loopback the kernel does part of the receiver's TCP work in the
#     sender's system calls, so a server's CPU includes some of the
#     generator's receive path (and vice versa) — equally for every server.
#   - As root, net.core.netdev_max_backlog is raised to 10000 and
#     net.core.somaxconn to 4096 if lower; the values in force are printed.
#
# Output: a markdown report on stdout (also saved as target/bench/compare.md);
# every run as TSV in target/bench/compare-runs.tsv; server logs and the
# generator's JSON/progress in target/bench/. Every process it starts is
# stopped on exit; each run is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/bench.sh

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    REPS=${REPS:-1} DURATION=${DURATION:-2} WARMUP=${WARMUP:-0.5}
else
    REPS=${REPS:-3} DURATION=${DURATION:-5} WARMUP=${WARMUP:-1}
fi
SCENARIOS=${SCENARIOS:-"pingpong pipelined bulk conns2k idle"}
IDLE_CONNS=${IDLE_CONNS:-10000}

bench_build
bench_tune
SERVERS=${SERVERS:-$(bench_servers | tr '\n' ' ')}
for s in $SERVERS; do
    [[ $s == edgeloop || $s =~ ^edgeloop-w[0-9]+$ || -x $PEERS_BIN/$s ||
        ($s == edgeloop-before && -x $EDGELOOP_BEFORE) ]] ||
        { echo "error: no server $s (edgeloop-before needs EDGELOOP_BEFORE=path/to/edgeloop)" >&2; exit 2; }
done
read -r reference _ <<<"$SERVERS" # the baseline of the ratios

load_scenarios=()
for sc in $SCENARIOS; do
    if [[ $sc == idle ]]; then continue; fi
    scenario_args "$sc" >/dev/null || exit 2
    load_scenarios+=("$sc")
done

runs=$BENCH_OUT/compare-runs.tsv
python3 scripts/lib/bench.py row header >"$runs"
started=$(date +%s)
n_servers=$(wc -w <<<"$SERVERS")
total_runs=$((REPS * ${#load_scenarios[@]} * n_servers)) run_no=0

read -r -a servers <<<"$SERVERS"
for rep in $(seq "$REPS"); do
    # Each repetition starts with the next server: whoever runs first in a
    # scenario inherits the previous one's leftovers (sockets in TIME_WAIT,
    # a warm or cold cache), and no server should always be that one.
    shift_by=$(((rep - 1) % n_servers))
    order=("${servers[@]:shift_by}" "${servers[@]:0:shift_by}")
    for sc in "${load_scenarios[@]}"; do
        read -r conns depth size <<<"$(scenario_args "$sc")"
        for srv in "${order[@]}"; do
            run_no=$((run_no + 1))
            tag="$sc-$srv-$rep"
            note=""
            if ! server_start "$srv"; then
                python3 scripts/lib/bench.py row "$rep" "$sc" "$srv" 0 /dev/null /dev/null 1 \
                    "server did not start" 0 >>"$runs"
                continue
            fi
            read -r _ drop0 <<<"$(tcp_counters)"
            cpu_sampler_start "$SERVER_PID" "$BENCH_OUT/$tag.cpu"
            load_start "$conns" "$depth" "$size" "$DURATION" "$WARMUP" "$BENCH_OUT/$tag"
            load_wait
            cpu_sampler_stop
            read -r _ drop1 <<<"$(tcp_counters)"
            kill -0 "$SERVER_PID" 2>/dev/null || note="server died during the run"
            server_stop
            row=$(python3 scripts/lib/bench.py row "$rep" "$sc" "$srv" "$LOAD_T0" \
                "$BENCH_OUT/$tag.json" "$BENCH_OUT/$tag.cpu" "$LOAD_RC" "$note" "$((drop1 - drop0))")
            echo "$row" >>"$runs"
            IFS=$'\t' read -r -a f <<<"$row"
            printf '[%3d/%d %4ds] rep %d %-9s %-13s %9s msg/s  p99 %7s us  %6s ns/msg server CPU  errors %s%s\n' \
                "$run_no" "$total_runs" "$(($(date +%s) - started))" "$rep" "$sc" "$srv" \
                "${f[4]}" "${f[7]}" "${f[13]}" "${f[10]}" "$([[ ${f[19]} != - ]] && echo "  (${f[19]})")" >&2
        done
    done
done

idle_md=""
if [[ " $SCENARIOS " == *" idle "* ]]; then
    echo "idle memory: $IDLE_CONNS connections per server..." >&2
    # shellcheck disable=SC2086
    idle_md=$(IDLE_CONNS=$IDLE_CONNS NO_BUILD=1 scripts/idle-memory.sh $SERVERS) || {
        echo "warning: scripts/idle-memory.sh failed" >&2
    }
fi

{
    echo "## edgeloop echo vs peers — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    bench_header
    echo "- command: \`$( ((QUICK)) && echo 'QUICK=1 ')$([[ -n $EDGELOOP_BEFORE ]] && echo "EDGELOOP_BEFORE=$EDGELOOP_BEFORE ")REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP scripts/compare.sh\`" \
        "(servers: $SERVERS; $(($(date +%s) - started)) s)"
    echo "- load generator: \`edgeloop load --conns N --depth D --size S --duration $DURATION --warmup $WARMUP --json\`"
    echo
    if ((${#load_scenarios[@]})); then
        echo "Medians over $REPS repetition(s). Ratios: peer ÷ $reference in the same repetition, median;"
        echo "msg/s ÷ $reference > 1 means the peer echoed more; CPU/msg ÷ $reference > 1 means the peer"
        echo "spent more server CPU per message. \"generator CPU\" near 100% means the load generator,"
        echo "not the server, was the limit. errors: summed over repetitions (from the generator)."
        echo "TCP retrans in window / listen drops: kernel counters of the whole loopback (other programs"
        echo "too), summed over repetitions: segments retransmitted inside the measured window (the"
        echo "teardown's are left out), and SYNs dropped by a full accept queue during the whole run"
        echo "(while connecting); either stalls a connection for 200 ms-3 s, visible in p99/max."
        echo
        python3 scripts/lib/bench.py compare-table "$runs" "$reference"
        echo
    fi
    if [[ -n $idle_md ]]; then
        echo "$idle_md"
        echo
    fi
} | tee "$BENCH_OUT/compare.md"

# Exit 1 when a run failed or the generator reported errors (the table says which).
bad=$(awk -F'\t' 'NR > 1 && ($4 != 1 || ($11 != 0 && $11 != "NA"))' "$runs" | wc -l)
if ((bad)); then
    echo "warning: $bad run(s) failed or reported errors; see the table and $runs" >&2
    exit 1
fi
