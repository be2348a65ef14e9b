"""Outbound: 200 concurrent cold requests across several httpd child processes share one
token fetch (single flight machine-wide through the socache) and all succeed."""

import concurrent.futures
import http.client
import json
import re
import threading
import time

from outbound import managed, oenv, route, verify_token  # noqa: F401

N = 200
AUD = "api://cold-start"
HOLD = 8          # the fake holds the (only) token request this long at most (< curl's 10 s)
MPM = {"StartServers": 4, "ServerLimit": 4, "ThreadLimit": 64, "ThreadsPerChild": 64,
       "MaxRequestWorkers": 256, "MinSpareThreads": 64, "MaxSpareThreads": 256}


def one_request(port: int, i: int, sent: list, lock: threading.Lock) -> tuple:
    """Send one GET, count it as sent, then wait for the answer: (status, body, t_sent, t_done)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t_sent = 0.0
    try:
        conn.request("GET", "/cold/echo", headers={"X-Test-Id": f"cold-{i}", "Connection": "close",
                                                   "Authorization": "Bearer client-token"})
        t_sent = time.time()
        with lock:
            sent.append(i)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, t_sent, time.time()
    except (OSError, http.client.HTTPException) as exc:
        return repr(exc), b"", t_sent, time.time()
    finally:
        conn.close()


def test_200_cold_concurrent_requests_one_fetch(oenv, capsys):
    fake = oenv.fake()
    # The first (and, if single flight works, only) IMDS request is held until we release it.
    fake.script("imds", [f"slow:{HOLD}"])
    h = oenv.httpd(managed("sys", fake) + "\nEntraTokenTimeout 30\n",
                   route("cold", oenv.backend, f"EntraProxyToken {AUD}/.default identity=sys"),
                   mpm=MPM).start()

    sent: list = []
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(max_workers=N) as pool:
        futures = [pool.submit(one_request, h.port, i, sent, lock) for i in range(N)]
        deadline = time.monotonic() + HOLD - 1
        while len(sent) < N and time.monotonic() < deadline:
            time.sleep(0.05)
        n_sent_before_release = len(sent)
        time.sleep(0.5)   # let httpd hand the last ones to workers
        t_release = time.time()
        fake.release()
        results = [f.result(timeout=90) for f in futures]

    stats = fake.stats()["imds"]
    fetches = stats["requests"]
    statuses = [r[0] for r in results]
    report = (f"\n[cold concurrency] {N} requests, {n_sent_before_release} sent before the fetch was "
              f"released, IMDS token requests seen by the fake: {fetches}, statuses: "
              f"{ {s: statuses.count(s) for s in set(statuses)} }")
    with capsys.disabled():
        print(report)

    assert statuses.count(200) == N, ({s: statuses.count(s) for s in set(statuses)},
                                      h.error_log_tail(20))
    assert fetches == 1, f"expected exactly one token fetch, the fake saw {fetches}: {stats}"
    assert n_sent_before_release == N, "not every request was sent while the fetch was held"

    tokens = set()
    for status, body, _, _ in results:
        hdrs = {k.lower(): v for k, v in json.loads(body)["headers"]}
        tokens.add(hdrs["authorization"])
    assert len(tokens) == 1, f"{len(tokens)} different tokens were forwarded"
    tok = tokens.pop().split(" ", 1)[1]
    c = verify_token(tok, fake.jwks())
    assert (c["aud"], c["fake_identity"], c["fake_source"]) == (AUD, "system", "imds")

    # Waiters were answered promptly once the fetch completed (bound, not exact).
    last_done = max(r[3] for r in results)
    print(f"[cold concurrency] last answer {last_done - t_release:.2f} s after the fetch was released")
    assert last_done - t_release < 15, f"requests finished {last_done - t_release:.1f} s after the release"

    # Several child processes served them (pid=%P in the access log of the base config).
    pids = set(re.findall(r"/cold/echo HTTP/1.1\" 200 \d+ pid=(\d+) test=cold-", h.access_log_text()))
    print(f"[cold concurrency] served by {len(pids)} child processes")
    assert len(pids) >= 2, f"all requests were served by {pids}"

    ok, fail = h.fetch_lines()
    assert len(ok) == 1 and not fail, [m.group(0) for m in ok + fail]
