"""Require entra-lua: authorization rules in Lua 5.4, end to end against the real apache2.

What a rule sees (request view, claims, Require-line arguments), what its answers do
(allow, deny with a logged reason, headers for the backend), how it composes with the other
providers, and that hostile rules (loops, memory bombs, forbidden libraries, tampering,
stale views, finalizers, deep recursion) are denied and logged without leaking anything into
the response, while the server keeps serving.

Rule files: t/lua_rules/rules.lua, t/lua_rules/hostile.lua, conf/rules.lua (the shipped example).

Each EntraLuaRules directive has its own pool of states: the /h_* locations inherit one
server-level EntraLuaRules (hostile.lua) so that a hostile rule and the normal rule run right
after it share a pool; each /t_<way> tampering location has its own pool in which the
tampering rule and the checking rule meet (keep-alive keeps them in one process).
Runaway rules that may hang a worker thread run last, on a separate stack.
"""

import concurrent.futures
import datetime
import os
import re
import threading
import time
import uuid

import pytest
import requests

import conformance
import entra_tokens as et
from checks import (child_crashes, expect_insufficient_scope, expect_invalid_token, expect_no_token,
                    expect_ok)
from echo_backend import headers_of
from stack import finish_stack

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RULES = os.path.join(HERE, "lua_rules", "rules.lua")
HOSTILE = os.path.join(HERE, "lua_rules", "hostile.lua")
SYNTAX_ERROR = os.path.join(HERE, "lua_rules", "syntax_error.lua")
SHIPPED = os.path.join(REPO, "conf", "rules.lua")

TENANT = et.TENANT
TENANT_2 = et.ALLOWED_TENANT_2
BILLING_APP = "b111111a-0000-4000-8000-00000000b111"

# Strings that must never reach a client: log codes, tracebacks, file names, rule reasons.
LEAK_MARKERS = ["ENTRA04", "stack traceback", "traceback", ".lua", "lua_rules", "RUNTIME-MARKER",
                "DENY-REASON", "TAMPER", "ARGS-MISMATCH", "ARG-OK-MISSING", "NO-SAVED-VIEW",
                "STALE-CLAIMS", "CLOSE-MARKER", "TABLE-ERROR", "instruction budget", "memory limit",
                "not welcome", "sandbox", "needs Orders", "may not call admin", "closed at weekends",
                "finalizers", "only valid during"]

# (function, args on the Require line, expected log regex) — every one must be denied.
PWN_NAMES = ("os_execute", "io_open", "require_os")
HOSTILE_CASES = [
    ("inf_loop", "", r"ENTRA0409: lua: inf_loop failed, denied: instruction budget exhausted"),
    ("pcall_loop", "", r"ENTRA0409: lua: pcall_loop failed, denied: instruction budget exhausted"),
    ("pcall_loop_retry", "", r"ENTRA0409: lua: pcall_loop_retry failed, denied: instruction budget exhausted"),
    ("xpcall_loop", "", r"ENTRA0409: lua: xpcall_loop failed, denied: instruction budget exhausted"),
    ("mem_string", "", r"ENTRA0409: lua: mem_string failed, denied: memory limit reached"),
    ("mem_string_pcall", "", r"ENTRA0409: lua: mem_string_pcall failed, denied: memory limit reached"),
    # A table of 8000 strings near the cap spends its time in emergency collections: whichever
    # limit comes first stops it.
    ("mem_table", "", r"ENTRA0409: lua: mem_table failed, denied: (memory limit reached|time limit reached)"),
    ("mem_concat", "", r"ENTRA0409: lua: mem_concat failed, denied: memory limit reached"),
    ("os_execute", "PWN", r"ENTRA0409: lua: os_execute failed, denied: .*global 'os'"),
    ("io_open", "PWN", r"ENTRA0409: lua: io_open failed, denied: .*global 'io'"),
    ("require_os", "PWN", r"ENTRA0409: lua: require_os failed, denied: .*global 'require'"),
    ("load_bytecode", "", r"ENTRA0409: lua: load_bytecode failed, denied: .*binary chunk"),
    ("load_reader", "", r"ENTRA0409: lua: load_reader failed, denied: .*only text chunks"),
    ("call_dofile", "", r"ENTRA0409: lua: call_dofile failed, denied: .*global 'dofile'"),
    ("call_loadfile", "", r"ENTRA0409: lua: call_loadfile failed, denied: .*global 'loadfile'"),
    ("string_dump", "", r"ENTRA0409: lua: string_dump failed, denied: .*field 'dump'"),
    ("call_collectgarbage", "", r"ENTRA0409: lua: call_collectgarbage failed, denied: .*global 'collectgarbage'"),
    ("call_rawset", "", r"ENTRA0409: lua: call_rawset failed, denied: .*global 'rawset'"),
    ("debug_lib", "", r"ENTRA0409: lua: debug_lib failed, denied: .*global 'debug'"),
    ("write_global", "", r"ENTRA0409: lua: write_global failed, denied: .*may not modify globals"),
    ("write_lib", "", r"ENTRA0409: lua: write_lib failed, denied: .*may not modify globals"),
    ("write_config", "", r"ENTRA0409: lua: write_config failed, denied: .*may not modify globals"),
    ("insert_config", "", r"ENTRA0409: lua: insert_config failed, denied: .*may not modify globals"),
    ("string_mt", "", r"ENTRA0409: lua: string_mt failed, denied: .*attempt to index a boolean value"),
    ("setmt_config", "", r"ENTRA0409: lua: setmt_config failed, denied: .*protected metatable"),
    ("runtime_error", "", r"ENTRA0409: lua: runtime_error failed, denied: .*RUNTIME-MARKER-91c secret detail"
                          r"[\s\S]*stack traceback"),
    ("error_table", "", r"ENTRA0409: lua: error_table failed, denied: "),
    ("nil_index", "", r"ENTRA0409: lua: nil_index failed, denied: .*attempt to index a nil value"),
    ("ret_string", "", r"ENTRA0403: lua: ret_string returned string instead of a boolean: denied"),
    ("ret_nil", "", r"ENTRA0403: lua: ret_nil returned nil instead of a boolean: denied"),
    ("ret_nothing", "", r"ENTRA0403: lua: ret_nothing returned nothing instead of a boolean: denied"),
    ("ret_number", "", r"ENTRA0403: lua: ret_number returned number instead of a boolean: denied"),
    ("ret_table", "", r"ENTRA0403: lua: ret_table returned table instead of a boolean: denied"),
    ("gc_finalizer", "", r"ENTRA0409: lua: gc_finalizer failed, denied: .*finalizers \(__gc\) are not allowed"),
    ("deep_recursion", "", r"ENTRA0409: lua: deep_recursion failed, denied: .*(stack overflow|memory limit reached)"),
    ("c_recursion", "", r"ENTRA0409: lua: c_recursion failed, denied: .*(stack overflow|memory limit reached)"),
    ("close_loop", "", r"ENTRA0409: lua: close_loop failed, denied: (instruction budget exhausted|.*CLOSE-MARKER)"),
]

