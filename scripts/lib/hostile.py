#!/usr/bin/env python3
"""Hostile clients for an edgeloop echo or chat server (stdlib only).

    hostile.py --connect IP:PORT --mode MODE [--server echo|chat]
               [--framing F] [--max-frame BYTES] [--conns N] [--rate R]
               [--duration SECS] [--seed N] [--json FILE]

One process runs one mode for --duration seconds on non-blocking sockets
(one `selectors` loop, timers on a heap), then stops by itself, prints a
one-line summary and exits 0 — or 1 if something happened that the server
promises cannot happen (a byte echoed wrong or lost, a connection the server
had no reason to close closed, a connect refused): each such event is
described on stderr (the first few) and counted as `unexpected`.
`scripts/soak.sh` runs several at once against echo and chat servers.

The modes, and why each exists:

  slowloris  --conns connections that each send one byte every 100 ms and
             never finish quickly: on echo (length-prefixed framing) a frame
             whose header announces 50-600 bytes, dribbled out; on chat a line
             that never ends. A server that blocks on one peer, holds a thread
             per peer or reserves a frame's announced length up front shows
             it here. On echo each frame, when it finally completes, must come
             back exactly; then the next one starts.
  flood      --conns connections that write as fast as the socket accepts and
             read slowly (--rate bytes per second each, default 256 KiB/s):
             the echo server must stop reading them once their unread echoes
             pass --max-outbuf and resume as they drain (flow control), with
             memory bounded and nothing lost. Every echoed byte is compared
             with what was sent. Each connection lives 30 s, then
             half-closes and must get every remaining byte back before end
             of stream; then a new one starts.
  storm      connections opened at --rate per second (at most --conns at a
             time) and closed at once: a quarter closed normally and a quarter
             with a reset (SO_LINGER 0) before sending anything; the rest
             after one frame and its echo (checked), again half normally,
             half with a reset. The accept and close paths, descriptors given
             back, nothing left behind by a peer that vanishes.
  malformed  (echo, framing 1|2|4) connections at --rate per second, each
             sending one kind of bad or awkward input, in turn: a length
             header over --max-frame (the server must close without echoing
             anything), zero-length frames between short ones (valid: echoed),
             a frame split into single-byte writes (echoed whole), and random
             bytes (whatever comes back must be a prefix of what was sent;
             the server may close).
  garbage    --conns connections each sending --rate lines per second of junk.
             Chat: binary bytes, invalid UTF-8, NUL bytes, malformed and
             unknown commands, long and empty lines, CRLF, lines split across
             writes (after `/join junk`, so the junk stays in its own room);
             everything the server sends back is read and dropped, and it
             must not close them. Echo: random bytes, and what comes back
             must be a prefix of what was sent.
"""
import argparse
import collections
import json
import random
import resource
import sys
import time

from hostile_loop import Conn, Loop, Expect, frame, printable  # scripts/lib/hostile_loop.py

SLOW_INTERVAL = 0.1  # slowloris: one byte this often
FLOOD_LIFE = 30.0  # flood: seconds before a connection half-closes
FLOOD_FRAME = 1024  # flood: payload bytes per frame
DRAIN_WAIT = 20.0  # at the end: how long flood connections may take to drain
ECHO_WAIT = 10.0  # storm/malformed: how long an echo (or a close) may take
REPORTS = 5  # unexpected events described on stderr


# ---- the modes


class Mode:
    """What every mode shares: its counters, the `unexpected` record, the
    address, and whether it is still running."""

    def __init__(self, loop, args):
        self.loop, self.args, self.rng = loop, args, random.Random(args.seed)
        host, port = args.connect.rsplit(":", 1)
        self.addr = (host.strip("[]"), int(port))
        self.counts = collections.Counter()
        self.running = True
        self.reports = 0

    def unexpected(self, what):
        self.counts["unexpected"] += 1
        if self.reports < REPORTS:
            self.reports += 1
            print(f"hostile {self.args.mode}: unexpected: {what}", file=sys.stderr)

    def open(self):
        self.counts["opened"] += 1
        return self.loop.connect(self.addr, self)

    # Defaults: a connection the server closes or resets is unexpected.
    def on_open(self, conn):
        pass

    def on_data(self, conn, data):
        self.counts["bytes_in"] += len(data)

    def on_eof(self, conn):
        conn.close()
        if self.running:
            self.unexpected("the server closed a connection")

    def on_error(self, conn, e):
        if conn.connecting:
            self.counts["connect_failed"] += 1
            self.unexpected(f"connect failed: {e}")
        elif self.running:
            self.counts["reset"] += 1
            self.unexpected(f"connection error: {e}")
        if self.running:
            self.replace(conn)

    def replace(self, conn):
        """A persistent mode opens a new connection in place of a lost one."""

    def start(self):
        raise NotImplementedError

    def stop(self):
        """The duration is over: close what is open."""
        self.running = False

    def done(self):
        return self.loop.live == 0

    def summary(self):
        return dict(self.counts)


