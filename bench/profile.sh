#!/usr/bin/env bash
# Where Lucid's CPU per request goes, in figures that hold on a shared,
# noisy machine:
#  1. instructions per keep-alive GET and per PUT (sync: interval) of the
#     release build, counted by valgrind's callgrind over every thread of
#     the process: two runs of N1 and N2 requests on one connection, and
#     (I2 - I1) / (N2 - N1), so start-up and stop cancel out. User-space
#     instructions only: the kernel's share (system calls, thread
#     switches) is what part 2 counts.
#  2. under wrk -c64 (W1 GET, server on CPU 0, wrk on CPU 1): context
#     switches and CPU time per request, from perf's software counters,
#     for Lucid and for nginx answering a fixed 100-byte body.
#
# Usage: bench/profile.sh                     (this tree)
#        PROFILE_BASELINE=REV bench/profile.sh (REV's build first, then this
#                                               tree's, in the same run)
# Prints its figures and puts them in docs/BENCHMARKS.md (in the part
# bench/run.sh keeps).
# Installs valgrind, linux-perf, wrk and nginx from Debian's packages if
# they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

N1=${PROFILE_N1:-2000}
N2=${PROFILE_N2:-6000}
SECONDS_UNDER_LOAD=${PROFILE_SECONDS:-4}

need valgrind valgrind
need perf linux-perf
need wrk wrk
need nginx nginx-light

work=$(mktemp -d)
chmod 711 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --quiet --release --bin lucid
builds=("this-tree target/release/lucid")
if [ -n "${PROFILE_BASELINE:-}" ]; then
  rev=$(git rev-parse --verify "$PROFILE_BASELINE^{commit}")
  git worktree add --quiet --detach "$work/baseline" "$rev"
  (cd "$work/baseline" && CARGO_TARGET_DIR="$work/baseline-target" cargo build --quiet --release --bin lucid)
  git worktree remove --force "$work/baseline"
  builds=("baseline-${rev:0:7} $work/baseline-target/release/lucid" "${builds[@]}")
fi

# node_config NAME: a config for a node on a free port in $work/NAME.
node_config() {
  printf 'general:\n  port: 0\nstorage:\n  directory: %s/%s\n  sync: interval\n' \
    "$work" "$1" > "$work/$1.yml"
}

# requests PORT N METHOD: N requests on one keep-alive connection (curl
# reuses it across the URLs of one command line).
requests() {
  if [ "$3" = PUT ]; then
    curl -s -X PUT --data-binary "$(printf 'v%.0s' $(seq 1 100))" \
      "http://127.0.0.1:$1/api/kv/profile-[1-$2]" > /dev/null
  else
    # The same URL N times: curl's config file, one `url` a line.
    yes "url = \"http://127.0.0.1:$1/api/kv/profile-hot\"" | head -n "$2" > "$work/urls"
    curl -s -K "$work/urls" > /dev/null
  fi
}

# instructions BINARY METHOD N: user-space instructions of a node that
# answered N requests of METHOD (and one PUT to have a value to GET).
instructions() {
  local name=callgrind-$RANDOM port total
  node_config "$name"
  valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" \
    "$1" --config "$work/$name.yml" server 2> "$work/$name.log" > /dev/null &
  local pid=$!
  pids+=($pid)
  port=$(listening_port "$work/$name.log")
  curl -s -o /dev/null -X PUT --data-binary "$(printf 'v%.0s' $(seq 1 100))" \
    "http://127.0.0.1:$port/api/kv/profile-hot"
  requests "$port" "$3" "$2"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$work/$name.out")
  echo "$total"
}

# cpu_under_load NAME PORT PID PATH: wrk -c64 GETs of PATH; prints
# "NAME req/s, context switches and CPU us per request".
cpu_under_load() {
  local out stat
  out=$(mktemp -p "$work")
  BENCH_GET=$4 taskset -c 1 wrk -t2 -c64 -d"$((SECONDS_UNDER_LOAD + 2))s" -s bench/get.lua \
    "http://127.0.0.1:$2" > "$out" &
  local wrk=$!
  sleep 1
  stat=$(perf stat -x, -e context-switches,task-clock -p "$3" -- sleep "$SECONDS_UNDER_LOAD" 2>&1)
  wait "$wrk"
  awk -F, -v n="$1" -v s="$SECONDS_UNDER_LOAD" -v r="$(awk '/^Requests\/sec:/ {print $2}' "$out")" '
    $3 == "context-switches" {cs = $1} $3 == "task-clock" {ms = $1}
    END { printf "  %-22s %9.0f req/s  %5.2f context switches  %5.1f us CPU per request\n",
      n, r, cs / (r * s), ms * 1000 / (r * s) }' <<< "$stat"
}

{
echo "== Instructions per request (callgrind; one keep-alive connection; $N1 and $N2 requests)"
for build in "${builds[@]}"; do
  read -r name binary <<< "$build"
  for method in GET PUT; do
    i1=$(instructions "$binary" "$method" "$N1")
    i2=$(instructions "$binary" "$method" "$N2")
    awk -v n="$name" -v m="$method" -v a="$i1" -v b="$i2" -v n1="$N1" -v n2="$N2" \
      'BEGIN { printf "  %-22s %-4s %8.0f instructions per request\n", n, m, (b - a) / (n2 - n1) }'
  done
done

echo "== Under load: W1 GET, wrk -t2 -c64, ${SECONDS_UNDER_LOAD} s (server on CPU 0, wrk on CPU 1)"
for build in "${builds[@]}"; do
  read -r name binary <<< "$build"
  node_config "load-$name"
  taskset -c 0 "$binary" --config "$work/load-$name.yml" server 2> "$work/load-$name.log" > /dev/null &
  pid=$!
  pids+=($pid)
  port=$(listening_port "$work/load-$name.log")
  curl -s -o /dev/null -X PUT --data-binary "$(printf 'v%.0s' $(seq 1 100))" \
    "http://127.0.0.1:$port/api/kv/bench-hot"
  cpu_under_load "$name" "$port" "$pid" /api/kv/bench-hot
  kill "$pid"
done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nginx_conf "$work/nginx" "$port"
taskset -c 0 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2> "$work/nginx/stderr" &
pids+=($!)
sleep 1
cpu_under_load nginx "$port" "$(pgrep -P "${pids[-1]}" | head -1)" /
} > "$work/figures.txt"
cat "$work/figures.txt"
write_doc_section "CPU per request (\`bench/profile.sh\`), $(date -u +%Y-%m-%d)" "$work/figures.txt"
