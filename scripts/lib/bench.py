#!/usr/bin/env python3
"""Number crunching for scripts/compare.sh and scripts/syscalls.sh.

Subcommands (all print to stdout):

  row REP SCENARIO SERVER T0 LOAD_JSON SAMPLES STATUS NOTE LISTEN_DROPS
        one TSV row of compare-runs.tsv from one run: the load generator's
        JSON summary plus the server CPU time inside the measured window
        (from the samples of scripts/lib/bench.sh's cpu_sampler_start).
  compare-table RUNS_TSV REFERENCE
        the markdown table of medians and ratios to REFERENCE.
  perf-row SCENARIO SERVER LOAD_JSON PERF_CSV STATUS [NOTE]
        one TSV row of syscalls-runs.tsv from `perf stat -x,` output over the
        whole run (--warmup 0), divided by the window's messages.
  strace-row SCENARIO SERVER LOAD_JSON STRACE_FILE STATUS [NOTE]
        the same from `strace -c` output.
  syscalls-table TSV REFERENCE
        the markdown table of system calls per message.

How the measured window is found from outside (see `bounds`): the load
generator reports `elapsed_s` (start to exit), `warmup_s` and `window_s`;
connecting plus the final drain took X = elapsed - warmup - window seconds,
split in an unknown way. The window starts at T0 + s + c + warmup (s: the
exec, c: connecting, c <= X) and ends window_s later, so the interval
[T0 + warmup + X + 50 ms, T0 + warmup + window] lies inside it whatever c is.
Server CPU over that interval, divided by the interval's
length, is a rate; divided by the window's msgs_per_sec it is a cost per
message. This assumes the load is steady inside the window (it is closed-loop
at constant concurrency).
"""
import csv
import json
import statistics
import sys

EXEC_SLACK = 0.05  # seconds between T0 and the generator's clock start, at most
MIN_SPAN = 0.3  # shortest interval worth a figure