class Slowloris(Mode):
    def start(self):
        self.conns = []
        for i in range(self.args.conns):
            # Staggered: the connections' bytes are spread over the interval.
            self.loop.later(SLOW_INTERVAL * i / self.args.conns, self.add)

    def add(self):
        if self.running:
            conn = self.open()
            self.conns.append(conn)

    def replace(self, conn):
        self.loop.later(1.0, self.add)

    def on_open(self, conn):
        conn.state.update(expect=Expect(), ends=collections.deque(), recvd=0, pushed=0)
        self.next_frame(conn)
        self.loop.later(SLOW_INTERVAL, lambda: self.dribble(conn))

    def next_frame(self, conn):
        if self.args.server == "chat":
            conn.state["todo"] = None  # a line that never ends
            return
        n = self.rng.randint(50, 600)
        wire = frame(self.args.framing, printable(self.rng, n))
        conn.state["todo"] = memoryview(wire)
        conn.state["expect"].push(wire)
        conn.state["pushed"] += len(wire)
        conn.state["ends"].append(conn.state["pushed"])

    def dribble(self, conn):
        if conn.closed or not self.running:
            return
        todo = conn.state["todo"]
        if todo is None:
            conn.send(printable(self.rng, 1))
        else:
            conn.send(todo[:1])
            conn.state["todo"] = todo = todo[1:]
            if not len(todo):
                self.counts["frames_sent"] += 1
                self.next_frame(conn)
        self.counts["bytes_out"] += 1
        self.loop.later(SLOW_INTERVAL, lambda: self.dribble(conn))

    def on_data(self, conn, data):
        super().on_data(conn, data)
        if self.args.server == "chat":
            return  # lobby announcements: read and dropped
        st = conn.state
        bad = st["expect"].take(data)
        if bad:
            self.counts["mismatch"] += 1
            self.unexpected(f"echo differs: {bad}")
            conn.close()
            return self.replace(conn)
        st["recvd"] += len(data)
        while st["ends"] and st["recvd"] >= st["ends"][0]:
            st["ends"].popleft()
            self.counts["frames_echoed"] += 1

    def stop(self):
        super().stop()
        for conn in self.conns:
            conn.close()


class Flood(Mode):
    def start(self):
        self.conns = set()
        self.frame_no = 0
        self.filler = printable(self.rng, FLOOD_FRAME)
        for i in range(self.args.conns):
            self.loop.later(i * FLOOD_LIFE / max(self.args.conns, 1), self.add)

    def add(self):
        if self.running:
            conn = self.open()
            conn.state.update(expect=Expect(), tokens=0.0, at=time.monotonic(), writing=True, draining=False)
            self.conns.add(conn)

    def replace(self, conn):
        self.conns.discard(conn)
        self.loop.later(1.0, self.add)

    def on_open(self, conn):
        conn.state["born"] = time.monotonic()
        self.loop.later(FLOOD_LIFE, lambda: self.drain(conn))
        self.write_more(conn)

    def batch(self):
        """64 frames, each numbered, so a lost, repeated or reordered frame
        shows as a difference."""
        out = bytearray()
        for _ in range(64):
            self.frame_no += 1
            payload = self.frame_no.to_bytes(8, "big") + self.filler[8:]
            out += frame(self.args.framing, payload)
        return bytes(out)

    def write_more(self, conn):
        # Keep the socket full: a new batch whenever the last one was taken.
        while conn.state["writing"] and not conn.closed and not conn.out:
            data = self.batch()
            conn.state["expect"].push(data)
            self.counts["bytes_out"] += len(data)
            conn.send(data)
            if conn.out:
                self.counts["blocked_writes"] += 1
        if conn.state["writing"] and not conn.closed:
            self.loop.later(0.01, lambda: self.write_more(conn))

    def on_data(self, conn, data):
        super().on_data(conn, data)
        bad = conn.state["expect"].take(data)
        if bad:
            self.counts["mismatch"] += 1
            self.unexpected(f"echo differs: {bad}")
            conn.close()
            return self.replace(conn)
        if not conn.state["draining"]:
            # Read slowly: a token bucket of --rate bytes per second.
            now = time.monotonic()
            st = conn.state
            st["tokens"] = min(st["tokens"] + (now - st["at"]) * self.args.rate, self.args.rate) - len(data)
            st["at"] = now
            if st["tokens"] < 0:
                conn.pause(True)
                self.loop.later(-st["tokens"] / self.args.rate, lambda: conn.pause(False))

    def drain(self, conn):
        """Stop writing, half-close, read everything back at full speed."""
        if conn.closed:
            return
        conn.state.update(writing=False, draining=True)
        conn.pause(False)

        def when_flushed():
            if conn.closed:
                return
            if conn.out:
                return self.loop.later(0.01, when_flushed)
            conn.shutdown_write()

        when_flushed()

    def on_eof(self, conn):
        conn.close()
        self.conns.discard(conn)
        left = conn.state["expect"].pending
        if conn.state["draining"] and left == 0:
            self.counts["cycles_ok"] += 1
        else:
            self.counts["lost_bytes"] += left
            self.unexpected(f"end of stream with {left} bytes not echoed" if conn.state["draining"]
                            else "the server closed a flooding connection")
        if self.running:
            self.add()

    def stop(self):
        super().stop()
        for conn in list(self.conns):
            if conn.connecting:
                conn.close()
                self.conns.discard(conn)
            elif not conn.state["draining"]:
                self.drain(conn)

    def done(self):
        # Draining connections get DRAIN_WAIT seconds (see main) to finish.
        return not self.conns or self.loop.live == 0


