-- wrk script for benchmarks/gateway.py.
--
-- The request comes from the environment:
--   BENCH_METHOD        GET or POST
--   BENCH_BODY_FILE     file whose bytes are the request body (optional)
--   BENCH_HEADERS_FILE  file of "Name: value" lines (optional)
-- At the end it prints one line `BENCH_JSON {...}`: exact latency percentiles (microseconds), wrk's socket
-- errors, the count of responses outside 2xx, the status codes seen, and the mean of the X-Gateway-Time-Ms
-- response header when the target sends it.

local function read_file(path)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  return data
end

wrk.method = os.getenv("BENCH_METHOD") or "GET"

local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  wrk.body = read_file(body_file)
end

local headers_file = os.getenv("BENCH_HEADERS_FILE")
if headers_file and headers_file ~= "" then
  for line in read_file(headers_file):gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:]+):%s*(.*)$")
    if name then
      wrk.headers[name] = value
    end
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  statuses = {}
  gateway_ms_sum = 0
  gateway_ms_count = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  statuses[status] = (statuses[status] or 0) + 1
  for name, value in pairs(headers) do
    if name:lower() == "x-gateway-time-ms" then
      local ms = tonumber(value)
      if ms then
        gateway_ms_sum = gateway_ms_sum + ms
        gateway_ms_count = gateway_ms_count + 1
      end
      break
    end
  end
end

function done(summary, latency, requests)
  local total_non2xx, gateway_sum, gateway_count = 0, 0, 0
  local all_statuses = {}
  for _, thread in ipairs(threads) do
    total_non2xx = total_non2xx + thread:get("non2xx")
    gateway_sum = gateway_sum + thread:get("gateway_ms_sum")
    gateway_count = gateway_count + thread:get("gateway_ms_count")
    for status, count in pairs(thread:get("statuses")) do
      all_statuses[status] = (all_statuses[status] or 0) + count
    end
  end
  local status_parts = {}
  for status, count in pairs(all_statuses) do
    table.insert(status_parts, string.format('"%d":%d', status, count))
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"max":%d,"mean":%.1f,"stdev":%.1f},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"non2xx":%d,"statuses":{%s},"gateway_ms_sum":%.3f,"gateway_ms_count":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, latency.stdev,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    total_non2xx, table.concat(status_parts, ","), gateway_sum, gateway_count
  ))
end
