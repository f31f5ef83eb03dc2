"""Reading rootfs tarballs whatever their compression, sniffed with libmagic (not by name)."""

from __future__ import annotations

import contextlib
import io
import lzma
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import PipelineError

FORMATS = ("tar", "gzip", "xz", "zstd")


def sniff(path: Path) -> str:
    """One of FORMATS, from the file's content."""
    import magic

    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror}",
                            hint="check the path and its permissions") from None
    kind = magic.from_buffer(head, mime=True)
    if kind in ("application/zstd", "application/x-zstd"):
        return "zstd"
    if kind in ("application/x-xz",):
        return "xz"
    if kind in ("application/gzip", "application/x-gzip"):
        return "gzip"
    if kind in ("application/x-tar", "application/x-gtar") or head[257:262] == b"ustar":
        return "tar"
    described = magic.from_buffer(head)
    raise PipelineError(
        f"{path} is not a rootfs tarball: libmagic says {described!r}",
        hint="give a tar archive, optionally compressed with gzip, xz or zstd",
    )


class _ZstdReader(io.RawIOBase):
    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20)

    def readable(self) -> bool:
        return True

    def readinto(self, b):  # type: ignore[no-untyped-def]
        data = self._reader.read(len(b))
        b[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_stream(path: Path) -> Iterator[BinaryIO]:
    """The decompressed tar stream of `path`, buffered."""
    fmt = sniff(path)
    with open(path, "rb") as raw:
        if fmt == "tar":
            yield raw
        elif fmt == "zstd":
            yield io.BufferedReader(_ZstdReader(raw), buffer_size=1 << 20)  # type: ignore[arg-type]
        elif fmt == "xz":
            with lzma.open(raw) as f:
                yield f  # type: ignore[misc]
        else:
            import gzip

            with gzip.open(raw) as f:
                yield f  # type: ignore[misc]


# member types whose header is followed by no data (tarfile: the others carry `size` bytes)
_NO_DATA = {tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
            tarfile.DIRTYPE, tarfile.FIFOTYPE}


def _read_full(src: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = src.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


TRAILER_LIMIT = 64 << 20


def copy_archive(src: BinaryIO, dst: BinaryIO, path: Path) -> None:
    """Copy a decompressed tar stream up to its end-of-archive block, header by header.

    What follows that block (record padding) is read, so the compressed stream's own check
    runs, but not written; more than TRAILER_LIMIT of it (gigabytes of zeros from a
    decompression bomb, say) is refused. A malformed or cut stream is copied as far as it
    goes: `members` then refuses it with the reason.
    """
    _copy_members(src, dst)
    trailing = 0
    while chunk := src.read(1 << 20):
        trailing += len(chunk)
        if trailing > TRAILER_LIMIT:
            raise PipelineError(
                f"{path}: more than {TRAILER_LIMIT >> 20} MiB follow the archive's "
                "end-of-archive block (a decompression bomb?)",
                hint="give the rootfs tarball itself, without data appended")


def _copy_members(src: BinaryIO, dst: BinaryIO) -> None:
    pax_size: int | None = None
    while True:
        header = _read_full(src, tarfile.BLOCKSIZE)
        dst.write(header)
        if len(header) < tarfile.BLOCKSIZE or not header.strip(b"\0"):
            return  # cut short, or the end-of-archive block
        try:
            size = tarfile.nti(header[124:136])  # type: ignore[attr-defined]
        except (tarfile.HeaderError, ValueError):
            return
        kind = header[156:157]
        if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            data = _read_full(src, size + -size % tarfile.BLOCKSIZE)
            dst.write(data)
            if kind != tarfile.XGLTYPE:
                pax_size = _pax_size(data[:size])
            continue
        if pax_size is not None:
            size, pax_size = pax_size, None
        if kind in _NO_DATA:
            continue
        remaining = size + -size % tarfile.BLOCKSIZE
        while remaining:
            chunk = src.read(min(remaining, 1 << 20))
            if not chunk:
                return
            dst.write(chunk)
            remaining -= len(chunk)


def _pax_size(records: bytes) -> int | None:
    """The `size` a pax extended header gives the next member (files over 8 GiB), if any."""
    pos = 0
    while pos < len(records):
        length_text, _, _ = records[pos:pos + 20].partition(b" ")
        if not length_text.isdigit() or int(length_text) <= 0:
            return None
        record = records[pos:pos + int(length_text)]
        key, _, value = record.partition(b" ")[2].partition(b"=")
        if key == b"size":
            return int(value.rstrip(b"\n")) if value.rstrip(b"\n").isdigit() else None
        pos += int(length_text)
    return None


def plain_tar(tarball: Path, work: Path) -> Path:
    """`tarball` itself if uncompressed, else a decompressed copy in `work`."""
    if sniff(tarball) == "tar":
        return tarball
    out = work / "rootfs.tar"
    with open(out, "wb") as dst:
        decompress_into(tarball, dst)
    return out


def decompress_into(tarball: Path, dst: BinaryIO) -> None:
    """Write `tarball`'s archive, decompressed, to `dst`: a data error is `corrupt`, a disk
    error (ENOSPC, say) stays an OSError."""
    with open_stream(tarball) as src:
        try:
            copy_archive(src, dst, tarball)
        except PipelineError:
            raise
        except OSError as exc:
            if exc.errno is not None:  # the disk, not the data (BadGzipFile has none)
                raise
            raise corrupt(tarball, exc) from None
        except Exception as exc:  # lzma, zlib and zstd each raise their own type
            raise corrupt(tarball, exc) from None


def corrupt(path: Path, exc: BaseException) -> PipelineError:
    return PipelineError(
        f"{path}: corrupt or truncated tarball ({type(exc).__name__}: {exc})",
        hint="rebuild or re-download it; `tar -tf` on it shows where it breaks",
    )


def open_plain(path: Path, label: Path | None = None) -> tarfile.TarFile:
    """A plain tar opened for reading by offset; an unreadable one is a PipelineError
    naming `label` (the file the user gave) if set."""
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise corrupt(label or path, exc) from None


def members(tf: tarfile.TarFile, path: Path,
            label: Path | None = None) -> Iterator[tarfile.TarInfo]:
    """The members of a plain tar opened with mode "r:", refusing a truncated archive.

    tarfile ends quietly at a header cut short; a complete archive ends with a zero block
    right after its last member, so anything else there means the file was truncated.
    Errors name `label` (the file the user gave) if set, else `path`.
    """
    size = path.stat().st_size
    shown_path = label or path
    while True:
        try:
            m = tf.next()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise corrupt(shown_path, exc) from None
        if m is None:
            break
        if m.isreg() and m.offset_data + m.size > size:
            raise corrupt(shown_path, EOFError(f"{m.name} is cut short"))
        yield m
    with open(path, "rb") as f:
        f.seek(tf.offset)  # where tarfile stopped: the end block, or a cut-short header
        block = f.read(tarfile.BLOCKSIZE)
    if len(block) != tarfile.BLOCKSIZE or block.strip(b"\0"):
        raise corrupt(shown_path,
                      EOFError("the archive ends without its end-of-archive block"))


def member_path(name: str) -> str:
    """A member's name as a relative path: './usr/bin/' -> 'usr/bin', './' -> ''."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


# --- what a rootfs tarball may hold ---------------------------------------------------------
#
# The rules (README, "Rootfs tarballs"): names are relative and never climb out with '..';
# nothing is written *through* a symlink or under a non-directory (a member `a/x` after the
# member `a -> ../../etc` is refused), while symlink *targets* may point anywhere: they are
# resolved inside the guest (`/etc/localtime -> /usr/share/zoneinfo/UTC`); a hardlink names a
# regular file earlier in the archive; duplicate names follow GNU tar: the last one wins, and a
# directory may be declared again, but a directory that already holds entries cannot become a
# file or a link; names that are not UTF-8 are kept as the bytes they are; sparse members
# and unknown member types are refused. Refusals name the member (non-UTF-8 bytes escaped).

KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
         tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
         tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "character device",
         tarfile.BLKTYPE: "block device"}


def shown(name: str) -> str:
    """A member name for a message: quoted, control characters and non-UTF-8 bytes escaped."""
    return ascii(name) if not name.isprintable() else repr(name)


def safe_name(name: str, path: Path, what: str = "entry") -> str:
    """`name` as a relative path (see member_path), refusing one that leaves the root."""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        raise PipelineError(
            f"{path}: tarball {what} {shown(name)} escapes the root "
            f"({'an absolute path' if name.startswith('/') else 'it holds ..'})",
            hint="a rootfs tarball holds relative paths without '..' (`tar -C root -c .`)")
    return member_path(name)


class TreeRules:
    """Checks members one by one, in archive order, against the rules above."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.kinds: dict[str, str] = {"": "directory"}  # what each name is now
        self.parents: set[str] = {""}  # directories that hold entries

    def refuse(self, m: tarfile.TarInfo, why: str) -> PipelineError:
        return PipelineError(f"{self.path}: tarball entry {shown(m.name)} {why}",
                             hint="fix the tarball: the README's \"Rootfs tarballs\" section "
                             "lists what a rootfs tarball may hold")

    def check(self, m: tarfile.TarInfo) -> str:
        """The member's relative name, if it follows the rules; else a PipelineError."""
        name = safe_name(m.name, self.path)
        kind = KINDS.get(m.type)
        if kind is None:
            raise self.refuse(m, f"has the unsupported member type {m.type!r}")
        if m.issparse():
            raise self.refuse(m, "is a GNU sparse file, which is not supported")
        if not name and kind != "directory":
            raise self.refuse(m, f"makes the root itself a {kind}")
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            held = self.kinds.setdefault(parent, "directory")
            if held != "directory":
                raise self.refuse(m, f"would be written through {shown(parent)}, "
                                  f"which is a {held}" +
                                  (" (its target is not followed)" if held == "symlink" else ""))
            self.parents.add(parent)
        if kind == "hardlink":
            target = safe_name(m.linkname, self.path, f"hardlink target of {shown(m.name)}")
            if target == name:
                raise self.refuse(m, "is a hardlink to itself")
            if self.kinds.get(target) != "file":
                raise self.refuse(m, f"is a hardlink to {shown(m.linkname)}, which is not a "
                                  "regular file earlier in the archive")
            kind = "file"
        old = self.kinds.get(name)
        if old == "directory" and kind != "directory" and name in self.parents:
            raise self.refuse(m, f"replaces the directory {shown(name)}, which holds entries, "
                              f"with a {kind}")
        self.kinds[name] = kind
        return name


def checked_members(tf: tarfile.TarFile, path: Path,
                    label: Path | None = None) -> Iterator[tarfile.TarInfo]:
    """members(), each checked against the rootfs rules (TreeRules); errors name `label`."""
    rules = TreeRules(label or path)
    count = 0
    for m in members(tf, path, label):
        rules.check(m)
        count += 1
        yield m
    if not count:
        raise PipelineError(f"{label or path}: the tarball holds no entries",
                            hint="a rootfs tarball holds at least the root directory's tree")


def rewrite(src: Path, dst: Path, entries: Iterable[tarfile.TarInfo],
            head: Iterable[tuple[tarfile.TarInfo, bytes]] = ()) -> None:
    """A plain tar at `dst`: the `head` members (with their bytes), then `entries`, members
    of the plain tar `src` (renamed or edited as the caller likes) whose data is copied from
    `src` in the kernel."""
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        writer = TarWriter(dst_fd)
        for ti, data in head:
            writer.add(ti, data)
        for m in entries:
            writer.add(m, src=(src_fd, m.offset_data))
        writer.close()
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def copy_range(src_fd: int, dst_fd: int, offset: int, size: int) -> None:
    """Copy `size` bytes at `offset` of src to dst's position, in the kernel (a reflink where
    the filesystem can)."""
    while size:
        n = os.copy_file_range(src_fd, dst_fd, size, offset)
        if n == 0:
            raise EOFError("unexpected end of tarball data")
        offset += n
        size -= n


class TarWriter:
    """Writes a plain PAX tar to a file descriptor, member by member.

    A member's data comes from bytes or from a range of another file (copied in the kernel),
    so rewriting a multi-GB rootfs tarball never passes its contents through Python.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def add(self, ti: tarfile.TarInfo, data: bytes | None = None,
            src: tuple[int, int] | None = None, chunks: Iterable[bytes] | None = None) -> None:
        """`ti` with `data`, with ti.size bytes of file descriptor src[0] at offset src[1], or
        with `chunks` that add up to ti.size bytes (a file streamed, never held whole)."""
        if not ti.isreg():
            ti.size = 0
        elif data is not None:
            ti.size = len(data)
        self._write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if not ti.size:
            return
        if data is not None:
            self._write(data)
        elif chunks is not None:
            written = 0
            for chunk in chunks:
                self._write(chunk)
                written += len(chunk)
            if written != ti.size:
                raise ValueError(f"{ti.name}: {written} bytes streamed, {ti.size} declared")
        else:
            assert src is not None
            copy_range(src[0], self.fd, src[1], ti.size)
        if ti.size % tarfile.BLOCKSIZE:
            self._write(bytes(tarfile.BLOCKSIZE - ti.size % tarfile.BLOCKSIZE))

    def _write(self, data: bytes) -> None:
        """All of `data`: os.write writes at most 2 GiB - 4 KiB at a time, less on a pipe."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        self._write(bytes(2 * tarfile.BLOCKSIZE))
