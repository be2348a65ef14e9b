#!/usr/bin/python3
"""A soak run of mod_entra on a real apache2: figures, not a test (`make soak`).

  /usr/bin/python3 t/bench/soak.py [--seconds S] [--keep]      (S: 60, or $SOAK_SECONDS; >= 30)

What runs. Everything on 127.0.0.1, in a temporary directory: the fake Entra ID
(t/fakes/fake_entra.py: discovery, JWKS), the fake managed-identity endpoint
(t/fakes/fake_identity.py, IMDS), a backend apache2 and the front apache2 with the module
(t/lib/httpd.py; mpm_event, 2 children of 160 threads: more threads than connections, so that
the MPM never closes keep-alive connections for want of workers; MaxKeepAliveRequests left at
httpd's 100, so connections are also closed and reopened all along). wrk (t/bench/soak.lua)
keeps 256 connections busy for S seconds; every connection cycles through five kinds of
request, each on its own path, so that the front's access log (%U and %>s) gives the kind and
status of every request it answered:

  kind        token                                               expected
  valid       one of 2000 valid RS256 tokens, in turn (cached        200
              after their first use)
  expired     an expired, otherwise valid token                      401
  badsig      a valid token with a new random signature each time    401
  unknownkid  a token whose header names a new random kid each time  401
  proxied     a valid token, on a route that also forwards to the    200
              backend with EntraProxyToken (managed identity, IMDS)

The backend answers /soak/proxied/ with 200 only when the request carries
`Authorization: Bearer <JWT>` whose JOSE header is the one the fake IMDS signs with (not the
client's token, which the front must replace); anything else gets 403 there, and so at the
client. Before the run every kind is asked once (the proxied one also has the forwarded token
echoed and verified against the fake's keys); a wrong answer there stops the run (exit 1).

Two graceful restarts (SIGUSR1 to the parent, as `apachectl -k graceful`) at 40 % and 70 % of
the run, under load.

Figures:
  - requests and statuses per kind from the access log; "unexpected" counts every answered
    request whose status is not its kind's, and any request on another path (but the
    harness's own /__ready, asked after each restart);
  - wrk's own count and its socket errors, on a line of their own and not counted as
    unexpected: during a graceful restart the old children close keep-alive connections and
    a request wrk had already written on one of them is lost without a status (a read or
    connect error), which is what graceful restarts do to any keep-alive client;
  - JWKS and discovery fetches at the fake during the run (an unknown kid may cause one key
    refetch per EntraKeyRefetchInterval, 60 s, for the whole machine) and IMDS token requests
    (the token is fetched before the run and cached; a graceful restart keeps it);
  - memory and descriptors of the front's children, read from /proc every second (t/lib/procs.py).
    A graceful restart replaces the children, so what is compared is the sum over the live
    children of one generation (always the two of them; samples where an old generation is
    still finishing are left out): the first sample after 10 s of load against the last one
    before wrk stops. That end sample is of the third generation, which has served the last
    30 % of the run: what a child leaks per request shows in it, and so does anything the
    parent leaks per restart (children inherit it); a leak within the first generation after
    10 s would not, so each generation's own growth is printed too. RSS is VmRSS (it includes
    the shared cache pages a child touched; RssAnon, its private heap, is printed beside it).
    Descriptors: every open descriptor but the connections from wrk (its to open and close)
    with the files their requests are being sent at that moment, and the pooled connections to the backend (mod_proxy keeps up to ThreadsPerChild per child,
    one for each worker that was ever proxying at the same time, so that pool grows toward its
    bound during the run); both are printed, the pool against its bound, and after wrk stops
    the children must have closed every client connection within 10 s (printed);
  - the error logs: child crashes (AH00052), sanitizer lines, JWT-looking strings (the front
    logs at entra:info, so every rejection's line is in it); with ENTRA_SANITIZE=1 and
    ENTRA_MODULE=build/san/mod_entra.so, the sanitizer reports too.

Reading the RSS figure: children grow for a while under this load before they level off
(memory their pools' allocators keep; on the 2-core development VM about 3 MiB from 10 s to
60 s of one generation, most of it before 35 s), and every key refetch adds some. After a
restart a generation starts that again, so the figure is what the last generation reached
against the first at 10 s, warm-up included: read it with the per-generation lines and the
timeline. Two options look into it: --no-restarts (one generation all along) and
--front-conf 'EntraKeyRefetchInterval 1' (a key refetch every second or two instead of one a
minute); neither is for the figure `make soak` reports.

The last line is exactly
  soak: <n> requests, <u> unexpected, rss_growth_kib <k>, fd_growth <f>
Targets: 0 unexpected, rss_growth_kib <= 1024, fd_growth 0 (a line before it says ok/MISS).
Exit status 1 only when the run could not be made (a server that did not start, a pre-check).
"""

