"""Pack a rootfs tarball into a raw btrfs Baguette image, unprivileged.

Technical details. The image is a raw file, no partition table, the whole disk one btrfs
filesystem; the root tree lives in the subvolume `rootfs_subvol`, which is the default
subvolume. Extracting a whole tarball inside an emulated guest is slow (~8x a native
`tar -x` + `mkfs.btrfs --rootdir` under TCG), so the work is split:

on the host, as any user:
  1. extract the tarball into a staging tree with the file contents, modes (made readable
     for the owner where needed), mtimes, symlinks, hardlinks and fifos;
  2. `mkfs.btrfs --rootdir` that tree into the image file at its top level, shrunk to fit,
     then grow the file to content + slack (or the fixed size);
  3. write a small job tar: which paths need which owner, which modes to put back after
     chown cleared setuid bits, and a tar of what a user cannot create (device nodes, files
     with xattrs such as security.capability) plus their parent directories;
in the guest (qemu/init, mode `pack`), which needs a mounted btrfs:
  4. snapshot the top level into `rootfs_subvol` (shares every extent), set it as default,
     drop the top-level copy, grow the filesystem to the disk, apply owners, modes and the
     special tar with GNU tar (numeric owners, xattrs, device numbers, mtimes).
The host never needs root, a loop device or a mount.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import stat
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import PipelineError
from ..core.fsutil import work_tempdir
from ..core.log import info, progress, step
from ..core.run import require_version, run
from ..core.tarballs import (
    checked_members,
    copy_range,
    member_path,
    open_plain,
    plain_tar,
    safe_name,
)
from ..store.keys import StageInputs
from ..vmhelper.qemu import Disk, Guest

VERSION = 2  # 2: the filesystem UUID comes from the key; the guest clock from SOURCE_DATE_EPOCH
SUBVOL = "rootfs_subvol"
COPY_CHUNK = 1 << 20


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


@dataclass
class Staged:
    """What the host extraction left for the guest to fix."""

    tree: Path
    content_bytes: int = 0
    entries: int = 0
    owners: dict[tuple[int, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    modes: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    special: list[tarfile.TarInfo] = field(default_factory=list)
    special_names: set[str] = field(default_factory=set)
    dirs: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # "" is the root
    regular: set[str] = field(default_factory=set)  # names of regular files (link targets)


def _host_mode(info_: tarfile.TarInfo) -> int:
    """The mode to give on the host: the target's, readable (and enterable) by the owner."""
    mode = info_.mode & 0o7777
    return mode | (0o700 if info_.isdir() else 0o600)


def extract(tarball: Path, tree: Path) -> Staged:
    """Step 1: extract the plain (uncompressed) tar `tarball` into the empty directory `tree`.

    File data moves with copy_file_range (in-kernel, a reflink where the host filesystem
    can), so the cost is the filesystem's, not Python's.
    """
    staged = Staged(tree)
    owner = (os.getuid(), os.getgid())
    tf = open_plain(tarball)
    src_fd = tf.fileobj.fileno()  # type: ignore[union-attr,attr-defined]
    with tf, progress(tarball.stat().st_size, "extracting") as bar:
        done = 0
        for m in checked_members(tf, tarball):
            name = safe_name(m.name, tarball)
            parent = name.rpartition("/")[0]
            if parent and parent not in staged.dirs:
                raise PipelineError(
                    f"tarball entry {m.name!r} comes before its directory or lies under a "
                    "symlink or file",
                    hint="normalise the tarball first (the customize stage does)")
            staged.entries += 1
            if _write(m, name, tree / name if name else tree, staged, src_fd):
                _note_metadata(staged, m, name, owner)
            if m.offset_data - done > 1 << 24:
                bar.update(m.offset_data - done)
                done = m.offset_data
    # directories last: their mtimes changed while their children were written
    for name, m in staged.dirs.items():
        os.utime(tree / name if name else tree, (m.mtime, m.mtime))
    return staged


def _write(m: tarfile.TarInfo, name: str, path: Path, staged: Staged, src_fd: int) -> bool:
    """Create one member on the host; False for a member whose metadata is another's (a
    hardlink) or that the guest makes (a device node)."""
    if m.isdir():
        if name:
            _clear(path, keep_dir=True)
            path.mkdir(exist_ok=True)
        staged.dirs[name] = m
        os.chmod(path, _host_mode(m))
        return True
    if m.ischr() or m.isblk():
        _special(staged, m, name)
        return False
    if m.islnk():
        _hardlink(m, name, path, staged)
        return False
    _clear(path)
    if m.isreg():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            copy_range(src_fd, fd, m.offset_data, m.size)
            os.fchmod(fd, _host_mode(m))
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        staged.content_bytes += m.size
        staged.regular.add(name)
    elif m.issym():
        os.symlink(m.linkname, path)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
    elif m.isfifo():
        os.mkfifo(path, 0o600)
        os.chmod(path, _host_mode(m))
        os.utime(path, (m.mtime, m.mtime))
    else:
        raise PipelineError(f"tarball entry {m.name!r} has an unsupported type {m.type!r}",
                            hint="remove it from the rootfs")
    return True


