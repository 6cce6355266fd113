-- wrk script: POST one fixed body over keep-alive connections and check every answer.
--
-- Environment (set by benchmarks/_common.py:run_wrk):
--   WRK_BODY_FILE   file holding the request body (required)
--   WRK_PATH        request path, e.g. /tick or /ticks
--   WRK_USER_AGENT  User-Agent header
--   WRK_EXPECT      optional: text every 2xx answer's body must contain
--                   (e.g. "accepted":500, so a 202 that rejected ticks counts as bad)
-- done() prints one line "BENCH_JSON {...}" with counts and latency percentiles (us).

local body_file = assert(os.getenv("WRK_BODY_FILE"), "WRK_BODY_FILE is not set")
local f = assert(io.open(body_file, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.path = os.getenv("WRK_PATH") or "/tick"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = os.getenv("WRK_USER_AGENT") or "Mozilla/5.0"

local expect = os.getenv("WRK_EXPECT")
if expect == "" then expect = nil end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  bad_status = 0
  bad_body = 0
  example = ""
end

function response(status, headers, resp_body)
  if status < 200 or status > 299 then
    bad_status = bad_status + 1
    if example == "" then example = tostring(status) .. " " .. string.sub(resp_body or "", 1, 300) end
  elseif expect and not string.find(resp_body or "", expect, 1, true) then
    bad_body = bad_body + 1
    if example == "" then example = tostring(status) .. " " .. string.sub(resp_body or "", 1, 300) end
  else
    ok = ok + 1
  end
end

local function q(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end

function done(summary, latency, requests)
  local n_ok, n_bad_status, n_bad_body, ex = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    n_ok = n_ok + (t:get("ok") or 0)
    n_bad_status = n_bad_status + (t:get("bad_status") or 0)
    n_bad_body = n_bad_body + (t:get("bad_body") or 0)
    local e = t:get("example") or ""
    if ex == "" then ex = e end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"ok":%d,"bad_status":%d,' ..
    '"bad_body":%d,"example":%s,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,' ..
    '"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, n_ok, n_bad_status, n_bad_body, q(ex),
    e.connect, e.read, e.write, e.status, e.timeout, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
