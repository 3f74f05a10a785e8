#!/usr/bin/env python3
"""A Jepsen-style checker for the chat across servers (issue 16), stdlib only.

    chat_checker.py --bin target/release/edgeloop [--duration 60]
                    [--clients 30] [--servers 3] [--rooms 3]
                    [--faults all|none|KIND,KIND...] [--seed N] [--out DIR]
                    [--self-test]
    chat_checker.py --analyse OUT/history.jsonl

It starts its own `redis-server` on a free loopback port and SERVERS chat
servers on it (`edgeloop chat --redis redis://127.0.0.1:PORT --listen
127.0.0.1:0`), connects CLIENTS clients spread over the servers, lets them
talk for DURATION seconds while it injects faults, then checks the whole
history against SPEC.md ("Chat server", "Chat across servers") and prints a
PASS/FAIL report. Exit status: 0 PASS, 1 FAIL, 2 the run itself could not be
done (a server did not start...). Everything it starts is stopped at the end,
on Ctrl-C and on SIGTERM; it touches only 127.0.0.1.

# The clients

Client `cK` connects (one at a time, so its first line is its own
`* guestN joined` in `lobby`), goes to its room (`lobby`, `r1`, `r2`, ...,
spread evenly), then, with a random pause of 30-250 ms between actions:
82 % a message, 6 % `/who`, 6 % `/nick NAME` (NAME from a pool of about as
many names as clients, so names collide often, and sometimes `guestK`, a
name the server's own counter will reach), 6 % `/join` another room.
Every message's text is unique and names its sender and the room the
sender is in: `c12-r1-n345`. A client is stop-and-wait: it sends a line only
once the previous one has its outcome (its own line back, an answer, or a
`!` line), so every `!` line is the answer to exactly one known line; after
OUTCOME_WAIT (40 s) without an outcome the line is recorded as having none
and the client goes on. Every line sent and received is recorded with its
time (one monotonic clock for the whole process, so times of different
clients compare). After DURATION the faults stop, every process runs again,
each client waits (at most 30 s) to be told `* chat backend restored` if it
was told `unavailable`, sends one last message (so that every earlier loss
sits between two lines it received), waits 5 s, sends `/who`; then one new
client per server (`pS`) connects, sends a line and `/who` (the server is
alive and answering), and the servers are stopped with SIGTERM (exit 0
expected).

# The fault model (FAULTS=all, the default; FAULTS=none for a clean run)

From 3 s into the run until HEAL (10 s) before its end, one fault every
1.5-6 s, the first ones covering every kind once (in random order), then
kinds at random:

  pause_server_short  SIGSTOP one chat server for 0.5-3 s, then SIGCONT;
  pause_server_long   SIGSTOP one chat server for 8-15 s (past the 6 s
                      liveness TTL: the others reap it), then SIGCONT;
  pause_redis         SIGSTOP redis-server for 0.2-4 s, then SIGCONT;
  kill_pubsub         CLIENT KILL TYPE pubsub (every subscription drops);
  kill_normal         CLIENT KILL TYPE normal (every command link drops);
  restart_redis       SHUTDOWN NOSAVE, 0.2-3 s down, started again on the
                      same port, empty;
  script_flush        SCRIPT FLUSH.

Pauses and restarts run beside the other faults, but one chat server paused
at a time and one Redis pause or restart at a time (a fault whose kind is
busy waits its turn); every fault is logged with its time (OUT/faults.log
and the report). The whole run is bounded (DURATION + 30 s + 8 outcome
waits + 60 s at most, then it gives up with status 2).

# The invariants (each a rule of SPEC.md; what SPEC allows is tolerated)

1. One order per room. For each room, the sequences of that room's message
   lines received by its members (each member's, in the order received) are
   all consistent with one total order (no member sees a before b while
   another sees b before a, no cycle). Built from them, the room's order.
   A member receives that order restricted to its membership, without
   holes: a line missing between two lines it received ("lost") is allowed
   only where it was told `* some lines may have been lost` (at that place),
   or where the room was told the member had left (`* NICK left` while it
   had not asked to leave: a server reaped after a long pause) until it was
   announced `* NICK joined` again. `* chat backend unavailable` / `restored`
   do not excuse a hole: SPEC wants what was missed replayed.
   Where the members' sequences leave two lines' order open (Redis lost
   it: each sender got its own line back just before its gap notice, and
   nobody else got either), a missing line is a hole only if every order
   they allow puts it away from the member's gap notices.
   Membership: from the member's own `* NICK joined` in the room to the
   moment it sent the `/join` that took it out; a line is owed to the member
   when it was sent after the member's join reached the member and first
   received by anyone before the member asked to leave (so its place in the
   room's order is certainly inside the membership, whatever the clocks).
2. No duplicates. No member receives a message line twice.
3. One outcome per sent line. Each message a client sent got exactly one of:
   its own line back, or `! chat backend unavailable`. A line refused was
   received by nobody; a line that came back was received by every member
   that was in the room throughout (the "owed" rule of 1). Each `/nick`,
   `/join`, `/who` got one answer. Tolerated: a line with no outcome when its
   sender was told `* some lines may have been lost` after sending it
   (counted apart as "lost in an announced gap").
4. Nicknames unique at every moment. From each client's own evidence (its
   `guestN` on connect, `* OLD is now NEW` for itself, its own lines coming
   back as `NICK: ...`), intervals in which it certainly held a name: from
   the receipt of one piece of evidence to the sending of the next one with
   the same name, unless `* chat backend unavailable` reached it between the
   two (a server that lost Redis may lose its names). Two clients' intervals
   for one name must not overlap. A `/who` answer lists no name twice, a
   `guestN` the server hands out is never handed out again, and
   `* OLD is now NEW` with OLD the client's own name is either its own
   `/nick NEW` or the server renaming it to a fresh `guestN` (SPEC's only
   forced rename): anything else is another member holding its name.

And beside them (also SPEC rules): no ghosts (a member of the room never
sees a line from NICK after `* NICK left` until `* NICK joined` or a rename
to NICK); a client's own line comes back under its own name unless a
`* chat backend restored` since explains a rename; no line from a room the
member is not in; `* chat backend unavailable` and `restored` alternate,
starting with `unavailable`; a `/who` answered while the backend is up (no
notice within 3 s) lists the asker; no line outside the protocol; no client
is disconnected; every server is alive and answers at the end and exits 0
on SIGTERM.

Output: a report on stdout; OUT/faults.log, OUT/history.jsonl (per client,
every event: connected, line sent, outcome given up, line received,
disconnected, with its time), OUT/report.txt, OUT/violations.txt (all of
them), OUT/chatS.log and OUT/redis.log (the servers' standard error).

The checks never look at the clients' state during the run: they replay the
logged events into fresh clients (`Analysis`), all clients' events merged in
time order, so `--analyse` re-checks a saved history and `--self-test`
re-checks a clean run's history tampered with in 14 ways: 12 break a rule
and must be reported; 2 are what SPEC allows and must pass (a line dropped
where a gap notice stands; a member reaped and back, its room told it left
and joined again, missing the room's lines in between; the same without
the `left`/`joined` must fail).
"""
import argparse
import asyncio
import bisect
import collections
import heapq
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time

OUTCOME_WAIT = 40.0  # s: longer than any fault's effect (15 s pause + reconnects)
CONNECT_WAIT = 15.0
HEAL = 10.0  # s of the run without faults at its end
RESTORE_WAIT = 30.0
DRAIN = 5.0
THINK = (0.030, 0.250)
SHOW = 5  # violations shown per kind
NEAR = 30.0  # s: how far a name held by a client is looked for around a `left`

NICK_RE = r"[A-Za-z0-9_-]{1,32}"
RE_JOINED = re.compile(rf"^\* ({NICK_RE}) joined$")
RE_LEFT = re.compile(rf"^\* ({NICK_RE}) left$")
RE_RENAME = re.compile(rf"^\* ({NICK_RE}) is now ({NICK_RE})$")
RE_MSG = re.compile(rf"^({NICK_RE}): (.*)$")
RE_TEXT = re.compile(r"^([cp]\d+)-([A-Za-z0-9_]+)-n(\d+)$")
RE_GUEST = re.compile(r"^guest\d+$")
UNAVAILABLE_NOTICE = "* chat backend unavailable"
RESTORED_NOTICE = "* chat backend restored"
GAP_NOTICE = "* some lines may have been lost"
REFUSAL = "! chat backend unavailable"

FAULT_KINDS = [
    "pause_server_short",
    "pause_server_long",
    "pause_redis",
    "kill_pubsub",
    "kill_normal",
    "restart_redis",
    "script_flush",
]

