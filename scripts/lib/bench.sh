# Shared helpers for scripts/compare.sh, scripts/syscalls.sh and
# scripts/idle-memory.sh. Source it from a script that has `set -euo pipefail`
# and has cd'ed to the repository root.
#
# What it provides:
#   bench_build              cargo build --release, then scripts/peers/build.sh
#   bench_tune               as root, raise netdev_max_backlog / somaxconn;
#                            raise this shell's open-file soft limit to the hard one
#   bench_header             machine info and the sysctls in force (markdown)
#   bench_servers            the servers that exist: edgeloop (+ edgeloop-before
#                            when EDGELOOP_BEFORE is set) + built peers
#   server_start NAME        start NAME pinned to CPU 0; sets SERVER_PID, SERVER_ADDR
#   server_stop              SIGTERM (then SIGKILL) the server started last
#   cpu_ns PID               ns on CPU, all threads (/proc/PID/task/*/schedstat)
#   now_us                   wall clock in µs (integer)
#   sleep_until_us T         sleep until now_us >= T
#   cpu_sampler_start PID F  sample cpu_ns PID every 50 ms into F (SAMPLER_PID)
#   load_start ... / load_wait   run `edgeloop load --json` pinned to CPU 1
#
# Every process started here is remembered and killed by the EXIT trap.

BENCH_OUT=${BENCH_OUT:-target/bench}
EDGELOOP=target/release/edgeloop
# Another edgeloop binary (e.g. an older commit's build) to run as the server
# "edgeloop-before"; the load generator is always $EDGELOOP.
EDGELOOP_BEFORE=${EDGELOOP_BEFORE:-}
PEERS_BIN=scripts/peers/bin
PIN_SERVER=() PIN_LOAD=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    PIN_SERVER=(taskset -c 0) PIN_LOAD=(taskset -c 1)
fi
# RT=1 (as root): run server and generator at real-time priority (SCHED_FIFO
# 50), so that builds and other background work on the same cores cannot
# preempt them. Both sleep in epoll when idle, and the kernel keeps 5 % of
# each core for everyone else (sched_rt_runtime_us).
if [[ ${RT:-0} == 1 && $(id -u) == 0 ]] && command -v chrt >/dev/null; then
    PIN_SERVER=(chrt -f 50 "${PIN_SERVER[@]}") PIN_LOAD=(chrt -f 50 "${PIN_LOAD[@]}")
fi
mkdir -p "$BENCH_OUT"

BENCH_PIDS=()
BENCH_LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
SERVER_PID= SERVER_ADDR= SERVER_NAME=

