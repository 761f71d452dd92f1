-- wrk script: binb-token for a random one of BENCH_CONNECTIONS seeded connections.
local token = os.getenv("BENCH_TOKEN")
local count = tonumber(os.getenv("BENCH_CONNECTIONS") or "10000")
local headers = { ["Authorization"] = "Bearer " .. token }

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed)
end

function request()
  return wrk.format("GET", "/app-" .. math.random(0, count - 1) .. "/bench/binb-token", headers)
end
