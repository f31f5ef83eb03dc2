"""Source `tarball`: an existing rootfs tarball (tar, gzip, xz or zstd; sniffed, not named).

The base rootfs is the file as given; its key is its content hash, so replacing the file
with different bytes rebuilds, and touching it does not.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Image
from ..fsutil import atomic_path
from ..hashing import FileHashMemo
from ..store import StageInputs
from ..tarballs import open_tar, sniff

VERSION = 1


def inputs(image: Image, memo: FileHashMemo) -> StageInputs:
    assert image.tarball is not None
    return StageInputs("base", VERSION, {
        "source": "tarball",
        "tarball": memo.sha256(image.tarball.path),
    })


def build(image: Image, out: Path) -> None:
    """Check the tarball reads to its end, then store it as the base rootfs."""
    assert image.tarball is not None
    src = image.tarball.path
    sniff(src)  # a clear error for a file that is no tarball at all
    with open_tar(src) as tf:
        for _ in tf:
            pass
    with atomic_path(out) as tmp, open(src, "rb") as f, open(tmp, "wb") as g:
        while chunk := f.read(1 << 20):
            g.write(chunk)