KINDS = [  # violation kinds: (key, invariant, what it means)
    ("order", "1 one order", "two members saw a room's lines in different orders"),
    ("lost", "1 one order", "a line missing from a member's sequence of its room, with no gap notice there"),
    ("leak", "1 one order", "a line of a room the member is not in"),
    ("duplicate", "2 no duplicate", "a member received one line twice"),
    ("outcome", "3 one outcome", "a sent line without exactly one outcome, or refused yet delivered"),
    ("nick", "4 unique names", "two live members held one name at one moment"),
    ("guest", "4 unique names", "a guestN handed out twice"),
    ("ghost", "no ghosts", "a line from a member after `* NICK left`, with no join since"),
    ("identity", "no ghosts", "own line back under another name, without a rename or restore"),
    ("who", "no ghosts", "/who (backend up) without the asker"),
    ("notices", "notices", "`unavailable` / `restored` out of turn"),
    ("unexpected", "protocol", "a line outside the protocol, or an answer to nothing"),
    ("disconnected", "no crash", "a client was disconnected"),
    ("server", "no crash", "a server died, did not answer, or did not exit 0 on SIGTERM"),
]


def now():
    return time.monotonic()


# --------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cmd(port, *args, timeout=2.0):
    """One command on a fresh connection; the first reply line, or None when
    the connection closed without one (SHUTDOWN)."""
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(out)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return None
            data += chunk
        return data.split(b"\r\n", 1)[0].decode(errors="replace")


class Proc:
    def __init__(self, name, argv, log):
        self.name, self.argv, self.log = name, argv, log
        self.popen = None
        self.paused = False
        self.addr = None

    def start(self, wait_line=False):
        logf = open(self.log, "ab")
        # Own session: a Ctrl-C at the terminal reaches only the checker, which
        # stops what it started in order (and sees the exit status).
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if wait_line else logf,
            stderr=logf,
            start_new_session=True,
        )
        logf.close()
        self.paused = False
        if wait_line:
            fd = self.popen.stdout.fileno()
            buf, deadline = b"", now() + 15
            while b"\n" not in buf:
                left = deadline - now()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise RuntimeError(f"{self.name}: no `listening on` line within 15 s")
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"{self.name}: exited before listening (see {self.log})")
                buf += chunk
            line = buf.split(b"\n", 1)[0].decode()
            m = re.match(r"^listening on (127\.0\.0\.1):(\d+)$", line)
            if not m:
                raise RuntimeError(f"{self.name}: unexpected first line {line!r}")
            self.addr = (m[1], int(m[2]))

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def pause(self):
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self.signal(signal.SIGCONT)
        self.paused = False

    def terminate(self):
        """SIGCONT, then SIGTERM."""
        if self.alive():
            self.resume()
            self.signal(signal.SIGTERM)

    def wait(self, deadline):
        """The exit status (SIGKILL past the deadline: "killed"), or None."""
        if self.popen is None:
            return None
        try:
            self.popen.wait(max(0.0, deadline - now()))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return "killed"
        return self.popen.returncode

    def stop(self, grace=8.0):
        self.terminate()
        return self.wait(now() + grace)


class Redis(Proc):
    def __init__(self, port, log):
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"]
        super().__init__("redis", argv, log)
        self.port = port

    def start(self, wait_line=False):
        super().start()
        deadline = now() + 10
        while now() < deadline:
            try:
                if redis_cmd(self.port, "PING", timeout=0.5) == "+PONG":
                    return
            except OSError:
                pass
            if not self.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start (see {self.log})")


# ------------------------------------------------------------------ faults


class Faults:
    def __init__(self, checker, kinds, rng):
        self.c, self.kinds, self.rng = checker, kinds, rng
        self.log = []  # (t, text)
        self.counts = collections.Counter()
        self.tasks = set()
        self.server_paused = False
        self.redis_busy = False

    def note(self, text):
        t = now() - self.c.t0
        self.log.append((t, text))
        self.c.fault_file.write(f"{t:8.3f} {text}\n")
        self.c.fault_file.flush()

    async def run(self, start, end):
        await asyncio.sleep(max(0.0, start - now()))
        order = self.kinds[:]
        self.rng.shuffle(order)
        while True:
            kind = order.pop(0) if order else self.rng.choice(self.kinds)
            length = {"pause_server_long": 15.0, "pause_server_short": 3.0, "pause_redis": 4.0,
                      "restart_redis": 5.0}.get(kind, 0.5)
            if now() + length > end:
                # Too long for the time left: a shorter one if any, else done.
                short = [k for k in self.kinds if k not in ("pause_server_long",)]
                if kind == "pause_server_long" and short and now() + 5.0 <= end:
                    continue
                break
            await self.inject(kind, end - length)
            await asyncio.sleep(self.rng.uniform(1.5, 6.0))
        for task in list(self.tasks):
            await task

    async def inject(self, kind, latest):
        rng, c = self.rng, self.c
        # One chat server paused at a time, one Redis fault at a time: wait
        # for the one running to end rather than change the plan.
        while (kind.startswith("pause_server") and self.server_paused) or (
                kind in ("pause_redis", "restart_redis") and self.redis_busy):
            if now() > latest:
                return
            await asyncio.sleep(0.25)
        if kind.startswith("pause_server"):
            self.server_paused = True
            server = rng.choice(c.servers)
            secs = rng.uniform(8, 15) if kind.endswith("long") else rng.uniform(0.5, 3)
            self.counts[kind] += 1
            self.spawn(self.pause(server, secs, kind))
            return
        self.counts[kind] += 1
        if kind == "pause_redis":
            self.redis_busy = True
            self.spawn(self.pause_redis(rng.uniform(0.2, 4)))
        elif kind == "restart_redis":
            self.redis_busy = True
            self.spawn(self.restart_redis(rng.uniform(0.2, 3)))
        else:
            cmd = {"kill_pubsub": ("CLIENT", "KILL", "TYPE", "pubsub"),
                   "kill_normal": ("CLIENT", "KILL", "TYPE", "normal"),
                   "script_flush": ("SCRIPT", "FLUSH")}[kind]
            t = now() - c.t0
            try:
                reply = await asyncio.to_thread(redis_cmd, c.redis.port, *cmd)
            except OSError as e:
                reply = f"error {e}"
            self.note(f"{kind}: {' '.join(cmd)} (sent at {t:.3f}s) -> {reply}")

    def spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def pause(self, server, secs, kind):
        server.pause()
        self.note(f"{kind}: SIGSTOP {server.name} (pid {server.popen.pid}) for {secs:.1f} s")
        try:
            await asyncio.sleep(secs)
        finally:
            server.resume()
            self.note(f"{kind}: SIGCONT {server.name}")
            self.server_paused = False

    async def pause_redis(self, secs):
        self.c.redis.pause()
        self.note(f"pause_redis: SIGSTOP redis for {secs:.1f} s")
        try:
            await asyncio.sleep(secs)
        finally:
            self.c.redis.resume()
            self.note("pause_redis: SIGCONT redis")
            self.redis_busy = False

    async def restart_redis(self, secs):
        redis = self.c.redis
        try:
            try:
                await asyncio.to_thread(redis_cmd, redis.port, "SHUTDOWN", "NOSAVE")
            except OSError:
                pass
            try:
                await asyncio.to_thread(redis.popen.wait, 5)
            except subprocess.TimeoutExpired:
                redis.popen.kill()
                await asyncio.to_thread(redis.popen.wait)
            self.note(f"restart_redis: SHUTDOWN NOSAVE (exit {redis.popen.returncode}), down {secs:.1f} s")
            await asyncio.sleep(secs)
        finally:
            await asyncio.to_thread(redis.start)
            self.note("restart_redis: redis-server started again, empty")
            self.redis_busy = False


# ------------------------------------------------------------------ clients

# Stream item kinds
MSG, JOIN, LEFT, REN, WHO, ERR, UNAV, REST, GAP, OTHER = range(10)


class Item:
    __slots__ = ("t", "kind", "a", "b", "room")

    def __init__(self, t, kind, a, b, room):
        self.t, self.kind, self.a, self.b, self.room = t, kind, a, b, room


class Msg:
    __slots__ = ("text", "sender", "room", "sent", "returned", "refused", "first_recv", "receivers", "leaked")

    def __init__(self, text, sender, room, sent):
        self.text, self.sender, self.room, self.sent = text, sender, room, sent
        self.returned, self.refused = [], []
        self.first_recv = None
        self.receivers = 0
        self.leaked = False  # delivered in another room than its sender's


class Stay:
    """A membership of one room in the client's own view: from the receipt of
    its own `joined` (j, stream index start) to the sending of the `/join`
    that took it out (l, stream index end)."""

    __slots__ = ("room", "j", "start", "l", "end")

    def __init__(self, room, j, start):
        self.room, self.j, self.start = room, j, start
        self.l, self.end = float("inf"), None


class Pending:
    __slots__ = ("kind", "arg", "line", "sent", "future", "record")

    def __init__(self, kind, arg, line, sent, future, record):
        self.kind, self.arg, self.line, self.sent, self.future, self.record = kind, arg, line, sent, future, record


