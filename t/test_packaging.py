"""`make install` honours DESTDIR, and `make deb` builds a libapache2-mod-entra package with
the module, its a2enmod files, the Lua module and entra-token. (.ci/run also installs the
package on the machine, runs `a2enmod entra` and `apache2ctl -t`.)"""

import os
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTIARCH = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
FILES = {
    "usr/lib/apache2/modules/mod_entra.so": 0o644,
    "etc/apache2/mods-available/entra.load": 0o644,
    "etc/apache2/mods-available/entra.conf": 0o644,
    f"usr/lib/{MULTIARCH}/lua/5.4/entra.so": 0o644,
    "usr/bin/entra-token": 0o755,
}


def _make(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("SANITIZE", "MAKEFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"make {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def _check_tree(root):
    for rel, mode in FILES.items():
        path = os.path.join(root, rel)
        assert os.path.isfile(path), f"{rel} missing under {root}"
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, f"{rel}: mode {oct(os.stat(path).st_mode)}"
    load = open(os.path.join(root, "etc/apache2/mods-available/entra.load")).read()
    assert "LoadModule entra_module /usr/lib/apache2/modules/mod_entra.so" in load


def test_install_honours_destdir(tmp_path):
    dest = tmp_path / "root"
    _make("install", f"DESTDIR={dest}")
    _check_tree(str(dest))
    # Nothing but the five files (and their directories) is installed.
    found = {os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs}
    assert found == set(FILES), found


@pytest.mark.skipif(not shutil.which("dpkg-buildpackage"), reason="dpkg-dev is not installed")
@pytest.mark.skipif(os.environ.get("ENTRA_SANITIZE") == "1",
                    reason="the package never contains the sanitizer build; the plain run builds it")
def test_deb_package_contents(tmp_path):
    _make("deb")
    debs = [f for f in os.listdir(os.path.join(ROOT, "build/deb"))
            if f.startswith("libapache2-mod-entra_") and f.endswith(".deb")]
    assert len(debs) == 1, debs
    deb = os.path.join(ROOT, "build/deb", debs[0])
    field = lambda name: subprocess.run(["dpkg-deb", "-f", deb, name], capture_output=True,
                                        text=True, check=True).stdout.strip()
    assert field("Package") == "libapache2-mod-entra"
    depends = field("Depends")
    for dep in ("apache2-bin", "libjansson4", "libcurl4", "libssl3"):
        assert dep in depends, depends
    subprocess.run(["dpkg-deb", "-x", deb, str(tmp_path / "x")], check=True)
    _check_tree(str(tmp_path / "x"))
    ctrl = tmp_path / "ctrl"
    subprocess.run(["dpkg-deb", "-e", deb, str(ctrl)], check=True)
    conffiles = (ctrl / "conffiles").read_text().split()
    assert "/etc/apache2/mods-available/entra.conf" in conffiles, conffiles
    assert "/etc/apache2/mods-available/entra.load" in conffiles, conffiles
