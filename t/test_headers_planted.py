"""The backend never sees a value the client planted in a header the module owns, and no
control byte (below 0x20 but HTAB, or 0x7f) reaches a backend header or REMOTE_USER.

- `X-Entra-*` in any case and with '_' for '-' (CGI, WSGI and Django fold both) is removed from
  every request, repeats included, on protected and unprotected routes alike.
- Names declared with `EntraLuaHeaders` are removed wherever the section's rules run, whether
  or not the rule sets them this time; a rule setting an undeclared name is denied (403).
- Control bytes: a claim value is not passed (logged by name), a REMOTE_USER claim is a 401,
  a rule's header value denies, an outbound token is a fetch error (EntraProxyTokenOnError).
"""

import http.client
import json
import os
import re
import time

import pytest

import conformance
import entra_tokens as et
from checks import expect_insufficient_scope, expect_invalid_token, expect_ok
from echo_backend import headers_of
from outbound import backend_headers, get, managed, oenv, route  # noqa: F401
from stack import finish_stack

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, "lua_rules", "headers.lua")
TENANT = et.TENANT

# Client spellings of module-owned names: case, '_' for '-', both, and repeats.
PLANTED = [("X-Entra-Oid", "planted-1"), ("X-Entra-Oid", "planted-2"), ("X_Entra_Oid", "planted-3"),
           ("x-entra-oid", "planted-4"), ("x-entra_oid", "planted-5"), ("X_ENTRA-Oid", "planted-6"),
           ("X-ENTRA_ROLES", "planted-7"), ("x_entra_roles", "planted-8"), ("X-Entra-Name", "planted-9"),
           ("X_Entra_Something_Else", "planted-10"), ("x-eNtRa-other", "planted-11")]


def _lua(path: str, require: str, extra: str = "") -> str:
    lines = f'EntraLuaRules "{RULES}"\n  EntraLuaHeaders X-Customer X_Tenant X-Seen-Customer'
    return conformance.location(path, require, lines + (f"\n  {extra}" if extra else ""))


def _locations(authority: str) -> str:
    return "\n".join([
        "<Location /open>\n  Require all granted\n</Location>",
        conformance.location("/pc", "Require valid-user", "EntraPassClaims oid roles name"),
        conformance.location("/upn", "Require valid-user", "EntraRemoteUserClaim upn"),
        _lua("/lua", "Require entra-lua maybe_set"),
        _lua("/lundecl", "Require entra-lua set_undeclared"),
        _lua("/lentra", "Require entra-lua set_entra"),
        _lua("/lserver", "Require entra-lua set_server_wide"),
        _lua("/lvalue", "Require entra-lua set_value"),
        # No EntraLuaHeaders of its own and no rules: X-Customer is the client's business here.
        conformance.location("/nolua", "Require valid-user"),
    ])


PATHS = ["/open", "/pc", "/upn", "/lua", "/lundecl", "/lentra", "/lserver", "/lvalue", "/nolua"]


@pytest.fixture(scope="module")
def hstack(make_stack):
    s = make_stack("headers-planted", locations=_locations, files=PATHS,
                   server_conf=lambda auth: conformance.server_conf(auth, extra="EntraLuaHeaders X-Server-Wide\n"))
    yield s
    finish_stack(s)


def raw_get(s, path: str, headers: list[tuple[str, str]], token: str | None = None) -> tuple[int, dict, str]:
    """GET with headers exactly as given (repeats and spellings kept): (status, backend headers, body)."""
    u = s.httpd.url(path)
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", u)
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=30)
    try:
        conn.putrequest("GET", m.group(3))
        if token:
            conn.putheader("Authorization", f"Bearer {token}")
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read().decode("utf-8", "replace")
    finally:
        conn.close()
    seen = {}
    if r.status == 200 and body.startswith("{"):
        for k, v in json.loads(body)["headers"]:
            seen.setdefault(k.lower(), []).append(v)
    return r.status, seen, body


def entra_like(seen: dict) -> dict:
    """Backend headers whose name folds to x-entra-*."""
    return {k: v for k, v in seen.items() if k.replace("_", "-").startswith("x-entra-")}


