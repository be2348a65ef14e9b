-- Tests of the standalone `entra` Lua module against the local fakes. Run by
-- t/test_lua_module.py, which starts fake_entra.py and fake_identity.py, mints tokens and
-- passes everything in a config file:
--
--   ENTRA_TEST_CONFIG=<file of "name value" lines> LUA_CPATH=<dir of entra.so>/?.so \
--     lua5.4 t/lua/test_entra.lua
--
-- Prints one line per check and a final "N passed, N failed" line; exits 1 on any failure.

local entra = require "entra"

-- ------------------------------------------------------------------ harness

local passed, failed = 0, 0

local function check(name, cond, detail)
  if cond then
    passed = passed + 1
    print("ok - " .. name)
  else
    failed = failed + 1
    print("FAIL - " .. name .. (detail ~= nil and (" (" .. tostring(detail) .. ")") or ""))
  end
  return cond
end

local function eq(name, got, want)
  return check(name, got == want, string.format("got %s, want %s", tostring(got), tostring(want)))
end

local function contains(name, s, needle)
  return check(name, type(s) == "string" and s:find(needle, 1, true) ~= nil,
               string.format("%q does not contain %q", tostring(s), needle))
end

local function raises(name, f, needle)
  local ok, err = pcall(f)
  return check(name, not ok and (needle == nil or tostring(err):find(needle, 1, true) ~= nil),
               ok and "did not raise" or err)
end

-- Runs a group of checks; an unexpected error counts as one failure and the rest go on.
local function section(name, f)
  print("# " .. name)
  local ok, err = xpcall(f, debug.traceback)
  if not ok then check(name .. ": no unexpected error", false, err) end
end

local function now() return os.time() end

-- A monotonic-enough clock for elapsed times (wall clock, sub-second).
local function clock()
  local f = io.popen("date +%s.%N")
  local t = tonumber(f:read("l"))
  f:close()
  return t
end

-- ------------------------------------------------------------------ configuration

local CONFIG = os.getenv("ENTRA_TEST_CONFIG")
if not CONFIG then
  io.stderr:write("ENTRA_TEST_CONFIG is not set: run this through t/test_lua_module.py\n")
  os.exit(2)
end
local C = {}
for line in io.lines(CONFIG) do
  local k, v = line:match("^(%S+)%s+(.*)$")
  if k then C[k] = v end
end

