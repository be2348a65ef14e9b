"""Fault matrix of the identity endpoint (IMDS): 404 (identity not assigned yet), 410 (IMDS
upgrading), 429 (throttled, with Retry-After), 500 and a hang, each met cold (no token yet)
and at refresh (a token is cached and due for refresh).

  cold    -> the request gets 503 with Retry-After within EntraTokenTimeout (+2 s), or with
             `EntraProxyTokenOnError pass` is forwarded without a token in the same bound; the
             fake sees retries with backoff (2 s, 4 s..., or the Retry-After it sent); once the
             endpoint answers again a later attempt gets the token.
  refresh -> every request keeps flowing on the cached token, without waiting, while the
             refresh fails; the fake sees the refresh attempts and their backoff; once the
             endpoint answers again a later attempt replaces the token before it expires.

One fake and one httpd serve every case at once: each case has its own resource, and the fake
fails only that resource (a per-resource mode), so the ten cases run side by side in about the
time of the slowest. Tokens live LIFETIME s at the fake: refresh is due at half-life (minus up
to 10 % jitter) and a token is served until a quarter of its life is left.
"""

import time

import pytest

import checks
from outbound import (backend_headers, bearer, claims, managed, oenv, parallel_get, route,  # noqa: F401
                      timed_get, verify_token, wait_until)

TIMEOUT = 3                  # EntraTokenTimeout
BOUND = TIMEOUT + 2          # the generous bound on any answer
LIFETIME = 80
FAULTS = {"404": "404", "410": "410", "429": "429:5", "500": "500", "hang": "hang"}
# Between attempts: IMDS backoff starts at 2 s; a 429's Retry-After (5 s) is honoured, to the
# whole second when it went through the shared backoff record (so at least 4 s).
MIN_GAP = {"404": 1.5, "410": 1.5, "429": 4.0, "500": 1.5, "hang": 1.5}


def res(phase: str, fault: str) -> str:
    return f"api://fault-{phase}-{fault}"


def failed_as(entry: dict, fault: str) -> bool:
    """Whether the fake answered this logged request with the fault (a hang has no status)."""
    if fault == "hang":
        return str(entry.get("answer", "")).startswith("hang")
    return entry["status"] == int(FAULTS[fault].split(":")[0])


def by_time(log: list, resource: str) -> list:
    """The fake's log entries for one resource in order of arrival (it logs them as they end)."""
    return sorted((e for e in log if e.get("resource") == resource), key=lambda e: e["t"])


def gaps(entries: list) -> list:
    return [round(b["t"] - a["t"], 2) for a, b in zip(entries, entries[1:])]


class Case:
    def __init__(self, phase, fault):
        self.phase, self.fault, self.resource = phase, fault, res(phase, fault)
        self.path = f"/{phase}-{fault}/echo"
        self.cleared = None          # when the fake was told to answer normally again
        self.seen_attempts = None    # (time, count) when a hanging attempt was first seen
        self.served = []             # refresh: (start, status, token or None, elapsed)
        self.recovered = None        # (time, token)


def attempts(fake, case) -> list:
    return [e for e in fake.requests_log("imds") if e.get("resource") == case.resource]


def arrivals(stats, case) -> int:
    return stats["imds"]["by_resource"].get(case.resource, 0)


def clear(fake, case):
    fake.mode("imds", None, resource=case.resource)
    if case.fault == "hang":
        fake.release()           # the hanging attempt ends now (closed without an answer)
    case.cleared = time.time()


def step_cold(fake, stats, case, now):
    """Clear a cold case's fault once the fake has seen at least one retry."""
    if case.cleared is None and arrivals(stats, case) >= 2:
        clear(fake, case)


