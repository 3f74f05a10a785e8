#!/usr/bin/env bash
# The chat across servers under faults, checked in the spirit of Jepsen
# (issue 16): its own redis-server and 3 chat servers on 127.0.0.1, 30
# clients talking for DURATION seconds while chat servers and Redis are
# paused, their connections killed, Redis restarted empty and its scripts
# flushed; then every line sent and received is checked against SPEC.md
# (one order per room, no duplicate, one outcome per line, unique names, no
# ghost). The invariants and the fault model are documented at the top of
# scripts/lib/chat_checker.py.
#
#   scripts/chat-checker.sh                    # one minute, every fault kind
#   DURATION=600 scripts/chat-checker.sh       # the 10-minute run
#   FAULTS=none scripts/chat-checker.sh        # no fault: must PASS on any build
#   SELF_TEST=1 DURATION=20 scripts/chat-checker.sh   # a clean run, then its history tampered
#                                              # 14 ways: what SPEC forbids must be caught, what it
#                                              # allows must pass (checks the checker)
#   scripts/chat-checker.sh --analyse target/chat-checker/history.jsonl   # re-check a saved run
#   FAULTS=kill_pubsub,restart_redis SEED=7 scripts/chat-checker.sh
#   CLIENTS=60 SERVERS=3 ROOMS=4 WORKERS=2 SERVER_BIN=path/to/edgeloop scripts/chat-checker.sh
#
# Prints a PASS/FAIL report (also target/chat-checker/report.txt, with
# faults.log, history.jsonl and the servers' logs beside it). Exit 0 PASS,
# 1 FAIL, 2 the run could not be made. Stops by itself (about DURATION + 30 s)
# and stops everything it started, on Ctrl-C too. Needs python3 (3.11) and
# redis-server (Debian: redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-30}
SERVERS=${SERVERS:-3}
ROOMS=${ROOMS:-3}
WORKERS=${WORKERS:-1}
FAULTS=${FAULTS:-all}
OUT=${OUT:-target/chat-checker}
SERVER_BIN=${SERVER_BIN:-target/release/edgeloop}

command -v redis-server >/dev/null || { echo "error: needs redis-server (Debian: apt-get install redis-server)" >&2; exit 2; }
if [[ $SERVER_BIN == target/release/edgeloop && -z ${NO_BUILD:-} && ${1:-} != --analyse ]]; then
    echo "building edgeloop (release)..." >&2
    cargo build --release --quiet
fi
args=(--bin "$SERVER_BIN" --duration "$DURATION" --clients "$CLIENTS" --servers "$SERVERS"
      --rooms "$ROOMS" --workers "$WORKERS" --faults "$FAULTS" --out "$OUT")
[[ -n ${SEED:-} ]] && args+=(--seed "$SEED")
[[ ${SELF_TEST:-0} == 1 ]] && args+=(--self-test)
exec python3 scripts/lib/chat_checker.py "${args[@]}" "$@"
