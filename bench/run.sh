#!/usr/bin/env bash
# Lucid's benchmark suite: Lucid side by side with the tiny_http ceiling
# (examples/http_ceiling.rs), nginx answering a fixed 100-byte body, and
# etcd 3.4's v2 HTTP API, in one run on this machine; then idle memory and
# the storage engine benchmark. Prints one table and writes
# docs/BENCHMARKS.md and docs/BENCHMARKS.tsv.
#
# Usage: bench/run.sh            (BENCH_SECONDS=10 BENCH_RUNS=3 by default)
#        BENCH_W5_ONLY=1 bench/run.sh   (W5 alone, printed, docs untouched)
#        BENCH_BASELINE=REV bench/run.sh  (this tree against git revision REV:
#                                         Lucid's rows, before and after, in
#                                         the same rounds; printed, docs untouched)
#
# W5 times GET and PUT of values from 16 B to 1 MiB (BENCH_W5_SECONDS=3 per
# run, on one connection and at -c64), with nginx serving static files of
# the same sizes as the reference for GET, and etcd where it takes the size.
#
# Every server listens on 127.0.0.1, is pinned to CPU 0 (wrk runs on CPU 1),
# and is stopped by PID when the script ends. All servers start first; then
# every measurement runs once per round, RUNS rounds, with only the server
# under load running (the others are paused with SIGSTOP), once that server
# has gone idle (a compaction left by its previous run has finished). So a
# peer and Lucid are measured minutes apart at most, under the same
# conditions, and the medians' ratios hold even while the shared machine's
# speed drifts.
# Installs wrk, nginx, etcd-server and musl-tools from Debian's packages and
# the x86_64 musl target with rustup if they are missing (needs root).
# Besides req/s and latency, each row reports the server's CPU time per
# request (user + system, from /proc), steadier than req/s on a shared
# machine and the figure to compare when a ratio falls short.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
RUNS=${BENCH_RUNS:-3}
SERVER_CPU=0
CLIENT_CPU=1
MUSL=x86_64-unknown-linux-musl

need wrk wrk
need nginx nginx-light
need etcd etcd-server
need curl curl
need musl-gcc musl-tools
rustup target list --installed | grep -q "^$MUSL\$" || rustup target add "$MUSL"

cargo build --quiet --release --bin lucid --example http_ceiling
# The static build as shipped to boards (cross/build.sh), for idle memory,
# and the storage engine benchmark, built now so that a build error stops
# the run before its measurements rather than after them.
if [ -z "${BENCH_W5_ONLY:-}${BENCH_BASELINE:-}" ]; then
  cargo build --quiet --profile edge --target "$MUSL" --bin lucid --example http_ceiling
  cargo bench --quiet --bench storage --no-run
fi

work=$(mktemp -d)
# nginx's worker runs as another user when the script runs as root: it must
# be able to reach the files W5 serves.
chmod 711 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
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

# Servers by name: their PID, URL and the paths the wrk scripts use.
declare -A PID URL GET_PATH PREFIX FORM BODY_SIZE KEYS

# start_lucid NAME SYNC [encrypted] [no-compaction]: starts Lucid with the
# given sync mode (with encryption at rest; without background compaction,
# to show its share of a write's cost) and stores one 100-byte value for W1.
start_lucid() {
  local name=$1 sync=$2 extra="" port option
  for option in "${@:3}"; do
    case $option in
      encrypted)
        head -c 32 /dev/urandom > "$work/$name.key"
        chmod 600 "$work/$name.key"
        extra+="encryption: {enabled: true, key_file: $work/$name.key}"$'\n'
        ;;
      no-compaction) extra+="compaction: {dead_ratio: 1}"$'\n' ;;
      *) echo "start_lucid: unknown option $option" >&2; exit 1 ;;
    esac
  done
  printf 'general:\n  port: 0\nstorage:\n  directory: %s/%s\n  sync: %s\n%s\n' \
    "$work" "$name" "$sync" "$extra" > "$work/$name.yml"
  taskset -c $SERVER_CPU "${LUCID_BINARY:-target/release/lucid}" --config "$work/$name.yml" server \
    2> "$work/$name.log" &
  PID[$name]=$!
  pids+=($!)
  port=$(listening_port "$work/$name.log")
  URL[$name]="http://127.0.0.1:$port"
  GET_PATH[$name]=/api/kv/bench-hot PREFIX[$name]=/api/kv/bench- FORM[$name]=0
  curl -s -X PUT --data-binary "$(printf 'v%.0s' $(seq 1 100))" "${URL[$name]}/api/kv/bench-hot" >/dev/null
}

