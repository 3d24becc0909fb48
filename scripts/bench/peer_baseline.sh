#!/usr/bin/env bash
# peer_baseline.sh -- side-by-side loopback baseline for HTTP/1.1 L7 reverse proxies.
# (Copied from the workplace's shared bench harness for scripts/bench.sh; the one local
# change is the BEFORE_STOP_CMD hook, run after the last round while all targets still run.)
#
# Starts two nginx backends (127.0.0.1:9001 "stable", :9002 "canary"; 1 worker each,
# fixed ~100-byte 200 response), then these targets, and measures them with wrk
# INTERLEAVED (round 1: direct, nginx, haproxy[, extra]; round 2: ...):
#
#   direct   wrk straight at backend 1 (no proxy; physical upper bound)
#   nginx    nginx proxy, split_clients on X-User-Id (90/10), upstream keepalive 64
#   haproxy  haproxy, balance hdr(X-User-Id) + hash-type consistent, http-reuse always
#   extra    optional: your proxy, started with EXTRA_PROXY_CMD (see below)
#
# Every request carries a random X-User-Id from a pool of ID_POOL ids (user_id.lua).
# Before measuring, a routing sanity check sends SANITY_REQS requests with distinct
# ids through each proxy (twice) and reports the backend split and stickiness.
# All processes are started in their own process group and stopped by that id
# on exit (also on error / Ctrl-C).  Nothing is installed as a running service.
#
# Usage:
#   ./peer_baseline.sh
#   DURATION=30s RUNS=5 ./peer_baseline.sh
#   EXTRA_PROXY_CMD='/path/to/canary-lb --listen 127.0.0.1:8083 \
#        --stable 127.0.0.1:9001 --canary 127.0.0.1:9002' \
#   EXTRA_PROXY_PORT=8083 EXTRA_PROXY_NAME=pingora ./peer_baseline.sh
#
# EXTRA_PROXY_CMD is run with `bash -c` in its own process group (setsid). It must
# stay in the foreground (no daemonizing), listen on 127.0.0.1:$EXTRA_PROXY_PORT and
# route to the backends at 127.0.0.1:9001/9002.  The env vars BACKEND1_PORT,
# BACKEND2_PORT, EXTRA_PROXY_PORT, PROXY_WORKERS and BENCH_TMP are exported to it.
#
# Tunables (env): DURATION=10s WARMUP=2s RUNS=3 THREADS=1 CONNS=64 ID_POOL=100000
#   SETTLE=1 (s between runs)  SANITY_REQS=400  PROXY_WORKERS=$(nproc)
#   BACKEND1_PORT=9001 BACKEND2_PORT=9002 NGINX_PORT=8081 HAPROXY_PORT=8082
#   TARGETS="direct nginx haproxy" (extra is appended when EXTRA_PROXY_CMD is set)
#   EXTRA_PROXY_WAIT=30 (s to wait for the extra proxy's port)
#   IDLE_MAX=0.25 IDLE_WAIT=300: before each run, wait (up to IDLE_WAIT s) until CPU
#     used by processes that are NOT part of the benchmark is below IDLE_MAX cores;
#     every run also records that "foreign" CPU; a run during which it reached
#     IDLE_MAX is discarded and repeated (at most RETRIES=3 times, then kept and
#     flagged "(!)" in the table).
#   WRK_CPUS / SERVER_CPUS: optional taskset CPU lists (e.g. on a bigger box:
#     WRK_CPUS=0-3 SERVER_CPUS=4-7); default: no pinning.
#   PROXY_CPUS: optional taskset CPU list for the proxies alone (SERVER_CPUS then pins
#     only the backends). On 2 cores, `PROXY_CPUS=0 PROXY_WORKERS=1 SERVER_CPUS=1
#     WRK_CPUS=1` gives each proxy one core of its own, so the proxy is what limits.
#   OUT_DIR: where results.md / results.csv / raw wrk outputs go (default: temp dir,
#     kept).  KEEP_TMP=1 keeps the rendered configs and logs as well.
#   NO_INSTALL=1: never call apt-get.
#   TLS=1: the proxies terminate TLS (self-signed ECDSA P-256 certificate made with
#     openssl at start; nginx `listen ... ssl`, haproxy `bind ... ssl crt`), and wrk and
#     the sanity check speak https to them (keep-alive, so this measures TLS records, not
#     handshakes). `direct` stays plaintext. The extra proxy gets TLS_CERT and TLS_KEY
#     (PEM paths) in its environment and must listen with TLS on EXTRA_PROXY_PORT.
set -Eeuo pipefail
trap 'echo "[peer_baseline] failed (rc=$?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
RUNS="${RUNS:-3}"
THREADS="${THREADS:-1}"
CONNS="${CONNS:-64}"
ID_POOL="${ID_POOL:-100000}"
SETTLE="${SETTLE:-1}"
SANITY_REQS="${SANITY_REQS:-400}"
PROXY_WORKERS="${PROXY_WORKERS:-$(nproc)}"
BACKEND1_PORT="${BACKEND1_PORT:-9001}"
BACKEND2_PORT="${BACKEND2_PORT:-9002}"
NGINX_PORT="${NGINX_PORT:-8081}"
HAPROXY_PORT="${HAPROXY_PORT:-8082}"
TARGETS="${TARGETS-direct nginx haproxy}"
EXTRA_PROXY_CMD="${EXTRA_PROXY_CMD:-}"
EXTRA_PROXY_PORT="${EXTRA_PROXY_PORT:-}"
EXTRA_PROXY_NAME="${EXTRA_PROXY_NAME:-extra}"
EXTRA_PROXY_WAIT="${EXTRA_PROXY_WAIT:-30}"
WRK_CPUS="${WRK_CPUS:-}"
SERVER_CPUS="${SERVER_CPUS:-}"
PROXY_CPUS="${PROXY_CPUS:-}"
KEEP_TMP="${KEEP_TMP:-0}"
NO_INSTALL="${NO_INSTALL:-0}"
TLS="${TLS:-0}"
IDLE_MAX="${IDLE_MAX:-0.25}"
IDLE_WAIT="${IDLE_WAIT:-300}"
RETRIES="${RETRIES:-3}"
LUA="$HERE/user_id.lua"

