"""Fixtures for mod_entra's end-to-end tests.

Run: cd <repo> && make && /usr/bin/python3 -m pytest -q t/
     ENTRA_SANITIZE=1 ...  preload ASan/UBSan into apache2 and fail on any report
     ENTRA_KEEP=1 ...      keep the temporary server roots (printed at the end)
"""

import os
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

from fake_entra_client import ensure_keys  # noqa: E402
from httpd import MODULE_PATH, module_missing_message, remove_tree  # noqa: E402
from stack import PROBLEMS, Stack, finish_stack  # noqa: E402


@pytest.fixture(scope="session")
def test_root():
    d = tempfile.mkdtemp(prefix="entra-t-")
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("ENTRA_KEEP") == "1":
        print(f"\nkept test directories under {d}")
    else:
        remove_tree(d)


@pytest.fixture(scope="session")
def master_keys(test_root):
    """The default key set, generated once per session (never in the repo)."""
    d = os.path.join(test_root, "master-keys")
    ensure_keys(d)
    return d


@pytest.fixture(scope="session")
def module_so():
    if not os.path.exists(MODULE_PATH):
        pytest.fail(module_missing_message(), pytrace=False)
    return MODULE_PATH


@pytest.fixture(scope="session", autouse=True)
def _session_problems():
    """Fail the session if any stack reported sanitizer output or a token in its log."""
    yield
    if PROBLEMS:
        pytest.fail("problems found while tearing down servers:\n" + "\n".join(PROBLEMS), pytrace=False)


def new_workdir(test_root: str, name: str) -> str:
    d = tempfile.mkdtemp(prefix=name + "-", dir=test_root)
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="session")
def make_stack(module_so, test_root, master_keys):
    """Factory: make_stack(name, **start_kwargs) -> started Stack; close it with finish_stack()."""

    def factory(name: str = "stack", tls: dict | None = None, **start_kwargs) -> Stack:
        s = Stack(new_workdir(test_root, name), master_keys, tls=tls)
        return s.start(**start_kwargs)

    return factory


@pytest.fixture(scope="module")
def stack(make_stack):
    """The conformance layout (see t/lib/conformance.py), shared by one test module."""
    s = make_stack("conformance")
    yield s
    finish_stack(s)