start_ceiling() {
  local port
  port=$(free_port)
  taskset -c $SERVER_CPU target/release/examples/http_ceiling --port "$port" 2> "$work/ceiling.log" &
  PID[tiny_http-ceiling]=$!
  pids+=($!)
  URL[tiny_http-ceiling]="http://127.0.0.1:$port"
  GET_PATH[tiny_http-ceiling]=/ PREFIX[tiny_http-ceiling]=/bench- FORM[tiny_http-ceiling]=0
  wait_for "${URL[tiny_http-ceiling]}/"
}

start_nginx() {
  local port
  port=$(free_port)
  nginx_conf "$work/nginx" "$port"
  taskset -c $SERVER_CPU nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2> "$work/nginx/stderr" &
  PID[nginx]=$!
  pids+=($!)
  URL[nginx]="http://127.0.0.1:$port"
  GET_PATH[nginx]=/ PREFIX[nginx]=/bench- FORM[nginx]=0
  wait_for "${URL[nginx]}/"
}

start_etcd() {
  local port peer name=etcd-3.4-v2
  port=$(free_port)
  peer=$(free_port)
  taskset -c $SERVER_CPU etcd --name bench --data-dir "$work/etcd" --enable-v2=true \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" > "$work/etcd.log" 2>&1 &
  PID[$name]=$!
  pids+=($!)
  URL[$name]="http://127.0.0.1:$port"
  GET_PATH[$name]=/v2/keys/bench-hot PREFIX[$name]=/v2/keys/bench- FORM[$name]=1
  wait_for "${URL[$name]}/version"
  curl -s -X PUT -d "value=$(printf 'v%.0s' $(seq 1 100))" "${URL[$name]}/v2/keys/bench-hot" >/dev/null
}

metric() { # metric SERVER NAME: a value from Lucid's /metrics
  curl -s "${URL[$1]}/metrics" | awk -v n="$2" '$1 == n {print $2}'
}

# start_watchers SERVER N: N Server-Sent Events watchers of every key (curl,
# on the client CPU, discarding the events), stopped with the rest.
start_watchers() {
  for _ in $(seq 1 "$2"); do
    taskset -c $CLIENT_CPU curl -s -N -o /dev/null "${URL[$1]}/api/watch" &
    pids+=($!)
  done
  for _ in $(seq 1 300); do
    [ "$(metric "$1" lucid_watchers)" = "$2" ] && return 0
    sleep 0.1
  done
  echo "the $2 watchers did not connect" >&2
  exit 1
}

# to_ms "1.45ms" | "812.00us" | "1.02s" -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}

# Measurements, in the order each round runs them:
# "ROW-NAME SERVER WORKLOAD SCRIPT CONNECTIONS THREADS"
# Rows compared with each other run close together (Lucid, encrypted Lucid,
# the ceiling and Lucid with watchers for W1 and W2; Lucid and etcd for W2
# with sync=always, W3 and W4), so the shared machine's drift from one
# minute to the next weighs little on the ratios.
MEASUREMENTS=(
  "lucid lucid W1-get get.lua 64 2"
  "lucid-encrypted lucid-encrypted W1-get get.lua 64 2"
  "tiny_http-ceiling tiny_http-ceiling W1-get get.lua 64 2"
  "lucid-10-watchers lucid-watched W1-get get.lua 64 2"
  "lucid-interval lucid W2-put put.lua 64 2"
  "lucid-encrypted lucid-encrypted W2-put put.lua 64 2"
  "tiny_http-ceiling tiny_http-ceiling W2-put put.lua 64 2"
  "lucid-interval-10-watchers lucid-watched W2-put put.lua 64 2"
  "lucid-no-compaction lucid-no-compaction W2-put put.lua 64 2"
  "lucid-encrypted-no-compaction lucid-encrypted-no-compaction W2-put put.lua 64 2"
  "lucid lucid W3-get90-put10 mix.lua 64 2"
  "etcd-3.4-v2 etcd-3.4-v2 W3-get90-put10 mix.lua 64 2"
  "lucid-always lucid-always W2-put put.lua 64 2"
  "etcd-3.4-v2 etcd-3.4-v2 W2-put put.lua 64 2"
  "lucid-always lucid-always W4-put-1conn put.lua 1 1"
  "etcd-3.4-v2 etcd-3.4-v2 W4-put-1conn put.lua 1 1"
  "tiny_http-ceiling tiny_http-ceiling W4-put-1conn put.lua 1 1"
  "etcd-3.4-v2 etcd-3.4-v2 W1-get get.lua 64 2"
  "nginx nginx W1-get get.lua 64 2"
)

