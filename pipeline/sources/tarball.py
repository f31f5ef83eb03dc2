"""Source `tarball`: an existing rootfs tarball (tar, gzip, xz or zstd; sniffed, not named).

The base rootfs is the archive, decompressed and checked to its end-of-archive block; its key
is the file's content hash, so replacing the file with other bytes rebuilds and touching it
does not.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Image
from ..errors import PipelineError
from ..fsutil import atomic_path
from ..hashing import FileHashMemo
from ..store import StageInputs
from ..tarballs import checked_members, copy_archive, corrupt, open_plain, open_stream

VERSION = 3  # 3: base.tar ends at its end-of-archive block


def inputs(image: Image, memo: FileHashMemo) -> StageInputs:
    assert image.tarball is not None
    return StageInputs("base", VERSION, {
        "source": "tarball",
        "tarball": memo.sha256(image.tarball.path),
    })


def build(image: Image, out: Path, si: StageInputs | None = None) -> None:
    assert image.tarball is not None
    decompress(image.tarball.path, out)


def decompress(src: Path, out: Path) -> None:
    """Decompress `src` into `out` as a plain tar, refusing a corrupt one or one that breaks
    the rootfs rules (tarballs.TreeRules: escaping names, writes through symlinks...)."""
    with atomic_path(out) as tmp:
        with open_stream(src) as stream, open(tmp, "wb") as dst:
            try:
                copy_archive(stream, dst, src)
            except PipelineError:
                raise
            except OSError as exc:
                if exc.errno is not None:  # the disk, not the data (BadGzipFile has none)
                    raise
                raise corrupt(src, exc) from None
            except Exception as exc:  # lzma, zlib and zstd each raise their own type
                raise corrupt(src, exc) from None
        tf = open_plain(tmp, src)
        with tf:
            for _ in checked_members(tf, tmp, src):
                pass
