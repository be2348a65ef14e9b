"""Outbound: client-credential tokens with a certificate: the module signs a PS256 client
assertion carrying x5t#S256 (certificate and key generated at test time, the certificate
registered at the fake)."""

import re

import pytest

from identity_client import CERT_APP, make_client_certificate, thumbprints
from outbound import bearer, get, oenv, route, verify_token  # noqa: F401

AUD = "api://inventory-api"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def stack(oenv):
    fake = oenv.fake()
    cert = make_client_certificate(oenv.path("certs"), "cert-app")
    fake.register_certificate(CERT_APP, cert["pem"])
    with open(cert["key_path"]) as f:
        oenv.secrets.append(f.read().splitlines()[1])    # a line of the private key's base64
    server = (f"EntraIdentity app certificate tenant={fake.tenant} client_id={CERT_APP} "
              f"cert={cert['cert_path']} key={cert['key_path']} authority={fake.url('entra_authority')}")
    h = oenv.httpd(server, route("inv", oenv.backend, f"EntraProxyToken {AUD}/.default identity=app")).start()
    return fake, h, cert


def test_token_from_certificate(stack):
    fake, h, _ = stack
    c = verify_token(bearer(get(h.url("/inv/echo"))), fake.jwks())
    assert (c["fake_source"], c["fake_identity"], c["aud"]) == ("entra", "cert-app", AUD)
    assert c["azp"] == CERT_APP


def test_client_assertion_shape(stack):
    fake, h, cert = stack
    log = fake.requests_log("entra")
    assert log and log[0]["status"] == 200, log[:1]
    e = log[0]
    assert e["form"]["client_assertion"] == "<redacted>"
    assert e["form"]["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in e["form"]
    assert e["form"]["scope"] == f"{AUD}/.default"
    header, claims = e["assertion"]["header"], e["assertion"]["claims"]
    assert header["alg"] == "PS256" and header.get("typ") == "JWT"
    assert header["x5t#S256"] == thumbprints(cert["cert"])["x5t#S256"]
    assert claims["aud"] == fake.token_url()
    assert claims["iss"] == claims["sub"] == CERT_APP
    assert GUID.match(claims["jti"]), claims["jti"]
    assert 0 < claims["exp"] - claims["nbf"] <= 600
    assert abs(claims["nbf"] - e["t"]) < 60