def load_json(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def bounds(t0, js):
    """The sub-interval of the measured window that is certain, or None."""
    warm, win, el = js.get("warmup_s", 0.0), js.get("window_s", 0.0), js.get("elapsed_s", 0.0)
    x = max(0.0, el - warm - win)
    a = t0 + warm + x + EXEC_SLACK
    b = t0 + warm + win
    return (a, b) if b - a >= MIN_SPAN else None


def cpu_delta(samples_path, a, b):
    """(ns on CPU, seconds, TCP retransmits) between the first sample >= a
    and the last <= b."""
    pts = []
    try:
        with open(samples_path) as f:
            for line in f:
                p = line.split()
                if len(p) >= 2:
                    try:
                        pts.append((float(p[0]), int(p[1]), int(p[2]) if len(p) > 2 else 0))
                    except ValueError:
                        pass
    except OSError:
        return None
    inside = [p for p in pts if a <= p[0] <= b]
    if len(inside) < 2:
        return None
    (ta, ca, ra), (tb, cb, rb) = inside[0], inside[-1]
    if tb - ta < MIN_SPAN or cb < ca or ca == 0:
        return None  # too short, or the server died (its counters vanished)
    return cb - ca, tb - ta, rb - ra


def errors_of(js):
    e = js.get("errors") or {}
    total = sum(v for v in e.values() if isinstance(v, (int, float)))
    detail = ",".join(f"{k}={v}" for k, v in e.items() if v)
    return int(total), detail


def fmt(x, nd=0):
    if x is None:
        return "NA"
    return f"{x:.{nd}f}"


ROW_FIELDS = [
    "rep", "scenario", "server", "ok", "msgs_per_sec", "mb_per_sec", "p50_us", "p99_us",
    "p999_us", "max_us", "errors", "error_detail", "connected", "srv_ns_per_msg",
    "srv_cpu_util", "gen_cpu_util", "cpu_span_s", "tcp_retrans", "listen_drops", "note",
]


def cmd_row(rep, scenario, server, t0, json_path, samples, status, note, drops="NA"):
    js = load_json(json_path)
    row = dict.fromkeys(ROW_FIELDS, "NA")
    row.update(rep=rep, scenario=scenario, server=server, ok="0", note=note or "-",
               listen_drops=drops)
    notes = [] if not note else [note]
    if js is None:
        notes.append(f"no JSON from the load generator (exit {status})")
    else:
        lat = js.get("latency_us") or {}
        errs, detail = errors_of(js)
        row.update(
            msgs_per_sec=fmt(js.get("msgs_per_sec")), mb_per_sec=fmt(js.get("mb_per_sec"), 3),
            p50_us=fmt(lat.get("p50"), 1), p99_us=fmt(lat.get("p99"), 1),
            p999_us=fmt(lat.get("p999"), 1), max_us=fmt(lat.get("max"), 1),
            errors=str(errs), error_detail=detail or "-", connected=str(js.get("connected", "NA")),
            gen_cpu_util=fmt((js.get("client") or {}).get("cpu_util"), 3),
        )
        rate = js.get("msgs_per_sec") or 0
        span = bounds(float(t0), js)
        d = cpu_delta(samples, *span) if span else None
        if d and rate > 0:
            ns, secs, retr = d
            row.update(srv_ns_per_msg=fmt(ns / secs / rate), srv_cpu_util=fmt(ns / secs / 1e9, 3),
                       cpu_span_s=fmt(secs, 2), tcp_retrans=str(retr))
        else:
            notes.append("no CPU figure (window too short to locate, or server gone)")
        if status == "0" and rate > 0 and note == "":
            row["ok"] = "1"
        elif status != "0":
            notes.append(f"load exit {status}")
    row["note"] = "; ".join(notes) or "-"
    print("\t".join(str(row[k]) for k in ROW_FIELDS))


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def human(x, nd=0):
    if x is None:
        return "–"
    if nd == 0:
        return f"{x:,.0f}".replace(",", " ")
    return f"{x:.{nd}f}"


SCENARIO_TITLES = {
    "pingpong": "50 conns × 1 × 64 B (ping-pong)",
    "pipelined": "50 conns × 32 × 64 B (pipelined)",
    "bulk": "1 conn × 1 × 64 KiB (bulk)",
    "conns2k": "2 000 conns × 1 × 64 B",
}


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def cmd_compare_table(path, reference):
    rows = read_tsv(path)
    scenarios, servers = [], []
    for r in rows:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
        if r["server"] not in servers:
            servers.append(r["server"])
    by = {}
    for r in rows:
        by.setdefault((r["scenario"], r["server"]), []).append(r)
    print("| scenario | server | msg/s | MB/s | p50 µs | p99 µs | server CPU ns/msg "
          f"| server CPU | generator CPU | msg/s ÷ {reference} | CPU/msg ÷ {reference} | runs ok "
          "| TCP retrans in window / listen drops | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for sc in scenarios:
        ref_runs = {r["rep"]: r for r in by.get((sc, reference), []) if r["ok"] == "1"}
        for sv in servers:
            runs = by.get((sc, sv), [])
            if not runs:
                continue
            ok = [r for r in runs if r["ok"] == "1"]
            med = {k: median(num(r[k]) for r in ok) for k in
                   ("msgs_per_sec", "mb_per_sec", "p50_us", "p99_us", "srv_ns_per_msg",
                    "srv_cpu_util", "gen_cpu_util")}
            # Ratios are paired: peer / edgeloop within the same repetition
            # (the runs were back to back), then the median over repetitions.
            rt, rc = [], []
            for r in ok:
                ref = ref_runs.get(r["rep"])
                if not ref:
                    continue
                a, b = num(r["msgs_per_sec"]), num(ref["msgs_per_sec"])
                if a is not None and b:
                    rt.append(a / b)
                a, b = num(r["srv_ns_per_msg"]), num(ref["srv_ns_per_msg"])
                if a is not None and b:
                    rc.append(a / b)
            errs = sum(int(num(r["errors"]) or 0) for r in runs)
            retr = sum(int(num(r.get("tcp_retrans")) or 0) for r in runs)
            drops = sum(int(num(r.get("listen_drops")) or 0) for r in runs)
            details = sorted({r["error_detail"] for r in runs if r["error_detail"] not in ("-", "NA")})
            notes = sorted({r["note"] for r in runs if r["note"] not in ("-", "NA")})
            err_txt = str(errs) + (f" ({'; '.join(details)})" if details else "")
            if notes:
                err_txt += " — " + "; ".join(notes)
            pct = lambda u: "–" if u is None else f"{u * 100:.0f}%"
            ratio = lambda xs: "–" if not xs else f"{statistics.median(xs):.2f}"
            print(f"| {SCENARIO_TITLES.get(sc, sc)} | {sv} | {human(med['msgs_per_sec'])} "
                  f"| {human(med['mb_per_sec'], 1)} | {human(med['p50_us'], 0)} | {human(med['p99_us'], 0)} "
                  f"| {human(med['srv_ns_per_msg'])} | {pct(med['srv_cpu_util'])} | {pct(med['gen_cpu_util'])} "
                  f"| {'1' if sv == reference else ratio(rt)} | {'1' if sv == reference else ratio(rc)} "
                  f"| {len(ok)}/{len(runs)} | {retr} / {drops} | {err_txt} |")


# ---------------------------------------------------------------- syscalls

SYS_FIELDS = ["scenario", "server", "ok", "msgs_per_sec", "errors", "messages", "syscalls_per_msg",
              "breakdown", "note"]


def perf_counts(path):
    """{call: count} from `perf stat -x,` output; "_total" for raw_syscalls."""
    out = {}
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            p = line.strip().split(",")
            if len(p) < 3:
                continue
            try:
                c = int(p[0])
            except ValueError:
                continue  # "<not counted>": never happened
            ev = p[2].split(":")[-1].replace("sys_enter_", "")
            if ev == "sys_enter":
                ev = "_total"
            out[ev] = out.get(ev, 0) + c
    return out


def sys_row(scenario, server, js, counts, status, note):
    row = dict.fromkeys(SYS_FIELDS, "NA")
    row.update(scenario=scenario, server=server, ok="0", note=note or "-")
    notes = [note] if note else []
    if js is None:
        notes.append(f"no JSON from the load generator (exit {status})")
    else:
        errs, detail = errors_of(js)
        rate = js.get("msgs_per_sec") or 0
        row.update(msgs_per_sec=fmt(rate), errors=str(errs) + (f" ({detail})" if detail else ""))
        msgs = js.get("messages") or 0
        if counts and msgs > 0:
            total = counts.pop("_total", None)
            if total is None:
                total = sum(counts.values())
            elif total > sum(counts.values()):
                counts["other"] = total - sum(counts.values())
            per = sorted(((c / msgs, ev) for ev, c in counts.items() if c), reverse=True)
            row.update(syscalls_per_msg=f"{total / msgs:.3f}", messages=str(msgs),
                       breakdown=", ".join(f"{ev} {x:.3f}" for x, ev in per if x >= 0.0005) or "-")
            if status == "0" and not note:
                row["ok"] = "1"
        else:
            notes.append("no count (no messages, or the counter failed)")
        if status != "0":
            notes.append(f"load exit {status}")
    row["note"] = "; ".join(notes) or "-"
    print("\t".join(str(row[k]) for k in SYS_FIELDS))


def cmd_perf_row(scenario, server, json_path, perf_csv, status, note=""):
    """perf stat over the whole run (--warmup 0): every syscall / window messages."""
    js = load_json(json_path)
    try:
        counts = perf_counts(perf_csv)
    except OSError:
        counts = None
    sys_row(scenario, server, js, counts or None, status, note)


def cmd_strace_row(scenario, server, json_path, strace_file, status, note=""):
    """strace -c over the whole run (--warmup 0): every syscall / window messages."""
    js = load_json(json_path)
    counts = None
    try:
        counts = {}
        with open(strace_file) as f:
            for line in f:
                p = line.split()
                # % time, seconds, usecs/call, calls, [errors], syscall
                if len(p) >= 5 and p[0][0].isdigit() and not line.startswith("100.00"):
                    try:
                        calls = int(p[3])
                    except ValueError:
                        continue
                    counts[p[-1]] = counts.get(p[-1], 0) + calls
    except OSError:
        counts = None
    sys_row(scenario, server, js, counts, status, note)


def cmd_syscalls_table(path, reference):
    rows = read_tsv(path)
    print("| scenario | server | msg/s (while counted) | syscalls/msg | per message, by call | ÷ edgeloop | errors |")
    print("|---|---|---:|---:|---|---:|---|")
    ref = {r["scenario"]: num(r["syscalls_per_msg"]) for r in rows if r["server"] == reference}
    for r in rows:
        x = num(r["syscalls_per_msg"])
        rr = ref.get(r["scenario"])
        ratio = "1" if r["server"] == reference else ("–" if x is None or not rr else f"{x / rr:.2f}")
        note = "" if r["note"] in ("-", "NA") else f" — {r['note']}"
        print(f"| {SCENARIO_TITLES.get(r['scenario'], r['scenario'])} | {r['server']} "
              f"| {human(num(r['msgs_per_sec']))} | {r['syscalls_per_msg']} | {r['breakdown']} "
              f"| {ratio} | {r['errors']}{note} |")


def main(argv):
    cmds = {
        "row": cmd_row, "compare-table": cmd_compare_table, "perf-row": cmd_perf_row,
        "strace-row": cmd_strace_row, "syscalls-table": cmd_syscalls_table,
    }
    if len(argv) < 2 or argv[1] not in cmds:
        sys.exit("usage: bench.py {" + "|".join(cmds) + "} ARGS...")
    if argv[1] == "row":
        print("\t".join(ROW_FIELDS)) if argv[2:] == ["header"] else cmds["row"](*argv[2:])
    elif argv[1] in ("perf-row", "strace-row") and argv[2:] == ["header"]:
        print("\t".join(SYS_FIELDS))
    else:
        cmds[argv[1]](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
