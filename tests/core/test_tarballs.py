"""pipeline/core/tarballs.py: format sniffing by content, streaming reads, corrupt archives."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from pipeline.core.errors import PipelineError
from pipeline.core.tarballs import members, open_plain, plain_tar, sniff

FILES = {
    "etc/hostname": b"box\n",
    "usr/bin/tool": os.urandom(50_000),  # incompressible: several compressed blocks
    "usr/share/doc/readme": b"read me\n" * 5_000,
}

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "tar": lambda b: b,
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "zstd": zstandard.ZstdCompressor(write_checksum=True).compress,  # as the zstd CLI does
}

# Each format under a name that suggests another one: sniffing must not look at names.
MISLEADING = {"tar": "rootfs.tar.xz", "gzip": "rootfs.tar.zst", "xz": "rootfs.tar",
              "zstd": "rootfs.tar.gz"}

PNG_HEAD = (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR"
            + b"\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00" + b"\x90\x91\x68\x36")


def make_tar(files: dict[str, bytes] = FILES, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A rootfs-like tar: a directory, regular files and a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        d = tarfile.TarInfo("etc")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin")
        link.type, link.linkname = tarfile.SYMTYPE, "usr/bin"
        tf.addfile(link)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_all(path: Path) -> list[tuple[str, str, bytes | str]]:
    """Read every member the way the stages do: decompressed to a plain tar, then by offset."""
    out: list[tuple[str, str, bytes | str]] = []
    work = path.parent / f"{path.name}.work"
    work.mkdir(exist_ok=True)
    plain = plain_tar(path, work)
    with open_plain(plain) as tf:
        for m in members(tf, plain):
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                out.append((m.name, "file", f.read()))
            elif m.issym():
                out.append((m.name, "symlink", m.linkname))
            else:
                out.append((m.name, "dir" if m.isdir() else "other", b""))
    return out


EXPECTED = ([("etc", "dir", b"")] + [(n, "file", d) for n, d in FILES.items()]
            + [("bin", "symlink", "usr/bin")])


# --- sniff -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(COMPRESS))
def test_sniff_by_content_not_name(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, MISLEADING[fmt], COMPRESS[fmt](make_tar()))
    assert sniff(path) == fmt


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                        tarfile.PAX_FORMAT])
def test_sniff_tar_variants(tmp_path: Path, tar_format: int) -> None:
    path = write(tmp_path, "rootfs", make_tar({"a": b"a"}, fmt=tar_format))
    assert sniff(path) == "tar"


@pytest.mark.parametrize("name, data, libmagic_says", [
    ("rootfs.tar.gz", PNG_HEAD, "PNG image data"),
    ("rootfs.tar", b"just some notes, not an archive\n", "ASCII text"),
    ("rootfs.tar.zst", b"", "empty"),
])
def test_sniff_refuses_non_tarballs(tmp_path: Path, name: str, data: bytes,
                                    libmagic_says: str) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(PipelineError) as info:
        sniff(path)
    msg = info.value.message
    assert str(path) in msg
    assert "not a rootfs tarball" in msg
    assert libmagic_says in msg
    assert info.value.hint


def test_sniff_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.tar"
    with pytest.raises(PipelineError) as info:
        sniff(path)
    assert str(path) in info.value.message
    assert info.value.hint


# --- reading: plain_tar + members ------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(COMPRESS))
def test_read_reads_each_format(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, MISLEADING[fmt], COMPRESS[fmt](make_tar()))
    assert read_all(path) == EXPECTED


def test_read_reads_multi_frame_zstd(tmp_path: Path) -> None:
    """Concatenated zstd frames (as pzstd writes them) are one stream."""
    raw = make_tar()
    cut = len(raw) // 2
    frames = COMPRESS["zstd"](raw[:cut]) + COMPRESS["zstd"](raw[cut:])
    assert read_all(write(tmp_path, "rootfs.tar.zst", frames)) == EXPECTED


@pytest.mark.parametrize("fmt", sorted(COMPRESS))
def test_read_truncated(tmp_path: Path, fmt: str) -> None:
    data = COMPRESS[fmt](make_tar())
    path = write(tmp_path, "rootfs", data[: len(data) // 2])
    with pytest.raises(PipelineError, match="corrupt or truncated") as info:
        read_all(path)
    assert str(path) in info.value.message
    assert info.value.hint


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd"])
def test_read_corrupt_compressed_stream(tmp_path: Path, fmt: str) -> None:
    data = bytearray(COMPRESS[fmt](make_tar()))
    data[len(data) // 2] ^= 0xFF
    path = write(tmp_path, "rootfs", bytes(data))
    with pytest.raises(PipelineError, match="corrupt or truncated") as info:
        read_all(path)
    assert str(path) in info.value.message


def test_read_corrupt_header(tmp_path: Path) -> None:
    data = bytearray(make_tar())
    data[512 + 148] ^= 0xFF  # the checksum field of the second header
    path = write(tmp_path, "rootfs.tar", bytes(data))
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        read_all(path)


def test_read_cut_at_a_member_boundary(tmp_path: Path) -> None:
    """An archive that stops right after a member, without the end-of-archive block."""
    raw = make_tar({"a": b"x" * 1024, "b": b"y" * 1024})
    after_a = 512 + 512 + 1024  # the "etc" header, a's header, a's data
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert [m.offset for m in tf.getmembers()][2] == after_a  # b's header starts there
    path = write(tmp_path, "rootfs.tar", raw[:after_a])
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        read_all(path)


def test_read_zstd_cut_between_blocks(tmp_path: Path) -> None:
    """A .tar.zst cut where a block ends on a tar header: zstd itself reports no error."""
    first = os.urandom(128 * 1024 - 2 * 512)  # "etc" header + this header + data = 128 KiB
    raw = make_tar({"first": first, "second": b"z" * 4096})
    cobj = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    head = cobj.compress(raw[: 128 * 1024]) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(head) == raw[: 128 * 1024]
    path = write(tmp_path, "rootfs.tar.zst", head)
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        read_all(path)


def test_read_accepts_missing_record_padding(tmp_path: Path) -> None:
    """Only the first end-of-archive block is needed; the zeros after it are padding."""
    raw = make_tar()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + tarfile.BLOCKSIZE * ((last.size + 511) // 512)
    assert len(raw) > end + 512 and raw[end:] == bytes(len(raw) - end)
    path = write(tmp_path, "rootfs.tar", raw[: end + 512])
    assert read_all(path) == EXPECTED


# --- plain_tar -------------------------------------------------------------------------------


def test_plain_tar_returns_an_uncompressed_tar_itself(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = write(tmp_path, "rootfs.tar.gz", make_tar())
    assert plain_tar(path, work) == path
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd"])
def test_plain_tar_decompresses(tmp_path: Path, fmt: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    raw = make_tar()
    path = write(tmp_path, MISLEADING[fmt], COMPRESS[fmt](raw))
    out = plain_tar(path, work)
    assert out.parent == work and out != path
    data = out.read_bytes()  # up to the end-of-archive block: no record padding
    assert raw.startswith(data) and data.endswith(bytes(512)) and len(data) < len(raw)
    assert read_all(out) == EXPECTED


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd"])
def test_plain_tar_corrupt(tmp_path: Path, fmt: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    data = bytearray(COMPRESS[fmt](make_tar()))
    data[len(data) // 2] ^= 0xFF
    path = write(tmp_path, "rootfs", bytes(data))
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        plain_tar(path, work)


# --- copy_archive: up to the end-of-archive block ---------------------------------------------


def test_copy_archive_follows_pax_sizes(tmp_path: Path) -> None:
    """A member over 8 GiB has size 0 in its header and its real size in a pax record; the
    copy follows the record (shown here on a small member made to look like one)."""
    from pipeline.core.tarballs import copy_archive

    data = os.urandom(3000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("big")
        ti.size, ti.pax_headers = len(data), {"size": str(len(data))}
        tf.addfile(ti, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    hdr = 1024  # the pax header, one block of records, then the member's own header
    assert raw[156:157] == tarfile.XHDTYPE and raw[hdr:hdr + 3] == b"big"
    raw[hdr + 124:hdr + 136] = b"00000000000\0"
    raw[hdr + 148:hdr + 156] = b" " * 8
    raw[hdr + 148:hdr + 156] = b"%06o\0 " % sum(raw[hdr:hdr + 512])
    out = io.BytesIO()
    copy_archive(io.BytesIO(bytes(raw)), out, tmp_path / "x.tar")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        assert tf.extractfile("big").read() == data  # type: ignore[union-attr]
    assert out.getvalue().endswith(bytes(512)) and len(out.getvalue()) < len(raw)


def test_copy_archive_refuses_a_bomb_after_the_archive(tmp_path: Path) -> None:
    from pipeline.core.tarballs import TRAILER_LIMIT, copy_archive

    raw = make_tar() + bytes(TRAILER_LIMIT + (1 << 20))
    out = io.BytesIO()
    with pytest.raises(PipelineError, match="follow the archive's end-of-archive block"):
        copy_archive(io.BytesIO(raw), out, tmp_path / "bomb.tar.gz")
    assert len(out.getvalue()) <= len(make_tar()), "the bomb's zeros were written"
