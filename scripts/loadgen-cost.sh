#!/usr/bin/env bash
# The load generator's own cost, against `edgeloop echo`:
#
#  1. client CPU per message at fixed offered rates (open loop, each RATE in
#     RATES msg/s over CONNS connections, one generator thread), for each
#     send window in WINDOWS (`--send-window`, microseconds), measured from
#     outside (wait4: user + system of the whole process, connecting
#     included) and divided by the messages offered (rate x (warm-up +
#     DURATION)). With TCPKALI=/path/to/tcpkali (built by hand; nothing here
#     fetches or builds it), tcpkali runs the same offered load (-w 1,
#     --message-rate RATE/CONNS per connection, 64-byte messages) against
#     the same server, alternating with edgeloop, and is measured the same
#     way. The send lag of each edgeloop run is beside its cost: the price
#     of a window is shown, not hidden.
#  2. the send lag at HIGH_RATE msg/s (default 100 000) on one thread, when
#     the server keeps up, for each window: p50/p99/max, achieved rate,
#     thread CPU, verdict.
#
# The server runs on CPU 0, the generator on CPU 1 (taskset; RT=1 adds
# real-time priority, see scripts/lib/bench.sh). Medians over REPS
# repetitions. Raw JSON and outputs in target/bench/loadgen-cost/.
#
#   scripts/loadgen-cost.sh                      # ~4 min
#   RATES=20000 WINDOWS=1 REPS=5 scripts/loadgen-cost.sh
#   RT=1 TCPKALI=/tmp/tcpkali/src/tcpkali scripts/loadgen-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-20000 100000}
WINDOWS=${WINDOWS:-1 100 500}
CONNS=${CONNS:-50}
DURATION=${DURATION:-10}
HIGH_RATE=${HIGH_RATE:-100000}
HIGH_CONNS=${HIGH_CONNS:-50}
REPS=${REPS:-3}
TCPKALI=${TCPKALI:-}

BENCH_OUT=target/bench/loadgen-cost
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

echo "building edgeloop (cargo build --release)..." >&2
cargo build --release --quiet
bench_tune
if [[ -n $TCPKALI && ! -x $TCPKALI ]]; then
    echo "error: TCPKALI=$TCPKALI is not an executable" >&2
    exit 2
fi

server_start edgeloop
echo "server: edgeloop echo on $SERVER_ADDR (pid $SERVER_PID)" >&2

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# jq-free JSON field: json_get FILE a.b.c
json_get() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[int(k)] if isinstance(v, list) else v[k]
print(v)' "$1" "$2"; }
cpu_of() { sed -n 's/^cpu_s=//p' "$1" | tail -1; }

: >"$BENCH_OUT/cost.tsv"
for rep in $(seq "$REPS"); do
    for rate in $RATES; do
        for w in $WINDOWS; do
            f=$BENCH_OUT/edgeloop-$rate-$w-$rep
            timeout $((DURATION + 60)) "${PIN_LOAD[@]}" scripts/lib/rusage.py "$EDGELOOP" load --connect "$SERVER_ADDR" \
                --rate "$rate" --conns "$CONNS" --duration "$DURATION" --warmup 1 --send-window "$w" --json \
                >"$f.json" 2>"$f.err" || true
            printf 'edgeloop\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rate" "$w" "$rep" "$(cpu_of "$f.err")" \
                "$(json_get "$f.json" send_lag_us.p50)" "$(json_get "$f.json" send_lag_us.p99)" \
                "$(json_get "$f.json" achieved_rate)" "$(json_get "$f.json" verdict)" >>"$BENCH_OUT/cost.tsv"
        done
        # tcpkali, the same offered load for as long (1 s warm-up + DURATION)
        if [[ -n $TCPKALI ]]; then
            f=$BENCH_OUT/tcpkali-$rate-$rep
            per_conn=$(awk -v r="$rate" -v c="$CONNS" 'BEGIN { printf "%g", r / c }')
            msg=$(printf 'x%.0s' $(seq 64))
            timeout $((DURATION + 60)) "${PIN_LOAD[@]}" scripts/lib/rusage.py "$TCPKALI" -w 1 -c "$CONNS" \
                --message-rate "$per_conn" -m "$msg" -T "$((DURATION + 1))s" "$SERVER_ADDR" >"$f.out" 2>"$f.err" || true
            # "Aggregate bandwidth: X↓, Y↑ Mbps": upstream bytes / 64 = messages.
            up=$(sed -n 's/.*Aggregate bandwidth: [0-9.]*↓, \([0-9.]*\)↑ Mbps.*/\1/p' "$f.out" | tail -1)
            achieved=$(awk -v m="${up:-0}" 'BEGIN { printf "%.0f", m * 1e6 / 8 / 64 }')
            printf 'tcpkali\t%s\t1000\t%s\t%s\t-\t-\t%s\t-\n' "$rate" "$rep" "$(cpu_of "$f.err")" "$achieved" \
                >>"$BENCH_OUT/cost.tsv"
        fi
    done
