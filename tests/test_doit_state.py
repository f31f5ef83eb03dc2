"""doit keeps its state in one SQLite file; when the pipeline cannot write it (read-only, in a
read-only directory), doit would fail with a traceback after the whole build. The pipeline
says so before anything runs, in one message with a hint."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.doit import doit
from tests.support.paths import ROOT
from tests.support.projects import write_project


def test_a_read_only_doit_state_is_one_message_before_anything_runs() -> None:
    work = Path(tempfile.mkdtemp(prefix="doit-state."))
    try:
        os.chmod(work, 0o755)
        write_project(work, rich=False)
        doit(work, "base:tiny")  # the state file exists now
        state = work / ".doit.db"
        state.chmod(0o444)
        (work / "images.toml").write_text((work / "images.toml").read_text().replace(
            "busybox test image", "changed"))
        if os.geteuid() == 0:  # root writes read-only files: build as nobody instead
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("setpriv (util-linux) is needed to build as another user")
            for p in [work, *work.rglob("*")]:
                os.chown(p, 65534, 65534, follow_symlinks=False)
            proc = subprocess.run(
                [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "env",
                 f"HOME={work}", f"IMAGES_TOML={work / 'images.toml'}",
                 str(ROOT / ".venv" / "bin" / "python"), "-m", "doit", "run",
                 "-f", str(ROOT / "dodo.py"), "--db-file", str(state), "lxc:tiny"],
                capture_output=True, text=True, cwd=work, check=False)
        else:
            proc = doit(work, "lxc:tiny", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert "Traceback" not in out, out
        assert f"{state}" in out and "not writable" in out and "hint:" in out, out
        assert not list((work / "artifacts" / "store").glob("lxc/[!.]*")), "it built first"
    finally:
        shutil.rmtree(work, ignore_errors=True)
