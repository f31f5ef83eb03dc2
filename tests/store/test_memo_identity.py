"""The hash memo (store/hashing.py) knows a file by its stat identity including the ctime,
which no user can set: an in-place edit that keeps the size and puts the mtime back is seen."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.store.hashing import FileHashMemo, sha256_file


def test_an_edit_keeping_size_and_mtime_is_seen(tmp_path: Path) -> None:
    f = tmp_path / "rootfs.tar"
    f.write_bytes(b"A" * 4096)
    memo = FileHashMemo(tmp_path / "memo.json")
    first = memo.sha256(f)
    st = f.stat()
    with open(f, "r+b") as g:  # dd conv=notrunc
        g.write(b"B" * 16)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -d: the old mtime again
    while f.stat().st_ctime_ns == st.st_ctime_ns:  # the kernel's clock tick (a few ms)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert memo.sha256(f) == sha256_file(f) != first
