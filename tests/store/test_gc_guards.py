"""`doit gc` (stages.collect_garbage, store/gc.py) with two configs on one artifacts directory:
whatever the config that collects, an entry another build holds, one built in the last
MIN_AGE and the recent builds of every image built here stay."""

from __future__ import annotations

from pathlib import Path

from pipeline import config, stages
from tests.support.projects import write_project

SDE = 1_700_000_000


def two_configs(tmp_path: Path) -> tuple[stages.Run, stages.Run]:
    """Config A (image tiny) and config B (image other from the same tarball), one artifacts
    directory; B has built its base (which A needs too) and rootfs, A nothing yet."""
    shared = tmp_path / "artifacts"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = write_project(tmp_path / "a")
    b = write_project(tmp_path / "b", description="another")
    a.write_text(a.read_text().replace(str(tmp_path / "a" / "artifacts"), str(shared)))
    b.write_text(b.read_text().replace(str(tmp_path / "b" / "artifacts"), str(shared))
                 .replace("tiny", "other"))
    run_b = stages.open_run(config.load(b), SDE)
    image = run_b.config.image("other")
    stages.build(run_b, stages.BASE, image)
    stages.build(run_b, stages.ROOTFS, image)
    return stages.open_run(config.load(a), SDE), run_b


def rootfs_of(run: stages.Run) -> Path:
    return stages.entry(run, stages.ROOTFS, run.config.image("other"))


def test_gc_keeps_an_entry_a_build_is_reading(tmp_path: Path) -> None:
    run_a, run_b = two_configs(tmp_path)
    (tmp_path / "artifacts" / "other" / ".inputs" / "rootfs.history").unlink()
    rootfs = stages.key(run_b, stages.ROOTFS, run_b.config.image("other"))
    with run_b.store.using(rootfs):  # B's pack or lxc stage reads it
        done = stages.collect_garbage(run_a, keep=0, min_age=0)
    assert rootfs_of(run_b).is_dir() and done.in_use == 1
    done = stages.collect_garbage(run_a, keep=0, min_age=0)
    assert not rootfs_of(run_b).exists() and rootfs_of(run_b) in done.removed


def test_gc_keeps_what_was_built_in_the_last_minutes_whatever_the_config(tmp_path: Path) -> None:
    run_a, run_b = two_configs(tmp_path)
    for history in (tmp_path / "artifacts" / "other" / ".inputs").glob("*.history"):
        history.unlink()
    done = stages.collect_garbage(run_a, keep=0)
    assert rootfs_of(run_b).is_dir() and done.removed == []
    (tmp_path / "artifacts" / "other" / ".inputs" / "rootfs.json").unlink()
    done = stages.collect_garbage(run_a, keep=0)  # no record: the entry's own age
    assert rootfs_of(run_b).is_dir() and done.removed == [] and done.recent == 1


def test_gc_keeps_the_recent_builds_of_every_image_built_here(tmp_path: Path) -> None:
    run_a, run_b = two_configs(tmp_path)
    done = stages.collect_garbage(run_a, keep=2, min_age=0)
    assert rootfs_of(run_b).is_dir() and done.removed == []
    done = stages.collect_garbage(run_a, keep=0, min_age=0)
    assert not rootfs_of(run_b).exists() and done.removed == [rootfs_of(run_b)]