def mark(s) -> int:
    return len(s.httpd.error_log_text())


def log_since(s, m: int) -> str:
    return s.httpd.error_log_text()[m:]


# ------------------------------------------------------------------ X-Entra-* in every spelling

def test_planted_entra_headers_never_reach_a_protected_backend(hstack):
    s = hstack
    oid = "0b5e4c1a-aaaa-4bbb-8ccc-000000000010"
    status, seen, body = raw_get(s, "/pc/echo", PLANTED, s.token(oid=oid, roles=["Orders.Read", "B"], name="Real"))
    assert status == 200, body[:300]
    got = entra_like(seen)
    assert got == {"x-entra-oid": [oid], "x-entra-roles": ["Orders.Read, B"], "x-entra-name": ["Real"]}, \
        f"the backend saw planted or doubled X-Entra-* headers: {got}"
    assert "planted" not in body


def test_planted_entra_headers_never_reach_an_open_backend(hstack):
    """No AuthType on the route: the headers go all the same (post_read_request)."""
    status, seen, body = raw_get(hstack, "/open/echo", PLANTED + [("X-Other", "kept")])
    assert status == 200, body[:300]
    assert entra_like(seen) == {}, f"planted X-Entra-* reached an open route: {entra_like(seen)}"
    assert seen.get("x-other") == ["kept"]


def test_lookalike_names_are_not_stripped(hstack):
    """Only the X-Entra- prefix is owned: X-Entrance, X-EntraOid pass as any client header."""
    status, seen, _ = raw_get(hstack, "/open/echo", [("X-Entrance", "a"), ("X-EntraOid", "b"), ("Entra-Oid", "c")])
    assert status == 200
    assert seen.get("x-entrance") == ["a"] and seen.get("x-entraoid") == ["b"] and seen.get("entra-oid") == ["c"]


# ------------------------------------------------------------------ EntraLuaHeaders

CUSTOMER_SPELLINGS = [("X-Customer", "planted-a"), ("X-Customer", "planted-b"), ("x_customer", "planted-c"),
                      ("X-CUSTOMER", "planted-d"), ("X-Tenant", "planted-e"), ("x_tenant", "planted-f"),
                      ("X-Server-Wide", "planted-g"), ("X_SERVER_WIDE", "planted-h")]


def _folded(seen: dict, name: str) -> list:
    want = name.lower().replace("_", "-")
    return [v for k, vs in seen.items() if k.replace("_", "-") == want for v in vs]


def test_declared_headers_are_stripped_when_the_rule_does_not_set_them(hstack):
    status, seen, body = raw_get(hstack, "/lua/echo", CUSTOMER_SPELLINGS, hstack.token())
    assert status == 200, body[:300]
    assert "planted" not in body, f"a planted declared header reached the backend: {seen}"
    # The rule ran and could not see the client's X-Customer either.
    assert seen.get("x-seen-customer") == ["<nil>"]


def test_declared_headers_set_by_the_rule_replace_every_planted_spelling(hstack):
    status, seen, body = raw_get(hstack, "/lua/echo?set=1", CUSTOMER_SPELLINGS, hstack.token())
    assert status == 200, body[:300]
    assert _folded(seen, "X-Customer") == ["from-rule"], seen
    assert _folded(seen, "X-Tenant") == [TENANT], seen
    assert "planted" not in body


def test_server_level_declarations_add_to_the_section(hstack):
    """EntraLuaHeaders at server level and in the Location: both sets are owned."""
    status, seen, body = raw_get(hstack, "/lserver/echo", CUSTOMER_SPELLINGS, hstack.token())
    assert status == 200, body[:300]
    assert _folded(seen, "X-Server-Wide") == ["rule-value"], seen
    assert "planted" not in body


def test_declared_names_are_the_clients_where_no_rules_run(hstack):
    """/nolua has no EntraLuaHeaders of its own, but inherits X-Server-Wide from the server."""
    status, seen, body = raw_get(hstack, "/nolua/echo", [("X-Customer", "client-value"), ("X_Server_Wide", "p")],
                                 hstack.token())
    assert status == 200, body[:300]
    assert seen.get("x-customer") == ["client-value"]
    assert _folded(seen, "X-Server-Wide") == []


