#!/usr/bin/python3
"""Throughput, latency and memory of mod_entra against a no-auth floor and two peers.

Also its two other jobs, each against its own floor: attaching a managed-identity token to
proxied requests (EntraProxyToken, against the same proxy with a static Authorization header,
and a burst of cold concurrent requests) and Lua authorization rules (against the equivalent
Require entra-role).

Run from the repository root after `make`:

  /usr/bin/python3 t/bench/bench.py            full run: ~10 s per case, under 5 minutes
  /usr/bin/python3 t/bench/bench.py --smoke    ~2 s per case, for CI (checks the harness works)

Options: --duration S (10; smoke 2), --warmup S (1), --connections N (16),
--threads-per-child N (20), --cases a,b,... (a subset, by the names in the first column; the
floor always runs, and so does a case's own floor: proxy-floor for proxy-entra, entra-role
for lua-rule), --no-second-run, --enable-mmap, --json FILE (results as JSON), --keep
(keep the temporary directory), --module PATH (default mod_entra/.libs/mod_entra.so, or
$ENTRA_MODULE). Exit status 1 when a case failed (a server that could not be started or
pre-checked, or an unexpected response status); a missed target is reported, not an error.

What it does
------------
Everything listens on 127.0.0.1 and lives in a temporary directory. Three local fakes of
Entra ID's discovery and JWKS (t/fakes/fake_entra.py) share one key set, which also signs
the tokens (t/lib/entra_tokens.py): one for mod_entra and mod_oauth2, one serving TLS with a
throwaway CA (t/lib/tls_certs.py) because mod_auth_openidc refuses a plain-http JWKS URI, and
one that only the unknown-kid case's server talks to, so that its fetch counts are that
server's alone.

The module is copied into that directory first and every case loads the copy, so a rebuild of
the tree during the run cannot mix two builds; the header names its digest, build time and
the tree's commit. Every case gets its own freshly started apache2 (Debian's
/usr/sbin/apache2; lua-rule shares entra-role's) with the same settings (but proxy-cold and
the proxies' backend, below): mpm_event, StartServers 1, ServerLimit 1 (one child),
ThreadsPerChild 20, KeepAlive with unlimited requests, no access log, LogLevel warn
(mod_entra logs rejections at info: not measured here), EnableMMAP Off. Every case requests
the same small static file, /orders/42.json, protected (or not, or proxied) by a <Location
/orders/> (the Lua pair: copies at /role/orders/ and /lua/orders/).

Why these two settings. ThreadsPerChild exceeds the connection count: when every worker of
mpm_event is busy it closes idle keep-alive connections, and the run would measure
reconnects (wrk's read errors). EnableMMAP Off: with httpd's default (On) every response of
the 67-byte file mmaps and munmaps it, and on a virtual machine the munmap of a multi-threaded
process costs TLB-shootdown interrupts that made the floor ~2x slower than with Off (measured
on the 2-core development VM): a floor that slow hides the cost of authentication in every
ratio. --enable-mmap restores the default for comparison.

The load is wrk with one thread and a fixed number of connections (16) for a bounded time,
after a short warm-up on the same server. The Lua script t/bench/bench.lua builds every
request the same way in every case (the floor too carries the valid token, ignored there),
counts the status of every response, and reports p50/p99 latency from wrk's histogram.

Cases
-----
  floor          no authentication at all: the ceiling every ratio is taken against
  openidc        Debian's mod_auth_openidc as an OAuth 2.0 resource server (AuthType
                 oauth20, OIDCOAuthVerifyJwksUri on the fake's JWKS), with Require claim
                 on iss, tid, aud and roles:Orders.Read; one valid RS256 token repeated
  oauth2         Debian's mod_oauth2 (AuthType oauth2, OAuth2TokenVerify jwks_uri), with
                 Require oauth2_claim on the same four claims; one valid RS256 token repeated
  entra-cached   mod_entra, one valid RS256 token repeated (cache hit after the first)
  entra-rs256    mod_entra, a different valid RS256 token on every request
  entra-es256    mod_entra, a different valid ES256 token on every request
  entra-garbage  mod_entra, a token that is not a JWS (3 random base64url segments)
  entra-badsig   mod_entra, one token with a bad signature, repeated
  entra-badsig-fresh  mod_entra, a different bad signature on every request
  entra-expired  mod_entra, one expired (otherwise valid) token, repeated
  entra-unknown-kid   mod_entra, every request a token whose header names a random kid;
                 the fake's JWKS/discovery fetch counters are reset just before the flood
                 (after the server has its keys) and read after it
  floor-again    the floor once more at the end (both floors make the ratios' denominator)

Lua rules (after entra-cached), one server with two routes that differ only in their Require
line, serving the same file at paths of the same depth; the same valid token (cached) on both:
  entra-role     <Location /role/orders/>: Require entra-role Orders.Read, as entra-cached
  lua-rule       <Location /lua/orders/>: EntraLuaRules t/bench/rules.lua (a copy in the run's
                 directory) and Require entra-lua orders: what a typical rule does (GET needs
                 Orders.Read, anything else Orders.Write). Measured right after entra-role on
                 the same server and child; its own floor is entra-role
The pre-check asks both routes for the token matrix below (the "no role" token, which has
Orders.Write only, must be refused on both: on the Lua route, by the rule).

Outbound (before entra-unknown-kid). A fake managed-identity endpoint (IMDS of
t/fakes/fake_identity.py) and a loopback backend: an httpd like the floor's (2 children of
256 threads, for the burst) serving the same file, which echoes the Authorization it received
in a response header only when the request asks for it (X-Bench-Echo, sent by the pre-checks
and the burst, never by wrk). Both front servers load mod_proxy, mod_proxy_http and
mod_headers and forward <Location /orders/> with ProxyPass to the backend's /orders/
(connections to it kept alive); wrk sends the valid token as everywhere, which neither
forwards:
  proxy-floor    RequestHeader set Authorization "Bearer <static token>": a token the fake
                 issued for the same resource at start, so both forward the same bytes; no
                 mod_entra in this server
  proxy-entra    EntraIdentity mi managed source=imds endpoint=<the fake's IMDS URL> and
                 EntraProxyToken api://bench-api identity=mi: the token is fetched at start
                 and cached; its own floor is proxy-floor; IMDS token requests during the
                 measured run are counted (a note if any)
  proxy-cold     a fresh server like proxy-entra but with 4 children of 128 threads
                 (StartServers = ServerLimit 4) and EntraTokenTimeout 30. The fake holds its
                 first IMDS request (slow:8: the children's start-up warm-up) while 500 threads
                 each open a connection, meet at a barrier and send one request together; once
                 all are sent the fake is released. Reported: statuses, latency from sending
                 (it includes the held fetch: not comparable with wrk's), how many children
                 served them (an access log with %P, on this server only), the tokens the
                 backend got, and the fake's IMDS token request count: the goal is exactly 1
                 per (identity, resource)
The pre-checks of proxy-floor and proxy-entra send a request with and without a client token:
both must get 200 and the file, and the backend must receive Authorization: Bearer <a JWT the
fake issued for api://bench-api, signature verified with its JWKS>, never the client's token.

"Fresh" tokens are pre-minted and every request of a run takes a token no request of that
case has used before (each run gets a new slice of the pool; the pool is topped up from the
rate seen in the warm-up, with a margin). If a run outruns its slice it wraps, and a note
says how many requests reused a token (those may have been cache hits). Minting RS256 is the
slow part (~0.3 ms per token per core, 2 processes): each algorithm's pool may take at most
50 s of minting (20 s with --smoke), and a slice that would overrun that is made smaller,
with a note. The random-kid and fresh bad-signature tokens are generated inside wrk on every
request (bench.lua); the pre-check sends one built the same way.

Checks before measuring: every server (but the proxies: see Outbound above) is first asked,
with Python requests, for a matrix of tokens (valid RS256, valid ES256 for mod_entra only,
garbage, bad signature, expired, wrong audience, wrong issuer, no role, no token): the valid
token must get 200 and every bad one must not, and the case's own token must get the status
the case expects (garbage, bad signature and expired must be exactly 401). A server that
fails this is not measured (a benchmark of a misconfigured peer is worthless); the case is
reported FAIL and the script exits 1. During the run every response status is counted; any
status other than the expected one fails the case too (so does a warm-up status). A peer
whose Debian package is not installed is reported "skipped: <package> not installed". The
cold burst fails on any status other than 200, a 200 without the file, or a forwarded token
that does not verify. Notes also report wrk socket errors, a server error log that grew
during the run, and key fetches (or IMDS token requests) a fake saw during a measured run.

Columns
-------
  req/s      completed requests / wrk's run time
  p50, p99   latency percentiles from wrk's histogram, in milliseconds
  statuses   count of each response status during the measured run
  RSS MiB    VmRSS of the (only) httpd child after the run, MiB (/proc/<pid>/status). It
             includes shared pages the child touched (e.g. mod_entra's socache), so the
             memory section also shows RssAnon (private heap), which is where a leak shows.
  ratio      req/s / the floor's req/s: the mean of the two floor runs (first and last
             case), so that a drift of the machine during the run hits every case alike
  own ratio  for a case with its own floor: req/s / that case's req/s, measured just before
             it (proxy-entra of proxy-floor, lua-rule of entra-role)
  target     the goal of the issue for that case, against its own ratio if it has one, else
             against ratio; "ok" or "MISS" against it. For the unknown-kid flood: JWKS
             fetches per JWKS URI (Entra has a v2 and a v1 key set URI; one key refresh of
             mod_entra fetches both) at most 1 per 60 s. For proxy-cold: IMDS token requests
             during the burst, exactly 1
  proxy-cold has no req/s (a burst, not a rate), its p50/p99 are the burst's and its RSS is
  its largest child's.

Memory: the cached and fresh-RS256 cases are run a second time on the same server (fresh
tokens again for the latter); the memory table shows the child's RSS after the warm-up and
after each run, and each child's RSS against the floor child's. lua-rule's child is
entra-role's, after both ran; proxy-cold shows its largest child after the burst (its
children have 128 threads, not 20), and the burst's summary line lists all four.

Unknown kid: its server is started before every other case, so that by its turn its
start-up key fetch is more than EntraKeyRefetchInterval (60 s) old (a full run waits out
what is left; --smoke does not wait and says so). The flood's first unknown kid may then
legitimately cause one refetch, and the count shows whether the limit holds: the fake's
counters are reset just before the flood and read after it, with the time of each fetch.

Peers as configured: mod_auth_openidc validates a JWT access token locally on every request
(it caches the JWKS, not the validation result) and checks only signature and exp itself;
mod_oauth2 caches validation results (its default shm cache); neither checks iss or aud on
its own here, hence the Require rules. Both pass claims to the backend by default, as
mod_entra does here with EntraPassClaims oid azp roles.

Numbers are only comparable within one run of this script on an otherwise idle machine:
wrk and httpd share the same two cores, and anything else running shows up as noise (the
floor-again row shows how much).
"""

