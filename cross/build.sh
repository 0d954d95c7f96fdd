#!/usr/bin/env bash
# Builds stripped, static Lucid binaries for Raspberry Pi boards into dist/.
# Usage: cross/build.sh aarch64|armv7|armv6|x86_64|all
#   aarch64  Pi 3/4/5 with a 64-bit OS   aarch64-unknown-linux-musl
#   armv7    Pi 2/3/4 with a 32-bit OS   armv7-unknown-linux-musleabihf
#   armv6    Pi Zero / Pi 1              arm-unknown-linux-musleabihf
#   x86_64   PCs and servers (the amd64 container image)
#                                        x86_64-unknown-linux-musl
# all builds the three ARM ones.
# Run cross/setup.sh first. The 32-bit targets have no prebuilt standard
# library here, so it is built from source (-Z build-std, allowed on the
# stable compiler by RUSTC_BOOTSTRAP) and linked by zig's musl.
# FEATURES=tls cross/build.sh aarch64 builds with HTTPS support: ring (under
# rustls) has C and assembly, which zig compiles for the target.
set -euo pipefail
cd "$(dirname "$0")/.."

triple() {
  case "$1" in
    aarch64) echo aarch64-unknown-linux-musl ;;
    armv7) echo armv7-unknown-linux-musleabihf ;;
    armv6) echo arm-unknown-linux-musleabihf ;;
    x86_64) echo x86_64-unknown-linux-musl ;;
    *) echo "unknown target '$1': use aarch64, armv7, armv6, x86_64 or all" >&2; exit 2 ;;
  esac
}

build() {
  local name=$1 target
  target=$(triple "$name")
  local features=()
  if [ -n "${FEATURES:-}" ]; then features=(--features "$FEATURES"); fi
  local prebuilt_std=false
  case "$name" in aarch64 | x86_64) prebuilt_std=true ;; esac
  if $prebuilt_std && [ -z "${FEATURES:-}" ]; then
    cargo build --locked --profile edge --target "$target"
  elif $prebuilt_std; then
    cargo zigbuild --locked --profile edge --target "$target" "${features[@]}"
  else
    RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C link-self-contained=no" \
      cargo zigbuild --locked --profile edge --target "$target" -Z build-std=std,panic_abort \
      "${features[@]}"
  fi
  mkdir -p dist
  cp "target/$target/edge/lucid" "dist/lucid-$name"
  echo "dist/lucid-$name: $(stat -c %s "dist/lucid-$name") bytes"
}

case "${1:-}" in
  all) for name in aarch64 armv7 armv6; do build "$name"; done ;;
  "") echo "usage: cross/build.sh aarch64|armv7|armv6|x86_64|all" >&2; exit 2 ;;
  *) build "$1" ;;
esac