import argparse
import collections
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (also puts t/lib on sys.path)
import checks  # noqa: E402
import conformance  # noqa: E402
import entra_tokens as et  # noqa: E402
import procs  # noqa: E402
from fake_entra_client import FakeEntra, ensure_keys  # noqa: E402
from identity_client import FakeIdentity, verify_token  # noqa: E402
from outbound import OutboundHttpd, managed  # noqa: E402

LUA = os.path.join(HERE, "soak.lua")
KINDS = {"valid": 200, "expired": 401, "badsig": 401, "unknownkid": 401, "proxied": 200}
RESOURCE = "api://soak-backend"
CONNECTIONS = 256
WRK_THREADS = 2
VALID_TOKENS = 2000
WARM = 10.0                 # the first memory/descriptor sample is taken after this much load
RESTARTS = (0.4, 0.7)       # graceful restarts, as fractions of the run
SAMPLE_EVERY = 1.0
DRAIN = 10.0                # after wrk: seconds for the children to close its connections
REFETCH_INTERVAL = 60       # EntraKeyRefetchInterval's default
TPC = 160
FRONT_MPM = {"StartServers": 2, "ServerLimit": 4, "ThreadLimit": TPC, "ThreadsPerChild": TPC,
             "MaxRequestWorkers": 2 * TPC, "MinSpareThreads": 1, "MaxSpareThreads": 4 * TPC}
BACKEND_MPM = {"StartServers": 2, "ServerLimit": 4, "ThreadLimit": 128, "ThreadsPerChild": 128,
               "MaxRequestWorkers": 256, "MinSpareThreads": 1, "MaxSpareThreads": 512}
TARGET_RSS_KIB = 1024
# The front's pool of connections to the backend: at most 32 per child (mod_proxy's default is
# ThreadsPerChild, and the pool keeps as many as were ever busy at once: on a loaded machine a
# stall of the backend grows it by a hundred connections, ~150 KiB of RSS each, and that noise
# would hide the module's own figures); one idle for 10 s is not reused, well before the
# backend's KeepAliveTimeout (30 s) closes it: with httpd's 5 s on both sides, a request sent on
# a connection the backend was closing that instant got 502 (AH01102), a race of mod_proxy's.
PROXY_POOL = "max=32 ttl=10"
BACKEND_CONF = "KeepAliveTimeout 30\nMaxKeepAliveRequests 0\n"
ACCESS_RE = re.compile(r'"(\S+) (\S+) HTTP/[\d.]+" (\d{3}) ')

log = bench.log


class Backend(OutboundHttpd):
    """The proxied kind's backend: an apache2 without mod_entra."""

    def config_text(self, *a, **kw) -> str:
        kw["with_module"] = False
        return super().config_text(*a, **kw)


def mi_header(fake: FakeIdentity) -> str:
    """The JOSE header segment of the tokens the fake IMDS issues for RESOURCE."""
    r = fake.session.get(fake.url("imds"), headers={"Metadata": "true"}, timeout=10,
                         params={"api-version": "2018-02-01", "resource": RESOURCE})
    r.raise_for_status()
    return r.json()["access_token"].split(".")[0]


def backend_locations(header: str) -> str:
    """200 at /soak/proxied/ only for a Bearer JWT with the fake IMDS's JOSE header `header`."""
    jwt = f"^Bearer {header}\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$"
    return ("<Location /soak/proxied/>\n"
            f'  Require expr "%{{req:Authorization}} =~ m#{jwt}#"\n'
            '  Header set X-Bench-Authorization "expr=%{req:Authorization}" "expr=-n %{req:X-Bench-Echo}"\n'
            "</Location>\n")


def front_config(fake: FakeEntra, ident: FakeIdentity, backend_port: int) -> tuple[str, str]:
    """(server_conf, locations): one protected <Location> per kind; the proxied one forwards."""
    server = conformance.server_conf(fake.authority) + managed("mi", ident) + "\n"
    locs = [conformance.location(f"/soak/{k}/") for k in KINDS if k != "proxied"]
    locs.append(conformance.location(
        "/soak/proxied/", extra=f"ProxyPass http://127.0.0.1:{backend_port}/soak/proxied/ {PROXY_POOL}\n"
                                f"  EntraProxyToken {RESOURCE} identity=mi"))
    return server, "\n".join(locs)


