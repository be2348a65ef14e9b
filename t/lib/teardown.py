"""Stop apache2 under load, many times, and count the children that crash while stopping.

One Rig = a fake Entra (inbound keys), two fake identity endpoints (one answering, one
hanging), an echo backend that can hold requests (X-Test-Sleep) and an apache2 (event MPM
unless ENTRA_MPM says otherwise) with core dumps on. `mode` says what the module does:

    work   mod_entra loaded, and the load goes through it: inbound tokens (static and
           proxied), outbound tokens (cached), requests waiting on a hanging identity endpoint
    idle   mod_entra loaded and configured the same way (its upkeep thread runs), but the
           load only uses plain static and proxied locations
    none   no LoadModule entra_module, no Entra directive; the same load as `idle`

The load (a few threads for a bounded time): keep-alive static requests, proxied requests
the backend holds 0.2-1.5 s, and requests held for long (the hanging identity endpoint in
`work`, a backend hold of --hold seconds otherwise), so that busy workers, keep-alive
connections and blocked workers all exist when the parent is signalled.

Kinds of stop, each repeated `cycles` times:

    term     SIGTERM to the parent (apachectl -k stop): a fresh apache2 each cycle
    winch    SIGWINCH (apachectl -k graceful-stop): a fresh apache2 each cycle
    usr1     SIGUSR1 (apachectl -k graceful): one apache2, `cycles` graceful restarts

A crash is an AH00051/AH00052 line in the error log or a core file in CoreDumpDirectory
(the parent may exit before it reaps a crashed child, so cores are the better count); every
core is read with gdb for a backtrace.

A stop also records the parent's exit status: with mod_entra loaded it used to be -11 at
every exit (shmcb's cleanup of the module's local store ran from the process pool after
mod_so had unloaded mod_socache_shmcb.so; fixed in mod_entra_cache.c).

Manual comparison (t/test_teardown.py runs a short version):
    /usr/bin/python3 t/lib/teardown.py --cycles 40 --wrk 40 --hammer 4 --warm 1.0 \
        --hold 2 --modes none,idle,work --kinds term
What it showed (Debian apache2 2.4.71, event MPM, 2 children x 10 threads, 2 shared cores;
crashed children / stops):

    load                                      stop      none     idle     work
    11 client threads, --hold 20              SIGTERM   0 / 20   2 / 20   0 / 20
    the same + wrk -c40 + 4 threads, --hold 2 SIGTERM   10 / 40  7 / 40   10 / 40, 2 / 30, 3 / 20
    the same                                  SIGWINCH                    0 / 20
    the same                                  SIGUSR1                     0 / 20 graceful restarts

All 31 cores have one backtrace: the child's main thread faults in apr_os_sock_get (30) or
apr_socket_timeout_set (1), called from mod_mpm_event.so alone (close_socket_nonblocking_ <-
close_worker_sockets, inlined in signal_threads(ST_UNGRACEFUL) <- child_main <- make_child
<- ... <- ap_run_mpm <- main). In 29 of them another MPM thread is at that moment in
apr_allocator_destroy -> munmap (the listener's ap_queue_info_free_idle_pools, or a worker
releasing a transaction pool): the socket pointer that the main thread reads from
worker_sockets[] lives in a pool being unmapped. httpd's own race; no module frame.
"""

import concurrent.futures
import contextlib
import glob
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import requests

import checks
import conformance
import entra_tokens as et
import procs
from fake_entra_client import FakeEntra, ensure_keys
from identity_client import FakeIdentity
from outbound import EchoServer, OutboundHttpd, managed, route, session

MODES = ("work", "idle", "none")
KINDS = {"term": signal.SIGTERM, "winch": signal.SIGWINCH, "usr1": signal.SIGUSR1}
AUD = "api://teardown"
GDB = shutil.which("gdb") or "/usr/bin/gdb"
WRK = shutil.which("wrk")
# Frames of the module in a backtrace: its shared object or its own function names.
ENTRA_FRAME_RE = re.compile(r"mod_entra\.so|\bentra_\w+|\bupkeep\b|mod_entra/")


