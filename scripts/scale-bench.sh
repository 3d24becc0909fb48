#!/usr/bin/env bash
# scale-bench.sh -- does cost grow with the number of services or the size of allow-lists?
# (issue 19). Generates two configs of the same shape:
#   small: 1 service;
#   big:   1,000 services (hosts s<N>.example.com), each with 3 variants, a CIDR rule and
#          a 1,000-key key_in rule: 1M allow-list keys, about 12 MB of TOML.
# Then, interleaved (small, big, small, big, ...), for each: starts the release binary on
# 127.0.0.1 with two nginx backends and measures
#   - time to ready (launch to the first 200 from /readyz) and RSS after start;
#   - POST /reload with the file unchanged (median of 5);
#   - req/s with wrk -t1 -c64 and a random X-User-Id (1 in 100 on the allow-list) to the
#     last service's Host;
#   - a reload of a changed file (one weight edited): its time, and the peak RSS while it
#     ran (VmHWM, reset just before through /proc/PID/clear_refs) against RSS before it.
# Prints one table of medians (req/s ratio big/small included).
# Usage: scripts/scale-bench.sh [--bin PATH] [--rounds 2] [--duration 10s] [--out DIR]
# Traffic goes only to 127.0.0.1; every process started is stopped by its process group.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
BIN="" ROUNDS=2 DURATION=10s OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;; --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;; --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;; *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then (cd "$ROOT" && cargo build --release --locked); BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cohort"; fi
[ -x "$BIN" ] || { echo "scale-bench.sh: $BIN is not executable" >&2; exit 2; }
for c in nginx wrk curl python3; do command -v "$c" >/dev/null || { echo "needs $c (scripts/install-deps.sh)" >&2; exit 2; }; done
T="$(mktemp -d /tmp/cohort-scale-bench.XXXXXX)"
OUT="${OUT:-$T}"; mkdir -p "$OUT"
PIDS=()
source "$HERE/bench/lib.sh"
cleanup() { stop_groups; rm -rf "$T"; }
trap cleanup EXIT
B1=$(free_port) B2=$(free_port) P=$(free_port) A=$(free_port)
start_nginx_backend "$T" "$B1"
start_nginx_backend "$T" "$B2"

# gen SERVICES CANARY_WEIGHT > file
gen() {
  python3 - "$1" "$2" "$B1" "$B2" "$P" "$A" "$T" <<'PY'
import sys
n, cw, b1, b2, p, a, t = sys.argv[1:]
n = int(n)
w = sys.stdout.write
w(f'[server]\nlisten = ["127.0.0.1:{p}"]\nadmin = "127.0.0.1:{a}"\nthreads = 2\n'
  f'drain_delay_secs = 0\nshutdown_timeout_secs = 1\nwatch = false\n'
  f'upgrade_sock = "{t}/u.sock"\npid_file = "{t}/c.pid"\n')
for s in range(n):
    w(f'\n[[service]]\nname = "svc{s}"\nhosts = ["s{s}.example.com"]\nkey = ["header:x-user-id"]\n')
    for v, wt, be in (("stable", 90, b1), ("canary", cw, b2), ("beta", 5, b2)):
        w(f'\n[[service.variant]]\nname = "{v}"\nweight = {wt}\nbackends = ["127.0.0.1:{be}"]\n')
    w('\n[[service.rule]]\nname = "staff"\nclient_cidr = ["10.20.0.0/16"]\nvariant = "canary"\n')
    keys = ", ".join(f'"s{s}-u{i:06d}"' for i in range(0, 100000, 100))
    w(f'\n[[service.rule]]\nname = "partners"\nkey_in = [{keys}]\nvariant = "beta"\n')
PY
}
gen 1 5 >"$T/small.toml"; gen 1000 5 >"$T/big.toml"
gen 1 6 >"$T/small2.toml"; gen 1000 6 >"$T/big2.toml"
SIZE_SMALL=$(stat -c %s "$T/small.toml") SIZE_BIG=$(stat -c %s "$T/big.toml")

lua() { # HOST: random X-User-Id among 100,000 ids of that service's form
  cat <<LUA
local reqs = {}
function init(args)
  math.randomseed(os.time())
  for i = 1, 100000 do
    reqs[i] = wrk.format("GET", "/x", { ["Host"] = "$1", ["X-User-Id"] = string.format("$2-u%06d", i - 1) })
  end
end
function request() return reqs[math.random(100000)] end
LUA
}
lua "s0.example.com" s0 >"$T/small.lua"; lua "s999.example.com" s999 >"$T/big.lua"

now() { date +%s.%N; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }
post_ms() { curl -s -o "$T/r.json" -w '%{time_total}\n' -X POST "http://127.0.0.1:$A/reload" | awk '{ print $1 * 1000 }'; }

