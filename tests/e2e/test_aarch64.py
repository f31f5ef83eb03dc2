"""An aarch64 Debian image on this x86_64 host: built (mmdebstrap --architectures=arm64, its
maintainer scripts under qemu-user), packed with the host's own x86_64 appliance, verified under
qemu-system-aarch64 -M virt with the ChromeOS disk layout and the conformance checks, imported
by LXD as aarch64, and packed again by an aarch64 appliance made from an arm64 Debian tree, as
an ARM host packs (the rich test rootfs, the route with the most guest work). One build and
one boot for the whole file (session fixtures)."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.baguette import check, pack
from pipeline.config import Accel
from pipeline.core.arch import AARCH64
from pipeline.rootfs import treearch
from pipeline.store.entries import Store
from pipeline.store.hashing import FileHashMemo
from pipeline.store.layout import Layout
from pipeline.vmhelper import appliance as appliance_mod
from pipeline.vmhelper.qemu import Guest
from pipeline.vmhelper.toolroot import ToolRoot
from tests.support import tree as manifest
from tests.support.aarch64 import IMAGE, aarch64_missing, arm64_tools, write_project
from tests.support.lxd import LXD, lxd  # noqa: F401 (the fixture)
from tests.support.readback import inspect_image
from tests.support.tools import require_vm, tool_missing

pytestmark = [pytest.mark.vm, pytest.mark.network, pytest.mark.aarch64]


def require_aarch64() -> None:
    """Skip where aarch64 guests cannot be made here; in CI (CI=true) that is a failure."""
    missing = aarch64_missing()
    if missing:
        tool_missing(f"{missing} (run `python3 -m pipeline.hostsetup --tests` as root)")


@pytest.fixture(scope="session")
def arm_tools() -> ToolRoot:
    require_aarch64()
    return arm64_tools()


@pytest.fixture(scope="session")
def arm_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stages.Run]:
    """The tiny aarch64 image, built up to its Baguette disk with the host's appliance."""
    require_vm()
    require_aarch64()
    root = tmp_path_factory.mktemp("aarch64")
    run = stages.open_run(config.load(write_project(root)), 1_700_000_000)
    image = run.config.image(IMAGE)
    for stage in (stages.BASE, stages.ROOTFS, stages.PACK, stages.BAGUETTE):
        stages.build(run, stage, image)
    yield run


def test_built_on_x86_and_packed_by_the_x86_appliance(arm_run: stages.Run) -> None:
    image = arm_run.config.image(IMAGE)
    rootfs = stages.main_file(arm_run, stages.ROOTFS, image)
    found = treearch.read_arch(rootfs)
    assert found is not None and found.machine == AARCH64.elf_machine, found
    with tarfile.open(rootfs) as tf:
        status = tf.extractfile("./var/lib/dpkg/status").read().decode()  # type: ignore[union-attr]
    assert "Package: systemd\n" in status and "Architecture: arm64" in status
    assert "Architecture: amd64" not in status
    built = json.loads((stages.entry(arm_run, stages.PACK, image) / "build.json").read_text())
    assert built["accel"] == "tcg"
    assert arm_run.appliance is not None and arm_run.appliance.arch.name == "x86_64"
    zst = arm_run.layout.outputs(IMAGE) / stages.IMAGE_NAME
    raw = stages.main_file(arm_run, stages.PACK, image)
    check.check_compressed(zst, "baguette-root", raw.stat().st_size)


def test_verify_boots_it_under_qemu_system_aarch64(arm_run: stages.Run) -> None:
    """ChromeOS's disk layout, the image's own systemd, every conformance check."""
    image = arm_run.config.image(IMAGE)
    stages.boot_test(arm_run, image)  # raises with the failed checks' names
    console = arm_run.layout.console_log(IMAGE, "conformance").read_text(errors="replace")
    assert "systemd[1]:" in console  # the image's own init, on the virt board's PL011
    assert arm_run.foreign["aarch64"].arch is AARCH64  # an aarch64 appliance booted it
    assert stages.guest_for(arm_run, image).appliance.arch.qemu == "qemu-system-aarch64"
    results = arm_run.layout.console_log(IMAGE, "conformance").with_name(
        "conformance.results.log")
    verdicts = results.read_text()
    for name in ("boot", "tools-mount", "user-session", "garcon", "shell", "failed-units"):
        assert f"@@CHECK {name} PASS" in verdicts, verdicts
    stamp = json.loads((arm_run.layout.outputs(IMAGE) / "verified.json").read_text())
    assert stamp["conformance"] == "passed"


def test_lxd_imports_it_and_reports_aarch64(arm_run: stages.Run, lxd: LXD) -> None:  # noqa: F811
    image = arm_run.config.image(IMAGE)
    entry = stages.build(arm_run, stages.LXC, image)
    files = [arm_run.layout.outputs(IMAGE) / "lxc" / f for f in stages.lxc_files(entry)]
    with tarfile.open(files[0]) as tf:
        assert '"architecture": "aarch64"' in tf.extractfile(  # type: ignore[union-attr]
            "metadata.yaml").read().decode()
    fp = lxd.import_split(files[0], files[1], "tiny-arm")
    assert fp == (entry / "fingerprint").read_text().strip()
    info = lxd.lxc("image", "info", fp).stdout
    assert "Architecture: aarch64" in info, info
    lxd.delete_image(fp)


def test_the_arm64_appliance_packs_under_qemu_system_aarch64(
        arm_tools: ToolRoot, appliance: appliance_mod.Appliance, rich_rootfs: Path,
        tmp_path: Path) -> None:
    """What an ARM host does: its own arm64 kernel, busybox, tar, btrfs and coreutils in the
    appliance (here from the arm64 Debian tree), QEMU's virt board; the guest applies every
    owner, mode, xattr and device node (the route of a user without subordinate ids, the one
    with the most guest work). Read back by the x86_64 appliance, the tree is the tarball's."""
    store = Store(Layout(tmp_path / "artifacts"))
    app = appliance_mod.ensure(store, None, FileHashMemo(tmp_path / "memo.json"), arm_tools)
    assert app.arch is AARCH64
    initrd = subprocess.run(["cpio", "-t", "--quiet"], stdin=app.initrd.open("rb"),
                            capture_output=True, check=True).stdout.decode().split()
    for inside in ("bin/busybox", "bin/tar", "usr/sbin/btrfs", "usr/bin/chown",
                   "lib/ld-linux-aarch64.so.1"):
        assert inside in initrd
    arm_vm = Guest(app, Accel.TCG, 600, 512)
    how = pack.Plan(pack.Route.SUBVOLUME, pack.Host.USER, "the guest sets owners")
    image = tmp_path / "disk.img"
    figures = pack.pack(rich_rootfs, image, pack.PackOptions("fixture-root", None, 64 << 20),
                        arm_vm, log_path=tmp_path / "pack.console.log", work_dir=tmp_path,
                        how=how)
    assert figures["guest_booted"] is True
    assert "@@PACKED" in (tmp_path / "pack.console.log").read_text(errors="replace")
    check.check_raw(image)
    seen = inspect_image(image, tmp_path / "tree.tar", appliance=appliance, accel=Accel.TCG,
                         timeout=600, log_path=tmp_path / "inspect.log")
    assert (seen.label, seen.default_subvolume) == ("fixture-root", "rootfs_subvol")
    assert manifest.differences(manifest.read(rich_rootfs), manifest.read(seen.tree)) == []
