#!/usr/bin/env bash
# reload-bench.sh -- hot reload under load, measured (issue: zero-downtime reloads).
# Starts two nginx backends and cohort (release build) on 127.0.0.1 with a config of
# 10 services x 3 variants x 10 backends (service svc0 carries the traffic), then runs
# wrk against svc0 in interleaved pairs: a run without reloads, and a run during which
# 20 reloads are applied (canary weight alternating, POST /reload). Reports:
#   - time from trigger to the new table serving: POST /reload answers after the swap,
#     so its latency bounds it (median and max over the reloads);
#   - wrk p50/p99 with vs without reloads (medians over the pairs), and errors.
# Usage: scripts/reload-bench.sh [--bin PATH] [--pairs 3] [--duration 10s]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
BIN="" PAIRS=3 DURATION=10s
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;; --pairs) PAIRS="$2"; shift 2 ;; --duration) DURATION="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;; *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then (cd "$ROOT" && cargo build --release --locked); BIN="$ROOT/target/release/cohort"; fi
for c in nginx wrk curl python3; do command -v "$c" >/dev/null || { echo "needs $c (scripts/install-deps.sh)" >&2; exit 2; }; done
T="$(mktemp -d /tmp/cohort-reload-bench.XXXXXX)"
PIDS=()
source "$HERE/bench/lib.sh"
trap 'stop_groups; rm -rf "$T"' EXIT
B1=$(free_port) B2=$(free_port) P=$(free_port) A=$(free_port)
start_nginx_backend "$T" "$B1"
start_nginx_backend "$T" "$B2"
write_config() { # canary weight of svc0
  python3 - "$1" "$B1" "$B2" "$P" "$A" "$T" >"$T/c.tmp" <<'PY'
import sys
cw, b1, b2, p, a, t = sys.argv[1:]
out = [f'[server]\nlisten = ["127.0.0.1:{p}"]\nadmin = "127.0.0.1:{a}"\nthreads = 2\nupgrade_sock = "{t}/u.sock"\npid_file = "{t}/c.pid"\n']
for s in range(10):
    out.append(f'\n[[service]]\nname = "svc{s}"\npath_prefix = "/s{s}"\nkey = ["header:x-user-id"]\n')
    for v, w in (("stable", 70), ("canary", cw if s == 0 else 20), ("beta", 10)):
        if s == 0:
            be = [f'"127.0.0.1:{b1 if v != "canary" else b2}"']
        else:
            be = [f'"127.0.{s}.{i + 1}:8000"' for i in range(10)]
        out.append(f'\n[[service.variant]]\nname = "{v}"\nweight = {w}\nbackends = [{", ".join(be)}]\n')
print("".join(out))
PY
  mv "$T/c.tmp" "$T/cohort.toml"
}
write_config 5
setsid "$BIN" run -c "$T/cohort.toml" 2>"$T/cohort.log" </dev/null & PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$A/readyz" >/dev/null && break; sleep 0.1; done
cat >"$T/lua" <<'LUA'
local n = 0
request = function() n = n + 1; return wrk.format("GET", "/s0/x", { ["X-User-Id"] = "user-" .. (n % 100000) }) end
LUA
wrk -t1 -c64 -d2s -s "$T/lua" "http://127.0.0.1:$P/" >/dev/null   # warm-up
run() { wrk -t1 -c64 -d"$DURATION" --latency -s "$T/lua" "http://127.0.0.1:$P/" >"$1"; }
ms() { awk -v v="$1" 'BEGIN{ if (v~/us$/){sub(/us/,"",v);print v/1000} else if (v~/ms$/){sub(/ms/,"",v);print v} else {sub(/s/,"",v);print v*1000} }'; }
echo "pair,mode,rps,p50_ms,p99_ms,errors" >"$T/wrk.csv"
: >"$T/reload_ms.txt"
secs="${DURATION%s}"
for pair in $(seq "$PAIRS"); do
  for mode in steady reloads; do
    out="$T/wrk_${pair}_$mode.txt"
    if [ "$mode" = reloads ]; then
      run "$out" & W=$!
      for i in $(seq 20); do
        sleep "$(python3 -c "print(($secs - 1) / 21)")"
        write_config $(( i % 2 == 0 ? 5 : 25 ))
        curl -s -o "$T/r.json" -w '%{time_total}\n' -X POST "http://127.0.0.1:$A/reload" | awk '{ print $1 * 1000 }' >>"$T/reload_ms.txt"
        grep -q '"applied"' "$T/r.json" || { echo "reload $i not applied: $(cat "$T/r.json")" >&2; exit 1; }
      done
      wait $W
    else
      run "$out"
    fi
    rps=$(awk '/^Requests\/sec/ { print $2 }' "$out")
    p50=$(ms "$(awk '$1 == "50%" { print $2 }' "$out")"); p99=$(ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    errs=$(awk '/Socket errors/ { gsub(",", ""); s += $4 + $6 + $8 + $10 } /Non-2xx/ { s += $NF } END { print s + 0 }' "$out")
    echo "$pair,$mode,$rps,$p50,$p99,$errs" >>"$T/wrk.csv"
  done
done
python3 - "$T/wrk.csv" "$T/reload_ms.txt" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
r = [float(x) for x in open(sys.argv[2]) if x.strip()]
print("\nreload-bench: 10 services x 3 variants x 10 backends; wrk -t1 -c64 against svc0")
print("%-8s %10s %9s %9s %8s" % ("mode", "req/s", "p50 ms", "p99 ms", "errors"))
for m in ("steady", "reloads"):
    sel = [x for x in rows if x["mode"] == m]
    print("%-8s %10.0f %9.3f %9.3f %8d" % (m, statistics.median(float(x["rps"]) for x in sel),
          statistics.median(float(x["p50_ms"]) for x in sel), statistics.median(float(x["p99_ms"]) for x in sel),
          sum(int(float(x["errors"])) for x in sel)))
print("\nPOST /reload -> applied (trigger to new table serving), %d reloads: median %.2f ms, max %.2f ms"
      % (len(r), statistics.median(r), max(r)))
PY
