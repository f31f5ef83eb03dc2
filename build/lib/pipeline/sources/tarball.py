"""Source `tarball`: an existing rootfs tarball (tar, gzip, xz or zstd; sniffed, not named).

The base rootfs is the archive, decompressed and checked to its end-of-archive block; its key
is the file's content hash, so replacing the file with other bytes rebuilds and touching it
does not.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Image
from ..core.fsutil import atomic_path
from ..core.tarballs import checked_members, decompress_into, open_plain
from ..store.hashing import FileHashMemo
from ..store.keys import StageInputs

VERSION = 3  # 3: base.tar ends at its end-of-archive block


def inputs(image: Image, memo: FileHashMemo) -> StageInputs:
    assert image.tarball is not None
    return StageInputs("base", VERSION, {
        "source": "tarball",
        "tarball": memo.sha256(image.tarball.path),
    })


def make_base(image: Image, out: Path, si: StageInputs | None = None) -> None:
    assert image.tarball is not None
    decompress(image.tarball.path, out)


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
