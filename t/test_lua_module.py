"""The standalone Lua module `entra` (lua/entra.so) and its command-line tool lua/entra-token,
against the local fakes (fake_entra.py for discovery + JWKS, fake_identity.py for IMDS, App
Service, Arc and the Entra token endpoint).

Builds nothing: run `make luamod` first. ENTRA_LUAMOD=<path to entra.so> tests another build
(`make test-e2e SANITIZE=1` passes build/san/entra.so); ENTRA_SANITIZE=1 preloads ASan + UBSan
into lua5.4 and fails on any report.
"""

import os
import re
import shutil
import socket
import stat
import subprocess
import time

import pytest

import entra_tokens as et
import identity_client as ic
from fake_entra_client import FakeEntra
from identity_client import FakeIdentity

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LUA = shutil.which("lua5.4") or "/usr/bin/lua5.4"
CLI = os.path.join(REPO, "lua", "entra-token")
LUA_TEST = os.path.join(HERE, "lua", "test_entra.lua")
LUAMOD = os.environ.get("ENTRA_LUAMOD") or os.path.join(REPO, "lua", "entra.so")
PYTHON = "/usr/bin/python3"

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.")
SANITIZER_RE = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer")


def sanitize() -> bool:
    return os.environ.get("ENTRA_SANITIZE") == "1"


def sanitizer_env() -> dict:
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        if not path or not os.path.isabs(path) or not os.path.exists(path):
            pytest.fail(f"ENTRA_SANITIZE=1 but gcc cannot find {name}", pytrace=False)
        libs.append(os.path.realpath(path))
    return {"LD_PRELOAD": " ".join(libs),
            "ASAN_OPTIONS": "detect_leaks=0:use_sigaltstack=0:abort_on_error=0",
            "UBSAN_OPTIONS": "print_stacktrace=1"}


@pytest.fixture(scope="module")
def luamod():
    if not os.path.exists(LUAMOD):
        pytest.fail(f"Lua module not found at {LUAMOD}: run make luamod first "
                    f"(cd {REPO} && make luamod; for sanitizer runs: make luamod SANITIZE=1 and "
                    f"ENTRA_LUAMOD=build/san/entra.so ENTRA_SANITIZE=1)", pytrace=False)
    if not os.path.exists(LUA):
        pytest.fail("lua5.4 not found: apt-get install lua5.4", pytrace=False)
    return os.path.abspath(LUAMOD)


@pytest.fixture(scope="module")
def workdir(test_root):
    d = os.path.join(test_root, "lua-module")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def cli(luamod, workdir):
    """entra-token next to the module under test (it loads the entra.so beside itself)."""
    if os.path.dirname(luamod) == os.path.dirname(CLI):
        return CLI
    d = os.path.join(workdir, "cli")
    os.makedirs(d, exist_ok=True)
    shutil.copy2(CLI, os.path.join(d, "entra-token"))
    link = os.path.join(d, "entra.so")
    if not os.path.lexists(link):
        os.symlink(luamod, link)
    return os.path.join(d, "entra-token")


@pytest.fixture(scope="module")
def base_env(luamod):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IDENTITY_", "IMDS_", "MSI_", "AZURE_", "LUA_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env["LUA_CPATH"] = os.path.join(os.path.dirname(luamod), "?.so") + ";;"
    if sanitize():
        env.update(sanitizer_env())
    return env


