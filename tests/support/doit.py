"""Running the real doit CLI on a project's images.toml, and reading what it ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def doit(project: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
         config: str = "images.toml") -> subprocess.CompletedProcess[str]:
    """`doit ARGS` on project/<config>, with `env` added to the environment."""
    env = dict(os.environ, **(env or {}), IMAGES_TOML=str(project / config))
    env.pop("SOURCE_DATE_EPOCH", None)
    command, rest = (args[0], args[1:]) if args[0] in ("list", "info", "forget") else ("run", args)
    proc = subprocess.run(
        [sys.executable, "-m", "doit", command, "-f", str(ROOT / "dodo.py"),
         "--db-file", str(project / ".doit.db"), *rest],
        capture_output=True, text=True, env=env, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def ran(proc: subprocess.CompletedProcess[str]) -> set[str]:
    """Tasks doit executed (".  name"), as opposed to up to date ("-- name")."""
    return {line[3:].strip() for line in proc.stdout.splitlines() if line.startswith(".  ")}


