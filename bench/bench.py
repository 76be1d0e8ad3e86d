#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

  bench.py record  --results FILE --scenario S --variant V --round N --tool T --out F
                   [--log F] [--cpu-s X] [--user-s X] [--hwm-kb N]
      Parses one load generator's output (wrk, h2load, openssl s_time) and appends a
      JSON line with rps, p50/p99 latency, errors, proxy CPU seconds and peak RSS.
  bench.py idle    --port P --conns N --pids PID[,PID...] [--settle S]
      Opens N idle keep-alive TLS connections (each serves one request first), and
      prints a JSON line with the proxy's RSS before/after and how many stayed open.
  bench.py report  --results FILE
      Prints one table per scenario: median per variant, ratio to nginx with the
      min-max spread of the per-round ratios.
  bench.py oidc-register --issuer URL --redirect URL --secret S
  bench.py oidc-token    --issuer URL --secret S
  bench.py oidc-login    --url URL --ca FILE [--user U]
      Scenario 5: register the gateway as a client of the test OpenID provider, get a
      client-credentials access token (an at+jwt bearer token), or sign in through the
      gateway once, as a browser would (login and consent forms of the provider's
      devInteractions), and print the resulting session Cookie header.
  bench.py record-json --results FILE --scenario S --variant V --round N --json TEXT
      Appends a JSON object (scenario 7's compile and memory figures) as a result line.
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
import http.client
import base64
import urllib.parse

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


def parse_handshakes(out):
    # bench/handshakes prints one JSON line with its own percentiles.
    r = json.loads(out.strip().splitlines()[-1])
    keep = ("rps", "requests", "errors", "mean_ms", "p50_ms", "p99_ms", "p999_ms", "max_ms", "max_start_lag_ms")
    return {k: r.get(k) for k in keep}


def cmd_record(a):
    with open(a.out, errors="replace") as f:
        out = f.read()
    if a.tool == "wrk":
        r = parse_wrk(out)
    elif a.tool == "h2load":
        r = parse_h2load(out, a.log)
    elif a.tool == "s_time":
        r = parse_s_time(out, a.wall_s)
    elif a.tool == "handshakes":
        r = parse_handshakes(out)
    else:
        raise SystemExit("unknown tool " + a.tool)
    r.update(scenario=a.scenario, variant=a.variant, round=a.round, cpu_s=a.cpu_s, hwm_kb=a.hwm_kb)
    if r.get("requests") and a.cpu_s is not None:
        r["cpu_us_per_req"] = a.cpu_s * 1e6 / r["requests"]
    if r.get("requests") and a.user_s is not None:
        r["user_s"] = a.user_s
        r["user_us_per_req"] = a.user_s * 1e6 / r["requests"]
    if a.aux_cpu_s is not None:
        # A helper process the proxy depends on (scenario 5: nginx's auth server).
        r["aux_cpu_s"] = a.aux_cpu_s
        if r.get("requests"):
            r["aux_cpu_us_per_req"] = a.aux_cpu_s * 1e6 / r["requests"]
            r["total_cpu_us_per_req"] = (a.cpu_s + a.aux_cpu_s) * 1e6 / r["requests"]
    for kv in a.extra or []:
        k, v = kv.split("=", 1)
        r[k] = json.loads(v)
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


# --------------------------------------------------------------------------- oidc
# Scenario 5 talks to the test OpenID provider (crates/portcullis/tests/oidc/provider.mjs,
# panva/oidc-provider) on loopback HTTP, and to the gateway over HTTPS.


def _http(url, method="GET", body=None, headers=None, ca=None):
    """One request on a fresh connection; returns (status, headers list, body bytes)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=ca)
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, context=ctx, timeout=30)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
    target = u.path or "/"
    if u.query:
        target += "?" + u.query
    conn.request(method, target, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    hdrs = res.getheaders()
    conn.close()
    return res.status, hdrs, data


def cmd_oidc_register(a):
    meta = {
        "client_id": "portcullis",
        "client_secret": a.secret,
        "redirect_uris": [a.redirect],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
        "id_token_signed_response_alg": "ES256",
    }
    st, _, body = _http(a.issuer + "/__test/client", "PUT", json.dumps(meta).encode())
    if st != 204:
        raise SystemExit("register: %d %r" % (st, body[:200]))


def cmd_oidc_token(a):
    basic = base64.b64encode(("portcullis:" + a.secret).encode()).decode()
    form = "grant_type=client_credentials&scope=api&resource=urn%3Aportcullis%3Aapi"
    st, _, body = _http(
        a.issuer + "/token",
        "POST",
        form.encode(),
        {"Authorization": "Basic " + basic, "Content-Type": "application/x-www-form-urlencoded"},
    )
    tok = json.loads(body).get("access_token") if st == 200 else None
    if not tok:
        raise SystemExit("token: %d %r" % (st, body[:200]))
    print(tok)


def cmd_oidc_login(a):
    """Signs in through the gateway like a browser: follow redirects, keep cookies per
    host (paths and expiry ignored, as the integration tests' Browser does), submit the
    provider's login and consent forms. Prints the gateway's session cookies as one
    Cookie header value."""
    jar = {}

    def request(method, url, form=None):
        host = urllib.parse.urlsplit(url).hostname
        headers = {"Accept": "text/html"}
        if jar.get(host):
            headers["Cookie"] = "; ".join("%s=%s" % kv for kv in jar[host].items())
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        st, hdrs, body = _http(url, method, form.encode() if form is not None else None, headers, a.ca)
        for k, v in hdrs:
            if k.lower() != "set-cookie":
                continue
            pair, _, attrs = v.partition(";")
            name, _, value = pair.partition("=")
            expired = "max-age=0" in attrs.lower() or "1970" in attrs or not value
            if expired:
                jar.setdefault(host, {}).pop(name.strip(), None)
            else:
                jar.setdefault(host, {})[name.strip()] = value.strip()
        loc = next((v for k, v in hdrs if k.lower() == "location"), None)
        return st, loc, body.decode("utf-8", "replace")

    def follow(method, url, form=None):
        st, loc, body = request(method, url, form)
        for _ in range(20):
            if st not in (301, 302, 303, 307, 308):
                break
            url = urllib.parse.urljoin(url, loc)
            st, loc, body = request("GET", url)
        return st, url, body

    st, at, html = follow("GET", a.url)
    for _ in range(4):
        m = re.search(r'<form[^>]*action="([^"]+)"', html)
        if not m:
            break
        p = re.search(r'name="prompt" value="([^"]+)"', html)
        prompt = p.group(1) if p else ""
        form = "prompt=login&login=%s&password=any-password" % a.user if prompt == "login" else "prompt=" + prompt
        st, at, html = follow("POST", urllib.parse.urljoin(at, m.group(1).replace("&amp;", "&")), form)
    host = urllib.parse.urlsplit(a.url).hostname
    cookies = {k: v for k, v in jar.get(host, {}).items() if k.startswith("__Host-portcullis-session")}
    if st != 200 or not cookies:
        raise SystemExit("login did not end at the app with a session: %d at %s, cookies %s" % (st, at, list(jar.get(host, {}))))
    print("; ".join("%s=%s" % kv for kv in sorted(cookies.items())))


def cmd_record_json(a):
    r = json.loads(a.json)
    r.update(scenario=a.scenario, variant=a.variant, round=a.round)
    with open(a.results, "a") as f:
        f.write(json.dumps(r) + "\n")
    print("  result:", json.dumps(r), flush=True)


# --------------------------------------------------------------------------- report

TITLES = {
    "1": "Scenario 1: HTTPS keep-alive, small response, HTTP/1.1 (wrk -t1 -c50 --latency)",
    "2": "Scenario 2: HTTPS HTTP/2 multiplexed, small response (h2load -c10 -m10)",
    "3": "Scenario 3a: new full TLS handshake per request (wrk -t1 -c50 -H 'Connection: close')",
    "3f": "Scenario 3a at a fixed rate: a new full TLS handshake per request, BENCH_HANDSHAKE_RATE connections/s started on schedule (bench/handshakes); latency from when each connection was due to the end of its response",
    "3n": "Scenario 3b: full handshakes, one connection at a time (openssl s_time -new, HTTP/1.0)",
    "3r": "Scenario 3c: resumed handshakes, one connection at a time (openssl s_time -reuse, HTTP/1.0)",
    "4": "Scenario 4: 1 MB responses over keep-alive HTTP/1.1 (wrk -t1 -c10 /1m)",
    "5": "Scenario 5: the cost of authentication: scenario 1's load on a route with a JWT bearer check or a session cookie check; nginx with auth_request to a local auth server",
    "6": "Scenario 6: idle keep-alive TLS connections (python asyncio, one request each, then idle)",
    "7": "Scenario 7: 10,000 Ingresses / 50,000 paths: scenario 1's load on the small config, on the 10k config, and on the 10k config rewritten every second",
    "7c": "Scenario 7: compile time and memory of 10,000 Ingresses / 50,000 paths",
}
# Ratio columns per scenario (x/y); the default is every portcullis variant / every nginx.
PAIRS = {
    "1": [
        ("portcullis", "nginx"),
        ("portcullis-audit", "portcullis"),
        ("portcullis-defaults", "nginx-log"),
        ("portcullis-defaults", "portcullis"),
        ("nginx-log", "nginx"),
        ("tls-forward", "nginx"),
        ("portcullis", "tls-forward"),
    ],
    "5": [
        ("portcullis", "nginx"),
        ("portcullis-jwt", "portcullis"),
        ("portcullis-session", "portcullis"),
        ("nginx-authreq", "nginx"),
        ("nginx-authreq-ka", "nginx"),
        ("portcullis-jwt", "nginx-authreq"),
        ("portcullis-jwt", "nginx-authreq-ka"),
    ],
    "7": [
        ("portcullis-10k", "portcullis"),
        ("portcullis-10k-reload", "portcullis"),
        ("portcullis-10k-reload", "portcullis-10k"),
    ],
}
METRICS = [
    ("rps", "requests/s", 1, "%.0f"),
    ("mb_s", "MB/s", 1, "%.1f"),
    ("p50_ms", "p50 latency ms", 1, "%.3f"),
    ("p99_ms", "p99 latency ms", 1, "%.3f"),
    ("p999_ms", "p99.9 latency ms", 1, "%.3f"),
    ("max_ms", "max latency ms", 1, "%.3f"),
    ("mean_ms", "mean latency ms", 1, "%.3f"),
    ("max_start_lag_ms", "load generator's largest start delay ms", 1, "%.3f"),
    ("hwm_kb", "peak RSS MB", 1 / 1024, "%.1f"),
    ("cpu_s", "proxy CPU s", 1, "%.2f"),
    ("cpu_us_per_req", "proxy CPU us/req", 1, "%.1f"),
    ("user_us_per_req", "proxy user-space CPU us/req", 1, "%.1f"),
    ("aux_cpu_us_per_req", "auth server CPU us/req", 1, "%.1f"),
    ("total_cpu_us_per_req", "proxy+auth server CPU us/req", 1, "%.1f"),
    ("ready_ms", "start to first proxied response ms", 1, "%.0f"),
    ("ready_rss_kb", "RSS when ready (idle) MB", 1 / 1024, "%.1f"),
    ("reloads", "reloads during the run", 1, "%.0f"),
    ("reload_cpu_ms", "extra proxy CPU ms per reload", 1, "%.0f"),
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
VARIANT_LABEL = {
    "nginx": "nginx (A)",
    "nginx-64k": "nginx 64k buffer (A')",
    "nginx-log": "nginx with access log (A)",
    "nginx-authreq": "nginx auth_request (A)",
    "nginx-authreq-ka": "nginx auth_request, keep-alive (A)",
    "portcullis": "portcullis (B)",
    "portcullis-audit": "portcullis+audit (C)",
    "portcullis-defaults": "portcullis defaults: access+audit logs (D)",
    "portcullis-jwt": "portcullis JWT (B)",
    "portcullis-session": "portcullis session (B)",
    "portcullis-10k": "portcullis 10k (B)",
    "portcullis-10k-reload": "portcullis 10k reloading (B)",
    "tls-forward": "floor: TLS and byte forwarding, no HTTP (F)",
}
SHORT = {
    "portcullis": "P",
    "portcullis-audit": "P+audit",
    "portcullis-defaults": "P defaults",
    "nginx-log": "nginx+log",
    "nginx": "nginx",
    "nginx-64k": "nginx64k",
    "nginx-authreq": "nginx+authreq",
    "nginx-authreq-ka": "nginx+authreq-ka",
    "portcullis-jwt": "P+jwt",
    "portcullis-session": "P+session",
    "portcullis-10k": "P10k",
    "portcullis-10k-reload": "P10k+reload",
    "tls-forward": "floor",
}
COMPILE_METRICS = [
    ("compile_ms", "compile (Manifests -> Snapshot), in-process, best of 3, ms"),
    ("parse_ms", "YAML parse (text -> Manifests), in-process, best of 3, ms"),
    ("read_ms", "read files, ms"),
    ("rss_parsed_kb", "in-process RSS after parse, KB"),
    ("rss_compiled_kb", "in-process RSS after compile, KB"),
    ("from_cache_ms", "per reload: unchanged files' cached objects copied (typed once), ms"),
    ("check_wall_ms", "`portcullis check --manifests DIR` wall time, ms"),
    ("check_max_rss_kb", "`portcullis check` max RSS, KB"),
    ("bytes", "manifest bytes"),
    ("ingresses_served", "Ingresses served"),
    ("routes", "routes"),
    ("errors", "configuration errors"),
]


def report_compile(srows):
    """Scenario 7's compile/memory lines: one column per round, and the median."""
    rounds = sorted({r["round"] for r in srows})
    merged = {}
    for r in srows:
        merged.setdefault(r["round"], {}).update({k: v for k, v in r.items() if k not in ("scenario", "variant", "round")})
    print()
    print("## " + TITLES["7c"])
    print()
    print("| metric | " + " | ".join("round %d" % rd for rd in rounds) + " | median |")
    print("|" + "---|" * (len(rounds) + 2))
    for key, label in COMPILE_METRICS:
        xs = [merged[rd].get(key) for rd in rounds]
        if all(x is None for x in xs):
            continue
        cells = ["-" if x is None else ("%.0f" % x if isinstance(x, (int, float)) else str(x)) for x in xs]
        have = [x for x in xs if x is not None]
        print("| %s | %s | %s |" % (label, " | ".join(cells), "%.0f" % statistics.median(have)))


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
        if sc == "7":
            # Extra proxy CPU per reload: the reloading run's CPU minus what its requests
            # cost at the same round's no-reload CPU per request, over its reloads.
            for rd in rounds:
                rl, base = by.get(("portcullis-10k-reload", rd)), by.get(("portcullis-10k", rd))
                if rl and base and rl.get("reloads") and rl.get("requests") and base.get("cpu_us_per_req"):
                    extra_s = rl["cpu_s"] - rl["requests"] * base["cpu_us_per_req"] / 1e6
                    rl["reload_cpu_ms"] = extra_s * 1e3 / rl["reloads"]
        if sc == "7c":
            report_compile(srows)
            continue
        nginxes = [v for v in variants if v.startswith("nginx")]
        ours = [v for v in variants if not v.startswith("nginx")]
        pairs = [(x, y) for x in ours for y in nginxes]
        if "portcullis-audit" in variants and "portcullis" in variants:
            pairs.append(("portcullis-audit", "portcullis"))
        if sc in PAIRS:
            pairs = [(x, y) for x, y in PAIRS[sc] if x in variants and y in variants]
        print()
        print("## " + TITLES.get(sc, "Scenario " + sc))
        print("rounds: %d" % len(rounds))
        print()
        head = ["metric"] + [VARIANT_LABEL.get(v, v) + " median" for v in variants]
        head += ["%s/%s median [min-max]" % (SHORT.get(x, x), SHORT.get(y, y)) for x, y in pairs]
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
    r.add_argument("--user-s", type=float)
    r.add_argument("--hwm-kb", type=int)
    r.add_argument("--wall-s", type=float)
    r.add_argument("--aux-cpu-s", type=float)
    r.add_argument("--extra", action="append", help="KEY=JSON added to the result line")
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
    o = sub.add_parser("oidc-register")
    o.add_argument("--issuer", required=True)
    o.add_argument("--redirect", required=True)
    o.add_argument("--secret", required=True)
    o = sub.add_parser("oidc-token")
    o.add_argument("--issuer", required=True)
    o.add_argument("--secret", required=True)
    o = sub.add_parser("oidc-login")
    o.add_argument("--url", required=True)
    o.add_argument("--ca", required=True)
    o.add_argument("--user", default="bench")
    j = sub.add_parser("record-json")
    j.add_argument("--results", required=True)
    j.add_argument("--scenario", required=True)
    j.add_argument("--variant", required=True)
    j.add_argument("--round", type=int, default=1)
    j.add_argument("--json", required=True)
    a = p.parse_args()
    {
        "record": cmd_record,
        "idle": cmd_idle,
        "report": cmd_report,
        "oidc-register": cmd_oidc_register,
        "oidc-token": cmd_oidc_token,
        "oidc-login": cmd_oidc_login,
        "record-json": cmd_record_json,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
