"""Outbound: each source's retry rules, driven by scripted answers at the fake.

Managed identity (IMDS) retries 404/410/429/5xx and unusable bodies with backoff and honours
Retry-After; the Entra token endpoint retries 5xx only, never when Retry-After is present, and
never an unusable 200 body.
"""

import pytest

from identity_client import SECRET_APP
from outbound import (bearer, get, managed, oenv, parallel_get, route, source_requests,  # noqa: F401
                      verify_token, wait_until, www_file)

AUD = "api://retry-me"

CASES = {
    # id: (source, scripted answers, EntraTokenTimeout)
    "410": ("imds", ["410"], 20),
    "429-retry-after": ("imds", ["429:4"], 20),     # Retry-After 4 beats the 2 s backoff
    "500-500": ("imds", ["500", "500"], 20),        # exponential backoff: 2 s then 4 s
    "garbage": ("imds", ["garbage"], 20),
    "404-empty": ("imds", ["404", "empty"], 20),
    "entra-500": ("entra", ["500"], 20),
    "entra-503-retry-after": ("entra", ["503:5"], 3),
    "entra-garbage": ("entra", ["garbage"], 3),
}
MIN_GAPS = {"410": [1.5], "429-retry-after": [3.8], "500-500": [1.5, 3.0], "garbage": [1.5],
            "404-empty": [1.5, 3.0]}


@pytest.fixture(scope="module")
def cases(oenv):
    """Every case gets its own fake and httpd (scripts are per fake); the httpd's warm-up meets
    the scripted answers and one request per case is made, all cases at once."""
    out = {}
    for cid, (source, answers, timeout) in CASES.items():
        fake = oenv.fake()
        fake.script(source, answers)
        if source == "imds":
            ident = managed("mi", fake)
        else:
            secret = www_file(oenv.path(f"secret-{cid}"), fake.client_secret() + "\n")
            ident = (f"EntraIdentity mi secret tenant={fake.tenant} client_id={SECRET_APP} "
                     f"secret_file={secret} authority={fake.url('entra_authority')}")
        h = oenv.httpd(ident + f"\nEntraTokenTimeout {timeout}\n",
                       route("api", oenv.backend, f"EntraProxyToken {AUD} identity=mi")).start()
        out[cid] = {"fake": fake, "httpd": h, "answers": answers}
    results = parallel_get([c["httpd"].url("/api/echo") for c in out.values()], workers=len(out))
    for c, (r, start, elapsed) in zip(out.values(), results):
        assert not isinstance(r, Exception), r
        c["resp"], c["start"], c["elapsed"] = r, start, elapsed
    return out


def came_after_next_attempt(case) -> bool:
    """Whether the case's request was made only after the module's next scheduled attempt (a
    slow machine may start the httpds late); then it may legitimately have got a token."""
    log = case["fake"].requests_log("entra")
    return len(log) >= 2 and log[1]["t"] < case["start"]


def gaps(log: list) -> list:
    return [round(b["t"] - a["t"], 2) for a, b in zip(log, log[1:])]


@pytest.mark.parametrize("cid", list(MIN_GAPS))
def test_imds_retries_then_succeeds(cases, cid):
    c = cases[cid]
    fake, h, answers, min_gaps = c["fake"], c["httpd"], c["answers"], MIN_GAPS[cid]
    assert verify_token(bearer(c["resp"]), fake.jwks())["aud"] == AUD
    log = fake.requests_log("imds")
    assert [e.get("answer", e["status"]) for e in log] == answers + [200], \
        [(e.get("answer"), e["status"]) for e in log]
    g = gaps(log)
    print(f"\n[retries imds {answers}] gaps between attempts: {g}")
    for got, least in zip(g, min_gaps):
        assert least <= got <= 35, f"attempt gaps {g}, expected at least {min_gaps}"
    ok, fail = h.fetch_lines()
    assert len(ok) == 1 and not fail, [m.group(0) for m in ok + fail]
    assert int(ok[0].group(5)) == len(answers), ok[0].group(0)


def test_entra_retries_5xx(cases):
    c = cases["entra-500"]
    fake = c["fake"]
    cl = verify_token(bearer(c["resp"]), fake.jwks())
    assert (cl["aud"], cl["fake_source"]) == (AUD, "entra")
    log = fake.requests_log("entra")
    assert [e["status"] for e in log] == [500, 200]
    assert 0.5 <= gaps(log)[0] <= 10, gaps(log)


def test_entra_does_not_retry_when_retry_after_is_sent(cases):
    c = cases["entra-503-retry-after"]
    fake, h, r = c["fake"], c["httpd"], c["resp"]
    if not came_after_next_attempt(c):
        assert r.status_code == 503, r.text[:200]
        ra = r.headers.get("Retry-After", "")
        assert ra.isdigit() and 1 <= int(ra) <= 5, f"Retry-After {ra!r}"
        assert c["elapsed"] < 3 + 4
    # The next attempt (in the background) comes no sooner than the 5 s asked for.
    wait_until(lambda: source_requests(fake, "entra") >= 2, timeout=20, what="the next attempt")
    log = fake.requests_log("entra")
    assert log[0]["status"] == 503
    # Whole-second granularity in the module: allow 1 s of rounding, but not the 1-2 s backoff.
    assert 3.9 <= gaps(log)[0] <= 15, f"next attempt {gaps(log)[0]} s after a 503 with Retry-After: 5"
    _, fail = h.fetch_lines()
    assert fail and fail[0].group(4) == "503" and fail[0].group(6) == "0", [m.group(0) for m in fail]
    ok = wait_until(lambda: (lambda x: x.status_code == 200 and x)(get(h.url("/api/echo"))),
                    timeout=10, what="recovery")
    assert verify_token(bearer(ok), fake.jwks())["aud"] == AUD


def test_entra_does_not_retry_garbage(cases):
    c = cases["entra-garbage"]
    fake, h, r = c["fake"], c["httpd"], c["resp"]
    if not came_after_next_attempt(c):
        seen = [(e["t"], e.get("answer"), e["status"]) for e in fake.requests_log("entra")]
        assert r.status_code == 503, f"{r.status_code} {r.text[:300]}\nfake log: {seen}\n{h.error_log_tail(12)}"
        assert r.headers.get("Retry-After", "").isdigit()
    assert [e["status"] for e in fake.requests_log("entra")][:1] == [200]
    _, fail = h.fetch_lines()
    assert len(fail) >= 1 and fail[0].group(6) == "0", [m.group(0) for m in fail]
    # Only one attempt within the first fetch: a later one is the next scheduled attempt.
    first = fake.requests_log("entra")
    assert len(first) == 1 or first[1]["t"] - first[0]["t"] >= 3.9, gaps(first)