@pytest.fixture(scope="module")
def fake_entra(workdir, master_keys):
    d = os.path.join(workdir, "fake-entra")
    keys = os.path.join(d, "keys")
    if not os.path.exists(keys):
        shutil.copytree(master_keys, keys)
    f = FakeEntra(d, keys_dir=keys).start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def fake_id(workdir):
    f = FakeIdentity(os.path.join(workdir, "fake-identity")).start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def closed_url():
    """A loopback URL nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def write_private(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def mint_tokens(fake: FakeEntra) -> dict:
    rsa1, rsa2, ec256 = fake.key("rsa1"), fake.key("rsa2"), fake.key("ec256")
    T, now = et.TENANT, int(time.time())
    toks = {
        "tok_good": et.mint(rsa1, et.v2_claims()),
        "tok_v1": et.mint(rsa2, et.v1_claims()),
        "tok_expired": et.mint(rsa1, et.v2_claims(now=now - 7200)),
        "tok_wrong_aud": et.mint(rsa1, et.v2_claims(aud="api://someone-else")),
        "tok_bad_sig": et.mint(rsa2, et.v2_claims(), header=et.default_header(rsa1, "RS256")),
        "tok_wrong_iss": et.mint(rsa1, et.v2_claims(iss=et.v2_issuer(et.OTHER_TENANT))),
        "tok_es256": et.mint(ec256, et.v2_claims(), alg="ES256"),
        "tok_unknown_kid": et.mint(rsa1, et.v2_claims(), header={"typ": "JWT", "alg": "RS256",
                                                                 "kid": "no-such-kid"}),
        "tok_not_yet": et.mint(rsa1, et.v2_claims(nbf=now + 3600, exp=now + 7200)),
        "tok_long_life": et.mint(rsa1, et.v2_claims(lifetime=100000)),
        "tok_tid_mismatch": et.mint(rsa1, et.v2_claims(tid=et.OTHER_TENANT)),
        "tok_no_exp": et.mint(rsa1, et.v2_claims(exp=et.DROP)),
        "tok_alg_none": et.mint(rsa1, et.v2_claims(), header={"typ": "JWT", "alg": "none",
                                                              "kid": rsa1.kid}, alg="none"),
        "tok_other_allowed": et.mint(rsa1, et.v2_claims(tenant=et.ALLOWED_TENANT_2)),
        "tok_null_claim": et.mint(rsa1, et.v2_claims(xnull=None, xnested={"inner": [1, 2]})),
        # claims methods (is_app_only, is_user, in_group, has_acrs)
        "tok_user": et.mint(rsa1, et.v2_claims(idtyp="user", scp="User.Read", roles=et.DROP,
                                               groups=["0e1d2c3b-4a59-4687-9a1b-2c3d4e5f6071"],
                                               acrs=["c1"])),
        "tok_app_no_idtyp": et.mint(rsa1, et.v2_claims(idtyp=et.DROP)),
        "tok_neither": et.mint(rsa1, et.v2_claims(idtyp=et.DROP, sub="pairwise")),
        "tok_overage": et.mint(rsa1, et.v2_claims(groups=["0e1d2c3b-4a59-4687-9a1b-2c3d4e5f6071"],
                                                  _claim_names={"groups": "src1"})),
    }
    toks["kid_rsa1"] = rsa1.kid
    return toks


@pytest.fixture(scope="module")
def env_setup(fake_entra, fake_id, workdir, closed_url):
    """Everything the Lua test needs, written to a config file of "name value" lines."""
    d = os.path.join(workdir, "files")
    os.makedirs(d, mode=0o700, exist_ok=True)
    cert = ic.make_client_certificate(os.path.join(d, "cert"), name="cert-app")
    fake_id.register_certificate(ic.CERT_APP, cert["pem"])
    bad_secret = "wrong-" + os.urandom(8).hex()
    cfg = {
        "python": PYTHON,
        "tenant": et.TENANT,
        "aud_guid": et.AUD_GUID,
        "aud_uri": et.AUD_URI,
        "allowed_tenant": et.ALLOWED_TENANT_2,
        "authority": fake_entra.authority,
        "closed_url": closed_url,
        "identity_base": fake_id.base_url,
        "identity_authority": fake_id.url("entra_authority"),
        "imds_url": fake_id.url("imds"),
        "appservice_url": fake_id.url("appservice"),
        "arc_url": fake_id.url("arc"),
        "arc_key_dir": fake_id.info["arc_key_dir"],
        "user1_client_id": fake_id.identity("user1")["client_id"],
        "user2_object_id": fake_id.identity("user2")["object_id"],
        "user3_resource_id": fake_id.identity("user3")["resource_id"],
        "secret_app": ic.SECRET_APP,
        "cert_app": ic.CERT_APP,
        "workload_app": ic.WORKLOAD_APP,
        "secret_file": write_private(os.path.join(d, "secret"), fake_id.client_secret() + "\n"),
        "bad_secret": bad_secret,
        "bad_secret_file": write_private(os.path.join(d, "bad-secret"), bad_secret),
        "cert_file": cert["cert_path"],
        "key_file": cert["key_path"],
        "workload_token_file": write_private(os.path.join(d, "federated-token"),
                                             fake_id.mint_federated()),
    }
    cfg.update(mint_tokens(fake_entra))
    for k, v in cfg.items():
        assert "\n" not in v and " " not in k, k
    path = write_private(os.path.join(d, "config"), "".join(f"{k} {v}\n" for k, v in cfg.items()))
    return {"config": path, **cfg}


def run(cmd, env, input_text=None, timeout=120):
    r = subprocess.run(cmd, env=env, input=input_text, capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    if SANITIZER_RE.search(r.stderr):
        pytest.fail(f"sanitizer report from {cmd[:2]}:\n{r.stderr}", pytrace=False)
    return r


# ------------------------------------------------------------------ the Lua test file

def test_lua_module_checks(env_setup, base_env, fake_id):
    fake_id.reset(registrations=False)   # fresh counters, scripts and modes; keep the cert
    env = dict(base_env, ENTRA_TEST_CONFIG=env_setup["config"],
               IDENTITY_HEADER=fake_id.identity_header)
    r = run([LUA, LUA_TEST], env, timeout=300)
    print(r.stdout)
    summary = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert summary, f"no summary line; exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    failures = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert int(summary.group(2)) == 0 and r.returncode == 0, "\n".join(failures) + "\n" + r.stderr
    assert int(summary.group(1)) >= 150


# ------------------------------------------------------------------ entra-token

def assert_no_token(r, *tokens):
    for text in (r.stdout, r.stderr):
        assert not JWT_RE.search(text), f"a JWT was printed:\n{text}"
        for t in tokens:
            assert t not in text


def test_cli_help(cli, base_env):
    r = run([cli, "help"], base_env)
    assert r.returncode == 0 and "usage: entra-token" in r.stdout
    r = run([cli], base_env)
    assert r.returncode == 2 and "usage:" in r.stdout
    r = run([cli, "frobnicate"], base_env)
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_cli_decode(cli, base_env, env_setup):
    tok = env_setup["tok_good"]
    r = run([cli, "decode", tok], base_env)
    assert r.returncode == 0, r.stderr
    assert "UNVERIFIED header" in r.stdout and "UNVERIFIED claims" in r.stdout
    assert '"alg": "RS256"' in r.stdout and f'"tid": "{et.TENANT}"' in r.stdout
    assert_no_token(r, tok)
    r = run([cli, "decode", "-"], base_env, input_text=env_setup["tok_expired"] + "\n")
    assert r.returncode == 0 and "UNVERIFIED claims" in r.stdout
    r = run([cli, "decode", "not.a.token!"], base_env)
    assert r.returncode == 1 and "cannot decode" in r.stderr and r.stdout == ""
    r = run([cli, "decode"], base_env)
    assert r.returncode == 2


def verify_cmd(cli, env_setup, *extra):
    return [cli, "verify", "--tenant", et.TENANT, "--audience", et.AUD_URI,
            "--audience", et.AUD_GUID, "--authority", env_setup["authority"], *extra]


def test_cli_verify(cli, base_env, env_setup):
    r = run(verify_cmd(cli, env_setup, env_setup["tok_good"]), base_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("valid\n") and f'"tid": "{et.TENANT}"' in r.stdout
    assert_no_token(r, env_setup["tok_good"])
    r = run(verify_cmd(cli, env_setup, "-"), base_env, input_text=env_setup["tok_good"])
    assert r.returncode == 0 and r.stdout.startswith("valid\n")
    for name, reason in (("tok_expired", "token expired"),
                         ("tok_wrong_aud", "token audience not accepted"),
                         ("tok_bad_sig", "invalid signature"),
                         ("tok_es256", "token algorithm not allowed")):
        r = run(verify_cmd(cli, env_setup, env_setup[name]), base_env)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert r.stdout == f"invalid: {reason}\n", name
        assert_no_token(r, env_setup[name])
    r = run(verify_cmd(cli, env_setup, "--alg", "ES256", env_setup["tok_es256"]), base_env)
    assert r.returncode == 0 and r.stdout.startswith("valid\n"), r.stdout + r.stderr


def test_cli_verify_errors(cli, base_env, env_setup):
    r = run([cli, "verify", "--tenant", et.TENANT, "--audience", et.AUD_GUID,
             "--authority", env_setup["closed_url"], env_setup["tok_good"]], base_env)
    assert r.returncode == 2 and "keys unavailable" in r.stderr and r.stdout == ""
    r = run(verify_cmd(cli, env_setup, "--alg", "HS256", env_setup["tok_good"]), base_env)
    assert r.returncode == 2 and "unsupported algorithm" in r.stderr
    r = run([cli, "verify", "--audience", et.AUD_GUID, env_setup["tok_good"]], base_env)
    assert r.returncode == 2 and "--tenant" in r.stderr
    r = run(verify_cmd(cli, env_setup, "--bogus", "x", env_setup["tok_good"]), base_env)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr


def test_cli_acquire(cli, base_env, fake_id):
    fake_id.reset(counters=True, scripts=True, settings=False, registrations=False, arc=False)
    imds = fake_id.url("imds")
    resource = "https://cli.example/.default"
    cmd = [cli, "acquire", "--resource", resource, "--source", "imds", "--endpoint", imds]
    r = run(cmd, base_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^expires_on: \d+ \(", r.stdout, re.M)
    assert '"fake_source": "imds"' in r.stdout and '"aud": "https://cli.example"' in r.stdout
    assert "UNVERIFIED" in r.stdout
    assert_no_token(r)
    log = fake_id.requests_log("imds")
    assert log and log[-1]["query"]["resource"] == "https://cli.example"

    r = run(cmd + ["--client-id", fake_id.identity("user1")["client_id"]], base_env)
    assert r.returncode == 0 and '"fake_identity": "user1"' in r.stdout
    assert_no_token(r)

    r = run(cmd + ["--print-token"], base_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and JWT_RE.match(lines[0])
    claims = ic.verify_token(lines[0], fake_id.jwks())
    assert claims["fake_source"] == "imds" and claims["aud"] == "https://cli.example"
    assert not JWT_RE.search(r.stderr)


def test_cli_acquire_errors(cli, base_env, fake_id, env_setup):
    fake_id.script("imds", [{"status": 400, "body": {"error": "invalid_resource",
                                                     "error_description": "AADSTS500011: nope"}}])
    r = run([cli, "acquire", "--resource", "https://cli-error.example", "--source", "imds",
             "--endpoint", fake_id.url("imds")], base_env)
    assert r.returncode == 1 and "invalid_resource" in r.stderr and r.stdout == ""
    r = run([cli, "acquire", "--resource", "api://orders-api", "--tenant", et.TENANT,
             "--client-id", ic.SECRET_APP, "--secret-file", env_setup["bad_secret_file"],
             "--authority", fake_id.url("entra_authority")], base_env)
    assert r.returncode == 1 and "invalid_client" in r.stderr
    assert env_setup["bad_secret"] not in r.stdout + r.stderr
    r = run([cli, "acquire", "--resource", "api://orders-api", "--tenant", et.TENANT,
             "--client-id", ic.SECRET_APP, "--secret-file", env_setup["secret_file"],
             "--authority", fake_id.url("entra_authority")], base_env)
    assert r.returncode == 0 and '"fake_identity": "secret-app"' in r.stdout
    assert_no_token(r)
    with open(env_setup["secret_file"]) as f:
        assert f.read().strip() not in r.stdout + r.stderr
    r = run([cli, "acquire", "--source", "imds"], base_env)
    assert r.returncode == 2 and "--resource" in r.stderr
    r = run([cli, "acquire", "--resource", "r", "--source", "imds", "--client-id", "a",
             "--object-id", "b"], base_env)
    assert r.returncode == 2 and "exactly one selector" in r.stderr


def test_cli_is_executable():
    mode = os.stat(CLI).st_mode
    assert mode & stat.S_IXUSR
    with open(CLI) as f:
        assert f.readline().strip() == "#!/usr/bin/env lua5.4"
