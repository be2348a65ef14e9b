-- Pieces shared by the wrk scripts of t/bench/ (bench.lua, soak.lua); not run on its own.
--
--   local gen = dofile(<this directory> .. "wrkgen.lua")
--
-- gen.setup()              once per wrk Lua state, from init(): seeds math.random, builds the table
-- gen.read_lines(path)     the non-empty lines of a file
-- gen.randkid(lines)       lines of a randkid file (header prefix, header suffix, ".claims.signature")
--                          -> a function returning that token with a new random kid in its header
-- gen.badsig(token)        -> a function returning the token with a new random signature prefix
-- gen.hooks()              defines wrk's setup(), response() and done() and the globals they keep:
--                          counts (status -> responses), sent and wraps (the script's request()
--                          counts them); done() prints "BENCH <key> <value>" lines: totals, wrk's
--                          socket errors, latency percentiles (microseconds), and each thread's
--                          counts, sent and wraps

local M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local HEX = "0123456789abcdef"
local trip = {}            -- 4096 entries: base64url of 3 hex characters (4 characters each)

local function b64_3(s)
  local a, b, c = s:byte(1, 3)
  local n = a * 65536 + b * 256 + c
  local out = {}
  for k = 3, 0, -1 do
    local v = math.floor(n / (64 ^ k)) % 64
    out[#out + 1] = B64:sub(v + 1, v + 1)
  end
  return table.concat(out)
end

function M.setup()
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  for i = 0, 4095 do
    local a, b, c = math.floor(i / 256) % 16, math.floor(i / 16) % 16, i % 16
    trip[i] = b64_3(HEX:sub(a + 1, a + 1) .. HEX:sub(b + 1, b + 1) .. HEX:sub(c + 1, c + 1))
  end
end

function M.read_lines(path)
  local out = {}
  local f = assert(io.open(path, "r"), "cannot open " .. path)
  for line in f:lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  f:close()
  return out
end

-- `groups` random triplets: 24 random hex characters as 32 base64url characters for 8.
local function random_b64(groups)
  local parts = {}
  for k = 1, groups do parts[k] = trip[math.random(0, 4095)] end
  return table.concat(parts)
end

function M.randkid(lines)
  local head, tail = lines[1], lines[2] .. lines[3]
  return function() return head .. random_b64(8) .. tail end
end

function M.badsig(t)
  local dot = t:find(".", t:find(".", 1, true) + 1, true)
  local sighead, sigtail = t:sub(1, dot), t:sub(dot + 33)
  return function() return sighead .. random_b64(8) .. sigtail end
end

local function report(threads, summary, latency)
  local function w(k, v) io.write(string.format("BENCH %s %s\n", k, tostring(v))) end
  w("requests", summary.requests)
  w("duration_us", summary.duration)
  w("bytes", summary.bytes)
  for _, k in ipairs({"connect", "read", "write", "status", "timeout"}) do
    w("err_" .. k, summary.errors[k])
  end
  for _, p in ipairs({50, 90, 99, 99.9}) do
    w("p" .. p, latency:percentile(p))
  end
  w("lat_mean", latency.mean)
  w("lat_max", latency.max)
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("counts")) do w("status_" .. s, n) end
    w("sent", t:get("sent"))
    w("wraps", t:get("wraps"))
  end
end

function M.hooks()
  local threads = {}
  counts, sent, wraps = {}, 0, 0
  function setup(thread)
    table.insert(threads, thread)
  end
  function response(status, headers, body)
    counts[status] = (counts[status] or 0) + 1
  end
  function done(summary, latency, requests)
    report(threads, summary, latency)
  end
end

return M
