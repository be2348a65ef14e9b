"""Real redis-server and memcached processes for the networked EntraCache tests, on random
free loopback ports, without persistence, plus tiny protocol clients that can list, read,
write and delete every entry (what anyone reaching the cache server could do).

    srv = NetCache("redis", workdir).start()    # or "memcache"
    srv.spec                                    # "redis:127.0.0.1:PORT" for EntraCache
    srv.items()                                 # {key(bytes): value(bytes)}
    srv.set(key, value); srv.stop()
"""

import os
import shutil
import socket
import subprocess
import time
import urllib.parse

from httpd import free_port

BINARIES = {"redis": "/usr/bin/redis-server", "memcache": "/usr/bin/memcached"}
MODULES = {"redis": "socache_redis", "memcache": "socache_memcache"}


def missing(kind: str) -> str | None:
    """Why this kind of server cannot run here, or None."""
    path = BINARIES[kind]
    if not os.path.exists(path):
        pkg = "redis-server" if kind == "redis" else "memcached"
        return f"{path} is not installed (apt-get install -y {pkg})"
    return None


class NetCache:
    def __init__(self, kind: str, workdir: str):
        self.kind = kind
        self.workdir = workdir
        self.port = None
        self.proc = None

    @property
    def spec(self) -> str:
        return f"{self.kind}:127.0.0.1:{self.port}"

    def load_module(self) -> str:
        m = MODULES[self.kind]
        return f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so\n"

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 10.0, port: int | None = None) -> "NetCache":
        """Starts the server (on `port`, e.g. to bring it back after stop(), else a free one)."""
        os.makedirs(self.workdir, exist_ok=True)
        self.port = port or free_port()
        if self.kind == "redis":
            cmd = [BINARIES["redis"], "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--daemonize", "no",
                   "--dir", self.workdir, "--logfile", os.path.join(self.workdir, "redis.log")]
        else:
            cmd = [BINARIES["memcache"], "-l", "127.0.0.1", "-p", str(self.port), "-U", "0",
                   "-m", "16", "-u", "nobody"]
        self._log = open(os.path.join(self.workdir, f"{self.kind}.out"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {self.proc.returncode}")
            try:
                self.ping()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{cmd[0]} did not answer on port {self.port}")

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
            self._log.close()

    def remove(self):
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---------------------------------------------------------------- protocol
    def _conn(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def _redis(self, *args: bytes):
        with self._conn() as s:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            return _resp(f)

    def _mc(self, line: bytes, data: bytes | None = None, end=(b"END\r\n",)) -> bytes:
        with self._conn() as s:
            s.sendall(line + b"\r\n" + (data + b"\r\n" if data is not None else b""))
            buf = b""
            deadline = time.monotonic() + 5
            while not any(buf.endswith(e) for e in end) and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf

    def ping(self):
        if self.kind == "redis":
            assert self._redis(b"PING") == b"PONG"
        else:
            assert self._mc(b"version", end=(b"\r\n",)).startswith(b"VERSION")

    def keys(self) -> list[bytes]:
        if self.kind == "redis":
            return sorted(self._redis(b"KEYS", b"*"))
        # The LRU crawler may miss items stored a moment ago: list until two dumps agree.
        last = None
        for _ in range(15):
            keys = self._metadump()
            if keys and keys == last:
                break
            last = keys
            time.sleep(0.2)
        return keys

    def _metadump(self) -> list[bytes]:
        out = self._mc(b"lru_crawler metadump all")
        keys = []
        for line in out.split(b"\n"):   # metadump ends its lines with \n alone
            if line.startswith(b"key="):
                k = line.split(b" ", 1)[0][4:]
                keys.append(urllib.parse.unquote_to_bytes(k))
        return sorted(keys)

    def get(self, key: bytes) -> bytes | None:
        if self.kind == "redis":
            return self._redis(b"GET", key)
        out = self._mc(b"get " + key)
        if not out.startswith(b"VALUE "):
            return None
        head, rest = out.split(b"\r\n", 1)
        n = int(head.split()[3])
        return rest[:n]

    def set(self, key: bytes, value: bytes, ttl: int = 3600):
        if self.kind == "redis":
            assert self._redis(b"SETEX", key, str(ttl).encode(), value) == b"OK"
        else:
            out = self._mc(b"set %s 0 %d %d" % (key, ttl, len(value)), value, end=(b"\r\n",))
            assert out.startswith(b"STORED"), out

    def items(self) -> dict:
        return {k: self.get(k) for k in self.keys()}


def _resp(f):
    line = f.readline()
    if not line:
        raise OSError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        return [_resp(f) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")
