"""Rootfs tarballs for tests: a rich one with every kind of entry a faithful pack must keep
(owners, special mode bits, xattrs incl. security.capability, hardlinks, symlinks, a fifo,
device nodes, odd names, mtimes), and a tiny busybox tree LXD can start. No pytest here: the
benchmarks use these too."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

# security.capability for cap_net_raw+ep: VFS_CAP_REVISION_2 | EFFECTIVE, permitted bit 13
CAP_NET_RAW = (b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + bytes(12))


def _add(tf: tarfile.TarFile, name: str, kind: bytes, mode: int, *, uid: int = 0,
         gid: int = 0, data: bytes = b"", link: str = "", mtime: int = 1_600_000_000,
         dev: tuple[int, int] = (0, 0), xattrs: dict[str, bytes] | None = None) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.mtime = mtime
    ti.linkname = link
    ti.devmajor, ti.devminor = dev
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                          for k, v in xattrs.items()}
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def write_rich_rootfs(path: Path) -> Path:
    """A plain tar, sorted with parents first, as the customize stage writes them."""
    big = os.urandom(3 << 20)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        d, f, s = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE
        _add(tf, "./", d, 0o755, mtime=1_700_000_000)
        _add(tf, "./bin", s, 0o777, link="usr/bin", mtime=1_600_000_001)
        _add(tf, "./dev/", d, 0o755, mtime=1_600_000_002)
        _add(tf, "./dev/console", tarfile.CHRTYPE, 0o600, dev=(5, 1))
        _add(tf, "./dev/loop0", tarfile.BLKTYPE, 0o660, gid=6, dev=(7, 0))
        _add(tf, "./dev/null", tarfile.CHRTYPE, 0o666, dev=(1, 3))
        _add(tf, "./etc/", d, 0o755, mtime=1_600_000_003)
        _add(tf, "./etc/hostname", f, 0o644, data=b"fixture\n")
        _add(tf, "./etc/locked", f, 0o000, data=b"nobody may read this\n")
        _add(tf, "./etc/shadow", f, 0o640, gid=42, data=b"root:*:19000:0:99999:7:::\n")
        _add(tf, "./home/", d, 0o755)
        _add(tf, "./home/user/", d, 0o700, uid=1000, gid=1000, mtime=1_650_000_000)
        _add(tf, "./home/user/.bashrc", f, 0o644, uid=1000, gid=1000, data=b"alias ll='ls -l'\n")
        _add(tf, "./home/user/dir with space/", d, 0o755, uid=1000, gid=1000)
        _add(tf, "./home/user/dir with space/ünïcödé ☃", f, 0o600, uid=1000, gid=1000,
             data=b"snow\n")
        _add(tf, "./home/user/link-to-bashrc", s, 0o777, uid=1000, gid=1000, link=".bashrc")
        _add(tf, "./opt/", d, 0o755)
        _add(tf, "./opt/readonly/", d, 0o555, mtime=1_600_000_010)
        _add(tf, "./opt/readonly/file", f, 0o444, data=b"read only\n")
        _add(tf, "./run/", d, 0o755)
        _add(tf, "./run/initctl", tarfile.FIFOTYPE, 0o600, mtime=1_600_000_020)
        _add(tf, "./tmp/", d, 0o1777)
        _add(tf, "./usr/", d, 0o755)
        _add(tf, "./usr/bin/", d, 0o755, mtime=1_600_000_030)
        _add(tf, "./usr/bin/a", f, 0o755, data=b"#!/bin/sh\necho a\n")
        _add(tf, "./usr/bin/b", tarfile.LNKTYPE, 0o755, link="./usr/bin/a")
        _add(tf, "./usr/bin/c", tarfile.LNKTYPE, 0o755, link="./usr/bin/a")
        _add(tf, "./usr/bin/noted", f, 0o644, data=b"with xattrs\n",
             xattrs={"user.comment": b"hello", "user.binary": b"\x00\xff\x01"})
        _add(tf, "./usr/bin/noted-link", tarfile.LNKTYPE, 0o644, link="./usr/bin/noted")
        _add(tf, "./usr/bin/ping", f, 0o755, data=b"\x7fELF-not-really\n",
             xattrs={"security.capability": CAP_NET_RAW})
        _add(tf, "./usr/bin/su", f, 0o4755, data=b"setuid\n")
        _add(tf, "./usr/bin/wall", f, 0o2755, gid=5, data=b"setgid\n")
        _add(tf, "./usr/share/", d, 0o755)
        _add(tf, "./usr/share/big", f, 0o644, data=big, mtime=1_234_567_890)
        _add(tf, "./usr/share/empty", f, 0o644)
        _add(tf, "./var/", d, 0o755)
        _add(tf, "./var/mail/", d, 0o2775, gid=8)
    return path


def add_sbin_init(tarball: Path) -> Path:
    """Append an executable /sbin/init to a plain tar (LXD requires one)."""
    with tarfile.open(tarball, "a", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in (("./sbin", tarfile.DIRTYPE, b""),
                                 ("./sbin/init", tarfile.REGTYPE, b"#!/bin/sh\n")):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.size = kind, 0o755, 1_600_000_000, len(data)
            tf.addfile(ti, io.BytesIO(data))
    return tarball


BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "hostname", "sleep", "true", "ls", "id")


def elf_header(machine: int) -> bytes:
    """The first 64 bytes of a little-endian ELF64 executable for e_machine `machine`
    (62 x86_64, 183 aarch64): what the tree's architecture is read from."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + (2).to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(44)


