"""Outbound: token expiry is read from the endpoint's numeric fields whether they arrive as
JSON numbers or as strings (IMDS and App Service), and logged with the fetch."""

import pytest

from outbound import bearer, claims, get, managed, oenv, route  # noqa: F401


@pytest.mark.parametrize("fmt", ["strings", "numbers"])
def test_expiry_from_numbers_or_strings(oenv, fmt):
    fake = oenv.fake() if not oenv.fakes else oenv.fakes[0]
    fake.reset()
    fake.settings(number_format={"imds": fmt, "appservice": fmt}, lifetime={"imds": 7200, "appservice": 5400})
    b = oenv.backend
    h = oenv.httpd("\n".join([managed("vm", fake), managed("web", fake, source="appservice")]),
                   route("vm", b, "EntraProxyToken api://expiry-vm identity=vm")
                   + route("web", b, "EntraProxyToken api://expiry-web identity=web"),
                   extra_env={"IDENTITY_HEADER": fake.identity_header}).start()
    try:
        for path, life in (("/vm/echo", 7200), ("/web/echo", 5400)):
            c = claims(bearer(get(h.url(path))))
            assert c["exp"] - c["iat"] == life + 300   # the fake back-dates iat by 5 minutes
        ok, fail = h.fetch_lines()
        assert len(ok) == 2 and not fail, [m.group(0) for m in ok + fail]
        for m in ok:
            exp_in = int(m.string[m.end():].split("expires in ", 1)[1].split(" ", 1)[0])
            want = 7200 if m.group(3) == "imds" else 5400
            assert want - 30 <= exp_in <= want, m.group(0)
    finally:
        oenv.stop_httpd(h)