def precheck(front: OutboundHttpd, tokens: "bench.Tokens", valid: str, ident: FakeIdentity) -> list[str]:
    """Each kind once, built as soak.lua builds it; [problems]."""
    h, c, sig = valid.split(".")
    own = {"valid": valid, "expired": tokens.expired, "proxied": valid,
           "badsig": f"{h}.{c}.{et.b64url(secrets.token_bytes(24))}{sig[32:]}",
           "unknownkid": tokens.randkid_example}
    problems, seen = [], []
    with requests.Session() as s:
        s.trust_env = False
        for kind, want in KINDS.items():
            r = s.get(front.url(f"/soak/{kind}/ok.txt"), timeout=30,
                      headers={"Authorization": f"Bearer {own[kind]}", "X-Bench-Echo": "1"})
            seen.append(f"{kind} {r.status_code}")
            if r.status_code != want:
                problems.append(f"{kind}: {r.status_code}, expected {want}")
            elif kind == "proxied":
                try:
                    fwd = bench.forwarded_token(r)
                    claims = verify_token(fwd, ident.jwks())
                    if fwd == valid or claims.get("aud") != RESOURCE:
                        raise ValueError(f"the backend got the client's token or aud {claims.get('aud')!r}")
                    seen[-1] += f" (backend got a Bearer JWT from the fake IMDS for {claims['aud']}, verified)"
                except Exception as exc:   # cryptography's InvalidSignature has no message
                    problems.append(f"proxied: forwarded token: {type(exc).__name__} {exc}")
    log("pre-check: " + ", ".join(seen))
    return problems


# ------------------------------------------------------------------------------- samples

def sample(front: OutboundHttpd, backend_port: int) -> dict:
    """The front's children now: pids, VmRSS and RssAnon sums (KiB), descriptors by class."""
    pids = procs.children(front.proc.pid)
    tcp = procs.tcp_sockets(front.proc.pid)
    rss = anon = 0
    fds = collections.Counter()
    targets = []
    htdocs = os.path.join(front.workdir, "htdocs") + "/"
    for pid in pids:
        st = procs._status(pid)
        rss += bench.kib(st, "VmRSS") or 0
        anon += bench.kib(st, "RssAnon") or 0
        try:
            targets += procs.open_fds(pid).values()
        except OSError:           # gone meanwhile
            pass
    # Connections come and go all the time: a socket accepted after the first read of the
    # table is in the second (both are of the namespace; the children share the parent's).
    tcp = {**tcp, **procs.tcp_sockets(front.proc.pid)}
    for target in targets:
        lport, rport, state = tcp.get(target[8:-1], (0, 0, "")) if target.startswith("socket:[") \
            else (0, 0, "")
        if lport == front.port and state != "0A" or target.startswith(htdocs):
            fds["clients"] += 1        # a connection from wrk, or the file a request is sending
        elif rport == backend_port:
            fds["backend"] += 1
        else:
            fds["rest"] += 1
            what = ("listen" if state == "0A" else "tcp" if state else "socket" if target.startswith("socket:")
                    else "file" if target.startswith("/") else target.split(":")[0])
            fds["rest:" + what] += 1
    return {"pids": pids, "rss": rss, "anon": anon, "fds": fds}


def assign_generation(s: dict, gen_of: dict, restarts_done: int):
    """Children first seen after the k-th restart belong to generation k; a sample is stable when
    it sees exactly StartServers children, all of one generation."""
    for pid in s["pids"]:
        gen_of.setdefault(pid, restarts_done)
    gens = {gen_of[p] for p in s["pids"]}
    s["gen"] = gens.pop() if len(gens) == 1 else None
    s["stable"] = s["gen"] is not None and len(s["pids"]) == FRONT_MPM["StartServers"]


def fmt_sample(s: dict) -> str:
    f = s["fds"]
    rest = " ".join(f"{k[5:]} {v}" for k, v in sorted(f.items()) if k.startswith("rest:"))
    return (f"t={s['t']:.0f}s gen {s['gen']} pids {','.join(map(str, s['pids']))}: RSS {s['rss']} KiB "
            f"(anon {s['anon']}), fds {f['rest']} [{rest}] (+ {f['clients']} client, {f['backend']} backend)")


