"""Delta image update: a new Baguette image from the previous one plus what changed.

When only the overlay changed (same base rootfs, same VM helper, same image options), the
new raw image is a sparse (or reflinked) copy of the previous one on which the VM helper
(qemu/init, mode `delta`) removes what went away and extracts what is new or changed, with
their parent directories so those keep their mtimes. The result holds the same file tree
as a full pack; `plan` says when a delta would not be valid and the full pack runs instead.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..core.run import run
from ..core.tarballs import member_path, members, open_plain, rewrite
from ..vmhelper.qemu import Disk, Guest

MAX_CHANGED_FRACTION = 0.25  # past this a full pack is about as fast and keeps no cruft


@dataclass(frozen=True)
class Delta:
    changed: list[str]  # names (as in the tar) to extract, parents first
    deleted: list[str]  # names to remove before extracting
    changed_bytes: int


def _index(path: Path) -> dict[str, tarfile.TarInfo]:
    with open_plain(path) as tf:
        return {member_path(m.name): m for m in members(tf, path)}


def _header(m: tarfile.TarInfo) -> tuple[object, ...]:
    xattrs = tuple(sorted((k, v) for k, v in m.pax_headers.items()
                          if k.startswith("SCHILY.xattr.")))
    return (m.type, m.mode, m.uid, m.gid, int(m.mtime), m.size, m.linkname,
            m.devmajor, m.devminor, xattrs)


def _same_data(a_fd: int, a: tarfile.TarInfo, b_fd: int, b: tarfile.TarInfo) -> bool:
    left, off_a, off_b = a.size, a.offset_data, b.offset_data
    while left:
        n = min(left, 1 << 20)
        if os.pread(a_fd, n, off_a) != os.pread(b_fd, n, off_b):
            return False
        left, off_a, off_b = left - n, off_a + n, off_b + n
    return True


def diff(old: Path, new: Path) -> Delta | None:
    """What turns the tree of `old` into the tree of `new`; None if a delta is not worth it
    or not safe (hardlinked files changed: their link sets are left to a full pack)."""
    a, b = _index(old), _index(new)
    changed: list[str] = []
    changed_bytes = total = 0
    a_fd, b_fd = os.open(old, os.O_RDONLY), os.open(new, os.O_RDONLY)
    try:
        for name, m in b.items():
            total += m.size if m.isreg() else 0
            prev = a.get(name)
            if prev is not None and _header(prev) == _header(m) and (
                    not m.isreg() or _same_data(a_fd, prev, b_fd, m)):
                continue
            if m.islnk() or (prev is not None and prev.islnk()):
                return None
            changed.append(name)
            changed_bytes += m.size if m.isreg() else 0
    finally:
        os.close(a_fd)
        os.close(b_fd)
    deleted = [n for n in a if n not in b or a[n].type != b[n].type]
    linked = {member_path(m.linkname) for m in b.values() if m.islnk()}
    if linked & set(changed) or any(a[n].islnk() for n in deleted):
        return None
    if total and changed_bytes > MAX_CHANGED_FRACTION * total:
        return None
    return Delta(changed, deleted, changed_bytes)


def write_job(delta: Delta, new: Path, job: Path) -> None:
    """The guest's job: `delete` (NUL-separated) and `delta.tar` (changed entries with their
    parent directories, whose mtimes the changes disturb)."""
    index = _index(new)
    names = set(delta.changed)
    for n in delta.changed + delta.deleted:
        parent = n.rpartition("/")[0]
        names.add(parent)
    ordered = sorted(names, key=lambda n: n.split("/") if n else [])
    inner = job.with_suffix(".inner")
    picked = [index[n] for n in ordered if n in index]
    for m in picked:
        m.name = f"./{member_path(m.name)}" if member_path(m.name) else "."
        m.uname = m.gname = ""
    rewrite(new, inner, picked)
    with tarfile.open(job, "w", format=tarfile.PAX_FORMAT) as jt:
        blob = b"".join(os.fsencode(n) + b"\0" for n in delta.deleted)
        ti = tarfile.TarInfo("delete")
        ti.size = len(blob)
        jt.addfile(ti, io.BytesIO(blob))
        jt.add(inner, "delta.tar")
    inner.unlink()


def apply(previous_image: Path, image: Path, delta: Delta, new_rootfs: Path, guest: Guest,
          *, log_path: Path, work: Path) -> None:
    run(["cp", "--reflink=auto", "--sparse=always", previous_image, image],
        hint="copying the previous image failed; is the disk full?")
    if not delta.changed and not delta.deleted:
        return  # the same tree (a key input that changes no file): the copy is the image
    job = work / "delta-job.tar"
    write_job(delta, new_rootfs, job)
    try:
        guest.boot([Disk(image, "image"), Disk(job, "job", readonly=True)],
                   "appliance.mode=delta", log_path=log_path, what="delta update",
                   expect="UPDATED", job=True)
    finally:
        job.unlink(missing_ok=True)
