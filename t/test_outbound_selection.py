"""Outbound: which identity and audience each proxied route gets, and where the token goes.

System- vs user-assigned managed identities (client_id / object_id / resource_id) chosen per
route, two routes with two audiences, `/.default` stripped for managed identity, `header=`,
and the client's own Authorization never reaching the backend.
"""

import pytest

from outbound import (backend_headers, bearer, get, managed, oenv, route, source_requests,  # noqa: F401
                      verify_token)

SYS_AUD = "api://backend-a"
B_AUD = "https://b.example.com"
CLIENT_AUTH = "Bearer client-supplied-token-must-not-travel"


@pytest.fixture(scope="module")
def stack(oenv):
    fake = oenv.fake()
    u1, u2, u3 = (fake.identity(n) for n in ("user1", "user2", "user3"))
    server = "\n".join([
        managed("sys", fake),
        managed("u1", fake, selector=f"client_id={u1['client_id']}"),
        managed("u2", fake, selector=f"object_id={u2['object_id']}"),
        managed("u3", fake, selector=f"resource_id={u3['resource_id']}"),
    ])
    b = oenv.backend
    locations = "".join([
        route("sys", b, f"EntraProxyToken {SYS_AUD}/.default identity=sys"),
        route("sysb", b, f"EntraProxyToken {B_AUD} identity=sys"),
        route("u1", b, f"EntraProxyToken {SYS_AUD} identity=u1"),
        route("u2", b, f"EntraProxyToken {SYS_AUD}/.default identity=u2"),
        route("u3", b, f"EntraProxyToken {B_AUD}/.default identity=u3"),
        route("hdr", b, f"EntraProxyToken {B_AUD} identity=u1 header=X-Upstream-Token"),
        # No EntraProxyToken: the module leaves such routes alone.
        f"<Location /plain/>\n    ProxyPass {b.url('plain')}\n</Location>\n",
    ])
    h = oenv.httpd(server, locations).start()
    return fake, h


@pytest.mark.parametrize("path,identity,aud,selector", [
    ("/sys/echo", "system", SYS_AUD, None),
    ("/u1/echo", "user1", SYS_AUD, ("client_id", "client_id")),
    ("/u2/echo", "user2", SYS_AUD, ("object_id", "object_id")),
    ("/u3/echo", "user3", B_AUD, ("msi_res_id", "resource_id")),
])
def test_route_gets_token_of_its_identity(stack, path, identity, aud, selector):
    fake, h = stack
    r = get(h.url(path))
    tok = bearer(r)
    c = verify_token(tok, fake.jwks())
    assert c["fake_identity"] == identity, c
    assert c["fake_source"] == "imds", c
    assert c["aud"] == aud, c
    assert c["oid"] == fake.identity(identity)["object_id"]
    # The request the fake got for it carried exactly the configured selector.
    log = [e for e in fake.requests_log("imds") if e.get("issued_to") == identity and e["resource"] == aud]
    assert log, f"no IMDS request issued a token to {identity} for {aud}"
    q = log[-1]["query"]
    sels = {k for k in ("client_id", "object_id", "msi_res_id") if k in q}
    if selector is None:
        assert sels == set(), q
    else:
        assert sels == {selector[0]}, q
        assert q[selector[0]].lower() == fake.identity(identity)[selector[1]].lower(), q
    assert log[-1]["headers"].get("metadata") == "true"


def test_two_routes_two_audiences_same_identity(stack):
    fake, h = stack
    a = verify_token(bearer(get(h.url("/sys/echo"))), fake.jwks())
    b = verify_token(bearer(get(h.url("/sysb/echo"))), fake.jwks())
    assert (a["aud"], b["aud"]) == (SYS_AUD, B_AUD)
    assert a["fake_identity"] == b["fake_identity"] == "system"


def test_default_scope_is_stripped_for_managed_identity(stack):
    fake, h = stack
    for path, aud in (("/sys/echo", SYS_AUD), ("/u2/echo", SYS_AUD), ("/u3/echo", B_AUD)):
        c = verify_token(bearer(get(h.url(path))), fake.jwks())
        assert c["aud"] == aud
    resources = {e["query"].get("resource") for e in fake.requests_log("imds")}
    assert not any(r and r.endswith("/.default") for r in resources), resources
    # The fake answers invalid_resource to a scope: no fetch failed.
    assert all(e["status"] == 200 for e in fake.requests_log("imds")), \
        [(e["resource"], e["status"]) for e in fake.requests_log("imds")]


def test_tokens_are_cached(stack):
    fake, h = stack
    for _ in range(2):
        get(h.url("/u1/echo"))
    before = source_requests(fake, "imds")
    toks = {bearer(get(h.url("/u1/echo"))) for _ in range(5)}
    assert len(toks) == 1
    assert source_requests(fake, "imds") == before


def test_client_authorization_is_replaced(stack):
    fake, h = stack
    r = get(h.url("/sys/echo"), {"Authorization": CLIENT_AUTH})
    hdrs = backend_headers(r)
    assert hdrs["authorization"] != [CLIENT_AUTH]
    assert "client-supplied" not in str(hdrs)
    assert verify_token(bearer(r), fake.jwks())["aud"] == SYS_AUD


def test_header_option_puts_token_elsewhere_and_drops_client_authorization(stack):
    fake, h = stack
    r = get(h.url("/hdr/echo"), {"Authorization": CLIENT_AUTH, "X-Upstream-Token": "Bearer forged"})
    hdrs = backend_headers(r)
    assert "authorization" not in hdrs, f"client Authorization was forwarded: {hdrs.get('authorization')}"
    tok = bearer(r, "X-Upstream-Token")
    c = verify_token(tok, fake.jwks())
    assert (c["aud"], c["fake_identity"]) == (B_AUD, "user1")
    assert "forged" not in str(hdrs)


def test_route_without_proxy_token_is_untouched(stack):
    _, h = stack
    r = get(h.url("/plain/echo"), {"Authorization": CLIENT_AUTH})
    assert backend_headers(r).get("authorization") == [CLIENT_AUTH]


def test_identity_may_be_omitted_with_a_single_identity(oenv, stack):
    fake, _ = stack
    h = oenv.httpd(managed("only", fake),
                   route("one", oenv.backend, "EntraProxyToken api://only-one/.default")).start()
    try:
        c = verify_token(bearer(get(h.url("/one/echo"))), fake.jwks())
        assert (c["aud"], c["fake_identity"]) == ("api://only-one", "system")
    finally:
        oenv.stop_httpd(h)
