"""Names from the tarball never become options of the guest's tools: the pack job's chown and
chmod lists hold each name as `./name`, so a top-level member named `-R` is a path (it made
`xargs -0 chown -h U:G` recurse: owners under srv/ wrong, setuid bits lost, exit 0)."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

from pipeline.baguette import pack
from pipeline.config import Accel
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Guest
from tests.support import tree as manifest
from tests.support.readback import inspect_image


def hostile(path: Path) -> Path:
    """Top-level names that look like options, beside a tree whose owners and setuid bits a
    recursive chown would change."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, kind: bytes, mode: int, uid: int, data: bytes = b"") -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, uid, 1_700_000_000
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)

        d, f = tarfile.DIRTYPE, tarfile.REGTYPE
        add("./", d, 0o755, 0)
        add("./-R", d, 0o755, 1000)
        add("./--reference=srv", f, 0o644, 1000, b"x\n")
        add("./srv", d, 0o755, 1000)
        add("./srv/secret", f, 0o600, 0, b"root's\n")
        add("./srv/tool", f, 0o4755, 0, b"#!setuid\n")
        add("./srv/data", d, 0o750, 33)
        add("./srv/data/db", f, 0o640, 33, b"www-data's\n")
        add("./usr", d, 0o755, 0)
        add("./usr/bin", d, 0o755, 0)
        add("./usr/bin/sudo", f, 0o4755, 0, b"#!setuid\n")
    return path


def job_lists(job: Path) -> dict[str, list[bytes]]:
    with tarfile.open(job) as jt:
        out = {}
        for m in jt.getmembers():
            if m.name.startswith(("chown.", "chmod.")):
                f = jt.extractfile(m)
                assert f is not None
                out[m.name] = [n for n in f.read().split(b"\0") if n]
        return out


def test_job_lists_hold_every_name_as_a_path(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    staged = pack.extract(hostile(tmp_path / "rootfs.tar"), tree)
    pack.write_job(staged, "x", tmp_path / "job.tar")
    lists = job_lists(tmp_path / "job.tar")
    assert lists, "nothing to chown or chmod: the test proves nothing"
    for name, paths in lists.items():
        assert all(p.startswith(b"./") for p in paths), (name, paths)
    assert any(b"./-R" in paths for paths in lists.values()) or os.getuid() == 1000


@pytest.mark.vm
def test_a_member_named_like_an_option_keeps_every_owner(appliance: Appliance) -> None:
    with tempfile.TemporaryDirectory(prefix="pack-names.") as d:
        work = Path(d)
        tarball = hostile(work / "rootfs.tar")
        image = work / "disk.img"
        pack.pack(tarball, image, pack.PackOptions("names", None, 64 << 20),
                  Guest(appliance, Accel.TCG, timeout=300, memory_mib=512),
                  log_path=work / "console.log", work_dir=work)
        seen = inspect_image(image, work / "tree.tar", appliance=appliance, accel=Accel.TCG,
                             timeout=300, log_path=work / "inspect.log")
        actual = manifest.read(seen.tree)
        assert manifest.differences(manifest.read(tarball), actual) == []
        assert (actual["/srv/secret"].uid, actual["/srv/tool"].mode) == (0, 0o4755)
