-- W1: GET one existing 100-byte value. BENCH_GET: its path.
wrk.method = "GET"
wrk.path = os.getenv("BENCH_GET") or "/api/kv/bench-hot"
