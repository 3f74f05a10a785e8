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
# Chat peers (one room; the subset of edgeloop's chat that scripts/chat/fanout.c
# speaks; see each one's header):
#   bin/tokio-chat     tokio current-thread, Rc<RefCell<>> room, a task per member (cargo)
#   bin/go-chat        mutex-guarded room, reader + writer goroutine per member (go)
#   bin/erlang-chat    one room process owning the sockets, port_command nosuspend (escript)
# Tools: bin/pingpong (closed-loop echo client), check.py (echo conformance
# check), check_chat.py (chat conformance check).
# With TCPKALI=1, also bin/tcpkali (the load generator scripts/loadgen-cost.sh
# and scripts/ws-bench.sh compare with; Debian has no package): cloned from
# TCPKALI_SRC (default https://github.com/satori-com/tcpkali, or a local
# clone) and built with autotools (INSTALL_PEERS=1 installs autoconf,
# automake, libtool, bison and flex).
set -uo pipefail
cd "$(dirname "$0")"
mkdir -p bin

if [[ "${INSTALL_PEERS:-0}" == 1 ]]; then
    if [[ $(id -u) == 0 ]]; then
        export DEBIAN_FRONTEND=noninteractive
        tools=()
        [[ ${TCPKALI:-0} == 1 ]] && tools=(autoconf automake libtool bison flex)
        { apt-get update -qq && apt-get install -y -qq golang-go erlang-base \
            golang-github-gorilla-websocket-dev "${tools[@]}" >/dev/null; } ||
            echo "warning: apt-get install golang-go erlang-base golang-github-gorilla-websocket-dev ${tools[*]} failed" >&2
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

# tokio: standalone cargo projects, each with its own Cargo.lock.
for p in tokio-echo tokio-chat; do
    if ! command -v cargo >/dev/null; then
        skipped+=("$p (no cargo)")
    elif cargo build --release --locked --quiet --manifest-path $p/Cargo.toml \
        --target-dir $p/target &&
        cp -f $p/target/release/$p bin/$p; then
        built+=($p)
    else
        failed+=($p)
    fi
done

# Go: stdlib only, no module downloads, works without $HOME.
cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}"
for p in go-echo go-chat; do
    if ! command -v go >/dev/null; then
        skipped+=("$p (no go; INSTALL_PEERS=1 installs golang-go)")
    elif (cd $p && GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod \
        GOCACHE="${GOCACHE:-$cache/go-build}" GOPATH="${GOPATH:-${HOME:-/tmp}/go}" \
        go build -o ../bin/$p .); then
        built+=($p)
    else
        failed+=($p)
    fi
done

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

# Erlang: escripts, syntax-checked and copied.
for p in erlang-echo erlang-chat; do
    if ! command -v escript >/dev/null; then
        skipped+=("$p (no escript; INSTALL_PEERS=1 installs erlang-base)")
    elif escript -s $p.erl && cp -f $p.erl bin/$p && chmod +x bin/$p; then
        built+=($p)
    else
        failed+=($p)
    fi
done

if [[ ${TCPKALI:-0} == 1 ]]; then
    # Out of the source tree's way, in the workspace's target directory.
    src=../../target/tcpkali-src
    if ! command -v autoreconf >/dev/null; then
        skipped+=("tcpkali (no autoreconf; INSTALL_PEERS=1 installs autotools)")
    # glibc 2.32 dropped <sys/sysctl.h>, which tcpkali includes and does
    # not use on Linux: an empty one in compat/ stands in for it.
    elif { [[ -d $src ]] || git clone -q "${TCPKALI_SRC:-https://github.com/satori-com/tcpkali}" "$src"; } &&
        (cd "$src" && mkdir -p compat/sys && touch compat/sys/sysctl.h &&
            { [[ -x configure ]] || autoreconf -i >/dev/null 2>&1; } &&
            { [[ -f Makefile ]] || ./configure -q >/dev/null; } &&
            make -s -j"$(nproc)" CPPFLAGS="-I$PWD/compat" >/dev/null 2>&1) &&
        cp -f "$src/src/tcpkali" bin/tcpkali; then
        built+=(tcpkali)
    else
        failed+=(tcpkali)
    fi
fi

echo "built:   ${built[*]:-none}  (in $(pwd)/bin)"
((${#skipped[@]})) && printf 'skipped: %s\n' "${skipped[@]}"
if ((${#failed[@]})); then
    echo "FAILED:  ${failed[*]}" >&2
    exit 1
fi
exit 0
