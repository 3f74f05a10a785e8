#!/usr/bin/env python3
"""An independent WebSocket client (the `websockets` library) against
edgeloop, for the Rust tests (tests/websocket_python.rs).

    ws_check.py echo URL [--max-frame N]   echo --framing ws: types, sizes,
                                           fragments, pings, 20 clients at once,
                                           1009 past N, a clean close
    ws_check.py chat URL LINE              chat --ws: joins, reads its
                                           `* guestN joined`, sends LINE, prints
                                           every line it receives (one per
                                           line, flushed) until told to stop
                                           on stdin or 20 s pass

Exit 0 when every check held; otherwise 1 and the reason on stderr. Exit 3
when `websockets` is not installed (the caller decides whether that fails).
"""

import asyncio
import os
import sys

try:
    import websockets
    from websockets.exceptions import ConnectionClosed
except ImportError:
    print("python3 module websockets is not installed (pip install websockets)", file=sys.stderr)
    sys.exit(3)


def fail(why):
    print(f"ws_check: {why}", file=sys.stderr)
    sys.exit(1)


async def expect(ws, want, what):
    got = await asyncio.wait_for(ws.recv(), 20)
    if got != want or type(got) is not type(want):
        fail(f"{what}: sent {want!r:.80} ({type(want).__name__}), got {got!r:.80} ({type(got).__name__})")


async def one_client(url, n, i):
    async with websockets.connect(url, max_size=None) as ws:
        for k in range(n):
            msg = f"client {i} message {k}" if k % 2 else f"client {i} message {k}".encode()
            await ws.send(msg)
            await expect(ws, msg, f"client {i} message {k}")


async def echo(url, max_frame):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send("héllo, wörld")
        await expect(ws, "héllo, wörld", "text")
        await ws.send(b"\x00\xff\x01")
        await expect(ws, b"\x00\xff\x01", "binary")
        big = os.urandom(300_000)
        await ws.send(big)
        await expect(ws, big, "300 KB binary")
        # A fragmented message: websockets sends an iterable as fragments.
        await ws.send(["frag", "ment", "ed é"])
        await expect(ws, "fragmented é", "fragmented text")
        await ws.send([b"ab", b"", b"cd"])
        await expect(ws, b"abcd", "fragmented binary")
        pong = await ws.ping(b"ping payload")
        await asyncio.wait_for(pong, 20)
        # Many messages before reading any.
        msgs = [f"burst {k}" for k in range(200)]
        for m in msgs:
            await ws.send(m)
        for m in msgs:
            await expect(ws, m, "burst")
    if ws.close_code != 1000:
        fail(f"closing: the server answered {ws.close_code}, not 1000")
    await asyncio.gather(*(one_client(url, 50, i) for i in range(20)))
    if max_frame:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(b"x" * (max_frame + 1))
            try:
                await asyncio.wait_for(ws.recv(), 20)
                fail("a message over --max-frame was echoed")
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
                if code != 1009:
                    fail(f"a message over --max-frame: closed with {code}, not 1009")
    print("ok")


async def chat(url, line):
    async with websockets.connect(url, max_size=None) as ws:
        first = await asyncio.wait_for(ws.recv(), 20)
        print(first, flush=True)
        await ws.send(line)
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, sys.stdin.readline)
        while True:
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, stop}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                break
            msg = recv.result()
            if not isinstance(msg, str):
                fail(f"the chat sent a binary message: {msg!r}")
            if "\n" in msg:
                fail(f"a chat line with a newline: {msg!r}")
            print(msg, flush=True)
        await ws.close()


def main():
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "echo":
        max_frame = int(args[3]) if len(args) == 4 and args[2] == "--max-frame" else 0
        asyncio.run(echo(args[1], max_frame))
    elif len(args) == 3 and args[0] == "chat":
        asyncio.run(chat(args[1], args[2]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