TAMPER_WAYS = ["assign_global", "assign_config", "assign_nested", "assign_lib", "assign_math", "insert",
               "sort", "remove", "setmt", "load_global", "load_env", "string_mt", "pairs_config",
               "pairs_nested", "pairs_list", "pairs_lib", "pairs_math"]

ORIGINAL = {"x-config-tenant": "original-tenant", "x-config-list": "a,b,c,nil", "x-config-len": "3",
            "x-config-deep": "original", "x-upper": "OK", "x-method-upper": "OK", "x-pi": "3.14159",
            "x-injected": "nil"}

BAD_HEADER_CASES = ["space", "colon", "crlf", "lf", "cr", "host", "clen", "te", "conn", "empty", "longname",
                    "longvalue", "tablevalue", "boolvalue", "numkey", "many33", "nulvalue", "nulname"]


# ------------------------------------------------------------------ layout

def _rules(path: str, require: str, rules: str | None = RULES, tenant_lines: str | None = None) -> str:
    extra = f'EntraLuaRules "{rules}"' if rules else ""
    return conformance.location(path, require, extra, tenant_lines=tenant_lines)


def _all(*lines: str) -> str:
    return "<RequireAll>\n" + "".join(f"    {x}\n" for x in lines) + "  </RequireAll>"


def _any(*lines: str) -> str:
    return "<RequireAny>\n" + "".join(f"    {x}\n" for x in lines) + "  </RequireAny>"


MAIN_LOCATIONS = [
    ("/lallow", "Require entra-lua allow", RULES),
    ("/ldeny", "Require entra-lua deny", RULES),
    ("/ldenynr", "Require entra-lua deny_noreason", RULES),
    ("/lview", "Require entra-lua view", RULES),
    ("/largs", 'Require entra-lua args_match one "two words" 3', RULES),
    ("/largsbad", "Require entra-lua args_match one two", RULES),
    ("/lset", "Require entra-lua set_headers", RULES),
    ("/lglobalhdr", "Require entra-lua global_headers", RULES),
    ("/lhcase", "Require entra-lua header_case", RULES),
    ("/lnottable", "Require entra-lua headers_not_a_table", RULES),
    ("/lidiom", "Require entra-lua idiom", RULES),
    ("/orders", "Require entra-lua orders", SHIPPED),
    ("/customer", "Require entra-lua with_customer", SHIPPED),
    ("/adminother", f"Require entra-lua admin_weekdays {et.OTHER_TENANT}", SHIPPED),
    ("/lall", _all("Require entra-lua allow_if_arg", "Require entra-role Orders.Write"), RULES),
    ("/lany", _any("Require entra-lua deny", "Require entra-role Orders.Read"), RULES),
    ("/lany2", _any("Require entra-lua allow", "Require entra-role Orders.Admin"), RULES),
    ("/lnot", _all("Require valid-user", "Require not entra-lua is_blocked"), RULES),
    ("/lnotbroken", _all("Require valid-user", "Require not entra-lua is_blocked_broken"), RULES),
    ("/lnotloop", _all("Require valid-user", "Require not entra-lua is_blocked_loops"), RULES),
    ("/lmarker", "Require entra-lua marker", RULES),
    ("/lloop", "Require entra-lua loop 100000", RULES),
    ("/lbig", "Require entra-lua big_string 2097152", RULES),
    ("/lids", "Require entra-lua echo_ids", RULES),
    ("/lprobe", "Require entra-lua sandbox_probe", RULES),
    ("/lnofunc", "Require entra-lua no_such_function", RULES),
    ("/lnotfunc", "Require entra-lua TENANT", RULES),
]

