"""Reproducibility: two cold builds of the same inputs with SOURCE_DATE_EPOCH set, in two
separate artifacts directories, give byte-identical rootfs tarballs, LXC tarballs, raw btrfs
images (`cmp`) and so baguette_rootfs.img.zst, with the filesystem UUID from the key and the
same file tree (read back through the VM helper). What btrfsedit.pin replaces for that is in
README, "Reproducibility"."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from pipeline.config import Accel
from pipeline.stages import filesystem_uuid
from pipeline.vmhelper.appliance import Appliance
from tests.support.readback import inspect_image
from tests.support.rootfs import add_sbin_init, write_rich_rootfs

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]
SDE = "1700000000"


def cold_build(project: Path, tarball: Path) -> Path:
    (project / "dotfiles").mkdir(parents=True)
    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -l'\n")
    shutil.copyfile(tarball, project / "rootfs.tar")
    artifacts = project / "artifacts"
    (project / "images.toml").write_text(f"""
[build]
accel = "tcg"
artifacts = "{artifacts}"
[images.first]
source = "tarball"
dotfiles = "dotfiles"
[images.first.tarball]
path = "rootfs.tar"
""")
    env = dict(os.environ, IMAGES_TOML=str(project / "images.toml"), SOURCE_DATE_EPOCH=SDE)
    proc = subprocess.run(
        [sys.executable, "-m", "doit", "run", "-f", str(ROOT / "dodo.py"),
         "--db-file", str(project / ".doit.db"), "build:baguette", "build:lxc"],
        capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return artifacts


def one(artifacts: Path, pattern: str) -> Path:
    (found,) = (artifacts / "store").glob(pattern)
    return found


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digests(tree_tar: Path) -> list[tuple[object, ...]]:
    """Every entry of a tree tar: name, type, mode, owner, mtime, size, link, device,
    xattrs and a hash of the data; not atime or ctime."""
    out: list[tuple[object, ...]] = []
    with tarfile.open(tree_tar, encoding="utf-8", errors="surrogateescape") as tf:
        for m in tf:
            data = tf.extractfile(m).read() if m.isreg() else b""  # type: ignore[union-attr]
            xattrs = sorted((k, v) for k, v in m.pax_headers.items() if "xattr" in k)
            out.append((m.name, m.type, m.mode, m.uid, m.gid, int(m.mtime), m.size, m.linkname,
                        m.devmajor, m.devminor, tuple(xattrs),
                        hashlib.sha256(data).hexdigest()))
    return out


def superblock_fsid(disk: Path) -> str:
    with open(disk, "rb") as f:
        f.seek(0x10000 + 0x20)
        return str(uuid.UUID(bytes=f.read(16)))


def test_two_cold_builds_are_identical(tmp_path: Path, appliance: Appliance) -> None:
    tarball = add_sbin_init(write_rich_rootfs(tmp_path / "input.tar"))
    a = cold_build(tmp_path / "a", tarball)
    b = cold_build(tmp_path / "b", tarball)

    for pattern in ("rootfs/*/rootfs.tar", "lxc/*/metadata.tar.xz", "lxc/*/rootfs.tar.xz",
                    "lxc/*/fingerprint"):
        assert sha(one(a, pattern)) == sha(one(b, pattern)), f"{pattern} differs"

    disk_a, disk_b = one(a, "pack/*/disk.img"), one(b, "pack/*/disk.img")
    assert disk_a.parent.name == disk_b.parent.name  # the same key
    fsid = filesystem_uuid(disk_a.parent.name)
    assert superblock_fsid(disk_a) == superblock_fsid(disk_b) == fsid
    differ = subprocess.run(["cmp", "-l", str(disk_a), str(disk_b)], capture_output=True,
                            text=True, check=False)
    assert differ.returncode == 0, (
        f"{len(differ.stdout.splitlines())} bytes of disk.img differ, first at (offset, a, b): "
        f"{differ.stdout.splitlines()[:3]}")
    assert sha(one(a, "baguette/*/baguette_rootfs.img.zst")) == sha(
        one(b, "baguette/*/baguette_rootfs.img.zst"))

    trees = []
    for disk in (disk_a, disk_b):
        seen = inspect_image(disk, disk.parent.parent.parent.parent / "tree.tar",
                             appliance=appliance, accel=Accel.TCG, timeout=300,
                             log_path=disk.parent.parent.parent.parent / "inspect.log")
        assert seen.default_subvolume == "rootfs_subvol"
        trees.append(tree_digests(seen.tree))
    assert len(trees[0]) > 30 and trees[0] == trees[1]
