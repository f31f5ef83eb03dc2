"""pipeline/vmhelper/cpio.py: newc archives that GNU cpio (and the kernel's unpacker) reads back."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pipeline.vmhelper.cpio import CpioWriter

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")

HEADER = 110  # "070701" + 13 fields of 8 hex digits

# Names and sizes of every length mod 4, so each padding case occurs.
FILES = {
    "init": (b"#!/bin/sh\necho hi\n", 0o755),
    "etc/a": (b"1", 0o644),
    "etc/bb": (b"22", 0o600),
    "etc/ccc": (b"333", 0o640),
    "etc/dddd": (b"4444", 0o444),
    "etc/empty": (b"", 0o644),
    "etc/blob": (bytes(range(256)) * 3 + b"\x00\xff\x7f", 0o755),
}


def write_archive() -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.directory("etc")
    w.directory("secret", 0o700)
    for name, (data, perm) in FILES.items():
        w.file(name, data, perm)
    w.file("secret/default-perm", b"x")
    w.symlink("etc/link", "ccc")
    w.symlink("sbin", "/usr/sbin/nowhere")
    w.close()
    return buf.getvalue()


def parse(archive: bytes) -> list[dict[str, object]]:
    """Every entry with its header fields, checking newc's 4-byte alignment on the way."""
    entries = []
    pos = 0
    while True:
        assert pos % 4 == 0, f"header at unaligned offset {pos}"
        assert archive[pos:pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size = fields[:7]
        namesize, check = fields[11], fields[12]
        name_end = pos + HEADER + namesize
        assert archive[name_end - 1] == 0, "name not NUL-terminated"
        name = archive[pos + HEADER: name_end - 1].decode()
        data_start = (name_end + 3) & ~3
        assert data_start % 4 == 0
        assert archive[name_end:data_start] == bytes(data_start - name_end), "padding not NUL"
        data = archive[data_start:data_start + size]
        next_pos = (data_start + size + 3) & ~3
        assert archive[data_start + size:next_pos] == bytes(next_pos - data_start - size)
        entries.append({"name": name, "ino": ino, "mode": mode, "uid": uid, "gid": gid,
                        "nlink": nlink, "mtime": mtime, "data": data, "check": check,
                        "rdev": (fields[9], fields[10])})
        pos = next_pos
        if name == "TRAILER!!!":
            assert pos == len(archive), "bytes after the trailer"
            return entries


def cpio(args: list[str], archive: bytes, cwd: Path) -> str:
    result = subprocess.run(["cpio", *args], input=archive, cwd=cwd, capture_output=True,
                            check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b"", result.stderr.decode()
    return result.stdout.decode()


def test_headers_and_data_are_aligned() -> None:
    entries = parse(write_archive())
    names = [e["name"] for e in entries]
    assert names == ["etc", "secret", *FILES, "secret/default-perm", "etc/link", "sbin",
                     "TRAILER!!!"]
    assert [e["ino"] for e in entries] == list(range(1, len(entries) + 1))
    assert {e["mtime"] for e in entries} == {0}
    assert {(e["uid"], e["gid"]) for e in entries} == {(0, 0)}
    by_name = {e["name"]: e for e in entries}
    assert by_name["etc"]["mode"] == stat.S_IFDIR | 0o755 and by_name["etc"]["nlink"] == 2
    assert by_name["etc/ccc"]["mode"] == stat.S_IFREG | 0o640
    assert by_name["etc/ccc"]["data"] == b"333"
    assert by_name["etc/link"]["mode"] == stat.S_IFLNK | 0o777
    assert by_name["etc/link"]["data"] == b"ccc"
    assert by_name["TRAILER!!!"]["mode"] == 0 and by_name["TRAILER!!!"]["data"] == b""


def test_cpio_lists_the_entries() -> None:
    listed = cpio(["-it", "--quiet"], write_archive(), Path("/")).splitlines()
    assert listed == ["etc", "secret", *FILES, "secret/default-perm", "etc/link", "sbin"]


def test_cpio_extracts_contents_modes_and_links(tmp_path: Path) -> None:
    cpio(["-i", "--quiet", "-d"], write_archive(), tmp_path)
    for name, (data, perm) in FILES.items():
        st = os.lstat(tmp_path / name)
        assert stat.S_ISREG(st.st_mode), name
        assert stat.S_IMODE(st.st_mode) == perm, name
        assert (tmp_path / name).read_bytes() == data, name
    assert stat.S_IMODE(os.stat(tmp_path / "secret/default-perm").st_mode) == 0o755
    for name, perm in (("etc", 0o755), ("secret", 0o700)):
        st = os.lstat(tmp_path / name)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == perm, name
    assert os.path.islink(tmp_path / "etc/link")
    assert os.readlink(tmp_path / "etc/link") == "ccc"
    assert (tmp_path / "etc/link").read_bytes() == b"333"
    assert os.readlink(tmp_path / "sbin") == "/usr/sbin/nowhere"
    assert sorted(os.listdir(tmp_path)) == ["etc", "init", "sbin", "secret"]


def test_cpio_keeps_mtime_zero(tmp_path: Path) -> None:
    cpio(["-i", "--quiet", "-d", "-m"], write_archive(), tmp_path)
    assert os.stat(tmp_path / "init").st_mtime == 0
    assert os.stat(tmp_path / "etc/blob").st_mtime == 0


def test_output_is_deterministic() -> None:
    assert write_archive() == write_archive()
