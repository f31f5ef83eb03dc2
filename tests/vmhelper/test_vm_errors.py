"""The VM helper's failure paths, with the real QEMU: a guest that reports an error, a guest
that hangs, KVM forced where it is unusable, and what `auto` decides on this host."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from pipeline.baguette import pack
from pipeline.config import Accel
from pipeline.core.errors import GuestError, PipelineError
from pipeline.vmhelper import qemu as vm
from pipeline.vmhelper.accel import choose, kvm_device_problem
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import boot
from tests.support.tools import small_tmpfs

OPTS = pack.PackOptions("x", None, 0)
SNAPSHOT = pack.Plan(pack.Route.SNAPSHOT, pack.Host.ROOT, "test: a guest that does something")


def tcg(appliance: Appliance) -> vm.Guest:
    return vm.Guest(appliance, Accel.TCG, timeout=300, memory_mib=256)

pytestmark = pytest.mark.vm


def _tar(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name in names:
            ti = tarfile.TarInfo(name)
            if name.endswith("/"):
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            else:
                ti.size = 3
                tf.addfile(ti, io.BytesIO(b"abc"))
    return path


def test_guest_error_names_the_console_log(appliance: Appliance, tmp_path: Path) -> None:
    """On the snapshot route a tree that already holds /rootfs_subvol makes the guest refuse;
    the message says so and names the console log, which is kept."""
    tarball = _tar(tmp_path / "r.tar", ["./", "./rootfs_subvol/", "./rootfs_subvol/x"])
    log = tmp_path / "logs" / "pack.console.log"
    with pytest.raises(GuestError) as err:
        pack.pack(tarball, tmp_path / "disk.img", OPTS, tcg(appliance), log_path=log,
                  work_dir=tmp_path, how=SNAPSHOT)
    assert "rootfs_subvol" in err.value.message
    assert str(log) in err.value.message
    assert "@@ERROR" in log.read_text()
    assert not list(tmp_path.glob("pack.*")), "the staging directory was left behind"


def _hanging_image(tmp_path: Path) -> list[vm.Disk]:
    """The disks of a guest that hangs on purpose: mode `boot` hands over to this btrfs
    image's /sbin/init, which says so and then sleeps for ever (a guest that got stuck after
    starting, not one too slow to start)."""
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "sbin").mkdir()
    for d in ("dev", "proc", "sys"):
        (tree / d).mkdir()
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
    init = tree / "sbin" / "init"
    init.write_text("#!/bin/busybox sh\necho @@HANGING > /dev/console\n"
                    "while :; do /bin/busybox sleep 1; done\n")
    init.chmod(0o755)
    image = tmp_path / "hang.img"
    with open(image, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "--rootdir", str(tree), "--shrink", str(image)],
                   check=True)
    blank = tmp_path / "tools.img"
    with open(blank, "wb") as f:
        f.truncate(1 << 20)
    return [vm.Disk(blank, "tools", readonly=True), vm.Disk(image, "rootfs")]


def test_hung_guest_is_killed(appliance: Appliance, tmp_path: Path) -> None:
    """A guest still running at the timeout is killed; the error names the kept log. The
    timeout leaves a loaded machine ample time to start the guest, so the verdict is always
    "did not finish" (it hung), never "did not start"."""
    disks = _hanging_image(tmp_path)
    log = tmp_path / "hang.console.log"
    with pytest.raises(GuestError, match="did not finish within 45 s") as err:
        boot(appliance, Accel.TCG, disks, "root=/dev/vdb rw appliance.mode=boot",
             log_path=log, timeout=45, memory_mib=256, what="boot", expect="NEVER")
    assert err.value.console_log == str(log)
    text = log.read_text()
    assert "@@BOOTED" in text and "@@HANGING" in text, text[-2000:]


def test_guest_that_never_starts_is_retried_once(appliance: Appliance, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A boot that stalls before /init runs is killed at the deadline and started again;
    a second stall is an error saying the guest did not start."""
    monkeypatch.setattr(vm, "BOOT_DEADLINE", 0.3)  # shorter than any real boot
    with pytest.raises(GuestError, match="did not start within 0.3 s"):
        boot(appliance, Accel.TCG, [], "appliance.mode=probe", log_path=tmp_path / "l",
             timeout=60, memory_mib=256, expect="READY")
    assert "starting it again" in capsys.readouterr().err


def test_guest_that_stops_without_result(appliance: Appliance, tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="unknown appliance.mode"):
        boot(appliance, Accel.TCG, [], "appliance.mode=nonsense", log_path=tmp_path / "l",
             timeout=120, memory_mib=256, expect="PACKED")


def test_kvm_forced_but_missing(appliance: Appliance, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match='build.accel = "kvm" but KVM is unusable') as err:
        choose(Accel.KVM, appliance, tmp_path, kvm_device=tmp_path / "no-kvm")
    assert "does not exist" in err.value.message
    assert "tcg" in err.value.hint


def test_tcg_forced_never_probes(appliance: Appliance, tmp_path: Path) -> None:
    assert choose(Accel.TCG, appliance, tmp_path).accel is Accel.TCG
    assert not (tmp_path / "kvm-verdict.json").exists()


def test_auto_on_this_host(appliance: Appliance, tmp_path: Path) -> None:
    """`auto` picks KVM only if a real KVM boot works here, says why, and remembers it."""
    first = choose(Accel.AUTO, appliance, tmp_path)
    problem = kvm_device_problem()
    if problem is not None:
        assert first.accel is Accel.TCG and problem in first.reason
        return
    second = choose(Accel.AUTO, appliance, tmp_path)
    assert second.accel is first.accel
    assert "probed" in first.reason and "remembered" in second.reason
    if first.accel is Accel.TCG:
        assert "present but broken" in first.reason
        with pytest.raises(PipelineError, match="KVM is unusable"):
            choose(Accel.KVM, appliance, tmp_path)


