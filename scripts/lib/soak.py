#!/usr/bin/env python3
"""The sampler, the settling wait and the verdict of scripts/soak.sh
(stdlib only).

  soak.py sample CSV T0 NAME=PID...
        every second (on the second, counted from the epoch time T0), one row
        per process: t_s, server, rss_kib (VmRSS), fds (entries of
        /proc/PID/fd), cpu_pct (utime + stime over the last second, % of one
        core). A process that is gone gets a row with the figures empty.
        Runs until SIGTERM.
  soak.py settle DIR TIMEOUT NAME=PID...
        after the clients have stopped: wait (at most TIMEOUT seconds) until
        each server's descriptor count is back to its baseline (the median
        of its samples before the clients started, from DIR/samples.csv and
        DIR/phases) plus FD_SLACK; write DIR/settle.json.
  soak.py report DIR
        the markdown summary from DIR's files; exit 1 on FAIL.

The verdict (FAIL if any):
  - a server died: a sample found it gone, or SIGTERM did not end it with
    exit status 0 (DIR/exit-NAME);
  - an echoed byte differed, a load run failed (exit status other than 0 or
    3), or its connections were reset, closed or refused;
  - a chat message was lost, garbled or out of order, or a member was
    disconnected (scripts/lib/chat_soak.py);
  - a hostile client saw something the server promises cannot happen
    (scripts/lib/hostile.py exits 1);
  - RSS grew without bound (see rss_verdict);
  - descriptors did not come back to the baseline after the clients left
    (settle), or grew under steady load (fds_verdict).
A latency verdict other than `ok` from `edgeloop load` (exit status 3:
usually other processes on two shared cores) is reported, not a failure.
Redis is sampled for information only.
"""
import csv
import glob
import json
import os
import signal
import statistics
import sys
import time

from bench import load_json  # scripts/lib/bench.py, beside this file

CLK_TCK = os.sysconf("SC_CLK_TCK")
FD_SLACK = 2  # a listener's worth: descriptors the settle check tolerates
SERVERS = ("echo", "chat1", "chat2")  # what the verdict is about; others are info


