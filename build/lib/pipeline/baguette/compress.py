"""Compress: the raw image -> baguette_rootfs.img.zst, a single zstd frame.

Multi-threaded, with the content size in the frame header (ChromeOS sizes the VM disk from
it), reading only the image's data extents: holes (most of a sparse image) are fed to the
compressor as zeros without touching the disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..core.fsutil import atomic_path
from ..core.log import progress
from ..store.keys import StageInputs

VERSION = 1
CHUNK = 4 << 20
_ZEROS = bytes(CHUNK)


def data_segments(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) covering [0, size), from SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains
            data = size
        if data > pos:
            yield pos, min(data, size) - pos, False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data, True
        pos = hole


def inputs(pack_key: str, level: int) -> StageInputs:
    """The compress stage's key: the raw image's, and the zstd level compress() takes."""
    return StageInputs("baguette", VERSION, {"pack": pack_key, "level": level})


def compress(image: Path, out: Path, *, level: int, threads: int = -1) -> int:
    """Write `out` atomically; returns its size in bytes."""
    import zstandard

    size = image.stat().st_size
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, write_content_size=True, write_checksum=True)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    with atomic_path(out) as tmp, open(tmp, "wb") as dst, open(image, "rb") as src, \
            progress(size, "compressing") as bar:
        fd = src.fileno()
        # Not `with`: on an error, ending the frame fails on its pledged size and that
        # ZstdError would hide the real cause (the temporary file is discarded anyway).
        writer = cctx.stream_writer(dst, size=size, closefd=False)
        for offset, length, is_data in data_segments(fd, size):
            done = 0
            while done < length:
                n = min(CHUNK, length - done)
                if is_data:
                    chunk = os.pread(fd, n, offset + done)
                    if len(chunk) != n:
                        raise OSError(f"{image} shrank while compressing")
                    writer.write(chunk)
                else:
                    writer.write(_ZEROS[:n])
                done += n
                bar.update(n)
        writer.close()  # ends the frame; dst stays open (closefd=False)
        dst.flush()
    return out.stat().st_size


def decompress_sparse(zst: Path, out: Path) -> int:
    """Decompress `zst` into `out`, leaving all-zero blocks as holes; returns the size."""
    import zstandard

    block = 1 << 20
    zero = bytes(block)
    with open(zst, "rb") as src, open(out, "wb") as dst:
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_size=block)
        size = 0
        while chunk := reader.read(block):
            if chunk == zero[: len(chunk)]:
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)
            size += len(chunk)
        dst.truncate(size)
    return size
