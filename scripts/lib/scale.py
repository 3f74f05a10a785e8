#!/usr/bin/env python3
"""Measurements and the report of scripts/scale.sh (stdlib only).

  scale.py snapshot FILE PID
        one JSON object: the server's VmRSS and descriptors, /proc/net/sockstat,
        the socket-related slab caches (/proc/slabinfo), Slab from /proc/meminfo
  scale.py sample PID FILE
        the same, twice a second, one JSON line each, until killed (SIGTERM)
  scale.py report OUTDIR CONNS RATE LOAD_RC
        the markdown result from OUTDIR's files (see scale.sh); exit 1 when a
        promise was not kept, 3 when only the load's latency verdict was not
        `ok` (its exit status 3), else 0

What the kernel figures are, and are not:
  - /proc/net/sockstat `TCP: mem` is the memory charged to TCP sockets for
    their queued data, in pages (tcp_memory_allocated): buffers, not the
    sockets themselves. An idle socket has almost nothing there.
  - The sockets themselves (struct tcp_sock, the socket inode, its struct
    file and dentry, and on the server its epoll item) are slab objects:
    read from /proc/slabinfo (active objects x object size) for those caches.
    Slab counts are machine-wide: other processes move them too (dentry most
    of all), so the per-cache table shows objects per connection, which should
    be about 2 (both ends of a loopback connection) or 1 (epoll, server only).
  - On loopback both ends of every connection are on this machine, so every
    kernel delta covers 2 x CONNS sockets; per-socket figures divide by the
    measured change of sockstat `inuse`.
"""
import json
import os
import signal
import statistics
import sys
import time

from bench import load_json  # scripts/lib/bench.py, beside this file

