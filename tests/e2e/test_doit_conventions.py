"""doit's conventions through the real CLI, on the cheapest image (a tarball source built
to its Crostini container, no VM): `doit forget` and `doit -a` build again for real,
bad params are refused before anything runs, an image name colliding with a task is
refused at load, and task docs name the configured artifacts directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.doit import doit, ran
from tests.support.projects import write_project

LXC_STAGES = {"base:tiny", "rootfs:tiny", "lxc:tiny"}


def built_at(project: Path, stage: str) -> list[Path]:
    """The entries of a stage in the store (a rebuild replaces the one there)."""
    return [p for p in (project / "artifacts" / "store" / stage).iterdir()
            if not p.name.startswith(".")]


def build_record(project: Path, stage: str) -> tuple[int, int, int]:
    """Which build the entry is: a new one has a later ctime (and maybe another inode)."""
    (entry,) = built_at(project, stage)
    st = (entry / "build.json").stat()
    return st.st_ctime_ns, st.st_ino, json.loads((entry / "build.json").read_text())["built_at"]


def rebuilt(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if line.startswith("==> ") and "(rebuilt on request: doit forget or doit -a)" in line]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_project(tmp_path, rich=False)
    first = doit(tmp_path, "lxc:tiny")
    assert ran(first) >= LXC_STAGES
    return tmp_path


def test_forget_builds_the_stage_again(project: Path) -> None:
    before = build_record(project, "lxc")
    assert ran(doit(project, "lxc:tiny")) == set(), "nothing changed: nothing runs"
    doit(project, "forget", "lxc:tiny")
    again = doit(project, "lxc:tiny")
    assert ran(again) == {"lxc:tiny"}
    assert "rebuilt on request: doit forget or doit -a" in again.stderr
    assert build_record(project, "lxc")[0] != before[0], "a new entry, not the old one"
    assert ran(doit(project, "lxc:tiny")) == set(), "recorded again: up to date"


def test_forget_with_its_dependencies_starts_over(project: Path) -> None:
    base = build_record(project, "base")
    doit(project, "forget", "-s", "lxc:tiny")
    again = doit(project, "lxc:tiny")
    assert ran(again) >= LXC_STAGES
    assert build_record(project, "base")[0] != base[0]
    assert len(rebuilt(again.stderr)) == 3


def test_always_execute_builds_again(project: Path) -> None:
    before = build_record(project, "rootfs")
    again = doit(project, "-a", "rootfs:tiny")
    assert ran(again) == {"base:tiny", "rootfs:tiny"}, "-a: the task and its dependencies"
    assert build_record(project, "rootfs")[0] != before[0]
    assert len(rebuilt(again.stderr)) == 2


def test_info_says_a_forgotten_task_runs(project: Path) -> None:
    doit(project, "forget", "lxc:tiny")
    info = doit(project, "info", "lxc:tiny", check=False).stdout
    assert "doit has no record of it (doit forget, or a new doit state): built again" in info


@pytest.mark.parametrize("args, says", [
    (("--keep=-3",), "--keep='-3' is not a whole number of 0 or more"),
    (("--keep", "abc"), "--keep='abc' is not a whole number of 0 or more"),
    (("--min-age=soon",), "--min-age='soon' is not a whole number of 0 or more"),
])
def test_bad_gc_params_are_refused_with_a_hint(tmp_path: Path, args: tuple[str, ...],
                                               says: str) -> None:
    write_project(tmp_path, rich=False)
    proc = doit(tmp_path, "gc", *args, check=False)
    assert proc.returncode == 3
    assert says in proc.stderr and "hint: give" in proc.stderr
    assert "Traceback" not in proc.stderr and "invalid literal" not in proc.stderr
    assert not (tmp_path / "artifacts" / "store").exists() or not any(
        (tmp_path / "artifacts" / "store").iterdir())


def test_an_image_named_like_a_task_is_refused_at_load(tmp_path: Path) -> None:
    toml = write_project(tmp_path, rich=False)
    toml.write_text(toml.read_text().replace("tiny", "baguette"))
    proc = doit(tmp_path, "list", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: images.baguette: the name 'baguette' is taken by "
                                  "the task verify:baguette")
    assert "hint: rename the image (e.g. [images.my-baguette])" in proc.stderr
    assert "duplicated definition" not in proc.stderr


def test_task_docs_show_the_configured_artifacts(tmp_path: Path) -> None:
    elsewhere = tmp_path / "big-disk" / "cros"
    toml = write_project(tmp_path, rich=False)
    toml.write_text(toml.read_text().replace(str(tmp_path / "artifacts"), str(elsewhere)))
    listing = doit(tmp_path, "list", "--all").stdout
    assert f"{elsewhere}/tiny/baguette_rootfs.img.zst" in listing
    assert f"{elsewhere}/tiny/lxc/" in listing and "<artifacts>" not in listing


def test_a_base_two_images_share_is_built_once(tmp_path: Path) -> None:
    """The second image finds the shared base in the store with no doit record of its own:
    that is a reuse, not a forget."""
    toml = write_project(tmp_path, rich=False)
    toml.write_text(toml.read_text() + '[images.other]\nsource = "tarball"\ndotfiles = ""\n'
                    '[images.other.tarball]\npath = "rootfs.tar"\n')
    both = doit(tmp_path, "lxc:tiny", "lxc:other")
    assert {"base:tiny", "base:other", "lxc:other"} <= ran(both)
    assert both.stderr.count("==> Base rootfs from tarball") == 1, both.stderr
    assert rebuilt(both.stderr) == []
    assert len(built_at(tmp_path, "base")) == 1