def read_status(pid):
    """(rss_kib, fds, cpu_ticks) or None when the process is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        # Fields after the command name (which may hold spaces) in parentheses.
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[0] in ("Z", "X"):
            return None
        ticks = int(rest[11]) + int(rest[12])
        rss = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return (rss, fds, ticks) if rss is not None else None
    except (OSError, ValueError, IndexError):
        return None


def cmd_sample(path, t0, procs):
    t0 = float(t0)
    procs = [p.split("=", 1) for p in procs]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    last = {}
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["t_s", "server", "rss_kib", "fds", "cpu_pct"])
        k = int(time.time() - t0) + 1
        while True:
            time.sleep(max(t0 + k - time.time(), 0))
            now = time.time()
            for name, pid in procs:
                st = read_status(pid)
                if st is None:
                    w.writerow([f"{now - t0:.1f}", name, "", "", ""])
                    last.pop(name, None)
                    continue
                rss, fds, ticks = st
                cpu = ""
                if name in last:
                    t_prev, ticks_prev = last[name]
                    cpu = f"{100.0 * (ticks - ticks_prev) / CLK_TCK / max(now - t_prev, 1e-3):.1f}"
                last[name] = (now, ticks)
                w.writerow([f"{now - t0:.1f}", name, rss, fds, cpu])
            f.flush()
            k = max(k + 1, int(time.time() - t0) + 1)


def read_samples(d):
    rows = {}
    with open(f"{d}/samples.csv", newline="") as f:
        for r in csv.DictReader(f):
            alive = r["rss_kib"] != ""
            rows.setdefault(r["server"], []).append({
                "t": float(r["t_s"]),
                "alive": alive,
                "rss": int(r["rss_kib"]) if alive else None,
                "fds": int(r["fds"]) if alive else None,
                "cpu": float(r["cpu_pct"]) if alive and r["cpu_pct"] else None,
            })
    return rows


def read_phases(d):
    """{name: t_s} from DIR/phases (lines "NAME T_S", written by soak.sh)."""
    out = {}
    with open(f"{d}/phases") as f:
        for line in f:
            p = line.split()
            if len(p) == 2:
                out[p[0]] = float(p[1])
    return out


def baseline_fds(samples, phases):
    before = [s["fds"] for s in samples if s["alive"] and s["t"] < phases["clients_start"]]
    return int(statistics.median(before)) if before else None


def cmd_settle(d, timeout, procs):
    timeout = float(timeout)
    samples, phases = read_samples(d), read_phases(d)
    want = {name: baseline_fds(samples.get(name, []), phases) for name, _ in (p.split("=", 1) for p in procs)}
    pids = dict(p.split("=", 1) for p in procs)
    start = time.monotonic()
    result = {}
    while True:
        waited = time.monotonic() - start
        for name, pid in pids.items():
            if name in result and result[name]["ok"]:
                continue
            st = read_status(pid)
            fds = st[1] if st else None
            ok = fds is not None and want[name] is not None and fds <= want[name] + FD_SLACK
            result[name] = {"baseline": want[name], "fds": fds, "seconds": round(waited, 1), "ok": ok}
        if all(r["ok"] for r in result.values()) or waited >= timeout:
            break
        time.sleep(0.5)
    with open(f"{d}/settle.json", "w") as f:
        json.dump(result, f)
    return 0


# ---- the verdict


def window(samples, a, b, key):
    return [s[key] for s in samples if s["alive"] and a <= s["t"] <= b and s[key] is not None]


def judged_medians(samples, start, stop, key):
    """The medians of `key` over the 20-40 % window of the loaded phase and
    over its last 20 % (None with too few samples): the two ends a growth
    check compares."""
    span = stop - start
    ref = window(samples, start + 0.2 * span, start + 0.4 * span, key)
    last = window(samples, start + 0.8 * span, stop, key)
    if len(ref) < 3 or len(last) < 3:
        return None
    return statistics.median(ref), statistics.median(last)


def rss_verdict(samples, start, stop):
    """Growth without bound, robustly.

    A server whose memory is bounded reaches a plateau once every limit has
    been reached once: buffer pools, the allocator's arenas, the flood
    connections' output queues (up to --max-outbuf each) and the slab of
    connections at its high-water mark. So the first 20 % of the loaded
    phase is warm-up and is not judged; the median RSS of the last 20 % is
    compared with the median of the 20-40 % window. Medians, because a
    flood connection filling its 4 MiB queue, or one being drained, makes
    spikes that say nothing about growth. The allowance, max(4 MiB, 10 %),
    absorbs the allocator's step changes (glibc keeping or returning a
    freed arena, fragmentation after the queues' reallocations), which are
    not growth without bound. A leak grows with time or traffic and
    passes any fixed allowance given a long enough run: the two medians
    stand 0.6 of the run apart, so the longer the soak, the smaller the
    leak it catches — 30 minutes catch about 4 KiB/s (4 MiB in 18 min):
    200 bytes per storm connection at soak.sh's 20 a second, or one byte
    per echoed message at 5 000 a second. The slope over the judged part
    is printed too, so that a smaller trend is visible.
    """
    medians = judged_medians(samples, start, stop, "rss")
    if medians is None:
        return None, "too few samples"
    r, l_ = medians
    span = stop - start
    allow = max(4096, 0.10 * r)
    pts = [(s["t"], s["rss"]) for s in samples if s["alive"] and start + 0.2 * span <= s["t"] <= stop]
    slope = 0.0
    if len(pts) >= 2:
        mt = statistics.fmean(t for t, _ in pts)
        mr = statistics.fmean(v for _, v in pts)
        den = sum((t - mt) ** 2 for t, _ in pts)
        slope = sum((t - mt) * (v - mr) for t, v in pts) / den * 60 if den else 0.0
    ok = l_ <= r + allow
    return ok, f"{r / 1024:.1f} → {l_ / 1024:.1f} MiB (allowed +{allow / 1024:.1f}); trend {slope:+.0f} KiB/min"


def fds_verdict(samples, start, stop):
    """Descriptors under steady load: the same windows as RSS, medians, an
    allowance of max(64, 25 %) (storm and malformed connections come and
    go). The strict check is the settle one, after the clients leave."""
    medians = judged_medians(samples, start, stop, "fds")
    if medians is None:
        return None, "too few samples"
    r, l_ = medians
    allow = max(64, 0.25 * r)
    return l_ <= r + allow, f"{r:.0f} → {l_:.0f} (allowed +{allow:.0f})"


def read_rc(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def last_stats(path):
    """The last `--stats` line of a server's stderr, as a dict."""
    line = None
    try:
        with open(path, errors="replace") as f:
            for ln in f:
                if ln.startswith("stats "):
                    line = ln
    except OSError:
        return {}
    if not line:
        return {}
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)


def mib(kib):
    return f"{kib / 1024:.1f}" if kib is not None else "-"


