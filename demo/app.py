#!/usr/bin/env python3
"""The demo fleet's app: one instance of a tiny HTTP service (stdlib only).

    GET /           200 "version=<VERSION>\n"
    GET /health     200 "ok\n" once booted
    GET /slow?ms=N  holds the request N ms (at most 60000), then answers like /

Boot: the port is bound at once, but for --boot-delay seconds (default 0.5)
EVERY request is answered 503 "booting\n" — an instance that is listening is
not necessarily ready, and only /health tells the difference. A deploy that
put an instance back into the load balancer before /health said "ok" would
show up as failed requests in the load generator.

VERSION is read once at start: --version, else the file --version-file
(default: VERSION in --dir), else $APP_VERSION, else "unknown". A version
starting with "bad" (e.g. `tools/demo --version bad`) boots but never turns
healthy: /health keeps answering 503 "unhealthy\n", to show a failed rollout.

SIGTERM/SIGINT: stop accepting (the listening socket is closed), let every
in-flight request finish, remove the pid file, exit 0.

HTTP/1.0 on purpose: one request per connection, so the load balancer never
holds an idle keep-alive connection to an instance that is shutting down.
"""
import argparse
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def log(msg):
    sys.stderr.write("%s app[%d]: %s\n" % (time.strftime("%H:%M:%S"), os.getpid(), msg))
    sys.stderr.flush()


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

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        disable_nagle_algorithm = True  # else every response waits ~40 ms on delayed ACKs
        server_version = "rollscript-demo/1"
        sys_version = ""

        def log_message(self, fmt, *args):  # quiet: the load would flood the log
            pass

        def reply(self, status, body):
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
            url = urlsplit(self.path)
            if time.monotonic() < ready_at:
                return self.reply(503, b"booting\n")
            if url.path == "/health":
                return self.reply(503, b"unhealthy\n") if broken else self.reply(200, b"ok\n")
            if url.path == "/":
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
