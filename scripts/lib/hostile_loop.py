"""The tiny event loop under scripts/lib/hostile.py (stdlib only): client
sockets on one `selectors` loop with timers on a heap, expectations on what
an echo must return, and the echo server's framings.

Kept apart from the modes so that each reads on its own: this file is how a
client talks to a socket; hostile.py is what each hostile client says.
"""
import collections
import errno
import heapq
import os
import selectors
import socket
import struct
import time


class Conn:
    """One non-blocking client socket: an output buffer, read interest that
    can be paused, and events for its owner (a mode): on_open, on_data,
    on_eof, on_error."""

    def __init__(self, loop, owner, sock):
        self.loop, self.owner, self.sock = loop, owner, sock
        self.out = bytearray()
        self.connecting = True
        self.reading = True
        self.eof = False
        self.closed = False
        self.mask = 0
        self.state = {}  # the owner's

    def send(self, data):
        if self.closed:
            return
        self.out += data
        self.flush()

    def flush(self):
        while self.out and not self.closed and not self.connecting:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                return self.fail(e)
            del self.out[:n]
        self.update()

    def pause(self, paused):
        self.reading = not paused
        self.update()

    def shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, reset=False):
        if self.closed:
            return
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.closed = True
        self.update()
        self.sock.close()
        self.loop.live -= 1

    def fail(self, e):
        if not self.closed:
            self.close()
            self.owner.on_error(self, e)

    def update(self):
        want = 0
        if not self.closed:
            if self.connecting or self.out:
                want |= selectors.EVENT_WRITE
            if self.reading and not self.eof and not self.connecting:
                want |= selectors.EVENT_READ
        if want == self.mask:
            return
        if self.mask and want:
            self.loop.sel.modify(self.sock, want, self)
        elif want:
            self.loop.sel.register(self.sock, want, self)
        else:
            self.loop.sel.unregister(self.sock)
        self.mask = want

    def on_event(self, events):
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self.fail(OSError(err, os.strerror(err)))
            self.connecting = False
            self.update()
            self.owner.on_open(self)
            if self.closed:
                return
            self.flush()
        if events & selectors.EVENT_WRITE and self.out:
            self.flush()
        if events & selectors.EVENT_READ and not self.closed:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                return self.fail(e)
            if data:
                self.owner.on_data(self, data)
            else:
                self.eof = True
                self.update()
                self.owner.on_eof(self)


class Loop:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.timers = []
        self.seq = 0
        self.live = 0

    def later(self, delay, fn):
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self.seq, fn))

    def connect(self, addr, owner, nodelay=True):
        sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(self, owner, sock)
        self.live += 1
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            conn.fail(OSError(err, os.strerror(err)))
        else:
            conn.update()
        return conn

    def run(self, until):
        """Serve events and timers until `until()` is true."""
        while not until():
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn = heapq.heappop(self.timers)
                fn()
            if until():
                break
            wait = min(self.timers[0][0] - time.monotonic(), 0.1) if self.timers else 0.1
            for key, events in self.sel.select(max(wait, 0)):
                key.data.on_event(events)


class Expect:
    """The bytes sent on a connection and not yet echoed, in order."""

    def __init__(self):
        self.chunks = collections.deque()
        self.pending = 0

    def push(self, data):
        if data:
            self.chunks.append(memoryview(bytes(data)))
            self.pending += len(data)

    def take(self, data):
        """Consume `data` from the front; None if it matches, else a
        description of the first difference (or of bytes never sent)."""
        off = 0
        while off < len(data):
            if not self.chunks:
                return f"{len(data) - off} bytes echoed that were never sent"
            head = self.chunks[0]
            n = min(len(head), len(data) - off)
            if head[:n] != data[off : off + n]:
                i = next(i for i in range(n) if head[i] != data[off + i])
                return f"byte {off + i} of a read: expected 0x{head[i]:02x}, got 0x{data[off + i]:02x}"
            off += n
            self.pending -= n
            self.chunks[0] = head[n:]
            if not len(self.chunks[0]):
                self.chunks.popleft()
        return None


# ---- framing (echo)


def frame(framing, payload):
    """`payload` as one frame on the wire of an echo server with `framing`."""
    if framing in ("1", "2", "4"):
        width = int(framing)
        return len(payload).to_bytes(width, "big") + payload
    if framing == "line":
        return payload.replace(b"\n", b" ") + b"\n"
    return payload  # raw


def printable(rng, n):
    return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(n))