def parent_figures(pid: int) -> str:
    st = procs._status(pid)
    try:
        n = len(procs.open_fds(pid))
    except OSError:
        n = -1
    return f"RSS {bench.kib(st, 'VmRSS')} KiB, {n} fds"


# ------------------------------------------------------------------------------- logs

def access_counts(text: str) -> tuple[dict, collections.Counter]:
    """({kind: Counter(status)}, Counter of other lines by "METHOD path status")."""
    per = {k: collections.Counter() for k in KINDS}
    other = collections.Counter()
    for line in text.splitlines():
        m = ACCESS_RE.search(line)
        parts = m.group(2).split("/") if m else []
        if m and m.group(1) == "GET" and len(parts) > 2 and parts[1] == "soak" and parts[2] in per:
            per[parts[2]][int(m.group(3))] += 1
        else:
            other[" ".join(m.groups()) if m else line[:80]] += 1
    return per, other


def error_log_figures(name: str, h: OutboundHttpd) -> str:
    """A line about crashes, sanitizer output and tokens in one server's error log."""
    text = h.error_log_text() + "\n" + h.stderr_text()
    crashes = checks.child_crashes(text)
    san = checks.sanitizer_lines(text)
    jwts = checks.JWT_RE.findall(text)
    levels = collections.Counter(re.findall(r"\] \[[a-z_0-9]*:(emerg|alert|crit|error)\]", text))
    line = (f"{name} error log: {len(text.splitlines())} lines, {len(crashes)} child crash line(s) "
            f"(AH00052/AH00051), {len(san)} sanitizer line(s), {len(jwts)} JWT-looking string(s); "
            + (", ".join(f"{n} at {lv}" for lv, n in sorted(levels.items())) or "nothing at error or above"))
    for extra in (crashes + san)[:5]:
        line += "\n    " + extra
    return line


# ------------------------------------------------------------------------------- run

