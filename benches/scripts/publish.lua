-- wrk script for benches/scripts/publish.sh: POST a fixed body to PUBLISH_PATH, and at the end
-- print one line `WRKJSON {...}` with the counts the driver needs (requests, duration, socket
-- errors by kind, answers with a status >= 400, latency percentiles).
--   PUBLISH_PATH   [/publish?topic=bench.a]
--   PUBLISH_BYTES  [100]   body length (a text payload: 'x' repeated)
-- usage: PUBLISH_BYTES=100 wrk -t2 -c8 -d10s -s benches/scripts/publish.lua http://127.0.0.1:PORT
-- (No response() callback: wrk would then hand every answer to Lua, which costs the client CPU
-- that the server shares. wrk itself counts statuses >= 400 in errors.status.)

wrk.method = "POST"
wrk.path = os.getenv("PUBLISH_PATH") or "/publish?topic=bench.a"
wrk.body = string.rep("x", tonumber(os.getenv("PUBLISH_BYTES") or "100"))
wrk.headers["Content-Type"] = "text/plain"

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.1f,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
      '"lat_p50_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      summary.requests / (summary.duration / 1e6),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
