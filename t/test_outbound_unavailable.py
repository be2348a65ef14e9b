"""Outbound: no token can be had (endpoint down or hanging, nothing cached). Requests get 503
with Retry-After within the EntraTokenTimeout bound; `EntraProxyTokenOnError pass` forwards
them without a token (and still without the client's Authorization)."""

import pytest

from outbound import backend_headers, managed, oenv, parallel_get, route  # noqa: F401

TIMEOUT = 3
AUD = "api://unreachable"
CLIENT = {"Authorization": "Bearer client-token-must-not-travel"}


@pytest.fixture(scope="module", params=["down", "hang"])
def stack(request, oenv):
    fake = oenv.fake()
    fake.mode("imds", request.param)
    b = oenv.backend
    h = oenv.httpd(managed("sys", fake) + f"\nEntraTokenTimeout {TIMEOUT}\n",
                   route("deny", b, f"EntraProxyToken {AUD} identity=sys")
                   + route("pass", b, f"EntraProxyToken {AUD} identity=sys", "EntraProxyTokenOnError pass")
                   + route("deny2", b, f"EntraProxyToken {AUD} identity=sys", "EntraProxyTokenOnError deny"),
                   ).start()
    # All three at once, while the endpoint is failing and nothing is cached.
    results = parallel_get([h.url(p) for p in ("/deny/echo", "/deny2/echo", "/pass/echo")], headers=CLIENT)
    yield request.param, fake, h, results
    fake.mode("imds", None)
    fake.release()        # free the hanging requests so httpd stops promptly
    oenv.stop_httpd(h)


def test_deny_answers_503_with_retry_after_within_timeout(stack):
    mode, fake, h, results = stack
    for r, _, elapsed in results[:2]:
        assert not isinstance(r, Exception), r
        assert r.status_code == 503, f"{mode}: {r.status_code} {r.text[:200]}"
        ra = r.headers.get("Retry-After", "")
        assert ra.isdigit() and int(ra) >= 1, f"Retry-After {ra!r}"
        assert elapsed < TIMEOUT + 4, f"{mode}: the 503 took {elapsed:.1f} s with EntraTokenTimeout {TIMEOUT}"
        assert "client-token" not in r.text
    assert "ENTRA0305" in h.error_log_text()
    assert fake.stats()["imds"]["requests"] >= 1


def test_pass_forwards_without_a_token(stack):
    mode, fake, h, results = stack
    r, _, elapsed = results[2]
    assert not isinstance(r, Exception), r
    hdrs = backend_headers(r)
    assert "authorization" not in hdrs, f"{mode}: backend got Authorization {hdrs['authorization']}"
    assert elapsed < TIMEOUT + 4, f"{mode}: forwarding took {elapsed:.1f} s with EntraTokenTimeout {TIMEOUT}"
    assert "ENTRA0304" in h.error_log_text()
