"""The pack stage's host extraction: a rootfs tarball -> a staging tree for mkfs.btrfs, and a
note of what the host could not set (for the VM helper's guest).

Who extracts decides what the tree can hold:

- `privileged` (root, or root of a user namespace mapping the subordinate ids): owners,
  modes (setuid after chown), xattrs incl. security.capability, each as in the tarball; an id
  outside the namespace's map, or an xattr the kernel refuses, is left for the guest;
- otherwise this user owns everything: modes are made readable for the owner, and owners,
  the real modes and every entry with xattrs are left for the guest.

Device nodes: with `placeholders` each becomes an empty regular file with the node's owner
and permissions, which btrfsedit.set_devices turns into the device after mkfs (mkfs.btrfs
writes rdev 0, and mknod needs real root); without, they are left for the guest.

File data moves with copy_file_range (in-kernel, a reflink where the host filesystem can).
Each file is created with O_NOFOLLOW | O_EXCL under a directory made here, after the
tarball rules (core/tarballs.py) checked its name.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import PipelineError
from ..core.log import progress
from ..core.tarballs import checked_members, copy_range, member_path, open_plain, safe_name

XATTR = "SCHILY.xattr."
REFUSED = (errno.EINVAL, errno.EPERM, errno.ENOTSUP, errno.EOVERFLOW)  # id or xattr refused


@dataclass
class Staged:
    """What the host extraction made, and what it left for the guest to fix."""

    tree: Path
    privileged: bool
    placeholders: bool
    content_bytes: int = 0
    entries: int = 0
    owners: dict[tuple[int, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    modes: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    special: list[tarfile.TarInfo] = field(default_factory=list)
    special_names: set[str] = field(default_factory=set)
    devices: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (mode, rdev)
    dirs: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # "" is the root
    regular: set[str] = field(default_factory=set)  # names of regular files (link targets)

    def left_for_guest(self) -> int:
        return sum(map(len, self.owners.values())) + sum(map(len, self.modes.values())) + len(
            self.special)


def kernel_rdev(major: int, minor: int) -> int:
    """A device number as the kernel (and so btrfs) stores it: MKDEV, 20 minor bits."""
    return (major << 20) | minor


def _host_mode(m: tarfile.TarInfo) -> int:
    """The mode an unprivileged host gives: the target's, readable (and enterable) by the
    owner."""
    mode = m.mode & 0o7777
    return mode | (0o700 if m.isdir() else 0o600)


def extract(tarball: Path, tree: Path, *, privileged: bool = False,
            placeholders: bool = False) -> Staged:
    """Extract the plain (uncompressed) tar `tarball` into the empty directory `tree`."""
    staged = Staged(tree, privileged, placeholders)
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
            path = tree / name if name else tree
            if _write(m, name, path, staged, src_fd):
                _metadata(staged, m, name, path)
            if m.offset_data - done > 1 << 24:
                bar.update(m.offset_data - done)
                done = m.offset_data
    # directories last: their mtimes changed while their children were written
    for name, m in staged.dirs.items():
        os.utime(tree / name if name else tree, (m.mtime, m.mtime))
    return staged


def _write(m: tarfile.TarInfo, name: str, path: Path, staged: Staged, src_fd: int) -> bool:
    """Create one member on the host; False for a member whose metadata is another's (a
    hardlink) or that the guest makes (a device node without placeholders)."""
    if m.isdir():
        if name:
            _clear(path, keep_dir=True)
            path.mkdir(exist_ok=True)
        staged.dirs[name] = m
        os.chmod(path, 0o700)  # writable for now, whatever the owner; _metadata sets the mode
        return True
    if m.ischr() or m.isblk():
        if not staged.placeholders:
            _special(staged, m, name)
            return False
        _clear(path)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        staged.devices[name] = (kind | m.mode & 0o7777, kernel_rdev(m.devmajor, m.devminor))
        staged.regular.add(name)  # a hardlink may name it
        return True
    if m.islnk():
        _hardlink(m, name, path, staged)
        return False
    _clear(path)
    if m.isreg():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            copy_range(src_fd, fd, m.offset_data, m.size)
        finally:
            os.close(fd)
        staged.content_bytes += m.size
        staged.regular.add(name)
    elif m.issym():
        os.symlink(m.linkname, path)
    elif m.isfifo():
        os.mkfifo(path, 0o600)
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


def _metadata(staged: Staged, m: tarfile.TarInfo, name: str, path: Path) -> None:
    """Owner, mode, xattrs and mtime of a member the host wrote, or a note for the guest."""
    xattrs = {k[len(XATTR):]: v for k, v in m.pax_headers.items() if k.startswith(XATTR)}
    if not staged.privileged:
        if xattrs:
            _special(staged, m, name)
        if (m.uid, m.gid) != (os.getuid(), os.getgid()):
            staged.owners[(m.uid, m.gid)].append(name or ".")
            chowned = True
        else:
            chowned = False
        if not m.issym():
            os.chmod(path, _host_mode(m))
            if _host_mode(m) != m.mode & 0o7777 or (chowned and m.mode & 0o6000):
                staged.modes[m.mode & 0o7777].append(name or ".")
    else:
        try:
            os.lchown(path, m.uid, m.gid)
            chowned = False
        except OSError as exc:  # an id the user namespace does not map
            if exc.errno not in REFUSED:
                raise
            staged.owners[(m.uid, m.gid)].append(name or ".")
            chowned = True
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)  # after chown, which clears setuid
            if chowned and m.mode & 0o6000:
                staged.modes[m.mode & 0o7777].append(name or ".")
        for key, value in xattrs.items():  # after chown, which drops security.capability
            try:
                os.setxattr(path, key, value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in REFUSED:
                    raise
                _special(staged, m, name)
                break
    if not m.isdir():
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)


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
