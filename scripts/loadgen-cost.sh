#!/usr/bin/env bash
# The load generator's own cost, against `edgeloop echo`, at equal work with
# tcpkali:
#
#  1. client CPU per message at fixed offered rates (open loop, each RATE in
#     RATES msg/s over CONNS connections, one generator thread), for each
#     send window in WINDOWS (`--send-window`, microseconds), measured from
#     outside (wait4: user + system of the whole process, connecting
#     included) and divided by the messages offered (rate x (1 s warm-up +
#     DURATION)).
#
#     With TCPKALI=/path/to/tcpkali (`TCPKALI=1 scripts/peers/build.sh`
#     builds scripts/peers/bin/tcpkali, the default when it exists),
#     tcpkali runs the same work against the same server,
#     alternating with edgeloop (each repetition: edgeloop's windows, then
#     tcpkali, per rate), measured the same way:
#
#       tcpkali -w 1 -c CONNS --message-rate RATE/CONNS --message-marker \
#               -m '<34 x>\{message.marker}' -T (1 + DURATION)s ADDR
#
#     one worker, the same per-connection rate, 64 bytes per message on the
#     wire (the marker expands to 30: "TCPKaliMsgTS-", 16 hex digits of the
#     send time in microseconds, "."), and every message timed: tcpkali
#     stamps each message when it writes it and, with --message-marker,
#     parses every echoed marker and records its latency (to 0.1 ms). So
#     both generators time every message; edgeloop also checks every byte
#     and records two more histograms (response time from the due time,
#     send lag). Without TCPKALI only the edgeloop rows are printed.
#     The send lag of each edgeloop run is beside its cost: the price of a
#     window is shown, not hidden; tcpkali's own lateness (its send timer
#     fires at most once a millisecond per connection) is measured nowhere.
#  2. the send lag at HIGH_RATE msg/s (default 50 000) on one thread, when
#     the server keeps up, for each window: p50/p99/max, achieved rate,
#     thread CPU, verdict (edgeloop only: tcpkali has no such figure).
#
# The server runs on CPU 0, the generator on CPU 1 (taskset; RT=1 adds
# real-time priority, see scripts/lib/bench.sh). Medians over REPS
# repetitions; the ratio to tcpkali is the median of each repetition's
# ratio to the tcpkali run next to it. Raw JSON and outputs in
# target/bench/loadgen-cost/. Each run lasts 1 + DURATION s plus ~2 s of
# setup, so the whole takes about
# REPS x (|RATES| x (|WINDOWS| + 1) + |WINDOWS|) x (DURATION + 3) s:
#
#   scripts/loadgen-cost.sh                      # defaults below: ~6 min, ~7 with TCPKALI
#   RATES=20000 WINDOWS=1 REPS=5 scripts/loadgen-cost.sh
#   NICE=-10 DURATION=5 TCPKALI=/tmp/tcpkali/src/tcpkali scripts/loadgen-cost.sh   # ~4.5 min
#
# RT=1 is refused together with TCPKALI: tcpkali stalled at real-time priority
# on one CPU. Without RT, other work on the machine shares the cores: the
# load average is printed at the start and the end, and the ratios to
# tcpkali pair runs made seconds apart.
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-20000 100000}
WINDOWS=${WINDOWS:-1 100 500}
CONNS=${CONNS:-50}
DURATION=${DURATION:-10}
HIGH_RATE=${HIGH_RATE:-50000}
HIGH_CONNS=${HIGH_CONNS:-50}
REPS=${REPS:-3}
default_tcpkali=scripts/peers/bin/tcpkali
[[ -x $default_tcpkali ]] || default_tcpkali=
TCPKALI=${TCPKALI:-$default_tcpkali}

BENCH_OUT=target/bench/loadgen-cost
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