# Every header the test rule files set, declared once at server level (sections inherit it).
DECLARED_HEADERS = (
    "X-Args X-B X-Bad X-Big X-Caller-App X-Config-Deep X-Config-Len X-Config-List X-Config-Tenant "
    "X-Customer X-From-Global X-Hostile-Ok X-Injected X-Len X-Long X-Method-Upper X-N X-Nul X-Number "
    "X-Oid-Copy X-Pi X-Sandbox-Probe X-Rule-Arg X-Rule-Oid X-Rule-Req X-Stale-Arg X-Stale-Host X-Stale-Method "
    "X-Sum X-T X-Upper X-Version X-Args X-Tab "
    "X-R-App X-R-Arg X-R-Args X-R-Auth X-R-Auth-Lower X-R-Client-Ip X-R-Cookie X-R-Has-Injected "
    "X-R-Has-Read X-R-Has-Scope X-R-Has-Write X-R-Method X-R-Missing-Arg X-R-Missing-Claim X-R-Nargs "
    "X-R-Oid X-R-Path X-R-Probe X-R-Proxy-Auth X-R-Query X-R-Roles X-R-Route X-R-Tid X-R-Time "
    "X-R-Unknown-Field X-R-User X-R-Weekday " + " ".join(f"X-H{i}" for i in range(1, 34)))
DECLARE = f"EntraLuaHeaders {DECLARED_HEADERS}\n"

STALE_FUNCS = ["save_view", "use_view", "use_view_header", "use_view_arg", "use_claims"]
HOSTILE_EXTRA = ["ok"] + STALE_FUNCS


def main_locations(pwn_dir: str):
    def build(authority: str) -> str:
        out = [_rules(p, req, rules) for p, req, rules in MAIN_LOCATIONS]
        out.append(_rules("/admin", f"Require entra-lua admin_weekdays {TENANT}", SHIPPED,
                          tenant_lines=f"EntraTenant common\n  EntraAllowedTenants {TENANT} {TENANT_2}"))
        # /h_*: no EntraLuaRules of their own — they all inherit the server-level hostile.lua, so
        # they share one pool of states (each EntraLuaRules directive has its own pool).
        for name, args, _ in HOSTILE_CASES:
            a = os.path.join(pwn_dir, name) if args == "PWN" else args
            out.append(_rules(f"/h_{name}", f"Require entra-lua {name} {a}".rstrip(), None))
        for name in HOSTILE_EXTRA:
            out.append(_rules(f"/h_{name}", f"Require entra-lua {name}", None))
        # /t_<way>: one pool per tampering way, tamper and check in the same pool.
        for how in TAMPER_WAYS:
            out.append(_rules(f"/t_{how}", "Require entra-lua tamper_check", HOSTILE))
        return "\n".join(out)
    return build


def main_paths() -> list[str]:
    return ([p for p, _, _ in MAIN_LOCATIONS] + ["/admin"] + [f"/h_{n}" for n, _, _ in HOSTILE_CASES]
            + [f"/h_{n}" for n in HOSTILE_EXTRA] + [f"/t_{w}" for w in TAMPER_WAYS])


