"""Processes of a running apache2, read from /proc: its children, and how long they take to go."""

import os
import subprocess
import time


def _status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def children(ppid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `ppid`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _status(int(name))
        if st.get("PPid") == str(ppid) and not st.get("State", "Z").startswith("Z"):
            out.append(int(name))
    return sorted(out)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; its parent reaps it later)."""
    st = _status(pid)
    return bool(st) and not st.get("State", "Z").startswith("Z")


def wait_gone(pids, timeout: float, step: float = 0.02) -> float:
    """Seconds until none of `pids` is alive; raises AssertionError after `timeout`."""
    t0 = time.monotonic()
    while True:
        left = [p for p in pids if alive(p)]
        if not left:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"processes {left} still alive {timeout:.1f} s later")
        time.sleep(step)


def open_fds(pid: int) -> dict:
    """{fd: link target} of a process."""
    out = {}
    d = f"/proc/{pid}/fd"
    for fd in os.listdir(d):
        try:
            out[int(fd)] = os.readlink(os.path.join(d, fd))
        except OSError:
            pass
    return out


def tcp_sockets(pid: int) -> dict:
    """{inode: (local port, remote port, state)} of the TCP sockets in `pid`'s network namespace
    (from /proc/<pid>/net/tcp{,6}); state is the kernel's hex code, "0A" for LISTEN."""
    out = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    out[cols[9]] = (int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16),
                                    cols[3])
        except OSError:
            pass
    return out


def socket_inodes_listening(pid: int) -> set:
    """Inodes of the TCP sockets `pid` has in LISTEN state (from /proc/<pid>/net/tcp{,6})."""
    return {ino for ino, (_, _, state) in tcp_sockets(pid).items() if state == "0A"}


def wait_until_children(ppid: int, timeout: float, step: float = 0.1) -> list[int]:
    """The children of `ppid` once there is at least one; raises after `timeout`."""
    t0 = time.monotonic()
    while True:
        c = children(ppid)
        if c:
            return c
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no child of {ppid} after {timeout:.1f} s")
        time.sleep(step)


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of /proc/<pid>/status in KiB (VmRSS; VmHWM, the peak resident size so
    far), 0 once the process is gone."""
    v = _status(pid).get(field)
    return int(v.split()[0]) if v else 0


def connected_to(pid: int, port: int) -> bool:
    """`pid` holds an established TCP connection to 127.0.0.1:`port` (from /proc/<pid>/net/tcp,
    matched against the socket inodes among its fds)."""
    try:
        mine = {t[len("socket:["):-1] for t in open_fds(pid).values() if t.startswith("socket:[")}
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "01" and cols[2] == f"0100007F:{port:04X}" and cols[9] in mine:
                    return True
    except OSError:
        pass
    return False


def terminate(proc: subprocess.Popen, timeout: float = 5.0):
    """SIGTERM a process we started, SIGKILL it if it is still there after `timeout`; reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
