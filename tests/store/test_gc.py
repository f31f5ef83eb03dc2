"""pipeline/store/gc.py: `doit gc` removes exactly the complete store entries nobody wants,
never a build's temporary directory or the locks; what is wanted is what the current config
needs (stages.wanted_keys) and the newest `keep` keys of each image's history
(layout.recent_keys). The project here is the tiny busybox tarball image (no VM)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.store import gc
from pipeline.store.entries import Store
from pipeline.store.keys import StageInputs
from pipeline.store.layout import Layout, recent_keys
from tests.support.projects import built, write_project


def make_entry(store: Store, stage: str, name: str, size: int) -> Path:
    si = StageInputs(stage, 1, {"name": name})
    with store.new_entry(si) as tmp:
        (tmp / "payload").write_bytes(os.urandom(size))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "small").write_text(name)
    return store.path(si)


def disk_usage(entry: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in entry.rglob("*") if not p.is_dir())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(Layout(tmp_path / "artifacts"))


@pytest.fixture
def three(store: Store) -> dict[str, Path]:
    """Three complete entries in two stages, a half-built one and the locks dir."""
    entries = {"keep": make_entry(store, "rootfs", "keep", 50_000),
               "old-rootfs": make_entry(store, "rootfs", "old", 300_000),
               "old-lxc": make_entry(store, "lxc", "old", 200_000)}
    with store.lock(StageInputs("lxc", 1, {"name": "building"})):
        pass
    half = store.layout.store / "lxc" / f".{'f' * 32}.1234.abcd.tmp"
    half.mkdir()
    (half / "part").write_bytes(b"half written")
    return entries


def test_removes_exactly_the_unwanted_entries(store: Store, three: dict[str, Path]) -> None:
    usage = disk_usage(three["old-rootfs"]) + disk_usage(three["old-lxc"])
    locks = sorted(p.name for p in (store.layout.store / ".locks").iterdir())
    done = gc.collect(store, {three["keep"].name, "0" * 32})
    assert done.kept == 1
    assert sorted(done.removed) == sorted([three["old-rootfs"], three["old-lxc"]])
    assert done.freed_bytes == usage
    assert done.freed_bytes >= 500_000  # the two payloads at least
    assert store.entries() == {"lxc": [], "rootfs": [three["keep"]]}
    assert (three["keep"] / "payload").stat().st_size == 50_000
    # the half-built entry and the locks are not entries: untouched
    half = store.layout.store / "lxc" / f".{'f' * 32}.1234.abcd.tmp"
    assert (half / "part").read_bytes() == b"half written"
    building = StageInputs("lxc", 1, {"name": "building"}).key
    assert locks == [store.layout.lock("lxc", building).name]
    # gc asks each entry's lock whether a build holds it; it removes none
    assert set(locks) <= {p.name for p in (store.layout.store / ".locks").iterdir()}
    # nothing of the removed entries is left under another name
    assert sorted(p.name for p in (store.layout.store / "rootfs").iterdir()) == [
        three["keep"].name]
    assert sorted(p.name for p in (store.layout.store / "lxc").iterdir()) == [half.name]


def test_dry_run_removes_nothing_and_reports_the_same(store: Store,
                                                      three: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before = store.entries()
    wanted = {three["keep"].name}
    dry = gc.collect(store, wanted, dry_run=True)
    assert "gc: kept 1 store entries, would remove 2, would free" in capsys.readouterr().err
    assert store.entries() == before
    assert all((e / "payload").is_file() for e in three.values())
    real = gc.collect(store, wanted)
    assert "gc: kept 1 store entries, removed 2, freed" in capsys.readouterr().err
    assert (dry.kept, sorted(dry.removed), dry.freed_bytes) == (
        real.kept, sorted(real.removed), real.freed_bytes)
    assert real.freed_bytes > 0


def test_everything_wanted_removes_nothing(store: Store, three: dict[str, Path]) -> None:
    done = gc.collect(store, {e.name for e in three.values()})
    assert done == gc.Collected(kept=3, removed=[], freed_bytes=0)
    assert sum(len(v) for v in store.entries().values()) == 3


def test_an_empty_or_missing_store(store: Store) -> None:
    assert not store.layout.store.exists()
    assert gc.collect(store, set()) == gc.Collected(0, [], 0)


# --- what the config wants, and the history kept ------------------------------------------


@pytest.fixture
def two_builds(tmp_path: Path) -> tuple[stages.Run, stages.Run]:
    """The tiny image built twice, with two descriptions: one base, one rootfs, two LXC
    entries (the description is in the LXC metadata only)."""
    first = built(write_project(tmp_path, description="first build"))
    second = built(write_project(tmp_path, description="second build"))
    return first, second


def lxc_key(run: stages.Run) -> str:
    return stages.key(run, stages.LXC, run.config.image("tiny")).key


def test_two_builds_make_two_lxc_entries(two_builds: tuple[stages.Run, stages.Run]) -> None:
    first, second = two_builds
    entries = second.store.entries()
    assert {s: len(e) for s, e in entries.items()} == {"base": 1, "rootfs": 1, "lxc": 2}
    assert lxc_key(first) != lxc_key(second)
    assert sorted(e.name for e in entries["lxc"]) == sorted([lxc_key(first), lxc_key(second)])


def test_wanted_keys_are_the_current_config_s(two_builds: tuple[stages.Run, stages.Run]) -> None:
    first, second = two_builds
    wanted = stages.wanted_keys(second)
    image = second.config.image("tiny")
    for stage in (stages.BASE, stages.ROOTFS, stages.LXC):
        assert stages.key(second, stage, image).key in wanted
    assert lxc_key(first) not in wanted
    assert stages.key(first, stages.ROOTFS, image).key in wanted  # unchanged by description


def test_recent_keys_are_the_newest_of_each_history(
        two_builds: tuple[stages.Run, stages.Run]) -> None:
    first, second = two_builds
    layout = second.layout
    image = second.config.image("tiny")
    base, rootfs = (stages.key(second, s, image).key for s in (stages.BASE, stages.ROOTFS))
    assert recent_keys(layout, ["tiny"], 0) == set()
    assert recent_keys(layout, ["tiny"], 1) == {base, rootfs, lxc_key(second)}
    assert recent_keys(layout, ["tiny"], 2) == {base, rootfs, lxc_key(second), lxc_key(first)}
    assert recent_keys(layout, ["tiny"], 20) == recent_keys(layout, ["tiny"], 2)
    assert recent_keys(layout, ["other"], 2) == set()  # an image never built


@pytest.mark.parametrize("keep, survivors", [(0, 1), (1, 1), (2, 2)])
def test_gc_keeps_the_config_and_the_newest_keep(two_builds: tuple[stages.Run, stages.Run],
                                                 keep: int, survivors: int) -> None:
    first, second = two_builds
    wanted = stages.wanted_keys(second) | recent_keys(second.layout, ["tiny"], keep)
    done = gc.collect(second.store, wanted)
    entries = second.store.entries()
    assert len(entries["lxc"]) == survivors
    assert lxc_key(second) in {e.name for e in entries["lxc"]}
    assert (lxc_key(first) in {e.name for e in entries["lxc"]}) == (keep == 2)
    assert len(entries["base"]) == len(entries["rootfs"]) == 1
    assert len(done.removed) == 2 - survivors
    # what the config needs is still current: nothing to rebuild
    image = second.config.image("tiny")
    for stage in (stages.BASE, stages.ROOTFS, stages.LXC):
        assert stages.is_current(second, stage, image)
