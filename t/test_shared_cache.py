"""A networked EntraCache (real redis-server and memcached on loopback) can be neither read
nor forged: records are sealed with EntraCacheKeyFile under opaque names, two servers share
one key fetch, tampered or planted records are refused (refetch, one warning), an outage
degrades to direct fetches, and managed-identity tokens never leave the machine."""

import json
import os
import re
import secrets
import tempfile
import time

import pytest
import requests

import checks
import conformance
import entra_tokens as et
from checks import expect_invalid_token, expect_ok
from httpd import Httpd
from identity_client import SECRET_APP, jwt_parts
from netcache import NetCache, missing
from outbound import bearer, get, oenv, route, wait_until, www_file  # noqa: F401
from stack import PROBLEMS, finish_stack
from test_inbound_keys import fresh_get, unknown_kid_token, wait_quiet

T = et.TENANT
NAME_RE = re.compile(rb"mod_entra:[0-9a-f]{64}")


def write_key_file(directory: str, mode: int = 0o600, size: int = 32) -> str:
    path = os.path.join(directory, f"cache-{secrets.token_hex(4)}.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(size))
    os.chmod(path, mode)
    return path


@pytest.fixture(params=["redis", "memcache"])
def cache(request, test_root):
    why = missing(request.param)
    if why:
        pytest.skip(why)
    c = NetCache(request.param, tempfile.mkdtemp(prefix=request.param + "-", dir=test_root)).start()
    yield c
    c.remove()


class Fleet:
    """Server A (a Stack with the fake Entra) and, on demand, server B: same configuration,
    same cache, same key file, its own shared memory (another machine)."""

    def __init__(self, make_stack, cache: NetCache, key_file: str):
        self.cache = cache
        self.b = None

        def server_conf(authority):
            return conformance.server_conf(authority, extra=(
                cache.load_module() + f"EntraCache {cache.spec}\nEntraCacheKeyFile {key_file}\n"))

        def locations(authority):
            return conformance.location("/any") + conformance.location(
                "/meta", tenant_lines=f"EntraMetadataURL {authority}{T}/v2.0/.well-known/openid-configuration")

        self.a = make_stack("shared", server_conf=server_conf, locations=locations, files=["/any", "/meta"])

    def start_b(self) -> Httpd:
        h = self.a.httpd
        self.b = Httpd(os.path.join(self.a.workdir, "httpd-b"), server_conf=h.server_conf,
                       locations=h.locations, backend_port=h.backend_port)
        for p in ("/any", "/meta"):
            self.b.add_file(p.strip("/") + "/ok.txt")
        return self.b.start()

    def warm_a(self):
        """A fetched both sources' keys (and the v1 part); the fake is quiet."""
        tok = self.a.token()
        expect_ok(self.a.get("/any/ok.txt", tok))
        expect_ok(self.a.get("/meta/ok.txt", tok))
        wait_until(lambda: self.a.fake.stats()["jwks_v1"].get(T), 15, what="v1 keys")
        return wait_quiet(self.a.fake)

    def close(self):
        problems = []
        if self.b is not None:
            problems += self.b.stop()
            text = self.b.error_log_text()
            try:
                checks.assert_log_has_no_tokens(text)
            except AssertionError as exc:
                problems.append(str(exc))
            problems += checks.child_crashes(text) + checks.sanitizer_lines(text)
        if problems:
            PROBLEMS.extend(problems)
        finish_stack(self.a)
        assert not problems, "\n".join(problems)


@pytest.fixture
def fleet(make_stack, cache, test_root):
    f = Fleet(make_stack, cache, write_key_file(test_root))
    yield f
    f.close()


def warnings_0500(h: Httpd) -> list[str]:
    return re.findall(r"ENTRA0500: .* the record (\S+) does not open", h.error_log_text())


def jwks_fetches(fake) -> int:
    return fake.stats()["jwks_v2"].get(T, 0)


# ------------------------------------------------------------------ sharing, sealing

def test_two_servers_share_one_key_fetch(fleet):
    before = fleet.warm_a()
    assert jwks_fetches(fleet.a.fake) == 2          # one per source (/any and /meta)
    b = fleet.start_b()
    for path in ("/any/ok.txt", "/meta/ok.txt"):
        expect_ok(fresh_get(b.url(path), fleet.a.token()))
    time.sleep(6)                                    # one upkeep round of B's children
    for path in ("/any/ok.txt", "/meta/ok.txt"):
        expect_ok(fresh_get(b.url(path), fleet.a.token()))
    after = wait_quiet(fleet.a.fake)
    assert after["total"] == before["total"], (before, after)
    assert "ENTRA0104" not in b.error_log_text()


def test_nothing_readable_is_stored(fleet):
    fleet.warm_a()
    tok = fleet.a.token()
    expect_ok(fleet.a.get("/any/ok.txt", tok))
    doc = requests.get(fleet.a.fake.url(f"{T}/v2.0/.well-known/openid-configuration"), timeout=10).json()
    kids = [k["kid"] for k in fleet.a.fake.key_list()["keys"]]
    forbidden = [doc["issuer"], doc["jwks_uri"], fleet.a.fake.authority, T, "keys", "iss", "kid",
                 "lease", "rec", tok, tok.split(".")[1][:24]] + kids
    items = fleet.cache.items()
    # Exactly the two key records: leases, backoff and warnings stay on the machine.
    assert len(items) == 2, sorted(items)
    for k, v in items.items():
        assert NAME_RE.fullmatch(k), k
        for word in forbidden:
            w = word.encode()
            assert w not in k and w not in v, f"{word!r} readable in the cache"
        assert v[0] == 1 and len(v) > 200, v[:16]   # version byte, then nonce, ciphertext, tag


def test_swapped_and_damaged_records_are_refused(fleet):
    fleet.warm_a()
    (k1, v1), (k2, v2) = sorted(fleet.cache.items().items())
    fleet.cache.set(k1, v2)
    fleet.cache.set(k2, v1)
    n = jwks_fetches(fleet.a.fake)
    b = fleet.start_b()
    for path in ("/any/ok.txt", "/meta/ok.txt"):
        expect_ok(fresh_get(b.url(path), fleet.a.token()))
    time.sleep(6)
    assert jwks_fetches(fleet.a.fake) == n + 2, "B refetched both sources"
    warned = warnings_0500(b)
    assert sorted(warned) == sorted(set(warned)) and len(warned) == 2, warned

    # B stored sealed records again; now damage them: one bit in the tag, one in the body.
    items = fleet.cache.items()
    assert items[k1] != v2 and items[k2] != v1
    for k, pos in ((k1, -1), (k2, len(items[k2]) // 2)):
        v = bytearray(items[k])
        v[pos] ^= 0x01
        fleet.cache.set(k, bytes(v))
    n = jwks_fetches(fleet.a.fake)
    b.restart()                                      # a fresh machine state for B
    for path in ("/any/ok.txt", "/meta/ok.txt"):
        expect_ok(fresh_get(b.url(path), fleet.a.token()))
    time.sleep(6)
    assert jwks_fetches(fleet.a.fake) == n + 2
    assert len(warnings_0500(b)) == 4, warnings_0500(b)


def test_planted_key_is_never_accepted(fleet):
    fleet.warm_a()
    issuer = requests.get(fleet.a.fake.url(f"{T}/v2.0/.well-known/openid-configuration"),
                          timeout=10).json()["issuer"]
    attacker = et.gen_rsa(kid="attacker-" + secrets.token_hex(4))
    planted = {"keys": [attacker.jwk(issuer=issuer)], "iss2": issuer, "iss1": et.v1_issuer(T),
               "fetched": int(time.time()), "v": int(time.time() * 1e6), "v1try": True}
    for k in fleet.cache.keys():
        fleet.cache.set(k, json.dumps(planted).encode())
    forged = et.mint(attacker, et.v2_claims(), alg="RS256")
    b = fleet.start_b()
    for h in (b, fleet.a.httpd):
        for path in ("/any/ok.txt", "/meta/ok.txt"):
            expect_invalid_token(fresh_get(h.url(path), forged), forged)
            expect_ok(fresh_get(h.url(path), fleet.a.token()))
    assert len(warnings_0500(b)) == 2, warnings_0500(b)


def test_cache_outage_degrades_to_direct_fetches(fleet):
    fleet.warm_a()
    fleet.cache.stop()
    for _ in range(5):
        expect_ok(fresh_get(fleet.a.url("/any/ok.txt"), fleet.a.token()))
    b = fleet.start_b()                              # a cold machine while the cache is down
    n = jwks_fetches(fleet.a.fake)
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        for h in (b, fleet.a.httpd):
            for path in ("/any/ok.txt", "/meta/ok.txt"):
                expect_ok(fresh_get(h.url(path), fleet.a.token()))
        time.sleep(0.3)
    assert jwks_fetches(fleet.a.fake) >= n + 1, "B fetched its keys directly"
    assert "ENTRA0501" in b.error_log_text() + fleet.a.httpd.error_log_text()
    # The cache comes back (empty: no persistence); once the servers try it again (5 s
    # here, and apr_redis/apr_memcache revive a dead server after 5 s), fetches are shared.
    fleet.cache.start(port=fleet.cache.port)
    assert fleet.cache.keys() == []
    time.sleep(11)
    tok = unknown_kid_token(fleet.a)               # makes B refetch (and store) its keys
    expect_invalid_token(fresh_get(b.url("/any/ok.txt"), tok), tok)
    wait_until(lambda: fleet.cache.keys(), 10, what="a record stored in the cache again")


# ------------------------------------------------------------------ outbound tokens

def test_client_credential_tokens_shared_managed_identity_tokens_stay(oenv, cache, test_root):
    fake = oenv.fake()
    secret_file = www_file(oenv.path(f"{cache.kind}.secret"), fake.client_secret() + "\n")
    key_file = write_key_file(test_root)
    server = (cache.load_module() + f"EntraCache {cache.spec}\nEntraCacheKeyFile {key_file}\n"
              f"EntraIdentity app secret tenant={fake.tenant} client_id={SECRET_APP} "
              f"secret_file={secret_file} authority={fake.url('entra_authority')}\n"
              f"EntraIdentity mi managed source=imds endpoint={fake.url('imds')}\n")
    locations = (route("app", oenv.backend, "EntraProxyToken api://orders-api/.default identity=app")
                 + route("mi", oenv.backend, "EntraProxyToken api://orders-api identity=mi"))
    h1 = oenv.httpd(server, locations).start()
    app1, mi1 = bearer(get(h1.url("/app/echo"))), bearer(get(h1.url("/mi/echo")))
    h2 = oenv.httpd(server, locations).start()
    app2, mi2 = bearer(get(h2.url("/app/echo"))), bearer(get(h2.url("/mi/echo")))
    st = fake.stats()
    assert app2 == app1 and st["entra"]["requests"] == 1, "one client-credential fetch for both"
    assert mi2 != mi1 and st["imds"]["requests"] == 2, "each machine asks for its own identity's token"
    items = cache.items()
    assert len(items) == 1, sorted(items)            # the client-credential token's record only
    for v in items.values():
        for t in (app1, mi1, mi2):
            assert t.encode() not in v and t.split(".")[1][:24].encode() not in v
    # A third server names its identity "app" too, but it is another application: it gets
    # its own token, never the one the cache holds for the first.
    other = fake.add_client(client_id="12121212-0000-4000-8000-0000000000c3", name="other-app",
                            secrets=["other-secret"])
    other_file = www_file(oenv.path(f"{cache.kind}-other.secret"), "other-secret\n")
    h3 = oenv.httpd(server.replace(SECRET_APP, other).replace(secret_file, other_file), locations).start()
    app3 = bearer(get(h3.url("/app/echo")))
    assert jwt_parts(app3)[1]["azp"] == other and jwt_parts(app1)[1]["azp"] == SECRET_APP
    assert fake.stats()["entra"]["requests"] == 2
    for h in (h1, h2, h3):
        oenv.stop_httpd(h)


# ------------------------------------------------------------------ configuration

def test_key_file_required_and_checked(test_root, module_so):
    h = Httpd(os.path.join(test_root, "shared-config"), server_conf=conformance.server_conf("http://127.0.0.1:9/"))
    redis = "LoadModule socache_redis_module /usr/lib/apache2/modules/mod_socache_redis.so\n"
    memc = "LoadModule socache_memcache_module /usr/lib/apache2/modules/mod_socache_memcache.so\n"
    cases = [
        (redis + "EntraCache redis:127.0.0.1:6379\n", "EntraCacheKeyFile"),
        (memc + "EntraCache memcache:127.0.0.1:11211\n", "EntraCacheKeyFile"),
        (redis + "EntraCache redis:127.0.0.1:6379\nEntraCacheKeyFile "
         + write_key_file(test_root, mode=0o644) + "\n", "readable by others"),
        (redis + "EntraCache redis:127.0.0.1:6379\nEntraCacheKeyFile "
         + write_key_file(test_root, size=16) + "\n", "16 bytes"),
        (redis + "EntraCache redis:127.0.0.1:6379\nEntraCacheKeyFile /nonexistent/key\n", "cannot open"),
    ]
    for extra, why in cases:
        rc, out = h.config_test("", server_conf=conformance.server_conf("http://127.0.0.1:9/", extra=extra))
        assert rc != 0 and "Syntax OK" not in out, out
        assert "EntraCacheKeyFile" in out and why in out, out
    for extra in (redis + "EntraCache redis:127.0.0.1:6379\nEntraCacheKeyFile "
                  + write_key_file(test_root, mode=0o640) + "\n", "EntraCache shmcb\n", ""):
        rc, out = h.config_test("", server_conf=conformance.server_conf("http://127.0.0.1:9/", extra=extra))
        assert rc == 0 and "Syntax OK" in out, out