def test_corrupt_tarball_is_refused_before_the_vm(appliance: Appliance, tmp_path: Path) -> None:
    good = _tar(tmp_path / "good.tar", ["./", "./a", "./b"]).read_bytes()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(good[:700])  # cut inside the second member
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        pack.pack(bad, tmp_path / "disk.img", OPTS, tcg(appliance), log_path=tmp_path / "c.log",
                  work_dir=tmp_path)
    assert not (tmp_path / "c.log").exists(), "the VM should not have started"


def test_guest_kernel_panic_is_reported_and_cleaned_up(appliance: Appliance, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest whose kernel panics (here: its init cannot be run) is a GuestError that says
    so and names the kept console log; the pack's staging directory is removed."""
    real_boot = vm.boot

    def panicking(*args: object, **kwargs: object) -> vm.GuestResult:
        app, accel, disks, cmdline = args
        return real_boot(app, accel, disks, f"{cmdline} rdinit=/nonexistent",  # type: ignore[arg-type]
                         **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vm, "boot", panicking)
    tarball = _tar(tmp_path / "r.tar", ["./", "./a"])
    log = tmp_path / "logs" / "pack.console.log"
    with pytest.raises(GuestError) as err:
        pack.pack(tarball, tmp_path / "disk.img", OPTS, tcg(appliance), log_path=log,
                  work_dir=tmp_path, how=SNAPSHOT)
    assert "(kernel panic)" in err.value.message and str(log) in err.value.message
    assert err.value.console_log == str(log)
    assert "Kernel panic" in log.read_text()
    assert not list(tmp_path.glob("pack.*")), "the staging directory was left behind"


def test_host_disk_full_under_the_guest_is_an_error_not_a_pause(
        appliance: Appliance, tmp_path: Path) -> None:
    """The packed image on a tmpfs with room for what mkfs.btrfs wrote but not for the
    guest's changes: QEMU reports the failed writes to the guest (werror=report) instead of
    pausing it until the timeout, and the guest's error ends the run."""
    tarball = _tar(tmp_path / "r.tar", ["./", "./d/", *[f"./d/f{i}" for i in range(2000)]])
    tree = tmp_path / "tree"
    tree.mkdir()
    staged = pack.extract(tarball, tree)
    built = tmp_path / "disk.img"
    pack.mkfs(tree, built, "x")
    os.truncate(built, 1 << 30)
    job = tmp_path / "job.tar"
    pack.write_job(staged, "x", job)
    with small_tmpfs(tmp_path / "small", "64m") as small:
        image = small / "disk.img"
        subprocess.run(["cp", "--sparse=always", str(built), str(image)], check=True)
        used_kib = image.stat().st_blocks // 2  # then no room for one more block
        subprocess.run(["mount", "-o", f"remount,size={used_kib}k", str(small)], check=True)
        log = tmp_path / "pack.console.log"
        start = time.monotonic()
        with pytest.raises(GuestError) as err:
            boot(appliance, Accel.TCG, [vm.Disk(image, "image"),
                                        vm.Disk(job, "job", readonly=True)],
                 "appliance.mode=pack", log_path=log, timeout=600, memory_mib=256,
                 what="pack", expect="PACKED")
        took = time.monotonic() - start
        assert "did not finish" not in err.value.message, "the guest was paused, not told"
        print(f"\nfull disk under the guest: failed after {took:.1f} s: {err.value.message}")


def test_the_kvm_verdict_is_kept_per_user_not_per_artifacts_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verdict lives in $XDG_CACHE_HOME/cros-guest-pipeline (~/.cache when unset): a
    build from a second artifacts directory does not probe again."""
    from pipeline import config, stages
    from pipeline.vmhelper import accel

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert accel.verdict_dir() == tmp_path / "home" / ".cache" / "cros-guest-pipeline"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert accel.verdict_dir() == tmp_path / "xdg" / "cros-guest-pipeline"

    probes: list[Path] = []

    def probe(_appliance: object, log: Path) -> str:
        probes.append(log)
        return "emulation failure"

    monkeypatch.setattr(accel, "probe_kvm", probe)
    monkeypatch.setattr(accel, "kvm_device_problem", lambda *_: None)  # "/dev/kvm opens"
    monkeypatch.setattr(accel, "_host_id", lambda qemu: "this host")
    monkeypatch.setattr(stages, "appliance", lambda run: Appliance(Path("k"), Path("i"), "x"))
    (tmp_path / "r.tar").write_bytes(b"")
    reasons = []
    for name in ("a", "b"):
        toml = tmp_path / f"{name}.toml"
        toml.write_text(f'[build]\nartifacts = "{tmp_path / name}"\n'
                        '[images.x]\nsource = "tarball"\ndotfiles = ""\n'
                        f'[images.x.tarball]\npath = "{tmp_path / "r.tar"}"\n')
        vm_ = stages.guest(stages.open_run(config.load(toml), None))
        assert vm_.accel is Accel.TCG
        reasons.append(vm_.accel_reason)
    assert len(probes) == 1, "the second artifacts directory probed again"
    assert "probed" in reasons[0] and "remembered" in reasons[1]
    assert (tmp_path / "xdg" / "cros-guest-pipeline" / "kvm-verdict.json").is_file()
    assert not (tmp_path / "a" / ".cache" / "kvm-verdict.json").exists()
