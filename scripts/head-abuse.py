#!/usr/bin/env python3
"""head-abuse.py -- memory held by clients that send huge request heads after a request
the HTTP/1 engine hands to the Pingora carrier (issue 14, "one head policy on every
path").

Starts BIN (`cohort run`) on 127.0.0.1 in front of a small backend, opens N connections
that each send a chunked POST (handed over), read its answer, then send up to HEAD_KB of
header lines without ending the head, and keeps them open. Prints cohort's RSS before,
while the connections are open, and after they closed, and how many connections the
proxy had closed by itself (the engine answers 431 past `server.max_request_head_bytes`).

Usage: scripts/head-abuse.py BIN [N=300] [HEAD_KB=1000]
Traffic goes only to 127.0.0.1; every process started is stopped at the end.
"""
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        # The proxy forwards the chunked body as it came.
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            self.rfile.read(size + 2)
            if size == 0:
                break
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    head_kb = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="cohort-head-abuse.")
    cfg = os.path.join(tmp, "c.toml")
    with open(cfg, "w") as f:
        f.write(
            '[server]\nlisten = ["127.0.0.1:%d"]\nadmin = "127.0.0.1:%d"\nthreads = 2\n'
            'pid_file = "%s/pid"\nupgrade_sock = "%s/sock"\n\n'
            '[[service]]\nname = "api"\nkey = ["header:x-user-id"]\n\n'
            '[[service.variant]]\nname = "stable"\nweight = 1\nbackends = ["127.0.0.1:%d"]\n'
            % (port, admin, tmp, tmp, backend.server_address[1])
        )
    proc = subprocess.Popen(
        [binary, "run", "-c", cfg],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, RUST_LOG="error"),
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        conns, closed_by_proxy = [], 0
        chunked = (
            b"POST / HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        # 8 KB fields: few enough (under 256) that only the head's size limits it.
        line = b"x-pad: " + b"a" * 8185 + b"\r\n"
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=20)
            c.sendall(chunked)
            answer = b""
            while b"\r\n\r\nok" not in answer:
                got = c.recv(4096)
                if not got:
                    break
                answer += got
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(head_kb // 8):
                    c.sendall(line)
                c.settimeout(0.2)
                got = c.recv(64)
                # An answer (431) or the end: the proxy gave up on the head.
                closed_by_proxy += 1 if not got or got.startswith(b"HTTP/1.1 4") else 0
            except socket.timeout:
                pass
            except OSError:
                closed_by_proxy += 1
            conns.append(c)
        time.sleep(1)
        during = rss_kib(proc.pid)
        for c in conns:
            c.close()
        time.sleep(2)
        after = rss_kib(proc.pid)
        print(
            "connections %d, head sent up to %d KB each, answered or closed by the proxy: %d"
            % (n, head_kb, closed_by_proxy)
        )
        print(
            "RSS KiB: before %d, with them open %d (+%d, %.1f KiB per connection), after they closed %d"
            % (before, during, during - before, (during - before) / n, after)
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        backend.shutdown()


if __name__ == "__main__":
    main()
