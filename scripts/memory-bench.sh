#!/usr/bin/env bash
# memory-bench.sh -- cohort's resident memory (VmRSS) idle, and with N idle keep-alive
# client connections (each completed one request through the proxy, one at a time, and
# stays open).
# Usage: scripts/memory-bench.sh [--bin PATH] [--conns 10000]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
BIN="" CONNS=10000
while [ $# -gt 0 ]; do
  case "$1" in --bin) BIN="$2"; shift 2 ;; --conns) CONNS="$2"; shift 2 ;; *) echo "unknown $1" >&2; exit 2 ;; esac
done
if [ -z "$BIN" ]; then (cd "$ROOT" && cargo build --release --locked); BIN="$ROOT/target/release/cohort"; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # needs more than CONNS descriptors per process
T="$(mktemp -d /tmp/cohort-mem.XXXXXX)"; PIDS=()
source "$HERE/bench/lib.sh"
trap 'stop_groups; rm -rf "$T"' EXIT
B=$(free_port) P=$(free_port) A=$(free_port)
start_nginx_backend "$T" "$B"
cohort_bench_config "$P" "$A" "$T" "$B" "$B" >"$T/c.toml"
RUST_LOG=warn setsid "$BIN" run -c "$T/c.toml" 2>"$T/log" </dev/null & PIDS+=($!); CP=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$A/readyz" >/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$CP/status"; }
sleep 1; IDLE=$(rss)
python3 - "$P" "$CONNS" "$CP" <<'PY' &
import socket, sys, time, selectors
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
ok = 0
# one request at a time: each connection completes a request, then stays open and idle
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nx-user-id: u%d\r\n\r\n" % i)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    ok += buf.startswith(b"HTTP/1.1 200")
    socks.append(s)
print("answered", ok, flush=True)
time.sleep(30)
PY
CL=$!
for _ in $(seq 120); do
  n=$(ls /proc/$CP/fd 2>/dev/null | wc -l)
  [ "$n" -ge "$CONNS" ] && break; sleep 0.5
done
sleep 3
HELD=$(rss); FDS=$(ls /proc/$CP/fd | wc -l)
kill $CL 2>/dev/null || true
echo "cohort RSS idle: ${IDLE} MiB; with $CONNS idle keep-alive client connections: ${HELD} MiB (process fds: $FDS)"
