"""Outbound: client-credential tokens with a client secret read from a file (never inline),
from the Entra token endpoint at a loopback authority."""

import pytest

from identity_client import SECRET_APP
from outbound import bearer, get, oenv, route, verify_token, www_file  # noqa: F401

AUD = "api://orders-api"
GRAPH_STYLE = "https://graph.example.com"


@pytest.fixture(scope="module")
def stack(oenv):
    fake = oenv.fake()
    secret_file = www_file(oenv.path("client.secret"), fake.client_secret() + "\n")
    server = (f"EntraIdentity app secret tenant={fake.tenant} client_id={SECRET_APP} "
              f"secret_file={secret_file} authority={fake.url('entra_authority')}")
    b = oenv.backend
    h = oenv.httpd(server, route("orders", b, f"EntraProxyToken {AUD}/.default identity=app")
                   + route("graph", b, f"EntraProxyToken {GRAPH_STYLE} identity=app")).start()
    return fake, h


@pytest.mark.parametrize("path,aud", [("/orders/echo", AUD), ("/graph/echo", GRAPH_STYLE)])
def test_token_from_client_secret(stack, path, aud):
    fake, h = stack
    c = verify_token(bearer(get(h.url(path), {"Authorization": "Basic dXNlcjpwYXNz"})), fake.jwks())
    assert (c["fake_source"], c["fake_identity"], c["aud"], c["ver"]) == ("entra", "secret-app", aud, "2.0")
    assert c["azp"] == SECRET_APP and c["tid"] == fake.tenant


def test_token_request_shape(stack):
    fake, h = stack
    log = fake.requests_log("entra")
    assert len(log) == 2 and all(e["status"] == 200 for e in log), [(e["resource"], e["status"]) for e in log]
    scopes = sorted(e["form"]["scope"] for e in log)
    assert scopes == sorted([f"{AUD}/.default", f"{GRAPH_STYLE}/.default"])
    for e in log:
        assert e["method"] == "POST" and e["tenant"] == fake.tenant
        assert e["form"]["grant_type"] == "client_credentials"
        assert e["form"]["client_id"] == SECRET_APP
        assert e["form"]["client_secret"] == "<redacted>"
        assert "client_assertion" not in e["form"]
        assert e["headers"]["content-type"].startswith("application/x-www-form-urlencoded")
    ok, fail = h.fetch_lines()
    assert {m.group(3) for m in ok} == {"secret"} and not fail


def test_secret_not_in_logs(stack):
    fake, h = stack
    assert fake.client_secret() not in h.error_log_text()
    assert fake.client_secret() not in h.access_log_text()