# NICE=-10 (as root): server and generators at that nice level, all alike. It
# keeps other work on the machine (a build) from taking turns on their CPUs,
# without real-time priority's cap (a SCHED_FIFO thread that wants over 95 %
# of a core is stopped for ~50 ms a second: at 1 us precision both
# generators come near that at 20 000 msg/s on this machine class).
if [[ -n ${NICE:-} ]]; then
    PIN_SERVER=(nice -n "$NICE" "${PIN_SERVER[@]}") PIN_LOAD=(nice -n "$NICE" "${PIN_LOAD[@]}")
fi

echo "building edgeloop (cargo build --release)..." >&2
cargo build --release --quiet
bench_tune
if [[ -n $TCPKALI && ! -x $TCPKALI ]]; then
    echo "error: TCPKALI=$TCPKALI is not an executable" >&2
    exit 2
fi
# tcpkali's two threads (main + one worker) at SCHED_FIFO on one CPU: tried,
# it did not get its 50 connections up in 6 s and burned 12 s of CPU. The
# comparison runs both at normal priority.
if [[ -n $TCPKALI && ${RT:-0} == 1 ]]; then
    echo "error: RT=1 and TCPKALI do not go together (tcpkali stalls at real-time priority on one CPU)" >&2
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

# tcpkali's message: 34 bytes, then the marker, which it expands to 30 bytes
# ("TCPKaliMsgTS-" + 16 hex digits + "."): 64 bytes on the wire, like
# edgeloop's 64-byte messages.
TK_MSG="$(printf 'x%.0s' $(seq 34))"'\{message.marker}'