def run(args, workdir: str, procs_to_stop: list) -> int:
    keys = os.path.join(workdir, "keys")
    ensure_keys(keys)
    fake = FakeEntra(os.path.join(workdir, "fake-entra"), keys_dir=keys)
    procs_to_stop.append(fake)
    fake.start()
    ident = FakeIdentity(os.path.join(workdir, "fake-identity"))
    procs_to_stop.append(ident)
    ident.start()
    tokens = bench.Tokens(workdir, keys)
    valid_file, n_valid, _ = tokens.pools["RS256"].take(VALID_TOKENS)
    with open(valid_file) as f:
        first_valid = f.readline().strip()
    expired_file = tokens.write("expired", tokens.expired)

    backend = Backend(os.path.join(workdir, "backend"), mpm=BACKEND_MPM, log_level="warn", server_conf=BACKEND_CONF,
                      locations=backend_locations(mi_header(ident)))
    procs_to_stop.append(backend)
    backend.add_file("soak/proxied/ok.txt")
    backend.start()
    server, locs = front_config(fake, ident, backend.port)
    server += args.front_conf.replace("\\n", "\n") + "\n"
    front = OutboundHttpd(os.path.join(workdir, "front"), server_conf=server, locations=locs,
                          mpm=FRONT_MPM, log_level="warn entra:info")
    procs_to_stop.append(front)
    for k in KINDS:
        if k != "proxied":
            front.add_file(f"soak/{k}/ok.txt")
    front.start()
    log(f"front apache2 pid {front.proc.pid} on port {front.port} (mpm_event, {FRONT_MPM['StartServers']} "
        f"children x {TPC} threads), backend on port {backend.port}; {n_valid} valid tokens")
    problems = precheck(front, tokens, first_valid, ident)
    if problems:
        log("soak: pre-check failed, not run: " + "; ".join(problems))
        log("error log tail:\n" + front.error_log_tail(10))
        return 1

    # Counters from here on: the run's own.
    fake.reset(counters=True, modes=False, keys=False, documents=False, tenants=False)
    ident.reset(counters=True, scripts=False, settings=False, registrations=False, arc=False)
    access_mark = os.path.getsize(os.path.join(front.workdir, "logs", "access.log"))
    error_mark = os.path.getsize(os.path.join(front.workdir, "logs", "error.log"))
    parent0 = parent_figures(front.proc.pid)
    T = args.seconds
    cmd = [bench.WRK, f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{T}s", "--timeout", "10s", "-s", LUA,
           front.url("/"), "--", valid_file, expired_file, tokens.randkid_file]
    log(f"load: {' '.join(cmd[:8])} ... for {T} s; "
        + ("no graceful restart (--no-restarts)" if args.no_restarts else
           "graceful restarts at " + " and ".join(f"{T * f:.0f} s" for f in RESTARTS)))
    out = open(os.path.join(workdir, "wrk.out"), "w+")
    wall0, t0 = time.time(), time.monotonic()
    wrk = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           preexec_fn=bench._die_with_parent)
    procs_to_stop.append(wrk)
    samples, gen_of, restarts = [], {}, []
    next_sample = 0.0
    while wrk.poll() is None and time.monotonic() - t0 < T + 60:
        now = time.monotonic() - t0
        if len(restarts) < len(RESTARTS) and now >= T * RESTARTS[len(restarts)] and not args.no_restarts:
            front.graceful()
            restarts.append((now, time.monotonic() - t0))
            log(f"  graceful restart {len(restarts)} at {now:.1f} s: new generation answering "
                f"{restarts[-1][1] - now:.1f} s later")
            continue
        if now >= next_sample:
            s = sample(front, backend.port)
            s["t"] = now
            assign_generation(s, gen_of, len(restarts))
            samples.append(s)
            next_sample = now + SAMPLE_EVERY
        time.sleep(0.05)
    if wrk.poll() is None:
        raise RuntimeError("wrk ran past its time")
    out.seek(0)
    wrk_text = out.read()
    out.close()
    res = bench.wrk_results(wrk_text)
    if wrk.returncode != 0 or "requests" not in res:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {wrk_text[-2000:]}")

    # After wrk: the children must close its connections.
    t_end = time.monotonic()
    left = None
    while time.monotonic() - t_end < DRAIN:
        left = sample(front, backend.port)["fds"]["clients"]
        if left == 0:
            break
        time.sleep(0.2)
    drained = time.monotonic() - t_end
    parent1 = parent_figures(front.proc.pid)
    st = fake.stats()["totals"]
    fetch_t = sorted(e["t"] - wall0 for e in fake.requests_log() if (e.get("category") or "").startswith("jwks"))
    imds = ident.stats()["imds"]["requests"]

    san = front.stop() + backend.stop()     # sanitizer reports (ENTRA_SANITIZE=1 runs)
    refetches = front.error_log_text(since=error_mark).count("ENTRA0106")
    with open(os.path.join(front.workdir, "logs", "access.log"), errors="replace") as f:
        f.seek(access_mark)
        per, other = access_counts(f.read())

    # ----------------------------------------------------------------------- figures
    log()
    n = unexpected = 0
    for kind, want in KINDS.items():
        c = per[kind]
        bad = sum(v for k, v in c.items() if k != want)
        n += sum(c.values())
        unexpected += bad
        log(f"  {kind:<10} {sum(c.values()):>8} requests, expected {want}: "
            + " ".join(f"{k}:{v}" for k, v in sorted(c.items())) + (f"  ({bad} unexpected)" if bad else ""))
    harness = sum(v for k, v in other.items() if k.startswith("GET /__ready "))
    strays = {k: v for k, v in other.items() if not k.startswith("GET /__ready ")}
    unexpected += sum(strays.values())
    n += sum(strays.values())
    log(f"  other paths: {sum(strays.values())}" + (f" {dict(list(strays.items())[:5])}" if strays else "")
        + f" (and {harness} /__ready of the harness after the restarts, not counted)")
    errs = {k[4:]: int(v) for k, v in res.items() if k.startswith("err_")}
    log(f"wrk: {int(res['requests'])} responses in {res['duration_us'] / 1e6:.1f} s "
        f"({res['requests'] / (res['duration_us'] / 1e6):.0f}/s), statuses "
        + " ".join(f"{k}:{v}" for k, v in sorted(res["statuses"].items()))
        + f"; latency p50 {res['p50'] / 1000:.1f} ms, p99 {res['p99'] / 1000:.1f} ms, max {res['lat_max'] / 1000:.0f} ms")
    log("wrk socket errors (not counted as unexpected: keep-alive connections the restarts closed): "
        + ", ".join(f"{k} {v}" for k, v in errs.items()))
    goal = max(1, -(-T // REFETCH_INTERVAL))
    log(f"fake Entra ID during the run: JWKS fetches v2 {st['jwks_v2']}, v1 {st['jwks_v1']}"
        + (f" (at {', '.join(f'{x:.0f}' for x in fetch_t)} s)" if fetch_t else "")
        + f", discovery {st['discovery_v1'] + st['discovery_v2']}; of them refetches for an unknown kid "
        f"(ENTRA0106): {refetches}, goal at most {goal} ({'ok' if refetches <= goal else 'MISS'}: one per "
        f"{REFETCH_INTERVAL} s, and the pre-check's unknown kid just before the run had one); "
        f"IMDS token requests {imds} (the token was cached before the run)")

    stable = [s for s in samples if s["stable"]]
    first = next((s for s in stable if s["t"] >= WARM), None)
    last = next((s for s in reversed(stable) if s["t"] <= T - 0.5), None)
    starts = [0.0] + [r[0] for r in restarts]
    grew = []
    for g, g0 in enumerate(starts):
        mine = [s for s in stable if s["gen"] == g and s["t"] >= g0 + (WARM if g == 0 else 5.0)]
        if mine:
            a, b = mine[0], mine[-1]
            grew.append(f"{b['rss'] - a['rss']:+d}")
            log(f"generation {g}: {fmt_sample(a)}\n          -> {fmt_sample(b)}: RSS {b['rss'] - a['rss']:+d} KiB, "
                f"anon {b['anon'] - a['anon']:+d} KiB, fds {b['fds']['rest'] - a['fds']['rest']:+d}")
    log("RSS in MiB, sum over the live children, every 2 s (* a sample with an old generation still "
        "finishing): " + " ".join(f"{s['t']:.0f}:{s['rss'] / 1024:.1f}{'' if s['stable'] else '*'}"
                                  for s in samples[::2]))
    pool = max((s["fds"]["backend"] for s in samples), default=0)
    log(f"backend connection pool: at most {pool} open (bound: {PROXY_POOL.split()[0]} per child); client connections still open after wrk stopped: {left} "
        f"({drained:.1f} s later); parent: {parent0} before, {parent1} after")
    for name, h in (("front", front), ("backend", backend)):
        log(error_log_figures(name, h))
    if san:
        log(f"sanitizer reports: {len(san)}\n" + "\n".join(r[:2000] for r in san))
    if first is None or last is None:
        log("soak: no stable sample after 10 s of load or at the end: growth not measured")
        return 1
    rss = last["rss"] - first["rss"]
    fdg = last["fds"]["rest"] - first["fds"]["rest"]
    log(f"compared: {fmt_sample(first)}\n      with: {fmt_sample(last)}")
    verdict = lambda ok: "ok" if ok else "MISS"  # noqa: E731
    log(f"targets: 0 unexpected {verdict(unexpected == 0)}, RSS growth <= {TARGET_RSS_KIB} KiB "
        f"{verdict(rss <= TARGET_RSS_KIB)}, fd growth 0 {verdict(fdg <= 0)} (within each generation RSS "
        f"grew {', '.join(grew)} KiB: warm-up and key refetches, see t/bench/soak.py)")
    log(f"soak: {n} requests, {unexpected} unexpected, rss_growth_kib {rss}, fd_growth {fdg}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS") or 60))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--no-restarts", action="store_true", help="no graceful restart (to look into a figure)")
    ap.add_argument("--front-conf", default="", help="extra server-level lines for the front (idem)")
    args = ap.parse_args(argv)
    if args.seconds < 30:
        ap.error("--seconds must be at least 30 (10 s before the first sample, restarts at 40 and 70 %)")
    for what, path in (("wrk", bench.WRK), ("apache2", bench.APACHE)):
        if not os.path.exists(path):
            sys.exit(f"soak: {what} not found at {path}")
    module = os.environ.get("ENTRA_MODULE") or os.path.join(bench.ROOT, "mod_entra", ".libs", "mod_entra.so")
    if not os.path.exists(module):
        sys.exit(f"soak: {module} is missing: run make first")
    log(bench.module_line(module, module))

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    workdir = tempfile.mkdtemp(prefix="entra-soak-")
    os.chmod(workdir, 0o755)
    started: list = []
    try:
        return run(args, workdir, started)
    except KeyboardInterrupt:
        log("soak: interrupted")
        return 130
    finally:
        for p in reversed(started):      # wrk first, then the servers, then the fakes
            try:
                if isinstance(p, subprocess.Popen):
                    if p.poll() is None:
                        p.kill()
                    p.wait(10)
                else:
                    p.stop()
            except Exception as exc:     # keep stopping the others
                log(f"soak: stopping {p}: {exc}")
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