@pytest.fixture(scope="module")
def pwn_dir(test_root):
    d = os.path.join(test_root, f"lua-pwn-{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    os.chmod(d, 0o777)  # writable by www-data: only the sandbox stands between a rule and this dir
    return d


@pytest.fixture(scope="module")
def lstack(make_stack, pwn_dir):
    s = make_stack("lua-rules", locations=main_locations(pwn_dir), files=main_paths(),
                   server_conf=lambda auth: conformance.server_conf(auth, extra=f'EntraLuaRules "{HOSTILE}"\n' + DECLARE))
    yield s
    finish_stack(s)


LIMIT_LOCATIONS = [
    ("/lloop", "Require entra-lua loop 100000", RULES),
    ("/lshort", "Require entra-lua loop 1000", RULES),
    ("/lbig", "Require entra-lua big_string 2097152", RULES),
    ("/lsmall", "Require entra-lua big_string 100000", RULES),
    ("/lallow", "Require entra-lua allow", RULES),
    ("/h_ok", "Require entra-lua ok", HOSTILE),
    ("/lnorules", "Require entra-lua allow", None),
    ("/h_pattern_backtrack", "Require entra-lua pattern_backtrack", HOSTILE),
    ("/h_xpcall_handler_loop", "Require entra-lua xpcall_handler_loop", HOSTILE),
]


@pytest.fixture(scope="module")
def limits_stack(make_stack):
    s = make_stack(
        "lua-limits",
        server_conf=lambda auth: conformance.server_conf(
            auth, extra="EntraLuaMaxInstructions 20000\nEntraLuaMaxMemory 2097152\n" + DECLARE),
        locations="\n".join(_rules(p, r, f) for p, r, f in LIMIT_LOCATIONS),
        files=[p for p, _, _ in LIMIT_LOCATIONS])
    yield s
    finish_stack(s)


# ------------------------------------------------------------------ helpers

def mark(s) -> int:
    return len(s.httpd.error_log_text())


def log_since(s, m: int) -> str:
    return s.httpd.error_log_text()[m:]


def request(s, method: str, path: str, token: str | None = None, headers: dict | None = None,
            session=None, timeout: float = 30, **kw):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    sess = session or s.session
    r = sess.request(method, s.url(path), headers=h, timeout=timeout, allow_redirects=False, **kw)
    r._stack = s
    return r


def assert_no_leak(r, extra: tuple[str, ...] = ()):
    """Nothing of a rule (reason, traceback, file, log code) in the body or the headers."""
    blob = (r.text or "") + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    for m in LEAK_MARKERS + list(extra):
        assert m.lower() not in blob.lower(), f"response leaks {m!r}: status={r.status_code}\n{blob[:2000]}"


def expect_denied(r, extra: tuple[str, ...] = ()):
    expect_insufficient_scope(r)
    assert_no_leak(r, extra)


def backend(r, what: str = "") -> dict:
    expect_ok(r, what)
    return headers_of(r)


def one(h: dict, name: str):
    vals = h.get(name.lower())
    assert vals is not None, f"backend did not get {name}: {sorted(h)}"
    assert len(vals) == 1, f"backend got {name} {len(vals)} times: {vals}"
    return vals[0]


def denied_and_logged(s, path: str, token: str, pattern: str, method: str = "GET", **kw) -> str:
    m = mark(s)
    r = request(s, method, path, token, **kw)
    expect_denied(r)
    text = log_since(s, m)
    assert re.search(pattern, text), f"expected /{pattern}/ in the error log after {method} {path}; got:\n{text[-3000:]}"
    return text


# ------------------------------------------------------------------ allow / deny

def test_allow(lstack):
    r = request(lstack, "GET", "/lallow/ok.txt", lstack.token())
    expect_ok(r)
    assert r.text == "ok\n"
    assert "WWW-Authenticate" not in r.headers
    h = backend(request(lstack, "GET", "/lallow/echo", lstack.token(oid="1d0e5c1a-aaaa-4bbb-8ccc-000000000001")))
    assert one(h, "X-Test-Remote-User") == "1d0e5c1a-aaaa-4bbb-8ccc-000000000001"


def test_deny_with_reason_is_logged_not_sent(lstack):
    tok = lstack.token()
    text = denied_and_logged(lstack, "/ldeny/ok.txt", tok,
                             r"ENTRA0404: lua: deny denied: DENY-REASON-7f3a caller is not welcome")
    assert tok not in text
    # The echo route is not reached either.
    expect_denied(request(lstack, "GET", "/ldeny/echo", tok))


def test_deny_without_reason(lstack):
    denied_and_logged(lstack, "/ldenynr/ok.txt", lstack.token(), r"ENTRA0404: lua: deny_noreason denied: no reason given")


def test_no_token_and_invalid_token_are_401_before_any_rule(lstack):
    tid = uuid.uuid4().hex
    m = mark(lstack)
    expect_no_token(request(lstack, "GET", "/lmarker/ok.txt", headers={"X-Test-Id": tid}))
    now = int(time.time())
    bad = [lstack.token(now=now - 7200), lstack.token(aud="api://someone-else"), "garbage.token.here",
           et.mint(lstack.key("rsa1"), et.v2_claims(), alg="RS256", signature=b"\x00" * 256)]
    for tok in bad:
        expect_invalid_token(request(lstack, "GET", "/lmarker/ok.txt", tok, headers={"X-Test-Id": tid}), tok)
    assert f"RULE-RAN {tid}" not in log_since(lstack, m), "a rule ran for a request without a valid token"
    # Positive control: with a valid token the rule runs (and print() goes to the error log).
    expect_ok(request(lstack, "GET", "/lmarker/ok.txt", lstack.token(), headers={"X-Test-Id": tid}))
    assert re.search(rf"ENTRA0401: lua: RULE-RAN {tid}", log_since(lstack, m))


# ------------------------------------------------------------------ the request view and claims

def test_request_view_and_claims(lstack):
    oid = str(uuid.uuid4())
    tok = lstack.token(oid=oid, roles=["Orders.Read", "Other.Role"])
    before = datetime.datetime.now(datetime.timezone.utc)
    r = request(lstack, "GET", "/lview/echo", tok, params={"q": "a b&c", "x": "1"},
                headers={"X-Probe": "probe-value", "Cookie": "session=secret-cookie",
                         "Proxy-Authorization": "Basic c2VjcmV0"})
    after = datetime.datetime.now(datetime.timezone.utc)
    h = backend(r)
    assert one(h, "X-R-Method") == "GET"
    assert one(h, "X-R-Path") == "/lview/echo"
    assert one(h, "X-R-Query") == "q=a+b%26c&x=1"
    assert one(h, "X-R-Client-Ip") == "127.0.0.1"
    assert one(h, "X-R-Route") == "/lview"
    assert one(h, "X-R-User") == oid
    assert int(before.timestamp()) - 1 <= int(one(h, "X-R-Time")) <= int(after.timestamp()) + 1
    if before.isoweekday() == after.isoweekday():
        assert one(h, "X-R-Weekday") == str(before.isoweekday())
    assert one(h, "X-R-Unknown-Field") == "nil"
    assert one(h, "X-R-Probe") == "probe-value"
    # Credentials are never visible to rules.
    assert one(h, "X-R-Auth") == "<nil>"
    assert one(h, "X-R-Auth-Lower") == "<nil>"
    assert one(h, "X-R-Cookie") == "<nil>"
    assert one(h, "X-R-Proxy-Auth") == "<nil>"
    assert one(h, "X-R-Arg") == "a b&c"
    assert one(h, "X-R-Missing-Arg") == "<nil>"
    assert one(h, "X-R-Nargs") == "0"
    assert one(h, "X-R-Tid") == TENANT
    assert one(h, "X-R-Oid") == oid
    assert one(h, "X-R-App") == et.CLIENT_APP
    # claims.roles is a fresh copy each time: what the rule appended is gone, has_role unaffected.
    assert one(h, "X-R-Roles") == "Orders.Read,Other.Role"
    assert one(h, "X-R-Has-Read") == "true"
    assert one(h, "X-R-Has-Write") == "false"
    assert one(h, "X-R-Has-Injected") == "false"
    assert one(h, "X-R-Has-Scope") == "false"
    assert one(h, "X-R-Missing-Claim") == "nil"

    h = backend(request(lstack, "GET", "/lview/echo", lstack.token(roles=et.DROP, scp="User.Read Orders.Read")))
    assert one(h, "X-R-Has-Scope") == "true"
    assert one(h, "X-R-Has-Read") == "false"
    assert one(h, "X-R-Roles") == ""


def test_v1_token_app_is_appid(lstack):
    h = backend(request(lstack, "GET", "/lview/echo", lstack.token(v1=True, appid=BILLING_APP)))
    assert one(h, "X-R-App") == BILLING_APP


def test_sandbox_contents(lstack):
    h = backend(request(lstack, "GET", "/lprobe/echo", lstack.token()))
    probe = dict(kv.split("=", 1) for kv in one(h, "X-Sandbox-Probe").split(","))
    for name in ("os", "io", "debug", "package", "require", "dofile", "loadfile", "collectgarbage", "rawset",
                 "coroutine", "_G", "string.dump"):
        assert probe[name] == "nil", f"{name} is available to rules: {probe}"
    for name in ("string", "table", "math", "utf8"):
        assert probe[name] == "table", probe
    for name in ("load", "pcall", "setmetatable", "print"):
        assert probe[name] == "function", probe
    assert probe["mt"] != "table", f"rules can reach the string metatable: {probe}"
    assert one(h, "X-Version") == "Lua 5.4"


def test_require_line_args_reach_the_function(lstack):
    h = backend(request(lstack, "GET", "/largs/echo", lstack.token()))
    assert one(h, "X-Args") == "one|two words|3"
    denied_and_logged(lstack, "/largsbad/ok.txt", lstack.token(),
                      r"ENTRA0404: lua: args_match denied: ARGS-MISMATCH one\|two\|nil\|nil")


# ------------------------------------------------------------------ headers for the backend

def test_headers_set_for_the_backend(lstack):
    oid = str(uuid.uuid4())
    r = request(lstack, "GET", "/lset/echo", lstack.token(oid=oid),
                headers={"X-Customer": "spoofed-by-client", "X-Number": "7"})
    h = backend(r)
    assert h["x-customer"] == [TENANT], "the rule's header must replace what the client sent"
    assert h["x-number"] == ["42"]
    assert one(h, "X-Oid-Copy") == oid
    # Set for the backend, not echoed to the client.
    assert "X-Customer" not in r.headers and "X-Oid-Copy" not in r.headers


def test_header_limits_that_are_allowed(lstack):
    h = backend(request(lstack, "GET", "/lhcase/echo", lstack.token(), params={"case": "ok32"}))
    for i in range(1, 33):
        assert one(h, f"X-H{i}") == f"v{i}"
    h = backend(request(lstack, "GET", "/lhcase/echo", lstack.token(), params={"case": "okbig"}))
    assert one(h, "X-Big") == "v" * 8192


@pytest.mark.parametrize("case", BAD_HEADER_CASES)
def test_invalid_headers_deny(lstack, case):
    m = mark(lstack)
    r = request(lstack, "GET", "/lhcase/echo", lstack.token(), params={"case": case})
    text = log_since(lstack, m)
    if r.status_code == 200:
        seen = {k: v for k, v in headers_of(r).items() if k.startswith("x-")}
        pytest.fail(f"invalid header case {case!r} was allowed; the backend received {seen}")
    expect_denied(r)
    assert "ENTRA0406: lua: header_case asked for an invalid header: denied" in text, text[-2000:]


def test_headers_not_a_table_deny(lstack):
    denied_and_logged(lstack, "/lnottable/echo", lstack.token(),
                      r"ENTRA0405: lua: headers_not_a_table allowed with a number instead of a table of headers")


def test_condition_and_reason_idiom(lstack):
    """`return cond, "reason"`: the reason only matters when cond is false."""
    r = request(lstack, "GET", "/lidiom/echo", lstack.token())
    assert r.status_code == 200, (r.status_code, r.text[:200])
    r = request(lstack, "GET", "/lidiom/echo", lstack.token(roles=["Other"]))
    assert r.status_code == 403, r.status_code
    assert "ENTRA0404: lua: idiom denied: needs Orders.Read" in lstack.httpd.error_log_text()


def test_headers_from_a_global_table_reach_the_backend(lstack):
    """A rule returning a table defined as a global in the rules file (it reads like any table
    to the rule) must get its headers set — not a silent allow without them."""
    r = request(lstack, "GET", "/lglobalhdr/echo", lstack.token())
    h = backend(r)
    assert h.get("x-from-global") == ["global-value"], \
        f"global_headers returned true, GLOBAL_HEADERS but the backend got no X-From-Global: {sorted(h)}"


# ------------------------------------------------------------------ conf/rules.lua (the shipped example)

def test_shipped_orders_rule(lstack):
    s = lstack
    backend(request(s, "GET", "/orders/echo", s.token(roles=["Orders.Read"])))
    expect_ok(request(s, "HEAD", "/orders/ok.txt", s.token(roles=["Orders.Read"])))
    denied_and_logged(s, "/orders/echo", s.token(roles=["Orders.Write"]),
                      r"ENTRA0404: lua: orders denied: GET needs Orders.Read")
    r = request(s, "POST", "/orders/echo", s.token(roles=["Orders.Write"]), data=b"{}")
    backend(r)
    assert r.json()["method"] == "POST"
    denied_and_logged(s, "/orders/echo", s.token(roles=["Orders.Read"]),
                      r"ENTRA0404: lua: orders denied: POST needs Orders.Write", method="POST", data=b"{}")
    # The billing app may POST without Orders.Write: as azp (v2) and as appid (v1).
    backend(request(s, "POST", "/orders/echo", s.token(roles=["Orders.Read"], azp=BILLING_APP), data=b"{}"))
    backend(request(s, "POST", "/orders/echo", s.token(v1=True, roles=et.DROP, appid=BILLING_APP), data=b"{}"))
    denied_and_logged(s, "/orders/echo", s.token(roles=et.DROP, azp=conformance.OTHER_APP),
                      r"ENTRA0404: lua: orders denied: PUT needs Orders.Write", method="PUT", data=b"{}")
    backend(request(s, "DELETE", "/orders/echo", s.token(roles=["Orders.Write"])))


def test_shipped_admin_weekdays_tenant_branch(lstack):
    s = lstack
    # A tenant other than the one on the Require line: denied whatever the day.
    tok = s.token(tenant=TENANT_2, roles=["Orders.Read"])
    denied_and_logged(s, "/admin/ok.txt", tok, rf"ENTRA0404: lua: admin_weekdays denied: tenant {TENANT_2} may not call admin")
    denied_and_logged(s, "/adminother/ok.txt", s.token(),
                      rf"ENTRA0404: lua: admin_weekdays denied: tenant {TENANT} may not call admin")


def test_shipped_admin_weekdays_day_branch(lstack):
    s = lstack
    for _attempt in range(3):
        day0 = datetime.datetime.now(datetime.timezone.utc).isoweekday()
        m = mark(s)
        r = request(s, "GET", "/admin/ok.txt", s.token())
        day1 = datetime.datetime.now(datetime.timezone.utc).isoweekday()
        if day0 == day1:
            break
    else:
        pytest.skip("the UTC day kept changing during the request")
    if day0 <= 5:
        expect_ok(r, f"admin on weekday {day0}")
    else:
        expect_denied(r)
        assert "ENTRA0404: lua: admin_weekdays denied: admin is closed at weekends" in log_since(s, m)


def test_shipped_with_customer(lstack):
    s = lstack
    h = backend(request(s, "GET", "/customer/echo", s.token(roles=["Orders.Read"]),
                        headers={"X-Customer": "spoofed", "X-Caller-App": "spoofed"}))
    assert h["x-customer"] == [TENANT]
    assert h["x-caller-app"] == [et.CLIENT_APP]
    denied_and_logged(s, "/customer/echo", s.token(roles=["Orders.Write"]),
                      r"ENTRA0404: lua: with_customer denied: needs Orders.Read")


# ------------------------------------------------------------------ composition

def test_require_all_with_entra_role(lstack):
    s = lstack
    w = s.token(roles=["Orders.Write"])
    expect_ok(request(s, "GET", "/lall/ok.txt", w, params={"ok": "1"}))
    expect_denied(request(s, "GET", "/lall/ok.txt", s.token(roles=["Orders.Read"]), params={"ok": "1"}))
    denied_and_logged(s, "/lall/ok.txt", w, r"ENTRA0404: lua: allow_if_arg denied: ARG-OK-MISSING")


def test_require_any_with_entra_role(lstack):
    s = lstack
    # The rule denies, the role grants.
    m = mark(s)
    expect_ok(request(s, "GET", "/lany/ok.txt", s.token(roles=["Orders.Read"])))
    expect_denied(request(s, "GET", "/lany/ok.txt", s.token(roles=["Orders.Write"])))
    assert "ENTRA0404: lua: deny denied" in log_since(s, m)
    # The rule grants, the role would not.
    expect_ok(request(s, "GET", "/lany2/ok.txt", s.token(roles=["Orders.Read"])))


def test_require_not_entra_lua(lstack):
    s = lstack
    expect_ok(request(s, "GET", "/lnot/ok.txt", s.token()))
    expect_denied(request(s, "GET", "/lnot/ok.txt", s.token(), params={"blocked": "1"}))


@pytest.mark.parametrize("path,pattern", [
    ("/lnotbroken", r"ENTRA0409: lua: is_blocked_broken failed, denied: .*attempt to index a nil value"),
    ("/lnotloop", r"ENTRA0409: lua: is_blocked_loops failed, denied: instruction budget exhausted"),
], ids=["runtime-error", "budget-exhausted"])
def test_failing_rule_under_require_not_does_not_grant(lstack, path, pattern):
    """'A script error, an exhausted budget ... denies the request': a rule that fails must not
    let the request in when it is used negated (Require not entra-lua <blocklist check>)."""
    m = mark(lstack)
    r = request(lstack, "GET", f"{path}/ok.txt", lstack.token())
    text = log_since(lstack, m)
    assert re.search(pattern, text), text[-2000:]
    assert r.status_code != 200, (f"{path}: the rule failed ({pattern}) yet the request was allowed "
                                  f"(status 200): under 'Require not', the failure counts as 'not blocked'")
    assert r.status_code in (403, 500), r.status_code
    assert_no_leak(r)


def test_misconfigured_rules_deny(lstack, limits_stack):
    denied_and_logged(limits_stack, "/lnorules/ok.txt", limits_stack.token(),
                      r"ENTRA0407: Require entra-lua allow without EntraLuaRules here: denied")
    s = lstack
    denied_and_logged(s, "/lnofunc/ok.txt", s.token(), r"ENTRA0408: lua: no_such_function is not a function in .*rules\.lua: denied")
    denied_and_logged(s, "/lnotfunc/ok.txt", s.token(), r"ENTRA0408: lua: TENANT is not a function in .*rules\.lua: denied")


# ------------------------------------------------------------------ hostile rules

@pytest.mark.parametrize("name,args,pattern", HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_rule_is_denied_and_server_keeps_serving(lstack, pwn_dir, name, args, pattern):
    s = lstack
    tok = s.token()
    m = mark(s)
    t0 = time.monotonic()
    r = request(s, "GET", f"/h_{name}/ok.txt", tok, timeout=20)
    elapsed = time.monotonic() - t0
    text = log_since(s, m)
    assert r.status_code != 200, f"hostile rule {name} was allowed; log:\n{text[-2000:]}"
    expect_denied(r)
    assert re.search(pattern, text), f"expected /{pattern}/ in the error log; got:\n{text[-3000:]}"
    assert elapsed < 10, f"{name} took {elapsed:.1f} s"
    if name in PWN_NAMES:
        assert not os.path.exists(os.path.join(pwn_dir, name)), f"{name} wrote {os.path.join(pwn_dir, name)}"
    # A normal rule from the same rules file (the same pool of states) works right after.
    h = backend(request(s, "GET", "/h_ok/echo", tok), f"after {name}")
    assert one(h, "X-Hostile-Ok") == "yes"
    assert s.httpd.proc.poll() is None, "apache2 exited"


@pytest.mark.parametrize("how", TAMPER_WAYS)
def test_tampering_does_not_persist_into_later_requests(lstack, how):
    """Rule A tries to change a global / library table / table global, catches the error (so
    its state is kept and reused), denies; rule B, in the same Location (the same pool of
    states; same process through keep-alive; the pool is LIFO, so usually the very same
    state), must still see the original values."""
    s = lstack
    sess = requests.Session()
    sess.trust_env = False
    tok = s.token()
    problems = []
    try:
        for i in range(4):
            m = mark(s)
            r = request(s, "GET", f"/t_{how}/ok.txt", tok, session=sess, params={"how": how})
            expect_denied(r)
            text = log_since(s, m)
            hit = re.search(rf"ENTRA0404: lua: tamper_check denied: TAMPER {how} (refused|not-refused)", text)
            assert hit, text[-2000:]
            if hit.group(1) == "not-refused":
                problems.append(f"round {i}: the write '{how}' did not raise")
            h = backend(request(s, "GET", f"/t_{how}/echo", tok, session=sess))
            seen = {k: one(h, k) for k in ORIGINAL}
            if seen != ORIGINAL:
                diff = {k: v for k, v in seen.items() if v != ORIGINAL[k]}
                problems.append(f"round {i}: a later request saw tampered values {diff}")
    finally:
        sess.close()
    assert not problems, f"tampering via {how!r}:\n" + "\n".join(problems)


@pytest.mark.parametrize("user", ["use_view", "use_view_header", "use_view_arg"])
def test_saved_request_view_is_dead_in_later_requests(lstack, user):
    s = lstack
    sess = requests.Session()
    sess.trust_env = False
    tok = s.token()
    stale_seen = 0
    try:
        for _ in range(5):
            expect_ok(request(s, "GET", "/h_save_view/ok.txt", tok, session=sess))
            m = mark(s)
            r = request(s, "GET", f"/h_{user}/echo", tok, session=sess)
            text = log_since(s, m)
            assert r.status_code != 200, f"{user}: a saved request view worked in a later request: {headers_of(r)}"
            expect_denied(r)
            if re.search(rf"ENTRA0409: lua: {user} failed, denied: .*the request view is only valid during the rule call",
                         text):
                stale_seen += 1
            else:
                assert "NO-SAVED-VIEW" in text, text[-2000:]
    finally:
        sess.close()
    assert stale_seen > 0, "never reached the state that saved the view: the test proved nothing"
    h = backend(request(s, "GET", "/h_ok/echo", tok))
    assert one(h, "X-Hostile-Ok") == "yes"


def test_saved_claims_view_does_not_crash(lstack):
    s = lstack
    sess = requests.Session()
    sess.trust_env = False
    try:
        for _ in range(5):
            expect_ok(request(s, "GET", "/h_save_view/ok.txt", s.token(), session=sess))
            m = mark(s)
            expect_denied(request(s, "GET", "/h_use_claims/ok.txt", s.token(), session=sess))
            assert re.search(r"ENTRA0404: lua: use_claims denied: (STALE-CLAIMS read string|NO-SAVED-VIEW)",
                             log_since(s, m))
    finally:
        sess.close()
    backend(request(s, "GET", "/h_ok/echo", s.token()))


def test_server_survived_the_hostile_rules(lstack):
    s = lstack
    assert s.httpd.proc.poll() is None, "apache2 exited"
    text = s.httpd.error_log_text()
    assert not child_crashes(text), "\n".join(child_crashes(text))
    assert "Segmentation fault" not in text and "exit signal" not in text
    for _ in range(10):
        expect_ok(request(s, "GET", "/lallow/ok.txt", s.token()))


# ------------------------------------------------------------------ limits

def test_default_limits_allow_moderate_rules(lstack):
    h = backend(request(lstack, "GET", "/lloop/echo", lstack.token()))
    assert one(h, "X-Sum") == str(100000 * 100001 // 2)
    h = backend(request(lstack, "GET", "/lbig/echo", lstack.token()))
    assert one(h, "X-Len") == "2097152"


def test_lowered_instruction_budget(limits_stack):
    s = limits_stack
    denied_and_logged(s, "/lloop/ok.txt", s.token(), r"ENTRA0409: lua: loop failed, denied: instruction budget exhausted")
    h = backend(request(s, "GET", "/lshort/echo", s.token()))
    assert one(h, "X-Sum") == str(1000 * 1001 // 2)
    expect_ok(request(s, "GET", "/lallow/ok.txt", s.token()))


def test_lowered_memory_cap(limits_stack):
    s = limits_stack
    denied_and_logged(s, "/lbig/ok.txt", s.token(), r"ENTRA0409: lua: big_string failed, denied: memory limit reached")
    h = backend(request(s, "GET", "/lsmall/echo", s.token()))
    assert one(h, "X-Len") == "100000"


# ------------------------------------------------------------------ configuration

def test_syntax_error_fails_config_test_and_names_the_file(lstack):
    rc, out = lstack.httpd.config_test(locations=_rules("/x", "Require entra-lua broken", SYNTAX_ERROR))
    assert rc != 0, out
    assert "syntax_error.lua" in out, out
    assert "'end' expected" in out, out
    # Control: the same layout with a good file passes.
    rc, out = lstack.httpd.config_test(locations=_rules("/x", "Require entra-lua allow", RULES))
    assert rc == 0, out


@pytest.mark.parametrize("locations,server_extra,expect", [
    (lambda: _rules("/x", "Require entra-lua allow", "/nonexistent/rules.lua"), "", "cannot open"),
    (lambda: _rules("/x", "Require entra-lua bad-name", RULES), "", "is not a Lua function name"),
    (lambda: _rules("/x", "Require entra-lua", RULES), "", "needs a function name"),
    (lambda: "", "EntraLuaMaxInstructions 5", "EntraLuaMaxInstructions"),
    (lambda: "", "EntraLuaMaxMemory 1000", "EntraLuaMaxMemory"),
], ids=["missing-file", "bad-function-name", "no-function", "budget-too-small", "memory-too-small"])
def test_bad_lua_configuration_is_refused(lstack, locations, server_extra, expect):
    srv = lstack.httpd.server_conf + "\n" + server_extra
    rc, out = lstack.httpd.config_test(locations=locations(), server_conf=srv)
    assert rc != 0, out
    assert expect in out, out


# ------------------------------------------------------------------ concurrency

def test_concurrent_requests_get_their_own_headers(lstack):
    s = lstack
    jobs = []
    for i in range(200):
        oid = str(uuid.uuid4())
        jobs.append((i, oid, uuid.uuid4().hex, s.token(oid=oid)))
    local = threading.local()
    sessions = []
    lock = threading.Lock()

    def run(job):
        i, oid, rid, tok = job
        if not hasattr(local, "sess"):
            local.sess = requests.Session()
            local.sess.trust_env = False
            with lock:
                sessions.append(local.sess)
        # Connection: close — with 20 clients on 20 worker threads, the event MPM closes idle
        # keep-alive connections whenever all workers are busy, and a request sent on such a
        # connection at that moment is lost (plain httpd behaviour, not the rules').
        r = request(s, "GET", "/lids/echo", tok, headers={"X-Req-Id": rid, "Connection": "close"},
                    params={"n": str(i)}, session=local.sess)
        if r.status_code != 200:
            return f"#{i}: status {r.status_code}"
        h = headers_of(r)
        got = (h.get("x-rule-oid"), h.get("x-rule-req"), h.get("x-rule-arg"))
        if got != ([oid], [rid], [str(i)]):
            return f"#{i}: expected {(oid, rid, i)}, backend got {got}"
        return None

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as ex:
            results = list(ex.map(run, jobs))
    finally:
        for sess in sessions:
            sess.close()
    bad = [x for x in results if x]
    assert not bad, f"{len(bad)} of 200 wrong:\n" + "\n".join(bad[:20])
    assert s.httpd.proc.poll() is None


# ------------------------------------------------------------------ last: runaway rules
# These run last, on the limits stack: if the module fails them, a worker thread stays busy
# until the server is stopped.

RUNAWAY = {
    # One call into C (Lua's pattern matcher) that backtracks for a very long time without
    # executing a single Lua instruction.
    "pattern_backtrack": "string.find(string.rep('a', 26), string.rep('a-', 10)..'b')",
    # The message handler of xpcall loops; the hook's abort re-enters the handler with hooks
    # disabled (the error is raised from inside the count hook).
    "xpcall_handler_loop": "xpcall(function() error('x') end, function(e) while true do end end)",
}


@pytest.mark.parametrize("name", list(RUNAWAY))
def test_runaway_rule_is_stopped_in_bounded_time(limits_stack, name):
    """'each call may run EntraLuaMaxInstructions instructions': a rule must be stopped and
    denied in bounded time, however it spends its time."""
    s = limits_stack
    m = mark(s)
    t0 = time.monotonic()
    try:
        r = request(s, "GET", f"/h_{name}/ok.txt", s.token(), timeout=8)
    except requests.exceptions.ReadTimeout:
        pytest.fail(f"{name}: no answer within 8 s (EntraLuaMaxInstructions 20000): `{RUNAWAY[name]}` keeps "
                    f"a worker thread busy, unbounded by the instruction budget; log since the request:\n"
                    f"{log_since(s, m)[-1500:]}")
    elapsed = time.monotonic() - t0
    assert r.status_code != 200, f"allowed after {elapsed:.1f} s"
    expect_denied(r)
    # The server still answers on other threads.
    backend(request(s, "GET", "/h_ok/echo", s.token()))
