"""Crash safety: a build killed at random moments (kill -9 of its whole process group, as a
power cut would stop it, or Ctrl-C) never leaves a store entry that looks complete but is
not, and the next run completes. Damaged entries found on reuse are rebuilt."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core.errors import PipelineError
from pipeline.lxc import image as lxc
from pipeline.store import fsck
from pipeline.store.entries import problems as verify
from pipeline.store.hashing import sha256_file
from pipeline.store.layout import INPUTS_FILE
from tests.support.rootfs import add_sbin_init, write_rich_rootfs
from tests.support.tools import require_vm

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261124
KILLS = 20


def write_project(project: Path) -> None:
    (project / "dotfiles").mkdir(parents=True, exist_ok=True)
    add_sbin_init(write_rich_rootfs(project / "rootfs.tar"))
    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -l'\n")
    (project / "images.toml").write_text(f"""
[build]
accel = "tcg"
artifacts = "{project / 'artifacts'}"

[images.first]
source = "tarball"
dotfiles = "dotfiles"
[images.first.tarball]
path = "rootfs.tar"
""")


def start(project: Path, log: Path, *targets: str) -> subprocess.Popen[bytes]:
    """`doit TARGETS` in its own process group (so a kill reaches QEMU too)."""
    env = dict(os.environ, IMAGES_TOML=str(project / "images.toml"))
    env.pop("SOURCE_DATE_EPOCH", None)
    out = open(log, "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "doit", "run", "-f", str(ROOT / "dodo.py"),
             "--db-file", str(project / ".doit.db"),
             *(targets or ("build:baguette", "build:lxc"))],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def stage_at(log: Path) -> str:
    """The innermost step the log shows as started and not finished ('' if none)."""
    open_steps: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("==> "):
            open_steps.append(line[4:].split(" [")[0].split(" (")[0])
        elif line.startswith("<== ") and open_steps:
            open_steps.pop()
    return open_steps[-1] if open_steps else "(before any step)"


def check_store(artifacts: Path) -> int:
    """Every directory under a final name in the store is complete and verifies in full."""
    checked = 0
    store = artifacts / "store"
    if not store.is_dir():
        return 0
    for stage_dir in store.iterdir():
        if stage_dir.name.startswith("."):
            continue
        for entry in stage_dir.iterdir():
            if entry.name.startswith("."):
                continue  # a temporary name: never read as an entry
            assert (entry / INPUTS_FILE).is_file(), f"{entry} has a final name but no inputs"
            assert verify(entry) == [], f"{entry} does not verify: {verify(entry)}"
            checked += 1
    return checked


@pytest.mark.vm
def test_killed_at_random_moments_then_rerun(tmp_path: Path) -> None:
    require_vm()
    # one cold build elsewhere, to spread the kills over a build's length here
    measure = tmp_path / "measure"
    write_project(measure)
    t0 = time.monotonic()
    proc = start(measure, measure / "build.log")
    assert proc.wait() == 0, (measure / "build.log").read_text()[-3000:]
    cold = time.monotonic() - t0

    project = tmp_path / "project"
    write_project(project)
    artifacts = project / "artifacts"
    rng = random.Random(SEED)
    landed: Counter[str] = Counter()
    finished = 0
    estimate = cold  # how long the next run would take: a cold build, at first
    for i in range(3 * KILLS):
        if sum(landed.values()) >= KILLS:
            break
        log = project / f"kill-{i}.log"
        t0 = time.monotonic()
        proc = start(project, log)
        try:
            proc.wait(timeout=rng.uniform(0.05, 1.0) * estimate)
            finished += 1
            assert proc.returncode == 0, log.read_text()[-3000:]
            estimate = time.monotonic() - t0
            # the build won the race: give the next run work again (a dotfile edit)
            (project / "dotfiles" / ".bashrc").write_text(f"alias ll='ls -l{i}'\n")
        except subprocess.TimeoutExpired:
            landed[stage_at(log)] += 1
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        check_store(artifacts)
    assert sum(landed.values()) >= KILLS, f"only {sum(landed.values())} kills landed"

    # Ctrl-C while the image is being packed: a clean stop, nothing half-written kept
    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -l --color'\n")
    log = project / "interrupt.log"
    started = time.time()
    proc = start(project, log)
    while "==> Packing the btrfs image" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait() != 0
    interrupted = log.read_text(errors="replace")
    assert "interrupted; nothing half-written was kept" in interrupted, interrupted[-3000:]
    assert "Traceback" not in interrupted, interrupted[-3000:]
    assert not [p for p in (artifacts / "store").glob("pack/.*.tmp") if p.stat().st_mtime
                > started], "Ctrl-C left a half-built entry"
    assert not list((artifacts / "tmp").iterdir()), "Ctrl-C left temporary files"
    check_store(artifacts)

    log = project / "final.log"
    proc = start(project, log)
    assert proc.wait() == 0, log.read_text()[-3000:]
    entries = check_store(artifacts)
    published = artifacts / "first" / stages.IMAGE_NAME
    recorded = (artifacts / "first" / f"{stages.IMAGE_NAME}.sha256").read_text().split()[0]
    assert sha256_file(published) == recorded
    out = artifacts / "first" / "lxc"
    assert lxc.fingerprint(out / "metadata.tar.xz", out / "rootfs.tar.xz") == \
        (out / "fingerprint").read_text().strip()
    assert not list((artifacts / "tmp").iterdir()), "killed builds' temporary files remain"
    assert not list((artifacts / "store").glob("*/.*.tmp")), "half-built entries remain"
    assert not list((artifacts / "first").rglob(".*.tmp")), "half-published files remain"
    log = project / "fsck.log"
    assert start(project, log, "fsck").wait() == 0, log.read_text()[-3000:]
    assert f"{entries} entries intact" in log.read_text()
    print(f"\ncold build {cold:.1f} s; {sum(landed.values())} kills landed in "
          f"{json.dumps(dict(landed), sort_keys=True)}; {finished} runs finished first; "
          f"{entries} entries verified after the final run")


# --- a damaged entry is found on reuse and rebuilt --------------------------------------------


def test_damaged_entry_is_rebuilt_on_reuse(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_project(tmp_path)
    cfg = config.load(tmp_path / "images.toml")
    ctx = stages.open_run(cfg, None)
    image = cfg.image("first")
    base = (stages.build(ctx, stages.BASE, image) / "base.tar")
    good = base.read_bytes()
    with open(base, "r+b") as f:  # bit rot in a small file (rootfs.tar is ~3.5 MiB: sized)
        f.truncate(len(good) - 512)
    again = stages.open_run(cfg, None)
    # doit's uptodate says: run base
    assert not again.store.intact(stages.key(again, stages.BASE, image))
    stages.build(again, stages.BASE, image)
    assert "is damaged (base.tar has" in capsys.readouterr().err
    assert base.read_bytes() == good and verify(base.parent) == []
    assert (stages.build(again, stages.ROOTFS, image) / "rootfs.tar").is_file()


def test_fsck_finds_same_size_damage_and_removes_the_entry(tmp_path: Path) -> None:
    write_project(tmp_path)
    cfg = config.load(tmp_path / "images.toml")
    ctx = stages.open_run(cfg, None)
    image = cfg.image("first")
    stages.build(ctx, stages.BASE, image)
    rootfs = (stages.build(ctx, stages.ROOTFS, image) / "rootfs.tar")
    assert fsck.check_store(ctx.store) == 2
    with open(rootfs, "r+b") as f:
        f.seek(5000)
        f.write(b"\xff")
    with pytest.raises(PipelineError, match="1 damaged store entries were removed: rootfs/"):
        fsck.check_store(ctx.store)
    assert sorted(ctx.store.entries()) == ["base", "rootfs"]
    assert ctx.store.entries()["rootfs"] == []


def test_doit_state_cut_short_does_not_stop_the_next_run(tmp_path: Path) -> None:
    """A power cut while doit saves its state can leave the file empty or torn; the next
    run still works (doit's sqlite backend; its json backend refuses such a file)."""
    write_project(tmp_path)
    log = tmp_path / "first.log"
    assert start(tmp_path, log, "rootfs:first").wait() == 0, log.read_text()
    db = tmp_path / ".doit.db"
    assert db.stat().st_size > 0
    db.write_bytes(b"")
    log = tmp_path / "second.log"
    assert start(tmp_path, log, "rootfs:first").wait() == 0, log.read_text()
    assert "Traceback" not in log.read_text()