# cpu_ticks PID: user and system CPU time (clock ticks) of PID and its
# children (nginx's worker), threads that ended included.
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# settle PID: waits (at most about 30 s) until the server is idle, under 5%
# of a core over 1.2 s (longer than Lucid's compaction check, once a
# second), so background work its previous run left (a compaction, say) is
# not counted in the next one.
settle() {
  local before after
  for _ in $(seq 1 25); do
    before=$(cpu_ticks "$1")
    sleep 1.2
    after=$(cpu_ticks "$1")
    [ $(( (after - before) * 100 )) -le $(( 6 * $(getconf CLK_TCK) )) ] && return 0
  done
  echo "warning: server $1 still busy before a run" >&2
}

# measure_once ROW SERVER WORKLOAD SCRIPT CONNECTIONS THREADS: one wrk run
# against SERVER alone (every other server paused); appends
# "row workload req/s p50 p99 cpu" to the raw results, cpu being the
# server's CPU time (user + system) per request in microseconds.
measure_once() {
  local row=$1 server=$2 workload=$3 script=$4 connections=$5 threads=$6 out req p50 p99
  local ticks_before cpu
  for name in "${!PID[@]}"; do [ "$name" = "$server" ] || kill -STOP "${PID[$name]}"; done
  kill -CONT "${PID[$server]}"
  settle "${PID[$server]}"
  ticks_before=$(cpu_ticks "${PID[$server]}")
  out=$(BENCH_GET=${GET_PATH[$server]} BENCH_PREFIX=${PREFIX[$server]} BENCH_FORM=${FORM[$server]} \
    BENCH_SIZE=${BODY_SIZE[$server]:-100} BENCH_KEYS=${KEYS[$server]:-100000} \
    taskset -c $CLIENT_CPU wrk -t"$threads" -c"$connections" -d"${SECONDS_PER_RUN}s" --latency \
    -s "bench/$script" "${URL[$server]}")
  cpu=$(awk -v t="$(( $(cpu_ticks "${PID[$server]}") - ticks_before ))" -v hz="$(getconf CLK_TCK)" \
    -v n="$(awk '/requests in/ {print $1}' <<< "$out")" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  req=$(awk '/^Requests\/sec:/ {print $2}' <<< "$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<< "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<< "$out")")
  if grep -q "Non-2xx" <<< "$out"; then
    echo "$row $workload got error answers, so it measured nothing: $(grep Non-2xx <<< "$out")" >&2
    exit 1
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$workload" "$req" "$p50" "$p99" "$cpu" >> "${RAW:-$work/raw.tsv}"
  printf '    %-28s %-14s %10.0f req/s  p99 %7.3f ms  cpu %5.1f us/req\n' "$row" "$workload" "$req" "$p99" "$cpu"
}

# idle_rss NAME COMMAND...: starts a server, lets it settle for 2 s without
# load, prints "NAME R MB (A MB anonymous)" and stops it.
idle_rss() {
  local name=$1
  shift
  "$@" 2> "$work/idle-$name.log" &
  local pid=$!
  pids+=($pid)
  sleep 2
  awk -v n="$name" '/^VmRSS:/ {r = $2} /^RssAnon:/ {a = $2}
    END { printf "%s %.1f MB (%.1f MB anonymous)", n, r / 1024, a / 1024 }' "/proc/$pid/status"
  kill "$pid"
}

# W5: values of every size a board sends, GET and PUT, on one connection
# and at -c64. Each size has names of its own ("lucid@SIZE", ...) that share
# their server's process and differ in the paths and body size they use.
W5_SIZES=(16 1024 4096 16384 65536 262144 1048576)
W5_SECONDS=${BENCH_W5_SECONDS:-3}
W5_RUNS=${BENCH_W5_RUNS:-$RUNS}
W5_CONNECTIONS=("1 1" "64 2")
W5_MEASUREMENTS=()

size_label() {
  awk -v n="$1" 'BEGIN { if (n >= 1048576) printf "%dMiB", n / 1048576;
    else if (n >= 1024) printf "%dKiB", n / 1024; else printf "%dB", n }'
}

