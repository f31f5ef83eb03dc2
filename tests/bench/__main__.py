"""`doit bench`: the pack stage against the bare route, measured in the same run.

On one rootfs (the default image's customized rootfs tarball, built through the pipeline if
it is not in the store yet):

  bare     `tar -x` (as root, numeric owners, xattrs) + `mkfs.btrfs --rootdir --shrink`:
           the fastest way to a btrfs image, but it needs root, makes no subvolume and
           sets no default: not what ChromeOS boots
  pack     the pipeline's pack stage: unprivileged, faithful, `rootfs_subvol` as default
  guestfish `guestfish tar-in xattrs:true` into a fresh btrfs, when libguestfs is installed

Each route runs REPEAT times; the medians and their ratios to `bare` are printed. This is
a measurement, not a test: nothing here fails on a slow machine. Then incremental.py (no-op
and one-dotfile builds) and secrets.py (the secret scan against the one it replaced).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline import config, stages
from pipeline.baguette import pack
from pipeline.core.run import require, which
from pipeline.vmhelper.accel import choose
from pipeline.vmhelper.qemu import Guest, memory_mib

ROOT = Path(__file__).resolve().parent.parent.parent
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def timed(route: Callable[[Path], None], work: Path) -> float:
    start = time.monotonic()
    route(work)
    return time.monotonic() - start


def bare_route(tarball: Path, work: Path) -> None:
    tree, image = work / "tree", work / "bare.img"
    tree.mkdir()
    image.touch()
    subprocess.run([require("tar"), "--warning=no-unknown-keyword", "-x", "--numeric-owner",
                    "-p", "--xattrs", "--xattrs-include=*", "-f", str(tarball), "-C", str(tree)],
                   check=True)
    subprocess.run([require("mkfs.btrfs"), "-q", "--rootdir", str(tree), "--shrink",
                    str(image)], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    image.unlink()


def guestfish_route(tarball: Path, work: Path) -> None:
    image = work / "gf.img"
    size = tarball.stat().st_size * 2 + (256 << 20)
    with open(image, "wb") as f:
        f.truncate(size)
    env = dict(os.environ, LIBGUESTFS_BACKEND="direct",
               LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    subprocess.run([require("guestfish"), "-a", str(image), "--", "run", ":",
                    "mkfs", "btrfs", "/dev/sda", ":", "mount", "/dev/sda", "/", ":",
                    "tar-in", str(tarball), "/", "xattrs:true"], check=True, env=env)
    image.unlink()


def main() -> int:
    cfg = config.load(ROOT / "images.toml")
    ctx = stages.open_run(cfg, config.source_date_epoch())
    image = cfg.image(cfg.build.default_images[0])
    stages.build(ctx, stages.BASE, image)
    tarball = (stages.build(ctx, stages.ROOTFS, image) / "rootfs.tar")
    appliance = stages.appliance(ctx)
    accel = choose(cfg.build.accel, appliance, ctx.layout.cache).accel
    print(f"rootfs: {tarball} ({tarball.stat().st_size / 2**20:.0f} MiB), "
          f"accelerator: {accel.value}, {REPEAT} runs each", flush=True)

    def our_pack(work: Path) -> None:
        guest = Guest(appliance, accel, cfg.build.vm_timeout, memory_mib(cfg.build.vm_memory))
        figures = pack.pack(tarball, work / "disk.img", stages.pack_options(image), guest,
                            log_path=work / "console.log", work_dir=work)
        phases.append(figures)
        (work / "disk.img").unlink()

    phases: list[dict[str, float]] = []
    routes: dict[str, Callable[[Path], None]] = {"pack": our_pack}
    if os.geteuid() == 0:
        routes["bare"] = lambda w: bare_route(tarball, w)
    else:
        print("bare route skipped: it needs root (tar -x with owners and device nodes)")
    if which("guestfish"):
        routes["guestfish"] = lambda w: guestfish_route(tarball, w)
    else:
        print("guestfish route skipped: libguestfs-tools is not installed")

    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(REPEAT):
        for name, route in routes.items():  # interleaved, so drift hits every route alike
            with tempfile.TemporaryDirectory(dir=stages.work_dir(ctx)) as d:
                times[name].append(timed(route, Path(d)))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{'route':<10} {'median s':>9} {'runs':>24} {'vs bare':>8}")
    for name, med in medians.items():
        ratio = f"{med / medians['bare']:.2f}x" if "bare" in medians else "-"
        runs = " ".join(f"{t:.1f}" for t in times[name])
        print(f"{name:<10} {med:>9.2f} {runs:>24} {ratio:>8}")
    for key in ("extract_s", "mkfs_s", "guest_s"):
        print(f"  pack {key[:-2]:<8} median {statistics.median(p[key] for p in phases):.2f} s")
    return 0


if __name__ == "__main__":
    code = main()
    print()
    from tests.bench import incremental

    incremental.main()
    print()
    from tests.bench import secrets

    secrets.main([])
    sys.exit(code)
