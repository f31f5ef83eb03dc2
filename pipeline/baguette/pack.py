"""Pack a rootfs tarball into a raw btrfs Baguette image, as any user.

Technical details. The image is a raw file, no partition table, the whole disk one btrfs
filesystem; the root tree lives in the subvolume `rootfs_subvol`, which is the default
subvolume. Extracting a whole tarball inside an emulated guest is slow (~8x a native
`tar -x` + `mkfs.btrfs --rootdir` under TCG), so the host does the bulk and the VM helper's
guest only what the host cannot. Two choices, both logged (`plan`):

the route, by the mkfs.btrfs version found:
  subvolume (btrfs-progs 6.12+)  `mkfs.btrfs --rootdir DIR --subvol default:rootfs_subvol`
                                 makes the subvolume and sets it as default;
  snapshot  (older)              mkfs writes the tree at the top level, and the guest
                                 snapshots it into rootfs_subvol, sets the default and drops
                                 the top-level copy (an unlink per entry: slow under TCG);
who extracts (staging.py):
  root                           sets owners, modes, xattrs itself;
  user namespace                 a normal user with subordinate ids, as root of
                                 `unshare --map-auto --map-root-user` (core/userns.py): the
                                 same, for ids inside the map;
  user                           anyone else: owners, real modes and xattrs go to the guest.

on the host:
  1. extract the tarball into a staging tree (contents, symlinks, hardlinks, fifos, and what
     the extractor may set); on the subvolume route each device node is an empty file;
  2. `mkfs.btrfs --rootdir` that tree into the image file, shrunk to its content, with the
     filesystem and device UUIDs fixed (from the stage's key);
  3. subvolume route: turn the device placeholders into device nodes and grow the filesystem
     to content + slack (or the fixed size) in place (btrfsedit.py);
  4. if anything is left (owners or xattrs the host could not set; the snapshot route), write
     a small job tar: which paths need which owner, which modes to put back after chown
     cleared setuid bits, and a tar of the entries with xattrs (device nodes too, on the
     snapshot route) with their parent directories;
in the guest (qemu/init, mode `fixup`, or `pack` for the snapshot route), only if step 4 left
something:
  5. mount, (snapshot route: snapshot, set-default, drop the top-level copy, grow), apply the
     owners, modes and the special tar with GNU tar (numeric owners, xattrs, mtimes).
Run as root, or as a user with subordinate ids, on the subvolume route nothing is left for
step 5 unless the tarball holds xattrs the kernel refuses there: no guest boots. The host
never needs a loop device or a mount.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core import userns
from ..core.errors import PipelineError
from ..core.fsutil import work_tempdir
from ..core.log import info, step
from ..core.run import log_command, require_version, run, tool_version
from ..core.tarballs import member_path, plain_tar
from ..store.keys import StageInputs
from ..vmhelper.qemu import Disk, Guest
from . import btrfsedit
from .staging import Staged, extract

VERSION = 3  # 3: the subvolume made by mkfs, device nodes and owners set on the host
SUBVOL = "rootfs_subvol"
SUBVOL_MKFS = (6, 12)  # mkfs.btrfs --subvol (btrfs-progs 6.12, CHANGES), hardlinks kept
__all__ = ["Staged", "extract"]


class Route(enum.Enum):
    SUBVOLUME = "subvolume"  # mkfs.btrfs --subvol default:rootfs_subvol
    SNAPSHOT = "snapshot"  # the guest snapshots the top level


class Host(enum.Enum):
    ROOT = "root"
    USERNS = "user namespace"
    USER = "user"


@dataclass(frozen=True)
class Plan:
    route: Route
    host: Host
    why: str = ""


def plan() -> Plan:
    """The route by the mkfs.btrfs version found, and who extracts; says which and why."""
    mkfs = require_version("mkfs.btrfs")
    found = tool_version(mkfs) or (0,)
    have = ".".join(map(str, found))
    if found >= SUBVOL_MKFS:
        route, why = Route.SUBVOLUME, f"mkfs.btrfs {have} makes {SUBVOL} (--subvol)"
    else:
        route, why = Route.SNAPSHOT, (
            f"mkfs.btrfs {have} is older than {'.'.join(map(str, SUBVOL_MKFS))}: the guest "
            f"snapshots the tree into {SUBVOL} (`python3 -m pipeline.hostsetup` installs a "
            "newer one on Debian 12)")
    if os.geteuid() == 0:
        host, who = Host.ROOT, "extracting as root"
    elif (problem := userns.problem()) is None:
        host, who = Host.USERNS, f"extracting in a user namespace ({userns.describe()})"
    else:
        host, who = Host.USER, f"extracting as this user ({problem}): the guest sets owners"
    return Plan(route, host, f"{why}; {who}")


@dataclass(frozen=True)
class PackOptions:
    """What shapes the image besides its tree: the btrfs label, a fixed size (None: the
    content + slack, rounded up to a MiB)."""

    label: str
    size: int | None
    slack: int


def inputs(rootfs_key: str, appliance_key: str, opts: PackOptions) -> StageInputs:
    """The pack stage's key: the rootfs, the VM helper, and the options pack() takes."""
    return StageInputs("pack", VERSION, {
        "rootfs": rootfs_key, "appliance": appliance_key,
        "label": opts.label, "size": opts.size, "slack": opts.slack,
    })


