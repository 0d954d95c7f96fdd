#!/usr/bin/env bash
# Replication figures: a primary and a follower on this machine.
#
# Usage: bench/replication.sh   (BENCH_SECONDS=10, BENCH_CATCH_UP=100000,
#                                BENCH_SNAPSHOT_KEYS=1000000 by default)
#
# 1. Lag: W2 (wrk, put.lua, 64 connections, 100-byte values, sync:
#    interval) against the primary while a probe PUTs the time every 10 ms
#    and a watcher on the follower notes when each arrives: replication lag
#    p50/p99/max (both on this machine's clock), and records/s the follower
#    applied.
# 2. Semi-synchronous writes: W2 and W4 (one connection) with sync: always,
#    min_acks 0 then 1 (one follower): req/s, the ratio, and W4 against its
#    floor (two fdatasyncs, the primary's and the follower's, plus one
#    request's round trip).
# 3. Catch-up: the follower stopped while the primary takes BENCH_CATCH_UP
#    writes (imported in batches), then started: seconds until it has them.
# 4. Re-snapshot: a new follower of a primary holding BENCH_SNAPSHOT_KEYS
#    keys: seconds until it holds them all.
#
# Every node listens on 127.0.0.1 (ports chosen by the OS) and is stopped
# by PID when the script ends. Needs wrk, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CATCH_UP=${BENCH_CATCH_UP:-100000}
SNAPSHOT_KEYS=${BENCH_SNAPSHOT_KEYS:-1000000}
command -v wrk >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}
cargo build --quiet --release --bin lucid
LUCID=target/release/lucid

work=$(mktemp -d)
# say TEXT: prints TEXT and keeps it for docs/BENCHMARKS.md.
say() { echo "$@" | tee -a "$work/summary.txt"; }
declare -A PID URL
cleanup() {
  for pid in "${PID[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PID[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME SYNC [PRIMARY_NAME] [MIN_ACKS]: a node on a free port.
start() {
  local name=$1 sync=$2 primary=${3:-} acks=${4:-0} port
  {
    printf 'general:\n  port: %s\nstorage:\n  directory: %s/%s\n  sync: %s\n' \
      "${PORT[$name]:-0}" "$work" "$name" "$sync"
    printf 'replication:\n  min_acks: %s\n  ack_timeout_ms: 10000\n' "$acks"
    [ -n "$primary" ] && printf '  primary: %s\n' "${URL[$primary]}"
  } > "$work/$name.yml"
  "$LUCID" --config "$work/$name.yml" server 2> "$work/$name.log" &
  PID[$name]=$!
  port=$(listening_port "$work/$name.log")
  [ -n "$port" ] || { echo "node $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
  PORT[$name]=$port
  URL[$name]="http://127.0.0.1:$port"
}
declare -A PORT

stop() {
  kill "${PID[$1]}"
  wait "${PID[$1]}" 2>/dev/null || true
  unset "PID[$1]"
}

# status NAME FIELD: a number from /api/admin/replication (the follower's
# fields, or the top level's).
status() {
  curl -sf "${URL[$1]}/api/admin/replication" | python3 -c '
import json, sys
d = json.load(sys.stdin); f = sys.argv[1]
print(d.get("follower", {}).get(f, d.get(f)))' "$2"
}

# wait_caught_up FOLLOWER PRIMARY: until the follower applied the
# primary's last sequence number.
wait_caught_up() {
  local target
  target=$(status "$2" sequence)
  until [ "$(status "$1" applied 2>/dev/null || echo 0)" -ge "$target" ] 2>/dev/null; do
    sleep 0.01
  done
}

now() { date +%s.%N; }

# import NAME COUNT FROM: COUNT 100-byte values under bench/N, in batches.
import() {
  python3 - "${URL[$1]}/api/admin/import" "$2" "$3" <<'EOF'
import http.client, sys, urllib.parse
url, count, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
value = "v" * 100
for start in range(first, first + count, 1000):
    lines = "".join('{"key":"bench/%010d","value":"%s"}\n' % (i, value)
                    for i in range(start, min(start + 1000, first + count)))
    conn.request("POST", u.path, lines, {"Content-Type": "application/jsonl"})
    answer = conn.getresponse(); answer.read()
    assert answer.status == 200, answer.status
EOF
}

# wrk_rate NAME CONNECTIONS: req/s of put.lua against the node.
wrk_rate() {
  wrk -t "$(( $2 > 1 ? 2 : 1 ))" -c "$2" -d "${SECONDS_PER_RUN}s" -s bench/put.lua "${URL[$1]}" |
    awk '/Requests\/sec/ {print $2}'
}

say "== 1. Lag under W2 (sync: interval), ${SECONDS_PER_RUN} s"
start p interval
start f interval p
wait_caught_up f p
applied_before=$(status f applied_records)
python3 - "${URL[p]}" "${URL[f]}" "$SECONDS_PER_RUN" > "$work/lag.txt" <<'EOF' &
import http.client, sys, threading, time, urllib.parse
primary, follower, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
def conn(url):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)
arrived = {}
def watch():
    c = conn(follower)
    c.request("GET", "/api/watch?prefix=probe")
    r = c.getresponse()
    for line in r:
        if line.startswith(b"data:") and b'"value":"' in line:
            sent = line.split(b'"value":"')[1].split(b'"')[0]
            arrived.setdefault(sent, time.time())
threading.Thread(target=watch, daemon=True).start()
time.sleep(0.5)
p = conn(primary)
sent = []
end = time.time() + seconds
n = 0
while time.time() < end:
    stamp = "%.6f-%d" % (time.time(), n); n += 1
    p.request("PUT", "/api/kv/probe", stamp); p.getresponse().read()
    sent.append((stamp.encode(), time.time()))
    time.sleep(0.01)
time.sleep(1)
lags = sorted((arrived[s] - t) * 1000 for s, t in sent if s in arrived)
missing = len(sent) - len(lags)
pick = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]
print("probes %d (missing %d): lag p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
    len(sent), missing, pick(0.5), pick(0.99), lags[-1]))
