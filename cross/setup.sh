#!/usr/bin/env bash
# Installs what cross/build.sh and cross/smoke.sh need on a fresh Debian
# machine: the aarch64 musl standard library, Rust's sources (the 32-bit ARM
# targets build their standard library from them), zig with cargo-zigbuild
# (links the 32-bit ARM builds), qemu-user (runs ARM binaries here) and curl.
# Usage: cross/setup.sh [aarch64|x86_64|all]   (default: all; x86_64 adds
# only its musl standard library, for the container image)
set -euo pipefail
want=${1:-all}

if ! command -v qemu-aarch64-static >/dev/null || ! command -v curl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static curl >/dev/null
fi
rustup target list --installed | grep -q '^aarch64-unknown-linux-musl$' \
  || rustup target add aarch64-unknown-linux-musl
if [ "$want" != aarch64 ]; then
  rustup target list --installed | grep -q '^x86_64-unknown-linux-musl$' \
    || rustup target add x86_64-unknown-linux-musl
fi

if [ "$want" = all ]; then
  rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
  command -v cargo-zigbuild >/dev/null && python3 -m ziglang version >/dev/null 2>&1 \
    || python3 -m pip install -q ziglang cargo-zigbuild
fi
echo "cross: set up for ${want}"
