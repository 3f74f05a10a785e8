#!/usr/bin/env python3
"""Open N idle TCP connections to an echo server and measure the server's RSS.

usage: idle_conns.py PID IP:PORT N [SNAPDIR]

Steps, each bounded in time:
  1. RSS of PID before (VmRSS from /proc/PID/status), after 0.5 s of rest;
  2. open N connections (blocking connects, one process: mind the fd limit;
     the soft limit is raised to the hard one; to 127.0.0.1, more than
     10 000 are spread over the source addresses 127.0.0.1, .2, ... as
     `edgeloop load` does: connect() gets only half of a source address's
     ephemeral ports cheaply), then wait until the server
     holds N more file descriptors (it has accepted them all), rest 1 s,
     read RSS: the cost of connections that never sent a byte;
  3. send one 64-byte message on every connection and read its echo, rest
     1 s, read RSS: the cost of connections that have been used and are idle
     again (servers that allocate buffers lazily pay here);
  4. close everything, with a reset (SO_LINGER 0): no TIME_WAIT is left
     to hold the ports the next run needs.
Prints one line: "rss_before_kb rss_open_kb rss_used_kb accepted echoed".
Socket buffers live in the kernel and are not in any of these figures; with
SNAPDIR, the kernel's side is recorded at the three moments as well
(SNAPDIR/before.json, opened.json, used.json: see scale.py's `snapshot`).
"""
import os
import resource
import socket
import struct
import sys
import time


# Connections per source address when spreading (see step 2).
PER_SOURCE = 10_000


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def nfds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    pid, addr, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    snapdir = sys.argv[4] if len(sys.argv) > 4 else None
    snap = lambda moment: None  # noqa: E731
    if snapdir:
        import json

        from scale import snapshot

        os.makedirs(snapdir, exist_ok=True)

        def snap(moment):
            with open(f"{snapdir}/{moment}.json", "w") as f:
                json.dump(snapshot(pid), f)
    host, port = addr.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if n + 50 > hard:
        sys.exit(f"idle_conns: {n} connections need more than the fd limit {hard}")

    time.sleep(0.5)
    before = rss_kb(pid)
    fds0 = nfds(pid)
    snap("before")

    socks = []
    deadline = time.monotonic() + 60
    spread = host == "127.0.0.1" and n > PER_SOURCE
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        if spread:
            s.bind((f"127.0.0.{1 + i // PER_SOURCE}", 0))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((host, int(port)))
        socks.append(s)
        if time.monotonic() > deadline:
            sys.exit(f"idle_conns: only {len(socks)} connections in 60 s")
    # Wait (<= 20 s) until the server has accepted them all.
    deadline = time.monotonic() + 20
    while nfds(pid) - fds0 < n and time.monotonic() < deadline:
        time.sleep(0.05)
    accepted = nfds(pid) - fds0
    time.sleep(1)
    opened = rss_kb(pid)
    snap("opened")

    msg = b"x" * 63 + b"\n"
    for s in socks:
        s.sendall(msg)
    echoed = 0
    for s in socks:
        got = b""
        try:
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        echoed += got == msg
    time.sleep(1)
    used = rss_kb(pid)
    snap("used")
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    print(before, opened, used, accepted, echoed)


if __name__ == "__main__":
    main()
