"""`doit bench`: the pack stage against the bare route, measured in the same run.

On one rootfs (the default image's customized rootfs tarball, built through the pipeline if
it is not in the store yet), each route REPEAT times, interleaved so that drift hits every
route alike:

  bare (root)     `tar -x` (numeric owners, xattrs) + `mkfs.btrfs --rootdir --shrink`: the
                  fastest way to a btrfs image, but it makes no subvolume, sets no default
                  and writes device nodes as rdev 0: not what ChromeOS boots
  bare (USER)     the same two commands as root of `unshare --map-auto --map-root-user`, as
                  a normal user with subordinate ids (without /dev: no mknod there)
  pack (root)     the pipeline's pack stage, faithful, `rootfs_subvol` as default
  pack (USER)     the same, run by that normal user (not in the kvm group)
  guestfish       `guestfish tar-in xattrs:true` into a fresh btrfs, when libguestfs is there

Run as root, USER is the normal user tests/support/users.py finds (PIPELINE_TEST_USER, or the
first one with subordinate ids); run as a normal user, only that user's routes run. Then the
peak RSS of the pipeline's own process while packing and compressing a 2 GiB image, and the
incremental figures (tests/bench/incremental.py), the secret scan against the one it
replaced (tests/bench/secrets.py) and a cold build with a warm remote store against a cold
build (tests/bench/remote.py). This is a measurement, not a test: nothing
here fails on a slow machine, and nothing imports pytest (the runtime venv has none).
"""

from __future__ import annotations

import json
import os
import shlex
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
from pipeline.config import Accel
from pipeline.core import userns
from pipeline.core.run import require, which
from pipeline.vmhelper.accel import choose, verdict_dir
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Guest, memory_mib
from tests.bench import guestboot
from tests.support import users

ROOT = Path(__file__).resolve().parent.parent.parent
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
RSS_IMAGE = 2 << 30


def bare_commands(tarball: Path, work: Path, devices: bool = True) -> str:
    """The bare route's shell commands; without `devices` (a user namespace cannot mknod)
    the entries under /dev are left out."""
    tree, image = work / "tree", work / "bare.img"
    skip = "" if devices else "--exclude='./dev/*' "
    return (f"mkdir {tree} && touch {image} && {require('tar')} --warning=no-unknown-keyword "
            f"-x --numeric-owner -p --xattrs --xattrs-include='*' {skip}-f {tarball} "
            f"-C {tree} && "
            f"{require('mkfs.btrfs')} -q --rootdir {tree} --shrink {image} >/dev/null && "
            f"rm -rf {tree} {image}")


def bare_route(tarball: Path, work: Path) -> None:
    subprocess.run(["sh", "-c", bare_commands(tarball, work)], check=True)


def bare_route_userns(tarball: Path, work: Path) -> None:
    subprocess.run(userns.argv(["sh", "-c", bare_commands(tarball, work, devices=False)]),
                   check=True)


def guestfish_route(tarball: Path, work: Path) -> None:
    image = work / "gf.img"
    with open(image, "wb") as f:
        f.truncate(tarball.stat().st_size * 2 + (256 << 20))
    env = dict(os.environ, LIBGUESTFS_BACKEND="direct",
               LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    subprocess.run([require("guestfish"), "-a", str(image), "--", "run", ":",
                    "mkfs", "btrfs", "/dev/sda", ":", "mount", "/dev/sda", "/", ":",
                    "tar-in", str(tarball), "/", "xattrs:true"], check=True, env=env)
    image.unlink()


def as_user(user: users.User, shell: str, work: Path) -> None:
    os.chown(work, user.uid, user.gid)
    proc = users.run_as(user, ["sh", "-c", shell], cwd=work, env=users.env_for(user, work))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])


def main() -> int:
    cfg = config.load(ROOT / "images.toml")
    ctx = stages.open_run(cfg, config.source_date_epoch())
    image = cfg.image(cfg.build.default_images[0])
    stages.build(ctx, stages.BASE, image)
    tarball = stages.build(ctx, stages.ROOTFS, image) / "rootfs.tar"
    appliance = stages.appliance(ctx)
    accel = choose(cfg.build.accel, appliance, verdict_dir()).accel
    opts = stages.pack_options(image)
    root = os.geteuid() == 0
    user = users.builder() if root else None
    me = os.environ.get("USER") or str(os.getuid())
    print(f"rootfs: {tarball} ({tarball.stat().st_size / 2**20:.0f} MiB), accelerator: "
          f"{accel.value}, {pack.plan().why}, {REPEAT} runs each", flush=True)
    phases: dict[str, list[dict[str, object]]] = {}

    def our_pack(name: str) -> Callable[[Path], None]:
        def route(work: Path) -> None:
            guest = Guest(appliance, accel, cfg.build.vm_timeout,
                          memory_mib(cfg.build.vm_memory))
            figures = pack.pack(tarball, work / "disk.img", opts, guest,
                                log_path=work / "console.log", work_dir=work)
            phases.setdefault(name, []).append(figures)
        return route

    def user_pack(u: users.User, name: str, readable: Path) -> Callable[[Path], None]:
        def route(work: Path) -> None:
            os.chmod(work, 0o755)
            os.chown(work, u.uid, u.gid)
            figures, _ = users.pack_as(u, readable, work, kernel=appliance.kernel,
                                       initrd=appliance.initrd, label=opts.label,
                                       slack=opts.slack, size=opts.size, copy=False)
            phases.setdefault(name, []).append(figures)
        return route

    routes: dict[str, Callable[[Path], None]] = {}
    if root:
        routes["bare (root)"] = lambda w: bare_route(tarball, w)
        routes["pack (root)"] = our_pack("pack (root)")
        if user is not None:
            shared = Path(tempfile.mkdtemp(prefix="bench-user.", dir=stages.work_dir(ctx)))
            os.chmod(shared, 0o755)
            readable = Path(shutil.copy(tarball, shared / "rootfs.tar"))  # outside the timing
            os.chmod(readable, 0o644)
            routes[f"bare ({user.name})"] = lambda w: as_user(user, shlex.join(userns.argv(
                ["sh", "-c", bare_commands(readable, w, devices=False)])), w)
            routes[f"pack ({user.name})"] = user_pack(user, f"pack ({user.name})", readable)
        else:
            print("user routes skipped: no normal user with subordinate ids "
                  "(useradd -m builder; or set PIPELINE_TEST_USER)")
    else:
        if userns.problem() is None:
            routes[f"bare ({me})"] = lambda w: bare_route_userns(tarball, w)
        routes[f"pack ({me})"] = our_pack(f"pack ({me})")
    if which("guestfish"):
        routes["guestfish"] = lambda w: guestfish_route(tarball, w)
    else:
        print("guestfish route skipped: libguestfs-tools is not installed")

    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(REPEAT):
        for name, route in routes.items():
            d = tempfile.mkdtemp(prefix="bench.", dir=stages.work_dir(ctx))
            start = time.monotonic()
            route(Path(d))
            times[name].append(time.monotonic() - start)
            userns.remove_tree(Path(d))
            if Path(d).exists():  # a normal user's namespace files, as root
                shutil.rmtree(d, ignore_errors=True)
    report(times, phases)
    if user is not None:
        shutil.rmtree(shared, ignore_errors=True)
    print()
    peak_rss(tarball, opts, appliance, accel, stages.work_dir(ctx))
    guestboot.report(appliance, stages.work_dir(ctx))
    return 0