def cmd_report(d):
    samples, phases = read_samples(d), read_phases(d)
    settle = load_json(f"{d}/settle.json") or {}
    start = phases["clients_start"]
    # The loaded phase as planned: clients that take longer to finish (a
    # chat client waiting for messages that will never come) do not
    # stretch the windows the growth checks compare.
    last_t = max((x["t"] for ss in samples.values() for x in ss), default=start)
    stop = min(phases.get("clients_stop", last_t), start + phases.get("duration", 1e18))
    fails = []

    print(f"### Soak: {stop - start:.0f} s of load (`scripts/soak.sh {phases.get('duration', 0):.0f}`)")
    print()
    print("Descriptors: baseline before the clients, maximum, and after the clients left (the settle wait).")
    print("The growth checks compare the median of the last 20 % of the loaded phase with that of its 20–40 % window.")
    print()
    print("| server | RSS MiB start / median / max / end | RSS growth (median 20–40 % → last 20 %) "
          "| fds baseline / max / end (after clients left) | fds under load | CPU mean | alive, exit |")
    print("|---|---|---|---|---|---:|---|")
    for name in list(SERVERS) + sorted(set(samples) - set(SERVERS)):
        ss = samples.get(name, [])
        live = [s for s in ss if s["alive"]]
        judged = name in SERVERS
        if not live:
            print(f"| {name} | - | - | - | - | - | never seen |")
            if judged:
                fails.append(f"{name}: never sampled")
            continue
        rss = [s["rss"] for s in live]
        loaded = [s for s in live if start <= s["t"] <= stop]
        rss_med = statistics.median(s["rss"] for s in loaded) if loaded else None
        cpu = [s["cpu"] for s in loaded if s["cpu"] is not None]
        base = baseline_fds(ss, phases)
        fmax = max(s["fds"] for s in live)
        st = settle.get(name, {})
        end_fds = st.get("fds", live[-1]["fds"])
        ok_rss, rss_txt = rss_verdict(ss, start, stop)
        ok_fds, fds_txt = fds_verdict(ss, start, stop)
        died = [s["t"] for s in ss if not s["alive"] and s["t"] <= phases.get("servers_stop", 1e18)]
        rc = read_rc(f"{d}/exit-{name}")
        alive_txt = "yes" if not died else f"**died** at {died[0]:.0f} s"
        alive_txt += f", exit {rc}" if rc is not None else ""
        settle_txt = f"{base} / {fmax} / {'-' if end_fds is None else end_fds}"
        if st:
            settle_txt += f" ({'back' if st.get('ok') else '**not back**'} in {st.get('seconds')} s)"
        print(f"| {name}{'' if judged else ' (info)'} | {mib(rss[0])} / {mib(rss_med)} / {mib(max(rss))} / {mib(rss[-1])} | "
              f"{'' if ok_rss is not False else '**'}{rss_txt}{'' if ok_rss is not False else '**'} | {settle_txt} | "
              f"{fds_txt} | {statistics.fmean(cpu) if cpu else 0:.1f} % | {alive_txt} |")
        if not judged:
            continue
        if died:
            fails.append(f"{name} died (no process at {died[0]:.0f} s)")
        if rc not in (0, None):
            fails.append(f"{name}: exit status {rc} when stopped (SIGTERM must end it with 0)")
        if ok_rss is False:
            fails.append(f"{name}: RSS grew: {rss_txt}")
        if ok_fds is False:
            fails.append(f"{name}: descriptors grew under load: {fds_txt}")
        if st and not st.get("ok"):
            have = "gone" if st.get("fds") is None else f"{st.get('fds')} descriptors"
            fails.append(f"{name}: {have} {st.get('seconds')} s after the clients left (baseline {base})")
    print()

    # -- the echo load, in consecutive runs
    runs = []
    for path in sorted(glob.glob(f"{d}/load-*.json"), key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0])):
        runs.append((load_json(path), read_rc(path[:-5] + ".rc"), path))
    if runs:
        msgs = sum((j or {}).get("messages", 0) for j, _, _ in runs)
        window_s = sum((j or {}).get("window_s", 0) for j, _, _ in runs)
        p99s = [j["latency_us"]["p99"] for j, _, _ in runs if j and j.get("latency_us")]
        maxs = [j["latency_us"]["max"] for j, _, _ in runs if j and j.get("latency_us")]
        errs = {}
        for j, _, _ in runs:
            for k, v in ((j or {}).get("errors") or {}).items():
                errs[k] = errs.get(k, 0) + v
        verdicts = {}
        for j, rc, _ in runs:
            v = (j or {}).get("verdict", f"exit {rc}")
            verdicts[v] = verdicts.get(v, 0) + 1
        j0 = next((j for j, _, _ in runs if j), {})
        print("| echo load (`edgeloop load`, open loop) | value |")
        print("|---|---:|")
        print(f"| runs × conns, asked rate | {len(runs)} × {j0.get('conns', '-')}, {j0.get('rate', 0):.0f} msg/s "
              f"({j0.get('size', '-')} B, framing {j0.get('framing', '-')}) |")
        print(f"| achieved rate (all windows) | {msgs / window_s if window_s else 0:.0f} msg/s ({msgs} messages in {window_s:.0f} s) |")
        if p99s:
            print(f"| p99 per run: median / worst (µs, from due time) | {statistics.median(p99s):.0f} / {max(p99s):.0f} |")
            print(f"| max (µs) | {max(maxs):.0f} |")
        print(f"| mismatches / reset / closed / connect failures | {errs.get('mismatch', 0)} / {errs.get('reset', 0)} / {errs.get('closed', 0)} / {errs.get('connect_failed', 0)} |")
        print(f"| verdicts | {', '.join(f'{k} {v}' for k, v in sorted(verdicts.items()))} |")
        print()
        if errs.get("mismatch", 0):
            fails.append(f"echo load: {errs['mismatch']} echoes differed")
        for k in ("reset", "closed", "connect_failed"):
            if errs.get(k, 0):
                fails.append(f"echo load: {errs[k]} connections {k.replace('_', ' ')}")
        for j, rc, path in runs:
            if rc not in (0, 3):
                fails.append(f"echo load: {os.path.basename(path)} exited {rc}")
    else:
        fails.append("echo load: no run")

    # -- chat across the two servers
    chat = load_json(f"{d}/chat.json")
    chat_rc = read_rc(f"{d}/chat.rc")
    if chat:
        lat = chat.get("latency_ms", {})
        print("| chat across two servers on Redis (`chat_soak.py`) | value |")
        print("|---|---:|")
        print(f"| members, messages sent, rate | {chat.get('members')}, {chat.get('sent')}, {chat.get('msgs_per_sec', 0):.0f} msg/s |")
        print(f"| deliveries expected / received / lost | {chat.get('expected')} / {chat.get('received')} / {chat.get('lost')} |")
        print(f"| garbled / disconnected / one order in every room | {chat.get('garbled', 0)} / {chat.get('disconnected', 0)} / {'yes' if not chat.get('order_differs') else '**no**'} |")
        print(f"| delivery latency p50 / p99 / max (ms, through Redis) | {lat.get('p50')} / {lat.get('p99')} / {lat.get('max')} |")
        print()
    if chat_rc != 0:
        fails.append(f"chat: chat_soak.py exited {chat_rc}" + (f" (lost {chat.get('lost')}, garbled {chat.get('garbled', 0)})" if chat else ""))

    # -- hostile clients
    hostile = sorted(glob.glob(f"{d}/hostile-*.json"))
    rcs = sorted(glob.glob(f"{d}/hostile-*.rc"))
    if rcs:
        print("| hostile client | counts |")
        print("|---|---|")
        for rcpath in rcs:
            tag = os.path.basename(rcpath)[len("hostile-"):-3]
            h = load_json(rcpath[:-3] + ".json") or {}
            rc = read_rc(rcpath)
            counts = {k: v for k, v in h.items() if k not in ("mode", "server", "connect", "seconds")}
            text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no summary"
            print(f"| {tag} | {text} |")
            if rc != 0:
                fails.append(f"hostile {tag}: exit {rc} ({h.get('unexpected', '?')} unexpected events)")
        print()
    del hostile

    # -- the servers' own counters
    lines = []
    for name in SERVERS:
        s = last_stats(f"{d}/{name}.err")
        if s:
            closed = {k[len("closed_"):]: v for k, v in s.items() if k.startswith("closed_") and v != "0"}
            extra = ", ".join(f"{k} {s[k]}" for k in ("flow_pauses", "outq_high_water", "throttled", "panics") if k in s and s[k] != "0")
            lines.append(f"- {name}: accepted {s.get('accepted')}, closed by reason: "
                         f"{', '.join(f'{k} {v}' for k, v in closed.items()) or 'none'}"
                         f"{'; ' + extra if extra else ''}")
    if lines:
        print("Server counters (the last `--stats` line, up to 10 s before the clients stopped):")
        print()
        print("\n".join(lines))
        print()
    if "redis_keys_start" in phases:
        print(f"- Redis keys: {phases['redis_keys_start']:.0f} before the clients, {phases.get('redis_keys_end', float('nan')):.0f} after they left (info)")
        print()

    for f_ in fails:
        print(f"- FAIL: {f_}")
    print(f"- result: **{'FAIL' if fails else 'PASS'}**")
    return 1 if fails else 0


def main():
    a = sys.argv[1:]
    if len(a) >= 3 and a[0] == "sample":
        return cmd_sample(a[1], a[2], a[3:])
    if len(a) >= 3 and a[0] == "settle":
        return cmd_settle(a[1], a[2], a[3:])
    if len(a) == 2 and a[0] == "report":
        return cmd_report(a[1])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
