"""The customize stage reads the dotfiles as the key saw them: hashed while streamed (never
held whole), an edit during the build stops it before anything is stored, and an unreadable
dotfile is one clear error, not a traceback."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core import tarballs
from pipeline.core.errors import PipelineError
from pipeline.rootfs import customize as customize_mod
from pipeline.rootfs.customize import customize
from tests.support.doit import doit
from tests.support.paths import ROOT

SDE = 1_700_000_000


def base_tar(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("./", None), ("./etc/", None),
                           ("./etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
                           ("./etc/group", b"root:x:0:\n"), ("./sbin/", None),
                           ("./sbin/init", b"#!/bin/sh\n")):
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            ti.mode, ti.mtime = 0o755, SDE
            ti.size = len(data or b"")
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def project(root: Path) -> Path:
    base_tar(root / "base.tar")
    (root / "dots").mkdir(exist_ok=True)
    (root / "images.toml").write_text(f"""
[build]
artifacts = "{root / 'artifacts'}"
[images.box]
source = "tarball"
dotfiles = "dots"
chromeos_integration = false
[images.box.tarball]
path = "base.tar"
""")
    return root / "images.toml"


def read_member(tar: Path, name: str) -> bytes:
    with tarfile.open(tar) as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def test_a_same_size_dotfile_edit_during_the_build_stores_nothing(tmp_path: Path) -> None:
    toml = project(tmp_path)
    bashrc = tmp_path / "dots" / ".bashrc"
    bashrc.write_text("alias A=aaaa\n")
    run = stages.open_run(config.load(toml), SDE)
    image = run.config.image("box")
    stages.build(run, stages.BASE, image)
    keyed = stages.key(run, stages.ROOTFS, image)  # doit's up-to-date check: key from A
    bashrc.write_text("alias B=bbbb\n")  # the same size, edited before the stage reads it
    with pytest.raises(PipelineError) as exc:
        stages.build(run, stages.ROOTFS, image)
    assert ".bashrc changed while the rootfs was built" in exc.value.message
    assert exc.value.hint and not run.store.has(keyed)
    bashrc.write_text("alias A=aaaa\n")  # back to A: the image holds A
    again = stages.open_run(config.load(toml), SDE)
    entry = stages.build(again, stages.ROOTFS, image)
    assert entry.name == keyed.key
    assert read_member(entry / "rootfs.tar", "./home/user/.bashrc") == b"alias A=aaaa\n"


def _short_writes(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """os.write as the kernel does it for huge buffers: at most `limit` bytes per call
    (2 GiB - 4 KiB on Linux)."""
    real = os.write

    def write(fd: int, data: bytes) -> int:
        return real(fd, memoryview(data)[:limit])

    monkeypatch.setattr(tarballs.os, "write", write)


@pytest.fixture
def big_dotfile(tmp_path: Path) -> Iterator[tuple[config.Image, Path, int]]:
    toml = project(tmp_path)
    size = 48 << 20
    big = tmp_path / "dots" / "disk.img"
    with open(big, "wb") as f:  # mostly a hole, some data at both ends
        f.write(b"head")
        f.truncate(size - 4)
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    yield config.load(toml).image("box"), big, size


def test_a_big_dotfile_is_streamed_whole_through_short_writes(
        tmp_path: Path, big_dotfile: tuple[config.Image, Path, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    image, big, size = big_dotfile
    _short_writes(monkeypatch, 1 << 16)
    # the secret scan reads up to 64 MiB of each file by design: not what is measured here
    monkeypatch.setattr(customize_mod.secrets, "scan", lambda *args: [])
    out = tmp_path / "out.tar"
    (tmp_path / "work").mkdir()
    tracemalloc.start()
    try:
        customize(tmp_path / "base.tar", image, out, work_dir=tmp_path / "work",
                  source_date_epoch=SDE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 4, f"{peak / 2**20:.0f} MiB held for a {size >> 20} MiB dotfile"
    with tarfile.open(out) as tf:
        m = tf.getmember("./home/user/disk.img")
        assert m.size == size
        f = tf.extractfile(m)
        assert f is not None
        assert f.read(4) == b"head"
        f.seek(size - 4)
        assert f.read() == b"tail"


def test_an_unreadable_dotfile_is_one_clear_error(tmp_path: Path) -> None:
    """A root-owned 0600 dotfile, built as a normal user (as nobody, when the tests run as
    root; as the user itself with the file made unreadable otherwise)."""
    work = Path(tempfile.mkdtemp(prefix="unreadable-dotfile."))
    try:
        os.chmod(work, 0o755)
        project(work)
        secret = work / "dots" / ".netrc-backup"
        secret.write_text("kept from the user\n")
        secret.chmod(0o600 if os.geteuid() == 0 else 0o000)
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("setpriv (util-linux) is needed to build as another user")
            for p in [work, *work.rglob("*")]:
                if p != secret:
                    os.chown(p, 65534, 65534, follow_symlinks=False)
            proc = subprocess.run(
                [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                 "env", f"HOME={work}", f"IMAGES_TOML={work / 'images.toml'}",
                 str(ROOT / ".venv" / "bin" / "python"), "-m", "doit", "run",
                 "-f", str(ROOT / "dodo.py"), "--db-file", str(work / ".doit.db"),
                 "rootfs:box"], capture_output=True, text=True, cwd=work, check=False)
        else:
            proc = doit(work, "rootfs:box", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert f"dotfiles: cannot read {secret}: permission denied" in out, out
        assert "hint:" in out and "Traceback" not in out, out
        assert not list((work / "artifacts" / "store").glob("rootfs/[!.]*"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
