"""What mod_entra answers (RFC 6750 401/403/400), where it takes the token from, what it
hands to the application (REMOTE_USER, X-Entra-*, ENTRA_*), and what it logs."""

import http.client
import re
import time
import uuid

import entra_tokens as et
from checks import (assert_log_has_no_tokens, assert_no_token_part, challenge, expect_insufficient_scope,
                    expect_invalid_request, expect_invalid_token, expect_no_token, expect_ok,
                    parse_challenge)
from echo_backend import headers_of


def raw_get(stack, path: str, headers: list[tuple[str, str]]):
    """GET with exactly the given header lines (repeats allowed); returns (status, headers dict)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.httpd.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# ------------------------------------------------------------------ 401 / 403 / 400

def test_no_token_is_401_with_bare_challenge(stack):
    r = stack.get("/any/ok.txt")
    expect_no_token(r)
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="orders"'


def test_other_auth_scheme_counts_as_no_token(stack):
    r = stack.get("/any/ok.txt", headers={"Authorization": "Basic dXNlcjpwYXNzd29yZA=="})
    expect_no_token(r)


def test_valid_token_is_accepted(stack):
    r = stack.get("/any/ok.txt", stack.token())
    expect_ok(r)
    assert r.text == "ok\n"
    assert "WWW-Authenticate" not in r.headers


def test_garbage_token_is_invalid_token(stack):
    tok = "not-a-jwt-at-all"
    expect_invalid_token(stack.get("/any/ok.txt", tok), tok)


def test_expired_token_is_invalid_token(stack):
    now = int(time.time())
    tok = stack.token(now=now - 7200, lifetime=3600)
    desc = expect_invalid_token(stack.get("/any/ok.txt", tok), tok)
    assert "exp" in desc.lower(), desc


def test_empty_bearer_token_is_not_accepted(stack):
    r = stack.get("/any/ok.txt", headers={"Authorization": "Bearer "})
    assert r.status_code in (400, 401), r.status_code
    assert challenge(r).get("realm") == "orders"


def test_valid_token_denied_by_require_is_403_insufficient_scope(stack):
    tok = stack.token(roles=["Orders.Write"])
    r = stack.get("/role/ok.txt", tok)
    expect_insufficient_scope(r)
    # The same token is fine where any valid user is allowed.
    expect_ok(stack.get("/any/ok.txt", tok))


def test_wrong_audience_on_role_location_is_401_not_403(stack):
    tok = stack.token(aud="api://someone-else", roles=["Orders.Read"])
    expect_invalid_token(stack.get("/role/ok.txt", tok), tok)


def test_two_authorization_headers_is_400_invalid_request(stack):
    a, b = stack.token(), stack.token()
    status, headers, _ = raw_get(stack, "/any/ok.txt", [("Host", "127.0.0.1"), ("Authorization", f"Bearer {a}"),
                                                        ("Authorization", f"Bearer {b}")])
    assert status == 400, status
    assert "www-authenticate" in headers, f"400 without a Bearer challenge: {headers}"
    scheme, params = parse_challenge(headers["www-authenticate"])
    assert scheme == "Bearer" and params.get("error") == "invalid_request", headers
    assert params.get("realm") == "orders", headers


def test_two_identical_authorization_headers_is_still_400(stack):
    a = stack.token()
    status, headers, _ = raw_get(stack, "/any/ok.txt", [("Host", "127.0.0.1"), ("Authorization", f"Bearer {a}"),
                                                        ("Authorization", f"Bearer {a}")])
    assert status == 400, status
    assert parse_challenge(headers.get("www-authenticate", ""))[1].get("error") == "invalid_request", headers


def test_token_in_header_and_query_is_400(stack):
    tok = stack.token()
    r = stack.get("/query/ok.txt", tok, params={"access_token": stack.token()})
    expect_invalid_request(r)


def test_error_descriptions_never_contain_the_token(stack):
    now = int(time.time())
    k = stack.key("rsa1")
    bad = [
        stack.token(now=now - 7200),
        stack.token(aud="api://other"),
        stack.token(iss="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0"),
        stack.token(oid="LEAKCHECK-oid-value-that-is-long", aud="api://other"),
        et.mint(k, et.v2_claims(), alg="RS256", signature=b"\x00" * 256),
        et.mint(k, et.v2_claims(), header={"alg": "HS256", "kid": k.kid}, alg="HS256"),
        et.mint(k, raw_claims=b'{"aud":"x","aud":"y"}'),
        "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOiJ4eHh4eHh4eHh4eHh4eHh4In0.c2lnbmF0dXJlc2lnbmF0dXJl",
        et.mint(k, et.v2_claims()) + ".extra",
    ]
    for tok in bad:
        r = stack.get("/any/ok.txt", tok)
        desc = expect_invalid_token(r, tok)
        assert "LEAKCHECK" not in desc
        assert_no_token_part(r.text, tok)


# ------------------------------------------------------------------ where the token comes from

def test_query_token_accepted_where_configured(stack):
    tok = stack.token()
    expect_ok(stack.get("/query/ok.txt", params={"access_token": tok}))
    expect_ok(stack.get("/queryonly/ok.txt", params={"access_token": tok}))
    expect_ok(stack.get("/query/ok.txt", tok))


def test_query_token_ignored_by_default(stack):
    expect_no_token(stack.get("/any/ok.txt", params={"access_token": stack.token()}))


def test_header_ignored_where_only_query_accepted(stack):
    expect_no_token(stack.get("/queryonly/ok.txt", stack.token()))


def test_cookie_token(stack):
    tok = stack.token()
    expect_ok(stack.get("/cookie/ok.txt", headers={"Cookie": f"other=1; entra_at={tok}; x=y"}))
    expect_no_token(stack.get("/cookie/ok.txt", tok))
    expect_no_token(stack.get("/any/ok.txt", headers={"Cookie": f"entra_at={tok}"}))
    expect_no_token(stack.get("/cookie/ok.txt", headers={"Cookie": f"entra_at_other={tok}"}))


def test_invalid_query_token_is_invalid_token(stack):
    tok = stack.token(aud="api://other")
    expect_invalid_token(stack.get("/queryonly/ok.txt", params={"access_token": tok}), tok)


# ------------------------------------------------------------------ what reaches the application

def test_remote_user_is_oid_by_default(stack):
    claims = et.v2_claims()
    tok = stack.token(claims=claims)
    tid = uuid.uuid4().hex
    r = stack.get("/any/echo", tok, headers={"X-Test-Id": tid})
    expect_ok(r)
    seen = headers_of(r)
    assert seen["x-test-remote-user"] == [claims["oid"]]
    assert seen["x-test-auth-type"] == ["Entra"]
    # The access log is written after the response is sent: wait for the line.
    lines = []
    for _ in range(50):
        lines = [line for line in stack.httpd.access_log_text().splitlines() if f"test={tid}" in line]
        if lines:
            break
        time.sleep(0.05)
    assert len(lines) == 1 and f" {claims['oid']} [" in lines[0], lines


def test_remote_user_claim_directive(stack):
    claims = et.v2_claims(sub="subject-" + uuid.uuid4().hex)
    r = stack.get("/sub/echo", stack.token(claims=claims))
    expect_ok(r)
    seen = headers_of(r)
    assert seen["x-test-remote-user"] == [claims["sub"]]
    assert seen["x-entra-oid"] == [claims["oid"]]


def test_pass_claims_to_backend(stack):
    claims = et.v2_claims(roles=["Orders.Read", "Orders.Write"])
    r = stack.get("/pass/echo", stack.token(claims=claims))
    expect_ok(r)
    seen = headers_of(r)
    assert seen["x-entra-oid"] == [claims["oid"]]
    assert seen["x-entra-azp"] == [claims["azp"]]
    assert seen["x-entra-tid"] == [claims["tid"]]
    assert seen["x-entra-roles"] == ["Orders.Read, Orders.Write"]
    names = {k for k, _ in r.json()["headers"]}
    assert {"X-Entra-Oid", "X-Entra-Azp", "X-Entra-Roles", "X-Entra-Tid"} <= names, names
    # Only the configured claims are passed.
    assert "x-entra-sub" not in seen and "x-entra-iss" not in seen
    # ... and the same as environment variables (ENTRA_<CLAIM>).
    assert seen["x-test-env-oid"] == [claims["oid"]]
    assert seen["x-test-env-azp"] == [claims["azp"]]
    assert seen["x-test-env-tid"] == [claims["tid"]]
    assert "Orders.Read" in seen["x-test-env-roles"][0] and "Orders.Write" in seen["x-test-env-roles"][0]


def test_client_supplied_x_entra_headers_are_removed(stack):
    claims = et.v2_claims()
    forged = {"X-Entra-Oid": "forged-oid", "X-Entra-Roles": "Orders.Admin", "x-entra-custom": "1",
              "X-ENTRA-TID": "forged"}
    r = stack.get("/any/echo", stack.token(claims=claims), headers=forged)
    expect_ok(r)
    seen = headers_of(r)
    assert not [k for k in seen if k.startswith("x-entra-")], seen
    r = stack.get("/pass/echo", stack.token(claims=claims), headers=forged)
    expect_ok(r)
    seen = headers_of(r)
    assert seen["x-entra-oid"] == [claims["oid"]]
    assert seen["x-entra-roles"] == ["Orders.Read"]
    assert seen["x-entra-tid"] == [claims["tid"]]
    assert "x-entra-custom" not in seen


def test_array_claim_with_one_element(stack):
    claims = et.v2_claims(roles=["Orders.Read"])
    seen = headers_of(stack.get("/pass/echo", stack.token(claims=claims)))
    assert seen["x-entra-roles"] == ["Orders.Read"]


# ------------------------------------------------------------------ logs

def _info_lines(stack, needle: str) -> list[str]:
    return [line for line in stack.httpd.error_log_text().splitlines()
            if needle in line and "[entra:info]" in line]


def test_rejection_logged_once_at_info_with_reason_ids_and_hash(stack):
    oid = str(uuid.uuid4())
    azp = str(uuid.uuid4())
    now = int(time.time())
    tok = stack.token(now=now - 7200, oid=oid, azp=azp)
    expect_invalid_token(stack.get("/any/ok.txt", tok), tok)
    lines = _info_lines(stack, oid)
    assert len(lines) == 1, f"expected one info line naming the oid, got: {lines}\n" + stack.httpd.error_log_tail()
    line = lines[0]
    assert azp in line, line
    assert "exp" in line.lower(), line
    hashes = et.token_hashes(tok)
    short = re.findall(r"[0-9A-Za-z_-]{8,}", line)
    assert any(h.startswith(s) for s in short for h in hashes), \
        f"no short SHA-256 of the token in: {line}"


def test_rejection_log_names_appid_of_v1_token(stack):
    oid = str(uuid.uuid4())
    appid = str(uuid.uuid4())
    tok = stack.token(v1=True, oid=oid, appid=appid, aud="api://not-ours")
    expect_invalid_token(stack.get("/any/ok.txt", tok), tok)
    lines = _info_lines(stack, oid)
    assert len(lines) == 1 and appid in lines[0], lines


def test_error_log_has_no_tokens(stack):
    # Runs last in this module: everything above sent tokens, good and bad.
    assert_log_has_no_tokens(stack.httpd.error_log_text())

