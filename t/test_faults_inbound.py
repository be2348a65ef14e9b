"""Fault matrix, inbound side (issue #11): the authority (discovery + JWKS) down at start,
faulty at refresh, hanging under a cold burst, and a child killed while it holds the
machine-wide fetch lease. Rows other files already cover are not repeated here:

  down at start      test_inbound_keys: hanging_authority_on_cold_start_is_503,
                     broken_authority_on_cold_start_is_503, recovers_after_outage (500s);
                     here: nothing listening at all, then back on the same port
  faulty at refresh  test_inbound_keys: cached_keys_survive_a_broken_refetch (500, garbage,
                     404, truncated, invalid shape, no keys), valid_tokens_not_blocked_by_a_
                     hanging_refetch; here: a 10 MiB body (cap, log, counters, peak RSS) and
                     the bound of the request that waits on a hanging refetch
  cold burst         test_inbound_keys: concurrent_cold_requests_fetch_once (30, slow),
                     request_waiting_on_another_fetch_ends_at_the_bound; here: 200 at once
                     against a hanging authority, with an unauthenticated route probed
  child dies         test_child_exit, test_graceful (orderly exits); here: SIGKILL of the
                     lease holder

Every test gets a fresh apache2 and fake (see the `start` fixture of test_inbound_keys).
"""

import os
import re
import signal
import threading
import time

import pytest

import conformance
import procs
from checks import expect_invalid_token, expect_ok
from outbound import parallel_get, timed_get, wait_until
from stack import finish_stack
from test_inbound_keys import (KEY_WAIT_BOUND, T, _expect_503, fresh_get, modes, start,  # noqa: F401
                               unknown_kid_token, wait_quiet)

SLACK = 2.0                     # generous allowance on top of every documented bound
# entra_keys.c: the lease lives until the holder's deadline (fetch budget 10 s + 1 s for
# storing) plus 1 s, so a holder that died frees it 12 s after it took it.
LEASE_BOUND = KEY_WAIT_BOUND + 1.0
MIB = 1024 * 1024
BURST = 200                     # the cold burst
OPEN = "/open/ok.txt"           # no AuthType: served without a token


def _poll_status(url: str, token: str, want: int, until: float) -> tuple:
    """GET every 0.25 s until the answer is `want` or monotonic time `until`: (last
    response, its monotonic time)."""
    r = None
    while time.monotonic() < until:
        r = fresh_get(url, token, 30.0)
        if r.status_code == want:
            break
        time.sleep(0.25)
    return r, time.monotonic()


def _refetch_answer(s) -> float:
    """A token with a kid nobody published, so the module refetches: 401 within the key wait
    bound; returns how long it took."""
    tok = unknown_kid_token(s)
    t0 = time.monotonic()
    r = fresh_get(s.url("/any/ok.txt"), tok, 40.0)
    elapsed = time.monotonic() - t0
    r._stack = s
    expect_invalid_token(r, tok)
    assert elapsed <= KEY_WAIT_BOUND + SLACK, f"the refetching request took {elapsed:.1f} s"
    return elapsed


def _keys_serve(s, what: str = ""):
    for role in ("rsa1", "rsa2", "ec256"):
        expect_ok(fresh_get(s.url("/any/ok.txt"), s.token(key=role)), f"(key {role}{what})")


# ------------------------------------------------------------------ down at start

def test_authority_down_at_start_then_back_without_restart(start):
    """Nothing listens at the authority when apache2 starts (connection refused): 503 with
    Retry-After, then keys as soon as the authority is back, in the same apache2."""
    s = start(prepare=lambda st: st.fake.stop())
    parent, port = s.httpd.proc.pid, s.fake.port
    t0 = time.monotonic()
    r = fresh_get(s.url("/any/ok.txt"), s.token(), 40.0)
    _expect_503(s, r, time.monotonic() - t0)
    retry_after = int(r.headers["Retry-After"])
    assert re.search(r"ENTRA0105: key fetch failed \(attempt 1\): discovery \S+: .*connect",
                     s.httpd.error_log_text()), s.httpd.error_log_tail()

    s.fake.start(port=port)
    back = time.monotonic()
    r, ok_at = _poll_status(s.url("/any/ok.txt"), s.token(), 200, back + retry_after + SLACK)
    r._stack = s
    expect_ok(r, f"(authority back for {time.monotonic() - back:.1f} s, Retry-After {retry_after})")
    print(f"[down at start] 503 Retry-After {retry_after}; 200 {ok_at - back:.2f} s after the "
          "authority came back")
    assert s.httpd.proc.pid == parent and s.httpd.proc.poll() is None
    assert s.httpd.error_log_text().count("resuming normal operations") == 1, "apache2 restarted"
    _keys_serve(s)