import argparse
import collections
import concurrent.futures
import ctypes
import datetime
import hashlib
import http.client
import json
import math
import multiprocessing
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "t", "lib"))
import entra_tokens as et  # noqa: E402
import identity_client  # noqa: E402
import procs  # noqa: E402
import tls_certs  # noqa: E402

APACHE = "/usr/sbin/apache2"
MODDIR = "/usr/lib/apache2/modules"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
LUA = os.path.join(HERE, "bench.lua")
RULES = os.path.join(HERE, "rules.lua")
FAKE = os.path.join(ROOT, "t", "fakes", "fake_entra.py")
DEFAULT_MODULE = os.environ.get("ENTRA_MODULE") or os.path.join(ROOT, "mod_entra", ".libs", "mod_entra.so")

TENANT = et.TENANT
AUD_URI = et.AUD_URI
AUD_GUID = et.AUD_GUID
ROLE = "Orders.Read"
PATH = "/orders/42.json"
BODY = '{"id": 42, "item": "widget", "quantity": 3, "status": "shipped"}\n'

PEERS = {
    "openidc": ("libapache2-mod-auth-openidc", "auth_openidc_module", f"{MODDIR}/mod_auth_openidc.so"),
    "oauth2": ("libapache2-mod-oauth2", "oauth2_module", f"{MODDIR}/mod_oauth2.so"),
}

# name, server kind, token kind, expected status, target ratio (None: no ratio goal), own floor
# (the case the target ratio divides by; None: the mean of the two no-auth floor runs), label
CASES = [
    ("floor", "floor", "valid", 200, None, None, "no auth (floor)"),
    ("openidc", "openidc", "valid", 200, None, None, "mod_auth_openidc, same RS256 token"),
    ("oauth2", "oauth2", "valid", 200, None, None, "mod_oauth2, same RS256 token"),
    ("entra-cached", "entra", "valid", 200, 0.95, None, "mod_entra, same RS256 token (cached)"),
    ("entra-role", "entra-lua", "valid", 200, None, None, "mod_entra, Require entra-role, same token (cached)"),
    ("lua-rule", "entra-lua", "valid", 200, 0.95, "entra-role", "mod_entra, Require entra-lua, same token"),
    ("entra-rs256", "entra", "pool:RS256", 200, 0.85, None, "mod_entra, fresh RS256 token each request"),
    ("entra-es256", "entra", "pool:ES256", 200, 0.70, None, "mod_entra, fresh ES256 token each request"),
    ("floor-pool", "floor", "reuse:RS256", 200, None, None,
     "no auth, a new RS256 token on every request (the client's own cost of fresh tokens)"),
    ("entra-garbage", "entra", "garbage", 401, 0.90, None, "mod_entra, garbage token"),
    ("entra-badsig", "entra", "badsig", 401, 0.90, None, "mod_entra, bad signature, same token"),
    ("entra-badsig-fresh", "entra", "badsig-fresh", 401, 0.90, None, "mod_entra, new bad signature each request"),
    ("entra-expired", "entra", "expired", 401, 0.90, None, "mod_entra, expired token"),
    ("proxy-floor", "proxy-floor", "valid", 200, None, None, "mod_proxy, static Authorization (RequestHeader)"),
    ("proxy-entra", "proxy-entra", "valid", 200, 0.97, "proxy-floor", "mod_proxy, EntraProxyToken (cached)"),
    ("proxy-cold", "proxy-cold", "cold", 200, None, None, "EntraProxyToken, 500 concurrent cold requests"),
    ("entra-unknown-kid", "entra", "randkid", 401, None, None, "mod_entra, random unknown kid each request"),
    ("floor-again", "floor", "valid", 200, None, None, "no auth (floor), repeated at the end"),
]
# lua-rule runs on entra-role's server, right after it (same child, same cached token).
SHARED_SERVER = {"lua-rule": "entra-role"}
# Both routes of that server serve the same file at paths of the same depth.
CASE_PATHS = {"entra-role": "/role/orders/42.json", "lua-rule": "/lua/orders/42.json"}
MEMORY_CASES = ("entra-cached", "entra-rs256")
# Cases whose client sends a new token on every request, and the floor run with the same
# client work (wrk builds and sends a new 1.2 KB header each time, which costs it more than
# resending one): printed as an extra ratio, the targets stay against the plain floor.
SAME_CLIENT_FLOOR = {"entra-rs256": "floor-pool", "entra-es256": "floor-pool",
                     "entra-badsig-fresh": "floor-pool"}
MAX_POOL = 600_000          # tokens per algorithm, whatever the rate
WARMUP_SLICE_MAX = 8000     # fresh tokens for one warm-up
RUN_SLICE_MAX = 150_000     # and for one measured run (minting is ~0.3 ms per RS256 token)
KID_FETCH_GOAL_PER_60S = 1
REFETCH_INTERVAL = 60       # EntraKeyRefetchInterval default
TLS = None                  # throwaway CA + server certificate for the https fake
MIN_NEW_TOKENS = 5000       # a capped slice still gets this many new tokens
MINT_BUDGET = 40.0          # seconds of minting per algorithm (--smoke: 20): keeps a run < 5 min
RESOURCE = "api://bench-api"    # what EntraProxyToken asks the fake IMDS for
COLD_REQUESTS = 500         # the cold burst: concurrent requests, one connection each
COLD_HOLD = 8               # the fake holds the first IMDS request at most this long (< EntraTokenTimeout)
COLD_FETCH_GOAL = 1         # IMDS token requests per (identity, resource) for the whole burst
COLD_MPM = {"StartServers": 4, "ServerLimit": 4, "ThreadLimit": 128, "ThreadsPerChild": 128,
            "MaxRequestWorkers": 512, "MinSpareThreads": 128, "MaxSpareThreads": 512}
BACKEND_MPM = {"StartServers": 2, "ServerLimit": 2, "ThreadLimit": 256, "ThreadsPerChild": 256,
               "MaxRequestWorkers": 512, "MinSpareThreads": 1, "MaxSpareThreads": 512}
# Variables that would send the module (or curl) elsewhere than the fakes.
CLEAN_ENV = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
             "IDENTITY_SERVER_THUMBPRINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_AUTHORITY_HOST",
             "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "http_proxy", "HTTP_PROXY",
             "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


# ------------------------------------------------------------------------------- helpers

def log(msg=""):
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM when this script dies (no stray servers)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


proc_status = procs._status  # /proc/<pid>/status as a dict (one reader for tests and bench)


def kib(status: dict, key: str) -> int | None:
    v = status.get(key)
    return int(v.split()[0]) if v else None


