"""Run the real Debian apache2 binary with the built mod_entra, from a generated config.

One Httpd object = one server root in its own directory (config, logs, htdocs,
runtime files). Started with -DFOREGROUND in its own process group; stop()
sends SIGWINCH (graceful-stop) to that process and, if it is still there after a bound, SIGKILL
to its group.

ENTRA_SANITIZE=1 preloads libasan + libubsan into apache2 and collects their
reports; stop() returns any report that appeared.
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import time

import requests

from checks import sanitizer_lines

APACHE = "/usr/sbin/apache2"
MODDIR = "/usr/lib/apache2/modules"
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
# `make test-e2e` passes ENTRA_MODULE (e.g. build/san/mod_entra.so for SANITIZE=1).
MODULE_PATH = os.environ.get("ENTRA_MODULE") or os.path.join(REPO, "mod_entra", ".libs", "mod_entra.so")
RUN_USER = "www-data"

# ENTRA_MPM=event|worker|prefork picks httpd's MPM (make test-mpm runs a third of the suite
# under worker and prefork).
MPM = os.environ.get("ENTRA_MPM", "event")
if MPM not in ("event", "worker", "prefork"):
    raise RuntimeError(f"ENTRA_MPM={MPM!r}: use event, worker or prefork")
BASE_MODULES = [
    f"mpm_{MPM}", "authn_core", "authz_core", "authz_user", "authz_host", "headers",
    "socache_shmcb", "proxy", "proxy_http", "mime", "env", "setenvif",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def module_missing_message() -> str:
    return (f"mod_entra module not found at {MODULE_PATH}: run make first "
            f"(cd {REPO} && make; for sanitizer runs: make SANITIZE=1 test-e2e)")


def sanitizer_env(logdir: str) -> dict:
    """Environment for running apache2 with ASan/UBSan preloaded (ENTRA_SANITIZE=1)."""
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        if not path or not os.path.isabs(path) or not os.path.exists(path):
            raise RuntimeError(f"ENTRA_SANITIZE=1 but gcc cannot find {name}")
        libs.append(os.path.realpath(path))
    return {
        "LD_PRELOAD": " ".join(libs),
        # use_sigaltstack=0: with the runtime preloaded into apache2, ASan reports a false
        # stack-buffer-overflow in its own sigaltstack teardown when a worker thread exits.
        "ASAN_OPTIONS": f"detect_leaks=0:abort_on_error=0:use_sigaltstack=0:log_path={logdir}/asan",
        "UBSAN_OPTIONS": f"print_stacktrace=1:log_path={logdir}/ubsan",
    }


def sanitize_enabled() -> bool:
    return os.environ.get("ENTRA_SANITIZE") == "1"


class Httpd:
    def __init__(self, workdir: str, server_conf: str = "", locations: str = "",
                 backend_port: int | None = None, module_path: str = MODULE_PATH,
                 log_level: str = "info entra:debug proxy:warn proxy_http:warn",
                 with_module: bool = True):
        self.workdir = workdir
        self.with_module = with_module   # False: the same server without LoadModule entra_module
        self.server_conf = server_conf
        self.locations = locations
        self.backend_port = backend_port
        self.module_path = module_path
        self.log_level = log_level
        self.port = None
        self.proc = None
        self.returncode = None
        self.san_dir = os.path.join(workdir, "sanitizer")
        self._conf_n = 0
        for d in ("logs", "run", "htdocs", "conf"):
            os.makedirs(os.path.join(workdir, d), exist_ok=True)
        os.makedirs(self.san_dir, exist_ok=True)
        # Children run as www-data: they must reach htdocs and write sanitizer logs.
        os.chmod(workdir, 0o755)
        os.chmod(os.path.join(workdir, "htdocs"), 0o755)
        os.chmod(os.path.join(workdir, "logs"), 0o755)
        os.chmod(os.path.join(workdir, "run"), 0o755)
        os.chmod(self.san_dir, 0o777)
        self.session = requests.Session()
        self.session.trust_env = False

    # ---------------------------------------------------------------- content
    def add_file(self, relpath: str, content: str = "ok\n"):
        path = os.path.join(self.workdir, "htdocs", relpath.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        d = os.path.dirname(path)
        while d.startswith(os.path.join(self.workdir, "htdocs")):
            os.chmod(d, 0o755)
            d = os.path.dirname(d)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, 0o644)

    # ---------------------------------------------------------------- config
    def config_text(self, server_conf: str | None = None, locations: str | None = None,
                    port: int | None = None, with_module: bool | None = None) -> str:
        w = self.workdir
        with_module = self.with_module if with_module is None else with_module
        server_conf = self.server_conf if server_conf is None else server_conf
        locations = self.locations if locations is None else locations
        lines = [
            f'ServerRoot "{w}"',
            "ServerName 127.0.0.1",
            f"Listen 127.0.0.1:{port or self.port or 1}",
            f'PidFile "{w}/run/httpd.pid"',
            f'DefaultRuntimeDir "{w}/run"',
            f"User {RUN_USER}",
            f"Group {RUN_USER}",
            f'ErrorLog "{w}/logs/error.log"',
            # Per-module levels name modules: entra's only when it is loaded.
            "LogLevel " + " ".join(w for w in self.log_level.split()
                                   if with_module or not w.startswith("entra:")),
        ]
        lines += [f"LoadModule {m}_module {MODDIR}/mod_{m}.so" for m in BASE_MODULES]
        if with_module:
            lines.append(f'LoadModule entra_module "{self.module_path}"')
        if MPM == "prefork":
            # Single-threaded children: as many processes as the threaded MPMs have threads.
            lines += ["StartServers 2", "MinSpareServers 2", "MaxSpareServers 20",
                      "ServerLimit 20", "MaxRequestWorkers 20"]
        else:
            lines += ["StartServers 2", "ServerLimit 2", "ThreadLimit 10", "ThreadsPerChild 10",
                      "MaxRequestWorkers 20", "MinSpareThreads 5", "MaxSpareThreads 40"]
        lines += [
            "KeepAlive On",
            "GracefulShutdownTimeout 5",
            "Timeout 60",
            "TypesConfig /etc/mime.types",
            'LogFormat "%h %l %u %t \\"%m %U %H\\" %>s %b pid=%P test=%{X-Test-Id}i" entratest',
            f'CustomLog "{w}/logs/access.log" entratest',
            f'DocumentRoot "{w}/htdocs"',
            f'<Directory "{w}/htdocs">',
            "  Options None",
            "  AllowOverride None",
            "  Require all granted",
            "</Directory>",
            # What httpd knows after authentication, made visible to the echo backend.
            'RequestHeader set X-Test-Remote-User "expr=%{REMOTE_USER}"',
            'RequestHeader set X-Test-Auth-Type "expr=%{AUTH_TYPE}"',
        ]
        for var in ("ENTRA_OID", "ENTRA_AZP", "ENTRA_ROLES", "ENTRA_TID", "ENTRA_SUB", "ENTRA_APPID"):
            suffix = var.split("_", 1)[1].capitalize()
            lines.append(f'RequestHeader set X-Test-Env-{suffix} "expr=%{{reqenv:{var}}}"')
        if self.backend_port:
            lines += [
                "ProxyRequests Off",
                f'ProxyPassMatch "^/([A-Za-z0-9_.-]+)/echo$" "http://127.0.0.1:{self.backend_port}/echo/$1"',
            ]
        text = "\n".join(lines) + "\n\n" + server_conf + "\n\n" + locations + "\n"
        return text

    def write_config(self, name: str = "httpd.conf", **kw) -> str:
        path = os.path.join(self.workdir, "conf", name)
        with open(path, "w") as f:
            f.write(self.config_text(**kw))
        return path

    def config_test(self, locations: str = "", server_conf: str | None = None,
                    with_module: bool | None = None) -> tuple[int, str]:
        """Run `apache2 -t` on the base config plus the given text; return (rc, output)."""
        self._conf_n += 1
        path = self.write_config(name=f"test-{self._conf_n}.conf", server_conf=server_conf,
                                 locations=locations, port=free_port(), with_module=with_module)
        env = dict(os.environ)
        if sanitize_enabled():
            env.update(sanitizer_env(self.san_dir))
        seen = set(self.sanitizer_reports())
        p = subprocess.run([APACHE, "-t", "-f", path], capture_output=True, text=True, timeout=60,
                           env=env, stdin=subprocess.DEVNULL)
        out = (p.stdout or "") + (p.stderr or "")
        new = [r for r in self.sanitizer_reports() if r not in seen] + sanitizer_lines(out)
        if new:
            raise AssertionError("sanitizer report from apache2 -t:\n" + "\n".join(new))
        if p.returncode < 0:
            raise AssertionError(f"apache2 -t was killed by signal {-p.returncode}:\n{out}")
        return p.returncode, out

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 30.0) -> "Httpd":
        if not os.path.exists(self.module_path):
            raise RuntimeError(module_missing_message())
        self._module_mtime = os.stat(self.module_path).st_mtime_ns
        last_err = None
        for _attempt in range(3):
            self.port = free_port()
            conf = self.write_config()
            env = dict(os.environ)
            if sanitize_enabled():
                env.update(sanitizer_env(self.san_dir))
            self._out = open(os.path.join(self.workdir, "logs", "stdout.log"), "ab")
            log_mark = self._error_log_size()
            self.proc = subprocess.Popen([APACHE, "-f", conf, "-DFOREGROUND"], env=env,
                                         stdout=self._out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=self.workdir)   # a parent's core lands here
            ok, last_err = self._wait_ready(timeout, log_mark)
            if ok:
                return self
            self.stop(check_sanitizers=False)
            if "Address already in use" not in (last_err or ""):
                break
        raise RuntimeError(f"apache2 did not start: {last_err}")

    def _error_log_size(self) -> int:
        try:
            return os.path.getsize(os.path.join(self.workdir, "logs", "error.log"))
        except OSError:
            return 0

    def _wait_ready(self, timeout: float, log_mark: int):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, f"exited with {self.proc.returncode}: " + self._startup_output(log_mark)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                r = self.session.get(self.url("/__ready"), timeout=5)
                if r.status_code in (200, 404):
                    return True, None
            except (OSError, requests.RequestException):
                pass
            time.sleep(0.1)
        return False, "timed out waiting for the port: " + self._startup_output(log_mark)

    def _startup_output(self, log_mark: int) -> str:
        out = ""
        try:
            with open(os.path.join(self.workdir, "logs", "stdout.log"), "rb") as f:
                out += f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            pass
        try:
            with open(os.path.join(self.workdir, "logs", "error.log"), "rb") as f:
                f.seek(log_mark)
                out += f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            pass
        return out

    def stop(self, timeout: float = 20.0, check_sanitizers: bool = True,
             sig: int = signal.SIGWINCH) -> list[str]:
        """Stop apache2 with `sig` (default SIGWINCH, graceful-stop as `apachectl -k
        graceful-stop` and Debian's apache2.service do; httpd escalates it to a forced stop
        after GracefulShutdownTimeout); return sanitizer reports that appeared (empty list if
        none).

        Not SIGTERM by default: a forced stop of the event MPM can kill a child with SIGSEGV.
        The child's main thread, in close_worker_sockets (signal_threads(ST_UNGRACEFUL)),
        reads the sockets of busy workers from their transaction pools while other MPM
        threads destroy those pools, and faults in apr_os_sock_get. That race is httpd
        2.4's own: t/lib/teardown.py reproduces it under load at the same rate without
        mod_entra loaded (10 of 40 forced stops) as with it (10 of 40), every core with the
        same backtrace and no module frame; t/test_teardown.py keeps it as a test (graceful
        paths: no crash; SIGTERM: any crash must be that one; the parent always exits 0).
        Tests of the forced stop pass sig=signal.SIGTERM."""
        self.session.close()  # an idle keep-alive connection would hold a graceful stop
        if self.proc is not None:
            pid = self.proc.pid
            if self.proc.poll() is None:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            # The group is the one apache2 leads (start_new_session): make sure no child lingers.
            for _ in range(50):
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.wait(timeout=5)
            self.returncode = self.proc.returncode   # the parent's: -11 if it crashed
            self.proc = None
            self._out.close()
        self.session.close()
        return self.sanitizer_reports() if check_sanitizers else []

    def module_rebuilt(self) -> bool:
        """True if the module file changed after apache2 loaded it (a `make` during the run)."""
        try:
            return os.stat(self.module_path).st_mtime_ns != getattr(self, "_module_mtime", None)
        except OSError:
            return True

    def sanitizer_reports(self) -> list[str]:
        reports = []
        for path in sorted(glob.glob(os.path.join(self.san_dir, "*"))):
            try:
                with open(path, "r", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            if text.strip():
                reports.append(f"== {path}\n{text[:20000]}")
        return reports

    def restart(self, server_conf: str | None = None, locations: str | None = None) -> "Httpd":
        self.stop()
        if server_conf is not None:
            self.server_conf = server_conf
        if locations is not None:
            self.locations = locations
        self.session = requests.Session()
        self.session.trust_env = False
        return self.start()

    def graceful(self, timeout: float = 30.0) -> "Httpd":
        """What `apachectl -k graceful` does (SIGUSR1 to the parent, which Debian's logrotate
        sends every night); returns once the new generation answers."""
        marker = "resuming normal operations"
        mark = self._error_log_size()    # only what comes after: the log may be large (make soak)
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"apache2 exited during a graceful restart: {self.error_log_tail()}")
            if marker in self.error_log_text(since=mark):
                ok, err = self._wait_ready(max(1.0, deadline - time.monotonic()), self._error_log_size())
                if ok:
                    return self
                raise RuntimeError(f"apache2 did not answer after a graceful restart: {err}")
            time.sleep(0.1)
        raise RuntimeError("timed out waiting for the graceful restart: " + self.error_log_tail())

    # ---------------------------------------------------------------- access
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def error_log_text(self, since: int = 0) -> str:
        """The error log (from byte offset `since`)."""
        try:
            with open(os.path.join(self.workdir, "logs", "error.log"), "r", errors="replace") as f:
                f.seek(since)
                return f.read()
        except OSError:
            return ""

    def access_log_text(self) -> str:
        try:
            with open(os.path.join(self.workdir, "logs", "access.log"), "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stderr_text(self) -> str:
        """What apache2 wrote to stderr before (or instead of) its ErrorLog."""
        try:
            with open(os.path.join(self.workdir, "logs", "stdout.log"), "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def error_log_tail(self, n: int = 30) -> str:
        return "\n".join(self.error_log_text().splitlines()[-n:])


def remove_tree(path: str):
    shutil.rmtree(path, ignore_errors=True)