def step_refresh(h, fake, stats, log, case, now):
    """One request on the refresh route; clear the fault once the refresh has visibly failed."""
    r, start, elapsed = timed_get(h.url(case.path), timeout=30)
    tok = bearer(r) if r.status_code == 200 else None
    case.served.append((start, r.status_code, tok, elapsed))
    if case.cleared is None:
        if case.fault == "hang":
            n = arrivals(stats, case)
            if n >= 2 and case.seen_attempts is None:
                case.seen_attempts = (now, n)
            # Requests are served while the refresh hangs for 3 s, then it is released.
            if case.seen_attempts and now - case.seen_attempts[0] >= 3:
                clear(fake, case)
        elif any(e.get("resource") == case.resource and failed_as(e, case.fault) and e["t"] > case.t0
                 for e in log):
            clear(fake, case)
    elif case.recovered is None and tok is not None and tok != case.token0:
        case.recovered = (start, tok)


@pytest.fixture(scope="module")
def run(oenv):
    fake = oenv.fake()
    fake.settings(lifetime={"imds": LIFETIME})
    cold = {f: Case("cold", f) for f in FAULTS}
    refresh = {f: Case("refresh", f) for f in FAULTS}
    for c in cold.values():
        fake.mode("imds", FAULTS[c.fault], resource=c.resource)
    aud = "EntraProxyToken {} identity=sys"
    locations = "".join(route(f"cold-{f}", oenv.backend, aud.format(c.resource)) +
                        route(f"pass-{f}", oenv.backend, aud.format(c.resource), "EntraProxyTokenOnError pass")
                        for f, c in cold.items())
    locations += "".join(route(f"refresh-{f}", oenv.backend, aud.format(c.resource)) for f, c in refresh.items())
    h = oenv.httpd(managed("sys", fake) + f"\nEntraTokenTimeout {TIMEOUT}\n", locations).start()
    t_start = time.time()

    # Cold: deny and pass routes for every fault at once, while the warm-up is failing.
    urls = [h.url(f"/cold-{f}/echo") for f in FAULTS] + [h.url(f"/pass-{f}/echo") for f in FAULTS]
    results = parallel_get(urls, headers={"Authorization": "Bearer client-token-must-not-travel"},
                           workers=len(urls), timeout=30)
    for i, f in enumerate(FAULTS):
        cold[f].deny, cold[f].passed = results[i], results[len(FAULTS) + i]

    # Refresh: the first token of each refresh resource, then its fault from now on.
    for c in refresh.values():
        r = wait_until(lambda: (lambda x: x.status_code == 200 and x)(timed_get(h.url(c.path))[0]),
                       timeout=20, what=f"the first token for {c.resource}")
        c.token0 = bearer(r)
        c.t0 = min(e["t"] for e in attempts(fake, c) if e["status"] == 200)
        fake.mode("imds", FAULTS[c.fault], resource=c.resource)

    # Until every refresh has failed, been cleared and recovered (bounded by the lifetime).
    deadline = t_start + LIFETIME + 15
    while time.time() < deadline:
        now = time.time()
        stats, log = fake.stats(), fake.requests_log("imds")
        for c in cold.values():
            step_cold(fake, stats, c, now)
        for c in refresh.values():
            if c.recovered is None:
                step_refresh(h, fake, stats, log, c, now)
        if all(c.recovered for c in refresh.values()) and all(c.cleared for c in cold.values()):
            break
        time.sleep(0.5)

    # Cold recovery: a later attempt gets the token once the endpoint answers again.
    for c in cold.values():
        if c.cleared:
            r = wait_until(lambda: (lambda x: x.status_code == 200 and x)(timed_get(h.url(c.path))[0]),
                           timeout=40, what=f"a token for {c.resource} after the fault ended")
            c.recovered = (time.time(), bearer(r))
    return {"fake": fake, "httpd": h, "cold": cold, "refresh": refresh, "log": fake.requests_log("imds")}