@contextlib.contextmanager
def core_limit():
    """RLIMIT_CORE unlimited for the processes started inside (apache2 inherits it)."""
    old = resource.getrlimit(resource.RLIMIT_CORE)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (old[1], old[1]))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, old)


def core_pattern() -> str:
    try:
        with open("/proc/sys/kernel/core_pattern") as f:
            return f.read().strip()
    except OSError:
        return ""


class Load:
    """Client threads against one apache2 until stop(); counts answers by route and status."""

    def __init__(self, rig: "Rig", seed: int = 0, hammer: int = 0, wrk: int = 0, hold: float = 4.0):
        self.rig = rig
        self.hold = hold           # seconds the backend holds the long requests (idle, none)
        self.hammer = hammer       # extra threads sending short requests back to back
        self.wrk = wrk             # connections of a wrk process (keep-alive, back to back)
        self.wrk_proc = None
        self.stopping = threading.Event()
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._rand = random.Random(seed)
        self.threads: list[threading.Thread] = []

    def _note(self, what: str):
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def _client(self, name: str, path: str, headers: dict, pause: float, hold=None):
        s = session()
        try:
            while not self.stopping.is_set():
                h = dict(headers)
                if hold is not None:
                    h["X-Test-Sleep"] = f"{hold():.2f}"
                try:
                    r = s.get(self.rig.httpd.url(path), headers=h, timeout=30)
                    self._note(f"{name} {r.status_code}")
                except requests.RequestException as exc:
                    self._note(f"{name} error-{type(exc).__name__}")
                    s.close()
                    s = session()
                    self.stopping.wait(0.1)
                self.stopping.wait(pause)
        finally:
            s.close()

    def start(self) -> "Load":
        rig, rnd = self.rig, self._rand
        slow = lambda: rnd.uniform(0.2, 1.5)   # noqa: E731
        if rig.mode == "work":
            auth = {"Authorization": f"Bearer {rig.token}"}
            plan = [("static-auth", "/any/ok.txt", auth, 0.02, None)] * 3 + \
                   [("proxy-auth", "/in/echo", auth, 0.0, slow)] * 3 + \
                   [("proxy-token", "/out/echo", {}, 0.05, None)] * 2 + \
                   [("proxy-token-hang", "/stuck/echo", {}, 0.0, None)] * 3
        else:
            plan = [("static", "/static/ok.txt", {}, 0.02, None)] * 3 + \
                   [("proxy", "/plain/echo", {}, 0.0, slow)] * 3 + \
                   [("proxy", "/plain/echo", {}, 0.05, None)] * 2 + \
                   [("proxy-hold", "/plain/echo", {}, 0.0, lambda: self.hold)] * 3
        # Back-to-back short requests, every other one closing its connection: workers are
        # forever between connections when the signal comes.
        static = plan[0][:3]
        plan += [(static[0] + "-hammer", static[1], {**static[2], "Connection": "close"}, 0.0, None),
                 (static[0] + "-hammer", static[1], static[2], 0.0, None)] * (self.hammer // 2)
        for args in plan:
            t = threading.Thread(target=self._client, args=args, daemon=True)
            t.start()
            self.threads.append(t)
        if self.wrk and WRK:
            hdrs = [x for k, v in static[2].items() for x in ("-H", f"{k}: {v}")]
            self.wrk_proc = subprocess.Popen([WRK, "-t2", f"-c{self.wrk}", "-d120s", *hdrs,
                                              rig.httpd.url(static[1])],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             stdin=subprocess.DEVNULL)
        return self

    def stop(self, timeout: float = 40.0):
        self.stopping.set()
        if self.wrk_proc is not None:
            procs.terminate(self.wrk_proc)
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        left = [t for t in self.threads if t.is_alive()]
        if left:
            raise AssertionError(f"{len(left)} load threads still running {timeout} s after stop")


class Rig:
    def __init__(self, workdir: str, master_keys: str, mode: str = "work"):
        if mode not in MODES:
            raise ValueError(mode)
        self.workdir, self.mode = workdir, mode
        self.cores = os.path.join(workdir, "cores")
        os.makedirs(self.cores, exist_ok=True)
        os.chmod(self.cores, 0o777)          # children dump as www-data
        keys = os.path.join(workdir, "keys")
        shutil.copytree(master_keys, keys)
        self.entra = FakeEntra(os.path.join(workdir, "entra"), keys_dir=keys)
        self.fake_ok = FakeIdentity(os.path.join(workdir, "id-ok"))
        self.fake_hang = FakeIdentity(os.path.join(workdir, "id-hang"))
        self.backend = EchoServer()
        self.backend.server.handle_error = lambda *a: None   # clients cut off by the stops
        self.httpd = None
        self.token = None

    def start(self) -> "Rig":
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=3) as ex:
                for f in [ex.submit(x.start) for x in (self.entra, self.fake_ok, self.fake_hang)]:
                    f.result()
            self.fake_hang.mode("imds", "hang:60")
            self.backend.start()
            self.token = et.mint(self.entra.key("rsa1"), et.v2_claims(), alg="RS256")
            self.httpd = OutboundHttpd(os.path.join(self.workdir, "httpd"), server_conf=self._server_conf(),
                                       locations=self._locations(), with_module=self.mode != "none")
            for p in ("any", "static"):
                self.httpd.add_file(f"{p}/ok.txt")
        except BaseException:
            self.close()
            raise
        return self

    def _server_conf(self) -> str:
        out = f'CoreDumpDirectory "{self.cores}"\n'
        if self.mode != "none":
            out += (conformance.server_conf(self.entra.authority) + "\n"
                    + managed("ok", self.fake_ok) + "\n" + managed("stuck", self.fake_hang) + "\n"
                    + "EntraTokenTimeout 30\n")
        return out

    def _locations(self) -> str:
        plain = f"<Location /plain/>\n    ProxyPass {self.backend.url('plain')}\n</Location>\n"
        if self.mode == "none":
            return plain
        return "\n".join([
            plain,
            conformance.location("/any"),
            conformance.location("/in/", extra=f"ProxyPass {self.backend.url('in')}"),
            route("out", self.backend, f"EntraProxyToken {AUD} identity=ok"),
            route("stuck", self.backend, f"EntraProxyToken {AUD} identity=stuck"),
        ])

    def start_httpd(self):
        with core_limit():
            self.httpd.start()

    def close(self):
        if self.httpd is not None and self.httpd.proc is not None:
            self.httpd.stop(check_sanitizers=False)
        with contextlib.suppress(Exception):
            self.fake_hang.mode("imds", None)
            self.fake_hang.release()
        for f in (self.fake_hang, self.fake_ok, self.entra):
            f.stop()
        if self.backend.thread.is_alive():
            self.backend.stop()

    # ------------------------------------------------------------ crash evidence
    def core_files(self) -> list[str]:
        return sorted(c for c in glob.glob(os.path.join(self.cores, "core*")) if not c.endswith(".txt"))

    def keep_cores(self, tag: str):
        """Rename a fresh `core` (core_pattern "core" has no pid) so the next one does not overwrite it."""
        path = os.path.join(self.cores, "core")
        if os.path.exists(path):
            os.rename(path, f"{path}.{tag}.{time.time_ns()}")