bench_cleanup() {
    local p
    for p in "${BENCH_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${BENCH_PIDS[@]}"; do
        # Bounded: 3 s of grace, then SIGKILL.
        for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# Remember a background process for the EXIT trap.
bench_track() { BENCH_PIDS+=("$1"); }
bench_untrack() {
    local p keep=()
    for p in "${BENCH_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    BENCH_PIDS=("${keep[@]}")
}

bench_build() {
    echo "building edgeloop (cargo build --release) and the peers..." >&2
    cargo build --release --quiet
    # build.sh exits 1 if one peer failed to build; the others are still usable.
    if ! scripts/peers/build.sh >&2; then
        echo "warning: scripts/peers/build.sh reported a failure; using the peers that exist" >&2
    fi
}

# Raise the loopback limits DESIGN-NOTES asks for, when we may.
bench_tune() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    [[ $(id -u) == 0 ]] || return 0
    local key want f
    for kv in net.core.netdev_max_backlog=10000 net.core.somaxconn=4096; do
        key=${kv%=*} want=${kv#*=}
        f=/proc/sys/${key//.//}
        if [[ -w $f && $(cat "$f") -lt $want ]]; then
            sysctl -q -w "$key=$want" 2>/dev/null || echo "$want" >"$f" 2>/dev/null || true
        fi
    done
}

# Markdown lines describing the machine and the settings in force.
bench_header() {
    local model
    model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    echo "- machine: $(nproc) CPUs, ${model:-unknown CPU}, kernel $(uname -r)"
    echo "- net.core.netdev_max_backlog=$(cat /proc/sys/net/core/netdev_max_backlog)," \
        "net.core.somaxconn=$(cat /proc/sys/net/core/somaxconn)," \
        "open files $(ulimit -n), CLK_TCK $(getconf CLK_TCK)"
    echo "- pinning: server \`${PIN_SERVER[*]:-none}\`, load generator \`${PIN_LOAD[*]:-none}\`"
    echo "- load average (1, 5, 15 min) at start: $BENCH_LOADAVG_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# Servers that can run here, edgeloop first (it is the baseline of ratios).
bench_servers() {
    local s
    echo edgeloop
    [[ -n $EDGELOOP_BEFORE && -x $EDGELOOP_BEFORE ]] && echo edgeloop-before
    for s in c-epoll-echo tokio-echo go-echo erlang-echo; do
        [[ -x $PEERS_BIN/$s ]] && echo "$s"
    done
    return 0
}

# The command line of a server, listening on 127.0.0.1:0. `edgeloop-wN` is
# this build with `--workers N` (all N threads on the server's CPU). A name
# that is not a known server is taken as a command (word-split) to which the
# address is appended, like the peers: `scripts/idle-memory.sh "path/to/bin --opt"`.
server_cmd() {
    case $1 in
    edgeloop) echo "$EDGELOOP echo --listen 127.0.0.1:0 --max-conns 100000" ;;
    edgeloop-before) echo "$EDGELOOP_BEFORE echo --listen 127.0.0.1:0 --max-conns 100000" ;;
    edgeloop-w[0-9]*) echo "$EDGELOOP echo --workers ${1#edgeloop-w} --listen 127.0.0.1:0 --max-conns 100000" ;;
    c-epoll-echo | tokio-echo | go-echo | erlang-echo) echo "$PEERS_BIN/$1 127.0.0.1:0" ;;
    *) echo "$1 127.0.0.1:0" ;;
    esac
}

# Start a server pinned to CPU 0 and wait (≤ 20 s) for "listening on IP:PORT".
server_start() {
    local name=$1 tag=${1//[^A-Za-z0-9_.-]/_} cmd
    cmd=$(server_cmd "$name")
    : >"$BENCH_OUT/server-$tag.out"
    # shellcheck disable=SC2086 # the command is meant to be word-split
    "${PIN_SERVER[@]}" $cmd >"$BENCH_OUT/server-$tag.out" 2>"$BENCH_OUT/server-$tag.err" &
    SERVER_PID=$! SERVER_NAME=$name SERVER_ADDR=
    bench_track "$SERVER_PID"
    for _ in $(seq 200); do
        SERVER_ADDR=$(sed -n 's/^listening on \(.*\)$/\1/p' "$BENCH_OUT/server-$tag.out" | head -1)
        [[ -n $SERVER_ADDR ]] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if [[ -z $SERVER_ADDR ]]; then
        echo "error: server $name did not start (see $BENCH_OUT/server-$tag.err):" >&2
        tail -5 "$BENCH_OUT/server-$tag.err" >&2 || true
        server_stop
        return 1
    fi
}

# Stop the server started last: SIGTERM, ≤ 6 s of grace (edgeloop drains for
# up to 5 s), then SIGKILL.
server_stop() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    bench_untrack "$SERVER_PID"
    SERVER_PID=
}