def _report(case, entries, extra=""):
    print(f"\n[{case.phase} {case.fault}] answers {[e['status'] for e in entries]}, gaps {gaps(entries)} s{extra}")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_cold(run, fault):
    c, fake = run["cold"][fault], run["fake"]
    deny, _, t_deny = c.deny
    passed, _, t_pass = c.passed
    assert not isinstance(deny, Exception), deny
    assert deny.status_code == 503, (deny.status_code, deny.text[:200])
    ra = deny.headers.get("Retry-After", "")
    assert ra.isdigit() and 1 <= int(ra) <= 300, f"Retry-After {ra!r}"
    assert t_deny <= BOUND, f"the 503 took {t_deny:.1f} s with EntraTokenTimeout {TIMEOUT}"
    assert "client-token" not in deny.text
    # pass: forwarded without a token, and without the client's Authorization.
    assert not isinstance(passed, Exception), passed
    assert "authorization" not in backend_headers(passed)
    assert t_pass <= BOUND, f"forwarding took {t_pass:.1f} s with EntraTokenTimeout {TIMEOUT}"

    assert c.cleared, "the fake never saw a retry"
    log = by_time(run["log"], c.resource)
    failing = [e for e in log if e["t"] < c.cleared]
    _report(c, log[:len(failing) + 1], f"; 503 in {t_deny:.1f} s, pass in {t_pass:.1f} s, Retry-After {ra}")
    assert len(failing) >= 2 and all(failed_as(e, fault) for e in failing), \
        [(e.get("answer"), e["status"]) for e in failing]
    assert all(g >= MIN_GAP[fault] for g in gaps(failing)), f"attempts without backoff: {gaps(failing)}"
    # A later attempt got the token.
    assert c.recovered and verify_token(c.recovered[1], fake.jwks())["aud"] == c.resource
    assert any(e["status"] == 200 and e["t"] >= c.cleared for e in log)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_refresh(run, fault):
    c, fake = run["refresh"][fault], run["fake"]
    log = [e for e in by_time(run["log"], c.resource) if e["t"] > c.t0]
    failing = [e for e in log if failed_as(e, fault)]
    assert c.cleared, f"no refresh attempt failed within the lifetime: {[(e['t'] - c.t0, e['status']) for e in log]}"
    assert c.recovered, "the token was not replaced after the endpoint recovered"
    exp0 = claims(c.token0)["exp"]
    worst = max(s[3] for s in c.served)
    slow = [(round(s[0] - c.t0, 1), s[1], round(s[3], 2)) for s in c.served if s[3] > 0.5]
    after = [e for e in log if failing and e["t"] > failing[-1]["t"]]
    _report(c, failing + after[:1], f"; first failure at t0+{failing[0]['t'] - c.t0:.1f} s, {len(c.served)} requests "
                        f"(slowest {worst:.2f} s; over 0.5 s: {slow}), new token at t0+{c.recovered[0] - c.t0:.1f} s")
    # Refresh was attempted before expiry, failed, and the next attempt came after the backoff.
    assert failing and c.t0 + LIFETIME * 0.3 <= failing[0]["t"] < exp0
    assert after and after[0]["t"] - failing[-1]["t"] >= MIN_GAP[fault], gaps(failing + after[:1])
    # Every request until the new token was served on the cached one, none waited.
    for start, status, tok, elapsed in c.served:
        assert status == 200, f"{status} at t0+{start - c.t0:.1f} s"
        assert tok in (c.token0, c.recovered[1]), "an unexpected token was forwarded"
        assert elapsed <= BOUND, f"a request waited {elapsed:.1f} s at t0+{start - c.t0:.1f} s: {slow}"
    during = [s for s in c.served if failing[0]["t"] <= s[0] < c.cleared and s[2] == c.token0]
    assert during, "no request was made while the refresh was failing"
    # A later refresh recovered, before the cached token ran out.
    new = claims(c.recovered[1])
    assert new["aud"] == c.resource and new["exp"] > exp0
    assert c.recovered[0] < exp0
    assert any(e["status"] == 200 and e["t"] >= c.cleared for e in log)


def test_no_token_in_error_log(run):
    """The teardown checks every log too; this names the case when it fails."""
    h = run["httpd"]
    text = h.error_log_text()
    checks.assert_log_has_no_tokens(text)
    assert "client-token" not in text
    assert "ENTRA0305" in text and "ENTRA0304" in text, h.error_log_tail(20)
    assert not checks.child_crashes(text)
