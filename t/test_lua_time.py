"""EntraLuaMaxTime: a rule call is bounded in time, not only in VM instructions.

A call into C (string.rep, gsub, table.concat, the pattern matcher) counts as one instruction
however long it runs, so a loop of them used to keep a worker thread busy for minutes or hours
under the default budget of 1,000,000 instructions. Each rule below must be denied within a
bounded time with the time limit named in the error log, and the next request on the same
route (the same pool of states) must work. Single C calls that used to run for hours without
reaching any hook are now cheap or refused by the sandbox.

Rule file: t/lua_rules/slow.lua.
"""

import os
import re
import time

import pytest
import requests

import conformance
from checks import expect_insufficient_scope, expect_ok
from echo_backend import headers_of
from stack import finish_stack

HERE = os.path.dirname(os.path.abspath(__file__))
SLOW = os.path.join(HERE, "lua_rules", "slow.lua")
DECLARE = "EntraLuaHeaders X-Ok X-Len X-Table X-Match X-Find X-Anchored\n"

LOOPS = ["rep_loop", "gsub_loop", "concat_loop", "pattern_loop", "sort_loop"]
SINGLE = {  # rule -> what stops it
    "move_huge": r"(instruction budget exhausted|time limit reached)",
    "insert_len": r"(instruction budget exhausted|time limit reached)",
    "remove_len": r"(instruction budget exhausted|time limit reached)",
    "literal_search": r"search too costly for a rule",
    "balanced": r"pattern too costly for a rule",
    "backref": r"pattern too costly for a rule",
    "long_pattern": r"pattern too long for a rule: 5000 bytes",
    "unanchored": r"pattern too costly for a rule: 2 repetition items on 1500 bytes",
}
FUNCS = LOOPS + list(SINGLE) + ["spin", "rep_empty", "table_ok"]


def _locations(authority: str) -> str:
    return "\n".join(conformance.location(f"/{f}", f"Require entra-lua {f}", f'EntraLuaRules "{SLOW}"')
                     for f in FUNCS)


@pytest.fixture(scope="module")
def tstack(make_stack):
    """EntraLuaMaxTime unset (250 ms), the default 1,000,000 instructions, and 64 MiB so that
    ("x"):rep(4e6) (a 4 MB buffer plus the 4 MB string) fits."""
    s = make_stack("lua-time", locations=_locations, files=[f"/{f}" for f in FUNCS],
                   server_conf=lambda auth: conformance.server_conf(auth, extra=DECLARE + "EntraLuaMaxMemory 67108864\n"))
    yield s
    finish_stack(s)


@pytest.fixture(scope="module")
def t1000(make_stack):
    """EntraLuaMaxTime 1000 and an instruction budget too large to matter."""
    s = make_stack("lua-time-1000", locations=_locations, files=[f"/{f}" for f in FUNCS],
                   server_conf=lambda auth: conformance.server_conf(
                       auth, extra=DECLARE + "EntraLuaMaxTime 1000\nEntraLuaMaxInstructions 1000000000\n"))
    yield s
    finish_stack(s)


def timed(s, path: str, params: dict | None = None, timeout: float = 10):
    m = len(s.httpd.error_log_text())
    t0 = time.monotonic()
    try:
        r = s.get(path, s.token(), params=params, timeout=timeout)
    except requests.exceptions.ReadTimeout:
        pytest.fail(f"{path}: no answer within {timeout} s; log:\n{s.httpd.error_log_text()[m:][-1500:]}")
    return r, time.monotonic() - t0, s.httpd.error_log_text()[m:]


def stopped_after(text: str, func: str, limit: int) -> int:
    hit = re.search(rf"ENTRA0409: lua: {func} failed, denied: time limit reached \(EntraLuaMaxTime {limit} ms; "
                    rf"stopped after (\d+) ms\)", text)
    assert hit, f"{func}: no time-limit denial in the error log:\n{text[-2000:]}"
    return int(hit.group(1))


@pytest.mark.parametrize("func", LOOPS)
def test_loops_of_c_calls_are_stopped_by_the_time_limit(tstack, func):
    s = tstack
    r, elapsed, text = timed(s, f"/{func}/echo", {"go": "1"})
    expect_insufficient_scope(r)
    ms = stopped_after(text, func, 250)
    print(f"{func}: stopped after {ms} ms, 403 after {elapsed * 1000:.0f} ms")
    assert 250 <= ms < 1000, f"{func}: stopped after {ms} ms with EntraLuaMaxTime 250"
    assert elapsed < 5, f"{func}: the 403 took {elapsed:.2f} s"
    # The failed state was discarded: the same route answers from a fresh one.
    r = s.get(f"/{func}/echo", s.token())
    expect_ok(r)
    assert headers_of(r)["x-ok"] == ["yes"]


def test_pure_lua_under_a_large_budget_is_stopped_by_the_configured_time(t1000):
    s = t1000
    r, elapsed, text = timed(s, "/spin/echo", {"go": "1"})
    expect_insufficient_scope(r)
    ms = stopped_after(text, "spin", 1000)
    assert 1000 <= ms < 2000, ms
    assert 1.0 <= elapsed < 5, elapsed
    expect_ok(s.get("/spin/echo", s.token()))


def test_default_budget_still_stops_pure_lua_first(tstack):
    s = tstack
    r, elapsed, text = timed(s, "/spin/echo", {"go": "1"})
    expect_insufficient_scope(r)
    assert "ENTRA0409: lua: spin failed, denied: instruction budget exhausted" in text, text[-1500:]


@pytest.mark.parametrize("func", list(SINGLE))
def test_single_c_calls_that_never_returned_are_refused_or_bounded(tstack, func):
    s = tstack
    r, elapsed, text = timed(s, f"/{func}/echo")
    expect_insufficient_scope(r)
    assert re.search(rf"ENTRA0409: lua: {func} failed, denied: .*{SINGLE[func]}", text), text[-1500:]
    assert elapsed < 5, f"{func}: the 403 took {elapsed:.2f} s"


def test_rep_of_an_empty_string_is_empty_at_once(tstack):
    r, elapsed, _ = timed(tstack, "/rep_empty/echo")
    expect_ok(r)
    assert headers_of(r)["x-len"] == ["0"]
    assert elapsed < 2, elapsed


def test_table_functions_and_patterns_still_work(tstack):
    r = tstack.get("/table_ok/echo", tstack.token())
    expect_ok(r)
    h = headers_of(r)
    assert h["x-table"] == ["1,2,3|4|0|2,3,4,4,5"], h["x-table"]
    assert h["x-match"] == ["someone"]
    assert h["x-anchored"] == ["nil"]
    assert h["x-find"] == ["nil"]


@pytest.mark.parametrize("value", ["0", "-5", "abc", "60001", "9", "250ms", "1e3"])
def test_bad_max_time_fails_the_config_test(tstack, value):
    srv = tstack.httpd.server_conf + f"\nEntraLuaMaxTime {value}\n"
    rc, out = tstack.httpd.config_test(server_conf=srv)
    assert rc != 0, out
    assert "EntraLuaMaxTime: milliseconds from 10 to 60000" in out, out


@pytest.mark.parametrize("value", ["10", "60000"])
def test_max_time_bounds_pass_the_config_test(tstack, value):
    srv = tstack.httpd.server_conf + f"\nEntraLuaMaxTime {value}\n"
    rc, out = tstack.httpd.config_test(server_conf=srv)
    assert rc == 0, out