# cost.tsv: generator rate window rep cpu_s lag_p50 lag_p99 achieved verdict send→echo_p50 send→echo_p99
: >"$BENCH_OUT/cost.tsv"
for rep in $(seq "$REPS"); do
    for rate in $RATES; do
        for w in $WINDOWS; do
            f=$BENCH_OUT/edgeloop-$rate-$w-$rep
            timeout $((DURATION + 60)) "${PIN_LOAD[@]}" scripts/lib/rusage.py "$EDGELOOP" load --connect "$SERVER_ADDR" \
                --rate "$rate" --conns "$CONNS" --duration "$DURATION" --warmup 1 --send-window "$w" --json \
                >"$f.json" 2>"$f.err" || true
            printf 'edgeloop\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rate" "$w" "$rep" "$(cpu_of "$f.err")" \
                "$(json_get "$f.json" send_lag_us.p50)" "$(json_get "$f.json" send_lag_us.p99)" \
                "$(json_get "$f.json" achieved_rate)" "$(json_get "$f.json" verdict)" \
                "$(json_get "$f.json" service_us.p50)" "$(json_get "$f.json" service_us.p99)" >>"$BENCH_OUT/cost.tsv"
        done
        # tcpkali, the same work for as long (1 s warm-up + DURATION), right
        # after edgeloop's runs of this rate and repetition.
        if [[ -n $TCPKALI ]]; then
            f=$BENCH_OUT/tcpkali-$rate-$rep
            per_conn=$(awk -v r="$rate" -v c="$CONNS" 'BEGIN { printf "%g", r / c }')
            timeout $((DURATION + 60)) "${PIN_LOAD[@]}" scripts/lib/rusage.py "$TCPKALI" -w 1 -c "$CONNS" \
                --message-rate "$per_conn" --message-marker -m "$TK_MSG" --latency-percentiles 50,99 \
                -T "$((DURATION + 1))s" "$SERVER_ADDR" >"$f.out" 2>"$f.err" || true
            # "Aggregate message rate: X↓, Y↑ mps": X messages echoed per second.
            achieved=$(sed -n 's/.*Aggregate message rate: \([0-9.]*\)↓.*/\1/p' "$f.out" | tail -1)
            # "Message latency at percentiles: A/B ms (50/99%)", to 0.1 ms.
            lat=$(sed -n 's/.*Message latency at percentiles: \([0-9.]*\)\/\([0-9.]*\) ms.*/\1 \2/p' "$f.out" | tail -1)
            read -r l50 l99 <<<"${lat:-nan nan}"
            printf 'tcpkali\t%s\t1000\t%s\t%s\t-\t-\t%.0f\t-\t%s\t%s\n' "$rate" "$rep" "$(cpu_of "$f.err")" "${achieved:-0}" \
                "$(awk -v v="$l50" 'BEGIN { print v * 1000 }')" "$(awk -v v="$l99" 'BEGIN { print v * 1000 }')" \
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
echo "## Generator cost at equal work ($CONNS conns, 64 B, every message timed, 1 s warm-up + ${DURATION} s, median of $REPS)"
echo
bench_header
echo
echo "CPU per offered message, from outside (wait4), median (min–max). tcpkali: \`-w 1 --message-marker\`,"
echo "\`\\{message.marker}\` in each 64-byte message; its send timer fires at most once a millisecond per"
echo "connection, so its window is written as 1000 us; its lateness is not measured. Send → echo: edgeloop's"
echo "service time (actual send to complete echo), tcpkali's message latency (write to echoed marker, 0.1 ms"
echo "resolution). \"/ tcpkali\": each repetition's cost over the tcpkali run beside it, median (min–max)."
[[ -n $TCPKALI ]] || echo "(TCPKALI not set: edgeloop rows only.)"
echo
echo "| rate msg/s | generator | window us | us per offered msg | send lag p50 us | p99 us | send→echo p50 us | p99 us | achieved msg/s | verdicts | / tcpkali |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
secs=$((DURATION + 1))
for rate in $RATES; do
    per_msg() { awk -v n="$((rate * secs))" '{ printf "%.2f\n", $1 * 1e6 / n }'; }
    for g in edgeloop tcpkali; do
        for w in $WINDOWS 1000; do
            rows=$(awk -F'\t' -v g="$g" -v r="$rate" -v w="$w" '$1 == g && $2 == r && $3 == w' "$BENCH_OUT/cost.tsv")
            [[ -n $rows ]] || continue
            pers=$(cut -f5 <<<"$rows" | per_msg)
            per=$(median <<<"$pers" | awk '{ printf "%.2f", $1 }')
            lo=$(sort -g <<<"$pers" | head -1) hi=$(sort -g <<<"$pers" | tail -1)
            col() { cut -f"$1" <<<"$rows" | { grep -v '^-$' || true; } | median; }
            ver=$(cut -f9 <<<"$rows" | sort | uniq -c | awk '{ printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1 }')
            # Each repetition's ratio to the tcpkali run of the same rate and repetition.
            ratio=$(awk -F'\t' -v g="$g" -v r="$rate" -v w="$w" -v n="$((rate * secs))" '
                $1 == "tcpkali" && $2 == r { tk[$4] = $5 }
                $1 == g && $2 == r && $3 == w { mine[$4] = $5 }
                END { for (k in mine) if (tk[k] > 0) print mine[k] / tk[k] }' "$BENCH_OUT/cost.tsv")
            if [[ -z $ratio ]]; then
                ratio=-
            else
                ratio=$(sort -g <<<"$ratio" | awk '{ a[NR] = $1 } END { printf "%.2f (%.2f–%.2f)", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[1], a[NR] }')
            fi
            echo "| $rate | $g | $w | $per ($lo–$hi) | $(col 6 | sed 's/nan/-/') | $(col 7 | sed 's/nan/-/') | $(col 10) | $(col 11) | $(col 8) | $ver | $ratio |"
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
echo
echo "p99 send lag per repetition: $(awk -F'\t' '{ printf "%sw%s=%s", (NR > 1 ? ", " : ""), $1, $4 }' "$BENCH_OUT/lag.tsv")"
echo "load average (1, 5, 15 min) at end: $(cut -d' ' -f1-3 /proc/loadavg)"
