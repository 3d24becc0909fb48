#!/usr/bin/env bash
# callgrind-metrics.sh -- instructions per request with metric recording on vs compiled
# out, counted by valgrind's callgrind (repeatable whatever else the machine does).
# Each binary serves N1 and then N2 keep-alive requests (one client connection, random
# user ids, nginx backend on 127.0.0.1) under callgrind; instructions per request =
# (Ir(N2) - Ir(N1)) / (N2 - N1), which cancels start-up and shutdown.
# Usage: scripts/callgrind-metrics.sh WITH_METRICS_BIN WITHOUT_METRICS_BIN [N1 N2]
#   (any two builds can be compared the same way; LABELS=build renames the rows)
#   ROLLOUT_WITH=1: the first binary serves the split through a progressive rollout
#   (scripts/bench/lib.sh BENCH_ROLLOUT): one binary given twice then measures what a
#   rollout costs per request (BENCH_ROLLOUT_CHECK_SECS=3600: no check runs during the
#   measurement, so only the request path counts).
#   build them with: cargo build --release && cp target/release/cohort /tmp/with
#                    cargo build --release --no-default-features && cp target/release/cohort /tmp/without
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WITH="$1" WITHOUT="$2" N1="${3:-1000}" N2="${4:-3000}"
T="$(mktemp -d /tmp/cohort-callgrind.XXXXXX)"
PIDS=()
source "$HERE/bench/lib.sh"
trap 'stop_groups; rm -rf "$T"' EXIT
B=$(free_port)
start_nginx_backend "$T" "$B"
measure() { # bin n [rollout] -> total instructions
  local bin="$1" n="$2" p a
  p=$(free_port); a=$(free_port)
  BENCH_ROLLOUT="${3:-0}" cohort_bench_config "$p" "$a" "$T" "$B" "$B" 1 >"$T/c.toml"
  rm -f "$T"/cohort.rollout.json /tmp/cohort-"$p".rollout.json
  rm -f "$T"/callgrind.out.*
  RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$T/callgrind.out.%p" "$bin" run -c "$T/c.toml" 2>"$T/vg.log" &
  local vg=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$a/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  python3 - "$p" "$n" <<'PY'
import http.client, random, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
rnd = random.Random(42)
for i in range(n):
    c.request("GET", "/", headers={"x-user-id": "user-%d" % rnd.randrange(100000)})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  kill -INT "$vg"; wait "$vg" 2>/dev/null || true
  awk '/^summary:|^totals:/ { print $2; exit }' "$T"/callgrind.out.*
}
printf "%-16s %14s %14s %14s\n" "build" "Ir($N1)" "Ir($N2)" "Ir/request"
declare -A PER
for b in with:"$WITH" without:"$WITHOUT"; do  # (any two builds compare the same way)
  name="${b%%:*}" bin="${b#*:}"
  ro=0; [ "$name" = with ] && ro="${ROLLOUT_WITH:-0}"
  i1=$(measure "$bin" "$N1" "$ro"); i2=$(measure "$bin" "$N2" "$ro")
  PER[$name]=$(( (i2 - i1) / (N2 - N1) ))
  printf "%-16s %14d %14d %14d\n" "${LABELS:-metrics} $name" "$i1" "$i2" "${PER[$name]}"
done
awk -v a="${PER[with]}" -v b="${PER[without]}" 'BEGIN { printf "recording adds %d instructions per request (%.2f%%)\n", a - b, (a - b) * 100 / b }'
