#!/usr/bin/env bash
# bench.sh -- cohort's bundled load test. Builds the release binary, starts two nginx
# backends on 127.0.0.1 (stable, canary; fixed ~100-byte 200 responses), starts cohort with
# a bench config (90/10 on X-User-Id, keep-alive upstreams) and drives it with wrk and a
# Lua script that sends a random user id per request. Prints req/s and latency
# p50/p90/p99 (medians over rounds), then cohort's own per-variant latency table.
# With --compare, the same job also runs straight at a backend ("direct") and through
# NGINX (split_clients) and HAProxy (balance hdr + consistent hashing), interleaved
# (direct nginx haproxy cohort, direct nginx haproxy cohort, ...), with ratios.
#
# Usage: scripts/bench.sh [--compare] [--duration 10s] [--connections 64] [--threads 1]
#                         [--keys 100000] [--rounds 3] [--workers N] [--bin PATH]
#                         [--out DIR] [--smoke] [--tls]
#   --smoke     a few seconds, cohort only, fails unless every request succeeded (CI)
#   --bin PATH  use this cohort binary instead of building target/release/cohort
#   --workers N worker threads for cohort, nginx and haproxy alike (default: nproc)
#   --tls       every proxy terminates TLS (ECDSA P-256, HTTP/1.1 keep-alive; the
#               harness's TLS=1), so this measures TLS records, not handshakes
# Traffic goes only to 127.0.0.1. Every process started is stopped by its process group.
# wrk, nginx and haproxy are installed with apt-get when missing (root needed).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

COMPARE=0 SMOKE=0 BIN="" OUT="" TLS="${TLS:-0}"
DURATION="${DURATION:-10s}" CONNS="${CONNS:-64}" THREADS="${THREADS:-1}" KEYS="${ID_POOL:-100000}"
ROUNDS="${RUNS:-3}" WORKERS="${PROXY_WORKERS:-$(nproc)}"
while [ $# -gt 0 ]; do
  case "$1" in
    --compare) COMPARE=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    --tls) TLS=1; shift ;;
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --keys) KEYS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$SMOKE" = 1 ]; then
  COMPARE=0 DURATION=2s ROUNDS=1 CONNS=8 KEYS=1000
  export WARMUP=1s SANITY_REQS=50 IDLE_MAX=1000 IDLE_WAIT=0 RETRIES=0 SETTLE=0
fi
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build --release --locked)
  BIN="$ROOT/target/release/cohort"
fi
[ -x "$BIN" ] || { echo "bench.sh: $BIN is not executable" >&2; exit 2; }

source "$HERE/bench/lib.sh"
export BACKEND1_PORT="${BACKEND1_PORT:-$(free_port)}" BACKEND2_PORT="${BACKEND2_PORT:-$(free_port)}"
export NGINX_PORT="${NGINX_PORT:-$(free_port)}" HAPROXY_PORT="${HAPROXY_PORT:-$(free_port)}"
export EXTRA_PROXY_PORT="${EXTRA_PROXY_PORT:-$(free_port)}"
ADMIN_PORT="$(free_port)"
CONF_DIR="$(mktemp -d /tmp/cohort-bench.XXXXXX)"
trap 'rm -rf "$CONF_DIR"' EXIT
if [ "$TLS" = 1 ]; then
  # TLS on the measured port (the harness makes the certificate at start and passes its
  # paths in TLS_CERT/TLS_KEY), plaintext on another.
  cohort_bench_config "$(free_port)" "$ADMIN_PORT" "$CONF_DIR" "$BACKEND1_PORT" "$BACKEND2_PORT" "$WORKERS" >"$CONF_DIR/bench.tmpl"
  printf '\n[[server.tls]]\nlisten = "127.0.0.1:%s"\ncert = "@CERT@"\nkey = "@KEY@"\n' "$EXTRA_PROXY_PORT" >>"$CONF_DIR/bench.tmpl"
  PREPARE="sed -e \"s#@CERT@#\$TLS_CERT#\" -e \"s#@KEY@#\$TLS_KEY#\" '$CONF_DIR/bench.tmpl' >'$CONF_DIR/bench.toml' && "
