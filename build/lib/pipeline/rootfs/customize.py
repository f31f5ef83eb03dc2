"""Customize: base rootfs tarball + the image's own files -> the normalised rootfs tarballs,
one per guest kind: `rootfs.tar` for the Baguette VM, `container.tar` for Crostini.

What it adds to Debian and tarball images (a NixOS rootfs is only normalised and scanned, and
both kinds are the same tree): the dotfiles tree in the user's home (owned by the user) and in
/etc/skel (so a user ChromeOS creates with `useradd --create-home` gets them too), the user
itself in /etc/passwd, group, shadow and gshadow when absent, /etc/hostname and /etc/hosts
for the image's hostname, and the ChromeOS guest integration of each kind (integration.py):
in both, the user in vmc's groups and lingering; in the VM, /etc/resolv.conf as a link to
/run/resolv.conf (maitred writes that file; a copy of the build host's resolver must not ship);
in the container an empty /etc/resolv.conf (LXD's DHCP fills it).

How it normalises: entries sorted by path (parents first), numeric owners only (no user or
group names), mtimes whole seconds and clamped to SOURCE_DATE_EPOCH when it is set, pax
headers reduced to xattrs, hardlink sets re-anchored on their first name in sorted order.
The output is a plain (uncompressed) tar: the pack stage reads it by offset.

The dotfiles are hashed as they are read (streamed, never held whole) and compared with the
digests the stage's key was computed from: a dotfile edited during the build stops it, so
an entry never holds other bytes than its key says.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Image, SourceKind
from ..core.errors import ConfigError, PipelineError
from ..core.fsutil import atomic_path, work_tempdir
from ..core.log import info, step
from ..core.tarballs import TarWriter, checked_members, open_plain, plain_tar, safe_name, shown
from ..store.hashing import FileHashMemo, tree_digests
from ..store.keys import StageInputs
from . import integration, secrets
from .facts import require_init
from .integration import Kind

VERSION = 4  # 3: a tree per guest kind, dotfiles in /etc/skel, vmc groups; 4: shadow date
VM_TAR = "rootfs.tar"
CONTAINER_TAR = "container.tar"


def inputs(image: Image, base_key: str, source_date_epoch: int | None,
           memo: FileHashMemo | None = None) -> StageInputs:
    overlay = not nixos(image)
    return StageInputs("rootfs", VERSION, {
        "base": base_key,
        "dotfiles": _dotfile_digests(image, memo),
        "user": image.user if overlay else None,
        "uid": image.uid if overlay else None,
        "hostname": image.hostname if overlay else None,
        "source_date_epoch": source_date_epoch,
        "chromeos_integration": integration.VERSION if image.chromeos_integration else None,
        "secrets_allow": sorted(image.secrets_allow),
        "secret_scan": secrets.VERSION,
    })


def _dotfile_digests(image: Image, memo: FileHashMemo | None) -> dict[str, str]:
    try:
        return tree_digests(image.dotfiles, memo) if image.dotfiles else {}
    except PermissionError as exc:
        raise _unreadable(exc) from None


def _unreadable(exc: OSError) -> PipelineError:
    return PipelineError(f"dotfiles: cannot read {exc.filename}: permission denied",
                         hint="make it readable by the user who builds (chmod, chown), or "
                              "move it out of the dotfiles directory")


def nixos(image: Image) -> bool:
    """A NixOS rootfs gets no overlay: its configuration made the users, the hostname, the
    dotfiles and the ChromeOS integration (nix/modules/), and activation owns /etc."""
    return image.source is SourceKind.NIX


@dataclass
class Entry:
    """One output member: its header, and where its data comes from."""

    info: tarfile.TarInfo
    offset: int | None = None  # data offset in the base tar
    data: bytes | None = None  # or data in memory
    path: Path | None = None  # or a host file
    dotfile: str = ""  # a host file's name in the dotfiles tree (read: what was read)


def _read_base(base: Path) -> tuple[dict[str, Entry], int]:
    """Members of the plain tar `base` by normalised name (the last duplicate wins)."""
    entries: dict[str, Entry] = {}
    newest = 0
    tf = open_plain(base)
    with tf:
        for m in checked_members(tf, base):
            name = safe_name(m.name, base)
            if m.islnk():
                m.linkname = safe_name(m.linkname, base, "hardlink target")
            entries[name] = Entry(m, offset=m.offset_data if m.isreg() else None)
            newest = max(newest, int(m.mtime))
    return entries, newest


def _member(name: str, kind: bytes, mode: int, uid: int, mtime: int, **kw: Any) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid = ti.gid = uid
    ti.mtime = mtime
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _file_text(entries: dict[str, Entry], base_fd: int, name: str) -> str:
    e = entries.get(name)
    if e is None or not e.info.isreg():
        return ""
    if e.data is not None:
        return e.data.decode()
    assert e.offset is not None
    return os.pread(base_fd, e.info.size, e.offset).decode(errors="surrogateescape")


def _set_text(entries: dict[str, Entry], name: str, text: str, mode: int, gid: int,
              mtime: int) -> None:
    data = text.encode(errors="surrogateescape")
    old = entries.get(name)
    ti = _member(name, tarfile.REGTYPE, old.info.mode if old and old.info.isreg() else mode,
                 0, mtime, size=len(data))
    ti.gid = old.info.gid if old and old.info.isreg() else gid
    entries[name] = Entry(ti, data=data)


def _add_user(entries: dict[str, Entry], base_fd: int, image: Image, mtime: int) -> None:
    passwd = _file_text(entries, base_fd, "etc/passwd")
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 3:
            continue
        if fields[0] == image.user:
            if fields[2] != str(image.uid):
                raise ConfigError(
                    f"images.{image.name}.uid: the base rootfs already has user "
                    f"{image.user!r} with uid {fields[2]}", hint=_taken_hint(fields[2]))
            return
        if fields[2] == str(image.uid):
            raise ConfigError(
                f"images.{image.name}.uid: uid {image.uid} already belongs to {fields[0]!r} "
                "in the base rootfs", hint="choose another uid, or set user to that name")
    if "etc/passwd" not in entries:
        return  # not a full system (a test fixture, say): no accounts to extend
    has_group = _check_groups(_file_text(entries, base_fd, "etc/group"), image)
    u, n = image.user, image.uid
    home = f"/home/{u}"

    def append(name: str, line: str, mode: int, gid: int = 0) -> None:
        text = _file_text(entries, base_fd, name)
        if text and not text.endswith("\n"):
            text += "\n"
        _set_text(entries, name, text + line + "\n", mode, gid, mtime)

    append("etc/passwd", f"{u}:x:{n}:{n}::{home}:/bin/bash", 0o644)
    if not has_group:
        append("etc/group", f"{u}:x:{n}:", 0o644)
    shadow_gid = _group_id(_file_text(entries, base_fd, "etc/group"), "shadow")
    if "etc/shadow" in entries:
        # no date of last change: 0 would mean "must change it now", and PAM then refuses
        # the account (user@UID, so garcon and sommelier, would never start)
        append("etc/shadow", f"{u}:!::0:99999:7:::", 0o640, shadow_gid)
    if "etc/gshadow" in entries:
        append("etc/gshadow", f"{u}:!::", 0o640, shadow_gid)


def _taken_hint(uid: str) -> str:
    """What to do when the user name is taken: use its uid, if images.toml accepts it."""
    if uid.isdigit() and 1 <= int(uid) < 65534:
        return f"set uid = {uid}, or choose another user name"
    return f"choose another user name: that one is a system account (uid {uid})"


def _check_groups(group: str, image: Image) -> bool:
    """The user's own group (gid = uid, named like the user) must not be another group: a
    user named `sudo`, or uid 27 where gid 27 is `sudo`, would get that group's rights.
    True if the group already exists exactly so (nothing to add)."""
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) < 3:
            continue
        if fields[0] == image.user and fields[2] == str(image.uid):
            return True
        if fields[0] == image.user:
            raise ConfigError(f"images.{image.name}.user: the base rootfs already has a "
                              f"group {image.user!r} (gid {fields[2]})",
                              hint="choose another user name: the user would get that "
                                   "group's rights")
        if fields[2] == str(image.uid):
            raise ConfigError(f"images.{image.name}.uid: gid {image.uid} already belongs to "
                              f"group {fields[0]!r} in the base rootfs",
                              hint="choose another uid: the user's own group would be that "
                                   "one, with its rights")
    return False


def _group_id(group: str, name: str) -> int:
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return 0


def _dotfiles(image: Image, mtime: int, read: dict[str, str], home: str = "",
              uid: int | None = None) -> Iterator[tuple[str, Entry]]:
    """The dotfiles under `home` (default: the user's home, owned by the user); what is
    read is noted in `read` (the stage's key must describe it)."""
    if not home:
        home, uid = f"home/{image.user}", image.uid
        yield "home", Entry(_member("home", tarfile.DIRTYPE, 0o755, 0, mtime))
        yield home, Entry(_member(home, tarfile.DIRTYPE, 0o700, uid, mtime))
    uid = image.uid if uid is None else uid
    root = image.dotfiles
    if root is None:
        return
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = f"{home}/{p.relative_to(root).as_posix()}"
            st = p.lstat()
            perm = stat.S_IMODE(st.st_mode) & 0o777
            _note_read(read, p.relative_to(root).as_posix(), st, p)
            if stat.S_ISDIR(st.st_mode):
                yield rel, Entry(_member(rel, tarfile.DIRTYPE, perm, uid, mtime))
            elif stat.S_ISLNK(st.st_mode):
                yield rel, Entry(_member(rel, tarfile.SYMTYPE, 0o777, uid, mtime,
                                         linkname=os.readlink(p)))
            elif stat.S_ISREG(st.st_mode):
                yield rel, Entry(_member(rel, tarfile.REGTYPE, perm, uid, mtime,
                                         size=st.st_size), path=p,
                                 dotfile=p.relative_to(root).as_posix())
            else:
                info(f"dotfiles: skipping {p} (not a file, directory or symlink)")


def _raise(exc: OSError) -> None:
    raise _unreadable(exc) if isinstance(exc, PermissionError) else exc


def _note_read(read: dict[str, str], rel: str, st: os.stat_result, path: Path) -> None:
    """What the key's tree_digests says of this dotfile, from what is read now (a file's
    digest is appended when its bytes are streamed: _dotfile_chunks)."""
    if stat.S_ISLNK(st.st_mode):
        read[rel] = f"link:{os.readlink(path)}"
    elif stat.S_ISDIR(st.st_mode):
        read[rel] = f"dir:{stat.S_IMODE(st.st_mode):o}"
    elif stat.S_ISREG(st.st_mode):
        prefix = f"{stat.S_IMODE(st.st_mode):o}:"
        if not read.get(rel, "").startswith(prefix):  # walked again (a second copy): kept
            read[rel] = prefix
    else:
        read[rel] = f"special:{stat.S_IFMT(st.st_mode):o}"


def _dotfile_chunks(e: Entry, size: int, read: dict[str, str]) -> Iterator[bytes]:
    """A dotfile's bytes in chunks, hashed on the way; exactly `size` of them."""
    assert e.path is not None
    h = hashlib.sha256()
    try:
        f = open(e.path, "rb")  # noqa: SIM115 - closed below, a generator
    except PermissionError as exc:
        raise _unreadable(exc) from None
    with f:
        left = size
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
            yield chunk
        if left or f.read(1):
            raise PipelineError(f"dotfiles: {e.path} changed while building",
                                hint="run the build again")
    mode, _, before = read.get(e.dotfile, ":").partition(":")
    if before and before != h.hexdigest():  # streamed twice (a second copy), not alike
        raise PipelineError(f"dotfiles: {e.path} changed while building",
                            hint="run the build again")
    read[e.dotfile] = f"{mode}:{h.hexdigest()}"


def _check_read(read: dict[str, str], keyed: dict[str, str] | None) -> None:
    """The dotfiles read must be the ones the stage's key was computed from."""
    if keyed is None or read == keyed:
        return
    changed = sorted(k for k in read.keys() | keyed.keys() if read.get(k) != keyed.get(k))
    raise PipelineError(f"dotfiles: {', '.join(changed[:3])} changed while the rootfs was "
                        "built (nothing was stored)", hint="run the build again")


def _apply_overlay(entries: dict[str, Entry], base_fd: int, image: Image, mtime: int,
                   read: dict[str, str]) -> None:
    for name, e in _dotfiles(image, mtime, read):
        old = entries.get(name)
        if old is not None and old.info.isdir() and e.info.isdir() and name == "home":
            continue  # keep the base's /home
        if old is not None and old.info.isdir() and not e.info.isdir():
            raise PipelineError(f"dotfiles: /{name} is a directory in the base rootfs",
                                hint="rename or remove that dotfile")
        entries[name] = e
    _add_user(entries, base_fd, image, mtime)
    if "etc" in entries:
        _set_text(entries, "etc/hostname", image.hostname + "\n", 0o644, 0, mtime)
        hosts = _file_text(entries, base_fd, "etc/hosts") or "127.0.0.1\tlocalhost\n"
        lines = [ln for ln in hosts.splitlines() if not ln.startswith("127.0.1.1")]
        lines.append(f"127.0.1.1\t{image.hostname}")
        _set_text(entries, "etc/hosts", "\n".join(lines) + "\n", 0o644, 0, mtime)
        entries["etc/resolv.conf"] = Entry(_member(
            "etc/resolv.conf", tarfile.SYMTYPE, 0o777, 0, mtime, linkname="../run/resolv.conf"))


def _for_kind(entries: dict[str, Entry], base_fd: int, image: Image, kind: Kind,
              mtime: int, read: dict[str, str]) -> None:
    """What one guest kind gets besides the common overlay."""
    if kind is Kind.CONTAINER and "etc" in entries:
        _set_text(entries, "etc/resolv.conf", "", 0o644, 0, mtime)
    if not image.chromeos_integration or "etc" not in entries:
        return
    _add_integration(entries, base_fd, image, kind, mtime, read)


def _add_integration(entries: dict[str, Entry], base_fd: int, image: Image, kind: Kind,
                     mtime: int, read: dict[str, str]) -> None:
    for f in integration.files(kind):
        if f.directory:
            member, link = tarfile.DIRTYPE, ""
        elif f.link:
            member, link = tarfile.SYMTYPE, f.link
        else:
            member, link = tarfile.REGTYPE, ""
        data = f.text.encode()
        ti = _member(f.path, member, 0o777 if f.link else f.mode, 0, mtime, linkname=link,
                     size=len(data) if member == tarfile.REGTYPE else 0)
        entries[f.path] = Entry(ti, data=data if member == tarfile.REGTYPE else None)
    if "etc/group" in entries:
        group, gshadow = integration.add_groups(
            _file_text(entries, base_fd, "etc/group"),
            _file_text(entries, base_fd, "etc/gshadow") if "etc/gshadow" in entries else None)
        if image.user in _users(entries, base_fd):
            group = integration.add_members(group, image.user)
            if gshadow is not None:
                gshadow = integration.add_members(gshadow, image.user)
        _set_text(entries, "etc/group", group, 0o644, 0, mtime)
        if gshadow is not None:
            _set_text(entries, "etc/gshadow", gshadow, 0o640, 0, mtime)
    if image.user in _users(entries, base_fd):  # its session (garcon) starts at boot
        linger = f"var/lib/systemd/linger/{image.user}"
        entries[linger] = Entry(_member(linger, tarfile.REGTYPE, 0o644, 0, mtime, size=0),
                                data=b"")
    for name, e in _dotfiles(image, mtime, read, home="etc/skel", uid=0):
        entries.setdefault(name, e)  # the base's own skeleton files win
    lines = integration.hosts_lines(kind)
    if lines:
        hosts = _file_text(entries, base_fd, "etc/hosts")
        _set_text(entries, "etc/hosts", hosts + "".join(f"{ln}\n" for ln in lines
                                                          if ln not in hosts.splitlines()),
                  0o644, 0, mtime)


def _users(entries: dict[str, Entry], base_fd: int) -> set[str]:
    return {ln.split(":")[0] for ln in _file_text(entries, base_fd, "etc/passwd").splitlines()
            if ":" in ln}


def _ordered(entries: dict[str, Entry], mtime: int) -> list[tuple[str, Entry]]:
    """Sorted by path components, parents before children, hardlinks after their anchor."""
    for name in list(entries):  # every entry's parent directories must exist
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in entries:
                entries[parent] = Entry(_member(parent, tarfile.DIRTYPE, 0o755, 0, mtime))
    if "" not in entries:
        entries[""] = Entry(_member("", tarfile.DIRTYPE, 0o755, 0, mtime))
    for name in entries:  # the overlay may have put a file under a base symlink, say
        parent = name.rpartition("/")[0] if name else ""
        held = entries[parent].info
        if name and not held.isdir():
            what = f"a symlink to {held.linkname!r}" if held.issym() else "not a directory"
            raise PipelineError(f"rootfs: /{shown(name)[1:-1]} would be written through "
                                f"/{shown(parent)[1:-1]}, which is {what}",
                                hint="a dotfile or image file collides with the base rootfs: "
                                "rename one of them")
    ordered = sorted(entries.items(), key=lambda kv: kv[0].split("/") if kv[0] else [])

    # Re-anchor hardlink sets: the first name in sorted order carries the data.
    def root(name: str) -> str:
        seen = set()
        while entries[name].info.islnk():
            if name in seen:
                raise PipelineError(f"base rootfs: hardlink loop at {name!r}",
                                    hint="the tarball is malformed")
            seen.add(name)
            target = entries[name].info.linkname
            if target not in entries:
                raise PipelineError(f"base rootfs: hardlink {name!r} points to missing "
                                    f"{target!r}", hint="the tarball is malformed")
            name = target
        return name

    linked = {root(name) for name, e in ordered if e.info.islnk()}
    anchors: dict[str, str] = {}
    out: list[tuple[str, Entry]] = []
    for name, e in ordered:
        r = root(name) if e.info.islnk() else name
        if r not in linked:
            out.append((name, e))
            continue
        src = entries[r]
        if not src.info.isreg():
            raise PipelineError(f"base rootfs: hardlink to {r!r}, which is not a file",
                                hint="the tarball is malformed")
        ti = _copy_info(src.info, name)
        if r not in anchors:
            anchors[r] = name
            out.append((name, Entry(ti, offset=src.offset, data=src.data, path=src.path)))
        else:
            ti.type = tarfile.LNKTYPE
            ti.size = 0
            ti.linkname = anchors[r]
            out.append((name, Entry(ti)))
    return out


def _copy_info(ti: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    import copy

    c = copy.copy(ti)
    c.pax_headers = dict(ti.pax_headers)
    c.name = name
    return c


def _normalised(e: Entry, name: str, sde: int | None) -> tarfile.TarInfo:
    ti = _copy_info(e.info, name)
    ti.name = f"./{name}" if name else "."
    if ti.islnk():
        ti.linkname = f"./{ti.linkname}"
    ti.uname = ti.gname = ""
    mtime = int(ti.mtime)
    ti.mtime = min(mtime, sde) if sde is not None else mtime
    ti.pax_headers = {k: v for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    return ti


def write(entries: list[tuple[str, Entry]], base_fd: int, out_fd: int,
          sde: int | None, read: dict[str, str] | None = None) -> None:
    out = TarWriter(out_fd)
    for name, e in entries:
        ti = _normalised(e, name, sde)
        if not ti.isreg() or e.offset is not None:
            out.add(ti, src=(base_fd, e.offset or 0))
        elif e.data is not None:
            out.add(ti, e.data)
        else:
            out.add(ti, chunks=_dotfile_chunks(e, ti.size, {} if read is None else read))
    out.close()


def customize(base: Path, image: Image, out: Path, *, work_dir: Path,
              source_date_epoch: int | None, container_out: Path | None = None,
              bootable: bool = False, dotfiles_key: dict[str, str] | None = None) -> int:
    """The customize stage: the VM tree at `out` and, with `container_out`, the container
    tree there. With `bootable`, a tree without an executable /sbin/init is refused before
    anything is written (no guest of either kind could start it). `dotfiles_key`: the
    dotfile digests of the stage's key (inputs), which what is read must match. Returns the
    number of entries of the VM tree."""
    tmp = work_tempdir(work_dir, "customize")
    try:
        plain = plain_tar(base, tmp)
        entries, newest = _read_base(plain)
        mtime = source_date_epoch if source_date_epoch is not None else newest
        base_fd = os.open(plain, os.O_RDONLY)
        read: dict[str, str] = {}
        try:
            if not nixos(image):
                _apply_overlay(entries, base_fd, image, mtime, read)
            if bootable:
                require_init({name: e.info for name, e in entries.items()})
            count = _write_kind(entries, base_fd, image, Kind.VM, out, mtime,
                                source_date_epoch, read, scan_in=tmp)
            if container_out is not None and nixos(image):
                with atomic_path(container_out) as tmp_out:  # the same tree
                    tmp_out.unlink()
                    os.link(out, tmp_out)
            elif container_out is not None:
                _write_kind(entries, base_fd, image, Kind.CONTAINER, container_out, mtime,
                            source_date_epoch, read, scan_in=None)
            _check_read(read, dotfiles_key)  # before the stage commits anything
        finally:
            os.close(base_fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


def _write_kind(common: dict[str, Entry], base_fd: int, image: Image, kind: Kind, out: Path,
                mtime: int, sde: int | None, read: dict[str, str], *,
                scan_in: Path | None) -> int:
    """One kind's tree, ordered and written atomically to `out`, and scanned for secrets with
    `scan_in` as the scan's work directory. The container tree is the VM tree without the VM's
    files, all of them the pipeline's own: one scan serves both."""
    entries = dict(common)
    if not nixos(image):
        _for_kind(entries, base_fd, image, kind, mtime, read)
    ordered = _ordered(entries, mtime)
    with atomic_path(out) as tmp_out:
        fd = os.open(tmp_out, os.O_WRONLY | os.O_TRUNC)
        try:
            write(ordered, base_fd, fd, sde, read)
        finally:
            os.close(fd)
        if scan_in is not None:
            with step("Scanning for secrets"):
                secrets.refuse(secrets.scan(tmp_out, image.secrets_allow, scan_in), image.name)
    return len(ordered)
