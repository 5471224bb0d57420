#!/usr/bin/env python3
"""The demo fleet's app: one instance of a tiny HTTP service (stdlib only).

    GET /           200 "version=<VERSION>\n"
    GET /health     200 "ok\n" once booted
    GET /slow?ms=N  holds the request N ms (at most 60000), then answers like /
    GET /metrics    Prometheus text: http_requests_total{code,path} and the
                    http_request_duration_seconds histogram (every request
                    but /metrics itself)

Boot: the port is bound at once, but for --boot-delay seconds (default 0.5)
EVERY request is answered 503 "booting\n" — an instance that is listening is
not necessarily ready, and only /health tells the difference. A deploy that
put an instance back into the load balancer before /health said "ok" would
show up as failed requests in the load generator.

VERSION is read once at start: --version, else the file --version-file
(default: VERSION in --dir), else $APP_VERSION, else "unknown". A version
starting with "bad" (e.g. `tools/demo --version bad`) boots but never turns
healthy: /health keeps answering 503 "unhealthy\n", to show a failed rollout.
A version containing "5xx" followed by a percentage (e.g. `v2-5xx20`) is
healthy but answers that share of its "/" requests with 500 (every 5th for
20 %, deterministically): a release a canary gate must catch.

SIGTERM/SIGINT: stop accepting (the listening socket is closed), let every
in-flight request finish, remove the pid file, exit 0.

HTTP/1.0 on purpose: one request per connection, so the load balancer never
holds an idle keep-alive connection to an instance that is shutting down.
"""
import argparse
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def log(msg):
    sys.stderr.write("%s app[%d]: %s\n" % (time.strftime("%H:%M:%S"), os.getpid(), msg))
    sys.stderr.flush()


class Metrics:
    """Counters and a latency histogram in Prometheus' text format."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}  # (code, path) -> count
        self.buckets = [0] * len(self.BUCKETS)
        self.count = 0
        self.sum = 0.0
        self.roots = 0

    def next_root(self):
        with self.lock:
            self.roots += 1
            return self.roots

    def observe(self, code, path, seconds):
        path = path if path in ("/", "/health", "/slow") else "other"
        with self.lock:
            key = (code, path)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.count += 1
            self.sum += seconds
            for i, le in enumerate(self.BUCKETS):
                if seconds <= le:
                    self.buckets[i] += 1

    def render(self):
        with self.lock:
            out = ["# TYPE http_requests_total counter"]
            for (code, path), n in sorted(self.requests.items()):
                out.append('http_requests_total{code="%d",path="%s"} %d' % (code, path, n))
            out.append("# TYPE http_request_duration_seconds histogram")
            for le, n in zip(self.BUCKETS, self.buckets):
                out.append('http_request_duration_seconds_bucket{le="%s"} %d' % (le, n))
            out.append('http_request_duration_seconds_bucket{le="+Inf"} %d' % self.count)
            out.append("http_request_duration_seconds_sum %f" % self.sum)
            out.append("http_request_duration_seconds_count %d" % self.count)
            return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=".", help="instance directory (VERSION, app.pid)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", dest="version", default=None)
    p.add_argument("--version-file", default=None)
    p.add_argument("--boot-delay", type=float, default=0.5, help="seconds answering 503 before ready")
    p.add_argument("--pid-file", default=None, help="default: <dir>/app.pid")
    a = p.parse_args()

    if not a.host.startswith("127."):
        p.error("--host must be a loopback address (127.x.y.z), got %r" % a.host)

    version = a.version
    if version is None:
        vf = a.version_file or os.path.join(a.dir, "VERSION")
        try:
            with open(vf) as f:
                version = f.read().strip()
        except FileNotFoundError:
            version = os.environ.get("APP_VERSION", "unknown")
    version = version or "unknown"
    pid_file = a.pid_file or os.path.join(a.dir, "app.pid")

    started = time.monotonic()
    ready_at = started + max(0.0, a.boot_delay)
    body_version = ("version=%s\n" % version).encode()
    broken = version.startswith("bad")
    m = re.search(r"5xx(\d+)", version)
    error_every = max(1, round(100 / int(m.group(1)))) if m and int(m.group(1)) > 0 else 0
    metrics = Metrics()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        disable_nagle_algorithm = True  # else every response waits ~40 ms on delayed ACKs
        server_version = "rollscript-demo/1"
        sys_version = ""

        def log_message(self, fmt, *args):  # quiet: the load would flood the log
            pass

        def reply(self, status, body):
            if self.path != "/metrics":
                metrics.observe(status, urlsplit(self.path).path, time.monotonic() - self.started)
            # One write for status line, headers and body: a client that
            # closes as soon as it has the status (HAProxy's health checks do)
            # never makes a second write fail.
            head = "%s %d %s\r\nServer: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
                self.protocol_version, status, self.responses[status][0], self.server_version, len(body))
            self.close_connection = True
            try:
                self.wfile.write(head.encode() + (b"" if self.command == "HEAD" else body))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client left; nothing to answer

        def do_GET(self):
            self.started = time.monotonic()
            url = urlsplit(self.path)
            if url.path == "/metrics":
                return self.reply(200, metrics.render().encode())
            if time.monotonic() < ready_at:
                return self.reply(503, b"booting\n")
            if url.path == "/health":
                return self.reply(503, b"unhealthy\n") if broken else self.reply(200, b"ok\n")
            if url.path == "/":
                if error_every and metrics.next_root() % error_every == 0:
                    return self.reply(500, b"internal error\n")
                return self.reply(200, body_version)
            if url.path == "/slow":
                try:
                    ms = int(parse_qs(url.query).get("ms", ["0"])[0])
                except ValueError:
                    return self.reply(400, b"ms must be an integer\n")
                time.sleep(min(max(ms, 0), 60000) / 1000.0)
                return self.reply(200, body_version)
            return self.reply(404, b"not found\n")

        do_HEAD = do_GET

    class Server(ThreadingHTTPServer):
        daemon_threads = False  # server_close() joins in-flight requests
        block_on_close = True
        allow_reuse_address = True
        request_queue_size = 128

        def handle_error(self, request, client_address):  # one line, not a traceback
            log("request from %s:%d failed: %s" % (client_address[0], client_address[1], sys.exc_info()[1]))

    try:
        srv = Server((a.host, a.port), Handler)
    except OSError as e:
        log("cannot listen on %s:%d: %s" % (a.host, a.port, e))
        return 1

    with open(pid_file + ".tmp", "w") as f:
        f.write("%d\n" % os.getpid())
    os.replace(pid_file + ".tmp", pid_file)

    stopping = threading.Event()
    stop_started = [0.0]

    def on_signal(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        stop_started[0] = time.monotonic()
        log("%s: stopping (no new connections, finishing in-flight requests)" % signal.Signals(signum).name)
        # shutdown() waits for serve_forever to return: never call it from the
        # thread running serve_forever (this handler runs on the main thread).
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # detached from the ssh session that started it

    log("version %s listening on %s:%d (ready in %.1fs)" % (version, a.host, a.port, a.boot_delay))
    try:
        srv.serve_forever(poll_interval=0.1)
    finally:
        srv.server_close()  # closes the listening socket, then joins request threads
        try:
            with open(pid_file) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(pid_file)
        except FileNotFoundError:
            pass
    now = time.monotonic()
    log("stopped in %.2fs (up %.1fs)" % (now - (stop_started[0] or now), now - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
