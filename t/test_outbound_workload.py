"""Outbound: workload identity (AKS). The federated token file is the client assertion and is
re-read at each acquisition: after the file rotates, the next acquisition presents the new one."""

import pytest

from identity_client import WORKLOAD_APP
from outbound import bearer, claims, get, oenv, route, verify_token, wait_until, www_file  # noqa: F401

AUD = "api://reports-api"
LIFETIME = 20    # short Entra tokens so that a background refresh comes soon


def federated(fake, generation: str) -> str:
    return fake.mint_federated(claims={"generation": generation}) + "\n"


@pytest.fixture(scope="module")
def stack(oenv):
    fake = oenv.fake()
    fake.settings(lifetime={"entra": LIFETIME})
    token_file = www_file(oenv.path("sa", "token"), federated(fake, "one"))
    server = (f"EntraIdentity wl workload tenant={fake.tenant} client_id={WORKLOAD_APP} "
              f"token_file={token_file} authority={fake.url('entra_authority')}")
    h = oenv.httpd(server, route("rep", oenv.backend, f"EntraProxyToken {AUD} identity=wl")).start()
    return fake, h, token_file


def test_token_from_federated_token_file(stack):
    fake, h, _ = stack
    c = verify_token(bearer(get(h.url("/rep/echo"))), fake.jwks())
    assert (c["fake_source"], c["fake_identity"], c["aud"]) == ("entra", "workload-app", AUD)
    e = fake.requests_log("entra")[0]
    assert e["status"] == 200 and e["credential"] == "federated"
    assert e["form"]["client_id"] == WORKLOAD_APP and e["form"]["client_assertion"] == "<redacted>"
    assert e["form"]["scope"] == f"{AUD}/.default"
    assert e["assertion"]["claims"]["generation"] == "one"
    assert e["assertion"]["claims"]["aud"] == ["api://AzureADTokenExchange"]


def test_rotated_file_is_used_by_next_acquisition(stack):
    fake, h, token_file = stack
    tok1 = bearer(get(h.url("/rep/echo")))
    www_file(token_file, federated(fake, "two"))
    n0 = len(fake.requests_log("entra"))
    wait_until(lambda: len(fake.requests_log("entra")) > n0, timeout=LIFETIME + 10,
               what="the next token acquisition")
    e = fake.requests_log("entra")[n0]
    assert e["status"] == 200, e
    assert e["assertion"]["claims"]["generation"] == "two", e["assertion"]
    tok2 = wait_until(lambda: (lambda t: t if t != tok1 else None)(bearer(get(h.url("/rep/echo")))),
                      timeout=5, what="the new token to be forwarded")
    assert claims(tok2)["exp"] > claims(tok1)["exp"]
