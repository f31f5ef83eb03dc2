"""What architecture a rootfs tarball is for: the ELF header of its /sbin/init or /bin/sh.

Symlinks are followed inside the tree, never on the host: an absolute target is taken from
the tree's root, so `/sbin -> usr/sbin` and `init -> /lib/systemd/systemd` (Debian, usrmerge)
resolve, as does a hard link to the file that holds the data. A script (`#!/bin/sh`) is no
answer: the next candidate is read. When no candidate is an ELF file the tree says nothing
(a tree of scripts), and the configured architecture stands.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..core.arch import Arch, elf_machine, from_elf_machine, machine_name
from ..core.errors import PipelineError

CANDIDATES = ("/sbin/init", "/bin/sh")
MAX_LINKS = 40  # symlinks followed for one path, as the kernel's own limit


@dataclass(frozen=True)
class Found:
    path: str  # the candidate, as asked for (/sbin/init)
    resolved: str  # the member holding its bytes
    machine: int  # ELF e_machine


def _normal(name: str) -> str:
    """`./usr/bin/`, `usr/bin`, `/usr/bin` -> `/usr/bin`; `.` and `./` -> `/`."""
    return posixpath.normpath("/" + name).replace("//", "/")


class _Tree:
    def __init__(self, tf: tarfile.TarFile) -> None:
        self.tf = tf
        self.members = {_normal(m.name): m for m in tf.getmembers()}

    def resolve(self, path: str) -> tarfile.TarInfo | None:
        """The member `path` names after symlinks (None if it leads outside the tree's
        entries or loops)."""
        parts = [p for p in path.split("/") if p]
        done = "/"
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                done = posixpath.dirname(done) or "/"
                continue
            if part == ".":
                continue
            here = posixpath.join(done, part)
            member = self.members.get(here)
            if member is None and parts:  # a directory the archive does not list
                done = here
                continue
            if member is None:
                return None
            if member.issym():
                hops += 1
                if hops > MAX_LINKS:
                    return None
                target = member.linkname
                base = "/" if target.startswith("/") else done
                parts = [p for p in target.split("/") if p] + parts
                done = base
                continue
            done = here
            if not parts:
                return member
        return self.members.get(done)

    def head(self, member: tarfile.TarInfo) -> bytes:
        if member.islnk():
            target = self.members.get(_normal(member.linkname))
            if target is None or not target.isfile():
                return b""
            member = target
        if not member.isfile():
            return b""
        f = self.tf.extractfile(member)
        return f.read(64) if f is not None else b""


def read_arch(tarball: Path) -> Found | None:
    """The first candidate that is an ELF file, or None."""
    with tarfile.open(tarball) as tf:
        tree = _Tree(tf)
        for path in CANDIDATES:
            member = tree.resolve(path)
            if member is None:
                continue
            machine = elf_machine(tree.head(member))
            if machine is not None:
                return Found(path, _normal(member.name), machine)
    return None


def check_arch(tarball: Path, want: Arch, where: str) -> Found | None:
    """Refuse a tree built for another architecture than `want`; returns what was read."""
    found = read_arch(tarball)
    if found is None or found.machine == want.elf_machine:
        return found
    via = f" ({found.resolved})" if found.resolved != found.path else ""
    is_ = machine_name(found.machine)
    raise PipelineError(
        f"{where}: the rootfs is for {is_} ({found.path}{via} is an {is_} ELF), "
        f"but arch = {want.name!r}",
        hint=(f"set arch = {is_!r} for this tree, or give a tarball built for {want.name}"
              if from_elf_machine(found.machine) is not None else
              f"images are x86_64 or aarch64: give a tarball built for {want.name}"))
