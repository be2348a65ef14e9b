"""Claims in httpd expressions: the string function entra_claim.

- `%{entra_claim:tid}` in string expressions: mod_headers `expr=`;
- `entra_claim('azp') == '...'` in `Require expr`, `<If>` and mod_rewrite's `RewriteCond expr`;
- arrays joined with ", ", a missing claim (or one holding control bytes) is the empty string;
- evaluated before httpd's authentication phase (Require expr, <If>), the function
  authenticates the request there, once; a caller without a valid token still gets the 401
  (or 400) that authentication decided, not mod_authz_core's 403.
"""

import uuid

import pytest

import conformance
import entra_tokens as et
from echo_backend import headers_of
from checks import expect_insufficient_scope, expect_invalid_token, expect_ok, expect_status
from stack import finish_stack

APP = et.CLIENT_APP
OTHER = conformance.OTHER_APP


def _loc(path, require, extra=""):
    return conformance.location(path, require=require, extra=extra)


def _locations(authority):
    return "\n".join([
        "LoadModule rewrite_module /usr/lib/apache2/modules/mod_rewrite.so",
        _loc("/hdr", "Require valid-user",
             'RequestHeader set X-Claim-Tid "expr=%{entra_claim:tid}"\n'
             '  RequestHeader set X-Claim-Roles "expr=%{entra_claim:roles}"\n'
             '  RequestHeader set X-Claim-Missing "expr=[%{entra_claim:no_such_claim}]"\n'
             '  RequestHeader set X-Claim-Ctl "expr=[%{entra_claim:department}]"'),
        _loc("/reqexpr", f"Require expr \"entra_claim('azp') == '{APP}'\""),
        _loc("/ifdeny", "Require valid-user",
             f"<If \"entra_claim('azp') == '{OTHER}'\">\n    Require all denied\n  </If>"),
        _loc("/rw", "Require valid-user",
             "Options +FollowSymLinks\n  RewriteEngine On\n"
             "  RewriteCond expr \"entra_claim('roles') =~ /Orders\\.Admin/\"\n"
             "  RewriteRule ok\\.txt$ admin.txt"),
    ])


@pytest.fixture(scope="module")
def s(make_stack):
    st = make_stack("expr", locations=_locations, files=["/hdr", "/reqexpr", "/ifdeny", "/rw"])
    st.httpd.add_file("rw/admin.txt", "admin\n")
    yield st
    finish_stack(st)


def test_string_expression_in_mod_headers(s):
    claims = et.v2_claims(roles=["Orders.Read", "Orders.Write"], department="Sales\tEast")
    r = s.get("/hdr/echo", s.token(claims=claims))
    expect_ok(r)
    seen = headers_of(r)
    assert seen["x-claim-tid"] == [claims["tid"]]
    assert seen["x-claim-roles"] == ["Orders.Read, Orders.Write"]
    assert seen["x-claim-missing"] == ["[]"]
    assert seen["x-claim-ctl"] == ["[Sales\tEast]"]          # HTAB is allowed


@pytest.mark.parametrize("value", ["a\u0001b", "a\u007fb", "a\rb", "a\nX-Evil: 1"])
def test_claim_with_control_bytes_is_empty(s, value):
    r = s.get("/hdr/echo", s.token(claims=et.v2_claims(department=value)))
    expect_ok(r)
    seen = headers_of(r)
    assert seen["x-claim-ctl"] == ["[]"], seen
    assert "x-evil" not in seen


def test_require_expr_grants_and_denies(s):
    expect_ok(s.get("/reqexpr/ok.txt", s.token(azp=APP)))
    expect_insufficient_scope(s.get("/reqexpr/ok.txt", s.token(azp=OTHER)))


def test_require_expr_without_or_with_a_bad_token_is_401(s):
    r = s.get("/reqexpr/ok.txt")
    expect_status(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert "Unauthorized" in r.text
    bad = s.token(azp=APP, exp=1000000000)
    expect_invalid_token(s.get("/reqexpr/ok.txt", bad), bad, desc_contains="expired")


def test_if_section_sees_the_claims(s):
    expect_ok(s.get("/ifdeny/ok.txt", s.token(azp=APP)))
    r = s.get("/ifdeny/ok.txt", s.token(azp=OTHER))
    expect_status(r, 403)
    expect_status(s.get("/ifdeny/ok.txt"), 401)


def test_rewrite_cond_expr(s):
    r = s.get("/rw/ok.txt", s.token(roles=["Orders.Admin"]))
    expect_ok(r)
    assert r.text == "admin\n"
    r = s.get("/rw/ok.txt", s.token(roles=["Orders.Read"]))
    expect_ok(r)
    assert r.text == "ok\n"


def test_token_verified_once_when_expressions_run_first(s):
    """The <If> evaluates the claim before authentication: the token is still verified once
    (one ENTRA0207 line for the request, from the first evaluation)."""
    oid = str(uuid.uuid4())
    expect_ok(s.get("/ifdeny/ok.txt", s.token(azp=APP, oid=oid, sub=oid)))
    lines = [l for l in s.httpd.error_log_text().splitlines() if "ENTRA0207" in l and oid in l]
    assert len(lines) == 1, lines


def test_bad_claim_name_fails_config_test(s):
    rc, out = s.httpd.config_test(_loc("/x", "Require expr \"entra_claim('') == 'a'\""))
    assert rc > 0 and "entra_claim" in out, out