else
  cohort_bench_config "$EXTRA_PROXY_PORT" "$ADMIN_PORT" "$CONF_DIR" "$BACKEND1_PORT" "$BACKEND2_PORT" "$WORKERS" >"$CONF_DIR/bench.toml"
  PREPARE=""
fi
export TLS

export DURATION RUNS="$ROUNDS" THREADS CONNS ID_POOL="$KEYS" PROXY_WORKERS="$WORKERS"
export EXTRA_PROXY_NAME=cohort
export EXTRA_PROXY_CMD="${PREPARE}RUST_LOG=warn exec '$BIN' run -c '$CONF_DIR/bench.toml'"
export BEFORE_STOP_CMD="'$ROOT/scripts/variant-report' --admin 127.0.0.1:$ADMIN_PORT --since-start --json"
if [ "$COMPARE" = 1 ]; then export TARGETS="direct nginx haproxy"; else export TARGETS=""; fi
OUT="${OUT:-/tmp/cohort-bench-$(date +%Y%m%d-%H%M%S)}"
export OUT_DIR="$OUT"
mkdir -p "$OUT"

"$HERE/bench/peer_baseline.sh" >"$OUT/peer_baseline.out"

CSV="$OUT/results.csv"
echo
echo "cohort bench$([ "$TLS" = 1 ] && echo ' (TLS)'): wrk -t$THREADS -c$CONNS -d$DURATION, $KEYS user ids, $ROUNDS round(s), $WORKERS worker(s)"
python3 - "$CSV" "$OUT/before_stop.txt" "$SMOKE" <<'PY'
import csv, json, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
targets = []
for r in rows:
    if r["target"] not in targets:
        targets.append(r["target"])
def med(t, col):
    return statistics.median(float(r[col]) for r in rows if r["target"] == t)
print("\n%-8s %10s %9s %9s %9s %9s %10s %8s" % ("target", "req/s", "p50 ms", "p90 ms", "p99 ms", "cores", "req/core", "errors"))
base = {}
for t in targets:
    rps = med(t, "rps")
    errs = sum(int(float(r["socket_errors"])) + int(float(r["non2xx"])) for r in rows if r["target"] == t)
    pc = [float(r["proxy_cores"]) for r in rows if r["target"] == t and r["proxy_cores"] not in ("-", "")]
    cores = statistics.median(pc) if pc else None
    base[t] = (rps, med(t, "p99_ms"))
    print("%-8s %10.0f %9.3f %9.3f %9.3f %9s %10s %8d" % (t, rps, med(t, "p50_ms"), med(t, "p90_ms"), med(t, "p99_ms"),
          "%.2f" % cores if cores else "-", "%.0f" % (rps / cores) if cores else "-", errs))
if "cohort" in base:
    for peer in ("direct", "nginx", "haproxy"):
        if peer in base:
            print("cohort vs %-7s req/s x%.2f   p99 x%.2f" % (peer, base["cohort"][0] / base[peer][0], base["cohort"][1] / base[peer][1]))
try:
    variants = json.loads(open(sys.argv[2]).read())
    print("\ncohort's own histograms (all requests since start, incl. warm-up):")
    print("%-8s %-8s %10s %8s %9s %9s %9s" % ("service", "variant", "requests", "err %", "p50 ms", "p90 ms", "p99 ms"))
    for v in variants:
        f = lambda x: "-" if x is None else "%.3f" % x
        print("%-8s %-8s %10d %8s %9s %9s %9s" % (v["service"], v["variant"], v["requests"], f(v["error_pct"]), f(v["p50_ms"]), f(v["p90_ms"]), f(v["p99_ms"])))
except Exception as e:
    print("\n(no per-variant table: %s)" % e)
if sys.argv[3] == "1":
    bad = [r for r in rows if int(float(r["socket_errors"])) or int(float(r["non2xx"])) or float(r["rps"]) <= 0]
    if bad or not rows:
        print("\nsmoke: FAILED (errors or no traffic)"); sys.exit(1)
    print("\nsmoke: ok")
PY
echo
echo "full results: $OUT/results.md  (raw wrk output in $OUT/raw/)"
