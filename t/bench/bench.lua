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
-- The token builders and that report are in wrkgen.lua, shared with soak.lua.

local gen = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrkgen.lua")

local mode
local toks, ntoks = {}, 0
local prefix, suffix
local fresh                -- randkid, badsig: returns a new token (t/bench/wrkgen.lua)

gen.hooks()               -- setup(), response(), done(); the globals counts, sent, wraps

function init(args)
  mode = args[1]
  local file = args[2]
  gen.setup()
  prefix = "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] ..
           "\r\nAuthorization: Bearer "
  suffix = "\r\n\r\n"
  local lines = gen.read_lines(file)
  if mode == "fixed" or mode == "pool" then
    toks, ntoks = lines, #lines
    assert(ntoks > 0, "no tokens in " .. file)
    if mode == "fixed" then ntoks = 1 end
  elseif mode == "randkid" then
    fresh = gen.randkid(lines)
  elseif mode == "badsig" then
    fresh = gen.badsig(lines[1])
  else
    error("unknown mode " .. tostring(mode))
  end
end

local idx = 0

function request()
  sent = sent + 1
  local tok
  if fresh then
    tok = fresh()
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
