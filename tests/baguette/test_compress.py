"""pipeline/baguette/compress.py: one zstd frame with the content size, reading only the data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from pipeline.baguette import compress as compress_mod
from pipeline.baguette.compress import compress, data_segments

MiB = 1 << 20


def sparse_file(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    """A file of `size` bytes that is a hole except for `writes` ({offset: data})."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            os.pwrite(f.fileno(), data, offset)
    return path


def segments(path: Path) -> list[tuple[int, int, bool]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(data_segments(fd, path.stat().st_size))
    finally:
        os.close(fd)


def assert_same_content(zst: Path, original: Path) -> None:
    """Stream-decompress `zst` and compare it with `original`, chunk by chunk."""
    with open(zst, "rb") as z, open(original, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(z)
        while True:
            want = f.read(MiB)
            got = reader.read(MiB)
            while len(got) < len(want):
                more = reader.read(len(want) - len(got))
                if not more:
                    break
                got += more
            assert got == want, f"content differs near offset {f.tell() - len(want)}"
            if not want:
                assert reader.read(1) == b""
                return


def frame(path: Path) -> zstandard.FrameParameters:
    return zstandard.get_frame_parameters(path.read_bytes()[:18])


def test_round_trip(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB) + b"text " * 500_000 + os.urandom(1000)
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    out = tmp_path / "baguette_rootfs.img.zst"
    size = compress(image, out, level=3)
    assert size == out.stat().st_size < len(data)
    assert zstandard.ZstdDecompressor().decompress(out.read_bytes()) == data


def test_frame_carries_content_size_and_checksum(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"abc" * 12345)
    out = tmp_path / "out.zst"
    compress(image, out, level=1)
    params = frame(out)
    assert params.content_size == 3 * 12345
    assert params.has_checksum


SIZE = 256 * MiB
WRITES = {
    0: b"start of the disk",
    MiB + 123: os.urandom(10_000),
    100 * MiB: b"superblock-ish" * 300,
    SIZE - 3: b"end",
}


@pytest.fixture
def sparse(tmp_path: Path) -> Path:
    path = sparse_file(tmp_path / "disk.img", SIZE, WRITES)
    if path.stat().st_blocks * 512 > SIZE // 2:
        pytest.skip("this filesystem does not keep files sparse")
    return path


def test_data_segments_of_a_sparse_file(sparse: Path) -> None:
    segs = segments(sparse)
    pos = 0
    for offset, length, _ in segs:
        assert offset == pos and length > 0
        pos += length
    assert pos == SIZE
    kinds = [is_data for _, _, is_data in segs]
    assert all(a != b for a, b in zip(kinds, kinds[1:], strict=False))  # holes and data alternate
    for offset, data in WRITES.items():
        assert any(is_data and o <= offset and offset + len(data) <= o + n
                   for o, n, is_data in segs), f"write at {offset} not in a data segment"
    data_bytes = sum(n for _, n, is_data in segs if is_data)
    assert data_bytes < 16 * MiB  # the rest is reported as holes


def test_sparse_round_trip_reads_only_data(sparse: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Holes are compressed as zeros without reading them from the disk."""
    read = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        read.append((offset, n))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(compress_mod.os, "pread", counting_pread)
    out = tmp_path / "disk.img.zst"
    compress(sparse, out, level=3)
    monkeypatch.undo()

    data_bytes = sum(n for _, n, is_data in segments(sparse) if is_data)
    assert sum(n for _, n in read) == data_bytes
    assert frame(out).content_size == SIZE
    assert out.stat().st_size < MiB
    assert_same_content(out, sparse)


def test_file_that_is_all_hole(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "empty.img", 64 * MiB, {})
    assert segments(image) == [(0, 64 * MiB, False)]
    out = tmp_path / "empty.img.zst"
    compress(image, out, level=3)
    assert frame(out).content_size == 64 * MiB
    assert_same_content(out, image)


def test_zero_length_file(tmp_path: Path) -> None:
    image = tmp_path / "zero.img"
    image.write_bytes(b"")
    assert segments(image) == []
    out = tmp_path / "zero.img.zst"
    compress(image, out, level=3)
    assert frame(out).content_size == 0
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out.read_bytes()) == b""


def test_segments_clip_to_the_given_size(tmp_path: Path) -> None:
    """A size below the file's end stops the segments there."""
    image = sparse_file(tmp_path / "f", 8 * MiB, {0: b"x" * 100, 6 * MiB: b"y"})
    fd = os.open(image, os.O_RDONLY)
    try:
        segs = list(data_segments(fd, 4 * MiB))
    finally:
        os.close(fd)
    assert segs[0][0] == 0 and segs[0][2]  # the data at 0
    assert segs[-1][0] + segs[-1][1] == 4 * MiB
    assert sum(n for _, n, _ in segs) == 4 * MiB
    assert not any(is_data for o, _, is_data in segs if o > 0)  # the data at 6 MiB is beyond


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_failure_midway_leaves_no_output(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    image = sparse_file(tmp_path / "disk.img", 16 * MiB, {0: os.urandom(MiB),
                                                          12 * MiB: os.urandom(MiB)})
    real = compress_mod.data_segments

    def failing(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
        gen = real(fd, size)
        yield next(gen)
        raise RuntimeError("disk error")

    monkeypatch.setattr(compress_mod, "data_segments", failing)
    out = tmp_path / "out" / "baguette_rootfs.img.zst"
    with pytest.raises(RuntimeError, match="disk error"):
        compress(image, out, level=3)
    assert not out.exists()
    assert _leftovers(out.parent) == []


def test_failure_keeps_the_previous_output(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An image that shrinks under the compressor: an error, and the old .zst stays."""
    image = sparse_file(tmp_path / "disk.img", 16 * MiB, {0: b"a" * 100, 12 * MiB: b"b" * 100})
    out = tmp_path / "disk.img.zst"
    out.write_bytes(b"previous build")
    real = compress_mod.data_segments

    def shrinking(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
        segs = list(real(fd, size))
        yield segs[0]
        os.truncate(image, MiB)
        yield from segs[1:]

    monkeypatch.setattr(compress_mod, "data_segments", shrinking)
    with pytest.raises(OSError, match="shrank"):
        compress(image, out, level=3)
    assert out.read_bytes() == b"previous build"
    assert _leftovers(tmp_path) == []
