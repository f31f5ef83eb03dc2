"""pipeline/cli.py and pipeline/report.py: the entry point from a config directory (which
images.toml, where doit's state goes), the debug switch, the summary at the end of a run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline import cli
from pipeline.report import Summary
from tests.support.projects import write_project


def cros_guest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGES_TOML", "CI")}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def test_which_config(tmp_path: Path) -> None:
    assert cli.config_path("", {}, tmp_path) == tmp_path / "images.toml"
    assert cli.config_path("", {"IMAGES_TOML": "x/other.toml"}, tmp_path) == (
        tmp_path / "x" / "other.toml")
    assert cli.config_path("/etc/i.toml", {"IMAGES_TOML": "x.toml"}, tmp_path) == Path(
        "/etc/i.toml")


def test_debug_shows_every_command_and_the_summary_ends_the_run(tmp_path: Path) -> None:
    write_project(tmp_path, rich=False)
    quiet = cros_guest(tmp_path, "lxc:tiny")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "debug:" not in quiet.stderr, "no debug lines without the switch"
    assert "\x1b[" not in quiet.stderr and "it/s" not in quiet.stderr, "no bars off a terminal"
    summary = quiet.stdout.split("\nsummary (", 1)[1].splitlines()
    assert re.fullmatch(r"  tiny\s+base [\d.]+ s, rootfs [\d.]+ s, lxc [\d.]+ s", summary[1])
    assert str(tmp_path / "artifacts" / "tiny" / "lxc") + "/" in summary[2]
    assert (tmp_path / ".doit.db.sqlite").is_file()

    again = cros_guest(tmp_path, "--debug", "-a", "lxc:tiny")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "    debug: run: " in again.stderr and "xz -1 -T0 -c" in again.stderr
    noop = cros_guest(tmp_path, "lxc:tiny")
    assert "tiny   base reused, rootfs reused, lxc reused" in noop.stdout


def test_the_summary_names_each_stage_and_the_files() -> None:
    s = Summary(Path("/a"))
    s.reused("base:deb")
    for name in ("rootfs:deb", "pack:deb", "baguette:deb", "appliance"):
        s.begin(name)
        s.end(name)
    s.begin("lxc:deb")
    s.end("lxc:deb", failed=True)
    s.reused("kind:pack-deb")
    lines = s.lines()
    assert lines[0].startswith("summary (")
    assert lines[1].startswith("  deb    base reused, rootfs 0.0 s, pack 0.0 s, baguette 0.0 s, "
                               "lxc FAILED")
    assert lines[2] == "         /a/deb/baguette_rootfs.img.zst"
    assert lines[3] == "  other  appliance 0.0 s"
    assert Summary(Path("/a")).lines() == [], "nothing ran: no summary"
