"""Outbound: App Service / Functions managed identity (X-IDENTITY-HEADER from httpd's
IDENTITY_HEADER), system- and user-assigned, and detection from IDENTITY_ENDPOINT."""

import pytest

from outbound import bearer, get, managed, oenv, route, verify_token  # noqa: F401

AUD = "https://vault.azure.net"


@pytest.fixture(scope="module")
def stack(oenv):
    fake = oenv.fake()
    u2 = fake.identity("user2")
    server = "\n".join([
        managed("as", fake, source="appservice"),
        managed("asu", fake, source="appservice", selector=f"object_id={u2['object_id']}"),
        # No source=/endpoint=: detected from IDENTITY_ENDPOINT + IDENTITY_HEADER like MSAL does.
        "EntraIdentity detected managed",
    ])
    b = oenv.backend
    h = oenv.httpd(server,
                   route("sys", b, f"EntraProxyToken {AUD}/.default identity=as")
                   + route("user", b, f"EntraProxyToken {AUD} identity=asu")
                   + route("det", b, "EntraProxyToken api://detected identity=detected"),
                   extra_env={"IDENTITY_HEADER": fake.identity_header,
                              "IDENTITY_ENDPOINT": fake.url("appservice")}).start()
    return fake, h


def test_system_assigned(stack):
    fake, h = stack
    c = verify_token(bearer(get(h.url("/sys/echo"))), fake.jwks())
    assert (c["fake_source"], c["fake_identity"], c["aud"]) == ("appservice", "system", AUD)
    log = [e for e in fake.requests_log("appservice") if e["resource"] == AUD and e.get("issued_to") == "system"]
    assert log and log[-1]["secret_ok"] is True
    assert log[-1]["query"]["api-version"] == "2019-08-01"
    assert log[-1]["headers"]["x-identity-header"] == "<redacted>"
    assert not any(k in log[-1]["query"] for k in ("client_id", "principal_id", "mi_res_id"))


def test_user_assigned_by_object_id(stack):
    fake, h = stack
    c = verify_token(bearer(get(h.url("/user/echo"))), fake.jwks())
    assert (c["fake_source"], c["fake_identity"], c["aud"]) == ("appservice", "user2", AUD)
    log = [e for e in fake.requests_log("appservice") if e.get("issued_to") == "user2"]
    assert log[-1]["query"].get("principal_id") == fake.identity("user2")["object_id"]


def test_source_detected_from_environment(stack):
    fake, h = stack
    c = verify_token(bearer(get(h.url("/det/echo"))), fake.jwks())
    assert (c["fake_source"], c["fake_identity"], c["aud"]) == ("appservice", "system", "api://detected")


def test_fetches_logged_without_the_identity_header(stack):
    fake, h = stack
    ok, fail = h.fetch_lines()
    assert {m.group(3) for m in ok} == {"appservice"} and len(ok) == 3 and not fail, \
        [m.group(0) for m in ok + fail]
    assert fake.identity_header not in h.error_log_text()
