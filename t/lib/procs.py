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


def socket_inodes_listening(pid: int) -> set:
    """Inodes of the TCP sockets `pid` has in LISTEN state (from /proc/<pid>/net/tcp{,6})."""
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A":   # TCP_LISTEN
                        inodes.add(cols[9])
        except OSError:
            pass
    return inodes


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


def terminate(proc: subprocess.Popen, timeout: float = 5.0):
    """SIGTERM a process we started, SIGKILL it if it is still there after `timeout`; reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
