#!/usr/bin/env bash
# Zero-downtime binary upgrade of a running cohort (Pingora graceful upgrade):
#   1. start the new binary with `cohort run --upgrade` (it waits on server.upgrade_sock),
#   2. send SIGQUIT to the old process, which hands over its listening sockets (proxy and
#      admin) and then drains: it stops accepting and finishes its in-flight requests,
#   3. wait until the new process serves (it rewrites server.pid_file) and the old exits.
# No connection is refused: both processes hold the same listening sockets meanwhile.
#
# Usage: scripts/upgrade.sh -c CONFIG [--bin NEW_BINARY] [--log FILE] [--timeout SECS] [-- RUN_ARGS...]
#   CONFIG       the config the old process runs with (its pid_file and upgrade_sock are read
#                from `cohort check`)
#   NEW_BINARY   the new cohort binary (default: `cohort` on PATH, else target/release/cohort)
#   FILE         where the new process's stderr goes (default /tmp/cohort-upgrade-<pid>.log)
#   SECS         how long to wait for the old process to exit (default 60)
#   RUN_ARGS     extra `cohort run` arguments, e.g. --listen/--admin overrides
# Exit 0 when the new process serves and the old one has exited; non-zero otherwise (if
# the new process fails before SIGQUIT is sent, the old one keeps serving untouched).
set -euo pipefail

CONFIG="" BIN="" LOG="" TIMEOUT=60
while [ $# -gt 0 ]; do
  case "$1" in
    -c|--config) CONFIG="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --log) LOG="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "upgrade.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$CONFIG" ] || { echo "upgrade.sh: -c CONFIG is required" >&2; exit 2; }
if [ -z "$BIN" ]; then
  BIN="$(command -v cohort || true)"
  [ -n "$BIN" ] || BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release/cohort"
fi
[ -x "$BIN" ] || { echo "upgrade.sh: $BIN is not executable" >&2; exit 2; }

# Alive = exists and is not a zombie (an exited child its parent has not reaped yet).
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
log() { printf '[upgrade %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

summary="$("$BIN" check -c "$CONFIG" --no-resolve)" || { echo "upgrade.sh: $CONFIG does not validate" >&2; exit 1; }
PID_FILE="$(awk '$1 == "pid_file" { print $2 }' <<<"$summary")"
SOCK="$(awk '$1 == "upgrade_sock" { print $2 }' <<<"$summary")"
OLD="$(cat "$PID_FILE" 2>/dev/null || true)"
[ -n "$OLD" ] && alive "$OLD" || { echo "upgrade.sh: no running cohort in $PID_FILE" >&2; exit 1; }
LOG="${LOG:-/tmp/cohort-upgrade-$OLD.log}"

log "old process $OLD; starting $BIN run -c $CONFIG --upgrade $*"
setsid "$BIN" run -c "$CONFIG" --upgrade "$@" >>"$LOG" 2>&1 </dev/null &
NEW=$!

# The new process binds the upgrade socket and waits (5 s) for the sockets.
for _ in $(seq 100); do
  alive "$NEW" || { log "new process exited early; old $OLD untouched. Log: $LOG"; tail -n 20 "$LOG" >&2; exit 1; }
  [ -S "$SOCK" ] && [ "$(stat -c %Y "$SOCK")" -ge "$(( $(date +%s) - 2 ))" ] && break
  sleep 0.05
done
log "sending SIGQUIT to $OLD (hand over sockets via $SOCK)"
kill -QUIT "$OLD"

for _ in $(seq 200); do
  [ "$(cat "$PID_FILE" 2>/dev/null)" = "$NEW" ] && break
  alive "$NEW" || { log "new process died during the hand-over. Log: $LOG"; tail -n 20 "$LOG" >&2; exit 1; }
  sleep 0.05
done
[ "$(cat "$PID_FILE" 2>/dev/null)" = "$NEW" ] || { log "new process did not take over in 10 s. Log: $LOG"; exit 1; }
log "new process $NEW serves; waiting for $OLD to drain (up to ${TIMEOUT}s)"

for _ in $(seq $((TIMEOUT * 10))); do
  alive "$OLD" || { log "old process exited; upgrade complete (new pid $NEW)"; echo "$NEW"; exit 0; }
  sleep 0.1
done
log "old process $OLD still running after ${TIMEOUT}s"
exit 1