# ------------------------------------------------------------------ faulty at refresh

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_huge_body_at_refresh_is_capped(start, chunked):
    """A refetch meets a 10 MiB JWKS (announced by Content-Length, or chunked so the size shows
    only while reading): the module hangs up at its 256 KiB cap, says so in the log, its
    children's peak RSS does not grow by the body, and the old keys keep serving."""
    s = start()
    for _ in range(6):                       # warm-up: the children have verified tokens
        expect_ok(fresh_get(s.url("/any/ok.txt"), s.token()))
    wait_quiet(s.fake)
    peak = {p: procs.memory_kib(p, "VmHWM") for p in procs.children(s.httpd.proc.pid)}
    s.fake.set_mode("jwks_v2", "huge", size=10 * MIB, chunked=chunked)
    elapsed = _refetch_answer(s)

    def hung_up():
        h = s.fake.stats()["huge"]["jwks_v2"]
        return h if h["aborted"] else None

    huge = wait_until(hung_up, 10, what="the fake to see the module hang up")
    m = re.search(r"\[pid (\d+):tid \d+\] .*ENTRA0107: refetch for an unknown kid failed: .*JWKS \S+: "
                  r"response too large", s.httpd.error_log_text())
    assert m, s.httpd.error_log_tail()
    refetcher = int(m.group(1))
    # Against its own peak before; a child prefork started since, against the highest peak.
    growth = procs.memory_kib(refetcher, "VmHWM") - peak.get(refetcher, max(peak.values()))
    print(f"[huge at refresh, {'chunked' if chunked else 'content-length'}] fake: {huge}; "
          f"answer in {elapsed:.2f} s; peak RSS of the refetching child +{growth} KiB")
    assert huge["served"] == 1 and huge["aborted"] == 1, huge
    assert huge["bytes"] < 10 * MIB, huge
    assert procs.alive(refetcher), "the refetching child died"
    assert growth < 4 * 1024, f"the refetching child's peak RSS grew by {growth} KiB"
    _keys_serve(s, ", stale")


def test_hanging_refresh_is_answered_within_the_bound(start):
    """A refetch for an unknown kid meets a hanging authority: that request gets its 401 within
    the key wait bound (without the hang being released), and the old keys keep serving."""
    s = start()
    expect_ok(s.get("/any/ok.txt", s.token()))
    wait_quiet(s.fake)
    s.fake.set_mode("all", "hang", delay=60)
    elapsed = _refetch_answer(s)
    print(f"[hang at refresh] the refetching request answered 401 in {elapsed:.2f} s")
    assert re.search(r"ENTRA0107: refetch for an unknown kid failed: .*timed out", s.httpd.error_log_text()), \
        s.httpd.error_log_tail()
    _keys_serve(s, ", stale")
    s.fake.stop()   # ends the hanging answer


# ------------------------------------------------------------------ hanging under a cold burst

def _burst(s) -> dict:
    """BURST concurrent cold requests with a token while another thread GETs OPEN every
    0.2 s: {"results": [(response, start, elapsed)], "probes": [(start, elapsed, status)]}."""
    done = threading.Event()
    probes = []

    def probe():
        end = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < end:
            try:
                r, t0, el = timed_get(s.url(OPEN), timeout=30)
                probes.append((t0, el, r.status_code))
            except Exception as exc:   # noqa: BLE001 (recorded, judged by the test)
                probes.append((time.time(), 30.0, repr(exc)))
            time.sleep(0.2)

    th = threading.Thread(target=probe)
    th.start()
    try:
        time.sleep(0.5)
        results = parallel_get([s.url("/any/ok.txt")] * BURST, {"Authorization": f"Bearer {s.token()}"},
                               workers=BURST, timeout=60)
    finally:
        done.set()
        th.join(timeout=40)
    first = min(t for _, t, _ in results if t) if any(t for _, t, _ in results) else time.time()
    last = max(t + el for _, t, el in results)
    during = [p for p in probes if p[0] + p[1] >= first and p[0] <= last]
    return {"results": results, "probes": probes, "during": during, "stats": s.fake.stats(),
            "window": last - first}


