#!/usr/bin/env bash
# Build every benchmark peer whose toolchain is present into scripts/peers/bin/.
# Idempotent. With INSTALL_PEERS=1 (and root) it first installs the Debian
# toolchains for the optional peers (golang-go, erlang-base).
#
# Peers (all take one argument IP:PORT and print "listening on IP:PORT"):
#   bin/c-epoll-echo   plain C, single-threaded edge-triggered epoll (always)
#   bin/tokio-echo     tokio current-thread runtime, task per connection (cargo)
#   bin/go-echo        goroutine per connection, stdlib only (go)
#   bin/erlang-echo    gen_tcp {active, once}, process per connection (escript)
# WebSocket peers (for scripts/ws-bench.sh):
#   bin/tungstenite-echo  tokio-tungstenite, tokio current-thread runtime (cargo)
#   bin/gorilla-echo      Go, gorilla/websocket from Debian's
#                         golang-github-gorilla-websocket-dev (GOPATH mode, no module proxy)
# Tools: bin/pingpong (closed-loop echo client), check.py (conformance check).
set -uo pipefail
cd "$(dirname "$0")"
mkdir -p bin

if [[ "${INSTALL_PEERS:-0}" == 1 ]]; then
    if [[ $(id -u) == 0 ]]; then
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq golang-go erlang-base \
            golang-github-gorilla-websocket-dev >/dev/null; } ||
            echo "warning: apt-get install golang-go erlang-base golang-github-gorilla-websocket-dev failed" >&2
    else
        echo "warning: INSTALL_PEERS=1 needs root; not installing" >&2
    fi
fi

built=() skipped=() failed=()

# C: always.
if ${CC:-cc} -O2 -Wall -Wextra -o bin/c-epoll-echo c-epoll-echo.c &&
    ${CC:-cc} -O2 -Wall -Wextra -o bin/pingpong pingpong.c; then
    built+=(c-epoll-echo)
else
    failed+=(c-epoll-echo)
fi

# tokio: standalone cargo project with its own Cargo.lock.
if command -v cargo >/dev/null; then
    if cargo build --release --locked --quiet --manifest-path tokio-echo/Cargo.toml \
        --target-dir tokio-echo/target &&
        cp -f tokio-echo/target/release/tokio-echo bin/tokio-echo; then
        built+=(tokio-echo)
    else
        failed+=(tokio-echo)
    fi
else
    skipped+=("tokio-echo (no cargo)")
fi

# Go: stdlib only, no module downloads, works without $HOME.
if command -v go >/dev/null; then
    cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}"
    if (cd go-echo && GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod \
        GOCACHE="${GOCACHE:-$cache/go-build}" GOPATH="${GOPATH:-${HOME:-/tmp}/go}" \
        go build -o ../bin/go-echo .); then
        built+=(go-echo)
    else
        failed+=(go-echo)
    fi
else
    skipped+=("go-echo (no go; INSTALL_PEERS=1 installs golang-go)")
fi

# tokio-tungstenite: standalone cargo project with its own Cargo.lock.
if command -v cargo >/dev/null; then
    if cargo build --release --locked --quiet --manifest-path tungstenite-echo/Cargo.toml \
        --target-dir tungstenite-echo/target &&
        cp -f tungstenite-echo/target/release/tungstenite-echo bin/tungstenite-echo; then
        built+=(tungstenite-echo)
    else
        failed+=(tungstenite-echo)
    fi
else
    skipped+=("tungstenite-echo (no cargo)")
fi

# gorilla/websocket: Debian ships its source for GOPATH builds.
gorilla=/usr/share/gocode/src/github.com/gorilla/websocket
if command -v go >/dev/null && [[ -d $gorilla ]]; then
    cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}"
    if (cd gorilla-echo && GOTOOLCHAIN=local GO111MODULE=off GOPROXY=off GOPATH=/usr/share/gocode \
        GOCACHE="${GOCACHE:-$cache/go-build}" go build -o ../bin/gorilla-echo .); then
        built+=(gorilla-echo)
    else
        failed+=(gorilla-echo)
    fi
else
    skipped+=("gorilla-echo (no go or no $gorilla; INSTALL_PEERS=1 installs them)")
fi

# Erlang: an escript, syntax-checked and copied.
if command -v escript >/dev/null; then
    if escript -s erlang-echo.erl && cp -f erlang-echo.erl bin/erlang-echo &&
        chmod +x bin/erlang-echo; then
        built+=(erlang-echo)
    else
        failed+=(erlang-echo)
    fi
else
    skipped+=("erlang-echo (no escript; INSTALL_PEERS=1 installs erlang-base)")
fi

echo "built:   ${built[*]:-none}  (in $(pwd)/bin)"
((${#skipped[@]})) && printf 'skipped: %s\n' "${skipped[@]}"
if ((${#failed[@]})); then
    echo "FAILED:  ${failed[*]}" >&2
    exit 1
fi
exit 0
