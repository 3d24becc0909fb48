#!/usr/bin/env bash
# Installs what building and testing cohort needs on a fresh Debian/Ubuntu machine:
# cmake (libz-ng-sys), libssl-dev + pkg-config (OpenSSL linked from the system), python3
# with the xxhash module (the offline reference implementation scripts/cohort_assign.py),
# and for the tests curl, nginx, haproxy, wrk, python3-grpcio (a real gRPC server and
# client for tests/grpc_real.rs) and chromium (headless, renders the page of
# `cohort rollout report` in tests/rollout_analysis.rs; that test skips without it).
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the Rust toolchain first (https://rustup.rs), then re-run." >&2
  exit 1
fi

pkgs=()
command -v cmake >/dev/null 2>&1 || pkgs+=(cmake)
command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
command -v cc >/dev/null 2>&1 || pkgs+=(build-essential)
command -v python3 >/dev/null 2>&1 || pkgs+=(python3 python3-pip)
if ! pkg-config --exists openssl 2>/dev/null; then pkgs+=(libssl-dev); fi
# for the tests: curl (HTTP/2 client), nginx, haproxy + wrk (scripts/bench.sh --smoke peers/load)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
command -v nginx >/dev/null 2>&1 || pkgs+=(nginx)
command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
command -v haproxy >/dev/null 2>&1 || pkgs+=(haproxy)
command -v ss >/dev/null 2>&1 || pkgs+=(iproute2)
# for the gRPC tests (tests/grpc_real.rs): a real gRPC server and client, Python grpcio
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || pkgs+=(python3-grpcio)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "[install-deps] apt-get install ${pkgs[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# Debian's chromium (/usr/bin/chromium). Not every distribution has a package of that
# name (Ubuntu ships a snap): a failure here is a warning, not the end of the install.
if [ ! -x /usr/bin/chromium ]; then
  echo "[install-deps] apt-get install chromium" >&2
  { $SUDO apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || echo "[install-deps] warning: chromium not installed; the report rendering test will skip" >&2
fi

if ! python3 -c 'import xxhash' >/dev/null 2>&1; then
  echo "[install-deps] installing the python3 xxhash module" >&2
  python3 -m pip install -q xxhash 2>/dev/null \
    || python3 -m pip install -q --break-system-packages xxhash 2>/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-xxhash >/dev/null; }
  python3 -c 'import xxhash' || { echo "could not install the python3 xxhash module" >&2; exit 1; }
fi
