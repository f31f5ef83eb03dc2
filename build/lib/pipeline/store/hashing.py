"""Content hashes: of files (memoised by stat identity) and of trees.

A file's hash is remembered under (device, inode, size, mtime_ns, ctime_ns), so an up-to-date
check never re-reads a multi-GB artifact that has not changed. The ctime is there because no
one can set it: an in-place edit that keeps the size and puts the mtime back (`dd
conv=notrunc` + `touch -d`) still changes it. The memo lives in one JSON file and is written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

from ..core.fsutil import atomic_write_bytes

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


SPARSE = "sparse-sha256:"  # the prefix of a sparse_sha256 digest in files.sha256
BLOCK = 4096
_ZERO_BLOCK = bytes(BLOCK)


def has_holes(path: Path) -> bool:
    """Does the file have a hole before its end (SEEK_HOLE)?"""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            return os.lseek(f.fileno(), 0, os.SEEK_HOLE) < size
        except (OSError, ValueError):  # no SEEK_HOLE here (pyfakefs raises ValueError)
            return False


def sparse_sha256(path: Path) -> str:
    """A digest of a file's bytes that skips its holes: sha256 over its size, then its 4 KiB
    blocks in order, each all-zero run as b"Z" + its length in blocks and every other block
    as b"D" + its bytes. It depends on the bytes only (a hole and written zeros give the same
    digest), and reads only the data regions (SEEK_DATA / SEEK_HOLE)."""
    h = hashlib.sha256()
    zeros = 0

    def block(data: bytes) -> None:
        nonlocal zeros
        if data == _ZERO_BLOCK[:len(data)]:
            zeros += 1
            return
        if zeros:
            h.update(b"Z" + zeros.to_bytes(8, "little"))
            zeros = 0
        h.update(b"D" + data)

    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        h.update(size.to_bytes(8, "little"))
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA) // BLOCK * BLOCK
            except OSError:  # ENXIO: only a hole is left
                data = size
            zeros += (min(data, size) - pos + BLOCK - 1) // BLOCK
            if data >= size:
                break
            end = min(-(-os.lseek(fd, data, os.SEEK_HOLE) // BLOCK) * BLOCK, size)
            while data < end:
                chunk = os.pread(fd, min(CHUNK, end - data), data)
                if not chunk:
                    raise OSError(f"{path}: shorter than its size while hashing")
                for i in range(0, len(chunk), BLOCK):
                    block(chunk[i:i + BLOCK])
                data += len(chunk)
            pos = end
    if zeros:
        h.update(b"Z" + zeros.to_bytes(8, "little"))
    return h.hexdigest()


def file_digest(path: Path, like: str = "") -> str:
    """The digest files.sha256 records for `path`: the plain sha256, or for a file with holes
    (a raw disk image) SPARSE + sparse_sha256. With `like`, a digest recorded earlier, the
    same kind is computed, to compare with it."""
    sparse = like.startswith(SPARSE) if like else has_holes(path)
    return SPARSE + sparse_sha256(path) if sparse else sha256_file(path)


class FileHashMemo:
    """sha256 of files, remembered by stat identity in `memo_path`."""

    def __init__(self, memo_path: Path) -> None:
        self.memo_path = memo_path
        self._dirty = False
        self._lock = threading.Lock()  # doit -P thread runs stages in threads
        try:
            self._memo: dict[str, str] = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            self._memo = {}

    @staticmethod
    def _identity(st: os.stat_result) -> str:
        return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    def sha256(self, path: Path) -> str:
        st = path.stat()
        ident = self._identity(st)
        cached = self._memo.get(ident)
        if cached is not None:
            return cached
        digest = sha256_file(path)
        with self._lock:
            self._memo[ident] = digest
            self._dirty = True
        return digest

    def note(self, path: Path, digest: str) -> None:
        """Remember `digest` for `path` as it is now: the caller just made a new hard link to
        a file whose bytes it had hashed (a link changes the ctime, not the content)."""
        ident = self._identity(path.stat())
        with self._lock:
            if self._memo.get(ident) != digest:
                self._memo[ident] = digest
                self._dirty = True

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            blob = json.dumps(self._memo).encode()
            self._dirty = False
        try:
            self.memo_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.memo_path, blob)
        except OSError:
            pass  # a cache: not saving it costs the next run a re-hash, nothing else


def _raise(exc: OSError) -> None:
    raise exc  # an unreadable directory is an error, not an empty one


def tree_digests(root: Path, memo: FileHashMemo | None = None) -> dict[str, str]:
    """{relative path: "mode:sha256"} for every entry under root (content, modes, names; no mtimes).

    Directories map to "dir:MODE", symlinks to "link:TARGET". Sorted, so it hashes stably.
    With a `memo`, unchanged files are not read again (every doit run computes this).
    """
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = base / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link:{os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir:{stat.S_IMODE(st.st_mode):o}"
            elif stat.S_ISREG(st.st_mode):
                digest = memo.sha256(p) if memo is not None else sha256_file(p)
                out[rel] = f"{stat.S_IMODE(st.st_mode):o}:{digest}"
            else:
                out[rel] = f"special:{stat.S_IFMT(st.st_mode):o}"
    return out