class OneShot(Mode):
    """Modes that open short connections at --rate per second, at most --conns
    at a time, each with a deadline (ECHO_WAIT) for what it waits for."""

    def start(self):
        self.active = 0
        self.tick()

    def tick(self):
        if not self.running:
            return
        if self.active < self.args.conns:
            self.active += 1
            conn = self.open()
            conn.state["expect"] = Expect()
            conn.state["case"] = self.counts["opened"]
            self.loop.later(ECHO_WAIT, lambda: self.timeout(conn))
        else:
            self.counts["skipped"] += 1  # the server is slow to answer
        gap = 1.0 / self.args.rate
        self.loop.later(gap, self.tick)

    def finish(self, conn, reset=False):
        if not conn.closed:
            conn.close(reset)
        if not conn.state.get("finished"):
            conn.state["finished"] = True
            self.active -= 1

    def timeout(self, conn):
        if not conn.closed:
            self.on_timeout(conn)
            self.finish(conn)

    def on_timeout(self, conn):
        self.unexpected(f"no answer within {ECHO_WAIT:.0f} s")

    def on_error(self, conn, e):
        super().on_error(conn, e)
        self.finish(conn)

    def done(self):
        return self.active == 0


class Storm(OneShot):
    def on_open(self, conn):
        case = conn.state["case"] % 4
        if case == 0:
            self.counts["closed_at_once"] += 1
            return self.finish(conn)
        if case == 1:
            self.counts["reset_at_once"] += 1
            return self.finish(conn, reset=True)
        if self.args.server == "chat":
            wire = b"storm " + printable(self.rng, 20) + b"\n"
        else:
            wire = frame(self.args.framing, printable(self.rng, self.rng.randint(1, 1000)))
            conn.state["expect"].push(wire)
        conn.send(wire)
        self.counts["bytes_out"] += len(wire)
        if self.args.server == "chat":
            # Nothing to check: leave after the line is written.
            self.counts["closed_after_line"] += 1
            return self.loop.later(0.05, lambda: self.finish(conn, reset=case == 3))

    def on_data(self, conn, data):
        super().on_data(conn, data)
        if self.args.server == "chat":
            return
        bad = conn.state["expect"].take(data)
        if bad:
            self.counts["mismatch"] += 1
            self.unexpected(f"echo differs: {bad}")
            return self.finish(conn)
        if conn.state["expect"].pending == 0:
            reset = conn.state["case"] % 4 == 3
            self.counts["reset_after_echo" if reset else "closed_after_echo"] += 1
            self.finish(conn, reset)

    def on_eof(self, conn):
        super().on_eof(conn)
        self.finish(conn)