def test_undeclared_header_denies_and_names_it(hstack):
    s = hstack
    m = mark(s)
    status, seen, body = raw_get(s, "/lundecl/echo", [], s.token())
    assert status == 403, (status, body[:300])
    text = log_since(s, m)
    assert re.search(r"ENTRA0551: lua: set_undeclared set header 'X-Undeclared-Name', which is not declared "
                     r"with EntraLuaHeaders: denied", text), text[-2000:]
    assert "X-Undeclared-Name" not in body


def test_entra_headers_need_no_declaration(hstack):
    status, seen, body = raw_get(hstack, "/lentra/echo", [("X-Entra-Rule", "planted")], hstack.token())
    assert status == 200, body[:300]
    assert seen.get("x-entra-rule") == ["rule-value"]
    assert seen.get("x_entra_rule2") == ["rule-value-2"]
    assert "planted" not in body


# ------------------------------------------------------------------ control bytes

@pytest.mark.parametrize("case", ["soh", "del", "esc", "nul"])
def test_rule_header_value_with_control_bytes_denies(hstack, case):
    s = hstack
    m = mark(s)
    r = s.get("/lvalue/echo", s.token(), params={"v": case})
    expect_insufficient_scope(r)
    assert "ENTRA0406: lua: set_value asked for an invalid header: denied" in log_since(s, m)


def test_rule_header_value_with_a_tab_passes(hstack):
    r = hstack.get("/lvalue/echo", hstack.token(), params={"v": "tab"})
    expect_ok(r)
    assert headers_of(r)["x-customer"] == ["a\tb"]


@pytest.mark.parametrize("value", ["a\u0001b", "a\u007fb", "a\u001bb", "a\rb", "a\nX-Injected: 1"],
                         ids=["soh", "del", "esc", "cr", "lf"])
def test_claim_with_control_bytes_is_not_passed(hstack, value):
    s = hstack
    oid = "0b5e4c1a-aaaa-4bbb-8ccc-000000000011"
    m = mark(s)
    r = s.get("/pc/echo", s.token(oid=oid, name=value, roles=["Orders.Read", "x" + value]))
    expect_ok(r)
    h = headers_of(r)
    assert "x-entra-name" not in h and "x-entra-roles" not in h, f"control bytes reached the backend: {h}"
    assert "x-injected" not in h
    assert h["x-entra-oid"] == [oid], "the clean claims still pass"
    text = log_since(s, m)
    assert "ENTRA0550: claim name has control characters: not passed to the backend" in text, text[-2000:]
    assert "ENTRA0550: claim roles has control characters: not passed to the backend" in text
    assert "a\\x01b" not in text and "a\x01b" not in text  # the value itself is never logged
    # The env var (for CGI and LogFormat) is omitted as well.
    assert h.get("x-test-env-roles") in (None, [""]), h.get("x-test-env-roles")
    assert h["x-test-env-oid"] == [oid]


def test_claim_with_a_tab_is_passed(hstack):
    r = hstack.get("/pc/echo", hstack.token(name="a\tb"))
    expect_ok(r)
    assert headers_of(r)["x-entra-name"] == ["a\tb"]


@pytest.mark.parametrize("value", ["user\u0001@contoso.com", "user\u007f@contoso.com", "user\n@contoso.com"],
                         ids=["soh", "del", "lf"])
def test_remote_user_claim_with_control_bytes_is_401(hstack, value):
    s = hstack
    tok = s.token(upn=value)
    r = s.get("/upn/echo", tok)
    expect_invalid_token(r, tok, desc_contains="token has an invalid upn claim")


def test_remote_user_claim_with_a_tab_is_accepted(hstack):
    r = hstack.get("/upn/echo", hstack.token(upn="user\t@contoso.com"))
    expect_ok(r)
    assert headers_of(r)["x-test-remote-user"] == ["user\t@contoso.com"]


# ------------------------------------------------------------------ outbound token