# alias_server SERVER NAME GET_PATH PUT_PREFIX SIZE: NAME is SERVER with
# other paths and values of SIZE bytes (100 keys to PUT to).
alias_server() {
  PID[$2]=${PID[$1]} URL[$2]=${URL[$1]} FORM[$2]=${FORM[$1]}
  GET_PATH[$2]=$3 PREFIX[$2]=$4 BODY_SIZE[$2]=$5 KEYS[$2]=100
}

# prepare_w5: the values to GET (a file per size for nginx, a key per size
# for Lucid and etcd) and the list of W5 measurements. etcd is measured at
# the sizes it accepts.
prepare_w5() {
  local size label etcd=etcd-3.4-v2 status conns
  mkdir -p "$work/nginx/w5"
  for size in "${W5_SIZES[@]}"; do
    label=$(size_label "$size")
    head -c "$size" /dev/zero | tr '\0' v > "$work/nginx/w5/$size"
    { printf 'value='; cat "$work/nginx/w5/$size"; } > "$work/w5-form-$size"
    alias_server lucid "lucid@$size" "/api/kv/w5-get-$size" "/api/kv/w5-put-$size-" "$size"
    alias_server nginx "nginx@$size" "/w5/$size" "/w5/put-" "$size"
    alias_server "$etcd" "etcd@$size" "/v2/keys/w5-get-$size" "/v2/keys/w5-put-$size-" "$size"
    curl -sf -o /dev/null -X PUT --data-binary "@$work/nginx/w5/$size" "${URL[lucid]}/api/kv/w5-get-$size"
    status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary "@$work/w5-form-$size" \
      -H 'Content-Type: application/x-www-form-urlencoded' "${URL[$etcd]}/v2/keys/w5-get-$size")
    for conns in "${W5_CONNECTIONS[@]}"; do
      read -r c t <<< "$conns"
      W5_MEASUREMENTS+=("lucid lucid@$size W5-get-$label-c$c get.lua $c $t")
      W5_MEASUREMENTS+=("nginx nginx@$size W5-get-$label-c$c get.lua $c $t")
      [[ $status == 2* ]] && W5_MEASUREMENTS+=("$etcd etcd@$size W5-get-$label-c$c get.lua $c $t")
      W5_MEASUREMENTS+=("lucid lucid@$size W5-put-$label-c$c put.lua $c $t")
      [[ $status == 2* ]] && W5_MEASUREMENTS+=("$etcd etcd@$size W5-put-$label-c$c put.lua $c $t")
    done
    [[ $status == 2* ]] || echo "  etcd refused a $label value ($status): not measured at that size"
  done
}