class Malformed(OneShot):
    CASES = ("oversized", "zero_length", "split", "garbage")

    def on_open(self, conn):
        case = self.CASES[conn.state["case"] % len(self.CASES)]
        conn.state["kind"] = case
        width = int(self.args.framing)
        exp = conn.state["expect"]
        if case == "oversized":
            # A header announcing more than --max-frame: closed at once,
            # nothing echoed, no memory reserved for it.
            n = self.rng.randint(self.args.max_frame + 1, (1 << (8 * width)) - 1)
            conn.send(n.to_bytes(width, "big") + printable(self.rng, 100))
        elif case == "zero_length":
            wire = b"".join(frame(self.args.framing, b"" if i % 2 == 0 else printable(self.rng, 5)) for i in range(8))
            exp.push(wire)
            conn.send(wire)
        elif case == "split":
            wire = frame(self.args.framing, printable(self.rng, self.rng.randint(1, 200)))
            exp.push(wire)
            conn.state["todo"] = memoryview(wire)
            self.trickle(conn)
        else:
            wire = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 300)))
            conn.state["sent"] = wire
            conn.state["got"] = bytearray()
            conn.send(wire)
            # Whatever comes back within a second is checked; then leave.
            self.loop.later(1.0, lambda: self.settle(conn))
        self.counts[case] += 1

    def trickle(self, conn):
        """One byte per write, 2 ms apart: every split point of the frame."""
        if conn.closed:
            return
        todo = conn.state["todo"]
        conn.send(todo[:1])
        conn.state["todo"] = todo[1:]
        if len(conn.state["todo"]):
            self.loop.later(0.002, lambda: self.trickle(conn))

    def settle(self, conn):
        if not conn.closed:
            self.counts["garbage_ok"] += 1
            self.finish(conn)

    def on_data(self, conn, data):
        super().on_data(conn, data)
        kind = conn.state["kind"]
        if kind == "oversized":
            self.counts["mismatch"] += 1
            self.unexpected(f"{len(data)} bytes echoed after an oversized length header")
            return self.finish(conn)
        if kind == "garbage":
            got = conn.state["got"]
            got += data
            if not conn.state["sent"].startswith(bytes(got)):
                self.counts["mismatch"] += 1
                self.unexpected("garbage came back as something that was not sent")
                self.finish(conn)
            return
        bad = conn.state["expect"].take(data)
        if bad:
            self.counts["mismatch"] += 1
            self.unexpected(f"{kind}: echo differs: {bad}")
            return self.finish(conn)
        if conn.state["expect"].pending == 0:
            self.counts[f"{kind}_ok"] += 1
            self.finish(conn, reset=(conn.state["case"] // len(self.CASES)) % 2 == 1)

    def on_eof(self, conn):
        kind = conn.state["kind"]
        conn.close()
        if kind == "oversized":
            self.counts["oversized_closed"] += 1
        elif kind == "garbage":
            self.counts["garbage_closed"] += 1  # a header over the limit, likely
        elif self.running:
            self.unexpected(f"{kind}: the server closed the connection")
        self.finish(conn)

    def on_error(self, conn, e):
        if not conn.connecting and conn.state.get("kind") in ("oversized", "garbage"):
            # A reset is an acceptable way to refuse the frame.
            self.counts[f"{conn.state['kind']}_closed"] += 1
            return self.finish(conn)
        super().on_error(conn, e)

    def on_timeout(self, conn):
        kind = conn.state.get("kind")
        if kind == "oversized":
            self.unexpected(f"an oversized length header was not refused within {ECHO_WAIT:.0f} s")
        else:
            self.unexpected(f"{kind}: no echo within {ECHO_WAIT:.0f} s")


class Garbage(Mode):
    COMMANDS = [b"/nick", b"/nick a b", b"/join", b"/join a b", b"/who x", b"/quit x", b"/NICK x",
                b"/frobnicate", b"/nick " + b"n" * 40, b"/join bad!room", b"/nick \xc3\xa9t\xc3\xa9", b"/"]

    def start(self):
        self.conns = []
        for i in range(self.args.conns):
            self.loop.later(i / max(self.args.conns, 1), self.add)

    def add(self):
        if self.running:
            self.conns.append(self.open())

    def replace(self, conn):
        self.loop.later(1.0, self.add)

    def on_open(self, conn):
        if self.args.server == "chat":
            conn.send(b"/join junk\n")
        else:
            conn.state["sent"], conn.state["got"] = bytearray(), 0
        self.loop.later(self.rng.random() / self.args.rate, lambda: self.emit(conn))

    def line(self):
        r = self.rng.random()
        if r < 0.3:
            body = bytes(self.rng.choice(range(256)) for _ in range(self.rng.randint(1, 200))).replace(b"\n", b"")
        elif r < 0.4:
            body = b"nul\x00byte"
        elif r < 0.55:
            body = self.rng.choice(self.COMMANDS)
        elif r < 0.65:
            body = printable(self.rng, self.rng.randint(2000, 8000))
        elif r < 0.7:
            body = b""
        else:
            body = "junk \u00e9\u4e2d\U0001f600 ".encode() + printable(self.rng, self.rng.randint(0, 80))
        if body.startswith(b"/") and body[1:5] in (b"quit", b"join", b"nick") and body not in self.COMMANDS:
            body = b"x" + body  # never a valid command by chance
        return body + (b"\r\n" if self.rng.random() < 0.3 else b"\n")

    def emit(self, conn):
        if conn.closed or not self.running:
            return
        if self.args.server == "chat":
            data = self.line()
        else:
            data = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 200)))
            conn.state["sent"] += data
        # Sometimes in two writes, split anywhere.
        cut = self.rng.randint(0, len(data)) if self.rng.random() < 0.3 else len(data)
        conn.send(data[:cut])
        if cut < len(data):
            self.loop.later(0.005, lambda: conn.send(data[cut:]))
        self.counts["lines" if self.args.server == "chat" else "writes"] += 1
        self.counts["bytes_out"] += len(data)
        self.loop.later(1.0 / self.args.rate, lambda: self.emit(conn))

    def on_data(self, conn, data):
        super().on_data(conn, data)
        if self.args.server == "chat":
            self.counts["error_replies"] += data.count(b"\n! ") + data.startswith(b"! ")
            return
        got = conn.state["got"]
        if bytes(conn.state["sent"][got : got + len(data)]) != data:
            self.counts["mismatch"] += 1
            self.unexpected("echoed bytes are not what was sent")
            conn.close()
            return self.replace(conn)
        conn.state["got"] += len(data)

    def on_eof(self, conn):
        if self.args.server == "echo":
            # Echo: random bytes read as a length header over the limit are
            # refused by closing; start again.
            self.counts["closed_by_server"] += 1
            conn.close()
            return self.replace(conn)
        super().on_eof(conn)
        self.replace(conn)

    def on_error(self, conn, e):
        if self.args.server == "echo" and not conn.connecting:
            self.counts["closed_by_server"] += 1
            conn.close()
            return self.replace(conn)
        super().on_error(conn, e)

    def stop(self):
        super().stop()
        for conn in self.conns:
            conn.close()


