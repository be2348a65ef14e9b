"""Debian's mod_lua (Lua 5.3) and mod_entra's rules (Lua 5.4) in the same httpd.

Both Lua libraries are loaded into the same apache2 processes; Debian versions their symbols
(LUA_5.3, LUA_5.4), so mod_entra must bind only to 5.4 and mod_lua only to 5.3.
"""

import os
import re
import subprocess

import pytest
import requests

import conformance
from checks import expect_ok
from echo_backend import headers_of
from httpd import MODULE_PATH
from stack import finish_stack

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, "lua_rules", "coexist.lua")
HANDLER = os.path.join(HERE, "lua_rules", "coexist_handler.lua")
MOD_LUA = "/usr/lib/apache2/modules/mod_lua.so"


def _locations(authority: str) -> str:
    return ("<Location /luahandler>\n  SetHandler lua-script\n  Require all granted\n</Location>\n\n"
            + conformance.location("/lver", "Require entra-lua version",
                                 f'EntraLuaRules "{RULES}"\n  EntraLuaHeaders X-Rule-Lua-Version X-Rule-Int'))


@pytest.fixture(scope="module")
def coexist(make_stack):
    if not os.path.exists(MOD_LUA):
        pytest.fail(f"{MOD_LUA} is missing (Debian package apache2 ships it)", pytrace=False)
    s = make_stack("lua-coexist", start_httpd=False, locations=_locations,
                   server_conf=lambda auth: conformance.server_conf(auth) + f"\nLoadModule lua_module {MOD_LUA}\n",
                   files=["/lver"])
    try:
        with open(HANDLER) as f:
            s.httpd.add_file("luahandler/hello.lua", f.read())
        s.httpd.start()
    except BaseException:
        s.close(check=False)
        raise
    yield s
    finish_stack(s)


def _handler(s, sess=None):
    r = (sess or s.session).get(s.url("/luahandler/hello.lua"), timeout=30)
    r._stack = s
    return r


def _rule(s, sess=None):
    sess = sess or s.session
    r = sess.get(s.url("/lver/echo"), headers={"Authorization": f"Bearer {s.token()}"}, timeout=30)
    r._stack = s
    return r


def test_mod_lua_handler_runs_lua_5_3(coexist):
    r = _handler(coexist)
    expect_ok(r)
    assert r.text == "mod_lua Lua 5.3\n", r.text


def test_entra_rule_runs_lua_5_4(coexist):
    r = _rule(coexist)
    expect_ok(r)
    h = headers_of(r)
    assert h.get("x-rule-lua-version") == ["Lua 5.4"], h
    assert h.get("x-rule-int") == ["integer,Hi"], h
    # Without a token the rule's location is still protected; the handler is not.
    assert coexist.session.get(coexist.url("/lver/echo"), timeout=30).status_code == 401


def test_both_interleaved_in_the_same_processes(coexist):
    s = coexist
    sess = requests.Session()
    sess.trust_env = False
    try:
        for _ in range(20):
            r = _handler(s, sess)
            expect_ok(r)
            assert r.text == "mod_lua Lua 5.3\n"
            r = _rule(s, sess)
            expect_ok(r)
            assert headers_of(r).get("x-rule-lua-version") == ["Lua 5.4"]
    finally:
        sess.close()
    # Every child maps both Lua libraries (and mod_lua and mod_entra).
    parent = s.httpd.proc.pid
    children = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(d))
    assert children, "no apache2 children found"
    for pid in children:
        try:
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
        except OSError as exc:
            pytest.skip(f"cannot read /proc/{pid}/maps: {exc}")
        assert re.search(r"liblua5\.3\.so", maps), f"child {pid} does not map liblua5.3"
        assert re.search(r"liblua5\.4\.so", maps), f"child {pid} does not map liblua5.4"
        assert "mod_lua.so" in maps
        assert os.path.basename(MODULE_PATH) in maps
    assert s.httpd.proc.poll() is None


def _dyn_syms(path: str) -> list[tuple[str, str]]:
    """(name, version) of the undefined dynamic symbols of a shared object."""
    p = subprocess.run(["readelf", "--dyn-syms", "-W", path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = []
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[6] == "UND":
            sym = parts[7]
            name, _, ver = sym.partition("@")
            out.append((name, ver.lstrip("@").split(" ")[0]))
    return out


@pytest.mark.parametrize("path", sorted({MODULE_PATH, os.path.join(os.path.dirname(HERE), "mod_entra", ".libs",
                                                                     "mod_entra.so")}))
def test_mod_entra_binds_only_to_lua_5_4(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} not built")
    syms = [(n, v) for n, v in _dyn_syms(path) if re.match(r"lua(L|open)?_", n)]
    assert len(syms) >= 20, f"expected the Lua API among the undefined symbols of {path}: {syms}"
    unversioned = [n for n, v in syms if v != "LUA_5.4"]
    assert not unversioned, f"{path}: Lua symbols not bound to LUA_5.4: " + \
        ", ".join(f"{n}@{v or '(none)'}" for n, v in syms if v != "LUA_5.4")
    # And mod_lua itself binds to 5.3: the two cannot be confused.
    lua53 = [(n, v) for n, v in _dyn_syms(MOD_LUA) if re.match(r"lua(L|open)?_", n)]
    assert lua53 and all(v == "LUA_5.3" for _, v in lua53), lua53[:10]
