#!/usr/bin/env bash
# The load generator's own cost, against `edgeloop echo`:
#
#  1. client CPU per message at a fixed offered rate (open loop, RATE msg/s
#     over CONNS connections, one generator thread), measured from outside
#     (wait4: user + system of the whole process, connecting included) and
#     divided by the messages offered (RATE x DURATION); beside it, the
#     generator's own per-thread figure for the measured window. With
#     TCPKALI=/path/to/tcpkali (built by hand; nothing here fetches or
#     builds it), tcpkali runs the same offered load (-w 1, --message-rate
#     RATE/CONNS per connection, 64-byte messages, DURATION) against the same
#     server, alternating with edgeloop, and is measured the same way.
#  2. the send lag at HIGH_RATE msg/s (default 100 000) on one thread, when
#     the server keeps up: p50/p99/max, achieved rate, verdict.
#
# The server runs on CPU 0, the generator on CPU 1 (taskset). Medians over
# REPS repetitions. Raw JSON and outputs in target/bench/loadgen-cost/.
#
#   scripts/loadgen-cost.sh                      # ~2 min
#   RATE=50000 REPS=5 scripts/loadgen-cost.sh
#   TCPKALI=/tmp/tcpkali/src/tcpkali scripts/loadgen-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-20000}
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

offered=$((RATE * DURATION))
: >"$BENCH_OUT/cost.tsv"
for rep in $(seq "$REPS"); do
    # edgeloop
    f=$BENCH_OUT/edgeloop-$rep
    timeout $((DURATION + 60)) "${PIN_LOAD[@]}" scripts/lib/rusage.py "$EDGELOOP" load --connect "$SERVER_ADDR" \
        --rate "$RATE" --conns "$CONNS" --duration "$DURATION" --warmup 0 --json >"$f.json" 2>"$f.err" || true
    cpu=$(cpu_of "$f.err")
    own=$(json_get "$f.json" client.cpu_us_per_msg)
    achieved=$(json_get "$f.json" achieved_rate)
    verdict=$(json_get "$f.json" verdict)
    printf 'edgeloop\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$cpu" "$own" "$achieved" "$verdict" >>"$BENCH_OUT/cost.tsv"
    # tcpkali, same offered load
    if [[ -n $TCPKALI ]]; then
        f=$BENCH_OUT/tcpkali-$rep
        per_conn=$(awk -v r="$RATE" -v c="$CONNS" 'BEGIN { printf "%g", r / c }')
        msg=$(printf 'x%.0s' $(seq 64))
        timeout $((DURATION + 60)) "${PIN_LOAD[@]}" scripts/lib/rusage.py "$TCPKALI" -w 1 -c "$CONNS" \
            --message-rate "$per_conn" -m "$msg" -T "${DURATION}s" "$SERVER_ADDR" >"$f.out" 2>"$f.err" || true
        cpu=$(cpu_of "$f.err")
        # "Aggregate bandwidth: X↓, Y↑ Mbps": upstream bytes / 64 = messages.
        up=$(sed -n 's/.*Aggregate bandwidth: [0-9.]*↓, \([0-9.]*\)↑ Mbps.*/\1/p' "$f.out" | tail -1)
        achieved=$(awk -v m="${up:-0}" 'BEGIN { printf "%.0f", m * 1e6 / 8 / 64 }')
        printf 'tcpkali\t%s\t%s\t-\t%s\t-\n' "$rep" "$cpu" "$achieved" >>"$BENCH_OUT/cost.tsv"
    fi
done

: >"$BENCH_OUT/lag.tsv"
for rep in $(seq "$REPS"); do
    f=$BENCH_OUT/lag-$rep
    timeout $((DURATION + 60)) "${PIN_LOAD[@]}" "$EDGELOOP" load --connect "$SERVER_ADDR" --rate "$HIGH_RATE" \
        --conns "$HIGH_CONNS" --threads 1 --duration "$DURATION" --warmup 1 --json >"$f.json" 2>"$f.err" || true
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$(json_get "$f.json" send_lag_us.p50)" \
        "$(json_get "$f.json" send_lag_us.p99)" "$(json_get "$f.json" send_lag_us.max)" \
        "$(json_get "$f.json" achieved_rate)" "$(json_get "$f.json" client.thread_cpu_util.0)" \
        "$(json_get "$f.json" verdict)" >>"$BENCH_OUT/lag.tsv"
done
server_stop

echo
echo "## Generator cost at $RATE msg/s offered ($CONNS conns, 64 B raw, ${DURATION} s, median of $REPS)"
echo
bench_header
echo
echo "| generator | client CPU s (outside) | us per offered msg (outside) | us per msg (own, window) | achieved msg/s | verdict |"
echo "|---|---|---|---|---|---|"
for g in edgeloop tcpkali; do
    rows=$(awk -v g="$g" '$1 == g' "$BENCH_OUT/cost.tsv")
    [[ -n $rows ]] || continue
    cpu=$(cut -f3 <<<"$rows" | median)
    own=$(cut -f4 <<<"$rows" | { grep -v '^-$' || true; } | median)
    ach=$(cut -f5 <<<"$rows" | median)
    ver=$(cut -f6 <<<"$rows" | sort | uniq -c | awk '{ printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1 }')
    per=$(awk -v c="$cpu" -v n="$offered" 'BEGIN { printf "%.2f", c * 1e6 / n }')
    echo "| $g | $cpu | $per | ${own/nan/-} | $ach | ${ver:--} |"
done
if [[ -n $TCPKALI ]]; then
    ratio=$(awk -F'\t' '$1 == "edgeloop" { e[$2] = $3 } $1 == "tcpkali" { t[$2] = $3 }
        END { for (r in e) if ((r in t) && t[r] > 0) print e[r] / t[r] }' "$BENCH_OUT/cost.tsv" | median)
    echo
    echo "edgeloop / tcpkali client CPU, paired per repetition, median: $ratio"
fi
echo
echo "## Send lag at $HIGH_RATE msg/s on one thread ($HIGH_CONNS conns, ${DURATION} s)"
echo
echo "| rep | send lag p50 us | p99 us | max us | achieved msg/s | thread CPU | verdict |"
echo "|---|---|---|---|---|---|---|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$BENCH_OUT/lag.tsv"
echo
echo "median send-lag p99: $(cut -f3 "$BENCH_OUT/lag.tsv" | median) us"
