# lib.sh -- shared helpers for cohort's measurement scripts (sourced, not run).
# Everything listens on 127.0.0.1 only.

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_nginx_backend DIR PORT: an nginx (1 worker) answering every request with 200 and a
# short body naming the port, in its own process group; appends the group to PIDS.
start_nginx_backend() {
  local dir="$1" port="$2" here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  sed -e "s#@@DIR@@#$dir#g" -e "s#@@PORT@@#$port#g" -e "s#@@BODY@@#backend=$port#g" \
    "$here/backend_nginx.conf.tmpl" >"$dir/backend_$port.conf"
  setsid nginx -e "$dir/backend_$port.err" -c "$dir/backend_$port.conf" -p "$dir/" >/dev/null 2>&1 </dev/null &
  PIDS+=($!)
}

# stop_groups: SIGTERM every process group in PIDS, then wait.
stop_groups() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# cohort_bench_config LISTEN_PORT ADMIN_PORT DIR BACKEND1 BACKEND2 [THREADS]: a 90/10
# stable/canary service keyed on x-user-id, instance files under DIR.
cohort_bench_config() {
  cat <<TOML
[server]
listen = ["127.0.0.1:$1"]
admin = "127.0.0.1:$2"
threads = ${6:-2}
drain_delay_secs = 0
shutdown_timeout_secs = 1
upgrade_sock = "$3/cohort.sock"
pid_file = "$3/cohort.pid"

[[service]]
name = "api"
key = ["header:x-user-id"]

[[service.variant]]
name = "stable"
weight = 90
backends = ["127.0.0.1:$4"]

[[service.variant]]
name = "canary"
weight = 10
backends = ["127.0.0.1:$5"]
TOML
  # BENCH_ROLLOUT=1: the same split driven by a progressive rollout at its first step
  # (the canary's share from the rollout, checks every second, analysis counters).
  if [ "${BENCH_ROLLOUT:-0}" = 1 ]; then
    cat <<TOML

[service.rollout]
id = "bench"
canary = "canary"
baseline = "stable"
steps = [10, 25, 50]
step_secs = 3600
max_step_secs = 7200
check_secs = ${BENCH_ROLLOUT_CHECK_SECS:-1}
TOML
  fi
}
