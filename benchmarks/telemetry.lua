-- wrk script: binoculars reports from a simulated fleet, or single ticks, optionally paced.
--
-- Built on post.lua (answer checks and the BENCH_JSON line come from it). Environment,
-- besides post.lua's (set by benchmarks/telemetry.py through _common.run_wrk):
--   WRK_POST_LUA    path of post.lua
--   WRK_MODE        "telemetry": each request is one instance's report of 5 metrics to
--                   /apps/<app>/v1/metrics, apps and instances in turn; "tick": post.lua's
--                   fixed body to WRK_PATH
--   WRK_APPS, WRK_INSTANCES   the fleet: apps, and instances of each (100 and 1000)
--   WRK_OFFSET      report number to start at (so runs do not repeat each other)
--   WRK_DELAY_MS    pause before each request on each connection: pacing (0: none)
-- Use one wrk thread (-t1): the report counter is per thread.

dofile(assert(os.getenv("WRK_POST_LUA"), "WRK_POST_LUA is not set"))

local mode = os.getenv("WRK_MODE") or "telemetry"
local apps = tonumber(os.getenv("WRK_APPS") or "100")
local instances = tonumber(os.getenv("WRK_INSTANCES") or "1000")
local offset = tonumber(os.getenv("WRK_OFFSET") or "0")
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
local versions = {"v1.4.0", "v1.4.1", "v1.5.0", "v1.5.1"}

local post_init = init
function init(args)
  post_init(args)
  counter = 0
end

local function report(n)
  local app = n % apps
  local instance = math.floor(n / apps) % instances
  local tags = string.format(
    '{"instance_uuid":"%08x-0000-4000-8000-%012x","app_version":"%s"}',
    app, instance, versions[instance % #versions + 1])
  local metric = '{"name":"%s","tags":' .. tags .. ',"fields":%s}'
  local body = '{"metrics":[' .. table.concat({
    string.format(metric, "storage_capacity", '{"value":' .. (1000000000000 + instance) .. '}'),
    string.format(metric, "storage_usage", '{"value":' .. (instance * 1048576) .. '}'),
    string.format(metric, "volume_count", '{"value":' .. (instance % 50) .. '}'),
    string.format(metric, "node_count", '{"value":' .. (instance % 7 + 1) .. '}'),
    string.format(metric, "enabled_feature",
      '{"node_selector":' .. (instance % 2) .. ',"data_locality":' .. (instance % 3 == 0 and 1 or 0) ..
      ',"backup_target":1}'),
  }, ",") .. ']}'
  return string.format("/apps/app-%03d/v1/metrics", app), body
end

if mode == "telemetry" then
  function request()
    local path, body = report(offset + counter)
    counter = counter + 1
    return wrk.format("POST", path, nil, body)
  end
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end
