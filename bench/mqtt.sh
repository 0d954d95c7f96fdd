#!/usr/bin/env bash
# MQTT bridge figures: a node publishing every change to a local mosquitto.
#
# Usage: bench/mqtt.sh     (BENCH_SECONDS=10, BENCH_DRAIN=100000 by default)
#
# 1. Steady load: W2 (wrk, put.lua, 64 connections, 100-byte values,
#    sync: interval) against the node for BENCH_SECONDS: changes written and
#    published per second (from lucid_mqtt_published_total), the backlog at
#    the end, and the bridge thread's CPU time per published change.
# 2. Drain: the broker stopped, BENCH_DRAIN changes imported, the broker
#    started again: seconds until the backlog is empty, changes per second.
#
# Installs wrk and mosquitto from Debian's packages if they are missing.
# Everything listens on 127.0.0.1 (free ports) and is stopped by PID at the
# end. A subscriber is not needed: the broker acknowledges QoS 1 messages
# whether or not anyone listens.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
DRAIN=${BENCH_DRAIN:-100000}
for tool in wrk mosquitto; do
  command -v "$tool" >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
  }
done
cargo build --quiet --release --bin lucid
LUCID=target/release/lucid

work=$(mktemp -d)
# say TEXT: prints TEXT and keeps it for docs/BENCHMARKS.md.
say() { echo "$@" | tee -a "$work/summary.txt"; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

broker_port=$(free_port)
start_broker() {
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n' \
    "$broker_port" > "$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" 2> "$work/mosquitto.log" &
  broker=$!
  pids+=("$broker")
  sleep 0.3
}
start_broker

printf 'general:\n  port: 0\n  node_name: bench\nstorage:\n  directory: %s/data\n  sync: interval\nmqtt:\n  url: mqtt://127.0.0.1:%s\n' \
  "$work" "$broker_port" > "$work/lucid.yml"
"$LUCID" --config "$work/lucid.yml" server 2> "$work/lucid.log" &
node=$!
pids+=("$node")
port=$(listening_port "$work/lucid.log")
[ -n "$port" ] || { cat "$work/lucid.log" >&2; exit 1; }
url="http://127.0.0.1:$port"

metric() { curl -sf "$url/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# The bridge thread's CPU time, in seconds.
bridge_cpu() {
  local tid
  tid=$(grep -l '^lucid-mqtt$' /proc/"$node"/task/*/comm | head -1 | cut -d/ -f5)
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$node/task/$tid/stat"
}
now() { date +%s.%N; }

say "== 1. Steady load: W2 for ${SECONDS_PER_RUN} s, bridge to mosquitto"
published_before=$(metric lucid_mqtt_published_total)
cpu_before=$(bridge_cpu)
wrk -t2 -c64 -d "${SECONDS_PER_RUN}s" -s bench/put.lua "$url" > "$work/wrk.txt"
written=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
backlog_end=$(metric lucid_mqtt_backlog_changes)
published=$(( $(metric lucid_mqtt_published_total) - published_before ))
cpu=$(awk -v a="$(bridge_cpu)" -v b="$cpu_before" 'BEGIN {print a - b}')
awk -v w="$written" -v p="$published" -v s="$SECONDS_PER_RUN" -v c="$cpu" -v b="$backlog_end" 'BEGIN {
  printf "  written %.0f changes/s, published %.0f changes/s (target >= 20000), backlog at the end %d\n", w / s, p / s, b
  printf "  bridge thread CPU %.2f s: %.1f us per published change\n", c, c / p * 1e6
}' | tee -a "$work/summary.txt"

say "== 2. Drain after an outage of $DRAIN changes"
kill "$broker"; wait "$broker" 2>/dev/null || true
python3 - "$url/api/admin/import" "$DRAIN" <<'EOF'
import http.client, sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1]); count = int(sys.argv[2])
conn = http.client.HTTPConnection(u.hostname, u.port)
value = "v" * 100
for start in range(0, count, 1000):
    lines = "".join('{"key":"drain/%08d","value":"%s"}\n' % (i, value) for i in range(start, min(start + 1000, count)))
    conn.request("POST", u.path, lines, {"Content-Type": "application/jsonl"})
    r = conn.getresponse(); r.read(); assert r.status == 200, r.status
EOF
say "  $(metric lucid_mqtt_backlog_changes) changes waiting"
published_before=$(metric lucid_mqtt_published_total)
start_broker
began=$(now)
until [ "$(metric lucid_mqtt_connected)" = 1 ]; do sleep 0.05; done
until [ "$(metric lucid_mqtt_backlog_changes)" = 0 ]; do sleep 0.05; done
ended=$(now)
published=$(( $(metric lucid_mqtt_published_total) - published_before ))
awk -v s="$began" -v e="$ended" -v p="$published" 'BEGIN {
  printf "  %d changes drained in %.2f s after the broker came back: %.0f changes/s (target >= 20000)\n", p, e - s, p / (e - s)
}' | tee -a "$work/summary.txt"

write_doc_section "MQTT bridge (\`bench/mqtt.sh\`), $(date +%F)" "$work/summary.txt"
echo "== wrote docs/BENCHMARKS.md"
