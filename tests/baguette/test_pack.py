"""Pack a rootfs on each route (the subvolume mkfs.btrfs makes, or the guest's snapshot) and
as each kind of user (root; a normal user with subordinate ids; nobody, who has none), then
read the image back through the VM helper and compare every file's metadata with the
tarball's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from pipeline.baguette import check as validate
from pipeline.baguette import pack
from pipeline.config import Accel
from pipeline.core.log import info
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Guest
from tests.support import tree as manifest
from tests.support import users
from tests.support.readback import inspect_image
from tests.support.rootfs import write_many_names_rootfs
from tests.support.tools import tool_missing

pytestmark = pytest.mark.vm
OPTS = pack.PackOptions("fixture-root", None, 64 << 20)
FSID = "0b5e55ed-0000-4000-8000-000000000001"  # as the pipeline passes one: pinning runs too
CLOCK = 1_700_000_000


def tcg(appliance: Appliance) -> Guest:
    return Guest(appliance, Accel.TCG, timeout=600, memory_mib=512)


def as_user(who: str) -> users.User:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user (setpriv)")
    if who == "nobody":
        return users.nobody()
    found = users.builder()
    if found is None:
        tool_missing("no normal user with subordinate ids (useradd -m builder adds one; or "
                     "set PIPELINE_TEST_USER)")
    assert found is not None
    return found


def packed(tarball: Path, appliance: Appliance, work: Path, who: str, route: pack.Route,
           opts: pack.PackOptions = OPTS) -> tuple[Path, dict[str, object]]:
    image = work / "disk.img"
    if who == "root":
        how = pack.Plan(route, pack.Host.ROOT, "test")
        figures = pack.pack(tarball, image, opts, tcg(appliance), log_path=work / "console.log",
                            work_dir=work, how=how, fsid=FSID, clock=CLOCK)
        return image, figures
    user = as_user(who)
    os.chown(work, user.uid, user.gid)
    figures, _ = users.pack_as(user, tarball, work, kernel=appliance.kernel,
                               initrd=appliance.initrd, label=opts.label, slack=opts.slack,
                               route=route.value, size=opts.size, fsid=FSID, clock=CLOCK)
    assert figures["image_bytes"] == image.stat().st_size
    return image, figures


def read_back(image: Path, appliance: Appliance, work: Path) -> dict[str, manifest.Meta]:
    validate.check_raw(image)
    seen = inspect_image(image, work / "tree.tar", appliance=appliance, accel=Accel.TCG,
                         timeout=600, log_path=work / "inspect.log")
    assert seen.label == "fixture-root"
    assert seen.default_subvolume == "rootfs_subvol"
    assert seen.subvolumes == ("rootfs_subvol",)
    return manifest.read(seen.tree)


# who -> (does the guest boot on the subvolume route, host side as reported)
WHO = {"root": (False, "root"), "builder": (False, "user namespace"), "nobody": (True, "user")}


@pytest.mark.parametrize("route", list(pack.Route), ids=[r.value for r in pack.Route])
@pytest.mark.parametrize("who", list(WHO))
def test_pack_is_faithful(who: str, route: pack.Route, rich_rootfs: Path,
                          appliance: Appliance) -> None:
    """Owners, modes (setuid/setgid/sticky), xattrs incl. security.capability, hardlinks,
    symlinks, a fifo, device numbers and mtimes all survive; the layout is ChromeOS's. On the
    subvolume route root and a user with subordinate ids need no guest at all."""
    with tempfile.TemporaryDirectory(prefix="pack-test.") as d:
        work = Path(d)
        os.chmod(work, 0o755)
        image, figures = packed(rich_rootfs, appliance, work, who, route)
        boots, host = WHO[who]
        assert figures["host"] == host and figures["route"] == route.value
        assert figures["guest_booted"] is (boots or route is pack.Route.SNAPSHOT)
        assert image.stat().st_blocks * 512 < image.stat().st_size, "the image is not sparse"
        assert image.stat().st_size == pack.plan_size(int(figures["content_bytes"]),  # type: ignore[call-overload]
                                                      None, OPTS.slack)
        actual = read_back(image, appliance, work)
        assert manifest.differences(manifest.read(rich_rootfs), actual) == []
        assert actual["/usr/bin/b"].nlink == 3
        assert actual["/dev/loop0"].rdev == (7, 0)
        assert dict(actual["/usr/bin/ping"].xattrs)["security.capability"]


def test_large_owner_and_mode_lists_arrive_intact(tmp_path: Path, appliance: Appliance) -> None:
    """60k paths, with spaces, newlines, a leading '-', backslashes and non-UTF-8 bytes in
    their names, all to be chowned and chmodded by the guest (the host extracts as a user
    without subordinate ids): every one gets its owner and mode."""
    tarball = write_many_names_rootfs(tmp_path / "many.tar", 60_000)
    work = tmp_path / "work"
    work.mkdir()
    image = work / "disk.img"
    how = pack.Plan(pack.Route.SUBVOLUME, pack.Host.USER, "test: the guest applies owners")
    figures = pack.pack(tarball, image, OPTS, tcg(appliance), log_path=work / "console.log",
                        work_dir=work, how=how)
    assert figures["guest_booted"] is True
    expected = manifest.read(tarball)
    actual = read_back(image, appliance, work)
    info(f"{len(actual)} paths read back")
    assert len(actual) == len(expected) > 60_000
    assert manifest.differences(expected, actual) == []


def test_fixed_size_too_small_is_refused(rich_rootfs: Path, appliance: Appliance,
                                         tmp_path: Path) -> None:
    with pytest.raises(pack.PipelineError, match="content needs"):
        pack.pack(rich_rootfs, tmp_path / "disk.img", pack.PackOptions("fixture-root", 1 << 20, 0),
                  tcg(appliance), log_path=tmp_path / "c.log", work_dir=tmp_path)
    assert not list(tmp_path.glob("pack.*")), "the staging directory was left behind"