def write_job(staged: Staged, label: str, job: Path) -> None:
    """Step 3: the guest's instructions as a plain tar (see qemu/init, mode `pack`)."""
    with tarfile.open(job, "w", format=tarfile.PAX_FORMAT) as jt:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            jt.addfile(ti, io.BytesIO(data))

        add("label", label.encode())
        for (uid, gid), names in sorted(staged.owners.items()):
            add(f"chown.{uid}:{gid}", _argv_names(names))
        for mode, names in sorted(staged.modes.items()):
            add(f"chmod.{mode:04o}", _argv_names(names))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as st:
            # the root's metadata too: the snapshot made it the subvolume's root anew
            parents = {""} | {member_path(m.name).rpartition("/")[0] for m in staged.special}
            for name in sorted(parents):
                d = staged.dirs.get(name)
                if d is not None:
                    st.addfile(_renamed(d, name or "."))
            for m in staged.special:
                name = member_path(m.name)
                if m.isreg():
                    with open(staged.tree / name, "rb") as f:
                        st.addfile(_renamed(m, name), f)
                elif m.islnk():
                    link = _renamed(m, name)
                    link.linkname = member_path(m.linkname)
                    st.addfile(link)
                else:
                    st.addfile(_renamed(m, name))
        add("special.tar", buf.getvalue())


def _argv_names(names: list[str]) -> bytes:
    """NUL-separated names for the guest's `xargs -0 chown|chmod`, each starting with `./`:
    a member named `-R` must stay a path, never become an option."""
    return b"".join(b"./" + os.fsencode(n) + b"\0" for n in names)