def children_of(ppid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == ppid:
            kids.append(int(d))
    return kids


def environment_line(args) -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    httpd = subprocess.run([APACHE, "-v"], capture_output=True, text=True).stdout.splitlines()
    httpd_v = httpd[0].split(":", 1)[1].strip() if httpd else "unknown"
    wrk_v = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.split("Copyright")[0].strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    cmd = shlex.join([sys.executable] + sys.argv)
    return [
        f"environment: cpu {cpu}; {os.cpu_count()} cores; kernel {platform.release()}; "
        f"httpd {httpd_v}; {wrk_v}; {now}",
        f"command: cd {shlex.quote(os.getcwd())} && {cmd}",
        f"load: wrk -t1 -c{args.connections} -d{fmt_s(args.duration)}s (warm-up {fmt_s(args.warmup)}s) "
        f"-s t/bench/bench.lua; httpd mpm_event StartServers 1 ServerLimit 1 "
        f"ThreadsPerChild {args.threads_per_child}, EnableMMAP {'On' if args.enable_mmap else 'Off'}",
        module_line(args.module_source, args.module),
    ]


def module_line(path: str, copy: str) -> str:
    """Which build of mod_entra was measured (the copy every case loads): digest, build time,
    the tree's commit."""
    with open(copy, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    built = datetime.datetime.fromtimestamp(os.path.getmtime(copy), datetime.timezone.utc)
    git = ["git", "-C", ROOT]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--", "mod_entra"], capture_output=True,
                           text=True).stdout.strip()
    tree = f"tree at {head}" + (" with uncommitted changes in mod_entra/" if dirty else "") if head else "no git"
    copied = ", copied for the run" if copy != path else ""
    return f"module: {path}{copied} (sha256 {digest}..., built {built:%Y-%m-%d %H:%M:%S} UTC; {tree})"


def fmt_s(x: float) -> str:
    return f"{x:g}"


# ------------------------------------------------------------------------------- tokens

_STORE = None


def _mint_chunk(role: str, alg: str, n: int) -> str:
    key = _STORE[role]
    return "\n".join(et.mint(key, et.v2_claims(TENANT, AUD_GUID, lifetime=7200), alg=alg) for _ in range(n))


class Pool:
    """Pre-minted valid tokens of one algorithm; every slice handed out is new."""

    def __init__(self, workdir: str, role: str, alg: str):
        self.workdir, self.role, self.alg = workdir, role, alg
        self.tokens: list[str] = []
        self.used = 0
        self.n_files = 0
        self.mint_seconds = 0.0

    def _mint(self, n: int):
        log(f"    (minting {n} {self.alg} tokens)")
        t0 = time.monotonic()
        workers = max(1, min(2, os.cpu_count() or 1))
        chunks = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            for text in ex.map(_mint_chunk, [self.role] * workers, [self.alg] * workers, chunks):
                if text:
                    self.tokens.extend(text.split("\n"))
        self.mint_seconds += time.monotonic() - t0

    def reuse(self, n: int) -> str:
        """A file of up to n tokens already minted (minting some when there are none yet);
        unlike take(), they may have been handed out before and stay available."""
        if len(self.tokens) < min(n, MIN_NEW_TOKENS):
            self._mint(min(n, MIN_NEW_TOKENS) - len(self.tokens))
        self.n_files += 1
        path = os.path.join(self.workdir, f"reuse-{self.alg}-{self.n_files}.txt")
        with open(path, "w") as f:
            f.write("\n".join(self.tokens[:n]) + "\n")
        return path

    def take(self, n: int) -> tuple[str, int, bool]:
        """Write the next n unused tokens to a file; return (path, count, capped). The count is
        smaller than n when minting them all would overrun the run's minting budget."""
        n = max(1, min(n, MAX_POOL - self.used))
        capped = False
        missing = self.used + n - len(self.tokens)
        if missing > 0 and self.mint_seconds > 0:
            rate = (len(self.tokens)) / self.mint_seconds          # tokens per second so far
            affordable = int(max(0.0, MINT_BUDGET - self.mint_seconds) * rate)
            if missing > affordable:
                capped = True
                missing = max(affordable, min(missing, MIN_NEW_TOKENS))
                n = len(self.tokens) - self.used + missing
        if missing > 0:
            self._mint(missing)
        part = self.tokens[self.used:self.used + n]
        self.used += n
        self.n_files += 1
        path = os.path.join(self.workdir, f"pool-{self.alg}-{self.n_files}.txt")
        with open(path, "w") as f:
            f.write("\n".join(part) + "\n")
        return path, len(part), capped


class Tokens:
    def __init__(self, workdir: str, keys_dir: str):
        global _STORE
        self.dir = workdir
        self.store = et.KeyStore.load(keys_dir)
        _STORE = self.store
        rsa1, ec256 = self.store["rsa1"], self.store["ec256"]
        now = int(time.time())
        self.valid = et.mint(rsa1, et.v2_claims(TENANT, AUD_GUID, lifetime=7200))
        other = et.mint(rsa1, et.v2_claims(TENANT, AUD_GUID, lifetime=7200))
        h, c, _ = self.valid.split(".")
        self.badsig = f"{h}.{c}.{other.split('.')[2]}"
        self.expired = et.mint(rsa1, et.v2_claims(TENANT, AUD_GUID, now=now - 7200, lifetime=3600))
        self.garbage = ".".join(et.b64url(secrets.token_bytes(n)) for n in (60, 700, 256))
        self.matrix = {
            "valid": (self.valid, True),
            "valid ES256": (et.mint(ec256, et.v2_claims(TENANT, AUD_GUID), alg="ES256"), True),
            "garbage": (self.garbage, False),
            "bad signature": (self.badsig, False),
            "expired": (self.expired, False),
            "wrong audience": (et.mint(rsa1, et.v2_claims(TENANT, "api://someone-else")), False),
            "wrong issuer": (et.mint(rsa1, et.v2_claims(TENANT, AUD_GUID, iss=et.v2_issuer(et.OTHER_TENANT))), False),
            "no role": (et.mint(rsa1, et.v2_claims(TENANT, AUD_GUID, roles=["Orders.Write"])), False),
            "no token": (None, False),
        }
        self.pools = {"RS256": Pool(workdir, "rsa1", "RS256"), "ES256": Pool(workdir, "ec256", "ES256")}
        self.randkid_file = self._randkid_spec()

    def _randkid_spec(self) -> str:
        """bench.lua's randkid mode: header = prefix + 32 random b64 chars (24 hex) + suffix."""
        for pad in range(3):
            start = '{"typ":"JWT","alg":"RS256","kid":"' + "k" * pad
            if len(start) % 3 == 0:
                break
        head = et.b64url(start.encode())
        tail = et.b64url(b'"}')
        _, c, s = self.valid.split(".")
        path = os.path.join(self.dir, "randkid.txt")
        with open(path, "w") as f:
            f.write(f"{head}\n{tail}\n.{c}.{s}\n")
        # The same construction in Python, for the pre-check.
        self.randkid_example = et.b64url((start + secrets.token_hex(12) + '"}').encode()) + f".{c}.{s}"
        return path

    def write(self, name: str, token: str) -> str:
        path = os.path.join(self.dir, f"token-{name}.txt")
        with open(path, "w") as f:
            f.write(token + "\n")
        return path


# ------------------------------------------------------------------------------- servers

class Fake:
    """One fake Entra ID process (t/fakes/fake_entra.py); all of them share one key directory."""

    def __init__(self, workdir: str, name: str, keys_dir: str, tls: dict | None = None):
        self.name = name
        self.dir = os.path.join(workdir, "fake-" + name)
        os.makedirs(self.dir, exist_ok=True)
        self.keys = keys_dir
        ready = os.path.join(self.dir, "ready.json")
        self.log = open(os.path.join(self.dir, "fake.log"), "ab")
        cmd = [sys.executable, FAKE, "--port", "0", "--ready-file", ready, "--keys-dir", keys_dir,
               "--parent-pid", str(os.getpid()), "--max-lifetime", "1800"]
        if tls:
            cmd += ["--tls-cert", tls["cert"], "--tls-key", tls["key"]]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fake Entra ID did not start; see " + os.path.join(self.dir, "fake.log"))
            time.sleep(0.1)
        with open(ready) as f:
            info = json.load(f)
        self.port = info["port"]
        self.base = info["base_url"]
        self.session = requests.Session()
        self.session.trust_env = False
        if tls:
            self.session.verify = tls["ca"]

    def jwks_uri(self) -> str:
        return f"{self.base}{TENANT}/discovery/v2.0/keys"

    def reset(self):
        self.session.post(self.base + "_control/reset", json={"modes": False}, timeout=10).raise_for_status()

    def stats(self) -> dict:
        r = self.session.get(self.base + "_control/stats", timeout=10)
        r.raise_for_status()
        st = r.json()["totals"]
        return {"jwks": st["jwks_v1"] + st["jwks_v2"], "discovery": st["discovery_v1"] + st["discovery_v2"],
                "jwks_v2": st["jwks_v2"], "jwks_v1": st["jwks_v1"]}

    def key_fetch_times(self) -> list[float]:
        """Wall-clock times of the JWKS fetches the fake remembers (its last 500 requests)."""
        r = self.session.get(self.base + "_control/requests", timeout=10)
        r.raise_for_status()
        return [e["t"] for e in r.json() if (e.get("category") or "").startswith("jwks")]

    def stop(self):
        self.session.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def location_block(kind: str, fake: Fake) -> tuple[str, str, str]:
    """(LoadModule lines, server-level lines, <Location /orders/> body) for one kind of server."""
    iss = et.v2_issuer(TENANT)
    if kind == "floor":
        return "", "", "    Require all granted\n"
    if kind == "entra":
        return (f'LoadModule entra_module "{ARGS.module}"\n',
                f"EntraAuthority {fake.base}\nEntraTenant {TENANT}\nEntraAudience {AUD_URI} {AUD_GUID}\n"
                "EntraAlgorithms RS256 PS256 ES256\n",
                f'    AuthType Entra\n    AuthName "orders"\n    EntraPassClaims oid azp roles\n'
                f"    Require entra-role {ROLE}\n")
    pkg, mod, path = PEERS[kind]
    if kind == "openidc":
        # mod_auth_openidc wants an https JWKS URI: this fake serves TLS with a throwaway CA.
        # Local JWT validation checks signature and exp only: iss/tid/aud/roles are Require claim.
        return (f"LoadModule {mod} {path}\n",
                f"OIDCCryptoPassphrase {secrets.token_hex(16)}\n"
                f"OIDCOAuthVerifyJwksUri {fake.jwks_uri()}\n"
                f"OIDCCABundlePath {TLS['ca']}\n"
                "OIDCOAuthRemoteUserClaim oid\n",
                '    AuthType oauth20\n    AuthName "orders"\n'
                "    <RequireAll>\n"
                f'        Require claim "iss:{iss}"\n'
                f"        Require claim tid:{TENANT}\n"
                "        <RequireAny>\n"
                f'            Require claim "aud:{AUD_URI}"\n'
                f"            Require claim aud:{AUD_GUID}\n"
                "        </RequireAny>\n"
                f"        Require claim roles:{ROLE}\n"
                "    </RequireAll>\n")
    if kind == "oauth2":
        # verify.iss=required would fail every token (a jwks_uri verifier has no issuer to
        # compare with): iss/tid/aud/roles are Require oauth2_claim.
        return (f"LoadModule {mod} {path}\n", "",
                '    AuthType oauth2\n    AuthName "orders"\n'
                f"    OAuth2TokenVerify jwks_uri {fake.jwks_uri()} verify.exp=required\n"
                "    <RequireAll>\n"
                f'        Require oauth2_claim "iss:{iss}"\n'
                f"        Require oauth2_claim tid:{TENANT}\n"
                "        <RequireAny>\n"
                f'            Require oauth2_claim "aud:{AUD_URI}"\n'
                f"            Require oauth2_claim aud:{AUD_GUID}\n"
                "        </RequireAny>\n"
                f"        Require oauth2_claim roles:{ROLE}\n"
                "    </RequireAll>\n")
    raise ValueError(kind)


def server_config(kind: str, fake: "Fake | None") -> tuple[str, str, str]:
    """(LoadModule lines, server-level lines, <Location> sections) for one kind of server."""
    if kind in ("floor", "entra", "openidc", "oauth2"):
        loads, server, loc = location_block(kind, fake)
        return loads, server, f"<Location /orders/>\n{loc}</Location>\n"
    if kind == "entra-lua":
        # Two routes, the same but for the Require line: the rule file is a copy in the run's
        # directory (httpd's user reads it).
        loads, server, loc = location_block("entra", fake)
        lua = loc.replace(f"    Require entra-role {ROLE}\n",
                          f'    EntraLuaRules "{ARGS.rules}"\n    Require entra-lua orders\n')
        assert lua != loc
        return loads, server, (f"<Location /role/orders/>\n{loc}</Location>\n"
                               f"<Location /lua/orders/>\n{lua}</Location>\n")
    mods = "".join(f"LoadModule {m}_module {MODDIR}/mod_{m}.so\n" for m in ("headers", "proxy", "proxy_http"))
    if kind == "backend":
        # The proxied cases' backend: the static file, and (only when asked, by the pre-checks
        # and the cold burst) the Authorization it received, echoed in a response header.
        return mods, "", ("<Location /orders/>\n    Require all granted\n"
                          '    Header set X-Bench-Authorization "expr=%{req:Authorization}" '
                          '"expr=-n %{req:X-Bench-Echo}"\n</Location>\n')
    out = OUTBOUND
    proxy = f"    ProxyPass http://127.0.0.1:{out.backend.port}/orders/\n"
    if kind == "proxy-floor":
        return mods, "", (f"<Location /orders/>\n{proxy}"
                          f'    RequestHeader set Authorization "Bearer {out.static_token}"\n</Location>\n')
    if kind in ("proxy-entra", "proxy-cold"):
        server = f"EntraIdentity mi managed source=imds endpoint={out.fake.url('imds')}\n"
        if kind == "proxy-cold":
            server += "EntraTokenTimeout 30\n"
        return (mods + f'LoadModule entra_module "{ARGS.module}"\n', server,
                f"<Location /orders/>\n{proxy}    EntraProxyToken {RESOURCE} identity=mi\n</Location>\n")
    raise ValueError(kind)


class Outbound:
    """What the proxied cases share: the fake managed-identity endpoint (t/fakes/fake_identity.py),
    the loopback backend (an httpd serving the static file) and the floor's static token (one
    the fake issued for the same resource, so both floors forward a token of the same size)."""

    def __init__(self, workdir: str, htdocs: str):
        self.fake = identity_client.FakeIdentity(os.path.join(workdir, "identity"))
        self.backend = None
        try:
            self.fake.start()
            self.backend = Httpd(workdir, "backend", "backend", None, htdocs, mpm=BACKEND_MPM)
            self.backend.start()
            r = self.fake.session.get(self.fake.url("imds"), headers={"Metadata": "true"}, timeout=10,
                                      params={"api-version": "2018-02-01", "resource": RESOURCE})
            r.raise_for_status()
            self.static_token = r.json()["access_token"]
            self.jwks = self.fake.jwks()
        except Exception:
            self.stop()
            raise

    def imds_requests(self) -> int:
        return self.fake.stats()["imds"]["requests"]

    def reset_counters(self):
        self.fake.reset(counters=True, scripts=True, settings=False, registrations=False, arc=False)

    def stop(self):
        if self.backend:
            self.backend.stop()
        if self.fake:
            self.fake.stop()


class Httpd:
    def __init__(self, workdir: str, name: str, kind: str, fake: "Fake | None", htdocs: str,
                 mpm: dict | None = None, access_log: bool = False):
        self.dir = os.path.join(workdir, "httpd-" + name)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.kind = kind
        self.fake = fake
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PATH}"
        self.error_log = os.path.join(self.dir, "error.log")
        self.access_log = os.path.join(self.dir, "access.log") if access_log else None
        tpc = ARGS.threads_per_child
        mpm = mpm or {"StartServers": 1, "ServerLimit": 1, "ThreadLimit": tpc, "ThreadsPerChild": tpc,
                      "MaxRequestWorkers": tpc, "MinSpareThreads": 1, "MaxSpareThreads": tpc}
        self.n_children = mpm["StartServers"]
        loads, server, sections = server_config(kind, fake)
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        mods = "".join(f"LoadModule {m}_module {MODDIR}/mod_{m}.so\n" for m in
                       ("mpm_event", "authn_core", "authz_core", "authz_user", "mime", "socache_shmcb"))
        logs = (f'LogFormat "%P %>s" bench\nCustomLog "{self.access_log}" bench\n' if access_log else "")
        conf = (f'ServerRoot "{self.dir}"\nServerName 127.0.0.1\nListen 127.0.0.1:{self.port}\n'
                f'PidFile "{self.dir}/httpd.pid"\nDefaultRuntimeDir "{self.dir}"\n'
                f'ErrorLog "{self.error_log}"\nLogLevel warn\n{logs}{user}{mods}{loads}'
                + "".join(f"{k} {v}\n" for k, v in mpm.items()) +
                "MaxConnectionsPerChild 0\nKeepAlive On\nMaxKeepAliveRequests 0\nKeepAliveTimeout 30\n"
                f"Timeout 30\nEnableMMAP {'On' if ARGS.enable_mmap else 'Off'}\nTypesConfig /etc/mime.types\n"
                f'DocumentRoot "{htdocs}"\n<Directory "{htdocs}">\n    Options None\n'
                "    AllowOverride None\n    Require all granted\n</Directory>\n"
                f"{server}{sections}")
        self.conf = os.path.join(self.dir, "httpd.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = None
        self.session = requests.Session()
        self.session.trust_env = False
        self.env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}

    def start(self):
        t = subprocess.run([APACHE, "-t", "-f", self.conf], capture_output=True, text=True, timeout=60,
                           env=self.env)
        if t.returncode != 0:
            raise RuntimeError(f"apache2 -t failed for {self.conf}:\n{t.stdout}{t.stderr}")
        self.out = open(os.path.join(self.dir, "stdout.log"), "ab")
        self.proc = subprocess.Popen([APACHE, "-f", self.conf, "-DFOREGROUND"], stdout=self.out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                self.out.close()
                what = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
                raise RuntimeError(f"apache2 died at start ({what}); error log: {self.tail(5).strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"apache2 did not answer within 30 s: {self.tail()}")
            try:
                self.session.get(f"http://127.0.0.1:{self.port}/", timeout=2)
                if len(children_of(self.proc.pid)) == self.n_children:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        return self

    def child(self) -> int:
        kids = children_of(self.proc.pid)
        if len(kids) != 1:
            raise RuntimeError(f"expected one httpd child, found {kids}")
        return kids[0]

    def memory(self) -> dict:
        return self._memory(self.child())

    @staticmethod
    def _memory(pid: int) -> dict:
        st = proc_status(pid)
        out = {"rss_kib": kib(st, "VmRSS"), "anon_kib": kib(st, "RssAnon"), "shmem_kib": kib(st, "RssShmem")}
        roll = {}
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if v.strip().endswith("kB"):
                        roll[k] = int(v.split()[0])
        except OSError:
            pass
        out["pss_kib"] = roll.get("Pss")
        out["private_kib"] = (roll["Private_Clean"] + roll["Private_Dirty"]
                              if "Private_Clean" in roll and "Private_Dirty" in roll else None)
        return out

    def cpu_ticks(self) -> int | None:
        """User + system clock ticks of all children so far (per-request CPU cost)."""
        total = 0
        for pid in children_of(self.proc.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                return None
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        return total

    def memory_all(self) -> dict:
        """{pid: memory} of every child (servers with several)."""
        return {pid: self._memory(pid) for pid in children_of(self.proc.pid)}

    def request(self, path: str, token: str | None, headers: dict | None = None) -> requests.Response:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        return self.session.get(f"http://127.0.0.1:{self.port}{path}", headers=h, timeout=15)

    def get(self, token: str | None, path: str = PATH) -> int:
        return self.request(path, token).status_code

    def log_lines(self) -> int:
        try:
            with open(self.error_log, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def tail(self, n: int = 15) -> str:
        try:
            with open(self.error_log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        self.session.close()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self.proc = None
        self.out.close()


# ------------------------------------------------------------------------------- load

def wrk_results(stdout: str) -> dict:
    """The "BENCH <key> <value>" lines of t/bench/wrkgen.lua's report: {"statuses": {status:
    count}, key: value, ...} (the statuses of all wrk threads added up)."""
    res = {"statuses": {}}
    for line in stdout.splitlines():
        if not line.startswith("BENCH "):
            continue
        _, k, v = line.split(" ", 2)
        if k.startswith("status_"):
            res["statuses"][int(k[7:])] = res["statuses"].get(int(k[7:]), 0) + int(v)
        else:
            res[k] = float(v)
    return res


def run_wrk(url: str, mode: str, file: str, seconds: float) -> dict:
    cmd = [WRK, "-t1", f"-c{ARGS.connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
           "-s", LUA, url, "--", mode, file]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        raise RuntimeError("wrk did not finish in time: " + shlex.join(cmd))
    res = wrk_results(p.stdout)
    res["cmd"] = shlex.join(cmd)
    if p.returncode != 0 or "requests" not in res:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip()[-2000:]}\n{p.stdout[-2000:]}")
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0
    return res


class Case:
    def __init__(self, spec):
        self.name, self.kind, self.token_kind, self.expect, self.target, self.ref, self.label = spec
        self.path = CASE_PATHS.get(self.name, PATH)
        self.result = None      # wrk result of the measured run
        self.second = None      # second run (memory cases)
        self.mem = {}
        self.status = "ok"      # ok | FAIL | skipped
        self.notes: list[str] = []
        self.matrix = ""
        self.kid = None         # unknown-kid: fetches at the fake during the flood
        self.fetches = None     # JWKS/discovery fetches at the fake during the measured run
        self.log_growth = 0
        self.srv = None         # a server started ahead of its turn (unknown-kid)
        self.slices: list[int] = []   # sizes of the fresh-token slices handed to its runs
        self.warm = None        # wrk result of the warm-up
        self.cold = None        # proxy-cold: what the burst saw


def load_source(case: Case, tokens: Tokens, rate_hint: float | None, seconds: float,
                margin: float = 1.0, warmup: bool = False) -> tuple[str, str]:
    """(bench.lua mode, file) for one run of the case; pools hand out new tokens every time.
    A pool slice is rate_hint * seconds * margin tokens: a run that outruns it wraps (and
    says so); minting RS256 costs ~0.3 ms per token, so the margin is not unlimited."""
    tk = case.token_kind
    if tk.startswith("pool:"):
        pool = tokens.pools[tk[5:]]
        need = int(math.ceil((rate_hint or 3000.0) * seconds * margin)) + 500
        need = min(need, WARMUP_SLICE_MAX if warmup else RUN_SLICE_MAX)
        path, n, capped = pool.take(need)
        case.slices.append(n)
        if capped and not warmup:
            case.notes.append(f"the minting budget ({MINT_BUDGET:.0f} s) capped a slice of fresh "
                              f"tokens at {n} instead of {need}")
        return "pool", path
    if tk.startswith("reuse:"):
        # Tokens minted for the fresh cases, cycled (a server without auth cannot cache them):
        # the client does the same work as in those cases without a minting bill of its own.
        return "pool", tokens.pools[tk[6:]].reuse(20000)
    if tk == "randkid":
        return "randkid", tokens.randkid_file
    if tk == "badsig-fresh":
        return "badsig", tokens.write("valid", tokens.valid)
    token = {"valid": tokens.valid, "garbage": tokens.garbage, "badsig": tokens.badsig,
             "expired": tokens.expired}[tk]
    return "fixed", tokens.write(tk, token)


def precheck(case: Case, srv: Httpd, tokens: Tokens) -> bool:
    """The matrix of tokens against the server; False (and notes) if it is misconfigured."""
    ok = True
    if case.kind == "floor":
        code = srv.get(tokens.valid)
        case.matrix = f"valid {code}"
        if code != 200:
            case.notes.append(f"pre-check: floor answered {code}, not 200")
            return False
        return True
    if case.kind.startswith("proxy-"):
        return precheck_proxy(case, srv, tokens)
    seen = []
    for what, (tok, good) in tokens.matrix.items():
        if what == "valid ES256" and not case.kind.startswith("entra"):
            continue       # the peers are not asked to accept ES256
        code = srv.get(tok, case.path)
        seen.append(f"{what} {code}")
        if good and code != 200:
            ok = False
            case.notes.append(f"pre-check: {what} token got {code}, expected 200")
        if not good and code == 200:
            ok = False
            case.notes.append(f"pre-check: {what} token got 200, expected a refusal")
        if what in ("garbage", "bad signature", "expired") and code != 401:
            ok = False
            case.notes.append(f"pre-check: {what} token got {code}, expected 401")
    # The case's own token, built the way bench.lua builds it.
    own = {"valid": tokens.valid, "garbage": tokens.garbage, "badsig": tokens.badsig,
           "expired": tokens.expired, "randkid": tokens.randkid_example}.get(case.token_kind)
    if case.token_kind.startswith("pool:"):
        own = tokens.matrix["valid ES256" if case.token_kind.endswith("ES256") else "valid"][0]
    if case.token_kind == "badsig-fresh":
        h, c, sig = tokens.valid.split(".")
        own = f"{h}.{c}.{et.b64url(secrets.token_bytes(24))}{sig[32:]}"
    code = srv.get(own, case.path)
    seen.append(f"case token {code}")
    case.matrix = ", ".join(seen)
    if code != case.expect:
        ok = False
        case.notes.append(f"pre-check: the case's own token got {code}, expected {case.expect}")
    return ok


def forwarded_token(resp: requests.Response) -> str:
    """The bearer token the backend received, from its echo header (pre-checks, cold burst)."""
    value = resp.headers.get("X-Bench-Authorization") or ""
    scheme, _, tok = value.partition(" ")
    if scheme != "Bearer" or tok.count(".") != 2:
        raise ValueError(f"the backend got Authorization {value[:40]!r}")
    return tok


def check_forwarded(tok: str) -> str:
    """Verify a forwarded token against the fake identity endpoint's keys; a short description."""
    claims = identity_client.verify_token(tok, OUTBOUND.jwks)
    if claims.get("aud") != RESOURCE or claims.get("fake_source") != "imds":
        raise ValueError(f"the backend got a token for aud {claims.get('aud')!r} from "
                         f"{claims.get('fake_source')!r}, expected {RESOURCE!r} from imds")
    return f"aud {claims['aud']}, {claims.get('fake_identity')} via {claims['fake_source']}"


def precheck_proxy(case: Case, srv: Httpd, tokens: Tokens) -> bool:
    """Proxied cases: with and without a client token the request gets 200 and the file, and the
    backend receives Authorization: Bearer <JWT issued by the fake for RESOURCE, signature
    verified> (proxy-floor: the static one; proxy-entra: never the client's token)."""
    seen = []
    try:
        for what, tok in (("valid", tokens.valid), ("no token", None)):
            r = srv.request(case.path, tok, {"X-Bench-Echo": "1"})
            seen.append(f"{what} {r.status_code}")
            if r.status_code != 200 or r.text != BODY:
                case.notes.append(f"pre-check: {what} got {r.status_code}, expected 200 and the file")
                return False
            fwd = forwarded_token(r)
            desc = check_forwarded(fwd)
            if fwd == tokens.valid:
                raise ValueError("the client's token was forwarded")
            if case.kind == "proxy-floor" and fwd != OUTBOUND.static_token:
                raise ValueError("the backend did not get the static token")
        seen.append(f"backend got Bearer JWT ({desc})")
        if case.kind == "proxy-entra":
            seen.append(f"IMDS token requests since start {OUTBOUND.imds_requests()}")
        return True
    except (ValueError, KeyError, requests.RequestException) as exc:
        case.notes.append(f"pre-check: {exc}")
        return False
    except Exception as exc:   # cryptography's InvalidSignature has no message
        case.notes.append(f"pre-check: the forwarded token does not verify ({type(exc).__name__} {exc})")
        return False
    finally:
        case.matrix = ", ".join(seen)


def adopt_server(case: Case, srv: Httpd, tokens: Tokens) -> Httpd | None:
    """Pre-check a server handed over by the case before (SHARED_SERVER) for this case's route."""
    try:
        ok = precheck(case, srv, tokens)
    except Exception as exc:
        ok = False
        case.notes.append(f"error: {exc}")
    log(f"  {case.name}: pre-check (on {SHARED_SERVER[case.name]}'s server) {'ok' if ok else 'FAILED'}: "
        f"{case.matrix}")
    if not ok:
        case.status = "FAIL"
        log(f"  {case.name}: not measured: " + "; ".join(case.notes))
        srv.stop()
        return None
    return srv


def start_server(case: Case, fake: Fake, tokens: Tokens, htdocs: str) -> Httpd | None:
    """Start and pre-check the case's server; None (case marked) if it cannot be measured."""
    if case.kind in PEERS:
        pkg, _, path = PEERS[case.kind]
        if not os.path.exists(path):
            case.status = "skipped"
            case.notes.append(f"skipped: {pkg} not installed")
            log(f"  {case.name}: skipped: {pkg} not installed")
            return None
    srv = None
    try:
        if case.kind.startswith("proxy-"):
            OUTBOUND.reset_counters()    # IMDS requests since this server started
        srv = Httpd(WORKDIR, case.name, case.kind, fake, htdocs)
        srv.start()
        ok = precheck(case, srv, tokens)
    except Exception as exc:
        if srv:
            srv.stop()
        case.status = "FAIL"
        case.notes.append(f"error: {exc}")
        log(f"  {case.name}: FAIL: {exc}")
        return None
    if case.kind != "floor":
        log(f"  {case.name}: pre-check {'ok' if ok else 'FAILED'}: {case.matrix}")
    if not ok:
        case.status = "FAIL"
        log(f"  {case.name}: not measured: " + "; ".join(case.notes))
        tail = srv.tail(5).strip()
        if tail:
            log("    error log: " + tail.replace("\n", "\n    "))
        srv.stop()
        return None
    return srv


def wait_out_refetch_interval(case: Case, fake: Fake):
    """Start the flood at least REFETCH_INTERVAL after the server's last key fetch, so that the
    first unknown kid may legitimately cause one refetch and the count shows the limit."""
    times = fake.key_fetch_times()
    last = max(times) if times else time.time()
    wait = last + REFETCH_INTERVAL + 1 - time.time()
    if wait > 0:
        log(f"  {case.name}: waiting {wait:.0f} s: the flood starts {REFETCH_INTERVAL} s after the "
            "server's last key fetch")
        time.sleep(wait)
    case.since_fetch = time.time() - last


def fetch_counts(case: Case, fake: Fake) -> dict | None:
    """Requests the case's server may make to a fake: JWKS/discovery (inbound) or IMDS tokens."""
    if case.kind.startswith("proxy-"):
        return {"imds": OUTBOUND.imds_requests()} if case.kind != "proxy-floor" else None
    return fake.stats() if case.kind != "floor" else None


def run_case(case: Case, fake: Fake, tokens: Tokens, htdocs: str, floor_rps: float | None,
             keep: bool = False) -> Httpd | None:
    """Warm-up and measured run(s) on the case's server; the server is stopped after, or with
    keep (and no failure) returned for the next case (SHARED_SERVER)."""
    srv = case.srv or start_server(case, fake, tokens, htdocs)
    case.srv = None
    if srv is None:
        return None
    url = f"http://127.0.0.1:{srv.port}{case.path}"
    try:
        if case.token_kind == "randkid":
            if ARGS.smoke:
                times = fake.key_fetch_times()
                case.since_fetch = time.time() - (max(times) if times else time.time())
            else:
                wait_out_refetch_interval(case, fake)
            fake.reset()
            t_flood = time.time()
        # Warm-up, then the measured run, on the same server. A warm-up that wrapped its
        # (small) slice of fresh tokens saw cache hits: its rate overestimates, which only
        # makes the measured run's slice larger.
        mode, file = load_source(case, tokens, floor_rps, ARGS.warmup, warmup=True)
        warm = case.warm = run_wrk(url, mode, file, ARGS.warmup)
        case.mem["warm"] = srv.memory()
        check_statuses(case, warm, "warm-up")
        mode, file = load_source(case, tokens, warm["rps"], ARGS.duration, margin=1.3)
        lines0 = srv.log_lines()
        before = fetch_counts(case, fake)
        cpu0 = srv.cpu_ticks()
        case.result = run_wrk(url, mode, file, ARGS.duration)
        cpu1 = srv.cpu_ticks()
        if cpu0 is not None and cpu1 is not None and case.result["requests"]:
            case.result["cpu_us"] = (cpu1 - cpu0) / os.sysconf("SC_CLK_TCK") * 1e6 / case.result["requests"]
        case.mem["run1"] = srv.memory()
        if before is not None:
            after = fetch_counts(case, fake)
            case.fetches = {k: after[k] - before[k] for k in after}
        case.log_growth = srv.log_lines() - lines0
        if case.token_kind == "randkid":
            st = fake.stats()
            times = sorted(t - t_flood for t in fake.key_fetch_times() if t >= t_flood)
            case.kid = dict(st, seconds=time.time() - t_flood, at=times,
                            since_fetch=getattr(case, "since_fetch", 0.0))
        check_statuses(case, case.result, "run 1")
        if case.name in MEMORY_CASES and not ARGS.no_second_run:
            mode, file = load_source(case, tokens, case.result["rps"], ARGS.duration, margin=1.2)
            case.second = run_wrk(url, mode, file, ARGS.duration)
            case.mem["run2"] = srv.memory()
            check_statuses(case, case.second, "run 2")
        log(f"  {case.name}: {case.result['rps']:.0f} req/s, statuses {fmt_statuses(case.result)}"
            + (f"; second run {case.second['rps']:.0f} req/s" if case.second else ""))
    except Exception as exc:   # a broken case must not hide the others
        case.status = "FAIL"
        case.notes.append(f"error: {exc}")
        log(f"  {case.name}: FAIL: {exc}")
    if keep and case.status == "ok":
        return srv
    srv.stop()
    return None


def run_cold(case: Case, tokens: Tokens, htdocs: str):
    """COLD_REQUESTS concurrent requests to a fresh proxy with several children while its first
    token fetch is held at the fake: how many IMDS token requests did they cause?"""
    out = OUTBOUND
    srv = None
    n = COLD_REQUESTS
    try:
        out.reset_counters()
        # The first IMDS request (the children's start-up warm-up) is held until every request of
        # the burst has been sent (release below), COLD_HOLD s at most.
        out.fake.script("imds", [f"slow:{COLD_HOLD}"])
        t_start = time.time()
        srv = Httpd(WORKDIR, case.name, "proxy-cold", None, htdocs, mpm=COLD_MPM, access_log=True).start()
        lines0 = srv.log_lines()
        case.matrix = f"{srv.n_children} children, {COLD_MPM['ThreadsPerChild']} threads each"
        log(f"  {case.name}: {case.matrix}; {n} concurrent requests")
        barrier = threading.Barrier(n, timeout=30)
        sent = [None] * n

        def one(i: int) -> tuple:
            """(status or error name, latency s, forwarded token or None, body ok)."""
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            err = None
            try:
                conn.connect()
            except OSError as exc:
                err = type(exc).__name__
            try:
                barrier.wait()           # every connection open: the requests leave together
            except threading.BrokenBarrierError:
                pass
            try:
                if err:
                    return err, 0.0, None, False
                conn.request("GET", PATH, headers={"Authorization": f"Bearer {tokens.valid}",
                                                   "X-Bench-Echo": "1", "Connection": "close"})
                t0 = time.monotonic()
                sent[i] = time.time()
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                return (resp.status, time.monotonic() - t0, resp.getheader("X-Bench-Authorization"),
                        body == BODY)
            except (OSError, http.client.HTTPException) as exc:
                return type(exc).__name__, 0.0, None, False
            finally:
                conn.close()

        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            deadline = time.monotonic() + COLD_HOLD - 1
            while sum(1 for t in sent if t) < n and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)                  # let httpd hand the last ones to workers
            n_sent = sum(1 for t in sent if t)
            t_release = time.time()
            out.fake.release()
            results = [f.result(timeout=120) for f in futures]
        t_done = time.time()
        stats = out.fake.stats()["imds"]
        imds = out.fake.requests_log("imds")
        t_fetch = min((e["t"] for e in imds if e["t"] >= t_start), default=None)
        mem = srv.memory_all()
        statuses = collections.Counter(r[0] for r in results)
        lat = sorted(r[1] for r in results if r[0] == 200)
        pct = (lambda q: lat[min(len(lat) - 1, int(q / 100 * len(lat)))] * 1e6) if lat else (lambda q: 0.0)
        fwd = collections.Counter(r[2] for r in results if r[0] == 200)
        pids = collections.Counter()
        with open(srv.access_log) as f:
            for line in f:
                pid, _, st = line.partition(" ")
                pids[pid] += 1
        big = max(mem.values(), key=lambda m: m["rss_kib"] or 0) if mem else {}
        case.mem["run1"] = big
        case.result = {"statuses": {(k if isinstance(k, int) else str(k)): v for k, v in statuses.items()},
                       "requests": float(len(results)), "rps": None, "p50": pct(50), "p99": pct(99),
                       "lat_max": (lat[-1] * 1e6 if lat else 0.0)}
        verified = []
        for tok in fwd:
            try:
                scheme, _, t = (tok or "").partition(" ")
                if scheme != "Bearer":
                    raise ValueError(f"not a bearer token: {str(tok)[:20]!r}")
                verified.append(check_forwarded(t))
            except Exception as exc:
                case.status = "FAIL"
                case.notes.append(f"the backend got a token that does not verify: {type(exc).__name__} {exc}")
        case.cold = {"requests": n, "sent_before_release": n_sent, "imds_requests": stats["requests"],
                     "imds_throttled": stats.get("throttled", 0), "by_resource": stats.get("by_resource", {}),
                     "fetch_after_start": None, "released_after_fetch": None, "sent_after_fetch": None,
                     "seconds": t_done - t0, "children": len(mem), "children_serving": len(pids),
                     "served_per_child": sorted(pids.values(), reverse=True),
                     "rss_children_mib": sorted(round((m["rss_kib"] or 0) / 1024, 1) for m in mem.values()),
                     "distinct_tokens": len(fwd), "token": verified[0] if verified else None,
                     "bad_bodies": sum(1 for r in results if r[0] == 200 and not r[3])}
        if t_fetch is not None:
            case.cold["fetch_after_start"] = t_fetch - t_start
            case.cold["released_after_fetch"] = t_release - t_fetch
            case.cold["sent_after_fetch"] = max((t for t in sent if t), default=t_fetch) - t_fetch
        case.log_growth = srv.log_lines() - lines0
        bad = {k: v for k, v in statuses.items() if k != case.expect}
        if bad:
            case.status = "FAIL"
            case.notes.append(f"unexpected statuses {dict(bad)} (expected only {case.expect})")
        if case.cold["bad_bodies"]:
            case.status = "FAIL"
            case.notes.append(f"{case.cold['bad_bodies']} answers with 200 did not carry the file")
        if len(fwd) > 1:
            case.notes.append(f"the backend got {len(fwd)} different tokens")
        if n_sent < n:
            case.notes.append(f"only {n_sent} of {n} requests were sent before the fetch was released")
        log(f"  {case.name}: statuses {fmt_statuses(case.result)}, IMDS token requests {stats['requests']}, "
            f"{len(pids)} of {len(mem)} children served")
    except Exception as exc:
        case.status = "FAIL"
        case.notes.append(f"error: {exc}")
        log(f"  {case.name}: FAIL: {exc}")
    finally:
        if srv:
            srv.stop()
        try:
            out.fake.reset(counters=False, scripts=True, settings=False, registrations=False, arc=False)
        except Exception:
            pass


def check_statuses(case: Case, res: dict, run: str):
    bad = {s: n for s, n in res["statuses"].items() if s != case.expect}
    errs = {k: int(res.get("err_" + k, 0)) for k in ("connect", "read", "write", "timeout")}
    if bad:
        case.status = "FAIL"
        case.notes.append(f"{run}: unexpected statuses {bad} (expected only {case.expect})")
    if any(errs.values()):
        case.notes.append(f"{run}: socket errors: " + ", ".join(f"{k} {v}" for k, v in errs.items() if v))
    if res.get("wraps") and not case.token_kind.startswith("reuse:"):
        n = case.slices[-1] if case.slices else 0
        case.notes.append(f"{run}: outran its slice of {n} fresh tokens: about {max(0, int(res['sent']) - n)} "
                          f"of {int(res['requests'])} requests reused one (possibly cache hits)")


def fmt_statuses(res: dict) -> str:
    return " ".join(f"{s}:{n}" for s, n in sorted(res["statuses"].items(), key=lambda i: str(i[0]))) or "-"


def mib(k: int | None) -> str:
    return "-" if k is None else f"{k / 1024:.1f}"


# ------------------------------------------------------------------------------- report

def report(cases: list[Case], floor: Case | None, tokens: "Tokens | None"):
    floors = [c for c in cases if c.name in ("floor", "floor-again") and c.result]
    floor_rps = sum(c.result["rps"] for c in floors) / len(floors) if floors else None
    floor_mem = floor.mem.get("run1") if floor else None
    if len(floors) == 2:
        a, b = (c.result["rps"] for c in floors)
        log(f"floor for the ratios: mean of floor ({a:.0f} req/s, first case) and floor-again ({b:.0f} req/s, "
            f"last case) = {floor_rps:.0f} req/s; they differ by {abs(a - b) / floor_rps:.0%}, a measure "
            "of the machine's drift and noise during the run")
        log()
    by_name = {c.name: c for c in cases}
    rows = [("case", "req/s", "p50 ms", "p99 ms", "statuses", "RSS MiB", "httpd CPU us/req", "ratio",
             "own ratio", "target")]
    for c in cases:
        if c.result is None:
            rows.append((c.name, "-", "-", "-", "-", "-", "-", "-", "-", c.status if c.status != "ok" else "-"))
            continue
        r = c.result
        ratio = r["rps"] / floor_rps if floor_rps and r["rps"] is not None else None
        ref = by_name.get(c.ref) if c.ref else None
        own = None
        if ref and ref.result and ref.result["rps"] and r["rps"] is not None:
            own = r["rps"] / ref.result["rps"]
        goal = own if c.ref else ratio
        if c.target is not None and goal is not None:
            tgt = f">={c.target:.2f} " + ("ok" if goal >= c.target else "MISS")
        elif c.target is not None:
            tgt = f">={c.target:.2f} ?"          # its own floor was not measured
        elif c.token_kind == "randkid" and c.kid:
            # Entra publishes v2 and v1 key sets at two URIs: the goal is per JWKS URI.
            allowed = KID_FETCH_GOAL_PER_60S * max(1, math.ceil(c.kid["seconds"] / 60))
            worst = max(c.kid["jwks_v2"], c.kid["jwks_v1"])
            tgt = f"jwks/uri {worst}<={allowed} " + ("ok" if worst <= allowed else "MISS")
        elif c.cold:
            k = c.cold["imds_requests"]
            tgt = f"imds {k}=={COLD_FETCH_GOAL} " + ("ok" if k == COLD_FETCH_GOAL else "MISS")
        else:
            tgt = "-"
        if c.status == "FAIL":
            tgt = "FAIL"
        rows.append((c.name, "-" if r["rps"] is None else f"{r['rps']:.0f}", f"{r['p50'] / 1000:.2f}",
                     f"{r['p99'] / 1000:.2f}", fmt_statuses(r), mib(c.mem.get("run1", {}).get("rss_kib")),
                     f"{r['cpu_us']:.1f}" if r.get("cpu_us") else "-",
                     "-" if ratio is None else f"{ratio:.3f}",
                     "-" if own is None else f"{own:.3f} of {c.ref}", tgt))
    print_table(rows)
    log()
    same = [(c, by_name.get(SAME_CLIENT_FLOOR[c.name])) for c in cases if c.name in SAME_CLIENT_FLOOR]
    same = [(c, f) for c, f in same if f and c.result and f.result and f.result["rps"]]
    if same:
        log("against the floor with the same client work (" + same[0][1].name + ", "
            f"{same[0][1].result['rps']:.0f} req/s): " + ", ".join(
                f"{c.name} {c.result['rps'] / f.result['rps']:.3f}" for c, f in same))
        log()
    for c in cases:
        for n in c.notes:
            log(f"note: {c.name}: {n}")
        if c.log_growth > 10:
            log(f"note: {c.name}: the error log grew by {c.log_growth} lines during the run")
        if c.fetches and "imds" in c.fetches:
            if c.fetches["imds"]:
                log(f"note: {c.name}: the fake identity endpoint saw {c.fetches['imds']} token requests "
                    "during the run")
        elif c.fetches and c.token_kind != "randkid" and any(c.fetches.values()):
            log(f"note: {c.name}: the fake saw {c.fetches['jwks']} JWKS and {c.fetches['discovery']} "
                "discovery fetches during the run")
    for c in cases:
        if c.kid:
            at = ", ".join(f"+{t:.1f} s" for t in c.kid["at"]) or "none"
            log(f"unknown-kid flood: {c.kid['jwks']} JWKS fetch(es) (v2 keys {c.kid['jwks_v2']}, v1 keys "
                f"{c.kid['jwks_v1']}) and {c.kid['discovery']} discovery fetch(es) at the fake during "
                f"{c.kid['seconds']:.1f} s of flood, {int(c.result['requests'])} requests in its measured "
                f"part (JWKS fetches at: {at}); the flood "
                f"began {c.kid['since_fetch']:.0f} s after the server's previous key fetch; goal: at most "
                f"{KID_FETCH_GOAL_PER_60S} per 60 s. Latency of the flood's first {fmt_s(ARGS.warmup)} s "
                f"(warm-up, when a refetch is allowed): p99 {c.warm['p99'] / 1000:.2f} ms, max "
                f"{c.warm['lat_max'] / 1000:.2f} ms")
            if c.kid["since_fetch"] < REFETCH_INTERVAL:
                log(f"  (the {REFETCH_INTERVAL} s since that fetch ran out only "
                    f"{REFETCH_INTERVAL - c.kid['since_fetch']:.0f} s into the flood, so the flood "
                    "tested the limit for less time; a full run waits the interval out first)")
    for c in cases:
        if c.cold:
            k = c.cold
            when = ""
            if k["released_after_fetch"] is not None:
                when = (f"; the fetch began {k['fetch_after_start']:.1f} s after httpd was started and was "
                        f"held {k['released_after_fetch']:.1f} s (released once all were sent; the last "
                        f"was sent {k['sent_after_fetch']:.1f} s after it began)")
            log(f"cold burst: {k['requests']} concurrent requests (one connection each, sent together) to a "
                f"fresh proxy with {k['children']} children; {k['sent_before_release']} sent while the first "
                f"token fetch was held{when}; statuses {fmt_statuses(c.result)}; IMDS token requests at the "
                f"fake: {k['imds_requests']} (by resource {k['by_resource']}, throttled {k['imds_throttled']}); "
                f"goal: exactly {COLD_FETCH_GOAL} per (identity, resource). Served by {k['children_serving']} "
                f"children ({'/'.join(map(str, k['served_per_child']))} requests); the backend got "
                f"{k['distinct_tokens']} distinct token(s) ({k['token'] or '-'}); latency from sending: p50 "
                f"{c.result['p50'] / 1e6:.2f} s, p99 {c.result['p99'] / 1e6:.2f} s, max "
                f"{c.result['lat_max'] / 1e6:.2f} s (includes the held fetch); burst {k['seconds']:.1f} s; "
                f"children's RSS {k['rss_children_mib']} MiB")
    checked = [c for c in cases if c.matrix and c.kind != "floor"]
    if checked:
        log("pre-checks (status per token, before measuring):")
        for c in checked:
            log(f"  {c.name}: {c.matrix}")
    pools = [p for p in (tokens.pools.values() if tokens else []) if p.used]
    if pools:
        log("fresh-token pools: " + "; ".join(f"{p.alg} {p.used} tokens handed out, minted in "
                                              f"{p.mint_seconds:.1f} s" for p in pools)
            + f" (budget {MINT_BUDGET:.0f} s each)")
    # Memory.
    log()
    mrows = [("memory (child)", "RSS warm", "RSS run1", "RSS run2", "run2-run1", "anon run1", "anon run2",
              "vs floor", "PSS", "private", "private vs floor", "run2 req/s")]
    for c in cases:
        if not c.mem.get("run1"):
            continue
        w, r1, r2 = c.mem.get("warm", {}), c.mem["run1"], c.mem.get("run2")
        growth = "-" if not r2 else f"{(r2['rss_kib'] - r1['rss_kib']) / 1024:+.1f}"
        vs = "-" if not floor_mem or c is floor else f"{(r1['rss_kib'] - floor_mem['rss_kib']) / 1024:+.1f}"
        pvs = "-"
        if floor_mem and c is not floor and r1.get("private_kib") is not None \
                and floor_mem.get("private_kib") is not None:
            pvs = f"{(r1['private_kib'] - floor_mem['private_kib']) / 1024:+.1f}"
        mrows.append((c.name, mib(w.get("rss_kib")), mib(r1["rss_kib"]), mib(r2 and r2["rss_kib"]), growth,
                      mib(r1["anon_kib"]), mib(r2 and r2["anon_kib"]), vs, mib(r1.get("pss_kib")),
                      mib(r1.get("private_kib")), pvs,
                      (f"{c.second['rps']:.0f}" + ("*" if c.second.get("wraps") else "")) if c.second else "-"))
    print_table(mrows)
    log("(MiB. RSS = VmRSS of the httpd child: after the warm-up, after the measured run, after a "
        "second run of the same length; anon = RssAnon, its private heap; 'vs floor' = RSS after "
        "run 1 minus the floor child's; PSS and private (Private_Clean + Private_Dirty) from "
        "smaps_rollup after run 1; run2 req/s marked * reused tokens of its slice (see the notes), so it "
        "measures memory, not speed: RSS counts every shared library page the child touched (libcrypto, "
        "libcurl and its dependencies) and its share of shared memory in full, private only what "
        "no other process shares; proxy-cold: its largest child after the burst, with "
        f"{COLD_MPM['ThreadsPerChild']} threads instead of {ARGS.threads_per_child})")


def print_table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        log("  ".join(str(v).ljust(widths[i]) if i in (0, 4) else str(v).rjust(widths[i])
                      for i, v in enumerate(r)).rstrip())
        if j == 0:
            log("  ".join("-" * w for w in widths))


# ------------------------------------------------------------------------------- main

ARGS = None
WORKDIR = None
OUTBOUND = None     # Outbound while the proxied cases run


def main(argv=None) -> int:
    global ARGS, WORKDIR, OUTBOUND
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="about 2 s per case (CI)")
    ap.add_argument("--duration", type=float, help="seconds per measured run (default 10, smoke 2)")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up per case (default 1, smoke 1)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads-per-child", type=int, default=20)
    ap.add_argument("--cases", help="comma-separated subset of case names")
    ap.add_argument("--no-second-run", action="store_true", help="skip the memory cases' second run")
    ap.add_argument("--module", default=DEFAULT_MODULE)
    ap.add_argument("--enable-mmap", action="store_true",
                    help="httpd's default EnableMMAP On (see the docstring: it makes the floor slow)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ARGS = ap.parse_args(argv)
    if ARGS.duration is None:
        ARGS.duration = 2.0 if ARGS.smoke else 10.0
    if ARGS.warmup is None:
        ARGS.warmup = 1.0
    if ARGS.connections < 1 or ARGS.duration < 1:
        ap.error("connections and duration must be at least 1")
    if ARGS.threads_per_child <= ARGS.connections:
        ap.error("--threads-per-child must exceed --connections: with every worker busy, mpm_event "
                 "closes idle keep-alive connections and the run measures reconnects")

    for what, path in (("apache2", APACHE), ("wrk", WRK), ("bench.lua", LUA), ("rules.lua", RULES)):
        if not os.path.exists(path):
            sys.exit(f"bench: {what} not found at {path}")
    if not os.path.exists(ARGS.module):
        sys.exit(f"bench: {ARGS.module} is missing: run make first")
    selected = CASES
    if ARGS.cases:
        names = [n.strip() for n in ARGS.cases.split(",") if n.strip()]
        unknown = set(names) - {c[0] for c in CASES}
        if unknown:
            ap.error(f"unknown case(s) {sorted(unknown)}; known: {[c[0] for c in CASES]}")
        # A case's own floor (and the case whose server it shares) runs too.
        names = set(names) | {c[5] for c in CASES if c[0] in names and c[5]}
        names |= {SHARED_SERVER[n] for n in names if n in SHARED_SERVER}
        selected = [c for c in CASES if c[0] in names or c[0] == "floor"]

    global MINT_BUDGET
    if ARGS.smoke:
        MINT_BUDGET = 20.0
    WORKDIR = tempfile.mkdtemp(prefix="entra-bench-")
    os.chmod(WORKDIR, 0o755)
    # Every case loads this copy: a rebuild of the tree during the run changes nothing here.
    built = os.path.getmtime(ARGS.module)
    ARGS.module_source, ARGS.module = ARGS.module, os.path.join(WORKDIR, "mod_entra.so")
    shutil.copy2(ARGS.module_source, ARGS.module)
    os.chmod(ARGS.module, 0o755)
    os.utime(ARGS.module, (built, built))
    ARGS.rules = os.path.join(WORKDIR, "rules.lua")     # read by httpd's user
    shutil.copy(RULES, ARGS.rules)
    os.chmod(ARGS.rules, 0o644)
    env = environment_line(ARGS)
    for line in env:
        log(line)
    log()

    htdocs = os.path.join(WORKDIR, "htdocs")
    os.makedirs(os.path.join(htdocs, "orders"))
    for path in {PATH, *CASE_PATHS.values()}:
        os.makedirs(os.path.dirname(os.path.join(htdocs, path.lstrip("/"))), exist_ok=True)
        with open(os.path.join(htdocs, path.lstrip("/")), "w") as f:
            f.write(BODY)
    for d, _, _ in os.walk(htdocs):
        os.chmod(d, 0o755)
    fakes = {}
    tokens = None

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    cases = [Case(s) for s in selected]
    handoff = {}    # servers kept for the next case (SHARED_SERVER)
    try:
        global TLS
        keys = os.path.join(WORKDIR, "keys")
        TLS = tls_certs.make_ca_and_server_cert(os.path.join(WORKDIR, "tls"))
        fakes["main"] = Fake(WORKDIR, "main", keys)           # generates the keys
        fakes["tls"] = Fake(WORKDIR, "tls", keys, tls=TLS)     # mod_auth_openidc wants https
        fakes["kid"] = Fake(WORKDIR, "kid", keys)              # only the unknown-kid server's fetches
        tokens = Tokens(WORKDIR, keys)
        fake_for = {"openidc": fakes["tls"], "entra-unknown-kid": fakes["kid"]}
        t0 = time.monotonic()
        # The unknown-kid server starts first: by its turn, its start-up key fetch is old enough
        # for the flood to show the refetch limit (see wait_out_refetch_interval).
        for case in cases:
            if case.token_kind == "randkid":
                case.srv = start_server(case, fake_for[case.name], tokens, htdocs)
        floor = cases[0]
        last_proxy = max((i for i, c in enumerate(cases) if c.kind.startswith("proxy-")), default=-1)
        for i, case in enumerate(cases):
            if case.kind.startswith("proxy-") and OUTBOUND is None and case.status == "ok":
                try:
                    OUTBOUND = Outbound(WORKDIR, htdocs)
                except Exception as exc:
                    for c in cases:
                        if c.kind.startswith("proxy-"):
                            c.status = "FAIL"
                            c.notes.append(f"error: the fake identity endpoint or the backend did not start: {exc}")
                    log(f"  proxy cases: FAIL: {exc}")
            if case.name in SHARED_SERVER and SHARED_SERVER[case.name] in handoff:
                srv = handoff.pop(SHARED_SERVER[case.name])
                if case.status == "ok":
                    case.srv = adopt_server(case, srv, tokens)
                else:
                    srv.stop()
            if case.status == "ok":
                floor_rps = floor.result["rps"] if floor.result else None
                if case.kind == "proxy-cold":
                    run_cold(case, tokens, htdocs)
                else:
                    keep = any(SHARED_SERVER.get(c.name) == case.name for c in cases)
                    srv = run_case(case, fake_for.get(case.name, fake_for.get(case.kind, fakes["main"])),
                                   tokens, htdocs, floor_rps, keep=keep)
                    if srv:
                        handoff[case.name] = srv
            if i == last_proxy and OUTBOUND:
                OUTBOUND.stop()
                OUTBOUND = None
        log(f"(all cases in {time.monotonic() - t0:.0f} s)")
        log()
        report(cases, floor, tokens)
        if ARGS.json:
            with open(ARGS.json, "w") as f:
                json.dump({"environment": env,
                           "cases": [{"name": c.name, "label": c.label, "status": c.status,
                                      "expect": c.expect, "target": c.target, "result": c.result,
                                      "second": c.second, "memory": c.mem, "notes": c.notes,
                                      "precheck": c.matrix, "fetches": c.fetches, "own_floor": c.ref,
                                      "path": c.path, "unknown_kid": c.kid, "cold_burst": c.cold}
                                     for c in cases]}, f, indent=1, default=str)
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    finally:
        for c in cases:
            if c.srv:
                c.srv.stop()
        for srv in handoff.values():
            srv.stop()
        if OUTBOUND:
            OUTBOUND.stop()
        for f in fakes.values():
            f.stop()
        if ARGS.keep:
            log(f"kept {WORKDIR}")
        else:
            shutil.rmtree(WORKDIR, ignore_errors=True)
    failed = [c.name for c in cases if c.status == "FAIL"]
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
