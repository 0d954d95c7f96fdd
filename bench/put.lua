-- W2/W4/W5: PUT values to random keys.
-- BENCH_PREFIX: path before the key number; BENCH_SIZE: the value's size in
-- bytes (100 unless set); BENCH_KEYS: how many keys (100,000 unless set);
-- BENCH_FORM=1: send the value as a form field (etcd's v2 API), else as the
-- raw body.
local prefix = os.getenv("BENCH_PREFIX") or "/api/kv/bench-"
local value = string.rep("v", tonumber(os.getenv("BENCH_SIZE") or "100"))
local keys = tonumber(os.getenv("BENCH_KEYS") or "100000")
wrk.method = "PUT"
if os.getenv("BENCH_FORM") == "1" then
  wrk.body = "value=" .. value
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
else
  wrk.body = value
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  return wrk.format(nil, prefix .. math.random(0, keys - 1))
end
