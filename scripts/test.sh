#!/usr/bin/env bash
# The test command: installs prerequisites if missing, then checks formatting, lints and
# runs the whole test suite (unit, property, golden-vector and end-to-end tests against
# the real binary with real backends on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
