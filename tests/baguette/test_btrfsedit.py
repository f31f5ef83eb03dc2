"""btrfsedit: device nodes and growth written into an unmounted image mkfs.btrfs made, checked
with btrfs-progs' own reader (`btrfs check`, `dump-tree`, `dump-super`); and the route plan()
takes by the mkfs.btrfs version found."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pipeline.baguette import btrfsedit, pack
from pipeline.baguette.staging import kernel_rdev
from pipeline.core.errors import PipelineError
from pipeline.core.run import tool_version, which
from tests.support.tools import tool_missing


def new_mkfs() -> None:
    found = which("mkfs.btrfs")
    if found is None or (tool_version(found) or (0,)) < pack.SUBVOL_MKFS:
        tool_missing("mkfs.btrfs 6.12+ is not installed (run `python3 -m pipeline.hostsetup`)")


def image_with(tmp_path: Path, names: list[str]) -> Path:
    """An image of a subvolume holding empty files at `names` (placeholders)."""
    tree = tmp_path / "root" / pack.SUBVOL
    (tree / "dev").mkdir(parents=True)
    for n in names:
        (tree / n).write_bytes(b"")
    image = tmp_path / "disk.img"
    pack.mkfs(tmp_path / "root", image, "t", subvol=pack.SUBVOL)
    return image


def dump(image: Path, *args: str) -> str:
    return subprocess.run(["btrfs", "inspect-internal", *args, str(image)], check=True,
                          capture_output=True, text=True).stdout


def test_crc32c_matches_the_castagnoli_check_value() -> None:
    assert btrfsedit.crc32c(b"123456789") == 0xE3069283


def test_device_nodes_are_written_and_btrfs_check_agrees(tmp_path: Path) -> None:
    new_mkfs()
    image = image_with(tmp_path, ["dev/null", "dev/loop0", "dev/other"])
    btrfsedit.set_devices(image, {
        b"dev/null": (0o020666, kernel_rdev(1, 3)),
        b"dev/loop0": (0o060660, kernel_rdev(7, 0))})
    subprocess.run(["btrfs", "check", "--readonly", str(image)], check=True,
                   capture_output=True)
    tree = dump(image, "dump-tree", "-t", "256")
    assert re.search(r"mode 20666 .*rdev 1048579", tree), tree
    assert re.search(r"mode 60660 .*rdev 7340032", tree)
    assert "mode 100644" in tree  # dev/other is still a file
    assert len(re.findall(r"type CHR", tree)) == 2 and len(re.findall(r"type BLK", tree)) == 2


def test_a_missing_path_or_a_damaged_block_is_refused(tmp_path: Path) -> None:
    new_mkfs()
    image = image_with(tmp_path, ["dev/null"])
    with pytest.raises(PipelineError, match="no entry b'dev/zero'"):
        btrfsedit.set_devices(image, {b"dev/zero": (0o020666, 5)})
    with btrfsedit.Image(image) as img:
        root = img.tree_root(256)
        phys = img.physicals(root)
    with open(image, "r+b") as f:  # flip a byte in every copy of the subvolume's root block
        for p in phys:
            f.seek(p + 200)
            byte = f.read(1)
            f.seek(p + 200)
            f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(PipelineError, match="bad checksum"):
        btrfsedit.set_devices(image, {b"dev/null": (0o020666, 5)})


def test_grow_sets_the_device_and_filesystem_size(tmp_path: Path) -> None:
    new_mkfs()
    image = image_with(tmp_path, [])
    before = image.stat().st_size
    os.truncate(image, 512 << 20)
    btrfsedit.grow(image, 512 << 20)
    sb = dump(image, "dump-super")
    assert re.search(r"^total_bytes\s+536870912$", sb, re.M)
    assert re.search(r"^dev_item.total_bytes\s+536870912$", sb, re.M)
    assert "total_bytes 536870912" in dump(image, "dump-tree", "-t", "chunk")
    subprocess.run(["btrfs", "check", "--readonly", str(image)], check=True,
                   capture_output=True)
    with pytest.raises(PipelineError, match="cannot shrink"):
        btrfsedit.grow(image, before - (64 << 20))


@pytest.mark.parametrize(("version", "route"), [((6, 2), pack.Route.SNAPSHOT),
                                                ((6, 11), pack.Route.SNAPSHOT),
                                                ((6, 12), pack.Route.SUBVOLUME),
                                                ((6, 14), pack.Route.SUBVOLUME)])
def test_the_route_follows_the_mkfs_version(version: tuple[int, ...], route: pack.Route,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack, "require_version", lambda tool: "/sbin/mkfs.btrfs")
    monkeypatch.setattr(pack, "tool_version", lambda path: version)
    how = pack.plan()
    assert how.route is route
    assert f"mkfs.btrfs {'.'.join(map(str, version))}" in how.why
    if route is pack.Route.SNAPSHOT:
        assert "older than 6.12" in how.why and "hostsetup" in how.why


def test_pin_makes_two_mkfs_runs_byte_identical(tmp_path: Path) -> None:
    """Two mkfs.btrfs runs of equal trees a second apart differ (chunk tree UUID, subvolume
    UUID and times, ctimes); pinned with the same seed and clock they are equal, and valid."""
    import time

    new_mkfs()
    fsid = "0b5e55ed-0000-4000-8000-000000000002"
    images = []
    for n in ("a", "b"):
        tree = tmp_path / n / "root" / pack.SUBVOL
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "hostname").write_text("x\n")
        for p in (tree / "etc" / "hostname", tree / "etc", tree):
            os.utime(p, (1_600_000_000, 1_600_000_000))
        os.utime(tree.parent, (1_700_000_000, 1_700_000_000))
        image = tmp_path / n / "disk.img"
        pack.mkfs(tree.parent, image, "t", fsid, subvol=pack.SUBVOL)
        images.append(image)
        time.sleep(1.1)  # another second for mkfs' clock and the staging ctimes
    a, b = images
    assert a.read_bytes() != b.read_bytes()
    for image in images:
        btrfsedit.pin(image, fsid, 1_700_000_000)
        subprocess.run(["btrfs", "check", "--readonly", str(image)], check=True,
                       capture_output=True)
    assert a.read_bytes() == b.read_bytes()
    tree = dump(a, "dump-tree", "-t", "256")
    assert "ctime 1600000000.0" in tree and "otime 0.0" in tree
