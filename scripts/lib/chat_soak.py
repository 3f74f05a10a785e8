#!/usr/bin/env python3
"""Chat members on several chat servers sharing one Redis, checking that
every message reaches every member of its room, on every server, once, in
one order (stdlib only; the event loop of hostile.py).

    chat_soak.py --servers IP:PORT,IP:PORT [--rooms R] [--members M]
                 [--rate MSGS_PER_S] [--duration SECS] [--json FILE]

Each room `soakK` gets M members on each server (named `sK_S_I` with
`/nick`), so a room spans every server. When all have joined, every member
sends --rate messages a second (well under the chat's default flood control
of 1000 lines a second) for --duration seconds:

    NICK: SEQ T_MS CRC PADDING

(SEQ counts the sender's messages from 1, T_MS is when it was sent, CRC is
a crc32 of the sender's name, SEQ, T_MS and the padding). Every member
checks every line of its room: a sender's SEQ must be exactly one more
than the last one it saw from that sender (a gap counts the missing messages as lost; a SEQ
that goes back is a duplicate or reordering: garbled), the CRC must match
(garbled), and nobody may leave or be disconnected. Then senders stop, and
members get 15 s to receive what is still on its way; whatever has not
arrived by then is lost. Finally each room's members must have seen the
room's messages in the same order (a hash over the sequence of
(sender, SEQ) they received), which is what Redis as the sequencer promises.

Prints one line: sent, deliveries expected and received, lost, garbled,
delivery latency p50/p99/max (from send to arrival at each member, through
Redis), and exits 1 if anything was lost, garbled, out of order, or a member
was disconnected; 0 otherwise.
"""
import argparse
import collections
import hashlib
import json
import os
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import Loop  # noqa: E402

READY_WAIT = 30.0  # seconds for every member to get its name and room
DRAIN_WAIT = 15.0  # seconds after the last send for the last deliveries
REPORTS = 5


class Member:
    def __init__(self, soak, room, server, index):
        self.soak, self.room = soak, room
        self.name = f"s{room}_{server}_{index}"
        self.room_name = f"soak{room}"
        self.state = "connecting"
        self.buf = b""
        self.conn = None
        self.seq = 0
        self.last = {}  # sender -> last SEQ seen
        self.order = hashlib.blake2b(digest_size=16)
        self.received = 0

    # events of hostile.Loop's connections
    def on_open(self, conn):
        self.state = "naming"
        conn.send(f"/nick {self.name}\n".encode())

    def on_data(self, conn, data):
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self.line(line.decode("utf-8", "replace"))

    def on_eof(self, conn):
        conn.close()
        if not self.soak.closing:
            self.soak.problem("disconnected", f"{self.name}: the server closed the connection")

    def on_error(self, conn, e):
        if not self.soak.closing:
            self.soak.problem("disconnected", f"{self.name}: {e}")

    def line(self, line):
        soak = self.soak
        if self.state == "naming":
            if line.endswith(f" is now {self.name}"):
                self.state = "joining"
                self.conn.send(f"/join {self.room_name}\n".encode())
            elif line.startswith("! "):
                soak.problem("refused", f"{self.name}: /nick: {line}")
            return
        if self.state == "joining":
            if line == f"* {self.name} joined":
                self.state = "ready"
                soak.ready += 1
            elif line.startswith("! "):
                soak.problem("refused", f"{self.name}: /join: {line}")
            return
        if line.startswith("* "):
            if line.endswith(" left") or "backend" in line:
                soak.problem("room_events", f"{self.name} saw '{line}'")
            return  # joins of members still arriving
        if line.startswith("! "):
            soak.problem("refused", f"{self.name}: {line}")
            return
        nick, sep, text = line.partition(": ")
        parts = text.split(" ")
        if not sep or len(parts) != 4 or nick not in soak.rooms[self.room]:
            return soak.problem("garbled", f"{self.name}: unexpected line {line[:80]!r}")
        seq, t_ms, crc, pad = parts
        if f"{zlib.crc32(f'{nick} {seq} {t_ms} {pad}'.encode()):08x}" != crc:
            return soak.problem("garbled", f"{self.name}: bad checksum in {line[:80]!r}")
        seq = int(seq)
        last = self.last.get(nick, 0)
        if seq != last + 1:
            if seq > last + 1:
                soak.counts["lost_in_gaps"] += seq - last - 1
                soak.problem("gaps", f"{self.name}: from {nick}, {seq - last - 1} messages missing before {seq}")
            else:
                return soak.problem("garbled", f"{self.name}: from {nick}, {seq} again after {last}")
        self.last[nick] = seq
        self.received += 1
        self.order.update(f"{nick}:{seq};".encode())
        soak.latency[int((soak.now_ms() - float(t_ms)) * 10)] += 1  # in 0.1 ms

    def send_one(self):
        self.seq += 1
        pad = "x" * (self.seq % 40)
        t_ms = f"{self.soak.now_ms():.1f}"
        crc = zlib.crc32(f"{self.name} {self.seq} {t_ms} {pad}".encode())
        self.conn.send(f"{self.seq} {t_ms} {crc:08x} {pad}\n".encode())