# run_w5: W5_RUNS rounds of every W5 measurement; the median of each row by
# req/s goes to $work/w5.tsv as "row workload req/s p50 p99 cpu MB/s".
run_w5() {
  local measurement row workload size
  RAW=$work/w5-raw.tsv
  : > "$RAW"
  echo "== W5: ${W5_RUNS} rounds of ${W5_SECONDS}s runs, values of 16 B to 1 MiB"
  for round in $(seq 1 "$W5_RUNS"); do
    echo "  round $round of $W5_RUNS"
    for measurement in "${W5_MEASUREMENTS[@]}"; do
      # shellcheck disable=SC2086 # the fields are words on purpose
      SECONDS_PER_RUN=$W5_SECONDS measure_once $measurement
    done
  done
  unset RAW
  for name in "${!PID[@]}"; do kill -CONT "${PID[$name]}"; done
  : > "$work/w5.tsv"
  for measurement in "${W5_MEASUREMENTS[@]}"; do
    read -r row server workload _ <<< "$measurement"
    size=${BODY_SIZE[$server]}
    awk -F'\t' -v r="$row" -v w="$workload" '$1 == r && $2 == w' "$work/w5-raw.tsv" \
      | sort -t$'\t' -k3 -n | awk -v n="$W5_RUNS" 'NR == int((n + 1) / 2)' \
      | awk -F'\t' -v OFS='\t' -v s="$size" '{ print $0, sprintf("%.1f", $3 * s / 1e6) }' >> "$work/w5.tsv"
  done
}

# w5_report: the W5 table and its targets, as Markdown.
w5_report() {
  echo "| workload | target | req/s | p50 ms | p99 ms | MB/s | server CPU µs/req |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
  awk -F'\t' '{printf "| %s | %s | %.0f | %.3f | %.3f | %.1f | %.1f |\n", $2, $1, $3, $4, $5, $7, $6}' "$work/w5.tsv"
  echo
  echo "| W5 target | measured | holds |"
  echo "| --- | --- | --- |"
  local size label c
  for c in 1 64; do
    for size in "${W5_SIZES[@]}"; do
      label=$(size_label "$size")
      awk -F'\t' -v w="W5-get-$label-c$c" -v l="$label" -v c="$c" '
        $2 == w && $1 == "lucid" {x = $4} $2 == w && $1 == "nginx" {y = $4}
        END { printf "| GET %s -c%s p50 <= 1.5 x nginx + 0.1 ms | %.3f ms vs %.3f ms (limit %.3f) | %s |\n",
          l, c, x, y, 1.5 * y + 0.1, (x <= 1.5 * y + 0.1) ? "yes" : "no" }' "$work/w5.tsv"
    done
  done
  for c in 1 64; do
    awk -F'\t' -v w="W5-get-1MiB-c$c" -v c="$c" '
      $2 == w && $1 == "lucid" {x = $7} $2 == w && $1 == "nginx" {y = $7}
      END { printf "| GET 1 MiB -c%s MB/s >= 0.7 x nginx | %.1f vs %.1f (%.2f) | %s |\n",
        c, x, y, (y > 0 ? x / y : 0), (x >= 0.7 * y) ? "yes" : "no" }' "$work/w5.tsv"
  done
}

