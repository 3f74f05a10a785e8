#!/usr/bin/env python3
"""Conformance check for an echo peer (loopback only, every step time-bounded).

usage: check.py [--conns N] -- SERVER [ARGS...]

Starts `SERVER [ARGS...] 127.0.0.1:0`, reads its `listening on IP:PORT` line,
then checks: bulk echo of 8 MiB with concurrent write/read, a 16 MiB pipelined
burst read late (pending-output limit; server RSS reported), half-close
(4 MiB then SHUT_WR -> all 4 MiB then EOF), N concurrent connections doing
ping-pongs, abortive closes (RST) while the server writes (no SIGPIPE death),
and a clean exit on SIGTERM.  Prints 'N passed, N failed'.
"""
import argparse
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

TIMEOUT = 60


def start(cmd):
    p = subprocess.Popen(cmd + ["127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.fullmatch(r"listening on (\d+\.\d+\.\d+\.\d+):(\d+)\n", line)
    if not m:
        p.kill()
        raise SystemExit(f"bad first line from server: {line!r}")
    return p, (m.group(1), int(m.group(2)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def connect(addr):
    s = socket.create_connection(addr, timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact_then_eof(s, n, expect_eof):
    chunks, got = [], 0
    while got < n:
        b = s.recv(min(1 << 20, n - got))
        if not b:
            break
        chunks.append(b)
        got += len(b)
    data = b"".join(chunks)
    eof = None
    if expect_eof:
        eof = s.recv(1) == b""
    return data, eof


def bulk(addr, size, read_delay=0.0, pid=None):
    payload = os.urandom(size)
    s = connect(addr)
    err = []

    def writer():
        try:
            s.sendall(payload)
        except Exception as e:  # pragma: no cover
            err.append(e)

    t = threading.Thread(target=writer)
    t.start()
    peak = None
    if read_delay:
        time.sleep(read_delay)
        if pid:
            peak = rss_kib(pid)
    data, _ = recv_exact_then_eof(s, size, False)
    t.join(TIMEOUT)
    s.close()
    return data == payload and not err, peak


def half_close(addr, size):
    payload = os.urandom(size)
    s = connect(addr)
    res = {}

    def reader():
        res["r"] = recv_exact_then_eof(s, size, True)

    t = threading.Thread(target=reader)
    t.start()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    t.join(TIMEOUT)
    s.close()
    data, eof = res.get("r", (b"", False))
    return data == payload and eof


def many(addr, n, rounds, msg=b"x" * 100):
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(addr)
        socks.append(s)
    state = {}
    for s in socks:
        state[s] = [0, 0]  # rounds done, bytes received this round
        sel.register(s, selectors.EVENT_WRITE)
    done = 0
    deadline = time.time() + TIMEOUT
    while done < n and time.time() < deadline:
        for key, ev in sel.select(1.0):
            s = key.fileobj
            st = state[s]
            if ev & selectors.EVENT_WRITE:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    return False
                s.send(msg)
                sel.modify(s, selectors.EVENT_READ)
                continue
            b = s.recv(65536)
            if not b:
                return False
            st[1] += len(b)
            if st[1] == len(msg):
                st[0] += 1
                st[1] = 0
                if st[0] == rounds:
                    done += 1
                    sel.unregister(s)
                else:
                    s.send(msg)
    for s in socks:
        s.close()
    return done == n


def rst_storm(addr, n=50):
    for _ in range(n):
        s = connect(addr)
        try:
            s.sendall(os.urandom(1 << 20))
        except OSError:
            pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.2)
    ok, _ = bulk(addr, 1000)
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("cmd", nargs="+")
    a = ap.parse_args()
    p, addr = start(a.cmd)
    results = []

    def run(name, fn):
        t0 = time.time()
        try:
            ok = fn()
        except Exception as e:
            ok = False
            name += f" ({e!r})"
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'} {name} [{time.time() - t0:.2f}s]", flush=True)

    try:
        print(f"server {' '.join(a.cmd)} on {addr[0]}:{addr[1]}, rss {rss_kib(p.pid)} KiB")
        run("bulk 8 MiB concurrent write/read", lambda: bulk(addr, 8 << 20)[0])

        def late():
            ok, peak = bulk(addr, 16 << 20, read_delay=1.0, pid=p.pid)
            print(f"     server RSS while client not reading: {peak} KiB")
            return ok

        run("16 MiB pipelined, client reads after 1 s", late)
        run("half-close 4 MiB then SHUT_WR", lambda: half_close(addr, 4 << 20))
        run(f"{a.conns} concurrent connections x 5 ping-pongs", lambda: many(addr, a.conns, 5))
        run("RST storm while server writes, then still alive", lambda: rst_storm(addr))
        print(f"     server RSS after tests: {rss_kib(p.pid)} KiB")
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        results.append(rc == 0)
        print(f"{'PASS' if rc == 0 else 'FAIL'} exit on SIGTERM (rc={rc})")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
