"""The project as a user installs it: a wheel built from the checkout, installed into a
fresh virtual environment outside it.

The fresh environment gets its dependencies (doit, zstandard, ...) from the test venv's
site-packages through a plain path line in a .pth file: that adds the directory to sys.path
without running the .pth files inside it, so the checkout's editable install stays out and
`pipeline` comes from the wheel alone (the test asserts where it was imported from).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from tests.support.paths import ROOT


def build_wheel(out: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the checkout (an isolated build, as pip and pipx
    do; setuptools writes build/ into the tree it builds, so not into the checkout)."""
    src = out / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "artifacts", "build", "*.egg-info", "__pycache__", ".doit.db*",
        "tests", ".*_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--disable-pip-version-check", "-w", str(out), str(src)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("cros_guest_pipeline-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A new venv holding the wheel; returns its bin/ directory."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "-q", "--no-deps", "--no-index", "--disable-pip-version-check",
                           str(wheel)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return where / "bin"
