"""Only what the pipeline provably made is ever removed: the artifacts directory carries a mark
(written when the pipeline creates or adopts it), a store entry is a directory holding the
entry's own inputs.json, and what a running build uses is held by a flock (never judged by
its pid, which means nothing in another PID namespace or on another host)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core.errors import PipelineError
from pipeline.core.fsutil import atomic_path
from pipeline.store import fsck, gc
from pipeline.store.entries import Store, link_output
from pipeline.store.layout import MARK, Layout
from tests.support.doit import doit
from tests.support.paths import ROOT
from tests.support.projects import built, write_project


def reaped_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def user_data(artifacts: Path) -> list[Path]:
    """What a user kept in a directory that looks like an artifacts directory."""
    files = [artifacts / "tmp" / "photos.2023.trip" / "beach.jpg",
             artifacts / "tmp" / "notes.1234.txt" / "a",
             artifacts / "store" / "music" / "album1" / "song.flac",
             artifacts / "store" / "rootfs" / "mine" / "keep.txt",
             artifacts / "store" / "base" / ".0123456789abcdef0123456789abcdef.x.tmp" / "f"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"precious")
    return files


# --- the artifacts directory ------------------------------------------------------------------


def test_a_foreign_non_empty_artifacts_dir_is_refused(tmp_path: Path) -> None:
    toml = write_project(tmp_path)
    artifacts = tmp_path / "artifacts"
    kept = user_data(artifacts)
    (artifacts / "Documents").mkdir()
    with pytest.raises(PipelineError) as exc:
        stages.open_run(config.load(toml), 1_700_000_000)
    assert "not empty" in exc.value.message and str(artifacts) in exc.value.message
    assert "empty directory" in exc.value.hint
    assert all(f.read_bytes() == b"precious" for f in kept)
    assert not (artifacts / MARK).exists()


def test_the_cli_refuses_it_with_one_message(tmp_path: Path) -> None:
    write_project(tmp_path)
    (tmp_path / "artifacts" / "Documents").mkdir(parents=True)
    proc = doit(tmp_path, "build:lxc", check=False)
    assert proc.returncode != 0
    assert "error: build.artifacts:" in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_empty_or_new_dir_is_marked_and_reused(tmp_path: Path) -> None:
    toml = write_project(tmp_path)
    (tmp_path / "artifacts").mkdir()
    stages.open_run(config.load(toml), 1_700_000_000)
    assert (tmp_path / "artifacts" / MARK).is_file()
    (tmp_path / "artifacts" / "anything").mkdir()  # once marked, the directory is ours
    stages.open_run(config.load(toml), 1_700_000_000)


def test_adopted_layout_keeps_what_the_pipeline_did_not_make(tmp_path: Path) -> None:
    """A directory laid out as artifacts directories were before the mark (only the layout's
    own names at its top) is adopted; gc, fsck and the sweep of killed builds' leftovers then
    touch only entries and work directories the pipeline made."""
    toml = write_project(tmp_path)
    artifacts = tmp_path / "artifacts"
    kept = user_data(artifacts)
    run = built(toml)
    assert (artifacts / MARK).is_file()
    stages.work_dir(run)  # sweeps what killed builds left
    fresh = stages.open_run(config.load(toml), 1_700_000_000)
    stages.work_dir(fresh)
    assert fsck.check_store(fresh.store) == 3  # base, rootfs, lxc
    gc.collect(fresh.store, set(), min_age=0)
    assert all(f.read_bytes() == b"precious" for f in kept), [f for f in kept if not f.exists()]
    assert all(entries == [] for entries in fresh.store.entries().values())


def test_entries_are_only_directories_with_their_own_inputs(tmp_path: Path) -> None:
    store = Store(Layout(tmp_path))
    (tmp_path / "store" / "rootfs" / "album").mkdir(parents=True)
    (tmp_path / "store" / "rootfs" / "album" / "inputs.json").write_text("not ours")
    (tmp_path / "store" / "rootfs" / "other").mkdir()
    (tmp_path / "store" / "rootfs" / "other" / "inputs.json").write_text(
        '{"stage": "base", "version": 1, "inputs": {}}')  # another stage's: not this one
    assert store.entries() == {"rootfs": []}
    assert sorted(store.strangers()) == ["rootfs/album", "rootfs/other"]


# --- liveness by lock, not by pid -------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    dead = int(sys.argv[2])
    os.getpid = lambda: dead  # another PID namespace: this pid means nothing to the sweeper
    from pipeline import config, stages
    from pipeline.core.fsutil import atomic_path, work_tempdir
    run = stages.open_run(config.load(Path(sys.argv[1])), 1_700_000_000)
    work = work_tempdir(stages.work_dir(run), "customize")
    (work / "half.tar").write_bytes(b"in use")
    out = run.layout.outputs("tiny") / "lxc" / "rootfs.tar.xz"
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"being linked")
        print(work, tmp, flush=True)
        sys.stdin.read()  # until the test lets go
    """)


def start_holder(toml: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(toml), str(reaped_pid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    work, tmp = proc.stdout.readline().split()
    return proc, Path(work), Path(tmp)


def test_a_live_build_in_another_pid_namespace_keeps_its_work(tmp_path: Path) -> None:
    toml = write_project(tmp_path)
    run = built(toml)  # the stable names exist, so link_output sweeps beside them
    holder, work, tmp = start_holder(toml)
    try:
        other = stages.open_run(config.load(toml), 1_700_000_000)
        stages.work_dir(other)  # the sweep
        entry = stages.entry(other, stages.LXC, other.config.image("tiny"))
        link_output(entry / "rootfs.tar.xz", tmp.parent / "rootfs.tar.xz")
        assert (work / "half.tar").read_bytes() == b"in use"
        assert tmp.read_bytes() == b"being linked"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait() == 0
    assert not work.exists(), "a run removes its own work directory when it ends"
    del run


def test_a_killed_build_s_work_and_temporary_links_go(tmp_path: Path) -> None:
    toml = write_project(tmp_path)
    built(toml)
    holder, work, tmp = start_holder(toml)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert work.exists() and tmp.exists()
    other = stages.open_run(config.load(toml), 1_700_000_000)
    stages.work_dir(other)
    entry = stages.entry(other, stages.LXC, other.config.image("tiny"))
    link_output(entry / "rootfs.tar.xz", tmp.parent / "rootfs.tar.xz")
    assert not work.parent.exists(), "the killed run's directory stays"
    assert not tmp.exists()
    assert sorted(p.name for p in (tmp_path / "artifacts" / "tmp").iterdir()) == \
        sorted([stages.work_dir(other).name, stages.work_dir(other).name + ".lock"])
    assert [p.name for p in tmp.parent.iterdir() if p.name.startswith(".")] == []


def test_atomic_path_names_carry_no_pid(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "out") as tmp:
        assert str(os.getpid()) not in tmp.name.split(".")
        assert [p for p in tmp_path.iterdir() if p.name.endswith(".lock")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