local PYTHON = C.python or "/usr/bin/python3"
local TENANT = C.tenant
local AUD_GUID, AUD_URI = C.aud_guid, C.aud_uri
local ID = C.identity_base -- fake_identity.py base URL

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- fake_identity.py's control API through a tiny Python client (Lua has no HTTP client).
local CTL = [[
import json, sys, urllib.request
base, method, name, body, path = sys.argv[1:6]
req = urllib.request.Request(base + "/_control/" + name, method=method,
                             data=body.encode() if method == "POST" else None,
                             headers={"Content-Type": "application/json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
out = json.load(opener.open(req, timeout=30))
for k in filter(None, path.split(".")):
    out = out.get(k, 0) if isinstance(out, dict) else 0
print(out if isinstance(out, (int, float, str)) else json.dumps(out))
]]

local function ctl(method, name, body, path)
  -- Sanitizer runtimes preloaded into lua5.4 are no business of the helper.
  local cmd = table.concat({ "env -u LD_PRELOAD", PYTHON, "-c", shq(CTL), shq(ID), method, shq(name),
                             shq(body or "{}"), shq(path or "") }, " ")
  local f = assert(io.popen(cmd))
  local out = f:read("a")
  local ok = f:close()
  assert(ok, "control request " .. name .. " failed")
  return (out:gsub("%s+$", ""))
end

local function stat(path) return tonumber(ctl("GET", "stats", nil, path)) end
local function script(source, answers_json)
  ctl("POST", "script", string.format('{"source":"%s","answers":%s}', source, answers_json))
end
local function mode(source, m)
  ctl("POST", "mode", string.format('{"source":"%s","mode":%s}', source,
                                    m and ('"' .. m .. '"') or "null"))
end

-- ------------------------------------------------------------------ module basics

section("module", function()
  eq("entra.null is a light userdata NULL", type(entra.null), "userdata")
  eq("entra.null is the same value every time", entra.null, require("entra").null)
  eq("functions are functions", type(entra.acquire_token) .. type(entra.decode_unverified)
     .. type(entra.verifier), "functionfunctionfunction")
end)

-- ------------------------------------------------------------------ decode_unverified

section("decode_unverified", function()
  local h, c = entra.decode_unverified(C.tok_good)
  check("decodes a good token", h ~= nil, c)
  eq("header alg", h.alg, "RS256")
  eq("header kid", h.kid, C.kid_rsa1)
  eq("claims tid", c.tid, TENANT)
  eq("claims aud", c.aud, AUD_GUID)
  eq("claims exp is an integer", math.type(c.exp), "integer")
  eq("claims roles is a sequence", c.roles and c.roles[1], "Orders.Read")

  local h2, c2 = entra.decode_unverified(C.tok_bad_sig)
  check("decodes a token with a bad signature (nothing is verified)", h2 ~= nil and c2.tid == TENANT)
  local _, c3 = entra.decode_unverified(C.tok_expired)
  check("decodes an expired token", c3 and c3.exp < now())
  local _, c4 = entra.decode_unverified(C.tok_null_claim)
  eq("JSON null is entra.null", c4 and c4.xnull, entra.null)
  eq("nested objects become tables", c4 and c4.xnested and c4.xnested.inner[2], 2)

  local bad = {
    { "", "empty token" },
    { "not-a-jwt", "token is not a JWS with three segments" },
    { "a.b", "token is not a JWS with three segments" },
    { "a.b.c.d", "token is not a JWS with three segments" },
    { ".e30.", "empty token segment" },
    { "e30..", "empty token segment" },
    { "!!!.e30.", "token is not strict base64url" },
    { "e30=.e30.", "token is not strict base64url" },
    { "e30.e30.a+b/", "token is not strict base64url" },
    { "WzFd.e30.", "token header: JSON is not an object" },
    { "e30.bm90IGpzb24.", "token claims: malformed JSON" },
    { "e30.eyJhIjoxLCJhIjoyfQ.", "token claims: duplicate JSON member" },
  }
  for _, case in ipairs(bad) do
    local x, err = entra.decode_unverified(case[1])
    check(string.format("decode %q -> nil, %q", case[1], case[2]), x == nil and err == case[2], err)
  end
  local x, err = entra.decode_unverified(string.rep("A", 70000) .. ".e30.")
  check("decode refuses a huge token", x == nil and err == "token too large", err)
  local h5, c5 = entra.decode_unverified("e30.e30.")
  check("decode accepts an empty signature", h5 ~= nil and next(c5) == nil)
  raises("decode(nil) raises", function() entra.decode_unverified(nil) end)
  raises("decode(42) raises", function() entra.decode_unverified(42) end)
end)

-- ------------------------------------------------------------------ verifier

local AUTH = C.authority

local function new_verifier(over)
  local o = { tenant = TENANT, audience = { AUD_URI, AUD_GUID }, authority = AUTH }
  for k, v in pairs(over or {}) do
    if v == false then o[k] = nil else o[k] = v end -- false drops a default
  end
  return entra.verifier(o)
end

section("verifier: accepts", function()
  local v = new_verifier()
  local claims, err = v:verify(C.tok_good)
  check("good v2 token accepted", claims ~= nil, err)
  eq("claims tid", claims and claims.tid, TENANT)
  eq("claims aud", claims and claims.aud, AUD_GUID)
  eq("claims exp integer", claims and math.type(claims.exp), "integer")
  local again = v:verify(C.tok_good)
  check("second verify (cached) gives the same claims", again and again.oid == claims.oid)
  local c1, e1 = v:verify(C.tok_v1)
  check("good v1 token (sts.windows.net issuer) accepted", c1 ~= nil, e1)
  local ce, ee = new_verifier({ algorithms = { "ES256", "RS256" } }):verify(C.tok_es256)
  check("ES256 token accepted when algorithms include ES256", ce ~= nil, ee)
  local cn = v:verify(C.tok_null_claim)
  eq("null claim is entra.null in verified claims", cn and cn.xnull, entra.null)
  check("tostring names the tenant", tostring(v):find(TENANT, 1, true) ~= nil, tostring(v))
end)

section("verifier: claims methods (same rules as the Require providers)", function()
  local v = new_verifier()
  local G = "0e1d2c3b-4a59-4687-9a1b-2c3d4e5f6071"
  local app, user = v:verify(C.tok_good), v:verify(C.tok_user)
  check("app token verified", app ~= nil)
  check("user token verified", user ~= nil)
  if not (app and user) then return end
  eq("app: is_app_only", app:is_app_only(), true)
  eq("app: not is_user", app:is_user(), false)
  eq("user: is_user", user:is_user(), true)
  eq("user: not is_app_only", user:is_app_only(), false)
  eq("no idtyp, oid == sub: app-only", v:verify(C.tok_app_no_idtyp):is_app_only(), true)
  local n = v:verify(C.tok_neither)
  eq("no idtyp, oid ~= sub, no scp: not app-only", n:is_app_only(), false)
  eq("no idtyp, oid ~= sub, no scp: not user", n:is_user(), false)
  eq("in_group", user:in_group("x", G), true)
  eq("in_group is case-insensitive", user:in_group(G:upper()), true)
  eq("not in_group", user:in_group("x"), false)
  eq("no groups claim", app:in_group(G), false)
  local ok, why = v:verify(C.tok_overage):in_group(G)
  check("overage: false, \"groups overage\"", ok == false and why == "groups overage", why)
  eq("has_acrs", user:has_acrs("c2", "c1"), true)
  eq("has_acrs absent", user:has_acrs("c2"), false)
  eq("no acrs claim", app:has_acrs("c1"), false)
  -- the methods read the verified claims, not the (editable) table
  user.idtyp = "app"
  eq("editing the table does not change is_user", user:is_user(), true)
  eq("claims still iterate as a plain table", (function()
    local k = 0
    for _ in pairs(app) do k = k + 1 end
    return k > 5
  end)(), true)
  eq("metatable is protected", getmetatable(app), "entra")
  raises("a plain table is not claims", function() app.is_user({ idtyp = "user" }) end,
         "verified claims expected")
  raises("in_group needs strings", function() user:in_group({}) end)
end)

section("verifier: rejects with the module's reasons", function()
  local v = new_verifier()
  local cases = {
    { "tok_expired", "token expired" },
    { "tok_wrong_aud", "token audience not accepted" },
    { "tok_bad_sig", "invalid signature" },
    { "tok_wrong_iss", "token issuer not accepted" },
    { "tok_es256", "token algorithm not allowed" },
    { "tok_unknown_kid", "token signing key not found" },
    { "tok_not_yet", "token not yet valid" },
    { "tok_long_life", "token lifetime exceeds the maximum" },
    { "tok_tid_mismatch", "token tid does not match the tenant" },
    { "tok_no_exp", "token has no exp" },
    { "tok_alg_none", "unsigned token" },
  }
  for _, case in ipairs(cases) do
    local claims, err = v:verify(C[case[1]])
    check(string.format("%s -> nil, %q", case[1], case[2]), claims == nil and err == case[2], err)
  end
  local c, err = v:verify("garbage")
  check("garbage -> nil, not a JWS", c == nil and err == "token is not a JWS with three segments", err)
  c, err = v:verify("a.b.c!")
  check("bad charset -> nil, not strict base64url", c == nil and err == "token is not strict base64url", err)
  c, err = v:verify(C.tok_bad_sig)
  check("bad signature again (negative cache) -> same reason", c == nil and err == "invalid signature", err)
  check("reasons never hold the token", not err:find(C.tok_bad_sig:sub(-20), 1, true))
  local vs = new_verifier({ clock_skew = 0, max_lifetime = 3600 })
  c, err = vs:verify(C.tok_good)
  check("max_lifetime 3600 still accepts a 1 h token", c ~= nil, err)
  c, err = new_verifier({ max_lifetime = 600 }):verify(C.tok_good)
  check("max_lifetime 600 rejects a 1 h token", c == nil and err == "token lifetime exceeds the maximum", err)
  c, err = new_verifier({ audience = "api://someone-else" }):verify(C.tok_good)
  check("audience as a single string", c == nil and err == "token audience not accepted", err)
end)

section("verifier: multi-tenant and metadata_url", function()
  local v = new_verifier({ tenant = "organizations", allowed_tenants = { C.allowed_tenant } })
  local c, err = v:verify(C.tok_other_allowed)
  check("organizations + allowed_tenants accepts the allowed tenant", c ~= nil, err)
  c, err = v:verify(C.tok_good)
  check("organizations rejects a tenant not listed", c == nil and err == "token tenant not allowed", err)
  local vm = new_verifier({ tenant = false, metadata_url = AUTH .. TENANT .. "/v2.0/.well-known/openid-configuration" })
  c, err = vm:verify(C.tok_good)
  check("metadata_url verifier accepts its issuer", c ~= nil, err)
  c, err = vm:verify(C.tok_v1)
  check("metadata_url verifier accepts only the discovered issuer",
        c == nil and err == "token issuer not accepted", err)
end)

section("verifier: lifecycle", function()
  local keep
  do
    local v <close> = new_verifier()
    keep = v
    check("verifier usable inside its scope", v:verify(C.tok_good) ~= nil)
  end
  eq("<close> closes the verifier", tostring(keep), "entra.verifier (closed)")
  raises("verify on a closed verifier raises", function() keep:verify(C.tok_good) end, "closed")
  local v = new_verifier()
  v:close()
  v:close()
  check("close twice is harmless", true)
  for i = 1, 50 do new_verifier():verify(C.tok_good) end
  collectgarbage()
  collectgarbage()
  check("many verifiers created and collected", true)
end)

section("verifier: misuse raises", function()
  raises("no options", function() entra.verifier() end)
  raises("empty options", function() entra.verifier({}) end, "tenant")
  raises("bad tenant", function() new_verifier({ tenant = "contoso" }) end, "not a tenant id")
  raises("common without allowed_tenants", function() new_verifier({ tenant = "common" }) end, "allowed_tenants")
  raises("bad allowed tenant", function()
    new_verifier({ tenant = "common", allowed_tenants = { "x" } }) end, "not a tenant id")
  raises("unknown alg", function() new_verifier({ algorithms = { "HS256" } }) end, "unsupported algorithm")
  raises("alg none", function() new_verifier({ algorithms = { "none" } }) end, "unsupported algorithm")
  raises("empty algorithms", function() new_verifier({ algorithms = {} }) end, "must not be empty")
  raises("no audience", function() entra.verifier({ tenant = TENANT }) end, "audience")
  raises("audience not a string", function() new_verifier({ audience = { 1 } }) end, "audience")
  raises("clock_skew too large", function() new_verifier({ clock_skew = 601 }) end, "clock_skew")
  raises("clock_skew negative", function() new_verifier({ clock_skew = -1 }) end, "clock_skew")
  raises("clock_skew fractional", function() new_verifier({ clock_skew = 1.5 }) end, "clock_skew")
  raises("max_lifetime too small", function() new_verifier({ max_lifetime = 10 }) end, "max_lifetime")
  raises("authority http to a remote host", function()
    new_verifier({ authority = "http://login.example.com/" }) end, "https")
  raises("metadata_url not a URL", function() new_verifier({ metadata_url = "file:///etc/passwd" }) end, "https")
  raises("unknown option", function() new_verifier({ tenent = TENANT }) end, "unknown option 'tenent'")
  raises("ca_file missing", function() new_verifier({ ca_file = "/nonexistent/ca.pem" }) end, "ca_file")
  local v = new_verifier()
  raises("verify(nil) raises", function() v:verify(nil) end)
  raises("verify(42) raises", function() v:verify(42) end)
  raises("verify without self raises", function() v.verify(C.tok_good) end)
end)

section("verifier: keys unavailable", function()
  local v = new_verifier({ authority = C.closed_url })
  local t0 = clock()
  local c, err = v:verify(C.tok_good)
  local dt = clock() - t0
  check("closed port -> nil", c == nil)
  contains("closed port -> keys unavailable: ...", err, "keys unavailable: ")
  check("closed port answers within 10 s", dt < 10, dt)
  t0 = clock()
  c, err = v:verify(C.tok_good)
  check("second call answers from the failure backoff at once", c == nil and clock() - t0 < 2, err)
  contains("second call still keys unavailable", err, "keys unavailable: ")
  local c2, err2 = v:verify("garbage")
  check("a malformed token is invalid even without keys",
        c2 == nil and err2 == "token is not a JWS with three segments", err2)
end)

-- ------------------------------------------------------------------ acquire_token

local IMDS = C.imds_url
local function claims_of(tok)
  local _, c = entra.decode_unverified(tok.access_token)
  return c or {}
end

section("acquire_token: IMDS", function()
  local R = "https://vault.azure.net"
  local before = stat("imds.requests")
  local tok, err = entra.acquire_token { resource = R, identity = { source = "imds", endpoint = IMDS } }
  check("IMDS system-assigned token", tok ~= nil, err)
  if not tok then return end
  eq("token_type Bearer", tok.token_type, "Bearer")
  check("access_token is a JWT", type(tok.access_token) == "string" and #tok.access_token > 100)
  check("expires_on in the future (~24 h)", math.type(tok.expires_on) == "integer"
        and tok.expires_on > now() + 3600, tok.expires_on)
  local c = claims_of(tok)
  eq("issued by IMDS", c.fake_source, "imds")
  eq("system-assigned identity", c.fake_identity, "system")
  eq("audience is the resource", c.aud, R)
  eq("one IMDS request", stat("imds.requests"), before + 1)
  local tok2 = entra.acquire_token { resource = R, identity = { source = "imds", endpoint = IMDS } }
  check("second call served from the cache (same token)", tok2 and tok2.access_token == tok.access_token)
  eq("no second IMDS request", stat("imds.requests"), before + 1)

  local u1 = entra.acquire_token { resource = R .. "/.default",
                                   identity = { source = "imds", endpoint = IMDS, client_id = C.user1_client_id } }
  local cu = u1 and claims_of(u1) or {}
  eq("client_id selects the user-assigned identity", cu.fake_identity, "user1")
  eq(".default scope becomes the resource", cu.aud, R)
  local u2 = entra.acquire_token { resource = R,
                                   identity = { source = "imds", endpoint = IMDS, object_id = C.user2_object_id } }
  eq("object_id selects user2", u2 and claims_of(u2).fake_identity, "user2")
  local u3 = entra.acquire_token { resource = R,
                                   identity = { source = "imds", endpoint = IMDS, resource_id = C.user3_resource_id } }
  eq("resource_id selects user3", u3 and claims_of(u3).fake_identity, "user3")
  local t4, e4 = entra.acquire_token { resource = R, timeout = 5,
                                       identity = { source = "imds", endpoint = "http://example.invalid/metadata/identity/oauth2/token" } }
  check("http to a remote host is refused", t4 == nil and e4:find("URL refused", 1, true), e4)
end)

section("acquire_token: App Service", function()
  local R = "https://storage.azure.com"
  local ep = C.appservice_url
  local before = stat("appservice.requests")
  local tok, err = entra.acquire_token { resource = R, identity = { source = "appservice", endpoint = ep } }
  check("App Service token (IDENTITY_HEADER from the environment)", tok ~= nil, err)
  if not tok then return end
  eq("issued by App Service", claims_of(tok).fake_source, "appservice")
  local tok2 = entra.acquire_token { resource = R, identity = { source = "appservice", endpoint = ep } }
  check("second call cached", tok2 and tok2.access_token == tok.access_token)
  eq("one App Service request", stat("appservice.requests"), before + 1)
end)

section("acquire_token: Azure Arc", function()
  local R = "https://management.azure.com"
  local ident = { source = "arc", endpoint = C.arc_url, arc_key_dir = C.arc_key_dir }
  local ok_before = stat("arc_auth.auth_ok")
  local tok, err = entra.acquire_token { resource = R, identity = ident }
  check("Arc token after the key-file challenge", tok ~= nil, err)
  if tok then eq("issued by Arc", claims_of(tok).fake_source, "arc") end
  eq("Arc accepted the key once", stat("arc_auth.auth_ok"), ok_before + 1)
  local tok2 = entra.acquire_token { resource = R, identity = ident }
  check("second call cached", tok2 and tok and tok2.access_token == tok.access_token)

  ctl("POST", "settings", '{"arc_realm":"outside"}')
  local t3, e3 = entra.acquire_token { resource = R .. "/outside", identity = ident, timeout = 3 }
  check("a realm outside the key directory is refused", t3 == nil and e3 and e3:find("outside", 1, true), e3)
  eq("no hostile key was sent", stat("arc_auth.hostile_secret_sent"), 0)
  ctl("POST", "settings", '{"arc_realm":"normal"}')
  raises("Arc with a selector raises", function()
    entra.acquire_token { resource = R, identity = { source = "arc", client_id = C.user1_client_id } }
  end, "system-assigned")
end)

local function entra_ident(kind, extra)
  local o = { kind = kind, tenant = TENANT, authority = C.identity_authority }
  for k, v in pairs(extra) do o[k] = v end
  return o
end

section("acquire_token: client secret, certificate, workload", function()
  local R = "api://orders-api"
  local before = stat("entra.requests")
  local sec = entra_ident("secret", { client_id = C.secret_app, secret_file = C.secret_file })
  local tok, err = entra.acquire_token { resource = R, identity = sec }
  check("client secret token", tok ~= nil, err)
  if tok then
    local c = claims_of(tok)
    eq("issued by the token endpoint", c.fake_source, "entra")
    eq("to the secret app", c.fake_identity, "secret-app")
    eq("for the resource", c.aud, R)
    check("expires in about an hour", tok.expires_on > now() + 3000 and tok.expires_on <= now() + 3600)
  end
  local tok2 = entra.acquire_token { resource = R, identity = sec }
  check("second call cached", tok and tok2 and tok2.access_token == tok.access_token)
  eq("one token endpoint request", stat("entra.requests"), before + 1)

  local cert = entra_ident("certificate", { client_id = C.cert_app, cert = C.cert_file, key = C.key_file })
  before = stat("entra.requests")
  local tc, ec = entra.acquire_token { resource = R, identity = cert }
  check("client certificate token", tc ~= nil, ec)
  eq("to the certificate app", tc and claims_of(tc).fake_identity, "cert-app")
  local tc2 = entra.acquire_token { resource = R, identity = cert }
  check("second call cached", tc and tc2 and tc2.access_token == tc.access_token)
  eq("one request for the certificate identity", stat("entra.requests"), before + 1)

  local wl = entra_ident("workload", { client_id = C.workload_app, token_file = C.workload_token_file })
  local tw, ew = entra.acquire_token { resource = R, identity = wl }
  check("workload identity token", tw ~= nil, ew)
  eq("to the workload app", tw and claims_of(tw).fake_identity, "workload-app")

  local bad = entra_ident("secret", { client_id = C.secret_app, secret_file = C.bad_secret_file })
  local tb, eb = entra.acquire_token { resource = R, identity = bad }
  check("a wrong secret -> nil", tb == nil)
  contains("a wrong secret -> the endpoint's error code", eb, "invalid_client")
  check("the error never holds the secret", eb and not eb:find(C.bad_secret, 1, true))
  local tk, ek = entra.acquire_token { resource = R, identity = entra_ident("certificate",
    { client_id = C.cert_app, cert = C.cert_file, key = C.secret_file }) }
  check("an unreadable private key -> nil, err", tk == nil and ek and ek:find("private key", 1, true), ek)
  local tm, em = entra.acquire_token { resource = R, identity = entra_ident("secret",
    { client_id = C.secret_app, secret_file = "/nonexistent/secret" }) }
  check("a missing secret file -> nil, err", tm == nil and em and em:find("not a readable file", 1, true), em)
end)

section("acquire_token: endpoint errors", function()
  -- 400 with an error body: final, not retried.
  local R400 = "https://err400.example"
  script("imds", '[{"status":400,"body":{"error":"invalid_resource","error_description":"AADSTS500011: no such resource"}}]')
  local before = stat("imds.requests")
  local tok, err = entra.acquire_token { resource = R400, identity = { source = "imds", endpoint = IMDS } }
  check("IMDS 400 -> nil", tok == nil)
  contains("IMDS 400 -> the endpoint's error code", err, "invalid_resource")
  contains("IMDS 400 -> the endpoint's description", err, "AADSTS500011")
  eq("400 is not retried", stat("imds.requests"), before + 1)
  local t0 = clock()
  local tok2, err2 = entra.acquire_token { resource = R400, identity = { source = "imds", endpoint = IMDS } }
  check("a second call inside the failure backoff answers at once",
        tok2 == nil and clock() - t0 < 1 and err2 and err2:find("invalid_resource", 1, true), err2)
  eq("and makes no request", stat("imds.requests"), before + 1)

  -- 500: retried with backoff until the timeout.
  mode("imds", "500")
  before = stat("imds.requests")
  t0 = clock()
  local t5, e5, ra = entra.acquire_token { resource = "https://err500.example", timeout = 5,
                                           identity = { source = "imds", endpoint = IMDS } }
  local dt = clock() - t0
  mode("imds", nil)
  check("IMDS 500 -> nil", t5 == nil)
  contains("IMDS 500 -> the endpoint's error code", e5, "unknown")
  check("IMDS 500 was retried", stat("imds.requests") - before >= 2, stat("imds.requests") - before)
  check("IMDS 500 gave up within the timeout", dt < 6.5, dt)
  check("a retry_after hint comes third", math.type(ra) == "integer" and ra > 0, ra)

  mode("entra", "500")
  before = stat("entra.requests")
  t0 = clock()
  local te, ee = entra.acquire_token { resource = "api://err500", timeout = 4,
    identity = entra_ident("secret", { client_id = C.secret_app, secret_file = C.secret_file }) }
  dt = clock() - t0
  mode("entra", nil)
  check("token endpoint 500 -> nil", te == nil)
  contains("token endpoint 500 -> the endpoint's error code", ee, "server_error")
  check("token endpoint 500 was retried", stat("entra.requests") - before >= 2, stat("entra.requests") - before)
  check("token endpoint 500 gave up within the timeout", dt < 5.5, dt)
end)

section("acquire_token: misuse raises", function()
  local I = { source = "imds", endpoint = IMDS }
  raises("no options", function() entra.acquire_token() end)
  raises("no resource", function() entra.acquire_token { identity = I } end, "resource is required")
  raises("empty resource", function() entra.acquire_token { resource = "", identity = I } end, "resource")
  raises("resource with a newline", function() entra.acquire_token { resource = "a\nb", identity = I } end, "control")
  raises("identity not a table", function() entra.acquire_token { resource = "r", identity = "x" } end, "identity")
  raises("unknown kind", function()
    entra.acquire_token { resource = "r", identity = { kind = "password" } } end, "kind must be")
  raises("two selectors", function()
    entra.acquire_token { resource = "r", identity = { source = "imds", client_id = "a", object_id = "b" } }
  end, "exactly one selector")
  raises("unknown source", function()
    entra.acquire_token { resource = "r", identity = { source = "cloudshell" } } end, "source must be")
  raises("a secret itself", function()
    entra.acquire_token { resource = "r", identity = { kind = "secret", secret = "hunter2" } }
  end, "never pass a secret")
  raises("secret without secret_file", function()
    entra.acquire_token { resource = "r", identity = { kind = "secret", tenant = TENANT, client_id = "c" } }
  end, "secret_file")
  raises("certificate without key", function()
    entra.acquire_token { resource = "r", identity = { kind = "certificate", tenant = TENANT, client_id = "c", cert = "x" } }
  end, "cert and key")
  raises("bad tenant", function()
    entra.acquire_token { resource = "r", identity = { kind = "secret", tenant = "contoso", client_id = "c", secret_file = "x" } }
  end, "tenant")
  raises("ftp endpoint", function()
    entra.acquire_token { resource = "r", identity = { source = "imds", endpoint = "ftp://x/" } } end, "http")
  raises("relative arc_key_dir", function()
    entra.acquire_token { resource = "r", identity = { source = "arc", arc_key_dir = "tokens" } } end, "arc_key_dir")
  raises("timeout 0", function() entra.acquire_token { resource = "r", identity = I, timeout = 0 } end, "timeout")
  raises("timeout too long", function() entra.acquire_token { resource = "r", identity = I, timeout = 500 } end, "timeout")
  raises("unknown option", function() entra.acquire_token { resource = "r", identiy = I } end, "unknown option")
  raises("unknown identity option", function()
    entra.acquire_token { resource = "r", identity = { source = "imds", tenant = TENANT } } end, "unknown option 'tenant'")
end)

section("module instances are independent", function()
  local path = package.searchpath("entra", package.cpath)
  local open = path and package.loadlib(path, "luaopen_entra")
  check("entra.so found through package.cpath", open ~= nil, path)
  if not open then return end
  local R = "https://vault.azure.net"
  local I = { source = "imds", endpoint = IMDS }
  local e2 = open()
  local before = stat("imds.requests")
  local tok = e2.acquire_token { resource = R, identity = I }
  check("a second instance has its own token cache", tok ~= nil and stat("imds.requests") == before + 1)
  check("and works for verification", e2.verifier { tenant = TENANT, audience = AUD_GUID, authority = AUTH }
        :verify(C.tok_good) ~= nil)
  e2 = nil
  collectgarbage()
  collectgarbage()
  local again = entra.acquire_token { resource = R, identity = I }
  check("the first instance still serves from its cache after the second is collected",
        again ~= nil and stat("imds.requests") == before + 1)
  check("and still verifies", new_verifier():verify(C.tok_good) ~= nil)
end)

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1, true)
