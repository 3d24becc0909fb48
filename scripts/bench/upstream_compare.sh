#!/usr/bin/env bash
# Upstream protocols (issue 16): cohort against NGINX doing the same job, interleaved
# rounds on 127.0.0.1, medians and ratios.
#
#   upstream_compare.sh COHORT_BIN grpc  [ROUNDS] [SECONDS]
#     gRPC unary over h2c to the backends. Two nghttpd backends (nghttp2-server:
#     `--no-tls --echo-upload --trailer 'grpc-status: 0'`, one worker each) echo the
#     request message and end with the grpc-status trailer. NGINX: `grpc_pass
#     grpc://$up` with `split_clients` 90/10 on x-user-id and `keepalive 64` per upstream.
#     cohort: the same split, `protocol = "h2c"`. Clients: h2load over TLS (ALPN h2) with
#     a gRPC frame body, `content-type: application/grpc`, `te: trailers`.
#   upstream_compare.sh COHORT_BIN https [ROUNDS] [SECONDS]
#     HTTP/1.1 to HTTPS backends. Two nginx backends with TLS (self-signed ECDSA P-256);
#     NGINX: `proxy_pass https://$up`, `keepalive 64`, session reuse, no verification;
#     cohort: `tls = { verify = false }` (pooled like plaintext). Clients: wrk, plaintext
#     HTTP/1.1 keep-alive, random x-user-id (user_id.lua).
#
# ONLY=cohort (or nginx) runs one target alone. Each round prints the target's open
# upstream connections (halfway through the round and at its end) and the CPU seconds
# the target and the backends used in it: the gRPC job's single-threaded nghttpd
# backend does file work per call (see BENCHMARKS.md section 9). Defaults: 3 rounds of
# 10 s per target. Every server runs in its own process group, stopped by that id on
# exit. The user id per h2load run is fixed (h2load cannot vary a header), so gRPC
# rounds rotate it: round r uses user-r.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin=$1; mode=$2; rounds=${3:-3}; secs=${4:-10}
t=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$t/k.pem" -out "$t/c.pem" 2>/dev/null
temps() { echo "client_body_temp_path $t/cb$1; proxy_temp_path $t/pt$1; fastcgi_temp_path $t/f$1; uwsgi_temp_path $t/u$1; scgi_temp_path $t/s$1;"; }

if [ "$mode" = grpc ]; then
  # nghttpd --echo-upload keeps each call's message in a file it creates and unlinks
  # under /tmp (a fixed path): on a busy disk that cost 120-550 us of CPU per call, which
  # made the one-thread backend the bottleneck. With BACKEND_TMP=tmpfs (the default, when
  # `unshare -m` is allowed) each backend gets a private /tmp in memory.
  grpc_backend() {
    if [ "${BACKEND_TMP:-tmpfs}" = tmpfs ] && unshare -m true 2>/dev/null; then
      unshare -m sh -c 'mount -t tmpfs -o size=64m cohort-bench /tmp && exec "$@"' sh "$@"
    else
      "$@"
    fi
  }
  for p in 9101 9102; do
    setsid bash -c "$(declare -f grpc_backend); grpc_backend nghttpd --no-tls --echo-upload \
      --trailer 'grpc-status: 0' -n 1 -a 127.0.0.1 -d / $p" >/dev/null 2>&1 </dev/null & PIDS+=($!)
  done
  cat > "$t/px.conf" <<C
worker_processes 2; daemon off; pid $t/px.pid; error_log $t/px.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; $(temps x)
 split_clients "\${http_x_user_id}" \$up { 90% stable; * canary; }
 upstream stable { server 127.0.0.1:9101; keepalive 64; keepalive_requests 1000000; }
 upstream canary { server 127.0.0.1:9102; keepalive 64; keepalive_requests 1000000; }
 server { listen 127.0.0.1:8441 ssl http2; ssl_certificate $t/c.pem; ssl_certificate_key $t/k.pem;
   location / { grpc_pass grpc://\$up; } } }
C
  variant_extra='protocol = "h2c"'; b1=9101; b2=9102
else
  for p in 9101 9102; do
    cat > "$t/b$p.conf" <<C
worker_processes 1; daemon off; pid $t/b$p.pid; error_log $t/b$p.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 120s; $(temps $p)
 server { listen 127.0.0.1:$p ssl; ssl_certificate $t/c.pem; ssl_certificate_key $t/k.pem;
   location / { return 200 "backend=$p;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n"; } } }
C
    setsid nginx -c "$t/b$p.conf" -p "$t/" >/dev/null 2>&1 </dev/null & PIDS+=($!)
  done
  cat > "$t/px.conf" <<C
worker_processes 2; daemon off; pid $t/px.pid; error_log $t/px.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; $(temps x)
 split_clients "\${http_x_user_id}" \$up { 90% stable; * canary; }
 upstream stable { server 127.0.0.1:9101; keepalive 64; keepalive_requests 1000000; }
 upstream canary { server 127.0.0.1:9102; keepalive 64; keepalive_requests 1000000; }
 server { listen 127.0.0.1:8440;
   location / { proxy_pass https://\$up; proxy_http_version 1.1; proxy_set_header Connection "";
     proxy_ssl_session_reuse on; proxy_ssl_verify off; } } }