class Flag:
    """The stand-in for a future when a history is replayed."""

    def __init__(self):
        self.value = None
        self.is_set = False

    def done(self):
        return self.is_set

    def set_result(self, value):
        self.value, self.is_set = value, True


class Named:
    def __init__(self, name):
        self.name = name


def room_of(text):
    m = RE_TEXT.match(text)
    return m[2] if m else None


class Client:
    """One chat client. On the network (run by the Checker) it talks and logs
    every event; the same class, fed a log (replay), interprets it: what a
    line means is decided in one place, `on_line`."""

    def __init__(self, checker, cid, server, rng):
        self.c, self.cid, self.server, self.rng = checker, cid, server, rng
        self.log = []  # ("c", t) | ("s", t, kind, arg, line) | ("x", t) | ("r", t, line) | ("e", t, why)
        self.keep = rng is None  # replaying (the analysis) keeps the stream
        self._near = None  # (see nicks_near)
        self.received = 0
        self.stream = []
        self.sent = []  # (t, line)
        self.cmds = []  # dicts: kind, arg, sent, outcome
        self.nick = None
        self.room = None
        self.prev_room = None
        self.settled = True  # a line of the current room seen since joining it
        self.stays = []
        self.status = "up"
        self.unavail = []  # times `* chat backend unavailable` arrived
        self.notices = []  # times of unavailable and restored notices
        self.gaps = []  # times of gap notices
        self.evidence = []  # (nick, lo, hi)
        self.timeline = []  # (t, nick): the name this client believes it has from t
        self.guests = []  # (name, t) handed out to it by the server
        self.restored_since = False
        self.pending = None
        self.last = None  # the last line answered
        self.undo_join = None  # (see on_line: a /join answered inside a bracket)
        self.renamed_back = []  # (see on_line: `* OWN is now guestN` inside a bracket)
        self.departed = set()
        self.seq = 0
        self.reader = self.writer = None
        self.closing = False
        self.closed = False
        self.connected_at = None
        self.registered = None

    def violate(self, kind, text):
        self.c.violate(kind, f"{self.cid}@{self.server.name}: {text}")

    def rel(self, t):
        return f"{t - self.c.t0:.3f}s"

    def push(self, t, kind, a=None, b=None):
        """The line as understood, kept for the checks (only when replaying:
        on the network the log is what is kept)."""
        item = Item(t, kind, a, b, self.room)
        self.received += 1
        if self.keep:
            self.stream.append(item)
        return item

    def set_nick(self, nick, lo, hi):
        if nick != self.nick:
            self.timeline.append((hi, nick))
        self.nick = nick
        self.evidence.append((nick, lo, hi))
        self.restored_since = False

    def resolve(self, outcome, t):
        p = self.pending
        if p is None:
            return
        self.pending = None  # a second answer answers nothing
        self.last = p
        if p.record is not None and p.record.get("outcome") is None:
            p.record["outcome"], p.record["t"] = outcome, t
        if not p.future.done():
            p.future.set_result(outcome)

    def note(self, *event):
        if self.c.recording:
            self.log.append(event)

    # ----- replaying a log

    def replay(self, event):
        kind, t = event[0], event[1]
        if kind == "c":
            self.connected_at = t
            self.registered = Flag()
        elif kind == "s":
            _, t, what, arg, line = event
            rec = {"kind": what, "arg": arg, "outcome": None, "sent": t}
            self.cmds.append(rec)
            self.sent.append((t, line))
            if what == "msg":
                self.c.msgs[arg] = Msg(arg, self.cid, room_of(arg), t)
            self.pending = Pending(what, arg, line, t, Flag(), rec)
            self.undo_join = None
        elif kind == "x":
            self.pending = None
        elif kind == "r":
            self.on_line(t, event[2])
        elif kind == "e":
            self.violate("disconnected", event[2])

    # ----- the network side

    async def connect(self):
        self.connected_at = now()
        self.note("c", self.connected_at)
        self.reader, self.writer = await asyncio.open_connection(*self.server.addr)
        self.registered = asyncio.get_running_loop().create_future()
        asyncio.ensure_future(self.read_loop())
        await asyncio.wait_for(asyncio.shield(self.registered), CONNECT_WAIT)

    async def read_loop(self):
        try:
            while True:
                data = await self.reader.readline()
                if not data.endswith(b"\n"):
                    break
                if self.c.recording:
                    t, line = now(), data[:-1].decode("utf-8", "replace")
                    self.note("r", t, line)
                    self.on_line(t, line)
        except (ConnectionError, OSError) as e:
            if not self.closing:
                self.note("e", now(), f"connection error {e} at {self.rel(now())}")
        else:
            if not self.closing:
                self.note("e", now(), f"the server closed the connection at {self.rel(now())}")
        self.closed = True
        if self.pending and not self.pending.future.done():
            self.pending.future.set_result(None)

    async def send(self, kind, arg, line, record=None):
        if self.closed:
            return None
        fut = asyncio.get_running_loop().create_future()
        t = now()  # before the write: a send time is never later than the real one
        self.pending = Pending(kind, arg, line, t, fut, record)
        self.undo_join = None
        if record is not None:
            record["sent"] = t
        if kind == "msg":
            self.c.msgs[arg].sent = t
        self.sent.append((t, line))
        self.note("s", t, kind, arg, line)
        try:
            self.writer.write(line.encode() + b"\n")
            await self.writer.drain()
            return await asyncio.wait_for(fut, OUTCOME_WAIT)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            if self.pending is not None and self.pending.future is fut:
                self.note("x", now())
            return None
        finally:
            if self.pending is not None and self.pending.future is fut:
                self.pending = None

    async def say(self):
        self.seq += 1
        text = f"{self.cid}-{self.room}-n{self.seq}"
        self.c.msgs[text] = Msg(text, self.cid, self.room, now())
        rec = {"kind": "msg", "arg": text, "outcome": None}
        self.cmds.append(rec)
        return await self.send("msg", text, text, rec)

    async def command(self, kind, arg=None):
        line = f"/{kind} {arg}" if arg else f"/{kind}"
        rec = {"kind": kind, "arg": arg, "outcome": None}
        self.cmds.append(rec)
        return await self.send(kind, arg, line, rec)

    async def traffic(self, until, first_room):
        if first_room != self.room:
            await self.command("join", first_room)
        rng = self.rng
        while now() < until and not self.closed:
            await asyncio.sleep(rng.uniform(*THINK))
            r = rng.random()
            if r < 0.06:
                await self.command("who")
            elif r < 0.12:
                if rng.random() < 0.2:
                    name = f"guest{rng.randint(1, 3 * len(self.c.clients) + 20)}"
                else:
                    name = rng.choice(self.c.nick_pool)
                if name != self.nick:
                    await self.command("nick", name)
            elif r < 0.18:
                rooms = [x for x in self.c.rooms if x != self.room]
                await self.command("join", rng.choice(rooms))
            else:
                await self.say()

    async def finish(self):
        """The end: back to `up`, one last line, then `/who`."""
        deadline = now() + RESTORE_WAIT
        while self.status != "up" and now() < deadline and not self.closed:
            await asyncio.sleep(0.1)
        for _ in range(5):
            if await self.say() == "ok" or self.closed:
                break
            await asyncio.sleep(1.0)

    def close(self):
        self.closing = True
        if self.writer is not None:
            self.writer.close()

    # ----- what a line means, seen from this client (its own view)

    def on_line(self, t, line):
        p = self.pending
        if line == UNAVAILABLE_NOTICE:
            self.push(t, UNAV)
            if self.status == "down":
                self.violate("notices", f"`{line}` again at {self.rel(t)} without `restored` between")
            self.status = "down"
            self.unavail.append(t)
            self.notices.append(t)
        elif line == RESTORED_NOTICE:
            self.push(t, REST)
            if self.status != "down":
                self.violate("notices", f"`{line}` at {self.rel(t)} without `unavailable` before")
            self.status = "up"
            if self.renamed_back:
                new, at = self.renamed_back[-1]
                self.set_nick(new, at, at)
                self.guests.append((new, at))
                self.renamed_back = []
            self.restored_since = True
            self.notices.append(t)
            # A member whose server was reaped may be spared the events of
            # its absence: the joins it missed too.
            self.departed = set()
        elif line == GAP_NOTICE:
            self.push(t, GAP)
            self.gaps.append(t)
            self.departed = set()  # the joins it did not see may be in the gap
        elif line.startswith("* members:"):
            names = line[len("* members:"):].split()
            self.push(t, WHO, names)
            if p is None or p.kind != "who":
                self.violate("unexpected", f"`{line[:80]}` at {self.rel(t)} answers no /who")
                return
            self.resolve("ok", t)
            dups = sorted(n for n, k in collections.Counter(names).items() if k > 1)
            if dups:
                self.c.violate("nick", f"{self.cid}@{self.server.name}: /who at {self.rel(t)} lists {dups} twice")
            quiet = not any(p.sent - 3.0 <= x <= t for x in self.notices)
            if self.status == "up" and quiet and self.nick not in names:
                self.violate("who", f"/who at {self.rel(t)} (backend up) omits its own name {self.nick}: `{line[:120]}`")
        elif line.startswith("! "):
            self.push(t, ERR, line)
            u = self.undo_join
            if p is None and line == REFUSAL and u is not None and self.last is u[0] and self.status == "up":
                # The `joined` in the bracket was a re-announcement: the
                # /join was refused, the member never left its room.
                self.undo_join = None
                _, stay, stay.l, stay.end, self.room, self.prev_room, item = u
                item.room = self.room
                self.stays.pop()
                if u[0].record is not None:
                    u[0].record["outcome"], u[0].record["t"] = "refused", t
                return
            if p is None and self.last is not None and self.last.kind != "who":
                self.violate("outcome", f"`{line}` at {self.rel(t)}: a second answer to `{self.last.line}` "
                                        f"(sent at {self.rel(self.last.sent)}, answered {self.last.record['outcome']})")
            elif p is None or p.kind == "who":
                self.violate("unexpected", f"`{line}` at {self.rel(t)} answers no line")
            elif line == REFUSAL:
                self.resolve("refused", t)
                if p.kind == "msg":
                    self.c.msgs[p.arg].refused.append(t)
            elif p.kind == "nick" and line in (f"! nickname {p.arg} is in use", f"! you are already {p.arg}"):
                self.resolve("failed", t)
            elif p.kind == "join" and line == f"! you are already in {p.arg}":
                self.resolve("failed", t)
            else:
                self.violate("unexpected", f"`{line}` at {self.rel(t)} in answer to `{p.line}`")
                self.resolve("error", t)
        elif m := RE_RENAME.match(line):
            old, new = m[1], m[2]
            self.push(t, REN, old, new)
            if old == self.nick and p is not None and p.kind == "nick" and new == p.arg:
                self.set_nick(new, p.sent, t)
                self.resolve("ok", t)
            elif old == self.nick and RE_GUEST.match(new) and self.status == "down":
                # Renamed by its server as it registers the member again
                # (its name was taken while Redis was lost) — or, replayed,
                # a rename of another member who had the name meanwhile.
                # The registration runs after the replay: the last such
                # line before `restored` (unless its own `joined` under the
                # old name follows) is its own, taken at `restored`.
                self.renamed_back.append((new, t))
            elif old == self.nick and self.status == "down":
                # Replayed: another member had the name while this one's
                # server was cut off (its names may be lost then); where
                # both certainly held it, rule 4's intervals say so.
                pass
            elif old == self.nick and RE_GUEST.match(new) and self.restored_since:
                # The same, seen after `restored`, before any line of its own.
                self.set_nick(new, t, t)
                self.guests.append((new, t))
            elif old == self.nick:
                # SPEC renames a member only to a fresh guestN, on its
                # return: this is another member who had this client's name.
                self.c.violate("nick", f"{self.cid}@{self.server.name}: `{line}` at {self.rel(t)} while {old} is its own "
                                       f"name and it asked nothing: another member had its name")
            elif old in self.departed:
                self.violate("ghost", f"`{line}` at {self.rel(t)} in {self.room}, after `* {old} left`, no join since")
            if old != self.nick:
                self.departed.discard(old)
            self.departed.discard(new)
        elif m := RE_JOINED.match(line):
            nick = m[1]
            item = self.push(t, JOIN, nick)
            if nick == self.nick and self.status == "down":
                self.renamed_back = []  # announced again under its own name
            idx = len(self.stream) - 1
            if self.nick is None:
                # Registration: its own join into lobby is its first line.
                self.room = "lobby"
                item.room = "lobby"
                self.set_nick(nick, self.connected_at, t)
                if RE_GUEST.match(nick):
                    self.guests.append((nick, t))
                self.stays.append(Stay("lobby", t, idx))
                if self.registered is not None and not self.registered.done():
                    self.registered.set_result(t)
            elif p is not None and p.kind == "join" and nick == self.nick:
                stay = self.stays[-1]
                if self.status == "down":
                    # Inside an unavailable/restored bracket this may be the
                    # /join's own event replayed, or this member announced
                    # again in its old room (a restore), the /join then
                    # refused after `restored`: kept, to be undone then.
                    self.undo_join = (p, stay, stay.l, stay.end, self.room, self.prev_room, item)
                stay.l, stay.end = p.sent, idx
                self.prev_room, self.room = self.room, p.arg
                item.room = self.room
                self.stays.append(Stay(self.room, t, idx))
                self.departed = set()
                self.settled = False
                self.evidence.append((nick, p.sent, t))
                self.resolve("ok", t)
            elif nick != self.nick:
                self.departed.discard(nick)
        elif m := RE_LEFT.match(line):
            nick = m[1]
            self.push(t, LEFT, nick)
            if nick != self.nick and self.settled:
                self.departed.add(nick)
        elif m := RE_MSG.match(line):
            nick, text = m[1], m[2]
            tm = RE_TEXT.match(text)
            msg = self.c.msgs.get(text) if tm else None
            if msg is None:
                self.push(t, OTHER, line)
                self.violate("unexpected", f"`{line[:120]}` at {self.rel(t)}: no client sent this text")
                return
            self.push(t, MSG, text, nick)
            msg.receivers += 1
            if msg.first_recv is None:
                msg.first_recv = t
            if msg.room == self.room:
                self.settled = True
            allowed = (self.room, self.prev_room, p.arg if p is not None and p.kind == "join" else None)
            if msg.room not in allowed:
                msg.leaked = True
                self.violate("leak", f"`{line}` (room {msg.room}) at {self.rel(t)} while in {self.room}")
            if msg.sender == self.cid:
                msg.returned.append(t)
                if p is not None and p.kind == "msg" and p.arg == text:
                    self.resolve("ok", t)
                if nick != self.nick and not self.restored_since:
                    self.violate("identity", f"own line `{line}` at {self.rel(t)} under {nick}, but its name is {self.nick} (no rename, no restore since)")
                self.set_nick(nick, msg.sent, t)
            elif nick in self.departed:
                sender = self.c.client(msg.sender)
                self.violate("ghost", f"`{line}` (from {msg.sender}@{sender.server.name}) at {self.rel(t)} in {self.room}: "
                                      f"after `* {nick} left`, no join since")
        else:
            self.push(t, OTHER, line)
            self.violate("unexpected", f"`{line[:120]}` at {self.rel(t)}")