PAGE = os.sysconf("SC_PAGE_SIZE")
# The slab caches a TCP socket lives in (names as in /proc/slabinfo).
SLAB_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def nfds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def sockstat():
    """{'inuse', 'orphan', 'tw', 'alloc', 'mem'} of the TCP line."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                p = line.split()[1:]
                return {p[i]: int(p[i + 1]) for i in range(0, len(p) - 1, 2)}
    return {}


def slabs():
    """{cache: [active_objs, objsize]} for SLAB_CACHES (empty if unreadable)."""
    out = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                p = line.split()
                if p and p[0] in SLAB_CACHES:
                    out[p[0]] = [int(p[1]), int(p[3])]
    except OSError:
        pass
    return out


def meminfo_slab_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return None


def snapshot(pid):
    return {
        "t": time.time(),
        "rss_kib": rss_kib(pid),
        "fds": nfds(pid),
        "sockstat": sockstat(),
        "slab": slabs(),
        "slab_kib": meminfo_slab_kib(),
    }


def cmd_sample(pid, path):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(path, "w") as f:
        while True:
            f.write(json.dumps(snapshot(pid)) + "\n")
            f.flush()
            time.sleep(0.5)


# ---- the report


def read_lines(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # a line cut by the sampler's end
    except OSError:
        pass
    return out


def kernel_delta(a, b):
    """Kernel cost between two snapshots: (sockets, tcp buffer bytes, slab
    bytes, {cache: objects}, tw, orphan)."""
    socks = b["sockstat"].get("inuse", 0) - a["sockstat"].get("inuse", 0)
    mem = (b["sockstat"].get("mem", 0) - a["sockstat"].get("mem", 0)) * PAGE
    objs, slab_bytes = {}, 0
    for c in SLAB_CACHES:
        if c in a["slab"] and c in b["slab"]:
            d = b["slab"][c][0] - a["slab"][c][0]
            objs[c] = d
            slab_bytes += d * b["slab"][c][1]
    return socks, mem, slab_bytes, objs


def fmt_int(x):
    return f"{x:,.0f}".replace(",", " ")


def fmt_bytes(b):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(b) >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b:.0f} B"


def cmd_report(outdir, conns, rate, load_rc):
    conns, rate, load_rc = int(conns), float(rate), int(load_rc)
    ok = True
    notes = []

    # -- idle phase: idle_conns.py's line and its snapshots
    idle = {}
    try:
        with open(f"{outdir}/idle.txt") as f:
            before, opened, used, accepted, echoed = map(int, f.read().split())
        idle = dict(before=before, opened=opened, used=used, accepted=accepted, echoed=echoed)
    except (OSError, ValueError):
        notes.append("the idle phase failed (see idle.txt.err)")
        ok = False
    snaps = {m: load_json(f"{outdir}/idle/{m}.json") for m in ("before", "opened", "used")}

    # -- active phase: the load's summary and the samples
    load = load_json(f"{outdir}/load.json") or {}
    samples = [s for s in read_lines(f"{outdir}/active.jsonl") if s.get("rss_kib") is not None]
    act_before = load_json(f"{outdir}/active-before.json")
    act_after = load_json(f"{outdir}/active-after.json")
    fds0 = act_before["fds"] if act_before else None
    # Samples while the server held every connection (all connected; the
    # load starts on each connection as it opens, so this is the load).
    held = [s for s in samples if fds0 is not None and s["fds"] is not None and s["fds"] - fds0 >= conns]
    peak_conns = max((s["fds"] - fds0 for s in samples if s["fds"] is not None), default=0) if fds0 else 0

    print(f"### One server, {fmt_int(conns)} connections (`scripts/scale.sh`)")
    print()
    lat = load.get("latency_us", {})
    errs = load.get("errors", {})
    mismatch = errs.get("mismatch")
    print("| figure | value |")
    print("|---|---:|")
    print(f"| connections held by the server (idle phase / load phase, peak) | {fmt_int(idle.get('accepted', 0))} / {fmt_int(peak_conns)} |")
    print(f"| load: connections opened | {fmt_int(load.get('connected', 0))} of {fmt_int(conns)} |")
    print(f"| load: rate asked / achieved (msg/s) | {fmt_int(rate)} / {fmt_int(load.get('achieved_rate', 0))} |")
    if lat:
        print(f"| load: response time p50 / p99 / max (µs, from due time) | {lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f} |")
        svc = load.get("service_us", {})
        if svc:
            print(f"| load: service time p50 / p99 (µs, from send) | {svc['p50']:.0f} / {svc['p99']:.0f} |")
    print(f"| load: messages in the window ({load.get('window_s', 0):.1f} s) | {fmt_int(load.get('messages', 0))} |")
    print(f"| load: mismatches / resets / closed / connect failures | {mismatch} / {errs.get('reset')} / {errs.get('closed')} / {errs.get('connect_failed')} |")
    print(f"| load: verdict (exit status) | {load.get('verdict', '-')} ({load_rc}) |")

    # user space
    rss_idle = rss_used = rss_active = rss_after = None
    if idle and idle["accepted"]:
        rss_idle = (idle["opened"] - idle["before"]) * 1024 / conns
        rss_used = (idle["used"] - idle["before"]) * 1024 / conns
        print(f"| server RSS: before / {fmt_int(conns)} idle / after one echo each | "
              f"{idle['before'] / 1024:.1f} / {idle['opened'] / 1024:.1f} / {idle['used'] / 1024:.1f} MiB |")
        print(f"| **user space per idle connection** (never sent / after one echo) | **{rss_idle:.0f} B** / {rss_used:.0f} B |")
    if held and act_before:
        rss_active_kib = statistics.median(s["rss_kib"] for s in held)
        rss_max_kib = max(s["rss_kib"] for s in held)
        rss_active = (rss_active_kib - act_before["rss_kib"]) * 1024 / conns
        line = (f"| server RSS under load: before / median / max ({len(held)} samples) | "
                f"{act_before['rss_kib'] / 1024:.1f} / {rss_active_kib / 1024:.1f} / {rss_max_kib / 1024:.1f} MiB |")
        print(line)
        print(f"| **user space per active connection** (median under load) | **{rss_active:.0f} B** |")
        if act_after and act_after.get("rss_kib"):
            rss_after = (act_after["rss_kib"] - act_before["rss_kib"]) * 1024 / conns
            print(f"| server RSS after the load closed its connections | {act_after['rss_kib'] / 1024:.1f} MiB ({rss_after:.0f} B per connection it had) |")
    else:
        notes.append("no sample saw every connection held at once under load")
        ok = False

    # kernel
    k_idle = k_active = None
    if snaps["before"] and snaps["opened"]:
        k_idle = kernel_delta(snaps["before"], snaps["opened"])
    mem_med = mem_max = None
    if held and act_before:
        k_active = kernel_delta(act_before, held[len(held) // 2])
        mems = [(s["sockstat"].get("mem", 0) - act_before["sockstat"].get("mem", 0)) * PAGE for s in held]
        # The counter moves in per-CPU batches (up to 1 MiB each): a change
        # below that reads as 0 or even negative.
        mem_med, mem_max = max(statistics.median(mems), 0), max(max(mems), 0)
    if k_idle and k_idle[0] > 0:
        socks, mem, slab_bytes, objs = k_idle
        mem = max(mem, 0)
        print(f"| kernel, {fmt_int(conns)} idle: sockets (both ends, sockstat `inuse`) / TCP buffer memory (sockstat `mem`) | "
              f"{fmt_int(socks)} / {fmt_bytes(mem)} = **{mem / socks:.0f} B per socket** |")
        if slab_bytes:
            print(f"| kernel, idle: socket slab caches ({', '.join(SLAB_CACHES)}; TCP objects per connection {objs.get('TCP', 0) / conns:.2f}) | "
                  f"{fmt_bytes(slab_bytes)} = **{slab_bytes / socks:.0f} B per socket** |")
    if k_active and k_active[0] > 0 and mem_med is not None:
        socks = k_active[0]
        print(f"| kernel, under load: sockets / TCP buffer memory, median / max of {len(held)} samples | "
              f"{fmt_int(socks)} / {fmt_bytes(mem_med)} / {fmt_bytes(mem_max)} = **{mem_med / socks:.0f} / {mem_max / socks:.0f} B per socket** |")
        if k_active[2]:
            print(f"| kernel, under load: socket slab caches | {fmt_bytes(k_active[2])} = **{k_active[2] / socks:.0f} B per socket** |")
    sizes = (snaps["opened"] or {}).get("slab") or {}
    # One server-side socket: its tcp_sock, socket inode, struct file,
    # dentry and epoll item, at this kernel's object sizes.
    socket_objects = sum(sizes[c][1] for c in SLAB_CACHES if c in sizes) if len(sizes) == len(SLAB_CACHES) else None
    if socket_objects:
        parts = " + ".join(f"{c} {sizes[c][1]}" for c in SLAB_CACHES)
        print(f"| kernel objects of one server socket (slabinfo object sizes: {parts}) | {socket_objects} B |")
    for name, snap in (("idle", snaps["opened"]), ("under load (mid-window)", held[len(held) // 2] if held else None)):
        if snap:
            ss = snap["sockstat"]
            print(f"| sockstat TCP, {name} | inuse {ss.get('inuse')}, orphan {ss.get('orphan')}, "
                  f"tw {ss.get('tw')}, mem {ss.get('mem')} pages |")
    print()

    # -- the model
    if rss_idle is not None:
        n = 1_000_000
        kobj = socket_objects or (k_idle[2] / k_idle[0] if k_idle and k_idle[0] > 0 else 0)
        buf_idle = max(k_idle[1] / k_idle[0], 0) if k_idle and k_idle[0] > 0 else 0
        rows = [("idle (connected, nothing in flight)", rss_idle, buf_idle)]
        if rss_active is not None and mem_max is not None and k_active[0] > 0:
            rows.append((f"active ({rate / conns:g} msg/s each, 64 B; buffers at the worst sample)", rss_active,
                         max(mem_max / k_active[0], 0)))
        print(f"#### What {fmt_int(n)} connections would cost (a model from the figures above)")
        print()
        print("| state | user space (RSS) | kernel: socket objects | kernel: TCP buffers | total |")
        print("|---|---:|---:|---:|---:|")
        for name, user, buf in rows:
            total = (user + kobj + buf) * n
            print(f"| {name} | {fmt_bytes(user * n)} ({user:.0f} B) | {fmt_bytes(kobj * n)} ({kobj:.0f} B) | "
                  f"{fmt_bytes(buf * n)} ({buf:.0f} B) | {fmt_bytes(total)} |")
        print()

    if idle and idle["accepted"] < conns:
        notes.append(f"the server accepted {idle['accepted']} of {conns} idle connections")
        ok = False
    if idle and idle["echoed"] < conns:
        notes.append(f"{conns - idle['echoed']} idle connections did not get their one echo back")
        ok = False
    if rss_idle is not None and rss_idle > 128:
        notes.append(f"{rss_idle:.0f} B per idle connection is over the 128 B the unit test guards")
        ok = False
    verdict_only = False
    if load_rc == 3:
        notes.append(f"`edgeloop load` exited 3: verdict {load.get('verdict')}: {'; '.join(load.get('verdict_reasons', []))}")
        verdict_only = True
    elif load_rc != 0:
        notes.append(f"`edgeloop load` exited {load_rc}" + (" (the server died)" if load_rc == 99 else ""))
        ok = False
    if mismatch:
        notes.append(f"{mismatch} echoes differed")
        ok = False
    if load.get("connected", 0) < conns:
        notes.append(f"the load opened {load.get('connected', 0)} of {conns} connections")
        ok = False
    for n_ in notes:
        print(f"- {n_}")
    if not ok:
        print("- result: **FAIL**")
        return 1
    if verdict_only:
        print("- result: **PASS** for holding and verifying every connection; the latency verdict was not `ok`"
              " (on a shared machine, see the reasons above): exit status 3")
        return 3
    print("- result: **PASS**")
    return 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "snapshot" and len(sys.argv) == 4:
        with open(sys.argv[2], "w") as f:
            json.dump(snapshot(int(sys.argv[3])), f)
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "sample" and len(sys.argv) == 4:
        return cmd_sample(int(sys.argv[2]), sys.argv[3])
    if len(sys.argv) >= 2 and sys.argv[1] == "report" and len(sys.argv) == 6:
        return cmd_report(*sys.argv[2:])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