C
  variant_extra='tls = { verify = false }'; b1=9101; b2=9102
fi
setsid nginx -c "$t/px.conf" -p "$t/" >/dev/null 2>&1 </dev/null & PIDS+=($!)
cat > "$t/co.toml" <<C
[server]
listen = ["127.0.0.1:8448"]
admin = "127.0.0.1:9448"
threads = 2
drain_delay_secs = 0
shutdown_timeout_secs = 1
pid_file = "$t/cohort.pid"
upgrade_sock = "$t/cohort.sock"
[[server.tls]]
listen = "127.0.0.1:8443"
cert = "$t/c.pem"
key = "$t/k.pem"
[[service]]
name = "bench"
key = ["header:x-user-id"]
[[service.variant]]
name = "stable"
weight = 90
backends = ["127.0.0.1:$b1"]
$variant_extra
[[service.variant]]
name = "canary"
weight = 10
backends = ["127.0.0.1:$b2"]
$variant_extra
C
setsid "$bin" run -c "$t/co.toml" >"$t/co.log" 2>&1 </dev/null & PIDS+=($!); co=$!
sleep 3
# a gRPC request message: flag 0, length 5, protobuf field 1 = "hi"
printf '\x00\x00\x00\x00\x04\x0a\x02hi' > "$t/req.bin"

# CPU time (user + system, clock ticks) a process group has used so far.
cpu() { local s=0 p; for p in $(pgrep -g "$1"); do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $s; }
hz=$(getconf CLK_TCK)
conns() { ss -Htnp state established "( dport = :$b1 or dport = :$b2 )" 2>/dev/null | grep -c "$1" || true; }
declare -A R
for r in $(seq 1 "$rounds"); do
  if [ "$mode" = grpc ]; then targets="nginx:8441 cohort:8443"; else targets="nginx:8440 cohort:8448"; fi
  for tgt in $targets; do
    name=${tgt%%:*}; port=${tgt##*:}
    case " ${ONLY:-nginx cohort} " in *" $name "*) ;; *) continue ;; esac
    [ "$name" = cohort ] && pg=$co || pg=${PIDS[2]}
    p0=$(cpu "$pg"); b0=$(( $(cpu "${PIDS[0]}") + $(cpu "${PIDS[1]}") ))
    if [ "$mode" = grpc ]; then
      h2load -c 32 -m 10 -D "$secs" -t 1 -d "$t/req.bin" -H "x-user-id: user-$r" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "https://127.0.0.1:$port/echo.Echo/Say" >"$t/load.out" 2>&1 &
      sleep $((secs / 2)); mid=$(conns "$name"); wait $!
      out=$(cat "$t/load.out")
      rps=$(echo "$out" | awk '/finished in/ {gsub(",","",$0); for(i=1;i<=NF;i++) if ($i ~ /req\/s/) print $(i-1)}')
      ok=$(echo "$out" | awk '/status codes:/ {print $3}')
    else
      ID_POOL=100000 wrk -t1 -c64 -d"${secs}s" -s "$here/user_id.lua" "http://127.0.0.1:$port/" \
        >"$t/load.out" 2>&1 &
      sleep $((secs / 2)); mid=$(conns "$name"); wait $!
      out=$(cat "$t/load.out")
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      ok=$(echo "$out" | awk '/Non-2xx/ {print "non-2xx " $NF}')
    fi
    R[$name]="${R[$name]:-} $rps"
    up=$(conns "$name")
    p1=$(( $(cpu "$pg") - p0 )); b1s=$(( $(cpu "${PIDS[0]}") + $(cpu "${PIDS[1]}") - b0 ))
    echo "round $r $name ${rps} req/s (${ok:-all 2xx}); upstream connections open: $mid halfway, $up at the end; CPU s: $name $(awk "BEGIN {print $p1 / $hz}"), backends $(awk "BEGIN {print $b1s / $hz}"); load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
echo "cohort RSS at the end: $(awk '/VmRSS/ {print $2, $3}' /proc/$co/status 2>/dev/null)"
med() { echo $1 | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
[ -n "${ONLY:-}" ] && exit 0
n=$(med "${R[nginx]}"); c=$(med "${R[cohort]}")
python3 -c "print(f'$mode: cohort {float($c):.0f} req/s, nginx {float($n):.0f} req/s: cohort/nginx x{float($c)/float($n):.2f}')"