# ------------------------------------------------------------------ checks


def nicks_near(client, t):
    """Names `client` held (in its own view) within NEAR seconds of t."""
    if client._near is None:
        ev = sorted(client.evidence, key=lambda e: e[2])
        client._near = ([e[2] for e in ev], [e[0] for e in ev], [x for x, _ in client.timeline])
    his, nicks, starts = client._near
    names = set(nicks[bisect.bisect_left(his, t - NEAR):bisect.bisect_right(his, t + NEAR)])
    i = bisect.bisect_right(starts, t - NEAR) - 1
    if i >= 0:
        names.add(client.timeline[i][1])
    return names


def names_between(client, a, b):
    """The names `client` had (in its own view) at some moment in [a, b]."""
    tl = client.timeline
    i = max(0, bisect.bisect_right([x for x, _ in tl], a) - 1)
    return {n for x, n in tl[i:] if x <= b}


def whose_left(clients, ever, name, t):
    """The clients a `* NAME left` seen at t may be about: whoever had NAME at
    t in its own view; if nobody, whoever had it in the 20 s before (the
    announcement may lag behind a pause)."""
    now_ = [m for m in clients if name in ever[m.cid] and name in names_between(m, t, t)]
    return now_ or [m for m in clients if name in ever[m.cid] and name in names_between(m, t - 20.0, t)]


def voluntary(client, room, t):
    """Whether a `left` of `client` from `room` seen at t is surely its own
    /join away: seen after it sent that /join, at most 30 s after its join
    into the next room reached it (a witness may lag by a pause, not more),
    and before it came back to the room. When in doubt, not (the hole is
    then excused: a checker that cries wolf is worse than one that misses a
    corner)."""
    stays = client.stays
    for k, s in enumerate(stays):
        if s.room == room and s.l <= t:
            after = stays[k + 1].j if k + 1 < len(stays) else float("inf")
            back = any(x.room == room and x.j <= t for x in stays[k + 1:])
            if t <= after + 30.0 and not back:
                return True
    return False


def room_sequences(clients, msgs):
    """room -> cid -> [text] (first receipt only, in the order received)."""
    seqs = collections.defaultdict(dict)
    for c in clients:
        seen = set()
        for it in c.stream:
            if it.kind == MSG and it.a not in seen:
                seen.add(it.a)
                seqs[msgs[it.a].room].setdefault(c.cid, []).append(it.a)
    return seqs