def busybox_rootfs(path: Path, busybox: bytes | None = None) -> Path:
    """A tiny rootfs LXD can start: static busybox, a script as /sbin/init, os-release.
    `busybox`: the bytes of /bin/busybox instead of the host's (another architecture's)."""
    if busybox is None and not BUSYBOX.is_file():
        from tests.support.tools import tool_missing
        tool_missing("busybox-static is not installed (run `python3 -m pipeline.hostsetup`)")

    def add(tf: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
            data: bytes = b"", link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.linkname, ti.mtime, ti.size = kind, mode, link, 1_700_000_000, len(
            data)
        tf.addfile(ti, io.BytesIO(data) if data else None)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "./", tarfile.DIRTYPE, 0o755)
        add(tf, "./bin/", tarfile.DIRTYPE, 0o755)
        add(tf, "./bin/busybox", mode=0o755,
            data=busybox if busybox is not None else BUSYBOX.read_bytes())
        for applet in APPLETS:
            add(tf, f"./bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        for d in ("dev", "proc", "sys", "tmp", "run", "root"):
            add(tf, f"./{d}/", tarfile.DIRTYPE, 0o755)
        add(tf, "./etc/", tarfile.DIRTYPE, 0o755)
        add(tf, "./etc/os-release", data=b'NAME="Busybox Fixture"\nID=busybox-fixture\n'
            b"VERSION_CODENAME=tiny\n")
        add(tf, "./sbin/", tarfile.DIRTYPE, 0o755)
        add(tf, "./sbin/init", mode=0o755, data=b"#!/bin/sh\nexec /bin/busybox sleep 1000000\n")
    return path



FORMATS = {
    "split-xz": 'rootfs_format = "tar.xz"',
    "squashfs": 'rootfs_format = "squashfs"',
    "unified": "unified = true",
}




def write_many_names_rootfs(path: Path, count: int) -> Path:
    """A plain tar of `count` empty files in 100 directories, owned by 1000:1000 (some 0:42,
    some setuid), whose names hold spaces, newlines, a leading '-', backslashes and non-UTF-8
    bytes: what the guest's owner and mode lists must carry intact."""
    odd = ("plain {i}", "with space {i}", "new\nline {i}", "-dash{i}", "back\\slash{i}",
           "bytes \udcff\udcfe {i}", "ünï {i}", "--{i}")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        _add(tf, "./", tarfile.DIRTYPE, 0o755)
        per_dir = max(1, count // 100)
        for d in range(0, count, per_dir):
            dname = f"./d {d // per_dir:02d}\udcff"
            _add(tf, dname + "/", tarfile.DIRTYPE, 0o750, uid=1000, gid=1000)
            for i in range(d, min(d + per_dir, count)):
                name = odd[i % len(odd)].format(i=i)
                if i % 97 == 0:
                    _add(tf, f"{dname}/{name}", tarfile.REGTYPE, 0o4755, uid=1000, gid=42)
                else:
                    _add(tf, f"{dname}/{name}", tarfile.REGTYPE, 0o640, uid=1000, gid=1000)
    return path
