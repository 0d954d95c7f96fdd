#!/usr/bin/env bash
# Container images of Lucid: FROM scratch around the static binaries that
# cross/build.sh makes (see ../Containerfile), with podman (or buildah).
# Usage:
#   cross/image.sh build [x86_64|aarch64|armv7|armv6...]
#       builds lucid:VERSION-ARCH for each (default: all four, building the
#       binaries that dist/ lacks), then the manifest lucid:VERSION over
#       those built. Push it with `podman manifest push lucid:VERSION REGISTRY/lucid:VERSION`.
#   cross/image.sh test
#       runs the image of this machine's architecture: config and volume
#       mounted, health check, PUT/GET, data kept across a restart, and the
#       message when no config is mounted. Where `podman run` cannot start a
#       container (or with LUCID_IMAGE_TEST=extracted), tests the binary
#       extracted from the image instead.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name=lucid
# This machine refuses to raise resource limits (no CAP_SYS_RESOURCE), and
# podman's defaults for open files and processes are above its hard limits:
# ask for what the machine allows.
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
# crun, Debian's default for podman, also refuses this machine's hybrid
# cgroup set-up ("cgroups in hybrid mode not supported"); runc copes.
runtime=()
if command -v runc >/dev/null; then runtime=(--runtime runc); fi

platform() {
  case "$1" in
    x86_64) echo linux/amd64 ;;
    aarch64) echo linux/arm64 ;;
    armv7) echo linux/arm/v7 ;;
    armv6) echo linux/arm/v6 ;;
    *) echo "unknown architecture '$1': use x86_64, aarch64, armv7 or armv6" >&2; exit 2 ;;
  esac
}

