#!/usr/bin/env bash
# Lucid's benchmark suite: Lucid side by side with the tiny_http ceiling
# (examples/http_ceiling.rs), nginx answering a fixed 100-byte body, and
# etcd 3.4's v2 HTTP API, in one run on this machine; then the storage
# engine benchmark. Prints one table and writes docs/BENCHMARKS.md and
# docs/BENCHMARKS.tsv.
#
# Usage: bench/run.sh            (BENCH_SECONDS=10 BENCH_RUNS=3 by default)
# Every server listens on 127.0.0.1, is pinned to CPU 0 (wrk runs on CPU 1),
# and is stopped by PID when the script ends. Installs wrk, nginx and
# etcd-server from Debian's packages if they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
RUNS=${BENCH_RUNS:-3}
SERVER_CPU=0
CLIENT_CPU=1

need() {
  command -v "$1" >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need nginx nginx-light
need etcd etcd-server
need curl curl

cargo build --quiet --release --bin lucid --example http_ceiling

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for URL: until it answers (any status), at most 30 s.
wait_for() {
  for _ in $(seq 1 300); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  echo "nothing answers at $1" >&2
  exit 1
}

# start_lucid SYNC [encrypted]: starts Lucid with the given sync mode (and
# encryption at rest); sets PORT.
start_lucid() {
  local sync=$1 name=$1${2:+-$2} extra=""
  if [ "${2:-}" = encrypted ]; then
    head -c 32 /dev/urandom > "$work/lucid.key"
    chmod 600 "$work/lucid.key"
    extra="encryption: {enabled: true, key_file: $work/lucid.key}"
  fi
  printf 'general:\n  port: 0\nstorage:\n  directory: %s/lucid-%s\n  sync: %s\n%s\n' \
    "$work" "$name" "$sync" "$extra" > "$work/lucid-$name.yml"
  taskset -c $SERVER_CPU target/release/lucid --config "$work/lucid-$name.yml" server \
    2> "$work/lucid-$name.log" &
  pids+=($!)
  for _ in $(seq 1 300); do
    PORT=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\) (.*/\1/p' "$work/lucid-$name.log" | head -1)
    [ -n "$PORT" ] && break
    sleep 0.1
  done
  curl -s -X PUT --data-binary "$(printf 'v%.0s' $(seq 1 100))" "http://127.0.0.1:$PORT/api/kv/bench-hot" >/dev/null
}

start_ceiling() {
  PORT=$(free_port)
  taskset -c $SERVER_CPU target/release/examples/http_ceiling --port "$PORT" 2> "$work/ceiling.log" &
  pids+=($!)
  wait_for "http://127.0.0.1:$PORT/"
}

start_nginx() {
  PORT=$(free_port)
  mkdir -p "$work/nginx"
  cat > "$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:$PORT;
    location / { return 200 "$(printf 'x%.0s' $(seq 1 100))"; }
  }
}
EOF
  taskset -c $SERVER_CPU nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2> "$work/nginx/stderr" &
  pids+=($!)
  wait_for "http://127.0.0.1:$PORT/"
}

start_etcd() {
  PORT=$(free_port)
  local peer
  peer=$(free_port)
  taskset -c $SERVER_CPU etcd --name bench --data-dir "$work/etcd" --enable-v2=true \
    --listen-client-urls "http://127.0.0.1:$PORT" --advertise-client-urls "http://127.0.0.1:$PORT" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" > "$work/etcd.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$PORT/version"
  curl -s -X PUT -d "value=$(printf 'v%.0s' $(seq 1 100))" "http://127.0.0.1:$PORT/v2/keys/bench-hot" >/dev/null
}

# to_ms "1.45ms" | "812.00us" | "1.02s" -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}

# measure TARGET WORKLOAD SCRIPT CONNECTIONS THREADS URL: median of RUNS by
# req/s; appends "target workload req/s p50 p99" to the results.
measure() {
  local target=$1 workload=$2 script=$3 connections=$4 threads=$5 url=$6 runs=()
  for _ in $(seq 1 "$RUNS"); do
    local out req p50 p99
    out=$(taskset -c $CLIENT_CPU wrk -t"$threads" -c"$connections" -d"${SECONDS_PER_RUN}s" --latency \
      -s "bench/$script" "$url")
    req=$(awk '/^Requests\/sec:/ {print $2}' <<< "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<< "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<< "$out")")
    if grep -q "Non-2xx" <<< "$out"; then
      echo "warning: $target $workload got non-2xx answers: $(grep Non-2xx <<< "$out")" >&2
    fi
    runs+=("$req $p50 $p99")
  done
  local median
  median=$(printf '%s\n' "${runs[@]}" | sort -n | awk -v n="$RUNS" 'NR == int((n + 1) / 2)')
  printf '%s\t%s\t%s\n' "$target" "$workload" "$(tr ' ' '\t' <<< "$median")" >> "$work/results.tsv"
  printf '  %-16s %-28s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms\n' "$target" "$workload" $median
}