# BENCH_BASELINE=REV: Lucid's own rows, this tree ("after") against the
# release build of git revision REV ("before"), in the same rounds, each
# run with the other paused; prints the medians and their ratios.
if [ -n "${BENCH_BASELINE:-}" ]; then
  rev=$(git rev-parse --verify "$BENCH_BASELINE^{commit}")
  echo "== Building the baseline $rev (release)"
  git worktree add --quiet --detach "$work/baseline" "$rev"
  (cd "$work/baseline" && CARGO_TARGET_DIR="$work/baseline-target" cargo build --quiet --release --bin lucid)
  git worktree remove --force "$work/baseline"
  baseline_bin=$work/baseline-target/release/lucid
  BASELINE_ROWS=(
    "interval W1-get get.lua 64 2"
    "interval W2-put put.lua 64 2"
    "interval W3-get90-put10 mix.lua 64 2"
    "encrypted W1-get get.lua 64 2"
    "encrypted W2-put put.lua 64 2"
    "always W2-put put.lua 64 2"
    "always W4-put-1conn put.lua 1 1"
  )
  for kind in interval encrypted always; do
    options=()
    sync=$kind
    [ "$kind" = encrypted ] && options=(encrypted) && sync=interval
    start_lucid "after-$kind" "$sync" "${options[@]}"
    LUCID_BINARY=$baseline_bin start_lucid "before-$kind" "$sync" "${options[@]}"
  done
  echo "== Before ($rev) and after: ${RUNS} rounds of ${SECONDS_PER_RUN}s runs"
  : > "$work/raw.tsv"
  for round in $(seq 1 "$RUNS"); do
    echo "  round $round of $RUNS"
    for row in "${BASELINE_ROWS[@]}"; do
      read -r kind workload script connections threads <<< "$row"
      for side in before after; do
        measure_once "$side-$kind" "$side-$kind" "$workload" "$script" "$connections" "$threads"
      done
    done
  done
  for name in "${!PID[@]}"; do kill -CONT "${PID[$name]}"; done
  echo "== Medians (by req/s) and after / before"
  printf '  %-28s %10s %10s %6s %9s %9s %6s %9s %9s %6s\n' row "req/s bef" "req/s aft" ratio \
    "p99 bef" "p99 aft" ratio "cpu bef" "cpu aft" ratio
  for row in "${BASELINE_ROWS[@]}"; do
    read -r kind workload _ <<< "$row"
    for side in before after; do
      awk -F'\t' -v r="$side-$kind" -v w="$workload" '$1 == r && $2 == w' "$work/raw.tsv" \
        | sort -t$'\t' -k3 -n | awk -v n="$RUNS" 'NR == int((n + 1) / 2)' > "$work/$side.tsv"
    done
    paste "$work/before.tsv" "$work/after.tsv" | awk -F'\t' -v k="$kind $workload" '{
      printf "  %-28s %10.0f %10.0f %6.2f %9.3f %9.3f %6.2f %9.1f %9.1f %6.2f\n",
        k, $3, $9, $9 / $3, $5, $11, $11 / $5, $6, $12, $12 / $6 }'
  done
  exit 0
fi

if [ -n "${BENCH_W5_ONLY:-}" ]; then
  start_lucid lucid interval
  start_nginx
  start_etcd
  prepare_w5
  run_w5
  w5_report
  exit 0
fi

echo "== Idle resident memory (default config, no load)"
printf 'general:\n  port: 0\nstorage:\n  directory: %s/idle\n' "$work" > "$work/idle.yml"
idle_note="Idle resident memory, default config, no load. Release build (glibc, dynamic; \
file-backed pages are the mapped binary and libc): $(idle_rss lucid target/release/lucid \
--config "$work/idle.yml" server), $(idle_rss tiny_http-ceiling \
target/release/examples/http_ceiling --port 0). Static musl build as shipped to boards (edge \
profile): $(idle_rss lucid "target/$MUSL/edge/lucid" --config "$work/idle.yml" server), \
$(idle_rss tiny_http-ceiling "target/$MUSL/edge/examples/http_ceiling" --port 0)"
echo "  $idle_note"

echo "== Starting the servers"
start_lucid lucid interval
start_lucid lucid-watched interval
start_watchers lucid-watched 10
start_lucid lucid-encrypted interval encrypted
start_lucid lucid-no-compaction interval no-compaction
start_lucid lucid-encrypted-no-compaction interval encrypted no-compaction
start_lucid lucid-always always
start_ceiling
start_nginx
start_etcd

echo "== HTTP: ${RUNS} rounds of ${SECONDS_PER_RUN}s runs (wrk -t2 -c64 unless noted)"
: > "$work/raw.tsv"
fsyncs_before=$(metric lucid-always lucid_fsyncs_total)
for round in $(seq 1 "$RUNS"); do
  echo "  round $round of $RUNS"
  for measurement in "${MEASUREMENTS[@]}"; do
    # shellcheck disable=SC2086 # the fields are words on purpose
    measure_once $measurement
    if [ "$measurement" = "lucid-always lucid-always W2-put put.lua 64 2" ]; then
      fsyncs_after_w2=$(metric lucid-always lucid_fsyncs_total)
      fsync_seconds_after_w2=$(metric lucid-always lucid_fsync_seconds_total)
      w2_fsyncs=$(( ${w2_fsyncs:-0} + ${fsyncs_after_w2%.*} - ${fsyncs_before%.*} ))
    fi
    if [ "$measurement" = "lucid-always lucid-always W4-put-1conn put.lua 1 1" ]; then
      fsyncs_before=$(metric lucid-always lucid_fsyncs_total)
      w4_fsyncs=$(( ${w4_fsyncs:-0} + ${fsyncs_before%.*} - ${fsyncs_after_w2%.*} ))
      w4_fsync_seconds=$(awk -v a="${w4_fsync_seconds:-0}" -v s="$fsync_seconds_after_w2" \
        -v e="$(metric lucid-always lucid_fsync_seconds_total)" 'BEGIN { print a + e - s }')
    fi
  done
