#!/usr/bin/env bash
# HTTP/2 over TLS downstream: cohort vs NGINX vs HAProxy, same job (two nginx backends on
# 9001/9002, 90/10 split sticky on x-user-id with a fixed id per run), h2load, interleaved.
# Usage: h2_compare.sh COHORT_BIN [ROUNDS]   Prints medians and ratios.
# (Copied unchanged from the workplace's shared bench harness.)
set -u
bin=$1; rounds=${2:-3}
t=$(mktemp -d); pids=()
# every server runs under setsid, so its pid is its process group: kill the whole group
# (killing an nginx master alone leaves its workers running)
cleanup() { for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout $t/k.pem -out $t/c.pem 2>/dev/null; cat $t/c.pem $t/k.pem > $t/both.pem
for p in 9001 9002; do
cat > $t/b$p.conf <<C
worker_processes 1; daemon off; pid $t/b$p.pid; error_log $t/b$p.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
 client_body_temp_path $t/cb$p; proxy_temp_path $t/pt$p; fastcgi_temp_path $t/f$p; uwsgi_temp_path $t/u$p; scgi_temp_path $t/s$p;
 server { listen 127.0.0.1:$p; location / { return 200 "backend=$p;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n"; } } }
C
setsid nginx -c $t/b$p.conf -p $t/ >/dev/null 2>&1 & pids+=($!)
done
cat > $t/px.conf <<C
worker_processes 2; daemon off; pid $t/px.pid; error_log $t/px.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
 client_body_temp_path $t/cbx; proxy_temp_path $t/ptx; fastcgi_temp_path $t/fx; uwsgi_temp_path $t/ux; scgi_temp_path $t/sx;
 split_clients "\${http_x_user_id}" \$up { 90% stable; * canary; }
 upstream stable { server 127.0.0.1:9001; keepalive 64; }
 upstream canary { server 127.0.0.1:9002; keepalive 64; }
 server { listen 127.0.0.1:8441 ssl http2 reuseport; ssl_certificate $t/c.pem; ssl_certificate_key $t/k.pem;
   location / { proxy_pass http://\$up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
setsid nginx -c $t/px.conf -p $t/ >/dev/null 2>&1 & pids+=($!)
cat > $t/hp.cfg <<C
global
    nbthread 2
    maxconn 8000
defaults
    mode http
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:8442 ssl crt $t/both.pem alpn h2,http/1.1
    default_backend be
backend be
    balance hdr(x-user-id)
    hash-type consistent
    server stable 127.0.0.1:9001 weight 90
    server canary 127.0.0.1:9002 weight 10
C
setsid haproxy -db -f $t/hp.cfg >/dev/null 2>&1 & pids+=($!)
cat > $t/co.toml <<C
[server]
listen = ["127.0.0.1:8449"]
admin = "127.0.0.1:9449"
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
backends = ["127.0.0.1:9001"]
[[service.variant]]
name = "canary"
weight = 10
backends = ["127.0.0.1:9002"]
C
setsid "$bin" run -c $t/co.toml >$t/co.log 2>&1 & pids+=($!)
sleep 3
declare -A R
for r in $(seq 1 "$rounds"); do
  for tgt in nginx:8441 haproxy:8442 cohort:8443; do
    name=${tgt%%:*}; port=${tgt##*:}
    out=$(h2load -c 32 -m 10 -D 8 -t 1 -H "x-user-id: user-$r" "https://127.0.0.1:$port/" 2>&1)
    rps=$(echo "$out" | awk '/finished in/ {gsub(",","",$0); for(i=1;i<=NF;i++) if ($i ~ /req\/s/) print $(i-1)}')
    ok=$(echo "$out" | awk '/status codes:/ {print $3}')
    R[$name]="${R[$name]:-} $rps"
    echo "round $r $name ${rps} req/s (2xx $ok)"
  done
done
med() { echo $1 | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n=$(med "${R[nginx]}"); h=$(med "${R[haproxy]}"); c=$(med "${R[cohort]}")
python3 -c "print(f'h2 TLS: cohort {float($c):.0f} req/s; x{float($c)/float($n):.2f} nginx ({float($n):.0f}), x{float($c)/float($h):.2f} haproxy ({float($h):.0f})')"
