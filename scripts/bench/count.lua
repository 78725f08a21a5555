-- wrk script for scripts/bench_gateway.sh: counts responses by status code
-- (slower than report.lua: wrk parses every response for it), and prints
-- them as one line: BENCH requests=N codes=200:n,429:n,... errors=N
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   codes = {}
end

function response(status, headers, body)
   codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
   local all = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("codes")) do
         all[status] = (all[status] or 0) + n
      end
   end
   local keys = {}
   for status in pairs(all) do table.insert(keys, status) end
   table.sort(keys)
   local parts = {}
   for _, status in ipairs(keys) do table.insert(parts, status .. ":" .. all[status]) end
   local e = summary.errors
   io.write(string.format("BENCH requests=%d rps=%.1f codes=%s errors=%d timeouts=%d\n",
      summary.requests, summary.requests / (summary.duration / 1e6), table.concat(parts, ","),
      e.connect + e.read + e.write, e.timeout))
end