done
for name in "${!PID[@]}"; do kill -CONT "${PID[$name]}"; done

# The median run of each row by req/s.
: > "$work/results.tsv"
for measurement in "${MEASUREMENTS[@]}"; do
  read -r row _ workload _ <<< "$measurement"
  awk -F'\t' -v r="$row" -v w="$workload" '$1 == r && $2 == w' "$work/raw.tsv" \
    | sort -t$'\t' -k3 -n | awk -v n="$RUNS" 'NR == int((n + 1) / 2)' >> "$work/results.tsv"
done
watch_note="W1/W2 with 10 watchers: $(metric lucid-watched lucid_watchers) of 10 still connected at the end (a watcher that falls behind is dropped)"
w2_puts=$(awk -F'\t' '$1 == "lucid-always" && $2 == "W2-put" {s += $3} END {print s * '"$SECONDS_PER_RUN"'}' "$work/raw.tsv")
fsync_note=$(awk -v f="$w2_fsyncs" -v p="$w2_puts" -v s="$((SECONDS_PER_RUN * RUNS))" \
  'BEGIN { printf "W2 with sync=always: %.0f fsyncs/s, %.1f writes per fsync", f / s, p / f }')
# W4's floor: one request's round trip (the ceiling on one connection) plus
# one fdatasync, as long as the node's own fdatasyncs took.
fsync_note+=$(awk -v f="$w4_fsyncs" -v t="$w4_fsync_seconds" \
  'BEGIN { printf "; W4 with sync=always: %.0f us per fdatasync (mean of %d)", t / f * 1e6, f }')
# W4 against its floor, from this run's medians: req/s over 1 / (round
# trip + fdatasync).
w4_floor=$(awk -F'\t' -v f="$w4_fsyncs" -v t="$w4_fsync_seconds" '
  $1 == "tiny_http-ceiling" && $2 == "W4-put-1conn" {rt = 1 / $3}
  $1 == "lucid-always" && $2 == "W4-put-1conn" {x = $3}
  END { floor = 1 / (rt + t / f); printf "%.2f\t%.0f\t%.0f\t%.0f", x / floor, floor, rt * 1e6, t / f * 1e6 }' \
  "$work/results.tsv")
read -r w4_ratio w4_floor_rps w4_rt_us w4_fsync_us <<< "$w4_floor"
fsync_note+="; W4's floor: one round trip (${w4_rt_us} us, the ceiling's W4) plus one fdatasync (${w4_fsync_us} us) = ${w4_floor_rps} req/s"
echo "  $fsync_note"
echo "  $watch_note"
echo "== Medians"
awk -F'\t' '{printf "  %-28s %-16s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  cpu %5.1f us/req\n", $1, $2, $3, $4, $5, $6}' "$work/results.tsv"

# Ratios of Lucid to its peers, medians of this same run.
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
| W4 PUT one connection req/s, Lucid (sync=always) / tiny_http ceiling | $(ratio lucid-always W4-put-1conn tiny_http-ceiling W4-put-1conn 3) | |
| W4 PUT one connection (sync=always) req/s / its floor (one round trip + one fdatasync) | $w4_ratio | >= 0.9 |
| W1 GET req/s, encrypted / plain | $(ratio lucid-encrypted W1-get lucid W1-get 3) | >= 0.85 |
| W2 PUT (sync=interval) req/s, encrypted / plain | $(ratio lucid-encrypted W2-put lucid-interval W2-put 3) | >= 0.85 |
| W2 PUT (sync=interval) req/s, Lucid without compaction / tiny_http ceiling | $(ratio lucid-no-compaction W2-put tiny_http-ceiling W2-put 3) | |
| W2 PUT (sync=interval) req/s, encrypted / plain, both without compaction | $(ratio lucid-encrypted-no-compaction W2-put lucid-no-compaction W2-put 3) | |
EOF
)
echo "== Lucid / peer ratios"
echo "$ratios" | awk -F'|' '{printf "  %-60s %s  (target %s)\n", $2, $3, $4}'