@pytest.fixture(scope="module")
def hanging_burst(make_stack):
    """One cold burst against an authority whose every answer hangs, shared by the tests
    below (each reads another side of it)."""
    s = make_stack("burst", prepare=modes(all=("hang", 60.0)), files=["/any", "/open"],
                   locations=lambda a: conformance.location("/any"))
    try:
        out = _burst(s)
        out["stack"] = s
        statuses = sorted({getattr(r, "status_code", repr(r)) for r, _, _ in out["results"]}, key=str)
        worst = max(p[1] for p in out["during"]) if out["during"] else None
        print(f"\n[cold burst] {BURST} requests answered {statuses} within "
              f"{max(el for _, _, el in out['results']):.2f} s (window {out['window']:.2f} s); "
              f"unauthenticated probes during it: {len(out['during'])}, slowest "
              f"{worst if worst is None else round(worst, 2)} s")
        yield out
    finally:
        s.fake.stop()
        finish_stack(s)


def test_cold_burst_against_a_hanging_authority_is_answered_within_the_bound(hanging_burst):
    s = hanging_burst["stack"]
    # Timed by the client: its 200 threads share the machine's two cores with apache2 and
    # parse 200 answers that come at once, hence twice the slack.
    for r, _, elapsed in hanging_burst["results"]:
        assert not isinstance(r, Exception), f"a request of the burst failed: {r!r}"
        _expect_503(s, r, elapsed, bound=KEY_WAIT_BOUND + 2 * SLACK)
    st = hanging_burst["stats"]
    # One fetch for the machine: the burst waited on it instead of starting its own.
    assert st["max_in_flight"]["discovery_v2"] == 1, st
    assert st["discovery_v2"].get(T, 0) <= 2, st


def test_cold_burst_leaves_an_unauthenticated_route_serving(hanging_burst):
    during = hanging_burst["during"]
    assert during, "no probe of the unauthenticated route overlapped the burst"
    # With every worker waiting on the fetch, a probe waits the fetch out (7 to 11.7 s were
    # seen before the waiting room). Below half the key-wait bound it was served by a free
    # worker; prefork also queues it behind the burst while it spawns processes (2.3 s seen).
    for t0, elapsed, status in during:
        assert status == 200, f"the unauthenticated route answered {status}"
        assert elapsed <= KEY_WAIT_BOUND / 2, \
            f"the unauthenticated route took {elapsed:.1f} s during the burst"


# ------------------------------------------------------------------ a child dies mid-fetch

def _discovery_v2_times(fake) -> list:
    return sorted(q["t"] for q in fake.requests_log() if q["category"] == "discovery_v2")


def test_child_killed_holding_the_lease_is_taken_over(start):
    """The child whose upkeep thread holds the fetch lease (its discovery request hangs) is
    SIGKILLed: the lease it can no longer release expires at its bound, and then another
    process fetches and requests get keys."""
    s = start(prepare=modes(all=("hang", 60.0)))
    parent = s.httpd.proc.pid
    holder = wait_until(lambda: next((p for p in procs.children(parent)
                                      if procs.connected_to(p, s.fake.port)), None),
                        10, step=0.05, what="a child fetching from the authority")
    taken = _discovery_v2_times(s.fake)
    assert len(taken) == 1, f"expected one fetch in flight, the fake saw {len(taken)}"
    s.fake.set_mode("all", "ok")             # the next fetch, whoever makes it, succeeds
    os.kill(holder, signal.SIGKILL)           # httpd does not log a child's SIGKILL
    procs.wait_gone([holder], timeout=5)

    r, _ = _poll_status(s.url("/any/ok.txt"), s.token(), 200,
                        time.monotonic() + LEASE_BOUND + SLACK + 5)
    r._stack = s
    expect_ok(r, "(nobody took over the fetch of the killed child)")
    times = _discovery_v2_times(s.fake)
    assert len(times) >= 2, times
    takeover = times[1] - taken[0]
    print(f"[lease holder killed] pid {holder}; the next fetch began {takeover:.2f} s after its "
          f"fetch (lease bound {LEASE_BOUND:.0f} s)")
    assert takeover <= LEASE_BOUND + SLACK, f"the lease of a dead holder lasted {takeover:.1f} s"
    assert procs.children(parent), "apache2 has no children left"
    fetched_by = re.findall(r"\[pid (\d+):tid \d+\] ENTRA0104: ", s.httpd.error_log_text())
    assert fetched_by and str(holder) not in fetched_by, fetched_by
    _keys_serve(s)
