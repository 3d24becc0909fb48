#!/usr/bin/env bash
# callgrind-decide.sh -- instructions per routing decision (the `decide/*` criterion
# bench's request: 12 headers, 4 rules, 3 variants), counted by valgrind's callgrind, so
# the figure repeats exactly whatever else the machine does. The example runs N1 and N2
# decisions; (Ir(N2) - Ir(N1)) / (N2 - N1) cancels start-up.
# Usage: scripts/callgrind-decide.sh [N1 N2]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N1="${1:-10000}" N2="${2:-20000}"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 1; }
cargo build --release --locked --example decide_count >&2
BIN=target/release/examples/decide_count
T="$(mktemp -d /tmp/cohort-decide.XXXXXX)"
trap 'rm -rf "$T"' EXIT
ir() { # n view -> total instructions
  valgrind --tool=callgrind --callgrind-out-file="$T/out" "$BIN" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
for view in raw map; do
  a=$(ir "$N1" "$view"); b=$(ir "$N2" "$view")
  echo "$view: $(( (b - a) / (N2 - N1) )) instructions per decision"
done
