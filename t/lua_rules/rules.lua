-- Rules for t/test_lua_rules.py (Require entra-lua <function> [args...]).

TENANT = "11111111-2222-3333-4444-555555555555"
-- A table global: read-only for the rules, whatever they try.
CONFIG = { tenant = TENANT, list = { "a", "b", "c" }, nested = { deep = "original" } }
-- A global table of headers, returned as is by global_headers below.
GLOBAL_HEADERS = { ["X-From-Global"] = "global-value" }

function allow(req, claims) return true end

function deny(req, claims) return false, "DENY-REASON-7f3a caller is not welcome" end

function deny_noreason(req, claims) return false end

-- Everything the rule sees, handed to the backend as headers.
function view(req, claims, ...)
  local args = table.pack(...)
  local parts = {}
  for i = 1, args.n do parts[#parts + 1] = args[i] end
  local roles = claims.roles
  -- claims.<name> is a fresh copy: changing it changes nothing for has_role.
  if type(roles) == "table" then roles[#roles + 1] = "Injected.Role" end
  return true, {
    ["X-R-Method"] = req.method,
    ["X-R-Path"] = req.path,
    ["X-R-Query"] = req.query,
    ["X-R-Client-Ip"] = req.client_ip,
    ["X-R-Route"] = req.route,
    ["X-R-User"] = req.user,
    ["X-R-Time"] = req.time,
    ["X-R-Weekday"] = req.weekday,
    ["X-R-Unknown-Field"] = tostring(req.no_such_field),
    ["X-R-Probe"] = req:header("X-Probe") or "<nil>",
    ["X-R-Auth"] = req:header("Authorization") or "<nil>",
    ["X-R-Auth-Lower"] = req:header("authorization") or "<nil>",
    ["X-R-Cookie"] = req:header("Cookie") or "<nil>",
    ["X-R-Proxy-Auth"] = req:header("Proxy-Authorization") or "<nil>",
    ["X-R-Arg"] = req:arg("q") or "<nil>",
    ["X-R-Missing-Arg"] = req:arg("nope") or "<nil>",
    ["X-R-Nargs"] = args.n,
    ["X-R-Args"] = table.concat(parts, "|"),
    ["X-R-Tid"] = claims.tid,
    ["X-R-Oid"] = claims.oid,
    ["X-R-App"] = claims:app() or "<nil>",
    ["X-R-Roles"] = table.concat(claims.roles or {}, ","),
    ["X-R-Has-Read"] = tostring(claims:has_role("Nope", "Orders.Read")),
    ["X-R-Has-Write"] = tostring(claims:has_role("Orders.Write")),
    ["X-R-Has-Injected"] = tostring(claims:has_role("Injected.Role")),
    ["X-R-Has-Scope"] = tostring(claims:has_scope("Orders.Read")),
    ["X-R-Missing-Claim"] = tostring(claims.no_such_claim),
  }
end

-- Allowed only when the Require line passed exactly these words.
function args_match(req, claims, a, b, c, d)
  if a == "one" and b == "two words" and c == "3" and d == nil then
    return true, { ["X-Args"] = a .. "|" .. b .. "|" .. c }
  end
  return false, "ARGS-MISMATCH " .. tostring(a) .. "|" .. tostring(b) .. "|" .. tostring(c) .. "|" .. tostring(d)
end

function set_headers(req, claims)
  return true, { ["X-Customer"] = claims.tid, ["X-Number"] = 42, ["X-Oid-Copy"] = claims.oid }
end

function global_headers(req, claims)
  return true, GLOBAL_HEADERS
end

local function many(n)
  local t = {}
  for i = 1, n do t["X-H" .. i] = "v" .. i end
  return t
end

-- Local (not global) so that each rule returns a plain table.
local HEADER_CASES = {
  ok32 = many(32),
  okbig = { ["X-Big"] = string.rep("v", 8192) },
  space = { ["X Bad"] = "v" },
  colon = { ["X-Bad:"] = "v" },
  crlf = { ["X-Bad"] = "a\r\nX-Injected: 1" },
  lf = { ["X-Bad"] = "a\nX-Injected: 1" },
  cr = { ["X-Bad"] = "a\rX-Injected: 1" },
  host = { Host = "evil.example" },
  clen = { ["Content-Length"] = "5" },
  te = { ["Transfer-Encoding"] = "chunked" },
  conn = { Connection = "close" },
  empty = { [""] = "v" },
  longname = { [string.rep("X", 129)] = "v" },
  longvalue = { ["X-Long"] = string.rep("v", 8193) },
  tablevalue = { ["X-T"] = {} },
  boolvalue = { ["X-B"] = true },
  numkey = { [1] = "v" },
  many33 = many(33),
  nulvalue = { ["X-Nul"] = "a\0X-Injected: 1" },
  nulname = { ["X-Nul\0Evil"] = "v" },
}

function header_case(req, claims)
  local h = HEADER_CASES[req:arg("case")]
  if h == nil then return false, "unknown case" end
  return true, h
end

function headers_not_a_table(req, claims)
  return true, 42
end

-- The common idiom: a condition and the reason used when it is false.
function idiom(req, claims)
  return claims:has_role("Orders.Read"), "needs Orders.Read"
end

function allow_if_arg(req, claims)
  if req:arg("ok") == "1" then return true end
  return false, "ARG-OK-MISSING"
end

function is_blocked(req, claims)
  if req:arg("blocked") == "1" then return true end
  return false, "not blocked"
end

-- A "blocked" check that fails at run time (a bug in the rule): it must not let anyone in.
function is_blocked_broken(req, claims)
  local list = nil
  return list[claims.oid] ~= nil
end

function is_blocked_loops(req, claims)
  while true do end
end

function marker(req, claims)
  print("RULE-RAN " .. (req:header("X-Test-Id") or "?"))
  return true
end

function loop(req, claims, n)
  local x = 0
  for i = 1, tonumber(n) do x = x + i end
  return true, { ["X-Sum"] = x }
end

function big_string(req, claims, n)
  local s = string.rep("x", tonumber(n))
  return true, { ["X-Len"] = #s }
end

-- Thread-safety: every value comes from this request only.
function echo_ids(req, claims)
  return true, { ["X-Rule-Oid"] = claims.oid, ["X-Rule-Req"] = req:header("X-Req-Id") or "<nil>",
                 ["X-Rule-Arg"] = req:arg("n") or "<nil>" }
end

-- What the sandbox offers: "name=type" for the names a rule might try.
function sandbox_probe(req, claims)
  local names = { "os", "io", "debug", "package", "require", "dofile", "loadfile", "collectgarbage",
                  "rawset", "coroutine", "_G", "string", "table", "math", "utf8", "load",
                  "pcall", "setmetatable", "print" }
  local out = {}
  for _, n in ipairs(names) do out[#out + 1] = n .. "=" .. type(_ENV[n]) end
  out[#out + 1] = "string.dump=" .. type(string.dump)
  out[#out + 1] = "mt=" .. type(getmetatable(""))
  return true, { ["X-Sandbox-Probe"] = table.concat(out, ","), ["X-Version"] = _VERSION }
end