def _renamed(m: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    c = copy.copy(m)
    c.pax_headers = {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    c.name = name
    c.uname = c.gname = ""
    return c


def mkfs(tree: Path, image: Path, label: str, fsid: str | None = None, *,
         subvol: str | None = None) -> int:
    """Step 2: a btrfs of `tree`, shrunk to its content; returns that size in bytes.
    `fsid` fixes the filesystem UUID (else mkfs.btrfs draws one) and, with `subvol`, the
    device UUID. With `subvol` (a directory directly in `tree`) that directory becomes the
    subvolume and the default one."""
    image.unlink(missing_ok=True)
    image.touch()  # mkfs.btrfs stats the target first and complains about a missing one
    argv: list[str | Path] = [require_version("mkfs.btrfs"), "-q", "--rootdir", tree,
                              "--shrink", "-L", label, "-m", "dup", "-d", "single"]
    if fsid:
        argv += ["-U", fsid]
    if subvol:
        argv += ["--subvol", f"default:{subvol}"]
        if fsid:
            argv += ["--device-uuid", device_uuid(fsid)]
    run([*argv, image], hint="mkfs.btrfs could not build the image; is the disk full?")
    return image.stat().st_size


def device_uuid(fsid: str) -> str:
    """The btrfs device UUID that goes with a fixed filesystem UUID."""
    return str(uuid.UUID(hex=hashlib.sha256(f"device:{fsid}".encode()).hexdigest()[:32],
                         version=4))


MIN_SIZE = 256 << 20  # the kernel refuses to resize a btrfs to less


def plan_size(content: int, fixed: int | None, slack: int) -> int:
    """The image size: the fixed one, or content + slack in whole MiB, at least MIN_SIZE."""
    if fixed is not None:
        if fixed < content:
            raise PipelineError(
                f"baguette.size is {fixed} bytes but the content needs {content} bytes",
                hint="raise baguette.size or set it to \"auto\" (content + slack)")
        return fixed
    total = max(content + slack, MIN_SIZE)
    return (total + (1 << 20) - 1) // (1 << 20) << 20


@dataclass(frozen=True)
class HostJob:
    """Steps 1-4, as the host side runs them (in this process, or as root of a user
    namespace: `python -m pipeline.baguette.pack JOB.json`)."""

    tarball: str
    work: str
    image: str
    label: str
    size: int | None
    slack: int
    fsid: str | None
    route: str
    privileged: bool
    clock: int | None = None  # SOURCE_DATE_EPOCH: the times mkfs.btrfs would take from now


def host_side(job: HostJob) -> dict[str, Any]:
    """Steps 1-4; returns figures and whether the guest has work (`job.tar` in job.work)."""
    work = Path(job.work)
    subvolume = Route(job.route) is Route.SUBVOLUME
    rootdir = work / "root"
    tree = rootdir / SUBVOL if subvolume else rootdir
    tree.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        with step(f"Extracting the rootfs on the host{' (privileged)' if job.privileged else ''}"):
            staged = extract(Path(job.tarball), tree, privileged=job.privileged,
                             placeholders=subvolume)
            info(f"{staged.entries} entries, {staged.content_bytes / 2**20:.0f} MiB of files, "
                 f"{len(staged.devices)} device nodes; left for the guest: "
                 f"{sum(len(v) for v in staged.owners.values())} owners, "
                 f"{sum(len(v) for v in staged.modes.values())} modes, "
                 f"{len(staged.special)} special")
        t1 = time.monotonic()
        image = Path(job.image)
        top = staged.dirs.get("")
        clock = job.clock if job.clock is not None else int(top.mtime if top else 0)
        if subvolume:  # the top level's directory: mkfs copies its times
            os.utime(rootdir, (clock, clock))
        with step("mkfs.btrfs --rootdir" + (f" --subvol default:{SUBVOL}" if subvolume else "")):
            content = mkfs(rootdir, image, job.label, job.fsid,
                           subvol=SUBVOL if subvolume else None)
            size = plan_size(content, job.size, job.slack)
            os.truncate(image, size)
            if subvolume:
                btrfsedit.set_devices(image, {os.fsencode(n): v
                                              for n, v in staged.devices.items()})
                btrfsedit.grow(image, size)
            if job.fsid:
                btrfsedit.pin(image, job.fsid, int(clock))
            info(f"content {content / 2**20:.0f} MiB, image {size / 2**20:.0f} MiB (sparse)")
        guest_work = not subvolume or staged.left_for_guest() > 0
        if guest_work:
            write_job(staged, job.label, work / "job.tar")
        t2 = time.monotonic()
    finally:
        shutil.rmtree(rootdir, ignore_errors=True)
    return {"content_bytes": content, "image_bytes": size, "entries": staged.entries,
            "guest_work": guest_work, "extract_s": t1 - t0, "mkfs_s": t2 - t1}


def _host_side_in_userns(job: HostJob) -> dict[str, Any]:
    """host_side() as root of a user namespace over this user's subordinate ids."""
    work = Path(job.work)
    request, result = work / "host-job.json", work / "host-result.json"
    request.write_text(json.dumps(asdict(job)))
    argv = userns.argv([sys.executable, "-m", "pipeline.baguette.pack", str(request),
                        str(result)])
    log_command(argv)
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    sys.stderr.write(proc.stderr.decode(errors="replace"))  # its step lines
    try:
        out: dict[str, Any] = json.loads(result.read_text())
    except (OSError, ValueError):
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise PipelineError(
            f"the host side of the pack (in a user namespace) failed (exit "
            f"{proc.returncode}): {' | '.join(tail)}",
            hint="set up subordinate ids for this user (/etc/subuid, /etc/subgid) or run as "
            "root; the message above is the tool's") from None
    if "error" in out:
        raise PipelineError(out["error"], hint=out.get("hint", ""))
    return out


def pack(tarball: Path, image: Path, opts: PackOptions, guest: Guest, *, log_path: Path,
         work_dir: Path, fsid: str | None = None, how: Plan | None = None,
         clock: int | None = None) -> dict[str, Any]:
    """The pack stage: rootfs tarball -> raw btrfs image at `image`. `fsid` fixes the
    filesystem UUID and seeds every other UUID mkfs would draw (btrfsedit.pin); `clock`
    (SOURCE_DATE_EPOCH) stands for the time mkfs would read; `how` overrides the route and
    extractor plan() chooses.

    Returns sizes in bytes, each phase's seconds (extract_s, mkfs_s, guest_s), the route,
    who extracted and whether the guest booted.
    """
    how = how or plan()
    info(f"pack route: {how.route.value} ({how.why})")
    work = work_tempdir(work_dir, "pack")
    try:
        job = HostJob(str(plain_tar(tarball, work)), str(work), str(image), opts.label,
                      opts.size, opts.slack, fsid, how.route.value, how.host is not Host.USER,
                      clock)
        figures = _host_side_in_userns(job) if how.host is Host.USERNS else host_side(job)
        t2 = time.monotonic()
        if figures["guest_work"]:
            mode = "fixup" if how.route is Route.SUBVOLUME else "pack"
            with step(f"Fixing up in the guest ({guest.accel.value})"):
                guest.boot([Disk(image, "image"), Disk(work / "job.tar", "job", readonly=True)],
                           f"appliance.mode={mode}", log_path=log_path, what="pack",
                           expect="PACKED", job=True)
        else:
            info("nothing left for the guest (owners, modes, device nodes and xattrs are set "
                 "on the host): no VM boot")
        return {**figures, "guest_s": time.monotonic() - t2, "route": how.route.value,
                "host": how.host.value, "guest_booted": figures["guest_work"],
                "allocated_bytes": image.stat().st_blocks * 512}
    finally:
        userns.remove_tree(work)


def _child_main(request: Path, result: Path) -> int:
    """The host side as root of a user namespace (see _host_side_in_userns)."""
    try:
        out = host_side(HostJob(**json.loads(request.read_text())))
    except PipelineError as exc:
        out = {"error": exc.message, "hint": exc.hint}
    result.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(Path(sys.argv[1]), Path(sys.argv[2])))
