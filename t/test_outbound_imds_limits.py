"""Outbound: the IMDS limits (at most 5 token requests in flight per machine) hold when many
distinct resources are needed cold at the same time, and every request still succeeds."""

from outbound import bearer, managed, oenv, parallel_get, route, verify_token  # noqa: F401

RESOURCES = [f"api://limits-{i}" for i in range(8)]
MPM = {"StartServers": 4, "ServerLimit": 4, "ThreadLimit": 16, "ThreadsPerChild": 16,
       "MaxRequestWorkers": 64, "MinSpareThreads": 16, "MaxSpareThreads": 64}


def test_eight_cold_resources_at_most_five_in_flight(oenv, capsys):
    fake = oenv.fake()
    # Every token request takes 2 s, so that concurrent ones overlap at the fake.
    fake.script("imds", ["slow:2"] * 16)
    locations = "".join(route(f"r{i}", oenv.backend, f"EntraProxyToken {res}/.default identity=sys")
                        for i, res in enumerate(RESOURCES))
    h = oenv.httpd(managed("sys", fake) + "\nEntraTokenTimeout 30\n", locations, mpm=MPM).start()

    results = parallel_get([h.url(f"/r{i}/echo") for i in range(len(RESOURCES))], workers=8)
    stats = fake.stats()["imds"]
    with capsys.disabled():
        print(f"\n[imds limits] max_in_flight={stats['max_in_flight']} max_serving={stats['max_serving']} "
              f"requests={stats['requests']} throttled={stats['throttled']} by_status={stats['by_status']}")

    for i, (r, _, elapsed) in enumerate(results):
        assert not isinstance(r, Exception), f"/r{i}/echo: {r}"
        c = verify_token(bearer(r), fake.jwks())
        assert c["aud"] == RESOURCES[i], c
    assert stats["max_in_flight"] <= 5, f"{stats['max_in_flight']} IMDS requests were in flight at once"
    assert stats["throttled"] == 0, stats
    assert stats["max_in_flight"] >= 2, "the test did not produce concurrent fetches"
    assert sorted(stats["by_resource"]) == sorted(RESOURCES)
    assert all(n == 1 for n in stats["by_resource"].values()), stats["by_resource"]
