"""The machine-wide table of signature verdicts (EntraTokenCacheEntries): one signature check
per token across all children, bad signatures remembered with who they claimed to be, and
every route still judging a remembered token's claims by its own rules."""

import re
import uuid

import pytest
import requests

import conformance
import entra_tokens as et
from checks import expect_invalid_token, expect_ok
from stack import finish_stack

OTHER_AUD = "api://some-other-api"


def _locations(authority: str) -> str:
    return "\n".join([
        conformance.location("/a"),
        conformance.location("/b", audiences=OTHER_AUD),
        conformance.location("/c", extra="EntraAlgorithms PS256"),
    ])


def _server(entries: int | None):
    def conf(authority: str) -> str:
        extra = f"EntraTokenCacheEntries {entries}\n" if entries is not None else ""
        return conformance.server_conf(authority, extra=extra)
    return conf


def _start(make_stack, name: str, entries: int | None):
    return make_stack(name, locations=_locations, server_conf=_server(entries), files=["/a", "/b", "/c"])


@pytest.fixture(scope="module")
def cached(make_stack):
    s = _start(make_stack, "vtab", None)
    yield s
    finish_stack(s)


@pytest.fixture(scope="module")
def uncached(make_stack):
    s = _start(make_stack, "vtab-off", 0)
    yield s
    finish_stack(s)


def _get_new_connection(stack, path: str, token: str, test_id: str) -> requests.Response:
    """One request on a connection of its own (so that children take turns)."""
    with requests.Session() as s:
        s.trust_env = False
        return s.get(stack.url(path), headers={"Authorization": f"Bearer {token}", "X-Test-Id": test_id,
                                               "Connection": "close"}, timeout=30)


def _pids(stack, test_id: str) -> set[str]:
    return set(re.findall(rf"pid=(\d+) test={re.escape(test_id)}$", stack.httpd.access_log_text(), re.M))


def _entra_lines(stack, needle: str, code: str) -> list[str]:
    return [line for line in stack.httpd.error_log_text().splitlines() if needle in line and code in line]


def _bad_signature(stack, **claims) -> str:
    good = stack.token(**claims)
    other = stack.token(**claims)
    h, c, _ = good.split(".")
    return f"{h}.{c}.{other.split('.')[2]}"


def _spread(stack, path: str, token: str, test_id: str, expect) -> set[str]:
    """Sends the token over new connections until two children have answered (at most 40)."""
    for _ in range(40):
        expect(_get_new_connection(stack, path, token, test_id))
        pids = _pids(stack, test_id)
        if len(pids) >= 2:
            return pids
    pytest.fail(f"40 new connections were all served by one child: {_pids(stack, test_id)}")


def test_bad_signature_checked_once_across_children(cached):
    oid, azp = str(uuid.uuid4()), str(uuid.uuid4())
    tok = _bad_signature(cached, oid=oid, azp=azp)
    test_id = "badsig-" + oid[:8]
    _spread(cached, "/a/ok.txt", tok, test_id, lambda r: expect_invalid_token(r, tok))
    lines = _entra_lines(cached, oid, "ENTRA0206")
    fresh = [line for line in lines if ", cached)" not in line]
    assert len(fresh) == 1, "one signature check for the whole machine:\n" + "\n".join(lines)
    assert len(lines) >= 2
    for line in lines:
        assert "invalid signature" in line, line
        # A bad signature proves nothing: the ids are marked as the caller's claim.
        assert f"claimed app {azp}" in line and f"claimed oid {oid}" in line, line


def test_valid_token_checked_once_across_children(cached):
    oid = str(uuid.uuid4())
    tok = cached.token(oid=oid)
    test_id = "valid-" + oid[:8]
    _spread(cached, "/a/ok.txt", tok, test_id, expect_ok)
    lines = _entra_lines(cached, oid, "ENTRA0207")
    fresh = [line for line in lines if "(cached)" not in line]
    assert len(fresh) == 1, "one signature check for the whole machine:\n" + "\n".join(lines)


def test_remembered_token_is_judged_by_each_routes_rules(cached):
    oid, azp = str(uuid.uuid4()), str(uuid.uuid4())
    tok = cached.token(oid=oid, azp=azp)
    expect_ok(cached.get("/a/ok.txt", tok))
    expect_ok(cached.get("/a/ok.txt", tok))
    r = cached.get("/b/ok.txt", tok)
    expect_invalid_token(r, tok)
    assert "audience" in r.headers["WWW-Authenticate"]
    # Its signature was verified: the log line names the ids without "claimed".
    lines = _entra_lines(cached, oid, "ENTRA0206")
    assert lines and f", app {azp}, oid {oid}" in lines[-1], lines
    r = cached.get("/c/ok.txt", tok)
    expect_invalid_token(r, tok)
    assert "algorithm" in r.headers["WWW-Authenticate"]
    expect_ok(cached.get("/a/ok.txt", tok))


def test_remembered_bad_signature_stays_bad_everywhere(cached):
    tok = _bad_signature(cached)
    for path in ("/a/ok.txt", "/a/ok.txt", "/c/ok.txt", "/b/ok.txt"):
        expect_invalid_token(cached.get(path, tok), tok)


def test_non_guid_ids_are_not_remembered_for_the_log(cached):
    # What a bad token claims is only kept in GUID form; longer strings never enter shared memory.
    oid = str(uuid.uuid4())
    tok = _bad_signature(cached, oid=oid, azp="x" * 300)
    for _ in range(2):
        expect_invalid_token(cached.get("/a/ok.txt", tok), tok)
    lines = _entra_lines(cached, oid, "ENTRA0206")
    assert len(lines) == 2, lines
    assert "x" * 300 in lines[0]
    assert ", cached)" in lines[1] and "claimed app -," in lines[1], lines[1]


def test_table_off_checks_every_bad_signature(uncached):
    oid = str(uuid.uuid4())
    tok = _bad_signature(uncached, oid=oid)
    for _ in range(3):
        expect_invalid_token(uncached.get("/a/ok.txt", tok), tok)
    lines = _entra_lines(uncached, oid, "ENTRA0206")
    assert len(lines) == 3 and not any(", cached)" in line for line in lines), lines
    # Valid tokens still work without the table.
    expect_ok(uncached.get("/a/ok.txt", uncached.token()))


@pytest.mark.parametrize("value", ["-1", "abc", "4194305", "10k"])
def test_bad_entries_value_fails_config_test(uncached, value):
    rc, out = uncached.httpd.config_test(_locations(uncached.fake.authority),
                                         server_conf=_server(value)(uncached.fake.authority))
    assert rc > 0 and "EntraTokenCacheEntries" in out, out


@pytest.mark.parametrize("value", ["0", "16", "100000"])
def test_good_entries_value_passes_config_test(uncached, value):
    rc, out = uncached.httpd.config_test(_locations(uncached.fake.authority),
                                         server_conf=_server(value)(uncached.fake.authority))
    assert rc == 0 and "Syntax OK" in out, out
