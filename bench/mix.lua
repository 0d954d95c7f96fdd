-- W3: 90% GET of one existing value, 10% PUT to random keys of 100,000.
-- Same environment as get.lua and put.lua.
local get_path = os.getenv("BENCH_GET") or "/api/kv/bench-hot"
local prefix = os.getenv("BENCH_PREFIX") or "/api/kv/bench-"
local value = string.rep("v", 100)
local body, headers = value, {}
if os.getenv("BENCH_FORM") == "1" then
  body = "value=" .. value
  headers["Content-Type"] = "application/x-www-form-urlencoded"
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  if math.random(1, 10) == 1 then
    return wrk.format("PUT", prefix .. math.random(0, 99999), headers, body)
  end
  return wrk.format("GET", get_path)
end