prepare_w5
run_w5
w5=$(w5_report)
echo "$w5"

# The servers are done: the storage benchmark gets the machine to itself.
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

echo "== Storage engine"
if ! storage=$(cargo bench --quiet --bench storage 2> "$work/storage.err"); then
  cat "$work/storage.err" >&2
  echo "the storage engine benchmark failed; docs/BENCHMARKS.md was not written" >&2
  exit 1
fi
echo "$storage"

mkdir -p docs
{
  printf 'target\tworkload\treq_per_s\tp50_ms\tp99_ms\tcpu_us_per_req\n'
  cat "$work/results.tsv"
} > docs/BENCHMARKS.tsv
# The sections bench/replication.sh and bench/mqtt.sh wrote are kept.
kept=$(sed -n '/^<!-- kept by bench\/run.sh/,$p' docs/BENCHMARKS.md 2>/dev/null || true)
{
  echo "# Benchmarks"
  echo
  echo "Generated by \`bench/run.sh\` on $(date -u +%Y-%m-%d). Machine: $(nproc) cores,"
  echo "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)."
  echo "Servers pinned to CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU. Every row ran once per round, $RUNS rounds"
  echo "of ${SECONDS_PER_RUN} s, with only the server under load running (the others paused) and started"
  echo "once that server was idle (background work from its previous run finished); median by req/s."
  echo "Absolute numbers drift on this shared machine; the ratios, measured in one run, are what to compare."
  echo
  echo "## HTTP (100-byte values)"
  echo
  echo "| target | workload | req/s | p50 ms | p99 ms | server CPU µs/req |"
  echo "| --- | --- | ---: | ---: | ---: | ---: |"
  awk -F'\t' '{printf "| %s | %s | %.0f | %.3f | %.3f | %.1f |\n", $1, $2, $3, $4, $5, $6}' "$work/results.tsv"
  echo
  echo "W1: GET one key (-c64). W2: PUT random keys of 100,000 (-c64). W3: 90% GET, 10% PUT (-c64)."
  echo "W4: PUT on one connection (tiny_http-ceiling: the round trip alone, nothing stored). $fsync_note."
  echo "Server CPU: user + system time of the server's process (threads and child processes included)"
  echo "during the run, per request answered; unlike req/s it does not depend on the client's speed."
  echo "lucid-encrypted: sync=interval with encryption at rest on (XChaCha20-Poly1305 per record)."
  echo "-no-compaction: background compaction off (compaction.dead_ratio: 1), so a row shows what"
  echo "compaction adds to a write: copying about one live record per overwrite at the default"
  echo "dead_ratio 0.5 (an encrypted store moves its records unopened, with a new place tag each)."
  echo "$watch_note."
  echo
  echo "$idle_note."
  echo
  echo "## Lucid / peer"
  echo
  echo "| ratio | measured | target |"
  echo "| --- | ---: | --- |"
  echo "$ratios"
  echo
  echo "## W5: values of 16 B to 1 MiB"
  echo
  echo "GET of one existing value and PUT to 100 keys, $W5_RUNS rounds of $W5_SECONDS s, on one"
  echo "connection (-c1) and on 64 (-c64); nginx serves static files of the same sizes (the limit of"
  echo "this machine for HTTP/1.1), etcd's v2 API stores them as form values where it accepts the size."
  echo "MB/s counts the values' bytes only. Lucid checks each value's CRC on every read."
  echo
  echo "$w5"
  echo
  echo "## Storage engine (\`cargo bench --bench storage\`)"
  echo
  echo '```text'
  echo "$storage"
  echo '```'
  echo
  echo "$kept"
} > docs/BENCHMARKS.md
echo "== wrote docs/BENCHMARKS.md and docs/BENCHMARKS.tsv"
