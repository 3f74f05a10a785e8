#!/usr/bin/env bash
# Server CPU per message of `echo --workers 1` and `--workers 2` at the same
# offered load: an open-loop `edgeloop load --rate RATE`, so both servers
# get exactly the same messages per second whatever their speed.
#
#   scripts/workers-cost.sh                 # RATE=50000 CONNS=100 DURATION=10 REPS=3
#
# The server runs on CPU 0 (both workers share it: this measures what
# sharing nothing costs per message, not a speed-up), the generator on
# CPU 1. Runs alternate w1 w2 w1 w2 ...; server CPU is utime + stime of
# the whole process (/proc/PID/stat) over the generator's run, divided by
# the messages it echoed. Prints one line per run and the median ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-50000} CONNS=${CONNS:-100} DURATION=${DURATION:-10} REPS=${REPS:-3}
cargo build --release -q
bin=target/release/edgeloop
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ratios=()
declare -A per_msg
echo "# RATE=$RATE CONNS=$CONNS DURATION=$DURATION REPS=$REPS; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$REPS"); do
    for w in 1 2; do
        out=$(mktemp)
        taskset -c 0 "$bin" echo --workers "$w" --listen 127.0.0.1:0 --max-conns 100000 >"$out" 2>/dev/null &
        pid=$!
        for _ in $(seq 50); do grep -q listening "$out" && break; sleep 0.1; done
        addr=$(awk '/listening on/ {print $3}' "$out")
        before=$(cpu_ticks "$pid")
        json=$(taskset -c 1 "$bin" load --connect "$addr" --conns "$CONNS" --rate "$RATE" \
            --duration "$DURATION" --warmup 1 --json 2>/dev/null || true)
        after=$(cpu_ticks "$pid")
        kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$out"
        read -r msgs verdict p99 < <(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["messages"], j["verdict"], j["latency_us"]["p99"])' "$json")
        # The CPU counted covers connecting, warm-up and window: charge it to
        # every message echoed in that time (rate x (warm-up + duration)).
        total=$(python3 -c "print($RATE * ($DURATION + 1))")
        ns=$(python3 -c "print(round(($after - $before) / $tck * 1e9 / $total))")
        per_msg["$rep,$w"]=$ns
        [ "$w" = 2 ] && ratios+=("$(python3 -c "print(${per_msg[$rep,2]} / ${per_msg[$rep,1]})")")
        echo "rep $rep workers $w: server CPU $(( (after - before) * 1000 / tck )) ms, $ns ns/msg, window msgs $msgs, p99 ${p99} us, verdict $verdict"
    done
done
python3 -c 'import sys, statistics; r = [float(x) for x in sys.argv[1:]]
print("w2 / w1 server CPU per message, per rep:", " ".join(f"{x:.3f}" for x in r), " median:", f"{statistics.median(r):.3f}")' "${ratios[@]}"
