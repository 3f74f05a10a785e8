#!/usr/bin/env python3
"""Conformance check for a chat peer: the subset of edgeloop's chat that
scripts/chat/fanout.c relies on (loopback only, every step time-bounded).

usage: check_chat.py -- SERVER [ARGS...]

Starts `SERVER [ARGS...] 127.0.0.1:0`, reads its `listening on IP:PORT` line,
then checks:
  joins      the newcomer's first line is its own `* guestN joined`, and the
             members already there receive it too
  lines      `TEXT\\n` and `TEXT\\r\\n` come back as `guestN: TEXT` to every
             member, the sender included, in the same order for everyone
  left       a member that closes is announced as `* guestN left`
  half-close a member that shuts down its write side still receives what it
             is owed, then EOF
  slow       a member that never reads is cut once its pending output passes
             4 MiB (announced as left; its connection closes), while the
             sender and a reading member carry on
  sigterm    the server exits on SIGTERM
It also works on edgeloop itself:
  check_chat.py -- target/release/edgeloop chat --chat-rate 0 --listen
Prints 'N passed, N failed'; exits 1 if any failed.
"""
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

TIMEOUT = 30


def start(cmd):
    p = subprocess.Popen(cmd + ["127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.fullmatch(r"listening on (\d+\.\d+\.\d+\.\d+):(\d+)\n", line)
    if not m:
        p.kill()
        raise SystemExit(f"bad first line from server: {line!r}")
    return p, (m.group(1), int(m.group(2)))


class Client:
    def __init__(self, addr):
        self.s = socket.create_connection(addr, timeout=5)
        self.buf = b""

    def line(self):
        """The next line, without its newline (None at EOF)."""
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                return None
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        self.s.close()


def joined(c):
    """Reads the newcomer's first line; returns its nickname."""
    first = c.line()
    m = re.fullmatch(r"\* (\S+) joined", first or "")
    assert m, f"first line {first!r}, not '* NICK joined'"
    return m.group(1)


def check_protocol(addr):
    a = Client(addr)
    na = joined(a)
    b = Client(addr)
    nb = joined(b)
    assert a.line() == f"* {nb} joined", "an existing member did not see the join"
    b.send(b"hello\r\nworld\n")
    a.send(b"from a\n")
    seen_a = [a.line() for _ in range(3)]
    seen_b = [b.line() for _ in range(3)]
    assert seen_a == seen_b, f"members saw different orders: {seen_a} vs {seen_b}"
    assert sorted(seen_a) == sorted([f"{nb}: hello", f"{nb}: world", f"{na}: from a"]), seen_a
    assert seen_a.index(f"{nb}: hello") < seen_a.index(f"{nb}: world"), seen_a
    b.close()
    assert a.line() == f"* {nb} left", "the room was not told of the leave"
    # Half-close: lines sent before the SHUT_WR are still delivered.
    c = Client(addr)
    nc = joined(c)
    assert a.line() == f"* {nc} joined"
    c.send(b"bye now\n")
    c.s.shutdown(socket.SHUT_WR)
    rest = []
    while (line := c.line()) is not None:
        rest.append(line)
    assert f"{nc}: bye now" in rest, f"half-closed member got {rest}"
    assert a.line() in (f"{nc}: bye now", f"* {nc} left")
    a.close()


def check_slow(addr):
    """One member never reads; a sender floods; a reader reads."""
    slow = Client(addr)
    ns = joined(slow)
    reader = Client(addr)
    joined(reader)
    sender = Client(addr)
    joined(sender)
    for c in (reader, sender):
        c.s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(reader.s, selectors.EVENT_READ, reader)
    sel.register(sender.s, selectors.EVENT_READ | selectors.EVENT_WRITE, sender)
    chunk = (b"x" * 1000 + b"\n") * 64
    sent = 0
    seen_left = False
    tail = b""
    deadline = time.time() + TIMEOUT
    while not seen_left and time.time() < deadline and sent < 256 << 20:
        for key, ev in sel.select(0.1):
            c = key.data
            if ev & selectors.EVENT_READ:
                try:
                    d = c.s.recv(1 << 20)
                except BlockingIOError:
                    d = b"x"
                assert d, "a reading member was disconnected"
                if c is reader:
                    data = tail + d
                    seen_left = seen_left or f"* {ns} left\n".encode() in data
                    tail = data[-64:]
            if ev & selectors.EVENT_WRITE:
                try:
                    sent += c.s.send(chunk)
                except BlockingIOError:
                    pass
    assert seen_left, f"the slow member was not cut after {sent >> 20} MiB sent"
    # Its connection ends: whatever was in flight, then EOF or a reset.
    slow.s.settimeout(10)
    got = 0
    try:
        while d := slow.s.recv(1 << 20):
            got += len(d)
            assert got < 64 << 20, "the cut member's connection did not end"
    except ConnectionResetError:
        pass
    for c in (slow, reader, sender):
        c.close()


def main():
    if "--" not in sys.argv:
        raise SystemExit(__doc__)
    cmd = sys.argv[sys.argv.index("--") + 1:]
    p, addr = start(cmd)
    passed = failed = 0
    try:
        for name, f in (("protocol", check_protocol), ("slow consumer", check_slow)):
            t = time.time()
            try:
                f(addr)
                print(f"ok    {name} ({time.time() - t:.1f} s)")
                passed += 1
            except (AssertionError, OSError) as e:
                print(f"FAIL  {name}: {e!r}")
                failed += 1
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
            print("ok    sigterm")
            passed += 1
        except subprocess.TimeoutExpired:
            print("FAIL  sigterm: still running after 10 s")
            failed += 1
    finally:
        p.kill()
        p.wait()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