def report(times: dict[str, list[float]], phases: dict[str, list[dict[str, object]]]) -> None:
    medians = {name: statistics.median(t) for name, t in times.items()}
    bare_root = medians.get("bare (root)")
    print(f"\n{'route':<18} {'median s':>9} {'runs':>22} {'vs bare (root)':>15} "
          f"{'vs bare (same user)':>20}")
    for name, med in medians.items():
        who = name[name.find("(") + 1:-1] if "(" in name else ""
        same = medians.get(f"bare ({who})")
        r1 = f"{med / bare_root:.2f}x" if bare_root else "-"
        r2 = f"{med / same:.2f}x" if same and not name.startswith("bare") else "-"
        runs = " ".join(f"{t:.1f}" for t in times[name])
        print(f"{name:<18} {med:>9.2f} {runs:>22} {r1:>15} {r2:>20}")
    for name, runs in phases.items():
        keys = ("extract_s", "mkfs_s", "guest_s")
        parts = ", ".join(f"{k[:-2]} {statistics.median(float(p[k]) for p in runs):.2f} s"  # type: ignore[arg-type]
                          for k in keys)
        booted = sum(1 for p in runs if p["guest_booted"])
        print(f"  {name}: {parts}; route {runs[0]['route']}, host side {runs[0]['host']}, "
              f"guest booted in {booted} of {len(runs)}")
    if "guestfish" in medians:
        for name, med in medians.items():
            if name.startswith("pack"):
                print(f"  guestfish / {name}: {medians['guestfish'] / med:.1f}x")


RSS_SCRIPT = """
import json, resource, sys
from pathlib import Path
from pipeline.baguette import compress, pack
from pipeline.config import Accel
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Guest
a = json.loads(sys.argv[1])
work = Path(a["work"])
guest = Guest(Appliance(Path(a["kernel"]), Path(a["initrd"]), "k"), Accel(a["accel"]), 900, 1024)
fig = pack.pack(Path(a["tarball"]), work / "disk.img", pack.PackOptions(a["label"], a["size"], 0),
                guest, log_path=work / "console.log", work_dir=work)
after_pack = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = compress.compress(work / "disk.img", work / "disk.img.zst", level=3)
print(json.dumps({"pack_kib": after_pack,
                  "total_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "image": fig["image_bytes"], "zst": size, "booted": fig["guest_booted"]}))
"""


def peak_rss(tarball: Path, opts: pack.PackOptions, appliance: Appliance, accel: Accel,
             scratch: Path) -> None:
    """Peak RSS of one Python process that packs the rootfs into a 2 GiB image and compresses
    it (its children, mkfs.btrfs and QEMU, are not counted: they are not the pipeline's)."""
    with tempfile.TemporaryDirectory(prefix="bench-rss.", dir=scratch) as d:
        args = {"work": d, "tarball": str(tarball), "label": opts.label, "size": RSS_IMAGE,
                "kernel": str(appliance.kernel), "initrd": str(appliance.initrd),
                "accel": accel.value}
        proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, json.dumps(args)],
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"peak RSS: the run failed: {proc.stderr[-1000:]}")
        return
    r = json.loads(proc.stdout.splitlines()[-1])
    print(f"peak RSS of the pipeline's process, {r['image'] / 2**30:.0f} GiB image: "
          f"{r['pack_kib'] / 1024:.0f} MiB packing, {r['total_kib'] / 1024:.0f} MiB with "
          f"compressing ({r['zst'] / 2**20:.0f} MiB .zst; guest booted: {r['booted']})")


if __name__ == "__main__":
    code = main()
    print()
    from tests.bench import incremental

    incremental.main()
    print()
    from tests.bench import secrets

    secrets.main([])
    print()
    from tests.bench import remote

    remote.main()
    sys.exit(code)
