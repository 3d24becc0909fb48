#!/usr/bin/env bash
# memory-bench.sh -- resident memory per idle keep-alive client connection: cohort, NGINX
# and HAProxy in the same run, plaintext and TLS (ECDSA P-256, ALPN http/1.1), all three
# doing the same sticky 90/10 job in front of two nginx backends, with 2 workers/threads.
#
# For each mode, fresh instances of the three proxies are started (so memory freed by one
# mode is not reused by the next). Then, one proxy after the other: after a warm-up burst
# of 100 connections (opened, used once, closed), RSS (VmRSS summed over
# the proxy's processes) is read, N connections are opened (200 at a time), each sends one
# GET and reads the whole answer, then stays open and idle (scripts/bench/hold.py); RSS is
# read again, and growth / N is the figure per connection. The connections are then closed
# and, with --bursts 2 (the default), a second burst of N is opened the same way: "closed"
# is RSS after the first burst closed, "2nd" the RSS holding the second burst (whether the
# memory of the first is reused).
#
# "marginal" is a second figure per connection that does not depend on how much freed
# memory the allocator kept resident before the burst (which the first connections then
# take without growing RSS): the burst of N is opened in two halves, both held at the
# end; RSS is also read between them, and the growth from that reading to the end,
# divided by the second half's connections, is the figure.
#
# Usage: scripts/memory-bench.sh [--bin PATH] [--conns 8000] [--tls-conns 2000]
#                                [--bursts 1|2] [--only cohort] [--modes "plain tls"]
#   The environment passes to cohort (e.g. MIMALLOC_PURGE_DELAY=0, see BENCHMARKS.md).
#   HAProxy derives its connection limit from `ulimit -n`: keep N below half of it.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
BIN="" CONNS=8000 TLS_CONNS=2000 BURSTS=2 ONLY="" MODES="plain tls"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;; --conns) CONNS="$2"; shift 2 ;;
    --tls-conns) TLS_CONNS="$2"; shift 2 ;; --bursts) BURSTS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;; --modes) MODES="$2"; shift 2 ;;
    *) echo "unknown $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then (cd "$ROOT" && cargo build --release --locked); BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cohort"; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
T="$(mktemp -d /tmp/cohort-mem.XXXXXX)"; PIDS=()
source "$HERE/bench/lib.sh"
trap 'stop_groups; rm -rf "$T"' EXIT
B1=$(free_port) B2=$(free_port)
start_nginx_backend "$T" "$B1"; start_nginx_backend "$T" "$B2"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null
cat "$T/cert.pem" "$T/key.pem" >"$T/haproxy.pem"

children() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$c"; children "$c"; done; }
rss_kib() { # pid -> VmRSS of it and its descendants, KiB
  local t=0 p v
  for p in "$1" $(children "$1"); do
    v=$(awk '/^VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || true); t=$((t + ${v:-0}))
  done
  echo "$t"
}
wait_port() { for _ in $(seq 200); do ss -ltn | grep -q "127.0.0.1:$1 " && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }

start_proxies() { # PLAIN_PORT TLS_PORT for each proxy; sets NG HA CO pids and ports
  local tmps="client_body_temp_path $T/cb; proxy_temp_path $T/pt; fastcgi_temp_path $T/f; uwsgi_temp_path $T/u; scgi_temp_path $T/s;"
  NGP=$(free_port) NGT=$(free_port) HAP=$(free_port) HAT=$(free_port) COP=$(free_port) COT=$(free_port) COA=$(free_port)
  cat >"$T/nginx.conf" <<C
worker_processes 2; daemon off; pid $T/nginx.pid; error_log $T/nginx.err warn; worker_rlimit_nofile 20000;
events { worker_connections 12000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s; $tmps
  split_clients "\${http_x_user_id}" \$up { 90% stable; * canary; }
  upstream stable { server 127.0.0.1:$B1; keepalive 64; }
  upstream canary { server 127.0.0.1:$B2; keepalive 64; }
  server { listen 127.0.0.1:$NGP reuseport; location / { proxy_pass http://\$up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$NGT ssl reuseport; ssl_certificate $T/cert.pem; ssl_certificate_key $T/key.pem;
    location / { proxy_pass http://\$up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
  cat >"$T/haproxy.cfg" <<C
global
    nbthread 2
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
frontend fe
    bind 127.0.0.1:$HAP
    bind 127.0.0.1:$HAT ssl crt $T/haproxy.pem alpn http/1.1
    default_backend be
backend be
    balance hdr(X-User-Id)
    hash-type consistent
    server stable 127.0.0.1:$B1 weight 90
    server canary 127.0.0.1:$B2 weight 10
C
  { cohort_bench_config "$COP" "$COA" "$T" "$B1" "$B2"
    printf '\n' ; } >"$T/cohort.toml"
  # keep-alive longer than the run, and a TLS listener
  sed -i "s/^threads = 2$/threads = 2\nkeepalive_timeout_secs = 300/" "$T/cohort.toml"
  sed -i "/^\[\[service\]\]/i [[server.tls]]\nlisten = \"127.0.0.1:$COT\"\ncert = \"$T/cert.pem\"\nkey = \"$T/key.pem\"\n" "$T/cohort.toml"
  NG="" HA="" CO=""
  if [ -z "$ONLY" ] || [ "$ONLY" = nginx ]; then
    setsid nginx -e "$T/nginx.err" -c "$T/nginx.conf" -p "$T/" >/dev/null 2>&1 </dev/null & NG=$!; PIDS+=("$NG")
    wait_port "$NGP"; wait_port "$NGT"
  fi
  if [ -z "$ONLY" ] || [ "$ONLY" = haproxy ]; then
    setsid haproxy -db -f "$T/haproxy.cfg" >"$T/haproxy.log" 2>&1 </dev/null & HA=$!; PIDS+=("$HA")
    wait_port "$HAP"; wait_port "$HAT"
  fi
  if [ -z "$ONLY" ] || [ "$ONLY" = cohort ]; then
    RUST_LOG=warn setsid "$BIN" run -c "$T/cohort.toml" 2>"$T/cohort.log" </dev/null & CO=$!; PIDS+=("$CO")
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$COA/readyz" >/dev/null && break; sleep 0.1; done
  fi
  sleep 1
}

burst() { # pid port n mode -> echoes "kib_held ok" and leaves the connections closed
  local pid="$1" port="$2" n="$3" mode="$4" hp held ok
  rm -f "$T/ctl"; mkfifo "$T/ctl"
  python3 "$HERE/bench/hold.py" "$n" "$port" "$([ "$mode" = tls ] && echo tls)" <"$T/ctl" >"$T/hold.out" 2>&1 &
  hp=$!
  exec 9>"$T/ctl"
  for _ in $(seq 1800); do grep -q READY "$T/hold.out" && break; sleep 0.1; done
  sleep 2; held=$(rss_kib "$pid"); ok=$(sed -n 's/READY ok=\([0-9]*\).*/\1/p' "$T/hold.out")
  echo >&9; exec 9>&-; wait "$hp" 2>/dev/null || true
  echo "$held ${ok:-0}"
}

HOLDERS=()
open_hold() { # fd port n mode -> holds n connections until a line is written to the fd
  local fd="$1" port="$2" n="$3" mode="$4"
  rm -f "$T/ctl$fd"; mkfifo "$T/ctl$fd"
  python3 "$HERE/bench/hold.py" "$n" "$port" "$([ "$mode" = tls ] && echo tls)" <"$T/ctl$fd" >"$T/hold$fd.out" 2>&1 &
  HOLDERS+=($!)
  eval "exec $fd>\"$T/ctl$fd\""
  for _ in $(seq 1800); do grep -q READY "$T/hold$fd.out" && break; sleep 0.1; done
}

declare -A PER MARG
measure() { # name pid port n mode
  local name="$1" pid="$2" port="$3" n="$4" mode="$5" before half held ok closed="-" second="-"
  [ -n "$pid" ] || return 0
  burst "$pid" "$port" 100 "$mode" >/dev/null   # warm-up: worker caches, upstream pools
  sleep 1; before=$(rss_kib "$pid")
  # The burst of N, in two halves held together (see "marginal" above).
  open_hold 8 "$port" $((n / 2)) "$mode"; sleep 2; half=$(rss_kib "$pid")
  open_hold 7 "$port" $((n - n / 2)) "$mode"; sleep 2; held=$(rss_kib "$pid")
  ok=$(( $(sed -n 's/READY ok=\([0-9]*\).*/\1/p' "$T/hold8.out") + $(sed -n 's/READY ok=\([0-9]*\).*/\1/p' "$T/hold7.out") ))
  echo >&8; echo >&7; exec 8>&- 7>&-; wait "${HOLDERS[@]}" 2>/dev/null || true; HOLDERS=()
  if [ "$BURSTS" -ge 2 ]; then
    sleep 2; closed=$(rss_kib "$pid")
    read -r second _ < <(burst "$pid" "$port" "$n" "$mode")
  fi
  PER[$name.$mode]=$(( (held - before) * 1024 / n ))
  MARG[$name.$mode]=$(( (held - half) * 1024 / (n - n / 2) ))
  printf "%-8s %-5s n=%-6s answered=%-6s idle=%7d KiB  held=%7d KiB  per_conn=%6d B  closed=%7s KiB  2nd=%7s KiB  marginal=%6d B\n" \
    "$name" "$mode" "$n" "$ok" "$before" "$held" "${PER[$name.$mode]}" "$closed" "$second" "${MARG[$name.$mode]}"
}

for mode in $MODES; do
  start_proxies
  n=$CONNS; [ "$mode" = tls ] && n=$TLS_CONNS
  pick() { [ "$mode" = tls ] && echo "$2" || echo "$1"; }
  measure nginx "$NG" "$(pick "$NGP" "$NGT")" "$n" "$mode"
  measure haproxy "$HA" "$(pick "$HAP" "$HAT")" "$n" "$mode"
  measure cohort "$CO" "$(pick "$COP" "$COT")" "$n" "$mode"
  for p in $NG $HA $CO; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for p in $NG $HA $CO; do wait "$p" 2>/dev/null || true; done
done
for mode in $MODES; do
  for kind in PER MARG; do
    declare -n fig=$kind
    c=${fig[cohort.$mode]:-} g=${fig[nginx.$mode]:-} h=${fig[haproxy.$mode]:-}
    if [ -n "$c" ] && [ -n "$g" ] && [ "$g" -gt 0 ]; then
      awk -v c="$c" -v g="$g" -v h="${h:-0}" -v m="$mode" -v k="$([ $kind = PER ] && echo "per idle connection" || echo "marginal")" 'BEGIN {
        printf "%s: cohort %d B %s = %.2fx NGINX (%d B)", m, c, k, c / g, g
        if (h > 0) printf ", %.2fx HAProxy (%d B)", c / h, h
        printf "\n" }'
    fi
    unset -n fig
  done
done
