#!/usr/bin/env bash
# Export and import speed: `lucid import` and `lucid export` between two
# nodes on this machine, in keys per second.
#
# Usage: bench/export_import.sh        (BENCH_KEYS=1000000 by default)
#        LUCID_BINARY=path bench/export_import.sh   (another build's binary,
#                                      e.g. a baseline, for both nodes and
#                                      the commands)
#
# Builds the release binary, starts two nodes (A and B) on free ports of
# 127.0.0.1 with data directories in a temporary directory and the default
# configuration (so `sync: always`; authentication is off by default), and
# stops them by PID when it ends. Then:
#   1. writes BENCH_KEYS lines of 16-byte keys and 100-byte values as JSON
#      Lines and times `lucid import` of that file into the empty node A;
#   2. times `lucid export > dump.jsonl` from A;
#   3. times `lucid import dump.jsonl` into the empty node B;
# prints keys/s for each and checks that both nodes hold BENCH_KEYS keys
# and that the dump has as many lines. Needs python3 and curl; no root.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

KEYS=${BENCH_KEYS:-1000000}

if [ -z "${LUCID_BINARY:-}" ]; then
  cargo build --quiet --release --bin lucid
  LUCID_BINARY=target/release/lucid
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

declare -A URL

# start_node NAME: a node with the default configuration on a free port.
start_node() {
  local name=$1 port=""
  printf 'general:\n  port: 0\nstorage:\n  directory: %s/%s\n' "$work" "$name" > "$work/$name.yml"
  "$LUCID_BINARY" --config "$work/$name.yml" server 2> "$work/$name.log" &
  pids+=($!)
  port=$(listening_port "$work/$name.log")
  if [ -z "$port" ]; then
    echo "node $name did not start:" >&2
    cat "$work/$name.log" >&2
    exit 1
  fi
  URL[$name]="http://127.0.0.1:$port"
}

# keys_on NAME: the node's live keys, from /metrics.
keys_on() {
  curl -sf "${URL[$1]}/metrics" | sed -n 's/^lucid_keys \([0-9]*\)$/\1/p'
}

now() { date +%s.%N; }

# rate LABEL START END: prints KEYS / (END - START).
rate() {
  awk -v label="$1" -v start="$2" -v end="$3" -v keys="$KEYS" \
    'BEGIN { s = end - start; printf "  %-34s %9d keys in %6.2f s = %8.0f keys/s\n", label, keys, s, keys / s }'
}

# check WHAT GOT: GOT must be KEYS.
check() {
  if [ "$2" != "$KEYS" ]; then
    echo "$1: $2, expected $KEYS" >&2
    exit 1
  fi
}

start_node a
start_node b

python3 - "$work/keys.jsonl" "$KEYS" <<'EOF'
import sys
path, keys = sys.argv[1], int(sys.argv[2])
value = "v" * 100
with open(path, "w") as out:
    for i in range(keys):
        out.write('{"key":"bench/%010d","value":"%s"}\n' % (i, value))
EOF

echo "export and import: $KEYS keys, 16-byte keys, 100-byte values, sync: always ($LUCID_BINARY)"

start=$(now)
"$LUCID_BINARY" import "$work/keys.jsonl" --url "${URL[a]}" > "$work/import-a.out"
end=$(now)
rate "lucid import (generated file)" "$start" "$end"
check "keys on node A after the import" "$(keys_on a)"

start=$(now)
"$LUCID_BINARY" export --url "${URL[a]}" > "$work/dump.jsonl"
end=$(now)
rate "lucid export" "$start" "$end"
check "lines in the export" "$(wc -l < "$work/dump.jsonl")"

start=$(now)
"$LUCID_BINARY" import "$work/dump.jsonl" --url "${URL[b]}" > "$work/import-b.out"
end=$(now)
rate "lucid import (the export)" "$start" "$end"
check "keys on node B after the import" "$(keys_on b)"
