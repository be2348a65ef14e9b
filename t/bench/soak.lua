-- Request generator for t/bench/soak.py (make soak); not meant to be run by hand.
--
--   wrk -t2 -c256 -d60s -s t/bench/soak.lua URL -- VALID EXPIRED RANDKID
--
-- Every connection cycles through the request kinds, one path per kind, so that httpd's access
-- log tells the kind of every request it answered (soak.py counts statuses there):
--
--   /soak/valid/ok.txt       the next token of VALID (one per line, cycled)
--   /soak/expired/ok.txt     the token in EXPIRED
--   /soak/badsig/ok.txt      the first token of VALID with a new random signature prefix
--   /soak/unknownkid/ok.txt  a token whose header names a new random kid (RANDKID: see wrkgen.lua)
--   /soak/proxied/ok.txt     the next token of VALID; httpd forwards to the backend with its own
--
-- done() prints wrkgen.lua's "BENCH <key> <value>" report.

local gen = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrkgen.lua")

local KINDS = {"valid", "expired", "badsig", "unknownkid", "proxied"}
local prefix = {}          -- kind -> request up to the token
local valid, nvalid, vi = {}, 0, 0
local expired, badsig, randkid
local k = 0

gen.hooks()               -- setup(), response(), done(); the globals counts, sent, wraps

function init(args)
  gen.setup()
  valid = gen.read_lines(args[1])
  nvalid = #valid
  assert(nvalid > 0, "no tokens in " .. args[1])
  expired = gen.read_lines(args[2])[1]
  randkid = gen.randkid(gen.read_lines(args[3]))
  badsig = gen.badsig(valid[1])
  for _, kind in ipairs(KINDS) do
    prefix[kind] = "GET /soak/" .. kind .. "/ok.txt HTTP/1.1\r\nHost: " .. wrk.headers["Host"] ..
                   "\r\nAuthorization: Bearer "
  end
  -- Each thread starts at another kind.
  k = math.random(0, #KINDS - 1)
end

local function next_valid()
  vi = vi + 1
  if vi > nvalid then
    vi = 1
    wraps = wraps + 1
  end
  return valid[vi]
end

function request()
  sent = sent + 1
  k = k % #KINDS + 1
  local kind = KINDS[k]
  local tok
  if kind == "expired" then
    tok = expired
  elseif kind == "badsig" then
    tok = badsig()
  elseif kind == "unknownkid" then
    tok = randkid()
  else
    tok = next_valid()
  end
  return prefix[kind] .. tok .. "\r\n\r\n"
end