build() {
  local archs=("$@")
  [ ${#archs[@]} -gt 0 ] || archs=(x86_64 aarch64 armv7 armv6)
  podman manifest rm "$name:$version" >/dev/null 2>&1 || true
  podman manifest create "$name:$version" >/dev/null
  for arch in "${archs[@]}"; do
    local plat
    plat=$(platform "$arch")
    [ -x "dist/lucid-$arch" ] || cross/build.sh "$arch"
    podman build --quiet --format docker --platform "$plat" --build-arg "BINARY=dist/lucid-$arch" \
      -t "$name:$version-$arch" . >/dev/null
    podman manifest add "$name:$version" "containers-storage:localhost/$name:$version-$arch" >/dev/null
    echo "$name:$version-$arch ($plat): $(podman image inspect "$name:$version-$arch" --format '{{.Size}}') bytes"
  done
  echo "manifest $name:$version: ${archs[*]}"
}

fail() { echo "image test: $*" >&2; exit 1; }

# Checks a running node at 127.0.0.1:$port: health, PUT, GET.
exercise() {
  local port=$1 token=$2 value=$3
  curl -fsS -m 10 "http://127.0.0.1:$port/health" | grep -q '"ok"' || fail "no healthy answer"
  curl -fsS -m 10 -X PUT -H "Authorization: Bearer $token" -H 'Content-Type: text/plain' \
    --data-binary "$value" "http://127.0.0.1:$port/api/kv/image/test" >/dev/null || fail "PUT failed"
}

read_back() {
  local port=$1 token=$2
  curl -fsS -m 10 -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/kv/image/test"
}

wait_healthy() {
  local port=$1
  for _ in $(seq 1 100); do
    curl -fsS -m 2 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# The container, server process and scratch directory the test cleans up.
cid= pid= work=
cleanup() {
  if [ -n "$cid" ]; then podman rm -f "$cid" >/dev/null 2>&1 || true; fi
  podman volume rm -f lucid-image-test >/dev/null 2>&1 || true
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  if [ -n "$work" ]; then rm -rf "$work"; fi
}

test_image() {
  local arch image port token
  arch=$(uname -m)
  image="$name:$version-$arch"
  podman image exists "$image" || build "$arch"
  work=$(mktemp -d)
  trap cleanup EXIT

  local size user health
  size=$(podman image inspect "$image" --format '{{.Size}}')
  user=$(podman image inspect "$image" --format '{{.Config.User}}')
  health=$(podman image inspect "$image" --format '{{.Config.Healthcheck.Test}}')
  echo "$image: $size bytes, user $user, health check $health"
  [ "$size" -le 3000000 ] || fail "the image is over 3 MB"
  [ "$user" = 10001:10001 ] || fail "the image does not run as 10001"
  [ "$health" = "[CMD /lucid health]" ] || fail "no shell-free health check"

  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # The node listens on loopback only: the container shares this machine's network.
  if [ "${LUCID_IMAGE_TEST:-}" = extracted ]; then
    test_extracted "$image" "$work" "$port"
    return
  fi
  if ! podman "${runtime[@]}" run --rm "${limits[@]}" "$image" init --stdout --bind-address 127.0.0.1 \
      --data-dir /var/lib/lucid > "$work/lucid.yml" 2> "$work/init.err"; then
    echo "image test: podman cannot run a container here:" >&2
    grep -v 'level=' "$work/init.err" >&2 || true
    test_extracted "$image" "$work" "$port"
    return
  fi
  token=$(tail -1 "$work/init.err")
  sed -i "s/^  port: 7021$/  port: $port/" "$work/lucid.yml"
  chown 10001:10001 "$work/lucid.yml"

  local message
  message=$(podman "${runtime[@]}" run --rm "${limits[@]}" "$image" 2>&1 | grep -v 'level=' || true)
  grep -q 'init --stdout' <<< "$message" || fail "without a config, no hint: $message"

  local run=(podman "${runtime[@]}" run -d "${limits[@]}" --network host -v "$work/lucid.yml:/etc/lucid/lucid.yml:ro"
             -v lucid-image-test:/var/lib/lucid "$image")
  cid=$("${run[@]}" 2>/dev/null)
  wait_healthy "$port" || fail "the container did not answer: $(podman logs "$cid" 2>&1)"
  exercise "$port" "$token" "kept in the volume"
  podman healthcheck run "$cid" 2>/dev/null || fail "the image's health check failed"
  podman stop -t 10 "$cid" >/dev/null 2>&1
  podman logs "$cid" 2>&1 | grep -q 'stopped cleanly' || fail "no clean stop: $(podman logs "$cid" 2>&1)"
  podman rm "$cid" >/dev/null 2>&1; cid=""
  cid=$("${run[@]}" 2>/dev/null)
  wait_healthy "$port" || fail "the container did not restart: $(podman logs "$cid" 2>&1)"
  [ "$(read_back "$port" "$token")" = "kept in the volume" ] || fail "the value was not kept"
  podman stop -t 10 "$cid" >/dev/null 2>&1
  echo "image test: ok (podman run: config, volume, health check, restart)"
}

# The fallback: the binary the image holds, run directly.
test_extracted() {
  local image=$1 work=$2 port=$3 token
  podman save --format docker-archive "$image" -o "$work/image.tar"
  mkdir "$work/image" "$work/rootfs"
  tar -xf "$work/image.tar" -C "$work/image"
  for layer in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))[0]["Layers"]))' "$work/image/manifest.json"); do
    tar -xf "$work/image/$layer" -C "$work/rootfs"
  done
  local lucid="$work/rootfs/lucid"
  [ -x "$lucid" ] || fail "no /lucid in the image"
  local message
  message=$(LUCID_CONFIG=/nonexistent/lucid.yml "$lucid" server 2>&1 || true)
  grep -q 'init --stdout' <<< "$message" || fail "without a config, no hint: $message"
  "$lucid" init --stdout --bind-address 127.0.0.1 --data-dir "$work/data" > "$work/lucid.yml" 2> "$work/init.err"
  token=$(tail -1 "$work/init.err")
  sed -i "s/^  port: 7021$/  port: $port/" "$work/lucid.yml"
  LUCID_CONFIG="$work/lucid.yml" "$lucid" server 2> "$work/log" & pid=$!
  wait_healthy "$port" || fail "the extracted binary did not start: $(cat "$work/log")"
  exercise "$port" "$token" "kept"
  LUCID_CONFIG="$work/lucid.yml" "$lucid" health >/dev/null || fail "lucid health failed"
  kill -TERM "$pid"; wait "$pid"
  LUCID_CONFIG="$work/lucid.yml" "$lucid" server 2> "$work/log" & pid=$!
  wait_healthy "$port" || fail "the extracted binary did not restart"
  [ "$(read_back "$port" "$token")" = kept ] || fail "the value was not kept"
  kill -TERM "$pid"; wait "$pid"; pid=
  echo "image test: ok, on the binary extracted from the image (not run by podman)"
}

case "${1:-}" in
  build) shift; build "$@" ;;
  test) test_image ;;
  *) echo "usage: cross/image.sh build [ARCH...] | test" >&2; exit 2 ;;
esac