MODES = {"slowloris": Slowloris, "flood": Flood, "storm": Storm, "malformed": Malformed, "garbage": Garbage}
DEFAULTS = {  # mode: (conns, rate)
    "slowloris": (200, 0),
    "flood": (2, 256 * 1024),
    "storm": (50, 50),
    "malformed": (20, 10),
    "garbage": (10, 5),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connect", required=True, metavar="IP:PORT")
    p.add_argument("--mode", required=True, choices=sorted(MODES))
    p.add_argument("--server", choices=("echo", "chat"), default="echo")
    p.add_argument("--framing", default="4", choices=("raw", "line", "1", "2", "4"), help="echo server's framing")
    p.add_argument("--max-frame", type=int, default=1048576, help="the server's --max-frame")
    p.add_argument("--conns", type=int, help="connections (slowloris, flood, garbage) or at most at a time (storm, malformed)")
    p.add_argument("--rate", type=float, help="storm/malformed: connections per second; garbage: lines per second "
                   "per connection; flood: bytes read per second per connection")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="also write the counts as JSON")
    args = p.parse_args()
    conns, rate = DEFAULTS[args.mode]
    args.conns = conns if args.conns is None else args.conns
    args.rate = rate if args.rate is None else args.rate
    if args.mode == "malformed" and (args.server != "echo" or args.framing not in ("1", "2", "4")):
        p.error("--mode malformed needs an echo server with a length-prefixed framing (1, 2 or 4)")
    if args.mode == "flood" and args.server != "echo":
        p.error("--mode flood is for the echo server (a chat server disconnects a member that does not read)")
    if args.mode in ("storm", "malformed", "garbage", "flood") and args.rate <= 0:
        p.error("--rate must be more than 0")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    loop = Loop()
    mode = MODES[args.mode](loop, args)
    t0 = time.monotonic()
    mode.start()
    loop.run(lambda: time.monotonic() - t0 >= args.duration)
    mode.stop()
    end = time.monotonic() + DRAIN_WAIT
    loop.run(lambda: mode.done() or time.monotonic() >= end)
    if not mode.done():
        mode.unexpected(f"{loop.live} connections still busy {DRAIN_WAIT:.0f} s after the end")
    counts = mode.summary()
    counts.setdefault("unexpected", 0)
    elapsed = time.monotonic() - t0
    fields = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"hostile {args.mode} -> {args.connect} ({args.server}), {elapsed:.0f} s: {fields}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": args.mode, "server": args.server, "connect": args.connect, "seconds": elapsed, **counts}, f)
    return 1 if counts["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
