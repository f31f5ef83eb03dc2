"""A minimal writer of the `newc` cpio format the kernel unpacks as an initramfs.

Deterministic: entries in the given order, inode numbers counted up, mtime 0, owner 0:0.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

_MAGIC = b"070701"


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


class CpioWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 0

    def _header(self, name: str, mode: int, size: int, nlink: int = 1) -> None:
        self.ino += 1
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(encoded), 0]
        head = _MAGIC + b"".join(b"%08x" % f for f in fields)
        self.out.write(head + encoded + _pad(len(head) + len(encoded)))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._header(name, stat.S_IFDIR | perm, 0, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o755) -> None:
        self._header(name, stat.S_IFREG | perm, len(data))
        self.out.write(data + _pad(len(data)))

    def symlink(self, name: str, target: str) -> None:
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data))
        self.out.write(data + _pad(len(data)))

    def close(self) -> None:
        self._header("TRAILER!!!", 0, 0)
