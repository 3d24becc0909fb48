#!/usr/bin/env bash
# The test command: installs prerequisites if missing, then checks formatting, lints and
# runs the whole test suite (unit, property, golden-vector and end-to-end tests against
# the real binary with real backends on 127.0.0.1). The end-to-end suite runs twice:
# once with the HTTP/1 engine serving HTTP/1.1 (the default), once with every request on
# the Pingora carrier (COHORT_FAST_PATH=0), so the two carriers cannot drift apart. Tests
# that are about one carrier pin it themselves and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
echo "== the end-to-end suite again, on the Pingora carrier (COHORT_FAST_PATH=0) =="
COHORT_FAST_PATH=0 cargo test --locked --test '*'