watchers() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '$1 == "lucid_watchers" {print $2}'
}

# start_watchers PORT N: N Server-Sent Events watchers of every key (curl,
# on the client CPU, discarding the events), stopped with the rest.
start_watchers() {
  for _ in $(seq 1 "$2"); do
    taskset -c $CLIENT_CPU curl -s -N -o /dev/null "http://127.0.0.1:$1/api/watch" &
    pids+=($!)
  done
  for _ in $(seq 1 300); do
    [ "$(watchers "$1")" = "$2" ] && return 0
    sleep 0.1
  done
  echo "the $2 watchers did not connect" >&2
  exit 1
}

fsyncs() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '$1 == "lucid_fsyncs_total" {print $2}'
}

# idle_rss NAME COMMAND...: starts a server, lets it settle for 2 s without
# load, prints "NAME: R MB resident (A MB anonymous)" and stops it.
idle_rss() {
  local name=$1
  shift
  "$@" 2> "$work/idle-$name.log" &
  local pid=$!
  pids+=($pid)
  sleep 2
  awk -v n="$name" '/^VmRSS:/ {r = $2} /^RssAnon:/ {a = $2}
    END { printf "%s: %.1f MB resident (%.1f MB anonymous)", n, r / 1024, a / 1024 }' "/proc/$pid/status"
  kill "$pid"
}

: > "$work/results.tsv"
echo "== HTTP: ${RUNS} runs of ${SECONDS_PER_RUN}s each, median by req/s (wrk -t2 -c64 unless noted)"
export BENCH_GET BENCH_PREFIX BENCH_FORM

printf 'general:\n  port: 0\nstorage:\n  directory: %s/lucid-idle\n' "$work" > "$work/lucid-idle.yml"
idle_note="Idle, default config: $(idle_rss lucid target/release/lucid --config "$work/lucid-idle.yml" server); \
$(idle_rss tiny_http-ceiling target/release/examples/http_ceiling --port 0)"
echo "  $idle_note"

BENCH_GET=/api/kv/bench-hot BENCH_PREFIX=/api/kv/bench- BENCH_FORM=0
start_lucid interval
measure lucid W1-get get.lua 64 2 "http://127.0.0.1:$PORT"
measure lucid-interval W2-put put.lua 64 2 "http://127.0.0.1:$PORT"
measure lucid W3-get90-put10 mix.lua 64 2 "http://127.0.0.1:$PORT"
# The same node with 10 watchers of every key: each PUT is sent to all 10.
start_watchers "$PORT" 10
measure lucid-10-watchers W1-get get.lua 64 2 "http://127.0.0.1:$PORT"
measure lucid-interval-10-watchers W2-put put.lua 64 2 "http://127.0.0.1:$PORT"
watch_note="W1/W2 with 10 watchers: $(watchers "$PORT") of 10 still connected at the end (a watcher that falls behind is dropped)"
echo "  $watch_note"

start_lucid interval encrypted
measure lucid-encrypted W1-get get.lua 64 2 "http://127.0.0.1:$PORT"
measure lucid-encrypted W2-put put.lua 64 2 "http://127.0.0.1:$PORT"

start_lucid always
before=$(fsyncs "$PORT")
measure lucid-always W2-put put.lua 64 2 "http://127.0.0.1:$PORT"
after=$(fsyncs "$PORT")
w2_puts=$(awk -F'\t' '$1 == "lucid-always" && $2 == "W2-put" {print $3 * '"$SECONDS_PER_RUN"' * '"$RUNS"'}' "$work/results.tsv")
measure lucid-always W4-put-1conn put.lua 1 1 "http://127.0.0.1:$PORT"
fsync_note=$(awk -v f="$((${after%.*} - ${before%.*}))" -v p="$w2_puts" -v s="$((SECONDS_PER_RUN * RUNS))" \
  'BEGIN { printf "W2 with sync=always: %.0f fsyncs/s, %.1f writes per fsync (approximate: median req/s x time)", f / s, p / f }')
echo "  $fsync_note"

BENCH_GET=/ BENCH_PREFIX=/bench- BENCH_FORM=0
start_ceiling
measure tiny_http-ceiling W1-get get.lua 64 2 "http://127.0.0.1:$PORT"
measure tiny_http-ceiling W2-put put.lua 64 2 "http://127.0.0.1:$PORT"
start_nginx
measure nginx W1-get get.lua 64 2 "http://127.0.0.1:$PORT"

BENCH_GET=/v2/keys/bench-hot BENCH_PREFIX=/v2/keys/bench- BENCH_FORM=1
start_etcd
measure etcd-3.4-v2 W1-get get.lua 64 2 "http://127.0.0.1:$PORT"
measure etcd-3.4-v2 W2-put put.lua 64 2 "http://127.0.0.1:$PORT"
measure etcd-3.4-v2 W3-get90-put10 mix.lua 64 2 "http://127.0.0.1:$PORT"
measure etcd-3.4-v2 W4-put-1conn put.lua 1 1 "http://127.0.0.1:$PORT"