echo "round,config,ready_s,rss_start_mib,reload_unchanged_ms,rps,errors,rss_after_load_mib,reload_changed_ms,rss_before_reload_mib,peak_during_reload_mib" >"$OUT/scale.csv"
for round in $(seq "$ROUNDS"); do
  for cfg in small big; do
    cp "$T/$cfg.toml" "$T/cohort.toml"
    t0=$(now)
    RUST_LOG=warn setsid "$BIN" run -c "$T/cohort.toml" 2>"$T/cohort.log" </dev/null & CP=$!
    until curl -sf "http://127.0.0.1:$A/readyz" >/dev/null 2>&1; do
      kill -0 "$CP" 2>/dev/null || { echo "cohort exited: $(cat "$T/cohort.log")" >&2; exit 1; }
      sleep 0.01
    done
    ready=$(python3 -c "print(round($(now) - $t0, 3))")
    sleep 1
    rss0=$(rss_kib "$CP")
    un=()
    for _ in 1 2 3 4 5; do
      un+=("$(post_ms)")
      grep -q '"unchanged"' "$T/r.json" || { echo "reload not unchanged: $(cat "$T/r.json")" >&2; exit 1; }
    done
    unchanged=$(printf '%s\n' "${un[@]}" | sort -g | sed -n 3p)
    wrk -t1 -c64 -d2s -s "$T/$cfg.lua" "http://127.0.0.1:$P/" >/dev/null   # warm-up
    wrk -t1 -c64 -d"$DURATION" -s "$T/$cfg.lua" "http://127.0.0.1:$P/" >"$OUT/wrk_${round}_$cfg.txt"
    rps=$(awk '/^Requests\/sec/ { print $2 }' "$OUT/wrk_${round}_$cfg.txt")
    errs=$(awk '/Socket errors/ { gsub(",", ""); s += $4 + $6 + $8 + $10 } /Non-2xx/ { s += $NF } END { print s + 0 }' "$OUT/wrk_${round}_$cfg.txt")
    rss1=$(rss_kib "$CP")
    # A changed file: peak RSS while it is parsed, compiled and swapped in.
    cp "$T/${cfg}2.toml" "$T/cohort.toml"
    echo 5 >"/proc/$CP/clear_refs"
    before=$(rss_kib "$CP")
    changed=$(post_ms)
    grep -q '"applied"' "$T/r.json" || { echo "changed reload not applied: $(cat "$T/r.json")" >&2; exit 1; }
    peak=$(hwm_kib "$CP")
    kill -TERM -- "-$CP" 2>/dev/null || true
    wait "$CP" 2>/dev/null || true
    echo "$round,$cfg,$ready,$((rss0 / 1024)),$unchanged,$rps,$errs,$((rss1 / 1024)),$changed,$((before / 1024)),$((peak / 1024))" >>"$OUT/scale.csv"
  done
done
python3 - "$OUT/scale.csv" "$SIZE_SMALL" "$SIZE_BIG" "$DURATION" "$ROUNDS" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1])))
size = {"small": int(sys.argv[2]), "big": int(sys.argv[3])}
def med(cfg, col):
    return st.median(float(r[col]) for r in rows if r["config"] == cfg)
print(f"\nscale-bench: wrk -t1 -c64 -d{sys.argv[4]}, {sys.argv[5]} interleaved round(s), medians")
print("small: 1 service; big: 1,000 services x 3 variants, a CIDR rule and a 1,000-key key_in each")
print("| | small | big |\n|---|---:|---:|")
print("| config size | %.1f KB | %.1f MB |" % (size["small"] / 1e3, size["big"] / 1e6))
rs, rb = med("small", "rps"), med("big", "rps")
print("| req/s | %.0f | %.0f (%.2fx) |" % (rs, rb, rb / rs))
print("| errors (all rounds) | %d | %d |" % tuple(sum(int(float(r["errors"])) for r in rows if r["config"] == c) for c in ("small", "big")))
print("| RSS after start | %.0f MiB | %.0f MiB |" % (med("small", "rss_start_mib"), med("big", "rss_start_mib")))
print("| RSS after the load | %.0f MiB | %.0f MiB |" % (med("small", "rss_after_load_mib"), med("big", "rss_after_load_mib")))
print("| time to ready | %.2f s | %.2f s |" % (med("small", "ready_s"), med("big", "ready_s")))
print("| `POST /reload`, file unchanged | %.1f ms | %.1f ms |" % (med("small", "reload_unchanged_ms"), med("big", "reload_unchanged_ms")))
print("| `POST /reload`, file changed | %.0f ms | %.0f ms |" % (med("small", "reload_changed_ms"), med("big", "reload_changed_ms")))
print("| peak RSS during that reload / RSS before | %.2fx | %.2fx |" % tuple(
    st.median(float(r["peak_during_reload_mib"]) / float(r["rss_before_reload_mib"]) for r in rows if r["config"] == c)
    for c in ("small", "big")))
print("\nper round: " + sys.argv[1])
for r in rows:
    print("  " + ", ".join(f"{k}={v}" for k, v in r.items()))
PY