# Nanoseconds spent on CPU by every live thread of PID (the first field of
# /proc/PID/task/TID/schedstat). Threads that exited are not counted; none of
# the servers ends threads while it serves. Builtins only (no fork), so it can
# be sampled cheaply.
cpu_ns() {
    local f ns rest total=0
    for f in /proc/"$1"/task/*/schedstat; do
        read -r ns rest <"$f" 2>/dev/null || continue
        total=$((total + ns))
    done
    echo "$total"
}

# "RetransSegs ListenDrops" of the network namespace (all of loopback, so
# also other programs' traffic): lost SYNs/segments make stalls of 200 ms to
# seconds that look like the server's fault.
tcp_counters() {
    local r d
    r=$(awk '/^Tcp: [0-9]/ { print $13 }' /proc/net/snmp)
    d=$(awk '/^TcpExt:/ { if (!h) { for (i = 2; i <= NF; i++) if ($i == "ListenDrops") c = i; h = 1 } else print $c }' /proc/net/netstat)
    echo "${r:-0} ${d:-0}"
}

now_us() {
    local t=$EPOCHREALTIME
    echo $((10#${t%.*} * 1000000 + 10#${t#*.}))
}

sleep_until_us() {
    local left=$(($1 - $(now_us)))
    ((left > 0)) && sleep "$((left / 1000000)).$(printf '%06d' $((left % 1000000)))"
    return 0
}

# Seconds (may be fractional, e.g. "0.5") to µs.
secs_to_us() { awk -v s="$1" 'BEGIN { printf "%d", s * 1000000 }'; }

# Sample cpu_ns of PID every 50 ms into FILE until killed, with the
# namespace's TCP RetransSegs: lines "EPOCHREALTIME ns retrans". Sets
# SAMPLER_PID. The sampler runs on the load generator's CPU and uses builtins
# only (no fork per sample), so it costs the server nothing.
cpu_sampler_start() {
    local pid=$1 file=$2
    (
        trap 'exit 0' TERM
        exec 3<> <(:) # a pipe nobody writes: `read -t` on it is a fork-free sleep
        while :; do
            total=0
            for f in /proc/"$pid"/task/*/schedstat; do
                read -r ns rest <"$f" 2>/dev/null || continue
                total=$((total + ns))
            done
            retr=0
            while read -r -a l; do
                [[ ${l[0]} == Tcp: && ${l[1]} == [0-9]* ]] && retr=${l[12]}
            done </proc/net/snmp
            echo "$EPOCHREALTIME $total $retr"
            read -r -t 0.05 -u 3 _ || true
        done
    ) >"$file" &
    SAMPLER_PID=$!
    bench_track "$SAMPLER_PID"
    if ((${#PIN_LOAD[@]})); then taskset -pc 1 "$SAMPLER_PID" >/dev/null 2>&1 || true; fi
}

cpu_sampler_stop() {
    kill -TERM "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    bench_untrack "$SAMPLER_PID"
}

# Start `edgeloop load` against SERVER_ADDR, pinned to CPU 1, in the
# background: load_start CONNS DEPTH SIZE DURATION WARMUP PREFIX. The JSON
# summary goes to PREFIX.json, progress to PREFIX.err. Sets LOAD_PID and
# LOAD_T0 (EPOCHREALTIME just before the launch). Bounded by `timeout`.
load_start() {
    local conns=$1 depth=$2 size=$3 duration=$4 warmup=$5 prefix=$6 limit
    # connect (≤ 10 s) + warm-up + window + drain (≤ 2 s) + slack
    limit=$(awk -v d="$duration" -v w="$warmup" 'BEGIN { printf "%d", d + w + 25 }')
    LOAD_T0=$EPOCHREALTIME
    timeout -k 5 "$limit" "${PIN_LOAD[@]}" "$EDGELOOP" load --connect "$SERVER_ADDR" \
        --conns "$conns" --depth "$depth" --size "$size" \
        --duration "$duration" --warmup "$warmup" --json >"$prefix.json" 2>"$prefix.err" &
    LOAD_PID=$!
    bench_track "$LOAD_PID"
}

# Wait for the load generator; sets LOAD_RC (124 = killed by timeout).
load_wait() {
    LOAD_RC=0
    wait "$LOAD_PID" || LOAD_RC=$?
    bench_untrack "$LOAD_PID"
}

# Scenario NAME -> "conns depth size" (the load scenarios of compare.sh and
# syscalls.sh); unknown names fail.
scenario_args() {
    case $1 in
    pingpong) echo "50 1 64" ;;
    pipelined) echo "50 32 64" ;;
    bulk) echo "1 1 65536" ;;
    conns2k) echo "2000 1 64" ;;
    *) echo "error: unknown scenario $1" >&2; return 1 ;;
    esac
}