def reference_order(seqs, msgs):
    """A total order of the room's lines consistent with every member's
    sequence (Kahn, ties by first receipt); True if there was a cycle."""
    succ = collections.defaultdict(set)
    indeg = collections.Counter()
    nodes = set()
    for seq in seqs.values():
        nodes.update(seq)
        for a, b in zip(seq, seq[1:]):
            if b not in succ[a]:
                succ[a].add(b)
                indeg[b] += 1
    heap = [(msgs[x].first_recv, x) for x in nodes if indeg[x] == 0]
    heapq.heapify(heap)
    order, done = [], set()
    cyclic = False
    while len(order) < len(nodes):
        if not heap:  # a cycle: go on from the earliest line left
            cyclic = True
            x = min((msgs[x].first_recv, x) for x in nodes if x not in done)
            heap.append(x)
        _, x = heapq.heappop(heap)
        if x in done:
            continue
        done.add(x)
        order.append(x)
        for y in succ[x]:
            indeg[y] -= 1
            if indeg[y] == 0 and y not in done:
                heapq.heappush(heap, (msgs[y].first_recv, y))
    return {x: i for i, x in enumerate(order)}, cyclic


def bounds(x, members, idx_of, start, end, reach=2000):
    """Where line x can be in a member's stream (indices in `idx_of`, the
    member's own lines of the room) in any order the other members'
    sequences allow: after the last line it received that came before x in
    someone's sequence, before the first it received that came after x.
    Only direct precedence, at most `reach` lines away: bounds no tighter
    than the truth, so a hole reported outside them is real."""
    lo, hi = start, end
    for seq in members.values():
        try:
            i = seq.index(x)
        except ValueError:
            continue
        for y in reversed(seq[max(0, i - reach):i]):
            if y in idx_of:
                lo = max(lo, idx_of[y])
                break
        for y in seq[i + 1:i + 1 + reach]:
            if y in idx_of:
                hi = min(hi, idx_of[y])
                break
    return lo, hi


def check(c):
    clients, msgs = c.all_clients, c.msgs
    by_cid = {x.cid: x for x in clients}
    rel = lambda t: f"{t - c.t0:.3f}s"  # noqa: E731

    # 2. duplicates
    for cl in clients:
        counts = collections.Counter(it.a for it in cl.stream if it.kind == MSG)
        for text, k in counts.items():
            if k > 1:
                c.violate("duplicate", f"{cl.cid}@{cl.server.name} received `{text}` {k} times")

    # 1. one order per room
    seqs = room_sequences(clients, msgs)
    positions = {}
    for room, members in sorted(seqs.items()):
        pos_of = {cid: {x: i for i, x in enumerate(seq)} for cid, seq in members.items()}
        for cid, pos in pos_of.items():
            c.pos_cache[(room, cid)] = pos
        inverted = 0
        cids = sorted(members)
        for i, m in enumerate(cids):
            for n in cids[i + 1:]:
                pn, last, prev = pos_of[n], -1, None
                for x in members[m]:
                    p = pn.get(x)
                    if p is None:
                        continue
                    if p < last:
                        inverted += 1
                        c.violate("order", f"room {room}: {m} received `{prev}` before `{x}`, {n} the other way round")
                        break
                    last, prev = p, x
        positions[room], cyclic = reference_order(members, msgs)
        if cyclic and not inverted:
            c.violate("order", f"room {room}: the members' sequences admit no single order (a cycle through three or more members)")

    # Excused holes: where the room was told a member left while it had not
    # asked to (reaped), until it was announced joined again.
    excused = collections.defaultdict(set)
    ever = {m.cid: {n for n, _, _ in m.evidence} for m in clients}
    for n in clients:
        st = n.stream
        for i, it in enumerate(st):
            if it.kind != LEFT:
                continue
            for m in whose_left(clients, ever, it.a, it.t):
                names = nicks_near(m, it.t)
                if voluntary(m, it.room, it.t):
                    continue
                for k in range(i + 1, len(st)):
                    nx = st[k]
                    if nx.kind == JOIN and nx.a in names:
                        break
                    if nx.t > it.t + 120:
                        break
                    if nx.kind == MSG and msgs[nx.a].room == it.room:
                        excused[m.cid].add(nx.a)

    # 1 and 3. holes: (a) between two lines a member received consecutively
    # (no gap notice between), a line another member received between them;
    # (b) a line owed to a member's stay that it never received.
    lost = {}
    received = {cl.cid: {it.a for it in cl.stream if it.kind == MSG} for cl in clients}
    for cl in clients:
        got = received[cl.cid]
        for s in cl.stays:
            end = s.end if s.end is not None else len(cl.stream)
            pos = positions.get(s.room, {})
            members = seqs.get(s.room, {})
            mine = []  # (stream index, ref position, text)
            gaps = []
            for i in range(s.start, end):
                it = cl.stream[i]
                if it.kind == GAP:
                    gaps.append(i)
                elif it.kind == MSG and msgs[it.a].room == s.room and it.a in pos:
                    mine.append((i, pos[it.a], it.a))
            # (a) consecutive pairs, no gap notice between
            for (ia, pa, a), (ib, pb, b) in zip(mine, mine[1:]):
                if pb - pa <= 1 or any(ia < g < ib for g in gaps):
                    continue
                for n, seq in members.items():
                    if n == cl.cid:
                        continue
                    pn = c.pos_cache[(s.room, n)]
                    qa, qb = pn.get(a), pn.get(b)
                    if qa is None or qb is None or qb - qa <= 1:
                        continue
                    for x in seq[qa + 1:qb]:
                        if not msgs[x].leaked and x not in got and x not in excused[cl.cid] and (cl.cid, x) not in lost:
                            lost[(cl.cid, x)] = f"between `{a}` and `{b}` (at {rel(cl.stream[ia].t)}-{rel(cl.stream[ib].t)}); {n} received it between them"
            # (b) owed lines never received
            refs = [p for _, p, _ in mine]
            idx_of = None
            sent = c.by_room_sent.get(s.room, [])
            for _, x, msg in sent[bisect.bisect_right(sent, (s.j, "\uffff")):]:
                if msg.sent >= s.l:
                    break
                if msg.first_recv is None or msg.first_recv >= s.l:
                    continue
                if msg.sender == cl.cid or msg.leaked or x in got or x in excused[cl.cid] or (cl.cid, x) in lost:
                    continue
                k = bisect.bisect_left(refs, pos.get(x, 0))
                lo = mine[k - 1][0] if k > 0 else s.start
                hi = mine[k][0] if k < len(mine) else end
                if any(lo < g < hi for g in gaps):
                    continue
                # The reference order is one order the members' sequences
                # allow, ties broken by time; where two lines' order is
                # lost with Redis's data (each sender got its own back
                # before its gap notice, nobody else either), another
                # allowed order may put x at this member's gap notice.
                # Only the members' own sequences bound where x can be.
                if idx_of is None:
                    idx_of = {text: i for i, _, text in mine}
                lo, hi = bounds(x, members, idx_of, s.start, end)
                if any(lo < g < hi for g in gaps):
                    continue
                lost[(cl.cid, x)] = (f"sent by {msg.sender} at {rel(msg.sent)} (after this member's join at {rel(s.j)}), "
                                     f"first received at {rel(msg.first_recv)}, by {msg.receivers} member(s); "
                                     f"never received, no gap notice")
    for (cid, x), why in sorted(lost.items(), key=lambda kv: msgs[kv[0][1]].sent):
        cl = by_cid[cid]
        c.violate("lost", f"{cid}@{cl.server.name} in room {msgs[x].room} missed `{x}`: {why}")

    # 3. one outcome per sent line
    c.lost_in_gap = 0
    for cl in clients:
        for rec in cl.cmds:
            if rec["kind"] == "msg":
                msg = msgs[rec["arg"]]
                back, refused = len(msg.returned), len(msg.refused)
                if back and refused:
                    c.violate("outcome", f"`{msg.text}` ({cl.cid}@{cl.server.name}, sent at {rel(msg.sent)}) came back and was refused")
                elif refused and msg.receivers:
                    c.violate("outcome", f"`{msg.text}` ({cl.cid}@{cl.server.name}, sent at {rel(msg.sent)}) refused at {rel(msg.refused[0])}, yet received by {msg.receivers} member(s)")
                elif refused > 1:
                    c.violate("outcome", f"`{msg.text}` ({cl.cid}@{cl.server.name}) refused {refused} times")
                elif not back and not refused:
                    if any(g > msg.sent for g in cl.gaps):
                        c.lost_in_gap += 1
                    else:
                        c.violate("outcome", f"`{msg.text}` ({cl.cid}@{cl.server.name}, sent at {rel(msg.sent)}) got no outcome; received by {msg.receivers} member(s)")
            elif rec["outcome"] is None and "sent" in rec:
                c.violate("outcome", f"`/{rec['kind']} {rec['arg'] or ''}` ({cl.cid}@{cl.server.name}, sent at {rel(rec['sent'])}) got no answer")

    # 4. names: certain holding intervals must not overlap between clients
    held = collections.defaultdict(list)  # nick -> [(start, end, cid)]
    for cl in clients:
        breaks = sorted(cl.unavail)

        def broken(prev_hi, hi):  # `unavailable` arrived in (prev_hi, hi]
            i = bisect.bisect_right(breaks, prev_hi)
            return i < len(breaks) and breaks[i] <= hi

        chain = None  # [nick, start, end, last hi]
        for nick, lo, hi in sorted(cl.evidence, key=lambda e: e[2]):
            if chain is None or chain[0] != nick or broken(chain[3], hi):
                if chain is not None and chain[2] > chain[1]:
                    held[chain[0]].append((chain[1], chain[2], cl.cid))
                chain = [nick, hi, hi, hi]
            else:
                chain[2] = max(chain[2], lo)
                chain[3] = hi
        if chain is not None and chain[2] > chain[1]:
            held[chain[0]].append((chain[1], chain[2], cl.cid))
    for nick, spans in sorted(held.items()):
        spans.sort()
        reported = set()
        for i, (s1, e1, c1) in enumerate(spans):
            for s2, e2, c2 in spans[i + 1:]:
                if s2 >= e1:
                    break
                if c1 != c2 and (c1, c2) not in reported:
                    reported.add((c1, c2))
                    c.violate("nick", f"`{nick}` held by {c1}@{by_cid[c1].server.name} ({rel(s1)}-{rel(e1)}) and by {c2}@{by_cid[c2].server.name} ({rel(s2)}-{rel(e2)}) at once")
    handed = collections.defaultdict(list)
    for cl in clients:
        for name, t in cl.guests:
            handed[name].append((t, cl.cid))
    for name, who in sorted(handed.items()):
        if len({cid for _, cid in who}) > 1:
            c.violate("guest", f"`{name}` handed out to " + ", ".join(f"{cid} at {rel(t)}" for t, cid in sorted(who)))