# Ratios of Lucid to its peers, measured in this same run.
ratio() { # ratio TARGET_A WORKLOAD_A TARGET_B WORKLOAD_B COLUMN(3=req/s, 5=p99)
  awk -F'\t' -v a="$1" -v wa="$2" -v b="$3" -v wb="$4" -v c="$5" '
    $1 == a && $2 == wa {x = $c} $1 == b && $2 == wb {y = $c}
    END { if (y > 0) printf "%.2f", x / y; else printf "n/a" }' "$work/results.tsv"
}
ratios=$(cat <<EOF
| W1 GET req/s, Lucid / tiny_http ceiling | $(ratio lucid W1-get tiny_http-ceiling W1-get 3) | >= 0.9 |
| W1 GET p99, Lucid / tiny_http ceiling | $(ratio lucid W1-get tiny_http-ceiling W1-get 5) | <= 1.5 |
| W1 GET req/s, 10 watchers / none | $(ratio lucid-10-watchers W1-get lucid W1-get 3) | >= 0.9 |
| W2 PUT (sync=interval) req/s, 10 watchers / none | $(ratio lucid-interval-10-watchers W2-put lucid-interval W2-put 3) | |
| W1 GET req/s, Lucid / nginx | $(ratio lucid W1-get nginx W1-get 3) | |
| W1 GET req/s, Lucid / etcd | $(ratio lucid W1-get etcd-3.4-v2 W1-get 3) | |
| W2 PUT (sync=interval) req/s, Lucid / tiny_http ceiling | $(ratio lucid-interval W2-put tiny_http-ceiling W2-put 3) | >= 0.8 |
| W2 PUT (sync=always) req/s, Lucid / etcd | $(ratio lucid-always W2-put etcd-3.4-v2 W2-put 3) | >= 2.5 |
| W3 90/10 req/s, Lucid / etcd | $(ratio lucid W3-get90-put10 etcd-3.4-v2 W3-get90-put10 3) | |
| W4 PUT one connection (sync=always) req/s, Lucid / etcd | $(ratio lucid-always W4-put-1conn etcd-3.4-v2 W4-put-1conn 3) | >= 3 |
| W1 GET req/s, encrypted / plain | $(ratio lucid-encrypted W1-get lucid W1-get 3) | >= 0.85 |
| W2 PUT (sync=interval) req/s, encrypted / plain | $(ratio lucid-encrypted W2-put lucid-interval W2-put 3) | >= 0.85 |
EOF
)
echo "== Lucid / peer ratios"
echo "$ratios" | awk -F'|' '{printf "  %-60s %s  (target %s)\n", $2, $3, $4}'

echo "== Storage engine"
storage=$(cargo bench --quiet --bench storage 2>/dev/null)
echo "$storage"

mkdir -p docs
{
  printf 'target\tworkload\treq_per_s\tp50_ms\tp99_ms\n'
  cat "$work/results.tsv"
} > docs/BENCHMARKS.tsv
{
  echo "# Benchmarks"
  echo
  echo "Generated by \`bench/run.sh\` on $(date -u +%Y-%m-%d). Machine: $(nproc) cores,"
  echo "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)."
  echo "Servers pinned to CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; $RUNS runs of ${SECONDS_PER_RUN} s, median by req/s."
  echo "Absolute numbers drift on this shared machine; the ratios, measured in one run, are what to compare."
  echo
  echo "## HTTP (100-byte values)"
  echo
  echo "| target | workload | req/s | p50 ms | p99 ms |"
  echo "| --- | --- | ---: | ---: | ---: |"
  awk -F'\t' '{printf "| %s | %s | %.0f | %.3f | %.3f |\n", $1, $2, $3, $4, $5}' "$work/results.tsv"
  echo
  echo "W1: GET one key (-c64). W2: PUT random keys of 100,000 (-c64). W3: 90% GET, 10% PUT (-c64)."
  echo "W4: PUT on one connection. $fsync_note."
  echo "lucid-encrypted: sync=interval with encryption at rest on (XChaCha20-Poly1305 per record)."
  echo "$watch_note."
  echo "$idle_note (file-backed pages are the mapped binary and libc)."
  echo
  echo "## Lucid / peer"
  echo
  echo "| ratio | measured | target |"
  echo "| --- | ---: | --- |"
  echo "$ratios"
  echo
  echo "## Storage engine (\`cargo bench --bench storage\`)"
  echo
  echo '```text'
  echo "$storage"
  echo '```'
} > docs/BENCHMARKS.md
echo "== wrote docs/BENCHMARKS.md and docs/BENCHMARKS.tsv"