def _imds_answer(token: str) -> dict:
    now = int(time.time())
    return {"status": 200, "body": {"access_token": token, "expires_in": "3599", "expires_on": str(now + 3599),
                                    "not_before": str(now), "resource": "api://x", "token_type": "Bearer"}}


@pytest.fixture(scope="module")
def ofake(oenv):
    fake = oenv.fake()
    yield fake
    fake.mode("imds", None)


def _outbound_httpd(oenv, fake, token: str):
    """An httpd whose identity endpoint answers every fetch (from startup on) with `token`."""
    fake.mode("imds", _imds_answer(token))
    b = oenv.backend
    return oenv.httpd(managed("sys", fake) + "\nEntraTokenTimeout 2\n",
                      route("deny", b, "EntraProxyToken api://ctl identity=sys")
                      + route("pass", b, "EntraProxyToken api://ctl identity=sys", "EntraProxyTokenOnError pass")
                      ).start()


CLIENT = {"Authorization": "Bearer client-token-must-not-travel"}


@pytest.mark.parametrize("token", ["eyJhbGciOi.\u0001X-Injected: 1.sig", "eyJhbGciOi.a\u007fb.sig",
                                   "eyJhbGciOi.a\rX-Injected: 1.sig"], ids=["soh", "del", "cr"])
def test_outbound_token_with_control_bytes_is_never_attached(oenv, ofake, token):
    h = _outbound_httpd(oenv, ofake, token)
    try:
        r = get(h.url("/deny/echo"), headers=CLIENT, timeout=30)
        assert r.status_code == 503, f"{r.status_code} {r.text[:300]}"
        assert r.headers.get("Retry-After", "").isdigit()
        seen = backend_headers(get(h.url("/pass/echo"), headers=CLIENT, timeout=30))
        assert "authorization" not in seen and "x-injected" not in seen, seen
        text = h.error_log_text()
        assert re.search(r"ENTRA030[13]: .*access_token has control characters", text), text[-2000:]
        assert "ENTRA0304" in text and "ENTRA0305" in text
    finally:
        oenv.stop_httpd(h)


def test_outbound_clean_token_from_the_same_answer_is_attached(oenv, ofake):
    """Control for the case above: the same scripted answer with a clean token works."""
    h = _outbound_httpd(oenv, ofake, "eyJhbGciOi.clean\tpart.sig")
    try:
        seen = backend_headers(get(h.url("/deny/echo"), headers=CLIENT, timeout=30))
        assert seen.get("authorization") == ["Bearer eyJhbGciOi.clean\tpart.sig"], seen
    finally:
        oenv.stop_httpd(h)


# ------------------------------------------------------------------ configuration

@pytest.mark.parametrize("line,expect", [
    *[(f"EntraLuaHeaders {n}", f"'{n}' belongs to httpd or the client")
      for n in ("Host", "Content-Length", "Content-Type", "Content-Encoding", "Transfer-Encoding", "TE",
                "Trailer", "Connection", "Keep-Alive", "Upgrade", "Expect", "Proxy-Connection",
                "Proxy-Authenticate", "Proxy-Authorization", "Authorization", "Cookie", "host", "COOKIE")],
    ("EntraLuaHeaders content_length", "'content_length' belongs to httpd or the client"),
    ("EntraLuaHeaders X-Ok Authorization", "'Authorization' belongs to httpd or the client"),
    ('EntraLuaHeaders "X Bad"', "'X Bad' is not a header name"),
    ("EntraLuaHeaders X-Bad:", "'X-Bad:' is not a header name"),
    ("EntraLuaHeaders X-" + "a" * 130, "is not a header name"),
    ("EntraLuaHeaders", "EntraLuaHeaders"),
])
def test_bad_lua_headers_fail_the_config_test(hstack, line, expect):
    rc, out = hstack.httpd.config_test(locations=_lua("/x", "Require entra-lua maybe_set", line))
    assert rc != 0, out
    assert expect in out, out


def test_good_lua_headers_pass_the_config_test(hstack):
    rc, out = hstack.httpd.config_test(
        locations=_lua("/x", "Require entra-lua maybe_set", "EntraLuaHeaders X-Entra-Extra x_under Mixed-Case_1"))
    assert rc == 0, out
