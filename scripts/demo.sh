#!/usr/bin/env bash
# Builds cohort (installing prerequisites if missing) and runs `cohort demo`: two demo
# backends and the proxy on 127.0.0.1:8080 (admin 127.0.0.1:9090). Extra arguments go to
# `cohort demo`, e.g. scripts/demo.sh --listen 127.0.0.1:18080.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked
exec target/release/cohort demo "$@"