class Soak:
    def __init__(self, args):
        self.args = args
        self.loop = Loop()
        self.t0 = time.monotonic()
        self.counts = collections.Counter()
        self.latency = collections.Counter()  # 0.1 ms -> deliveries
        self.reports = 0
        self.ready = 0
        self.closing = False
        self.sending = False
        servers = [s.rsplit(":", 1) for s in args.servers.split(",")]
        self.members = []
        self.rooms = collections.defaultdict(set)  # room -> names
        for r in range(args.rooms):
            for si, (host, port) in enumerate(servers):
                for i in range(args.members):
                    m = Member(self, r, si + 1, i)
                    m.conn = self.loop.connect((host.strip("[]"), int(port)), m)
                    self.members.append(m)
                    self.rooms[r].add(m.name)

    def now_ms(self):
        return (time.monotonic() - self.t0) * 1000

    def problem(self, kind, what):
        self.counts[kind] += 1
        if self.reports < REPORTS:
            self.reports += 1
            print(f"chat_soak: {kind}: {what}", file=sys.stderr)

    def tick(self, m):
        if self.sending and not m.conn.closed:
            m.send_one()
            self.loop.later(1.0 / self.args.rate, lambda: self.tick(m))

    def run(self):
        a = self.args
        deadline = time.monotonic() + READY_WAIT
        self.loop.run(lambda: self.ready == len(self.members) or time.monotonic() > deadline)
        if self.ready < len(self.members):
            self.problem("not_ready", f"only {self.ready} of {len(self.members)} members named and in their rooms")
            return self.finish(0.0)
        # Every member must see every other's join before messages start.
        pause_end = time.monotonic() + 1.0
        self.loop.run(lambda: time.monotonic() > pause_end)
        self.sending = True
        start = time.monotonic()
        for i, m in enumerate(self.members):
            self.loop.later(i / len(self.members) / a.rate, lambda m=m: self.tick(m))
        self.loop.run(lambda: time.monotonic() - start >= a.duration)
        self.sending = False
        sent_for = time.monotonic() - start
        drain_end = time.monotonic() + DRAIN_WAIT
        self.loop.run(lambda: self.complete() or time.monotonic() > drain_end)
        return self.finish(sent_for)

    def complete(self):
        sent = self.sent()
        return all(m.last.get(s, 0) >= sent[s] for m in self.members for s in self.rooms[m.room])

    def sent(self):
        return {m.name: m.seq for m in self.members}

    def finish(self, sent_for):
        self.closing = True
        sent = self.sent()
        c = self.counts
        c["members"] = len(self.members)
        c["sent"] = sum(sent.values())
        c["expected"] = sum(sent[s] for m in self.members for s in self.rooms[m.room])
        c["received"] = sum(m.received for m in self.members)
        # Missing at the end (never arrived), plus gaps seen on the way.
        tail = sum(max(sent[s] - m.last.get(s, 0), 0) for m in self.members for s in self.rooms[m.room])
        c["lost"] = c["expected"] - c["received"]
        c["missing_at_end"] = tail
        order_ok = True
        for r, names in self.rooms.items():
            digests = {m.order.hexdigest() for m in self.members if m.room == r}
            if len(digests) > 1:
                order_ok = False
                if not c["lost"]:
                    self.problem("order", f"room soak{r}: members saw its messages in {len(digests)} different orders")
        c["order_differs"] = 0 if order_ok else 1
        for m in self.members:
            m.conn.close()
        n = sum(self.latency.values())

        def pct(p):
            want, seen = p * n, 0
            for tenth in sorted(self.latency):
                seen += self.latency[tenth]
                if seen >= want:
                    return tenth / 10
            return None

        lat = {"p50": pct(0.5), "p99": pct(0.99), "max": max(self.latency) / 10 if n else None}
        bad = c["lost"] + c["garbled"] + c["disconnected"] + c["refused"] + c["room_events"] + c["not_ready"]
        if c["lost"] == 0 and not order_ok:
            bad += 1
        rate = c["sent"] / sent_for if sent_for else 0.0
        fields = " ".join(f"{k}={v}" for k, v in sorted(c.items()))
        print(f"chat_soak {self.args.servers}, {len(self.rooms)} rooms x {len(self.members) // max(len(self.rooms), 1)} members, "
              f"{rate:.0f} msg/s for {sent_for:.0f} s: {fields} latency_ms_p50={lat['p50']} p99={lat['p99']} max={lat['max']}",
              flush=True)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump({**c, "msgs_per_sec": rate, "seconds": sent_for, "latency_ms": lat, "ok": bad == 0}, f)
        return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", required=True, help="IP:PORT,IP:PORT: chat servers on one Redis")
    p.add_argument("--rooms", type=int, default=2)
    p.add_argument("--members", type=int, default=6, help="members of each room on each server")
    p.add_argument("--rate", type=float, default=5.0, help="messages per second from each member")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())
