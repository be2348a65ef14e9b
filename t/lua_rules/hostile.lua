-- Hostile rules for t/test_lua_rules.py: every function but `ok`, `check` and `save_view`
-- must end in a denial (and a log line), and the server must keep serving `ok` afterwards.

CONFIG = { tenant = "original-tenant", list = { "a", "b", "c" }, nested = { deep = "original" } }

function ok(req, claims)
  return true, { ["X-Hostile-Ok"] = "yes" }
end

-- ------------------------------------------------------------ budget
function inf_loop(req, claims)
  while true do end
end

function pcall_loop(req, claims)
  pcall(function() while true do end end)
  return true
end

function pcall_loop_retry(req, claims)
  for i = 1, 100000 do pcall(function() while true do end end) end
  return true
end

function xpcall_loop(req, claims)
  xpcall(function() while true do end end, function(e) return e end)
  return true
end

function xpcall_handler_loop(req, claims)
  xpcall(function() error("x") end, function(e) while true do end end)
  return true
end

function pattern_backtrack(req, claims)
  -- A single call into C (Lua's pattern matcher) whose backtracking runs for a long time
  -- without executing a single Lua instruction.
  string.find(string.rep("a", 26), string.rep("a-", 10) .. "b")
  return true
end

-- ------------------------------------------------------------ memory
function mem_string(req, claims)
  local s = string.rep("x", 64 * 1024 * 1024)
  return true, { ["X-Len"] = #s }
end

function mem_string_pcall(req, claims)
  pcall(string.rep, "x", 64 * 1024 * 1024)
  return true
end

function mem_table(req, claims)
  local t = {}
  for i = 1, 10000000 do t[i] = string.rep("x", 1024) .. i end
  return true, { ["X-N"] = #t }
end

function mem_concat(req, claims)
  local s = "x"
  for i = 1, 40 do s = s .. s end
  return true, { ["X-Len"] = #s }
end

-- ------------------------------------------------------------ forbidden libraries
function os_execute(req, claims, path)
  os.execute("touch " .. path)
  return true
end

function io_open(req, claims, path)
  local f = io.open(path, "w")
  f:write("pwned")
  f:close()
  return true
end

function require_os(req, claims, path)
  local los = require("os")
  los.execute("touch " .. path)
  return true
end

function load_bytecode(req, claims)
  -- The header of a Lua 5.4 binary chunk: load must refuse it (text chunks only).
  local bc = string.char(27) .. "LuaT" .. string.char(0, 25, 147, 13, 10, 26, 10, 4, 8, 8)
             .. string.rep(string.char(0), 32)
  local f = assert(load(bc))
  return f()
end

function load_reader(req, claims)
  local parts = { "return ", "true" }
  local i = 0
  local f = assert(load(function() i = i + 1; return parts[i] end))
  return f()
end

function call_dofile(req, claims)
  dofile("/etc/passwd")
  return true
end

function call_loadfile(req, claims)
  local f = loadfile("/etc/passwd")
  return true
end

function string_dump(req, claims)
  local s = string.dump(function() return true end)
  return true
end

function call_collectgarbage(req, claims)
  collectgarbage("stop")
  return true
end

function call_rawset(req, claims)
  rawset(_ENV, "INJECTED", 1)
  return true
end

function debug_lib(req, claims)
  debug.sethook()
  return true
end

-- ------------------------------------------------------------ tampering (direct: must raise)
function write_global(req, claims)
  INJECTED = "evil"
  return true
end

function write_lib(req, claims)
  string.upper = function() return "PWNED" end
  return true
end

function write_config(req, claims)
  CONFIG.tenant = "evil"
  return true
end

function insert_config(req, claims)
  table.insert(CONFIG.list, "evil")
  return true
end

function string_mt(req, claims)
  getmetatable("").__index = { upper = function() return "PWNED" end }
  return true
end

function setmt_config(req, claims)
  setmetatable(CONFIG, { __index = function() return "evil" end })
  return true
end

-- ------------------------------------------------------------ tampering (caught: the state survives)
local TAMPER = {
  assign_global = function() INJECTED = "evil" end,
  assign_config = function() CONFIG.tenant = "evil" end,
  assign_nested = function() CONFIG.nested.deep = "evil" end,
  assign_lib = function() string.upper = function() return "PWNED" end end,
  assign_math = function() math.pi = 3 end,
  insert = function() table.insert(CONFIG.list, "evil") end,
  sort = function() table.sort(CONFIG.list, function(a, b) return a > b end) end,
  remove = function() table.remove(CONFIG.list) end,
  setmt = function() setmetatable(CONFIG, { __index = function() return "evil" end }) end,
  load_global = function() load("CONFIG = 'evil'")() end,
  load_env = function() load("tenant = 'evil'", "x", "t", CONFIG)() end,
  string_mt = function() getmetatable("").__index.upper = function() return "PWNED" end end,
  -- pairs() on a read-only table must not hand out anything writable.
  pairs_config = function() local _, raw = pairs(CONFIG); raw.tenant = "evil" end,
  pairs_nested = function() local _, raw = pairs(CONFIG.nested); raw.deep = "evil" end,
  pairs_list = function() local _, raw = pairs(CONFIG.list); raw[1] = "evil" end,
  pairs_lib = function() local _, raw = pairs(string); raw.upper = function() return "PWNED" end end,
  pairs_math = function() local _, raw = pairs(math); raw.pi = 3 end,
}

function tamper(req, claims)
  local how = req:arg("how")
  local f = TAMPER[how]
  if not f then return false, "unknown tamper " .. tostring(how) end
  local okk, err = pcall(f)
  return false, "TAMPER " .. how .. (okk and " not-refused" or (" refused: " .. tostring(err)))
end

function check(req, claims)
  return true, {
    ["X-Config-Tenant"] = tostring(CONFIG.tenant),
    ["X-Config-List"] = table.concat({ CONFIG.list[1], CONFIG.list[2], CONFIG.list[3], tostring(CONFIG.list[4]) }, ","),
    ["X-Config-Len"] = #CONFIG.list,
    ["X-Config-Deep"] = tostring(CONFIG.nested.deep),
    ["X-Upper"] = string.upper("ok"),
    ["X-Method-Upper"] = ("ok"):upper(),
    ["X-Pi"] = string.format("%.5f", math.pi),
    ["X-Injected"] = tostring(INJECTED),
  }
end

-- ------------------------------------------------------------ errors and wrong results
function runtime_error(req, claims)
  error("RUNTIME-MARKER-91c secret detail")
end

function error_table(req, claims)
  error({ code = "TABLE-ERROR" })
end

function nil_index(req, claims)
  local t = nil
  return t.field
end

function ret_string(req, claims) return "true" end
function ret_nil(req, claims) return nil end
function ret_nothing(req, claims) return end
function ret_number(req, claims) return 1 end
function ret_table(req, claims) return { true } end

-- ------------------------------------------------------------ views kept beyond their call
local saved = {}

function save_view(req, claims)
  saved.req = req
  saved.claims = claims
  saved.method = req.method
  return true
end

function use_view(req, claims)
  if saved.req == nil then return false, "NO-SAVED-VIEW in this state" end
  return true, { ["X-Stale-Method"] = tostring(saved.req.method) }
end

function use_view_header(req, claims)
  if saved.req == nil then return false, "NO-SAVED-VIEW in this state" end
  return true, { ["X-Stale-Host"] = tostring(saved.req:header("Host")) }
end

function use_view_arg(req, claims)
  if saved.req == nil then return false, "NO-SAVED-VIEW in this state" end
  return true, { ["X-Stale-Arg"] = tostring(saved.req:arg("x")) }
end

function use_claims(req, claims)
  -- The claims of an earlier request are plain data: reading them must not crash.
  if saved.claims == nil then return false, "NO-SAVED-VIEW in this state" end
  local o = saved.claims.oid
  return false, "STALE-CLAIMS read " .. type(o)
end

-- ------------------------------------------------------------ finalizers, recursion, <close>
function gc_finalizer(req, claims)
  setmetatable({}, { __gc = function() while true do end end })
  return true
end

function deep_recursion(req, claims)
  local function f(n) return 1 + f(n + 1) end
  return f(1) > 0
end

function c_recursion(req, claims)
  local t
  t = setmetatable({}, { __index = function(tt, k) return tt[k .. "x"] end })
  return t.x ~= nil
end

function close_loop(req, claims)
  local x <close> = setmetatable({}, { __close = function() while true do end end })
  error("CLOSE-MARKER")
end

-- One Location per tampering way (its own pool of states): ?how=<way> tampers, no query checks.
function tamper_check(req, claims)
  if req:arg("how") then return tamper(req, claims) end
  return check(req, claims)
end
