"""Outbound: proactive refresh. A short-lived token (30 s at the fake) is refreshed in the
background before it expires, with no request waiting; when the endpoint goes down during the
refresh, requests keep flowing on the cached token until it expires, then get 503.

Two independent stacks run side by side to keep the wall time down: R (refresh) and D (down).
"""

import time

import pytest

from identity_client import SECRET_APP
from outbound import bearer, claims, get, managed, oenv, route, timed_get, wait_until, www_file  # noqa: F401

LIFETIME = 30
AUD = "api://refresh-me"
TIMEOUT = 3


def start_stack(oenv):
    fake = oenv.fake()
    fake.settings(lifetime={"imds": LIFETIME})
    h = oenv.httpd(managed("sys", fake) + f"\nEntraTokenTimeout {TIMEOUT}\n",
                   route("api", oenv.backend, f"EntraProxyToken {AUD} identity=sys")).start()
    r = get(h.url("/api/echo"))
    tok = bearer(r)
    first = fake.requests_log("imds")
    assert len(first) == 1 and first[0]["status"] == 200, first
    return {"fake": fake, "httpd": h, "token": tok, "t_fetch": first[0]["t"]}


@pytest.fixture(scope="module")
def stacks(oenv):
    d = start_stack(oenv)
    # D: the endpoint fails from now on; the refresh (due after about half the lifetime) will fail.
    d["fake"].mode("imds", "down")
    r = start_stack(oenv)
    return {"R": r, "D": d}


def test_requests_flow_on_cached_token_while_refresh_fails(stacks):
    s = stacks["D"]
    fake, h, tok0, t0 = s["fake"], s["httpd"], s["token"], s["t_fetch"]
    exp = claims(tok0)["exp"]
    assert exp - t0 <= LIFETIME + 2

    # Until 2/3 of the lifetime, every request is forwarded with the cached token, also after
    # the refresh has started failing (the fake sees 500s meanwhile).
    served_after_failure = 0
    while time.time() < t0 + LIFETIME * 2 / 3:
        r, start, elapsed = timed_get(h.url("/api/echo"))
        assert r.status_code == 200, f"{r.status_code} at t+{start - t0:.1f}s: {r.text[:200]}\n{h.error_log_tail(10)}"
        assert bearer(r) == tok0
        assert elapsed < TIMEOUT - 0.1, f"a request waited {elapsed:.1f} s although a token was cached"
        failed = [e for e in fake.requests_log("imds") if e["status"] == 500]
        if failed and failed[0]["t"] < start:
            served_after_failure += 1
        time.sleep(0.5)
    failed = [e for e in fake.requests_log("imds") if e["status"] == 500]
    assert failed, "no refresh was attempted within 2/3 of the token lifetime"
    assert failed[0]["t"] < exp, "the refresh was attempted only after expiry"
    assert served_after_failure >= 1, \
        f"no request was served after the first failed refresh (t+{failed[0]['t'] - t0:.1f}s)"

    # After expiry nothing stale is forwarded: 503 with Retry-After within the timeout bound.
    wait_until(lambda: time.time() > exp + 1, timeout=LIFETIME + 10, what="token expiry")
    r, _, elapsed = timed_get(h.url("/api/echo"))
    assert r.status_code == 503, f"{r.status_code}: {r.text[:200]}"
    assert (r.headers.get("Retry-After") or "").isdigit(), r.headers
    assert elapsed < TIMEOUT + 5, f"503 took {elapsed:.1f} s with EntraTokenTimeout {TIMEOUT}"
    _, fail = h.fetch_lines()
    assert fail or "ENTRA0301" in h.error_log_text(), h.error_log_tail(15)


def test_refresh_before_expiry_without_waiting_request(stacks):
    s = stacks["R"]
    fake, h, tok0, t0 = s["fake"], s["httpd"], s["token"], s["t_fetch"]
    exp0 = claims(tok0)["exp"]
    # No request is made: the fake's counter increases by itself.
    wait_until(lambda: fake.stats()["imds"]["requests"] >= 2, timeout=LIFETIME + 5,
               what="a background refresh")
    log = fake.requests_log("imds")
    t_refresh = log[1]["t"]
    assert log[1]["status"] == 200, log[1]
    # Refresh at half-life minus up to 10 % jitter (bounds generous), before expiry.
    assert t0 + LIFETIME * 0.3 <= t_refresh <= exp0 - 5, \
        f"refresh at t+{t_refresh - t0:.1f}s for a {LIFETIME}s token"
    tok1 = wait_until(lambda: (lambda t: t if t != tok0 else None)(bearer(get(h.url("/api/echo")))),
                      timeout=5, what="the refreshed token to be forwarded")
    assert claims(tok1)["exp"] > exp0
    assert claims(tok1)["aud"] == AUD
    ok, fail = h.fetch_lines()
    assert len(ok) >= 2 and not fail, [m.group(0) for m in ok + fail]



def test_a_hanging_refresh_does_not_hold_another_tokens_refresh(oenv):
    """A managed-identity token whose refresh hangs at the endpoint, and a client-secret token
    due for refresh later, while the first one's fetch is still retrying. The second is
    refreshed on schedule: no upkeep thread waits on the fetch another process is doing (before,
    every child's upkeep lined up behind the hanging one, for up to 90 s)."""
    fake = oenv.fake()
    fake.settings(lifetime={"imds": 20, "entra": 40})
    secret = www_file(oenv.path("refresh-other.secret"), fake.client_secret() + "\n")
    stuck, other = "api://refresh-stuck", "api://refresh-other"
    h = oenv.httpd(managed("mi", fake) + f"\nEntraTokenTimeout {TIMEOUT}\n"
                   f"EntraIdentity app secret tenant={fake.tenant} client_id={SECRET_APP} "
                   f"secret_file={secret} authority={fake.url('entra_authority')}\n",
                   route("stuck", oenv.backend, f"EntraProxyToken {stuck} identity=mi")
                   + route("other", oenv.backend, f"EntraProxyToken {other}/.default identity=app")).start()
    try:
        first = bearer(get(h.url("/other/echo")))
        bearer(get(h.url("/stuck/echo")))
        t0 = min(e["t"] for e in fake.requests_log("entra"))
        fake.mode("imds", "hang:60", resource=stuck)
        # The stuck one is due at t0+8..10 and hangs from then on.
        wait_until(lambda: fake.stats()["imds"]["by_resource"].get(stuck, 0) >= 2, timeout=20,
                   what="the refresh of the stuck token")
        # The other is due at half-life minus up to 10 %: t0+16..20; one round and slack on top.
        due = t0 + 20 + 4
        fresh = wait_until(lambda: fake.stats()["entra"]["requests"] >= 2 and fake.requests_log("entra")[1:],
                           timeout=60, what="the refresh of the other token")
        print(f"\n[refresh beside a hang] other refreshed at t0+{fresh[0]['t'] - t0:.1f} s "
              f"(due by t0+{due - t0:.0f} s)")
        assert fresh[0]["status"] == 200, fresh[0]
        assert fresh[0]["t"] <= due, f"the other token was refreshed only at t0+{fresh[0]['t'] - t0:.1f} s"
        # The fake logs the request as it arrives; the answer reaches the store a moment later.
        tok = wait_until(lambda: (lambda t: t if t != first else None)(bearer(get(h.url("/other/echo")))),
                         timeout=5, what="the refreshed token to be forwarded")
        assert claims(tok)["exp"] > claims(first)["exp"]
    finally:
        fake.mode("imds", None, resource=stuck)
        fake.release()
        oenv.stop_httpd(h)