def backtrace(core: str, timeout: float = 120) -> str:
    """gdb's backtrace of the crashing thread, then a short one of every thread."""
    p = subprocess.run([GDB, "-batch", "-nx", "-q", "-ex", "set pagination off", "-ex", "bt 40",
                        "-ex", "thread apply all bt 15", "/usr/sbin/apache2", core],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.stdout + p.stderr


def crashing_thread(bt: str) -> str:
    """Frames of the thread that faulted.

    httpd's fatal-signal handler (sig_coredump) re-raises the signal with kill(getpid()),
    which the kernel hands to any thread that does not block it, so the thread gdb shows
    first is often an innocent one (a worker, or the module's upkeep thread asleep). The
    faulting thread is the one with `<signal handler called>` in its stack: its frames
    from there on. Without such a frame, the first thread's."""
    threads = re.split(r"\n(?=Thread \d+ )", bt)
    for t in threads[1:]:
        frames = [line for line in t.splitlines() if line.startswith("#")]
        for i, f in enumerate(frames):
            if "<signal handler called>" in f:
                return "\n".join([t.splitlines()[0]] + frames[i:])
    out = []
    for line in threads[0].splitlines():   # gdb prints frame #0 once on loading the core, once in bt
        if (line.startswith("#") or "signal" in line) and (not out or line != out[-1]):
            out.append(line)
    return "\n".join(out)


def is_httpd_stop_race(bt: str) -> bool:
    """The crash is httpd's forced-stop race: the faulting thread is in APR's socket code
    (apr_os_sock_get, apr_socket_timeout_set, apr_socket_close...) called by the event MPM
    alone (close_worker_sockets -> close_socket_nonblocking_, under
    signal_threads(ST_UNGRACEFUL) in child_main), with no module frame."""
    frames = [f for f in crashing_thread(bt).splitlines()
              if f.startswith("#") and "<signal handler called>" not in f]
    apr = [f for f in frames if "libapr-1.so" in f]
    rest = frames[len(apr):]
    return (bool(apr) and bool(rest) and frames[:len(apr)] == apr
            and any(re.search(r"\bapr_(os_sock_get|socket_\w+)\b", f) for f in apr)
            and all("mod_mpm_event.so" in f or "ap_run_mpm" in f or " main (" in f for f in rest))


def run(rig: Rig, kind: str, cycles: int, warm: float = 1.5, seed: int = 0, hammer: int = 0,
        wrk: int = 0, hold: float = 4.0) -> dict:
    """`cycles` stops (or graceful restarts) of kind under load; what crashed, with backtraces."""
    sig = KINDS[kind]
    t0 = time.monotonic()
    log_mark = len(rig.httpd.error_log_text())
    cores_before = set(rig.core_files())
    san_before = set(rig.httpd.sanitizer_reports())
    counts: dict[str, int] = {}
    stop_seconds = []
    parent_rcs = []   # apache2's own exit status after each stop: 0, or -N for signal N

    def add(load):
        for k, v in load.counts.items():
            counts[k] = counts.get(k, 0) + v

    if kind == "usr1":
        rig.start_httpd()
        load = Load(rig, seed, hammer, wrk, hold).start()
        try:
            for _ in range(cycles):
                time.sleep(warm)
                m0 = time.monotonic()
                with core_limit():
                    rig.httpd.graceful()
                stop_seconds.append(time.monotonic() - m0)
                rig.keep_cores(str(len(stop_seconds)))
        finally:
            load.stopping.set()   # no new requests: a graceful stop waits for open connections
            rig.httpd.stop(check_sanitizers=False)   # before joining: the stop ends held requests
            parent_rcs.append(rig.httpd.returncode)
            load.stop()
            add(load)
            rig.keep_cores("last")
    else:
        for i in range(cycles):
            rig.start_httpd()
            load = Load(rig, seed + i, hammer, wrk, hold).start()
            try:
                time.sleep(warm)
                if sig == signal.SIGWINCH:
                    # Requests in flight stay in flight; clients send no new ones (a graceful
                    # stop would otherwise wait for their open keep-alive connections).
                    load.stopping.set()
                m0 = time.monotonic()
                rig.httpd.stop(sig=sig, check_sanitizers=False)
                stop_seconds.append(time.monotonic() - m0)
                parent_rcs.append(rig.httpd.returncode)
            finally:
                load.stop()
                add(load)
                if rig.httpd.proc is not None:
                    rig.httpd.stop(check_sanitizers=False)
                rig.keep_cores(str(i))
    log = rig.httpd.error_log_text()[log_mark:]
    cores = [c for c in rig.core_files() if c not in cores_before]
    bts = {c: backtrace(c) for c in cores}
    return {
        "mode": rig.mode, "kind": kind, "cycles": cycles, "log": log,
        "crash_lines": checks.child_crashes(log), "cores": cores, "backtraces": bts,
        "entra_in_crash": [c for c, bt in bts.items() if ENTRA_FRAME_RE.search(crashing_thread(bt))],
        "other_crash": [c for c, bt in bts.items() if not is_httpd_stop_race(bt)],
        "parent_rcs": parent_rcs,
        "counts": counts, "stop_seconds": stop_seconds, "seconds": time.monotonic() - t0,
        "sanitizer": [r for r in rig.httpd.sanitizer_reports() if r not in san_before],
    }


def summary(res: dict) -> str:
    slow = max(res["stop_seconds"] or [0])
    out = (f"{res['mode']:5} {res['kind']:5} cycles={res['cycles']:3} crash_lines={len(res['crash_lines'])} "
           f"cores={len(res['cores'])} entra_in_crash={len(res['entra_in_crash'])} "
           f"not_httpd_race={len(res['other_crash'])} "
           f"parent_crashes={sum(1 for rc in res['parent_rcs'] if rc and rc < 0)} "
           f"longest_stop={slow:.1f}s total={res['seconds']:.0f}s\n    load: "
           + ", ".join(f"{k}={v}" for k, v in sorted(res["counts"].items())))
    for line in res["crash_lines"]:
        out += "\n    " + line
    for core, bt in res["backtraces"].items():
        out += f"\n    == {core}\n" + "\n".join("      " + x for x in crashing_thread(bt).splitlines())
    return out


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--modes", default="work,idle,none")
    ap.add_argument("--kinds", default="term,winch,usr1")
    ap.add_argument("--warm", type=float, default=1.5, help="seconds of load before each signal")
    ap.add_argument("--hammer", type=int, default=0, help="extra threads of back-to-back short requests")
    ap.add_argument("--wrk", type=int, default=0, help="connections of a wrk load on the static route")
    ap.add_argument("--hold", type=float, default=4.0, help="seconds the backend holds long requests "
                    "(modes idle and none; work holds them on the hanging identity endpoint)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (cores, logs)")
    a = ap.parse_args(argv)
    cycles = max(1, min(a.cycles, 500))
    print(f"core_pattern: {core_pattern()!r}; MPM: {os.environ.get('ENTRA_MPM', 'event')}", flush=True)
    root = tempfile.mkdtemp(prefix="entra-teardown-")
    os.chmod(root, 0o755)
    keys = os.path.join(root, "master-keys")
    ensure_keys(keys)
    crashed = 0
    try:
        for mode in a.modes.split(","):
            for kind in a.kinds.split(","):
                d = os.path.join(root, f"{mode}-{kind}")
                os.makedirs(d)
                os.chmod(d, 0o755)
                rig = Rig(d, keys, mode).start()
                try:
                    res = run(rig, kind, cycles, warm=a.warm, hammer=max(0, min(a.hammer, 64)),
                              wrk=max(0, min(a.wrk, 256)), hold=max(0.0, min(a.hold, 30.0)))
                finally:
                    rig.close()
                crashed += len(res["cores"]) + len(res["crash_lines"]) + \
                    sum(1 for rc in res["parent_rcs"] if rc and rc < 0)
                print(summary(res), flush=True)
                for core, bt in res["backtraces"].items():
                    with open(core + ".bt.txt", "w") as f:
                        f.write(bt)
    finally:
        if a.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
