-- W2/W4: PUT 100-byte values to random keys of 100,000.
-- BENCH_PREFIX: path before the key number; BENCH_FORM=1: send the value as
-- a form field (etcd's v2 API), else as the raw body.
local prefix = os.getenv("BENCH_PREFIX") or "/api/kv/bench-"
local value = string.rep("v", 100)
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
  return wrk.format(nil, prefix .. math.random(0, 99999))
end
