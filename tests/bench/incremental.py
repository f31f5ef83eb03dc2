"""Incremental builds: the no-op `doit build:baguette` with a small and a ≥ 2 GiB image in the
store, and a one-dotfile rebuild of the default image against its cold build from the cached
base rootfs. Each figure is a median over runs in this process; nothing is asserted."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.rootfs import add_sbin_init, write_rich_rootfs

ROOT = Path(__file__).resolve().parent.parent.parent
RUNS = 5


def doit(config: Path, db: Path, *args: str) -> float:
    env = dict(os.environ, IMAGES_TOML=str(config))
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "doit", "run", "-f", str(ROOT / "dodo.py"),
                    "--db-file", str(db), *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def noop_by_image_size(work: Path) -> None:
    add_sbin_init(write_rich_rootfs(work / "rootfs.tar"))  # an init: the rootfs stage wants one
    times = {}
    for name, size in (("small", '"auto"'), ("large", '"3GiB"')):
        config = work / f"{name}.toml"
        config.write_text(f"""
[build]
accel = "tcg"
artifacts = "{work / name}"
[images.{name}]
source = "tarball"
dotfiles = ""
[images.{name}.tarball]
path = "rootfs.tar"
[images.{name}.baguette]
size = {size}
""")
        db = work / f"{name}.db"
        doit(config, db, "build:baguette")
        raw = next((work / name / "store" / "pack").glob("*/disk.img"))
        times[name] = (statistics.median(doit(config, db, "build:baguette") for _ in range(RUNS)),
                       raw.stat().st_size)
    (small, s_size), (large, l_size) = times["small"], times["large"]
    print(f"no-op doit build:baguette: {s_size / 2**20:.0f} MiB image {small:.3f} s, "
          f"{l_size / 2**30:.1f} GiB image {large:.3f} s (large/small {large / small:.2f})")


def dotfile_rebuild(work: Path) -> None:
    """Variant A of the dotfiles, built from the cached base (cold from the rootfs stage on,
    a full pack), then one dotfile changed (variant B: customize, delta update, compress)."""
    shipped = (ROOT / "images.toml").read_text()
    dotfiles = work / "dotfiles"
    shutil.copytree(ROOT / "dotfiles", dotfiles)
    config = work / "images.toml"
    # the project's store, so the base rootfs is the cached one; another image name, so the
    # project's own artifacts/bookworm/ is left alone
    config.write_text(shipped
                      .replace('dotfiles = "dotfiles"', f'dotfiles = "{dotfiles}"')
                      .replace("[build]", f'[build]\nartifacts = "{ROOT / "artifacts"}"', 1)
                      .replace("bookworm", "bench-bookworm")
                      .replace('suite = "bench-bookworm"', 'suite = "bookworm"'))
    db = work / "doit.db"
    doit(config, db, "base:bench-bookworm")  # from the store when the default image is built
    colds, edits = [], []
    record = ROOT / "artifacts" / "bench-bookworm" / ".inputs" / "pack.json"
    for run in range(3):
        (dotfiles / ".bench").write_text(f"cold {run} {time.time()}\n")
        record.unlink(missing_ok=True)  # no previous image: a full pack, not a delta update
        colds.append(doit(config, db, "build:baguette"))
        (dotfiles / ".bashrc").write_text((ROOT / "dotfiles" / ".bashrc").read_text()
                                          + f"# edit {run} {time.time()}\n")
        edits.append(doit(config, db, "build:baguette"))
    cold, edit = statistics.median(colds), statistics.median(edits)
    print(f"one-dotfile rebuild {edit:.1f} s vs cold build from the cached base {cold:.1f} s "
          f"({edit / cold:.0%})")


def _store_entries() -> set[Path]:
    return set((ROOT / "artifacts" / "store").glob("[!.]*/[!.]*"))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-incremental.") as d:
        noop_by_image_size(Path(d))
    scratch = ROOT / "artifacts" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    before = _store_entries()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dotfile.", dir=scratch) as d:
            dotfile_rebuild(Path(d))
    finally:  # leave the project's store and artifacts as they were
        for entry in _store_entries() - before:
            shutil.rmtree(entry, ignore_errors=True)
        shutil.rmtree(ROOT / "artifacts" / "bench-bookworm", ignore_errors=True)
