#!/usr/bin/env python3
"""Bounded load generator for the demo fleet (stdlib only).

Sends --rate requests per second to --url (a loopback address only), ONE
request per connection (no keep-alive: a reused connection that the load
balancer closes between requests would be counted as a failure that has
nothing to do with the deploy), each bounded by --timeout. With
--slow-every N, every Nth request is GET /slow?ms=--slow-ms instead: long
requests keep sessions open, so a drain has something to wait for.

Stops when --duration has passed, --max-requests have been sent, the
--stop-file appears, or on SIGTERM/SIGINT; then waits for the requests in
flight and prints one JSON line on stdout:

  {"ok": 1234, "failed": 0, "versions": {"v1": 600, "v2": 634}, "errors": {},
   "sent": 1234, "seconds": 24.7, "first_errors": []}

A request succeeds when the answer is 200 with a body "version=<V>"; anything
else is a failure, counted by reason ("http 503", "ConnectionResetError",
"timeout", ...). first_errors holds the first few failures with the second
at which they were sent. Exit status: 0 when nothing failed and something
succeeded, 1 otherwise, 2 on bad arguments.
"""
import argparse
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:18000/")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    p.add_argument("--duration", type=float, default=300.0, help="seconds at most (default 300)")
    p.add_argument("--max-requests", type=int, default=0, help="requests at most (default rate x duration)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--stop-file", default=None, help="stop once this file exists")
    p.add_argument("--out", default=None, help="also write the final JSON line to this file")
    p.add_argument("--slow-every", type=int, default=0,
                   help="make every Nth request GET /slow?ms=--slow-ms instead (0: never), so drains have sessions to wait for")
    p.add_argument("--slow-ms", type=int, default=250)
    p.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines on stderr (0: none)")
    a = p.parse_args()

    u = urlsplit(a.url)
    if u.scheme != "http" or not u.hostname:
        p.error("--url must be http://HOST:PORT/PATH")
    host, port = u.hostname, u.port or 80
    if not host.startswith("127."):
        p.error("--url must point at a loopback address (127.x.y.z), got %r" % host)
    if not (0 < a.rate <= 1000):
        p.error("--rate must be in (0, 1000]")
    if not (0 < a.duration <= 3600):
        p.error("--duration must be in (0, 3600]")
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    slow_path = "/slow?ms=%d" % max(0, a.slow_ms)
    limit = a.max_requests or int(a.rate * a.duration) + 1

    lock = threading.Lock()
    ok = Counter()  # version -> count
    errors = Counter()  # reason -> count
    first_errors = []
    started = time.monotonic()

    def record_failure(reason, sent_at):
        with lock:
            errors[reason] += 1
            if len(first_errors) < 10:
                first_errors.append({"t": round(sent_at - started, 3), "error": reason})

    def one(sent_at, target):
        conn = http.client.HTTPConnection(host, port, timeout=a.timeout)
        try:
            conn.request("GET", target, headers={"Connection": "close", "User-Agent": "rollscript-demo-loadgen"})
            resp = conn.getresponse()
            body = resp.read(4096).decode("utf-8", "replace").strip()
            if resp.status != 200:
                return record_failure("http %d" % resp.status, sent_at)
            if not body.startswith("version="):
                return record_failure("unexpected body", sent_at)
            with lock:
                ok[body[len("version="):]] += 1
        except socket.timeout:
            record_failure("timeout", sent_at)
        except Exception as e:  # every failure is counted, by its kind
            record_failure(type(e).__name__, sent_at)
        finally:
            conn.close()

    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    workers = min(256, max(8, int(a.rate * a.timeout) + 8))
    pool = ThreadPoolExecutor(max_workers=workers)
    sent = 0
    next_progress = started + a.progress if a.progress > 0 else None
    interval = 1.0 / a.rate
    why = "duration"
    while True:
        now = time.monotonic()
        if stop.is_set():
            why = "signal"
            break
        if now - started >= a.duration:
            why = "duration"
            break
        if sent >= limit:
            why = "max-requests"
            break
        if a.stop_file and os.path.exists(a.stop_file):
            why = "stop-file"
            break
        due = started + sent * interval
        if due > now:
            time.sleep(min(due - now, 0.1))
            continue
        slow = a.slow_every > 0 and sent % a.slow_every == a.slow_every - 1
        pool.submit(one, now, slow_path if slow else path)
        sent += 1
        if next_progress is not None and now >= next_progress:
            next_progress += a.progress
            with lock:
                line = "loadgen: %5.1fs sent=%d ok=%d failed=%d versions=%s" % (
                    now - started, sent, sum(ok.values()), sum(errors.values()), dict(sorted(ok.items())))
            print(line, file=sys.stderr, flush=True)
    pool.shutdown(wait=True)

    result = {
        "ok": sum(ok.values()),
        "failed": sum(errors.values()),
        "versions": dict(sorted(ok.items())),
        "errors": dict(sorted(errors.items())),
        "sent": sent,
        "seconds": round(time.monotonic() - started, 2),
        "stopped_by": why,
        "first_errors": first_errors,
    }
    line = json.dumps(result)
    print(line, flush=True)
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            f.write(line + "\n")
        os.replace(a.out + ".tmp", a.out)
    return 0 if result["failed"] == 0 and result["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
