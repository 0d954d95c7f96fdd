#!/usr/bin/env bash
# Smoke test of an ARM build under qemu-user: PUT, GET, DELETE over HTTP
# from the host, then data kept across a clean stop and a kill -9.
# Usage: cross/smoke.sh aarch64|armv7|armv6   (after cross/build.sh NAME)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: cross/smoke.sh aarch64|armv7|armv6}
case "$name" in
  aarch64) qemu=(qemu-aarch64-static) ;;
  armv7) qemu=(qemu-arm-static -cpu cortex-a7) ;;
  armv6) qemu=(qemu-arm-static -cpu arm1176) ;; # the Pi Zero's core
  *) echo "unknown target '$name'" >&2; exit 2 ;;
esac
binary="dist/lucid-$name"
[ -x "$binary" ] || { echo "$binary is missing: run cross/build.sh $name" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
printf 'general:\n  port: 0\nstorage:\n  directory: %s/data\n' "$work" > "$work/lucid.yml"

start() {
  "${qemu[@]}" "$binary" --config "$work/lucid.yml" server 2> "$work/log" &
  pid=$!
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\) (.*/\1/p' "$work/log" | head -1)
    [ -n "$port" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "the node did not start:" >&2; cat "$work/log" >&2; exit 1
}

# expect STATUS METHOD KEY [BODY]: the status code must match; prints the body.
expect() {
  local want=$1 method=$2 key=$3 out
  out=$(curl -s --max-time 30 -X "$method" ${4:+--data-binary "$4"} \
        -w '\n%{http_code}' "http://127.0.0.1:$port/api/kv/$key")
  local got=${out##*$'\n'}
  [ "$got" = "$want" ] || { echo "$method $key: expected $want, got $got: ${out%$'\n'*}" >&2; exit 1; }
  body=${out%$'\n'*}
}

start
expect 201 PUT greeting "hello from $name"
expect 200 GET greeting
[ "$body" = "hello from $name" ] || { echo "GET greeting returned '$body'" >&2; exit 1; }
expect 201 PUT doomed "x"
expect 200 DELETE doomed
expect 404 GET doomed
sleep 1
rss=$(awk '/VmRSS/ {print $2 " " $3}' "/proc/$pid/status")

kill -TERM "$pid"; wait "$pid"; pid=
start
expect 200 GET greeting
[ "$body" = "hello from $name" ] || { echo "after a restart GET greeting returned '$body'" >&2; exit 1; }
expect 404 GET doomed
expect 201 PUT after "restart"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
start
expect 200 GET after
kill -TERM "$pid"; wait "$pid"; pid=
echo "smoke $name: ok (idle RSS under qemu, emulator included: $rss)"