# ------------------------------------------------------------------ the run


class Analysis:
    """The histories replayed into fresh clients, and what `check` needs."""

    def __init__(self, t0, logs):
        self.t0 = t0
        self.recording = True
        self.msgs = {}
        self.by_room_sent = {}
        self.pos_cache = {}
        self.violations = collections.defaultdict(list)
        self.lost_in_gap = 0
        self.by_cid = {}
        self.all_clients = []
        for cid, server, events in logs:
            cl = Client(self, cid, Named(server), None)
            cl.log = events
            self.by_cid[cid] = cl
            self.all_clients.append(cl)
        # One merged timeline: a line is received after it was sent.
        merged = sorted((ev[1], k, i, cl) for k, cl in enumerate(self.all_clients) for i, ev in enumerate(cl.log))
        for _, _, i, cl in merged:
            cl.replay(cl.log[i])
        for m in self.msgs.values():
            self.by_room_sent.setdefault(m.room, []).append((m.sent, m.text, m))
        for v in self.by_room_sent.values():
            v.sort(key=lambda e: e[0])
        check(self)

    def violate(self, kind, text):
        self.violations[kind].append(text)

    def client(self, cid):
        return self.by_cid[cid]

    def failed(self):
        return any(self.violations.values())

    def summary(self):
        msgs = list(self.msgs.values())
        back = sum(1 for m in msgs if m.returned)
        refused = sum(1 for m in msgs if m.refused and not m.returned)
        cmds = collections.Counter(r["kind"] for cl in self.all_clients for r in cl.cmds if r["kind"] != "msg")
        notices = collections.Counter(it.kind for cl in self.all_clients for it in cl.stream if it.kind in (UNAV, REST, GAP))
        return [
            f"traffic: {len(msgs)} messages sent, {back} came back, {refused} refused, "
            f"{len(msgs) - back - refused} without either ({self.lost_in_gap} of them lost in an announced gap); "
            f"{sum(m.receivers for m in msgs)} deliveries; commands: "
            + ", ".join(f"/{k} {v}" for k, v in sorted(cmds.items())),
            f"notices: unavailable {notices[UNAV]}, restored {notices[REST]}, gap {notices[GAP]}",
        ]

    def verdict(self):
        lines = ["invariants:"]
        for key, inv, what in KINDS:
            found = self.violations.get(key, [])
            lines.append(f"  [{'FAIL' if found else 'ok  '}] {inv:15} {key:12} {len(found):6}  {what}")
        for key, inv, _ in KINDS:
            found = self.violations.get(key, [])
            if found:
                lines.append(f"first {min(SHOW, len(found))} of {len(found)} `{key}` ({inv}):")
                lines.extend(f"  - {v}" for v in found[:SHOW])
        lines.append(f"RESULT: {'FAIL' if self.failed() else 'PASS'}")
        return lines


