"""A rootfs's full metadata manifest, read from a tar stream.

One record per path: type, mode (with setuid/setgid/sticky), owner, size, link count, link
target, device numbers, xattrs, content hash, mtime. Hardlinked names share one record's
content and count their names in `nlink`, whichever name the archive stored first. The same
function reads the rootfs tarball and the tree the VM helper reads back out of an image, so
the two compare with `==`.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.core.tarballs import corrupt, member_path

TYPES = {
    tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink", tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
}


@dataclass(frozen=True)
class Meta:
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    link: str
    rdev: tuple[int, int]
    xattrs: tuple[tuple[str, str], ...]
    sha256: str
    mtime: int


def _name(name: str) -> str:
    return "/" + member_path(name)


def read(path: Path) -> dict[str, Meta]:
    """The manifest of the tar archive at `path` (plain tar)."""
    out: dict[str, Meta] = {}
    groups: dict[str, list[str]] = {}  # first name of an inode -> all its names
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                name = _name(m.name)
                if m.islnk():
                    first = _name(m.linkname)
                    groups.setdefault(first, [first]).append(name)
                    continue
                digest = ""
                if m.isreg():
                    f = tf.extractfile(m)
                    assert f is not None
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                    digest = h.hexdigest()
                xattrs = tuple(sorted((k[len("SCHILY.xattr."):], v)
                                      for k, v in m.pax_headers.items()
                                      if k.startswith("SCHILY.xattr.")))
                out[name] = Meta(
                    type=TYPES.get(m.type, f"other:{m.type!r}"),
                    mode=m.mode & 0o7777 if not m.issym() else 0o777,
                    uid=m.uid, gid=m.gid,
                    size=m.size if m.isreg() else 0,
                    nlink=1,
                    link=m.linkname if m.issym() else "",
                    rdev=(m.devmajor, m.devminor) if (m.ischr() or m.isblk()) else (0, 0),
                    xattrs=xattrs,
                    sha256=digest,
                    mtime=int(m.mtime),
                )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise corrupt(path, exc) from None
    for first, names in groups.items():
        meta = replace(out[first], nlink=len(names))
        for n in names:
            out[n] = meta
    return out


def differences(expected: dict[str, Meta], actual: dict[str, Meta], limit: int = 20) -> list[str]:
    """Readable lines for what differs (empty when equal)."""
    lines = []
    for name in sorted(expected.keys() | actual.keys()):
        a, b = expected.get(name), actual.get(name)
        if a == b:
            continue
        if a is None:
            lines.append(f"{name}: unexpected")
        elif b is None:
            lines.append(f"{name}: missing")
        else:
            fields = [f"{k}: {getattr(a, k)!r} != {getattr(b, k)!r}"
                      for k in a.__dataclass_fields__ if getattr(a, k) != getattr(b, k)]
            lines.append(f"{name}: {'; '.join(fields)}")
        if len(lines) >= limit:
            lines.append("...")
            break
    return lines
