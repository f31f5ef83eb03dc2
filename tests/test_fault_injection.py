"""Crash safety: a build killed at random moments (kill -9 of its whole process group, as a
power cut would stop it, or Ctrl-C) never leaves a store entry that looks complete but is
not, and the next run completes. Damaged entries found on reuse are rebuilt. `doit publish`,
`doit gc` and `doit fsck`, killed at seeded system calls (strace), leave a published tree
whose index and SHA256SUMS name only files that exist, a store whose entries all verify, and
what the pipeline did not make untouched; the next run completes the work."""

from __future__ import annotations

import json
import os
import random
import shutil
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
from tests.support.published import served_consistently
from tests.support.rootfs import add_sbin_init, write_rich_rootfs
from tests.support.tools import require_vm, sigint_as_from_a_terminal, tool_missing

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261124
KILLS = 20
STRANGER_STAGE = "music"  # a user's directory in the store (write_lxc_project): not an entry


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


def start(project: Path, log: Path, *targets: str,
          prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """`doit TARGETS` in its own process group (so a kill reaches QEMU too), under `prefix`
    (strace) if given."""
    env = dict(os.environ, IMAGES_TOML=str(project / "images.toml"))
    env.pop("SOURCE_DATE_EPOCH", None)
    out = open(log, "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "doit", "run", "-f", str(ROOT / "dodo.py"),
             "--db-file", str(project / ".doit.db"),
             *(targets or ("build:baguette", "build:lxc"))],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=sigint_as_from_a_terminal)
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
        if stage_dir.name.startswith(".") or stage_dir.name == STRANGER_STAGE:
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


# --- publish, gc and fsck killed at seeded system calls ---------------------------------------

# the system calls that change what is on disk (or take a lock): a kill just before one of
# them is a moment where a half-done publish, gc or fsck could show
MUTATING = ("rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir", "mkdir",
            "mkdirat", "link", "linkat", "fsync", "flock")
OPS = {"publish": ("publish",), "gc": ("gc", "--keep", "0", "--min-age", "0"),
       "fsck": ("fsck",)}
OP_KILLS = 24


def write_lxc_project(project: Path) -> None:
    """The tarball image built as a Crostini container only (no VM), published with keep=2;
    beside it, files the pipeline did not make."""
    write_project(project)
    toml = project / "images.toml"
    toml.write_text(toml.read_text() + "\n[publish]\nkeep = 2\n")
    for stranger in ("artifacts/store/music/album1/song.flac",
                     "artifacts/publish/index.html"):
        (project / stranger).parent.mkdir(parents=True, exist_ok=True)
        (project / stranger).write_bytes(b"not the pipeline's\n")


def strangers_kept(project: Path) -> bool:
    return all((project / p).read_bytes() == b"not the pipeline's\n"
               for p in ("artifacts/store/music/album1/song.flac", "artifacts/publish/index.html"))


def traced(strace: str, *args: str) -> tuple[str, ...]:
    return (strace, "-f", "-qq", "-o", "/dev/null", "-e", f"trace={','.join(MUTATING)}", *args)


def survey(strace: str, project: Path, op: str, code: int = 0) -> Counter[str]:
    """How often one run of `op` makes each mutating system call."""
    out = project / f"survey-{op}.txt"
    proc = start(project, project / f"survey-{op}.log", *OPS[op],
                 prefix=(strace, "-f", "-qq", "-c", "-o", str(out),
                         "-e", f"trace={','.join(MUTATING)}"))
    assert proc.wait() == code, (project / f"survey-{op}.log").read_text()[-3000:]
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] in MUTATING and fields[3].isdigit():
            counts[fields[-1]] = int(fields[3])
    return counts


def damage(entry: Path) -> Path:
    """A bit flipped in a rootfs entry (never published: its file is in no hard link)."""
    with open(entry / "rootfs.tar", "r+b") as f:
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0xFF]))
    return entry


def run_ok(project: Path, name: str, *targets: str) -> str:
    log = project / f"{name}.log"
    proc = start(project, log, *targets)
    text = log.read_text(errors="replace") if proc.wait() == 0 else ""
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    return text