def save_history(path, t0, logs, meta):
    with open(path, "w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for cid, server, events in logs:
            rel = [[e[0], round(e[1] - t0, 6), *e[2:]] for e in events]
            f.write(json.dumps({"client": cid, "server": server, "events": rel}) + "\n")


def load_history(path):
    logs, meta = [], {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if "meta" in rec:
                meta = rec["meta"]
            else:
                logs.append((rec["client"], rec["server"], [tuple(e) for e in rec["events"]]))
    return logs, meta


class Checker:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.fault_file = open(os.path.join(self.out, "faults.log"), "w")
        self.redis = Redis(free_port(), os.path.join(self.out, "redis.log"))
        self.servers = []
        self.clients, self.probes = [], []
        self.msgs = {}
        self.by_cid = {}
        self.server_problems = []  # (kind, text)
        self.rooms = ["lobby"] + [f"r{i}" for i in range(1, args.rooms)]
        self.nick_pool = [f"n{i}" for i in range(max(8, args.clients + args.clients // 3))]
        self.recording = True
        self.t0 = now()
        self.faults = Faults(self, [], None)

    def violate(self, kind, text):
        pass  # on the network only the outcomes matter; the analysis replays the logs

    def client(self, cid):
        return self.by_cid[cid]

    def logs(self):
        return [(cl.cid, cl.server.name, cl.log) for cl in self.clients + self.probes]

    def start(self):
        if os.path.exists(self.redis.log):
            os.remove(self.redis.log)
        self.redis.start()
        url = f"redis://127.0.0.1:{self.redis.port}"
        for i in range(self.args.servers):
            argv = [self.args.bin, "chat", "--redis", url, "--listen", "127.0.0.1:0"]
            if self.args.workers > 1:
                argv += ["--workers", str(self.args.workers)]
            log = os.path.join(self.out, f"chat{i + 1}.log")
            if os.path.exists(log):
                os.remove(log)
            server = Proc(f"chat{i + 1}", argv, log)
            self.servers.append(server)
            server.start(wait_line=True)

    def stop_all(self):
        # All at once: each may take its 5 s drain.
        for s in self.servers:
            s.terminate()
        deadline = now() + 8.0
        codes = {s.name: s.wait(deadline) for s in self.servers}
        if self.redis.popen is not None:
            self.redis.resume()
            self.redis.stop(3)
        return codes

    async def run(self):
        a = self.args
        self.t0 = now()
        print(f"chat-checker: {a.clients} clients on {a.servers} servers (redis port {self.redis.port}), "
              f"rooms {' '.join(self.rooms)}, {a.duration:g} s, seed {a.seed}, faults: {','.join(a.faults) or 'none'}",
              flush=True)
        for k in range(a.clients):
            cl = Client(self, f"c{k + 1}", self.servers[k % len(self.servers)], random.Random(f"{a.seed}-{k}"))
            self.clients.append(cl)
            self.by_cid[cl.cid] = cl
            await cl.connect()
        end = now() + a.duration
        self.faults = Faults(self, a.faults, random.Random(f"{a.seed}-faults"))
        tasks = [asyncio.ensure_future(cl.traffic(end, self.rooms[k % len(self.rooms)]))
                 for k, cl in enumerate(self.clients)]
        progress = asyncio.ensure_future(self.progress(end))
        if a.faults:
            await self.faults.run(now() + 3.0, end - HEAL)
        await asyncio.gather(*tasks)
        progress.cancel()
        for p in self.servers + [self.redis]:  # (every pause has ended by now)
            if p.paused:
                p.resume()
        print(f"[{now() - self.t0:6.1f}s] traffic over; last lines and /who", flush=True)
        await asyncio.gather(*(cl.finish() for cl in self.clients))
        await asyncio.sleep(DRAIN)
        await asyncio.gather(*(cl.command("who") for cl in self.clients if not cl.closed))
        # A new client on each server: alive and answering.
        for i, server in enumerate(self.servers):
            probe = Client(self, f"p{i + 1}", server, random.Random(i))
            self.probes.append(probe)
            self.by_cid[probe.cid] = probe
            ok = False
            try:
                await probe.connect()
                ok = await probe.say() == "ok" and await probe.command("who") == "ok"
            except (OSError, asyncio.TimeoutError) as e:
                self.server_problems.append(f"{server.name}: a new client could not register: {e!r}")
            if not server.alive():
                self.server_problems.append(f"{server.name} died (exit {server.popen.returncode})")
            elif not ok:
                self.server_problems.append(f"{server.name}: a new client's line or /who got no answer")
        await asyncio.sleep(1.0)
        self.recording = False
        for cl in self.clients + self.probes:
            cl.close()
        await asyncio.sleep(0.2)

    async def progress(self, end):
        while now() < end:
            await asyncio.sleep(10)
            sent = sum(len(cl.sent) for cl in self.clients)
            got = sum(cl.received for cl in self.clients)
            print(f"[{now() - self.t0:6.1f}s] {sent} lines sent, {got} received, "
                  f"{sum(self.faults.counts.values())} faults", flush=True)

    def report(self):
        a = self.args
        analysis = Analysis(self.t0, self.logs())
        for text in self.server_problems:
            analysis.violate("server", text)
        fc = self.faults.counts
        lines = [f"chat-checker: {a.clients} clients on {a.servers} servers, rooms {' '.join(self.rooms)}, "
                 f"{a.duration:g} s, seed {a.seed}",
                 "faults: " + (", ".join(f"{k} {fc[k]}" for k in FAULT_KINDS if fc.get(k)) or "none")
                 + f" (log: {os.path.join(self.out, 'faults.log')})"]
        lines += [f"  {t:8.3f}s {text}" for t, text in self.faults.log]
        lines += analysis.summary() + analysis.verdict()
        return analysis, lines


# ----------------------------------------------------------- the self-test
#
# A clean run's history, tampered with the way a broken server would, must
# fail on the rule it breaks; tampered the way SPEC allows, it must pass.


def self_test(logs, t0):
    by = {cid: list(ev) for cid, _, ev in logs}
    servers = {cid: server for cid, server, _ in logs}
    rng = random.Random(7)

    def own_nick(cid, e):  # the name cid's own line came back under, if e is one
        return e[0] == "r" and (m := RE_MSG.match(e[2])) and m[2].startswith(cid + "-") and m[1]

    def build(changed):
        return [(cid, servers[cid], changed.get(cid, by[cid])) for cid in by]

    def received(cid):  # indexes of other members' message lines, mid-stream
        ev = by[cid]
        out = []
        for i, e in enumerate(ev):
            if e[0] == "r" and (m := RE_MSG.match(e[2])) and not m[2].startswith(cid + "-") and RE_TEXT.match(m[2]):
                out.append(i)
        return out[len(out) // 4: 3 * len(out) // 4]

    def pick():
        cid = rng.choice([c for c in by if c.startswith("c")])
        return cid, rng.choice(received(cid))

    def drop():
        cid, i = pick()
        return {cid: by[cid][:i] + by[cid][i + 1:]}

    def drop_with_notice():
        cid, i = pick()
        e = by[cid][i]
        return {cid: by[cid][:i] + [("r", e[1], GAP_NOTICE)] + by[cid][i + 1:]}

    def duplicate():
        cid, i = pick()
        return {cid: by[cid][:i + 1] + [by[cid][i]] + by[cid][i + 1:]}

    def swap():
        cid = rng.choice([c for c in by if c.startswith("c")])
        ev = by[cid]
        for i in received(cid):
            j = next((k for k in range(i + 1, len(ev)) if ev[k][0] != "c"), None)
            if j is not None and ev[j][0] == "r" and RE_MSG.match(ev[j][2]) and RE_TEXT.match(RE_MSG.match(ev[j][2])[2]):
                a, b = RE_MSG.match(ev[i][2])[2], RE_MSG.match(ev[j][2])[2]
                if room_of(a) == room_of(b) and a.split("-")[0] != b.split("-")[0]:
                    new = ev[:]
                    # Both at the later time: neither arrives before it was sent.
                    new[i], new[j] = ("r", ev[j][1], ev[j][2]), ("r", ev[j][1], ev[i][2])
                    return {cid: new}
        raise RuntimeError("no two adjacent lines to swap")

    def own_line(cid):  # index of a line of its own coming back, mid-run, that others received too
        ev = by[cid]
        others = {m[2] for c, evs in by.items() if c != cid for e in evs
                  if e[0] == "r" and (m := RE_MSG.match(e[2])) and m[2].startswith(cid + "-")}
        idx = [i for i, e in enumerate(ev)
               if e[0] == "r" and (m := RE_MSG.match(e[2])) and m[2].startswith(cid + "-") and m[2] in others]
        return idx[len(idx) // 2]

    def refused_yet_delivered():
        cid = "c1"
        i = own_line(cid)
        return {cid: by[cid][:i] + [("r", by[cid][i][1], REFUSAL)] + by[cid][i + 1:]}

    def no_outcome():
        cid = "c2"
        i = own_line(cid)
        return {cid: by[cid][:i] + by[cid][i + 1:]}

    def ghost():
        cid, i = pick()
        nick = RE_MSG.match(by[cid][i][2])[1]
        e = by[cid][i]
        return {cid: by[cid][:i] + [("r", e[1], f"* {nick} left")] + by[cid][i:]}

    def who_twice():
        cid = "c3"
        ev = by[cid]
        i = max(k for k, e in enumerate(ev) if e[0] == "r" and e[2].startswith("* members: "))
        names = ev[i][2][len("* members: "):].split()
        return {cid: ev[:i] + [("r", ev[i][1], "* members: " + " ".join(sorted(names + names[:1])))] + ev[i + 1:]}

    def guest_twice():
        a, b = "c1", "c2"
        first = next(e for e in by[a] if e[0] == "r")
        ev = by[b]
        k = next(i for i, e in enumerate(ev) if e[0] == "r")
        return {b: ev[:k] + [("r", ev[k][1], first[2])] + ev[k + 1:]}

    def unavailable_twice():
        cid, i = pick()
        t = by[cid][i][1]
        return {cid: by[cid][:i] + [("r", t, UNAVAILABLE_NOTICE), ("r", t, UNAVAILABLE_NOTICE)] + by[cid][i:]}

    def garbage():
        cid, i = pick()
        return {cid: by[cid][:i] + [("r", by[cid][i][1], "what is this")] + by[cid][i:]}

    def name_shared():
        # b is given a's name while a still uses it: b's own lines come back
        # under that name. The checker sees only names held for certain (from
        # one piece of evidence to the next), so the history must give some:
        # from a, a run of its own lines under one name; from b, an own line
        # inside that run (where the rename goes) and another one back under
        # the taken name before b's next rename. c1 and c2 first, as it
        # always was.
        def own_runs(a):
            runs = []  # [start, end, name] of a's runs of own lines under one name
            for e in by[a]:
                if nick := own_nick(a, e):
                    if runs and runs[-1][2] == nick:
                        runs[-1][1] = e[1]
                    else:
                        runs.append([e[1], e[1], nick])
            return sorted(runs, key=lambda r: r[0] - r[1])  # the longest first

        def rename_point(b, first, last, taken):
            ev = by[b]
            for i, e in enumerate(ev):
                mine = own_nick(b, e)
                if not mine or mine == taken or not first < e[1] <= (first + last) / 2:
                    continue
                for later in ev[i + 1:]:
                    if later[1] >= last or (later[0] == "r" and (r := RE_RENAME.match(later[2])) and r[1] == mine):
                        break
                    if own_nick(b, later) == mine:
                        return i
            return None

        clients = sorted(by)
        found = next(((b, i, taken) for a in ["c1"] + clients if a in by for first, last, taken in own_runs(a)
                      for b in ["c2"] + clients if b in by and b != a
                      if (i := rename_point(b, first, last, taken)) is not None), None)
        if found is None:
            raise RuntimeError("no time when one client keeps a name while another speaks twice")
        b, i, taken = found
        ev_b = by[b]
        t = ev_b[i][1]
        mine = RE_MSG.match(ev_b[i][2])[1]
        new = ev_b[:i + 1] + [("s", t, "nick", taken, f"/nick {taken}"), ("r", t, f"* {mine} is now {taken}")]
        rest = ev_b[i + 1:]
        for k, e in enumerate(rest):
            if e[0] != "r":
                new.append(e)
                continue
            line = e[2]
            if (r := RE_RENAME.match(line)) and r[1] == mine:
                new.append(("r", e[1], f"* {taken} is now {r[2]}"))
                new += rest[k + 1:]  # its own next rename: from there, as it was
                break
            if (m := RE_MSG.match(line)) and m[1] == mine:
                line = f"{taken}: {m[2]}"
            elif line in (f"* {mine} joined", f"* {mine} left"):
                line = line.replace(mine, taken)
            elif line.startswith("* members: "):
                line = "* members: " + " ".join(sorted(taken if x == mine else x for x in line[11:].split()))
            new.append(("r", e[1], line))
        return {b: new}

    def reaped_and_back(announced=True):
        # What SPEC allows a server paused past the TTL: its member is told
        # `unavailable`, its lines meanwhile are refused, the room is told
        # it left and, later, joined again, and it misses the room's lines
        # in between; then `restored`.
        # The first client (c4 first, as it always was) that spent 2 s of
        # the run's second half sending messages only, to one room: which
        # one did depends on the run's random commands. The checker ends an
        # excused hole at the room's first `* NAME joined` for any name the
        # member held near then (names are reused), so no such join or
        # leave may fall in the window.
        def names_of(m):
            names = {nick for e in by[m] if (nick := own_nick(m, e))}
            for e in by[m]:
                if e[0] == "r" and (r := RE_RENAME.match(e[2])) and (r[1] in names or r[2] in names):
                    names |= {r[1], r[2]}
            return names

        def announced_meanwhile(names, t1, t2):
            return any(e[0] == "r" and t1 - 1.0 <= e[1] <= t2 + 1.0
                       and ((j := RE_JOINED.match(e[2])) or (j := RE_LEFT.match(e[2]))) and j[1] in names
                       for evs in by.values() for e in evs)

        def quiet_window(m):
            sends = [(i, e) for i, e in enumerate(by[m]) if e[0] == "s"]
            names = names_of(m)
            for start in range(len(sends) // 2, len(sends) - 1):
                ta = sends[start][1][1]
                win = [x for x in sends[start:] if x[1][1] <= ta + 2.0]
                if len(win) >= 3 and start + len(win) < len(sends) and all(x[1][2] == "msg" for x in win) \
                        and len({room_of(x[1][3]) for x in win}) == 1 \
                        and not announced_meanwhile(names, ta, sends[start + len(win)][1][1]):
                    return ta, win, sends[start + len(win)][1]
            return None

        found = next(((m, w) for m in ["c4"] + sorted(by) if m in by and (w := quiet_window(m))), None)
        if found is None:
            raise RuntimeError("no 2 s of messages only")
        m, (ta, win, after) = found
        ev = by[m]
        room = room_of(win[0][1][3])
        t1, t2 = ta - 1e-4, after[1] - 1e-4
        own = {x[1][3] for x in win}
        name = next(nick for e in reversed(ev[:win[0][0]]) if (nick := own_nick(m, e)))
        def line_of(e):
            return (mm := RE_MSG.match(e[2])) and mm[2] if e[0] == "r" else None

        # What the member itself received meanwhile: a run of the room's
        # order. (The times others received lines at are no measure of it:
        # a line later in the order can reach a member of a faster server
        # before t1 while an earlier one reaches another after it.)
        missed = {x for e in ev if t1 < e[1] < t2 and (x := line_of(e)) and RE_TEXT.match(x)
                  and room_of(x) == room and not x.startswith(m + "-")}
        if not missed:
            raise RuntimeError("nothing said in the room meanwhile")

        new = []
        for e in ev:
            if e is win[0][1]:
                new.append(("r", t1, UNAVAILABLE_NOTICE))
            if e is after:
                new.append(("r", t2, RESTORED_NOTICE))
            if line_of(e) in missed or line_of(e) in own:
                continue
            new.append(e)
            if e[0] == "s" and e[3] in own:
                new.append(("r", e[1] + 1e-5, REFUSAL))
        changed = {m: new}
        for n, evs in by.items():
            if n == m:
                continue
            kept = [e for e in evs if line_of(e) not in own]
            idx = [i for i, e in enumerate(kept) if line_of(e) in missed]
            if idx and announced:
                lo, hi = idx[0], idx[-1]
                kept = kept[:lo] + [("r", kept[lo][1], f"* {name} left")] + kept[lo:hi + 1] \
                    + [("r", kept[hi][1], f"* {name} joined")] + kept[hi + 1:]
            changed[n] = kept
        return changed

    cases = [
        ("unchanged", lambda: {}, None),
        ("a line dropped at one member", drop, "lost"),
        ("a line dropped, `some lines may have been lost` in its place", drop_with_notice, None),
        ("a member reaped and back: its room's lines meanwhile missed", reaped_and_back, None),
        ("the same, the room not told it left (a blink, not a reap)", lambda: reaped_and_back(False), "lost"),
        ("a line received twice", duplicate, "duplicate"),
        ("two lines swapped at one member", swap, "order"),
        ("a sender's own line replaced by a refusal", refused_yet_delivered, "outcome"),
        ("a sender's own line never back", no_outcome, "outcome"),
        ("`* NICK left` before NICK's line", ghost, "ghost"),
        ("a name twice in /who", who_twice, "nick"),
        ("a client given a name another client still uses", name_shared, "nick"),
        ("one guestN given to two clients", guest_twice, "guest"),
        ("`unavailable` twice", unavailable_twice, "notices"),
        ("a line outside the protocol", garbage, "unexpected"),
    ]
    ok = True
    print("self-test: a clean history, tampered with, must fail on the rule it breaks:")
    for name, mutate, expect in cases:
        try:
            changed = mutate()
        except (RuntimeError, StopIteration, ValueError, IndexError) as e:
            ok = False
            print(f"  [FAIL] {name:62} could not be made from this history: {e!r}")
            continue
        a = Analysis(t0, build(changed))
        found = sorted(k for k, v in a.violations.items() if v)
        good = (expect in found) if expect else not found
        ok &= good
        print(f"  [{'ok  ' if good else 'FAIL'}] {name:62} expected {expect or 'PASS':10} got {','.join(found) or 'PASS'}")
        if not good:
            for line in a.verdict():
                print("        " + line)
    print(f"self-test: {'PASS' if ok else 'FAIL'}")
    return ok


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/edgeloop")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rooms", type=int, default=3)
    ap.add_argument("--faults", default="all", help="all, none (or 0), or a comma list of " + ",".join(FAULT_KINDS))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default="target/chat-checker")
    ap.add_argument("--analyse", metavar="HISTORY", help="only check a saved history.jsonl")
    ap.add_argument("--self-test", action="store_true",
                    help="a clean run, then its history tampered with: each tampering must be caught")
    args = ap.parse_args()
    if args.analyse:
        logs, meta = load_history(args.analyse)
        analysis = Analysis(0.0, logs)
        for text in meta.get("server_problems", []):
            analysis.violate("server", text)
        print("\n".join(analysis.summary() + analysis.verdict()))
        sys.exit(1 if analysis.failed() else 0)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1 << 31)
    if args.self_test:
        args.faults = "none"
    if args.faults in ("all", "1", "yes"):
        args.faults = FAULT_KINDS[:]
    elif args.faults in ("none", "0", "no", ""):
        args.faults = []
    else:
        args.faults = args.faults.split(",")
        bad = [k for k in args.faults if k not in FAULT_KINDS]
        if bad:
            ap.error(f"unknown fault kinds {bad}; known: {','.join(FAULT_KINDS)}")
    if args.duration < 20 and args.faults:
        ap.error("--duration must be at least 20 s with faults")
    if args.clients < 3 or args.servers < 1 or args.rooms < 1:
        ap.error("needs at least 3 clients, 1 server, 1 room")

    checker = Checker(args)
    # The whole run is bounded: traffic, the end, the probes, plus a margin.
    budget = args.duration + RESTORE_WAIT + 8 * OUTCOME_WAIT + 60

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # Also when started in the background, where SIGINT comes ignored.
    signal.signal(signal.SIGINT, on_signal)
    status = 2
    try:
        checker.start()

        async def bounded():
            await asyncio.wait_for(checker.run(), budget)

        asyncio.run(bounded())
        codes = checker.stop_all()
        print(f"[{now() - checker.t0:6.1f}s] servers stopped; checking the history", flush=True)
        for name, code in codes.items():
            if code != 0:
                checker.server_problems.append(f"{name}: exit status {code!r} on SIGTERM (0 expected)")
        # Saved first: a history can be checked again (--analyse) whatever happens next.
        save_history(os.path.join(checker.out, "history.jsonl"), checker.t0, checker.logs(),
                     {"seed": args.seed, "duration": args.duration, "faults": args.faults,
                      "server_problems": checker.server_problems})
        analysis, lines = checker.report()
        text = "\n".join(lines)
        print(text)
        with open(os.path.join(checker.out, "report.txt"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(checker.out, "violations.txt"), "w") as f:
            for key, _, _ in KINDS:
                for v in analysis.violations.get(key, []):
                    f.write(f"{key}\t{v}\n")
        status = 1 if analysis.failed() else 0
        if args.self_test:
            status = 0 if (status == 0 and self_test(checker.logs(), checker.t0)) else 1
    except KeyboardInterrupt:
        print("chat-checker: interrupted; stopping what it started", file=sys.stderr)
        status = 130
    except (RuntimeError, OSError, asyncio.TimeoutError) as e:
        print(f"chat-checker: could not run: {e!r}", file=sys.stderr)
        status = 2
    finally:
        checker.stop_all()
    sys.exit(status)


if __name__ == "__main__":
    main()
