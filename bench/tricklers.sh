#!/usr/bin/env bash
# A normal client's PUT and GET latency on an idle node, then with 64
# authenticated trickling clients connected (16 each: Expect: 100-continue
# bodies at a byte a second, 16 MiB PUTs trickling their last KiB past the
# read-ahead budget, chunked bodies, heads a byte a second); see
# `latency_beside_authenticated_tricklers` in tests/hostile_clients.rs.
# Takes about a minute; the node listens on 127.0.0.1 and stops by itself.
#
# Usage: bench/tricklers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --test hostile_clients -- --ignored --nocapture \
    --exact latency_beside_authenticated_tricklers
