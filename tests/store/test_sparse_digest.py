"""files.sha256 of a sparse file (the pack stage's raw image: `slack = "100GiB"` is mostly a
hole) is computed without reading the holes (SEEK_DATA/SEEK_HOLE), and still depends only on
the file's bytes: the same content written densely has the same digest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.store import entries, hashing
from pipeline.store.layout import FILES_FILE, INPUTS_FILE

SIZE = 8 << 30


def read_bytes_so_far() -> int:
    """rchar of /proc/self/io: bytes this process read through read(2) and friends."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def sparse(path: Path, size: int = SIZE) -> Path:
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.seek(size // 2)
        f.write(b"middle" * 1000)
        f.truncate(size)
    return path


def test_files_sha256_of_a_sparse_image_reads_only_its_data(tmp_path: Path) -> None:
    entry = tmp_path / "store" / "pack" / ("0" * 32)
    entry.mkdir(parents=True)
    sparse(entry / "disk.img")
    before = read_bytes_so_far()
    listed = entries.file_list(entry)
    read = read_bytes_so_far() - before
    assert read < 64 << 20, f"{read >> 20} MiB read for 1 MiB of data"
    (entry / FILES_FILE).write_text(listed)
    (entry / INPUTS_FILE).write_text('{"stage": "pack", "version": 1, "inputs": {}}')
    assert entries.problems(entry) == []
    with open(entry / "disk.img", "r+b") as f:  # damage in the data
        f.seek(SIZE // 2)
        f.write(b"M")
    assert entries.problems(entry) == ["disk.img does not match its sha256"]


def test_the_sparse_digest_depends_on_the_bytes_only(tmp_path: Path) -> None:
    holes = sparse(tmp_path / "holes.img", 64 << 20)
    dense = tmp_path / "dense.img"
    with open(holes, "rb") as src, open(dense, "wb") as dst:
        shutil.copyfileobj(src, dst)  # the zeros written out
    assert os.stat(dense).st_blocks * 512 >= 64 << 20
    recorded = hashing.file_digest(holes)
    assert recorded.startswith("sparse-sha256:")
    assert hashing.file_digest(dense, like=recorded) == recorded
    other = sparse(tmp_path / "other.img", (64 << 20) + 4096)
    assert hashing.file_digest(other, like=recorded) != recorded


def test_a_file_without_holes_keeps_its_plain_sha256(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "rootfs.tar"
    f.write_bytes(os.urandom(3 << 20))
    assert hashing.file_digest(f) == hashlib.sha256(f.read_bytes()).hexdigest()