def _hardlink(m: tarfile.TarInfo, name: str, path: Path, staged: Staged) -> None:
    target = member_path(m.linkname)
    if target not in staged.regular:
        raise PipelineError(
            f"tarball entry {m.name!r} is a hardlink to {m.linkname!r}, which is not a "
            "regular file earlier in the archive", hint="the tarball is malformed")
    _clear(path)
    os.link(staged.tree / target, path)
    if target in staged.special_names:
        _special(staged, m, name)


def _special(staged: Staged, m: tarfile.TarInfo, name: str) -> None:
    staged.special.append(m)
    staged.special_names.add(name)


def _note_metadata(staged: Staged, m: tarfile.TarInfo, name: str,
                   host_owner: tuple[int, int]) -> None:
    """What the guest must set on a member the host wrote: xattrs, owner, mode bits."""
    if any(k.startswith("SCHILY.xattr.") for k in m.pax_headers):
        _special(staged, m, name)
    owner = (m.uid, m.gid)
    chowned = owner != host_owner
    if chowned:
        staged.owners[owner].append(name or ".")
    if not m.issym() and (_host_mode(m) != m.mode & 0o7777 or (chowned and m.mode & 0o6000)):
        staged.modes[m.mode & 0o7777].append(name or ".")


def _clear(path: Path, keep_dir: bool = False) -> None:
    """Make room for a later duplicate entry (tar semantics: the last one wins)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        raise PipelineError(f"tarball entry {path.name!r} replaces a directory",
                            hint="the tarball has conflicting duplicate entries")
    path.unlink()


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


def mkfs(tree: Path, image: Path, label: str, fsid: str | None = None) -> int:
    """Step 2: a btrfs of `tree`, shrunk to its content; returns that size in bytes.
    `fsid` fixes the filesystem UUID (else mkfs.btrfs draws one)."""
    image.unlink(missing_ok=True)
    image.touch()  # mkfs.btrfs stats the target first and complains about a missing one
    run([require_version("mkfs.btrfs"), "-q", "--rootdir", tree, "--shrink", "-L", label,
         *(["-U", fsid] if fsid else []), "-m", "dup", "-d", "single", image],
        hint="mkfs.btrfs could not build the image; is the disk full?")
    return image.stat().st_size


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


def pack(tarball: Path, image: Path, opts: PackOptions, guest: Guest, *, log_path: Path,
         work_dir: Path, fsid: str | None = None) -> dict[str, float]:
    """The pack stage: rootfs tarball -> raw btrfs image at `image`. `fsid` fixes the
    filesystem UUID.

    Returns sizes in bytes and each phase's seconds (extract_s, mkfs_s, guest_s).
    """
    work = work_tempdir(work_dir, "pack")
    t0 = time.monotonic()
    try:
        tree = work / "tree"
        tree.mkdir()
        with step("Extracting the rootfs on the host"):
            staged = extract(plain_tar(tarball, work), tree)
            info(f"{staged.entries} entries, {staged.content_bytes / 2**20:.0f} MiB of files, "
                 f"{sum(len(v) for v in staged.owners.values())} to chown, "
                 f"{len(staged.special)} special")
        t1 = time.monotonic()
        with step("mkfs.btrfs --rootdir"):
            content = mkfs(tree, image, opts.label, fsid)
            size = plan_size(content, opts.size, opts.slack)
            os.truncate(image, size)
            info(f"content {content / 2**20:.0f} MiB, image {size / 2**20:.0f} MiB (sparse)")
        job = work / "job.tar"
        write_job(staged, opts.label, job)
        shutil.rmtree(tree)
        t2 = time.monotonic()
        with step(f"Fixing up in the guest ({guest.accel.value})"):
            guest.boot([Disk(image, "image"), Disk(job, "job", readonly=True)],
                       "appliance.mode=pack", log_path=log_path, what="pack", expect="PACKED")
        t3 = time.monotonic()
        return {"content_bytes": content, "image_bytes": size,
                "allocated_bytes": image.stat().st_blocks * 512,
                "extract_s": t1 - t0, "mkfs_s": t2 - t1, "guest_s": t3 - t2}
    finally:
        shutil.rmtree(work, ignore_errors=True)