EOF
probe=$!
w2=$(wrk_rate p 64)
wait "$probe"
wait_caught_up f p
applied=$(( $(status f applied_records) - applied_before ))
say "  W2 on the primary: $w2 req/s; the follower applied $applied records ($(awk -v a="$applied" -v s="$SECONDS_PER_RUN" 'BEGIN {printf "%.0f", a / s}') records/s)"
say "  $(cat "$work/lag.txt")"
stop f; stop p; rm -rf "$work/p" "$work/f"; unset "PORT[p]" "PORT[f]"

say "== 2. Semi-synchronous writes (sync: always), ${SECONDS_PER_RUN} s each"
fsync_mean() {
  curl -sf "${URL[$1]}/metrics" | awk '/^lucid_fsyncs_total / {n = $2} /^lucid_fsync_seconds_total / {s = $2} END {printf "%.6f", s / n}'
}
start p always
w2_0=$(wrk_rate p 64); w4_0=$(wrk_rate p 1)
stop p
start p always "" 1
start f always p
wait_caught_up f p
w2_1=$(wrk_rate p 64); w4_1=$(wrk_rate p 1)
fsync_p=$(fsync_mean p); fsync_f=$(fsync_mean f)
# One request's round trip on one connection: GETs of a small key.
curl -sf -XPUT "${URL[p]}/api/kv/bench-rtt" -d x > /dev/null
rtt=$(wrk -t1 -c1 -d3s "${URL[p]}/api/kv/bench-rtt" | awk '/Requests\/sec/ {printf "%.6f", 1 / $2}')
awk -v a="$w2_0" -v b="$w2_1" -v c="$w4_0" -v d="$w4_1" -v fp="$fsync_p" -v ff="$fsync_f" -v r="$rtt" 'BEGIN {
  printf "  W2 -c64: min_acks 0 %.0f req/s, min_acks 1 %.0f req/s: ratio %.2f (target >= 0.5)\n", a, b, b / a
  floor = 1 / (fp + ff + r)
  printf "  W4 -c1: min_acks 0 %.0f req/s, min_acks 1 %.0f req/s; floor (fdatasync %.2f ms + %.2f ms, round trip %.2f ms) %.0f req/s: %.2f of it\n", c, d, fp * 1000, ff * 1000, r * 1000, floor, d / floor
}' | tee -a "$work/summary.txt"
stop f; stop p; rm -rf "$work/p" "$work/f"; unset "PORT[p]" "PORT[f]"

say "== 3. Catch-up after $CATCH_UP writes offline (sync: interval)"
start p interval
start f interval p
wait_caught_up f p
stop f
import p "$CATCH_UP" 0
began=$(now)
start f interval p
wait_caught_up f p
ended=$(now)
awk -v s="$began" -v e="$ended" -v n="$CATCH_UP" 'BEGIN {printf "  %d writes caught up in %.2f s (target <= 5 s), %.0f records/s\n", n, e - s, n / (e - s)}' | tee -a "$work/summary.txt"
say "  snapshots the follower took since its restart: $(status f resyncs) (0: it resumed from its cursor)"
stop f; rm -rf "$work/f"; unset "PORT[f]"

say "== 4. Re-snapshot of $SNAPSHOT_KEYS keys"
import p "$(( SNAPSHOT_KEYS > CATCH_UP ? SNAPSHOT_KEYS - CATCH_UP : 0 ))" "$CATCH_UP"
began=$(now)
start f interval p
wait_caught_up f p
ended=$(now)
keys=$(curl -sf "${URL[f]}/metrics" | sed -n 's/^lucid_keys \([0-9]*\)$/\1/p')
awk -v s="$began" -v e="$ended" -v k="$keys" 'BEGIN {printf "  a new follower holds %d keys after %.2f s (target <= 10 s)\n", k, e - s}' | tee -a "$work/summary.txt"

write_doc_section "Replication (\`bench/replication.sh\`), $(date +%F)" "$work/summary.txt"
echo "== wrote docs/BENCHMARKS.md"