log() { printf '[peer_baseline %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install
install_if_missing() {
  local pkgs=() p
  command -v nginx   >/dev/null 2>&1 || pkgs+=(nginx)
  command -v haproxy >/dev/null 2>&1 || pkgs+=(haproxy)
  command -v wrk     >/dev/null 2>&1 || pkgs+=(wrk)
  command -v curl    >/dev/null 2>&1 || pkgs+=(curl)
  command -v ss      >/dev/null 2>&1 || pkgs+=(iproute2)
  command -v setsid  >/dev/null 2>&1 || pkgs+=(util-linux)
  ((${#pkgs[@]})) || return 0
  [ "$NO_INSTALL" = 1 ] && die "missing: ${pkgs[*]} (NO_INSTALL=1)"
  [ "$(id -u)" = 0 ] || die "missing: ${pkgs[*]}; run as root or install them"
  log "installing: ${pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # Debian enables (and, under systemd, starts) the packaged services; we only
  # run private instances, so switch the freshly installed system services off.
  for p in "${pkgs[@]}"; do
    case "$p" in nginx|haproxy)
      if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now "$p" >/dev/null 2>&1 || true
      fi ;;
    esac
  done
}

# ---------------------------------------------------------------- process control
declare -a GROUPS_STARTED=()
declare -A GROUP_NAME=()
BACKEND_GROUPS=""
LAST_PID=""

start_group() { # name logfile cmd...   -> sets LAST_PID (== process group id)
  local name="$1" logf="$2"; shift 2
  if [ -n "$PROXY_CPUS" ] && [[ "$name" == proxy_* ]]; then set -- taskset -c "$PROXY_CPUS" "$@"
  elif [ -n "$SERVER_CPUS" ]; then set -- taskset -c "$SERVER_CPUS" "$@"; fi
  # non-interactive shell: the child is not a group leader, so setsid does not fork
  setsid "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  GROUPS_STARTED+=("$LAST_PID")
  GROUP_NAME[$LAST_PID]="$name"
  ALL_GROUPS="$ALL_GROUPS $LAST_PID"
  sleep 0.05
  local pg
  pg="$(ps -o pgid= -p "$LAST_PID" 2>/dev/null | tr -d ' ' || true)"
  if [ -n "$pg" ] && [ "$pg" != "$LAST_PID" ]; then
    die "$name: pid $LAST_PID is not its own process group (pgid $pg)"
  fi
}

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

stop_all() {
  local pid i alive
  ((${#GROUPS_STARTED[@]})) || return 0
  for pid in "${GROUPS_STARTED[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for i in $(seq 50); do
    alive=0
    for pid in "${GROUPS_STARTED[@]}"; do group_alive "$pid" && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${GROUPS_STARTED[@]}"; do
    if group_alive "$pid"; then
      log "group $pid (${GROUP_NAME[$pid]}) ignored SIGTERM; sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  log "stopped ${#GROUPS_STARTED[@]} process groups: $(for p in "${GROUPS_STARTED[@]}"; do printf '%s(%s) ' "${GROUP_NAME[$p]}" "$p"; done)"
  GROUPS_STARTED=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  if [ -n "${TMPD:-}" ] && [ -d "$TMPD" ]; then
    if [ "$KEEP_TMP" = 1 ]; then log "kept temp dir $TMPD"
    else
      # keep results (OUT_DIR may live inside TMPD), drop configs/logs
      find "$TMPD" -mindepth 1 -maxdepth 1 ! -name results -exec rm -rf {} + 2>/dev/null || true
      rmdir "$TMPD" 2>/dev/null || true
    fi
  fi
  exit "$rc"
}

port_listening() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

wait_port() { # port pid name timeout_s
  local port="$1" pid="$2" name="$3" t="${4:-10}" i
  for i in $(seq $((t * 10))); do
    port_listening "$port" && return 0
    group_alive "$pid" || { tail -n 20 "$TMPD/$name.log" >&2 || true; die "$name exited before listening on :$port"; }
    sleep 0.1
  done
  tail -n 20 "$TMPD/$name.log" >&2 || true
  die "$name not listening on :$port after ${t}s"
}

# ---------------------------------------------------------------- measurement helpers
CLK_TCK="$(getconf CLK_TCK)"

group_ticks() { # pgid... -> utime+stime ticks of all live processes in these groups
  local gl="$*"
  ps -e -o pid=,pgid= | awk -v gl="$gl" '
    BEGIN { n = split(gl, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
    ($2 in want) { print $1 }' |
  while read -r p; do
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || true
  done | awk '{ s += $1 } END { print s + 0 }'
}

children_cpu_s() { # cumulative user+sys seconds of reaped children of this shell
  # `times` must run in this shell (not in a $(...) subshell, whose children
  # usage starts at zero), so write it to a file first.
  times >"$TMPD/times.txt"
  local line
  line="$(tail -n 1 "$TMPD/times.txt")"   # e.g. "0m1.234s 0m0.567s"
  awk -v l="$line" 'BEGIN {
    n = split(l, f, " "); s = 0
    for (i = 1; i <= n; i++) { split(f[i], mm, "m"); sub(/s$/, "", mm[2]); s += mm[1] * 60 + mm[2] }
    printf "%.3f", s }'
}

stat_busy() { # -> "busy_ticks irq_softirq_ticks" from /proc/stat (all CPUs)
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $7 + $8; exit }' /proc/stat
}

ALL_GROUPS=""   # every process group we started (backends + all proxies)
SELF_PGID="$(ps -o pgid= -p $$ | tr -d ' ')"

proc_snapshot() { # outfile: "pid ppid pgid utime+stime cutime+cstime" for every process
  # processes may vanish between the glob and the read: ignore cat's status
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
    pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
    print pid, f[2], f[3], f[12] + f[13], f[14] + f[15] }' >"$1"
}

foreign_cores() { # snap_before snap_after wall_s -> cores used by processes that are not
  # ours: not in our process groups, not this script's group (wrk, ps, awk), not kernel
  # threads. Counts own time plus reaped children's time (short-lived compiler jobs).
  awk -v excl="$ALL_GROUPS $SELF_PGID" -v hz="$CLK_TCK" -v wall="$3" '
    BEGIN { n = split(excl, a, " "); for (i = 1; i <= n; i++) ex[a[i]] = 1 }
    ($3 in ex) || $1 == 2 || $2 == 2 { next }
    FNR == NR { t0[$1] = $4; c0[$1] = $5; next }
    { seen[$1] = 1; if ($1 in t0) s += ($4 - t0[$1]) + ($5 - c0[$1]); else s += $4 + $5 }
    END {
      # a process that exited in the window shows up in its parent'"'"'s cutime with its
      # whole lifetime; remove the part it had already used before the window
      for (p in t0) if (!(p in seen)) s -= t0[p] + c0[p]
      f = s / hz / wall; if (f < 0) f = 0; printf "%.2f", f }' "$1" "$2"
}

wait_idle() { # wait until foreign CPU < IDLE_MAX cores (1 s samples), at most IDLE_WAIT s
  local start=$SECONDS f t0 t1
  while :; do
    proc_snapshot "$TMPD/idle0"; t0=$EPOCHREALTIME
    sleep 1
    t1=$EPOCHREALTIME; proc_snapshot "$TMPD/idle1"
    f=$(foreign_cores "$TMPD/idle0" "$TMPD/idle1" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
    awk -v f="$f" -v m="$IDLE_MAX" 'BEGIN { exit !(f < m) }' && return 0
    if ((SECONDS - start >= IDLE_WAIT)); then
      log "WARNING: other processes still use $f cores after ${IDLE_WAIT}s; measuring anyway"
      return 0
    fi
    log "waiting for idle CPU: other processes use $f cores ($( { ps -eo pcpu=,comm= --sort=-pcpu || true; } | awk 'NR <= 2 { printf "%s:%s%% ", $2, $1 }'))"
    sleep 4
  done
}

to_ms() { # "512.00us" | "1.23ms" | "1.02s" | "1.5m" -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/)      { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/)  { sub(/s$/, "", v);  printf "%.3f", v * 1000 }
    else if (v ~ /m$/)  { sub(/m$/, "", v);  printf "%.3f", v * 60000 }
    else printf "nan" }'
}

scheme_of() { # port -> http or https (with TLS=1 every proxy speaks https, backends http)
  if [ "$TLS" = 1 ] && [ "$1" != "$BACKEND1_PORT" ] && [ "$1" != "$BACKEND2_PORT" ]; then echo https; else echo http; fi
}

run_wrk() { # duration port outfile
  local cmd=(wrk -t"$THREADS" -c"$CONNS" -d"$1" --latency -s "$LUA" "$(scheme_of "$2")://127.0.0.1:$2/")
  if [ -n "$WRK_CPUS" ]; then cmd=(taskset -c "$WRK_CPUS" "${cmd[@]}"); fi
  ID_POOL="$ID_POOL" "${cmd[@]}" >"$3" 2>&1
}

sanity_check() { # name port -> prints split + stickiness
  local name="$1" port="$2" pass i out1 out2 args
  for pass in 1 2; do
    args=()
    for ((i = 1; i <= SANITY_REQS; i++)); do
      args+=(-s -k --max-time 5 -H "X-User-Id: user-$i" "$(scheme_of "$port")://127.0.0.1:$port/")
      ((i < SANITY_REQS)) && args+=(--next)
    done
    curl "${args[@]}" >"$TMPD/sanity_${name}_$pass.txt" 2>/dev/null || true
  done
  out1="$TMPD/sanity_${name}_1.txt"; out2="$TMPD/sanity_${name}_2.txt"
  local n1 n2 tot sticky
  n1=$(grep -c "^backend=$BACKEND1_PORT;" "$out1" || true)
  n2=$(grep -c "^backend=$BACKEND2_PORT;" "$out1" || true)
  tot=$(wc -l <"$out1")
  if cmp -s "$out1" "$out2"; then sticky=yes; else sticky=NO; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$tot" "$n1" "$n2" "$sticky"
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
  if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# ---------------------------------------------------------------- main
install_if_missing
[ -r "$LUA" ] || die "missing $LUA"
for f in backend_nginx.conf.tmpl proxy_nginx.conf.tmpl proxy_haproxy.cfg.tmpl; do
  [ -r "$HERE/$f" ] || die "missing $HERE/$f"
done

if [ -n "$EXTRA_PROXY_CMD" ]; then
  [ -n "$EXTRA_PROXY_PORT" ] || die "EXTRA_PROXY_CMD set but EXTRA_PROXY_PORT is empty"
  TARGETS="$TARGETS extra"
fi

declare -A PORT_OF=([direct]="$BACKEND1_PORT" [nginx]="$NGINX_PORT" [haproxy]="$HAPROXY_PORT" [extra]="$EXTRA_PROXY_PORT")
declare -A LABEL_OF=([direct]="direct" [nginx]="nginx" [haproxy]="haproxy" [extra]="$EXTRA_PROXY_NAME")
declare -A GROUP_OF=()

need_ports=("$BACKEND1_PORT" "$BACKEND2_PORT")
for t in $TARGETS; do
  [ -n "${PORT_OF[$t]+x}" ] || die "unknown target '$t'"
  [ "$t" = direct ] || need_ports+=("${PORT_OF[$t]}")
done
for p in "${need_ports[@]}"; do
  port_listening "$p" && die "port $p already in use: $(ss -Htlnp "sport = :$p" | head -n 1)"
done
dups="$(printf '%s\n' "${need_ports[@]}" | sort | uniq -d)"
[ -z "$dups" ] || die "port(s) configured twice: $dups"

TMPD="$(mktemp -d /tmp/peer_baseline.XXXXXX)"
chmod 755 "$TMPD"
trap cleanup EXIT INT TERM
OUT_DIR="${OUT_DIR:-$TMPD/results}"
mkdir -p "$OUT_DIR/raw"
export BENCH_TMP="$TMPD" BACKEND1_PORT BACKEND2_PORT EXTRA_PROXY_PORT PROXY_WORKERS

if [ "$TLS" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$TMPD/tls.key" -out "$TMPD/tls.crt" 2>/dev/null || die "openssl could not make a certificate"
  cat "$TMPD/tls.crt" "$TMPD/tls.key" >"$TMPD/tls.pem"
  export TLS_CERT="$TMPD/tls.crt" TLS_KEY="$TMPD/tls.key"
fi

render() { # template out [port body]
  sed -e "s#@@DIR@@#$TMPD#g" -e "s#@@WORKERS@@#$PROXY_WORKERS#g" \
      -e "s#@@BACKEND1_PORT@@#$BACKEND1_PORT#g" -e "s#@@BACKEND2_PORT@@#$BACKEND2_PORT#g" \
      -e "s#@@NGINX_PORT@@#$NGINX_PORT#g" -e "s#@@HAPROXY_PORT@@#$HAPROXY_PORT#g" \
      -e "s#@@PORT@@#${3:-}#g" -e "s#@@BODY@@#${4:-}#g" "$HERE/$1" >"$2"
}

# backends: body "backend=<port>;xxxx...\n" = 100 bytes
for bp in "$BACKEND1_PORT" "$BACKEND2_PORT"; do
  prefix="backend=$bp;"
  pad="$(head -c $((99 - ${#prefix})) /dev/zero | tr '\0' x)"
  render backend_nginx.conf.tmpl "$TMPD/backend_$bp.conf" "$bp" "$prefix$pad"
  nginx -t -q -e "$TMPD/backend_$bp.nginx-t.log" -c "$TMPD/backend_$bp.conf" -p "$TMPD/" || die "backend $bp config invalid"
  start_group "backend_$bp" "$TMPD/backend_$bp.log" nginx -e "$TMPD/backend_$bp.error.log" -c "$TMPD/backend_$bp.conf" -p "$TMPD/"
  BACKEND_GROUPS="$BACKEND_GROUPS $LAST_PID"
  wait_port "$bp" "$LAST_PID" "backend_$bp"
done
GROUP_OF[direct]=""

for t in $TARGETS; do
  case "$t" in
    nginx)
      render proxy_nginx.conf.tmpl "$TMPD/proxy_nginx.conf"
      if [ "$TLS" = 1 ]; then
        sed -i -e "s#reuseport backlog=4096;#ssl reuseport backlog=4096;\n        ssl_certificate $TMPD/tls.crt;\n        ssl_certificate_key $TMPD/tls.key;#" "$TMPD/proxy_nginx.conf"
      fi
      nginx -t -q -e "$TMPD/proxy_nginx.nginx-t.log" -c "$TMPD/proxy_nginx.conf" -p "$TMPD/" || die "nginx proxy config invalid"
      start_group proxy_nginx "$TMPD/proxy_nginx.log" nginx -e "$TMPD/proxy_nginx.error.log" -c "$TMPD/proxy_nginx.conf" -p "$TMPD/"
      GROUP_OF[nginx]="$LAST_PID"; wait_port "$NGINX_PORT" "$LAST_PID" proxy_nginx ;;
    haproxy)
      render proxy_haproxy.cfg.tmpl "$TMPD/proxy_haproxy.cfg"
      if [ "$TLS" = 1 ]; then
        sed -i -e "s#^\(    bind 127.0.0.1:$HAPROXY_PORT\)\$#\1 ssl crt $TMPD/tls.pem alpn http/1.1#" "$TMPD/proxy_haproxy.cfg"
      fi
      haproxy -c -q -f "$TMPD/proxy_haproxy.cfg" || die "haproxy config invalid"
      start_group proxy_haproxy "$TMPD/proxy_haproxy.log" haproxy -db -f "$TMPD/proxy_haproxy.cfg"
      GROUP_OF[haproxy]="$LAST_PID"; wait_port "$HAPROXY_PORT" "$LAST_PID" proxy_haproxy ;;
    extra)
      start_group proxy_extra "$TMPD/proxy_extra.log" bash -c "$EXTRA_PROXY_CMD"
      GROUP_OF[extra]="$LAST_PID"; wait_port "$EXTRA_PROXY_PORT" "$LAST_PID" proxy_extra "$EXTRA_PROXY_WAIT" ;;
  esac
done
# keep copies of the rendered configs with the results
cp "$TMPD"/*.conf "$TMPD"/*.cfg "$OUT_DIR/" 2>/dev/null || true

# ---- environment header
{
  echo "# peer_baseline results"
  echo
  echo "- date: $(date -u +%FT%TZ)  host: $(hostname)  kernel: $(uname -r)"
  echo "- cpu: $(nproc) x $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)  mem: $(awk '/MemTotal/ { printf "%.1f GiB", $2/1048576 }' /proc/meminfo)"
  echo "- loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- nginx: $(nginx -v 2>&1 | sed 's#.*/##')  haproxy: $(haproxy -v | awk 'NR==1 { print $3 }')  wrk: $( { wrk -v 2>&1 || true; } | awk 'NR==1 { print $2 }')"
  echo "- wrk: -t$THREADS -c$CONNS -d$DURATION --latency, X-User-Id from pool of $ID_POOL; warmup $WARMUP per target; $RUNS interleaved rounds"
  echo "- proxies: $PROXY_WORKERS workers/threads; backends: 2 x nginx (1 worker); pinning: wrk=${WRK_CPUS:-none} servers=${SERVER_CPUS:-none} proxies=${PROXY_CPUS:-as servers}"
  echo "- targets: $(for t in $TARGETS; do printf '%s(:%s) ' "${LABEL_OF[$t]}" "${PORT_OF[$t]}"; done)"
  [ -n "$EXTRA_PROXY_CMD" ] && echo "- extra proxy cmd: \`$EXTRA_PROXY_CMD\`"
  echo
} >"$OUT_DIR/results.md"

# ---- routing sanity check
{
  echo "## Routing sanity check ($SANITY_REQS distinct ids, sent twice)"
  echo
  echo "| target | answered | -> :$BACKEND1_PORT | -> :$BACKEND2_PORT | same backend on 2nd pass |"
  echo "|---|---:|---:|---:|---|"
  for t in $TARGETS; do
    [ "$t" = direct ] && continue
    sanity_check "${LABEL_OF[$t]}" "${PORT_OF[$t]}" | awk -F'\t' '{ printf "| %s | %s | %s (%.0f%%) | %s (%.0f%%) | %s |\n", $1, $2, $3, ($2 ? 100*$3/$2 : 0), $4, ($2 ? 100*$4/$2 : 0), $5 }'
  done
  echo
} >>"$OUT_DIR/results.md"

# ---- warmup (not recorded)
for t in $TARGETS; do
  log "warmup ${LABEL_OF[$t]} ($WARMUP)"
  run_wrk "$WARMUP" "${PORT_OF[$t]}" "$OUT_DIR/raw/warmup_${LABEL_OF[$t]}.txt" || die "wrk warmup failed for $t: $(tail -n 3 "$OUT_DIR/raw/warmup_${LABEL_OF[$t]}.txt")"
  sleep "$SETTLE"
done

# ---- interleaved measurement
CSV="$OUT_DIR/results.csv"
echo "target,round,rps,p50_ms,p75_ms,p90_ms,p99_ms,proxy_cores,backend_cores,wrk_cores,socket_errors,non2xx,foreign_cores,softirq_cores" >"$CSV"
for ((r = 1; r <= RUNS; r++)); do
  for t in $TARGETS; do
    label="${LABEL_OF[$t]}"; raw="$OUT_DIR/raw/${label}_r$r.txt"
    for g in ${GROUP_OF[$t]} $BACKEND_GROUPS; do group_alive "$g" || die "process group $g (${GROUP_NAME[$g]}) died"; done
    attempt=0
    while :; do
      wait_idle
      log "round $r/$RUNS: $label$( ((attempt)) && echo " (retry $attempt)")"
      pt0=$( [ -n "${GROUP_OF[$t]}" ] && group_ticks ${GROUP_OF[$t]} || echo 0 )
      bt0=$(group_ticks $BACKEND_GROUPS)
      children_cpu_s >"$TMPD/c0"; c0=$(<"$TMPD/c0")
      proc_snapshot "$TMPD/run0"; read -r sb0 si0 < <(stat_busy); w0=$EPOCHREALTIME
      run_wrk "$DURATION" "${PORT_OF[$t]}" "$raw" || die "wrk failed for $label: $(tail -n 3 "$raw")"
      w1=$EPOCHREALTIME; read -r sb1 si1 < <(stat_busy); proc_snapshot "$TMPD/run1"
      children_cpu_s >"$TMPD/c1"; c1=$(<"$TMPD/c1")
      pt1=$( [ -n "${GROUP_OF[$t]}" ] && group_ticks ${GROUP_OF[$t]} || echo 0 )
      bt1=$(group_ticks $BACKEND_GROUPS)
      wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')
      fc=$(foreign_cores "$TMPD/run0" "$TMPD/run1" "$wall")
      sic=$(awk -v a="$si0" -v b="$si1" -v hz="$CLK_TCK" -v t="$wall" 'BEGIN { printf "%.2f", (b - a) / hz / t }')
      rps=$(awk '/^Requests\/sec:/ { print $2 }' "$raw")
      p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$raw")")
      p75=$(to_ms "$(awk '$1 == "75%" { print $2 }' "$raw")")
      p90=$(to_ms "$(awk '$1 == "90%" { print $2 }' "$raw")")
      p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$raw")")
      serr=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$raw"); serr=${serr:-0}
      n2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$raw"); n2xx=${n2xx:-0}
      read -r pc bc wc < <(awk -v pt="$((pt1 - pt0))" -v bt="$((bt1 - bt0))" -v hz="$CLK_TCK" \
        -v c0="$c0" -v c1="$c1" -v w0="$w0" -v w1="$w1" -v hasp="${GROUP_OF[$t]:+1}" 'BEGIN {
          wall = w1 - w0; if (wall <= 0) wall = 1
          printf "%s %.2f %.2f\n", (hasp ? sprintf("%.2f", pt / hz / wall) : "-"), bt / hz / wall, (c1 - c0) / wall }')
      if awk -v f="$fc" -v m="$IDLE_MAX" 'BEGIN { exit !(f >= m) }' && ((attempt < RETRIES)); then
        attempt=$((attempt + 1))
        mv "$raw" "${raw%.txt}.contaminated$attempt.txt"
        log "other processes used $fc cores during this run; discarding it and retrying ($attempt/$RETRIES)"
        sleep "$SETTLE"; continue
      fi
      break
    done
    echo "$label,$r,$rps,$p50,$p75,$p90,$p99,$pc,$bc,$wc,$serr,$n2xx,$fc,$sic" >>"$CSV"
    sleep "$SETTLE"
  done
done

# cohort's bench.sh reads the proxy's own histograms here, before everything stops
if [ -n "${BEFORE_STOP_CMD:-}" ]; then
  bash -c "$BEFORE_STOP_CMD" >"$OUT_DIR/before_stop.txt" 2>&1 || log "BEFORE_STOP_CMD failed (see $OUT_DIR/before_stop.txt)"
fi

stop_all

# ---- tables
{
  echo "## Per-run results (interleaved order; CPU in cores = CPU-seconds / wall-second)"
  echo
  echo "| target | round | req/s | p50 ms | p99 ms | proxy cores | backend cores | wrk cores | irq+softirq cores | foreign cores | sock err | non-2xx |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk -F, 'NR > 1 { printf "| %s | %s | %.0f | %.3f | %.3f | %s | %s | %s | %s | %s%s | %s | %s |\n", $1, $2, $3, $4, $7, $8, $9, $10, $14, $13, ($13 + 0 >= m ? " (!)" : ""), $11, $12 }' m="$IDLE_MAX" "$CSV"
  echo
  echo "## Median of $RUNS runs"
  echo
  echo "| target | req/s | vs direct | p50 ms | p99 ms | proxy cores | req/s per proxy core | backend cores | wrk cores |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  direct_rps=""
  for t in $TARGETS; do
    label="${LABEL_OF[$t]}"
    col() { awk -F, -v l="$label" -v c="$1" 'NR > 1 && $1 == l { print $c }' "$CSV" | median; }
    m_rps=$(col 3); m_p50=$(col 4); m_p99=$(col 7); m_be=$(col 9); m_wrk=$(col 10)
    if [ "$t" = direct ]; then m_pc="-"; per_core="-"; direct_rps="$m_rps"
    else
      m_pc=$(col 8)
      per_core=$(awk -F, -v l="$label" 'NR > 1 && $1 == l && $8 > 0 { print $3 / $8 }' "$CSV" | median)
      per_core=$(printf '%.0f' "$per_core")
    fi
    ratio=$( [ -n "$direct_rps" ] && awk -v a="$m_rps" -v b="$direct_rps" 'BEGIN { printf "%.2f", a / b }' || echo "-")
    printf '| %s | %.0f | %s | %.3f | %.3f | %s | %s | %s | %s |\n' "$label" "$m_rps" "$ratio" "$m_p50" "$m_p99" "$m_pc" "$per_core" "$m_be" "$m_wrk"
  done
  echo
  nbad=$(awk -F, -v m="$IDLE_MAX" 'NR > 1 && $13 + 0 >= m' "$CSV" | wc -l)
  [ "$nbad" = 0 ] || echo "WARNING: $nbad run(s) marked (!) had >= $IDLE_MAX cores used by unrelated processes; rerun on a quiet machine."
  echo "Notes: wrk is closed-loop (coordinated omission: p99 is optimistic under saturation)."
  echo "'irq+softirq cores' comes from /proc/stat; on kernels without CONFIG_IRQ_TIME_ACCOUNTING that"
  echo "time is already included in the per-process columns. 'foreign cores' = CPU of unrelated processes."
  echo "On a machine with few cores, wrk, proxy and backends share the same CPUs; compare targets"
  echo "only within one run, and look at 'req/s per proxy core' as well as raw req/s."
} >>"$OUT_DIR/results.md"

cat "$OUT_DIR/results.md"
log "results: $OUT_DIR/results.md  $CSV  raw: $OUT_DIR/raw/"
