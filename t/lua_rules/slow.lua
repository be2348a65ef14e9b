-- Rules for t/test_lua_time.py: each spends its time where the instruction budget cannot see
-- it (in C) unless ?go=1 is absent, in which case it allows at once (the pool's next state).

local function quick(req)
  if req:arg("go") ~= "1" then return true, { ["X-Ok"] = "yes" } end
end

-- 4 MB per call, a few instructions per iteration.
function rep_loop(req, claims)
  local q, h = quick(req); if q then return q, h end
  for i = 1, 1e9 do local s = ("x"):rep(4e6) end
  return true
end

-- A 2 MB subject, rewritten over and over.
function gsub_loop(req, claims)
  local q, h = quick(req); if q then return q, h end
  local s = ("x"):rep(2e6)
  for i = 1, 1e9 do local r = s:gsub("x", "y") end
  return true
end

-- table.concat of 100,000 strings, over and over.
function concat_loop(req, claims)
  local q, h = quick(req); if q then return q, h end
  local t = {}
  for i = 1, 1e5 do t[i] = "0123456789" end
  for i = 1, 1e9 do local s = table.concat(t) end
  return true
end

-- A backtracking pattern at the largest subject the sandbox lets through, over and over.
function pattern_loop(req, claims)
  local q, h = quick(req); if q then return q, h end
  local s = ("a"):rep(3000)
  for i = 1, 1e9 do s:find("a*b") end
  return true
end

-- table.sort of 20,000 numbers, over and over (no comparator: nothing calls back into Lua).
function sort_loop(req, claims)
  local q, h = quick(req); if q then return q, h end
  local t = {}
  for i = 1, 2e4 do t[i] = (i * 7919) % 20011 end
  for i = 1, 1e9 do table.sort(t) end
  return true
end

-- Pure Lua: stopped by whichever limit comes first.
function spin(req, claims)
  local q, h = quick(req); if q then return q, h end
  while true do end
end

-- Single C calls that used to run for hours without a hook: now cheap or refused.
function rep_empty(req, claims)
  return true, { ["X-Len"] = #(""):rep(2^62) }
end

function move_huge(req, claims)
  table.move({}, 1, 2^62, 1, {})
  return true
end

function insert_len(req, claims)
  local t = setmetatable({}, { __len = function() return 2^62 end })
  table.insert(t, 1, "x")
  return true
end

function remove_len(req, claims)
  local t = setmetatable({}, { __len = function() return 2^62 end })
  table.remove(t, 1)
  return true
end

function literal_search(req, claims)
  local s = ("a"):rep(1e6)
  return s:find(("a"):rep(1e5) .. "b", 1, true) ~= nil
end

function balanced(req, claims)
  return ("("):rep(1e5):find("%b()") ~= nil
end

-- What still works: table functions on ordinary tables, moderate patterns.
function table_ok(req, claims)
  local t = { 1, 2, 3 }
  table.insert(t, 4); table.insert(t, 1, 0)
  local last, first = table.remove(t), table.remove(t, 1)
  local m = table.move({ 1, 2, 3, 4, 5 }, 2, 4, 1)
  local user = ("someone@contoso.com"):match("^(.-)@(.+)$")
  local anchored = ("x"):rep(1500):match("^(.-)@(.+)$")
  return true, { ["X-Table"] = table.concat(t, ",") .. "|" .. last .. "|" .. first .. "|" .. table.concat(m, ","),
                 ["X-Match"] = user, ["X-Anchored"] = tostring(anchored),
                 ["X-Find"] = tostring(("x"):rep(100000):find("xy", 1, true)) }
end

function backref(req, claims)
  return ("ab"):rep(5e4):find("(a)%1") ~= nil
end

function long_pattern(req, claims)
  return ("x"):find(("."):rep(5000)) ~= nil
end

-- Two repetitions on 1,500 bytes: refused unanchored, allowed with a leading '^'.
function unanchored(req, claims)
  return ("x"):rep(1500):match("(.-)@(.+)$") == nil
end
