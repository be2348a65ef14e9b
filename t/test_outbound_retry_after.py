"""Outbound: Retry-After from the identity or token endpoint is clamped to 300 s, whatever it
says: huge values (9.3e12 used to overflow apr_time_from_sec; 1e30 apr_atoi64), negative
values, HTTP-dates and garbage never crash a child, never make a request wait past
EntraTokenTimeout, and the 503 a request gets carries a Retry-After of at most 300."""

import time

import pytest

from identity_client import SECRET_APP
from outbound import get, managed, oenv, route, www_file  # noqa: F401

AUD = "api://retry-after"
CLAMP = 300
TIMEOUT = 3

HUGE = ["9300000000000", "1" + "0" * 30, "99999999999999999999"]
IGNORED = ["-5", "1e30", "garbage", "Wed, 21 Oct 2015 07:28:00 GMT"]


def _httpd(oenv, fake, source):
    if source == "imds":
        ident = managed("mi", fake)
    else:
        secret = www_file(oenv.path(f"secret-{time.monotonic_ns()}"), fake.client_secret() + "\n")
        ident = (f"EntraIdentity mi secret tenant={fake.tenant} client_id={SECRET_APP} "
                 f"secret_file={secret} authority={fake.url('entra_authority')}")
    return oenv.httpd(ident + f"\nEntraTokenTimeout {TIMEOUT}\n",
                      route("api", oenv.backend, f"EntraProxyToken {AUD} identity=mi")).start()


@pytest.mark.parametrize("source,value", [("imds", v) for v in HUGE] + [("entra", HUGE[0])])
def test_huge_retry_after_is_clamped(oenv, source, value):
    fake = oenv.fake()
    status = 429 if source == "imds" else 503
    fake.mode(source, {"status": status, "retry_after": value})
    h = _httpd(oenv, fake, source)
    try:
        for _ in range(2):   # the warm-up's failure, then the backoff record it left
            t0 = time.monotonic()
            r = get(h.url("/api/echo"), timeout=30)
            elapsed = time.monotonic() - t0
            assert r.status_code == 503, (r.status_code, r.text[:200])
            ra = r.headers.get("Retry-After", "")
            assert ra.isdigit() and 1 <= int(ra) <= CLAMP, f"Retry-After {ra!r}"
            assert elapsed <= TIMEOUT + 1.0, f"the request waited {elapsed:.1f} s"
        _, fails = h.fetch_lines()
        assert fails, h.error_log_tail(10)
        nexts = [int(n) for n in __import__("re").findall(r"ENTRA0303: .*\(next attempt in (-?\d+) s\)",
                                                          h.error_log_text())]
        assert nexts and all(0 <= n <= CLAMP for n in nexts), nexts
        assert CLAMP in nexts, f"a Retry-After of {value} s should back off the full {CLAMP} s: {nexts}"
    finally:
        fake.mode(source, None)
        oenv.stop_httpd(h)


@pytest.mark.parametrize("value", IGNORED)
def test_unusable_retry_after_is_ignored(oenv, value):
    """Negative, non-integer, past-date and garbage values are not a number of seconds: IMDS's own
    backoff (2 s) applies, and the next attempt succeeds."""
    fake = oenv.fake()
    fake.script("imds", [{"status": 429, "retry_after": value}])
    h = _httpd(oenv, fake, "imds")
    try:
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            r = get(h.url("/api/echo"), timeout=30)
            status = r.status_code
            if status == 200:
                break
            ra = r.headers.get("Retry-After", "")
            assert status == 503 and ra.isdigit() and 1 <= int(ra) <= CLAMP, (status, ra)
            time.sleep(0.5)
        assert status == 200, f"no token 15 s after one 429 with Retry-After {value!r}"
    finally:
        oenv.stop_httpd(h)
