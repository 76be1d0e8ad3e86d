#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

  bench.py record  --results FILE --scenario S --variant V --round N --tool T --out F
                   [--log F] [--cpu-s X] [--hwm-kb N]
      Parses one load generator's output (wrk, h2load, openssl s_time) and appends a
      JSON line with rps, p50/p99 latency, errors, proxy CPU seconds and peak RSS.
  bench.py idle    --port P --conns N --pids PID[,PID...] [--settle S]
      Opens N idle keep-alive TLS connections (each serves one request first), and
      prints a JSON line with the proxy's RSS before/after and how many stayed open.
  bench.py report  --results FILE
      Prints one table per scenario: median per variant, ratio to nginx with the
      min-max spread of the per-round ratios.
"""

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import sys
import time

# --------------------------------------------------------------------------- parse


def _dur_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _size_mb(text):
    m = re.fullmatch(r"([\d.]+)([KMGT]?B)", text.strip())
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 2**20}[unit]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"Transfer/sec:\s+(\S+)", out)
    r["mb_s"] = _size_mb(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), (\S+) read", out)
    r["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, out, re.M)
        r["p%s_ms" % pct] = _dur_ms(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    r["errors"] = errors
    return r


def _percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def parse_h2load(out, log):
    r = {}
    m = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s, (\S+)/s", out)
    r["rps"] = float(m.group(3)) if m else None
    r["mb_s"] = _size_mb(m.group(4)) if m else None
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    if m:
        r["requests"] = int(m.group(3))
        r["errors"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["errors"] = r.get("errors", 0) + int(m.group(3)) + int(m.group(4))
    lat = []
    if log and os.path.exists(log):
        # h2load --log-file: start time (us), status, request time (us)
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]) / 1000.0)
    lat.sort()
    r["p50_ms"] = _percentile(lat, 50)
    r["p99_ms"] = _percentile(lat, 99)
    return r


def parse_s_time(out, wall_s):
    # "1234 connections in 10 real seconds, 219 bytes read per connection". s_time
    # prints whole seconds only, so the rate uses the wall time measured around it.
    r = {}
    ms = re.findall(r"(\d+) connections in ([\d.]+) real seconds", out)
    if ms:
        n, secs = int(ms[-1][0]), float(ms[-1][1])
        if wall_s:
            secs = wall_s
        r["requests"] = n
        marks = "".join(re.findall(r"^[r*]+$", out, re.M))
        if marks:
            r["resumed_frac"] = marks.count("r") / len(marks)
        r["rps"] = n / secs if secs else None
        r["p50_ms"] = None  # s_time gives no distribution; mean latency below
        r["mean_ms"] = secs * 1000.0 / n if n else None
    else:
        r["rps"] = None
    r["errors"] = len(re.findall(r"(?i)error", out))
    return r


def cmd_record(a):
    with open(a.out, errors="replace") as f:
        out = f.read()
    if a.tool == "wrk":
        r = parse_wrk(out)
    elif a.tool == "h2load":
        r = parse_h2load(out, a.log)
    elif a.tool == "s_time":
        r = parse_s_time(out, a.wall_s)
    else:
        raise SystemExit("unknown tool " + a.tool)
    r.update(scenario=a.scenario, variant=a.variant, round=a.round, cpu_s=a.cpu_s, hwm_kb=a.hwm_kb)
    if r.get("requests") and a.cpu_s is not None:
        r["cpu_us_per_req"] = a.cpu_s * 1e6 / r["requests"]
    with open(a.results, "a") as f:
        f.write(json.dumps(r) + "\n")
    show = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
    print("  result:", json.dumps(show), flush=True)


# --------------------------------------------------------------------------- idle


def _status_kb(pids, field):
    total = 0
    for pid in pids:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


def _cpu_s(pids):
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tck


async def _open_one(port, ctx, sem, conns, errors):
    async with sem:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="bench.test"), 30
            )
            w.write(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if not head.startswith(b"HTTP/1.1 200") or not m:
                raise RuntimeError("unexpected response head %r" % head[:80])
            await asyncio.wait_for(r.readexactly(int(m.group(1))), 30)
            conns.append((r, w))
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(repr(e)[:200])


async def _idle(a):
    pids = [int(p) for p in a.pids.split(",") if p]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    before = _status_kb(pids, "VmRSS")
    cpu0 = _cpu_s(pids)
    sem = asyncio.Semaphore(a.parallel)
    conns, errors = [], []
    t0 = time.monotonic()
    await asyncio.gather(*(_open_one(a.port, ctx, sem, conns, errors) for _ in range(a.conns)))
    open_s = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    after = _status_kb(pids, "VmRSS")
    hwm = _status_kb(pids, "VmHWM")
    cpu1 = _cpu_s(pids)
    alive = sum(1 for r, w in conns if not r.at_eof() and not w.is_closing())
    res = {
        "conns_requested": a.conns,
        "conns_opened": len(conns),
        "conns_alive_at_measure": alive,
        "open_errors": len(errors),
        "first_errors": errors[:3],
        "open_seconds": round(open_s, 2),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "hwm_kb": hwm,
        "kb_per_conn": (after - before) / alive if alive else None,
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_us_per_conn": (cpu1 - cpu0) * 1e6 / len(conns) if conns else None,
    }
    for _, w in conns:
        w.transport.abort()
    return res


def cmd_idle(a):
    res = asyncio.run(_idle(a))
    res.update(scenario=a.scenario, variant=a.variant, round=a.round)
    if a.results:
        with open(a.results, "a") as f:
            f.write(json.dumps(res) + "\n")
    show = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}
    print("  result:", json.dumps(show), flush=True)


# --------------------------------------------------------------------------- report

TITLES = {
    "1": "Scenario 1: HTTPS keep-alive, small response, HTTP/1.1 (wrk -t1 -c50 --latency)",
    "2": "Scenario 2: HTTPS HTTP/2 multiplexed, small response (h2load -c10 -m10)",
    "3": "Scenario 3a: new full TLS handshake per request (wrk -t1 -c50 -H 'Connection: close')",
    "3n": "Scenario 3b: full handshakes, one connection at a time (openssl s_time -new, HTTP/1.0)",
    "3r": "Scenario 3c: resumed handshakes, one connection at a time (openssl s_time -reuse, HTTP/1.0)",
    "4": "Scenario 4: 1 MB responses over keep-alive HTTP/1.1 (wrk -t1 -c10 /1m)",
    "6": "Scenario 6: idle keep-alive TLS connections (python asyncio, one request each, then idle)",
}
METRICS = [
    ("rps", "requests/s", 1, "%.0f"),
    ("mb_s", "MB/s", 1, "%.1f"),
    ("p50_ms", "p50 latency ms", 1, "%.3f"),
    ("p99_ms", "p99 latency ms", 1, "%.3f"),
    ("mean_ms", "mean latency ms", 1, "%.3f"),
    ("hwm_kb", "peak RSS MB", 1 / 1024, "%.1f"),
    ("cpu_s", "proxy CPU s", 1, "%.2f"),
    ("cpu_us_per_req", "proxy CPU us/req", 1, "%.1f"),
    ("resumed_frac", "resumed handshakes", 1, "%.2f"),
    ("errors", "errors", 1, "%.0f"),
]
IDLE_METRICS = [
    ("conns_alive_at_measure", "conns open at measure", 1, "%.0f"),
    ("rss_before_kb", "RSS before MB", 1 / 1024, "%.1f"),
    ("rss_after_kb", "RSS after MB", 1 / 1024, "%.1f"),
    ("kb_per_conn", "RSS KB per idle conn", 1, "%.2f"),
    ("hwm_kb", "peak RSS MB", 1 / 1024, "%.1f"),
    ("cpu_us_per_conn", "proxy CPU us/conn (handshake+1 req)", 1, "%.0f"),
    ("open_errors", "open errors", 1, "%.0f"),
]
VARIANT_LABEL = {"nginx": "nginx (A)", "nginx-64k": "nginx 64k buffer (A')", "portcullis": "portcullis (B)", "portcullis-audit": "portcullis+audit (C)"}


def cmd_report(a):
    rows = []
    with open(a.results) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    order = []
    for r in rows:
        if r["scenario"] not in order:
            order.append(r["scenario"])
    for sc in order:
        srows = [r for r in rows if r["scenario"] == sc]
        variants = []
        for r in srows:
            if r["variant"] not in variants:
                variants.append(r["variant"])
        rounds = sorted({r["round"] for r in srows})
        by = {(r["variant"], r["round"]): r for r in srows}
        nginxes = [v for v in variants if v.startswith("nginx")]
        ours = [v for v in variants if not v.startswith("nginx")]
        pairs = [(x, y) for x in ours for y in nginxes]
        if "portcullis-audit" in variants and "portcullis" in variants:
            pairs.append(("portcullis-audit", "portcullis"))
        print()
        print("## " + TITLES.get(sc, "Scenario " + sc))
        print("rounds: %d" % len(rounds))
        print()
        head = ["metric"] + [VARIANT_LABEL.get(v, v) + " median" for v in variants]
        short = {"portcullis": "P", "portcullis-audit": "P+audit", "nginx": "nginx", "nginx-64k": "nginx64k"}
        head += ["%s/%s median [min-max]" % (short.get(x, x), short.get(y, y)) for x, y in pairs]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        metrics = IDLE_METRICS if sc == "6" else METRICS
        for key, label, scale, fmt in metrics:
            vals = {v: [by[(v, rd)].get(key) for rd in rounds if (v, rd) in by] for v in variants}
            if all(x is None for vs in vals.values() for x in vs):
                continue
            cells = [label]
            for v in variants:
                xs = [x for x in vals[v] if x is not None]
                cells.append(fmt % (statistics.median(xs) * scale) if xs else "-")
            for x, y in pairs:
                ratios = []
                for rd in rounds:
                    if (x, rd) in by and (y, rd) in by:
                        vx, vy = by[(x, rd)].get(key), by[(y, rd)].get(key)
                        if vx is not None and vy:
                            ratios.append(vx / vy)
                if ratios and key != "errors":
                    cells.append("%.2f [%.2f-%.2f]" % (statistics.median(ratios), min(ratios), max(ratios)))
                else:
                    cells.append("-")
            print("| " + " | ".join(cells) + " |")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--results", required=True)
    r.add_argument("--scenario", required=True)
    r.add_argument("--variant", required=True)
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--tool", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--log")
    r.add_argument("--cpu-s", type=float)
    r.add_argument("--hwm-kb", type=int)
    r.add_argument("--wall-s", type=float)
    i = sub.add_parser("idle")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--conns", type=int, required=True)
    i.add_argument("--pids", required=True)
    i.add_argument("--settle", type=float, default=3.0)
    i.add_argument("--parallel", type=int, default=64)
    i.add_argument("--results")
    i.add_argument("--scenario", default="6")
    i.add_argument("--variant", default="?")
    i.add_argument("--round", type=int, default=1)
    rep = sub.add_parser("report")
    rep.add_argument("--results", required=True)
    a = p.parse_args()
    {"record": cmd_record, "idle": cmd_idle, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
