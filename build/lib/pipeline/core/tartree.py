"""Looking things up in a plain rootfs tarball without extracting it: an index of its members
by relative name, paths resolved the way the guest would (following symlinks inside the
tree, never on the host), and small files read by offset."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath

from .tarballs import member_path, members, open_plain


def index(rootfs: Path) -> dict[str, tarfile.TarInfo]:
    """Members of the plain tar `rootfs` by relative name (the last duplicate wins)."""
    out: dict[str, tarfile.TarInfo] = {}
    with open_plain(rootfs) as tf:
        for m in members(tf, rootfs):
            out[member_path(m.name)] = m
    return out


def resolve(entries: dict[str, tarfile.TarInfo], path: str) -> tarfile.TarInfo | None:
    """The entry `path` names inside the rootfs, following its symlinks (as the container
    would see them); None if it does not exist."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = "/".join([*done, part])
        m = entries.get(here)
        if m is None:
            return None
        if m.issym():
            hops += 1
            if hops > 40:
                return None
            target = PurePosixPath(m.linkname)
            if target.is_absolute():
                done = []
            parts = [p for p in target.parts if p != "/"] + parts
            continue
        done.append(part)
    return entries.get("/".join(done)) if done else None


def read_text(rootfs: Path, entries: dict[str, tarfile.TarInfo], path: str) -> str | None:
    """The text of the regular file `path` names in the tree (symlinks followed), or None."""
    m = resolve(entries, path)
    if m is None or not m.isreg():
        return None
    fd = os.open(rootfs, os.O_RDONLY)
    try:
        return os.pread(fd, m.size, m.offset_data).decode(errors="replace")
    finally:
        os.close(fd)
