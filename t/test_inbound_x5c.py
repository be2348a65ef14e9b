"""JWKS keys published only as certificates (x5c, no n/e), via EntraMetadataURL.

The token header's x5c is never used (see test_inbound_validation); this is the issuer's own
key set, which some OpenID providers publish that way.
"""
import pytest

from checks import expect_invalid_token, expect_ok
from stack import finish_stack
import entra_tokens as et

ISSUER = "https://issuer.example/x5c-only"
AUD = "api://x5c-api"


def _locations(authority):
    return f"""
<Location /x5c>
  AuthType Entra
  AuthName "orders"
  EntraMetadataURL {authority}_static/x5c/openid-configuration
  EntraAudience {AUD}
  Require valid-user
</Location>
"""


def _publish(s):
    keys = []
    for name in ("rsa1", "weak"):
        jwk = dict(s.key(name).jwk())
        for member in ("n", "e"):
            jwk.pop(member, None)
        keys.append(jwk)
    s.fake.set_document("/_static/x5c/keys", {"keys": keys})
    s.fake.set_document("/_static/x5c/openid-configuration",
                        {"issuer": ISSUER, "jwks_uri": s.fake.authority + "_static/x5c/keys"})


@pytest.fixture(scope="module")
def x5c(make_stack):
    s = make_stack("x5c", locations=_locations, prepare=_publish, files=["/x5c"])
    yield s
    finish_stack(s)


def _token(s, key="rsa1", **over):
    claims = et.v2_claims(aud=AUD, iss=ISSUER, **over)
    claims.pop("tid", None)
    return s.token(key=key, claims=claims)


def test_certificate_only_rsa_key_verifies(x5c):
    expect_ok(x5c.get("/x5c/ok.txt", _token(x5c)))
    # Served again from the caches, which keep the key as n/e.
    expect_ok(x5c.get("/x5c/ok.txt", _token(x5c)))


def test_certificate_only_key_still_checks_the_signature(x5c):
    t = _token(x5c)
    bad = t[:-6] + ("AAAAAA" if not t.endswith("AAAAAA") else "BBBBBB")
    expect_invalid_token(x5c.get("/x5c/ok.txt", bad), bad)


def test_certificate_with_a_weak_rsa_key_is_refused(x5c):
    t = _token(x5c, key="weak")
    expect_invalid_token(x5c.get("/x5c/ok.txt", t), t, desc_contains="signing key not found")
