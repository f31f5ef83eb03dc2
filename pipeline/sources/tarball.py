"""Source `tarball`: an existing rootfs tarball (tar, gzip, xz or zstd; sniffed, not named).

The base rootfs is the archive, decompressed and checked to its end-of-archive block; its key
is the file's content hash and the configured architecture, so replacing the file with other
bytes rebuilds and touching it does not. A tree whose /sbin/init (or /bin/sh) is an ELF file
for another architecture than `arch` is refused, naming both (rootfs/treearch.py).
"""

from __future__ import annotations

from pathlib import Path

from ..config import Image
from ..core.arch import arch
from ..core.fsutil import atomic_path
from ..core.tarballs import checked_members, decompress_into, open_plain
from ..rootfs.treearch import check_arch
from ..store.hashing import FileHashMemo
from ..store.keys import StageInputs

VERSION = 4  # 3: base.tar ends at its end-of-archive block; 4: the tree's architecture checked


def inputs(image: Image, memo: FileHashMemo) -> StageInputs:
    assert image.tarball is not None
    return StageInputs("base", VERSION, {
        "source": "tarball",
        "tarball": memo.sha256(image.tarball.path),
        "arch": image.arch,
    })


def make_base(image: Image, out: Path, si: StageInputs | None = None) -> None:
    assert image.tarball is not None
    decompress(image.tarball.path, out)
    try:
        check_arch(out, arch(image.arch), f"images.{image.name}.tarball ({image.tarball.path})")
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def decompress(src: Path, out: Path) -> None:
    """Decompress `src` into `out` as a plain tar, refusing a corrupt one or one that breaks
    the rootfs rules (tarballs.TreeRules: escaping names, writes through symlinks...)."""
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as dst:
            decompress_into(src, dst)
        tf = open_plain(tmp, src)
        with tf:
            for _ in checked_members(tf, tmp, src):
                pass