def test_publish_gc_and_fsck_killed_at_seeded_moments(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        tool_missing("strace is not installed (run `python3 -m pipeline.hostsetup --tests`)")
        return
    project = tmp_path / "project"
    write_lxc_project(project)
    artifacts = project / "artifacts"
    tree = artifacts / "publish"
    rng = random.Random(SEED)
    for n in range(3):  # two published versions, and a third build: publish prunes one
        (project / "dotfiles" / ".bashrc").write_text(f"alias ll='ls -l{n}'\n")
        run_ok(project, f"build-{n}", "build:lxc")
        if n < 2:
            run_ok(project, f"publish-{n}", "publish")
    counts = {"publish": survey(strace, project, "publish")}
    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -l'\n")
    run_ok(project, "build", "build:lxc")
    counts["gc"] = survey(strace, project, "gc")  # removes the entries of the last build
    damage(rng.choice(sorted((artifacts / "store" / "rootfs").glob("[!.]*"))))
    counts["fsck"] = survey(strace, project, "fsck", code=1)  # takes the damaged one out
    run_ok(project, "rebuilt", "build:lxc")
    landed: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(OP_KILLS):
        op = ("publish", "gc", "fsck")[i % 3]
        damaged = None
        if op in ("publish", "gc"):  # something new to publish, something old to collect
            (project / "dotfiles" / ".bashrc").write_text(f"alias ll='ls -l{i}'\n")
            run_ok(project, f"build-{i}", "build:lxc")
        elif rng.random() < 0.75:  # a damaged entry for fsck to take out (never published)
            damaged = damage(rng.choice(sorted((artifacts / "store" / "rootfs").glob("[!.]*"))))
        call = rng.choice(sorted(counts[op]))
        when = rng.randint(1, counts[op][call])
        log = project / f"kill-{i}-{op}.log"
        proc = start(project, log, *OPS[op], prefix=traced(
            strace, "-e", f"inject={call}:signal=SIGKILL:when={when}"))
        code = proc.wait()
        landed[f"{op}:{call}" if code == -signal.SIGKILL or code == 128 + 9 else
               f"{op}:finished"] += 1
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-3000:]
        assert served_consistently(tree) == [], (op, call, when, served_consistently(tree))
        assert strangers_kept(project), (op, call, when)
        for stage_dir in (artifacts / "store").glob("[!.]*"):
            for entry in stage_dir.glob("[!.]*") if stage_dir.name != STRANGER_STAGE else []:
                if entry != damaged:
                    assert (entry / INPUTS_FILE).is_file() and verify(entry) == [], entry
        # the next run completes the work
        expect = 1 if damaged is not None and damaged.exists() else 0  # fsck: removed one
        rerun = start(project, project / f"rerun-{i}-{op}.log", *OPS[op])
        assert rerun.wait() == expect, (project / f"rerun-{i}-{op}.log").read_text()[-3000:]
        assert damaged is None or not damaged.exists()
        assert served_consistently(tree) == [] and strangers_kept(project)
        check_store(artifacts)
    seconds = time.monotonic() - started
    assert sum(n for k, n in landed.items() if not k.endswith(":finished")) >= OP_KILLS // 2, \
        landed
    run_ok(project, "final-build", "build:lxc")
    run_ok(project, "final-publish", "publish")
    run_ok(project, "final-verify", "publish", "--verify")
    assert f"{check_store(artifacts)} entries intact" in run_ok(project, "final-fsck", "fsck")
    assert strangers_kept(project)
    assert not list((artifacts / "store").glob("*/.*.tmp")), "half-removed entries remain"
    assert not list((artifacts / "tmp").iterdir()), "killed runs' temporary files remain"
    assert not list(tree.glob("images/*/*/.*")), "half-written versions remain"
    print(f"\n{OP_KILLS} runs of publish, gc and fsck in {seconds:.1f} s; "
          f"{json.dumps(dict(landed), sort_keys=True)}")
