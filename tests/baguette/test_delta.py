"""Delta image update with the real VM helper: the updated image holds exactly the tree of a
full pack of the new rootfs (every file's metadata compared)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipeline.baguette import check as validate
from pipeline.baguette import delta, pack
from pipeline.config import Accel
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Guest
from tests.support import tree as manifest
from tests.support.readback import inspect_image

pytestmark = pytest.mark.vm
def tcg(appliance: Appliance) -> Guest:
    return Guest(appliance, Accel.TCG, timeout=300, memory_mib=512)


def variant(old: Path, new: Path) -> None:
    """The fixture with an edited file (same size), a new directory and file, a removed
    file, a mode change, a retargeted symlink and a changed xattr."""
    with tarfile.open(old) as src, tarfile.open(new, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            data = src.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            if m.name == "./home/user/.bashrc":
                data = data.replace(b"ll", b"LL")  # type: ignore[union-attr]
            elif m.name == "./etc/hostname":
                continue
            elif m.name == "./usr/share/empty":
                m.mode = 0o600
            elif m.name == "./home/user/link-to-bashrc":
                m.linkname = "dir with space"
            elif m.name == "./usr/bin/ping":
                m.pax_headers = {"SCHILY.xattr.user.note": "changed"}
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
            if m.name == "./home/user/link-to-bashrc":
                d = tarfile.TarInfo("./home/user/new/")
                d.type, d.mode, d.uid, d.gid, d.mtime = tarfile.DIRTYPE, 0o750, 1000, 1000, 7
                dst.addfile(d)
                f = tarfile.TarInfo("./home/user/new/file")
                f.size, f.uid, f.gid, f.mtime = 4, 1000, 1000, 8
                dst.addfile(f, io.BytesIO(b"new\n"))


def test_delta_equals_full_pack(rich_rootfs: Path, appliance: Appliance, tmp_path: Path) -> None:
    new = tmp_path / "new.tar"
    variant(rich_rootfs, new)
    opts = pack.PackOptions("delta-test", None, 64 << 20)
    old_image, full_image, delta_image = (tmp_path / n for n in ("old.img", "full.img",
                                                                 "delta.img"))
    pack.pack(rich_rootfs, old_image, opts, tcg(appliance), log_path=tmp_path / "old.log",
              work_dir=tmp_path)
    pack.pack(new, full_image, opts, tcg(appliance), log_path=tmp_path / "full.log",
              work_dir=tmp_path)

    changes = delta.diff(rich_rootfs, new)
    assert changes is not None
    assert set(changes.changed) == {"home/user/.bashrc", "usr/share/empty", "usr/bin/ping",
                                    "home/user/link-to-bashrc", "home/user/new",
                                    "home/user/new/file"}
    assert changes.deleted == ["etc/hostname"]
    delta.apply(old_image, delta_image, changes, new, tcg(appliance),
                log_path=tmp_path / "delta.log", work=tmp_path)
    validate.check_raw(delta_image)

    trees = {}
    for name, image in (("full", full_image), ("delta", delta_image)):
        seen = inspect_image(image, tmp_path / f"{name}.tree.tar", appliance=appliance,
                             log_path=tmp_path / f"{name}.inspect.log", accel=Accel.TCG,
                             timeout=300)
        assert seen.default_subvolume == "rootfs_subvol" and seen.label == "delta-test"
        trees[name] = manifest.read(seen.tree)
    assert manifest.differences(trees["full"], trees["delta"]) == []
    assert manifest.differences(manifest.read(new), trees["delta"]) == []


def test_no_delta_when_hardlinks_change(rich_rootfs: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.tar"
    with tarfile.open(rich_rootfs) as src, tarfile.open(new, "w",
                                                        format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            data = src.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            if m.name == "./usr/bin/a":
                data = b"#!/bin/sh\necho A\n"
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    assert delta.diff(rich_rootfs, new) is None


def test_no_delta_for_a_large_change(tmp_path: Path) -> None:
    def tar(path: Path, payload: bytes) -> Path:
        with tarfile.open(path, "w") as tf:
            f = tarfile.TarInfo("./big")
            f.size = len(payload)
            tf.addfile(f, io.BytesIO(payload))
        return path

    assert delta.diff(tar(tmp_path / "a.tar", b"a" * 4096),
                      tar(tmp_path / "b.tar", b"b" * 4096)) is None
