-- Request generator for t/bench/bench.py (see its docstring); not meant to be run by hand.
--
--   wrk -t1 -c16 -d10s -s t/bench/bench.lua URL -- MODE FILE
--
-- MODE   FILE holds                      every request carries
-- fixed  one token                       that token
-- pool   one token per line              the next token (wrapping to the first, counted)
-- randkid 3 lines: header prefix (b64),  the token with a new random kid in its header
--        header suffix (b64), ".claims.signature"
-- badsig one valid token                 the token with a new random signature prefix
--
-- The Lua-rule and proxied cases use fixed (the proxies forward their own token, not this
-- one); the cold burst of proxy-cold is sent by bench.py itself, not by wrk.
--
-- Every mode builds its request the same way (one string concatenation), so the client's
-- cost per request is the same in every case. done() prints "BENCH <key> <value>" lines:
-- totals, latency percentiles (microseconds) and the count of each response status.

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local HEX = "0123456789abcdef"

local mode
local toks, ntoks = {}, 0
local prefix, suffix
local head, tail           -- randkid: header prefix, header suffix + claims + signature
local sighead, sigtail     -- badsig: "header.claims.", signature after the random part
local trip = {}            -- 4096 entries: base64url of 3 hex characters (4 characters each)

-- Globals, read from done() through thread:get().
counts = {}
sent = 0
wraps = 0

local threads = {}

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

local function read_lines(path)
  local out = {}
  local f = assert(io.open(path, "r"), "cannot open " .. path)
  for line in f:lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  f:close()
  return out
end

-- 8 random triplets: 24 random hex characters as 32 base64url characters.
local function random_b64(groups)
  local parts = {}
  for k = 1, groups do parts[k] = trip[math.random(0, 4095)] end
  return table.concat(parts)
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  local file = args[2]
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  for i = 0, 4095 do
    local a, b, c = math.floor(i / 256) % 16, math.floor(i / 16) % 16, i % 16
    trip[i] = b64_3(HEX:sub(a + 1, a + 1) .. HEX:sub(b + 1, b + 1) .. HEX:sub(c + 1, c + 1))
  end
  prefix = "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] ..
           "\r\nAuthorization: Bearer "
  suffix = "\r\n\r\n"
  local lines = read_lines(file)
  if mode == "fixed" or mode == "pool" then
    toks, ntoks = lines, #lines
    assert(ntoks > 0, "no tokens in " .. file)
    if mode == "fixed" then ntoks = 1 end
  elseif mode == "randkid" then
    head, tail = lines[1], lines[2] .. lines[3]
  elseif mode == "badsig" then
    local t = lines[1]
    local dot = t:find(".", t:find(".", 1, true) + 1, true)
    sighead, sigtail = t:sub(1, dot), t:sub(dot + 33)
  else
    error("unknown mode " .. tostring(mode))
  end
end

local idx = 0

function request()
  sent = sent + 1
  local tok
  if mode == "randkid" then
    tok = head .. random_b64(8) .. tail
  elseif mode == "badsig" then
    tok = sighead .. random_b64(8) .. sigtail
  else
    idx = idx + 1
    if idx > ntoks then
      idx = 1
      if mode == "pool" then wraps = wraps + 1 end
    end
    tok = toks[idx]
  end
  return prefix .. tok .. suffix
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
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