done

: >"$BENCH_OUT/lag.tsv"
for rep in $(seq "$REPS"); do
    for w in $WINDOWS; do
        f=$BENCH_OUT/lag-$w-$rep
        timeout $((DURATION + 60)) "${PIN_LOAD[@]}" "$EDGELOOP" load --connect "$SERVER_ADDR" --rate "$HIGH_RATE" \
            --conns "$HIGH_CONNS" --threads 1 --duration "$DURATION" --warmup 1 --send-window "$w" --json \
            >"$f.json" 2>"$f.err" || true
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$rep" "$(json_get "$f.json" send_lag_us.p50)" \
            "$(json_get "$f.json" send_lag_us.p99)" "$(json_get "$f.json" send_lag_us.max)" \
            "$(json_get "$f.json" achieved_rate)" "$(json_get "$f.json" client.thread_cpu_util.0)" \
            "$(json_get "$f.json" verdict)" >>"$BENCH_OUT/lag.tsv"
    done
done
server_stop

echo
echo "## Generator cost ($CONNS conns, 64 B raw, 1 s warm-up + ${DURATION} s, median of $REPS)"
echo
bench_header
echo
echo "CPU per offered message, from outside (wait4). tcpkali's timer fires at most once a millisecond, so"
echo "its window is written as 1000 us; its lateness is not measured."
echo
echo "| rate msg/s | generator | window us | us per offered msg | send lag p50 us | p99 us | achieved msg/s | verdicts | / tcpkali |"
echo "|---|---|---|---|---|---|---|---|---|"
secs=$((DURATION + 1))
for rate in $RATES; do
    per_msg() { awk -v n="$((rate * secs))" '{ printf "%.2f\n", $1 * 1e6 / n }' | median; }
    tk=$(awk -F'\t' -v r="$rate" '$1 == "tcpkali" && $2 == r { print $5 }' "$BENCH_OUT/cost.tsv" | per_msg)
    for g in edgeloop tcpkali; do
        for w in $WINDOWS 1000; do
            rows=$(awk -F'\t' -v g="$g" -v r="$rate" -v w="$w" '$1 == g && $2 == r && $3 == w' "$BENCH_OUT/cost.tsv")
            [[ -n $rows ]] || continue
            per=$(cut -f5 <<<"$rows" | per_msg)
            p50=$(cut -f6 <<<"$rows" | { grep -v '^-$' || true; } | median)
            p99=$(cut -f7 <<<"$rows" | { grep -v '^-$' || true; } | median)
            ach=$(cut -f8 <<<"$rows" | median)
            ver=$(cut -f9 <<<"$rows" | sort | uniq -c | awk '{ printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1 }')
            ratio=$(awk -v e="$per" -v t="$tk" 'BEGIN { if (t == "nan" || t == 0) print "-"; else printf "%.2f", e / t }')
            echo "| $rate | $g | $w | $per | ${p50/nan/-} | ${p99/nan/-} | $ach | $ver | $ratio |"
        done
    done
done
echo
echo "## Send lag at $HIGH_RATE msg/s on one thread ($HIGH_CONNS conns, ${DURATION} s), median of $REPS"
echo
echo "| window us | send lag p50 us | p99 us | max us | achieved msg/s | thread CPU | verdicts |"
echo "|---|---|---|---|---|---|---|"
for w in $WINDOWS; do
    rows=$(awk -F'\t' -v w="$w" '$1 == w' "$BENCH_OUT/lag.tsv")
    col() { cut -f"$1" <<<"$rows" | median; }
    ver=$(cut -f8 <<<"$rows" | sort | uniq -c | awk '{ printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1 }')
    echo "| $w | $(col 3) | $(col 4) | $(col 5) | $(col 6) | $(col 7) | $ver |"
done
