"""Pack a rootfs through the real VM helper (QEMU under TCG), then read the image back and
compare every file's metadata with the tarball's."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.baguette import check as validate
from pipeline.baguette import pack
from pipeline.config import Accel
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Guest
from tests.support import tree as manifest
from tests.support.readback import inspect_image

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
OPTS = pack.PackOptions("fixture-root", None, 64 << 20)


def tcg(appliance: Appliance) -> Guest:
    return Guest(appliance, Accel.TCG, timeout=300, memory_mib=512)

UNPRIVILEGED_PACK = """
import json, sys
from pathlib import Path
from pipeline.baguette import pack
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Guest
from pipeline.config import Accel
a = json.loads(sys.argv[1])
guest = Guest(Appliance(Path(a["kernel"]), Path(a["initrd"]), "k"), Accel.TCG, 300, 512)
res = pack.pack(Path(a["tarball"]), Path(a["image"]),
                pack.PackOptions(a["label"], None, a["slack"]), guest,
                log_path=Path(a["log"]), work_dir=Path(a["work"]))
print(json.dumps(res))
"""


def pack_as_nobody(tarball: Path, appliance: Appliance, work: Path) -> Path:
    """Run the pack stage as uid/gid 65534 with the system Python: no root, no /dev/kvm."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user (setpriv)")
    os.chown(work, NOBODY, NOBODY)
    tarball = Path(shutil.copy(tarball, work / "rootfs.tar"))
    image = work / "disk.img"
    args = {"tarball": str(tarball), "image": str(image), "label": OPTS.label,
            "slack": OPTS.slack, "kernel": str(appliance.kernel),
            "initrd": str(appliance.initrd), "log": str(work / "console.log"),
            "work": str(work)}
    env = dict(os.environ, PYTHONPATH=f"{site.getsitepackages()[0]}:{ROOT}", HOME=str(work))
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", UNPRIVILEGED_PACK, json.dumps(args)],
        capture_output=True, text=True, env=env, cwd=work, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["image_bytes"] == image.stat().st_size
    return image


@pytest.mark.parametrize("who", ["root", "unprivileged"])
def test_pack_is_faithful(who: str, rich_rootfs: Path, appliance: Appliance) -> None:
    """Owners, modes (setuid/setgid/sticky), xattrs incl. security.capability, hardlinks,
    symlinks, a fifo, device numbers and mtimes all survive; the layout is ChromeOS's."""
    with tempfile.TemporaryDirectory(prefix="pack-test.") as d:
        work = Path(d)
        os.chmod(work, 0o755)
        if who == "root":
            image = work / "disk.img"
            pack.pack(rich_rootfs, image, OPTS, tcg(appliance), log_path=work / "console.log",
                      work_dir=work)
        else:
            if not Path("/usr/bin/python3").exists() or sys.version_info[:2] != (3, 11):
                pytest.skip("the unprivileged run uses Debian's /usr/bin/python3 (3.11)")
            image = pack_as_nobody(rich_rootfs, appliance, work)
        assert image.stat().st_blocks * 512 < image.stat().st_size, "the image is not sparse"
        validate.check_raw(image)
        seen = inspect_image(image, work / "tree.tar", appliance=appliance, accel=Accel.TCG,
                             timeout=300, log_path=work / "inspect.log")
        assert seen.label == "fixture-root"
        assert seen.default_subvolume == "rootfs_subvol"
        assert seen.subvolumes == ("rootfs_subvol",)
        expected = manifest.read(rich_rootfs)
        actual = manifest.read(seen.tree)
        assert manifest.differences(expected, actual) == []
        assert actual["/usr/bin/b"].nlink == 3
        assert actual["/dev/loop0"].rdev == (7, 0)
        assert dict(actual["/usr/bin/ping"].xattrs)["security.capability"]


def test_fixed_size_too_small_is_refused(rich_rootfs: Path, appliance: Appliance,
                                         tmp_path: Path) -> None:
    with pytest.raises(pack.PipelineError, match="content needs"):
        pack.pack(rich_rootfs, tmp_path / "disk.img", pack.PackOptions("fixture-root", 1 << 20, 0),
                  tcg(appliance), log_path=tmp_path / "c.log", work_dir=tmp_path)
