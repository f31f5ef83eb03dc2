"""`doit build:baguette` end to end through the real CLI, QEMU under TCG: outputs, no-op
reruns, why-it-ran lines, one-image builds, and failures reported without a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.baguette import check as validate
from pipeline.store.entries import problems as verify_entry
from tests.support.doit import doit, ran
from tests.support.rootfs import add_sbin_init, write_rich_rootfs
from tests.support.tools import require_vm, small_tmpfs

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]


def write_project(project: Path, source: str, accel: str = "tcg") -> None:
    (project / "dotfiles" / ".config").mkdir(parents=True, exist_ok=True)
    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -l'\n")
    (project / "dotfiles" / ".config" / "app.toml").write_text("theme = 'dark'\n")
    (project / "images.toml").write_text(f"""
[build]
accel = "{accel}"
artifacts = "{project / 'artifacts'}"
default_images = ["first"]

[images.first]
dotfiles = "dotfiles"
{source}

[images.second]
source = "tarball"
dotfiles = ""
[images.second.tarball]
path = "rootfs.tar"
""")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    require_vm()
    add_sbin_init(write_rich_rootfs(tmp_path / "rootfs.tar"))
    write_project(tmp_path, 'source = "tarball"\n[images.first.tarball]\npath = "rootfs.tar"')
    return tmp_path


def test_build_then_nothing_then_only_what_changed(project: Path) -> None:
    first = doit(project, "build:baguette")
    assert {"base:first", "rootfs:first", "pack:first", "baguette:first"} <= ran(first)
    assert "second" not in first.stdout, "only the default image builds"
    out = project / "artifacts" / "first" / "baguette_rootfs.img.zst"
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert (out.parent / "baguette_rootfs.img.zst.sha256").read_text().split()[0] == digest
    assert "vmc create --vm-type BAGUETTE --size 15G" in first.stdout
    assert oct(out.stat().st_mode & 0o777) == "0o644"

    again = doit(project, "build:baguette")
    assert ran(again) == set(), again.stdout

    # what the build recorded reaches the published manifest: accelerator, times, sizes
    doit(project, "publish")
    (manifest,) = (project / "artifacts" / "publish").glob("images/first/x86_64/*/manifest.json")
    m = json.loads(manifest.read_text())
    assert m["accel"] == "tcg" and "tcg" in m["stages"]["pack"]["accel_reason"]
    assert set(m["stages"]) == {"base", "rootfs", "pack", "baguette"}
    assert all(s["seconds"] > 0 for s in m["stages"].values())
    raw = (project / "artifacts" / "store" / "pack" / m["stages"]["pack"]["key"] / "disk.img")
    assert m["sizes"]["baguette"] == {"compressed": out.stat().st_size,
                                      "uncompressed": raw.stat().st_size,
                                      "allocated": raw.stat().st_blocks * 512}
    assert m["setuid"] == ["/usr/bin/su"] and m["setgid"] == ["/usr/bin/wall"]
    assert m["capabilities"] == {"/usr/bin/ping": "cap_net_raw+ep"}
    assert m["files"]["baguette_rootfs.img.zst"]["sha256"] == digest
    doit(project, "publish", "--verify")

    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -la'\n")
    info = doit(project, "info", "rootfs:first", check=False).stdout  # exit 1: would run
    assert "rootfs of first: not in the store (changed: dotfiles/.bashrc)" in info
    edited = doit(project, "build:baguette")
    assert ran(edited) == {"rootfs:first", "pack:first", "baguette:first"}
    assert "changed: dotfiles/.bashrc" in edited.stderr
    # the edited dotfile, in the home and in /etc/skel
    assert "Delta update of the previous image (2 new or changed, 0 removed)" in edited.stderr

    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -l'\n")
    back = doit(project, "build:baguette")
    assert ran(back) == {"baguette:first"}, "the store had every stage: only the name moves"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_one_image_by_name_and_listing(project: Path) -> None:
    listing = doit(project, "list", "--all").stdout
    for task in ("build:baguette", "verify:baguette", "baguette:first", "baguette:second",
                 "pack:second"):
        assert task in listing
    doit(project, "baguette:second")
    second = project / "artifacts" / "second" / "baguette_rootfs.img.zst"
    validate.check_compressed(second, "baguette-root", _raw_size(project))
    assert not (project / "artifacts" / "first").exists()


def _raw_size(project: Path) -> int:
    (raw,) = (project / "artifacts" / "store" / "pack").glob("*/disk.img")
    return raw.stat().st_size


def test_config_error_is_one_readable_message(project: Path) -> None:
    text = (project / "images.toml").read_text().replace('dotfiles = ""', 'dotfile = ""')
    (project / "images.toml").write_text(text)
    proc = doit(project, "build:baguette", check=False)
    assert proc.returncode != 0
    assert "images.second.dotfile: unknown key" in proc.stderr
    assert "did you mean 'dotfiles'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_corrupt_source_fails_cleanly_and_stores_nothing(project: Path) -> None:
    data = (project / "rootfs.tar").read_bytes()
    (project / "rootfs.tar").write_bytes(data[: len(data) // 3])
    proc = doit(project, "build:baguette", check=False)
    assert proc.returncode != 0
    assert "corrupt or truncated" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    store = project / "artifacts" / "store"
    assert not list(store.glob("base/*")), "a failed stage left a store entry"
    tmp = project / "artifacts" / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir()), "temporary files were left behind"
    assert not list(store.glob("base/.*.tmp")), "a half-built entry was left behind"


def test_a_rootfs_without_init_is_refused_for_every_format(tmp_path: Path) -> None:
    """Neither a Baguette VM nor a Crostini container can start a tree without /sbin/init:
    the rootfs stage refuses it, so no image of either kind is written."""
    write_project(tmp_path, 'source = "tarball"\n[images.first.tarball]\npath = "rootfs.tar"')
    write_rich_rootfs(tmp_path / "rootfs.tar")
    for task in ("build:baguette", "build:lxc"):
        proc = doit(tmp_path, task, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "no executable /sbin/init" in out, out[-3000:]
        assert "systemd-sysv" in out and "Traceback" not in out
    assert not list((tmp_path / "artifacts" / "store").glob("rootfs/[!.]*"))
    assert not (tmp_path / "artifacts" / "first" / "baguette_rootfs.img.zst").exists()


@pytest.mark.network
def test_debian_default_image_boots(tmp_path: Path) -> None:
    """The shipped configuration's image (mmdebstrap, real mirror) builds, boots with
    ChromeOS's disk layout to its own default target and passes every ChromeOS check
    (tests/conformance/ has the harness's own tests)."""
    require_vm()
    shipped = (ROOT / "images.toml").read_text()
    assert 'source = "debian"' in shipped
    (tmp_path / "images.toml").write_text(
        shipped.replace("[build]", f'[build]\nartifacts = "{tmp_path / "artifacts"}"', 1)
        .replace('dotfiles = "dotfiles"', f'dotfiles = "{ROOT / "dotfiles"}"'))
    build = doit(tmp_path, "build:baguette", check=False)
    if build.returncode != 0 and "mmdebstrap" in build.stdout + build.stderr \
            and "Temporary failure" in build.stdout + build.stderr:
        pytest.skip("the Debian mirror is unreachable from here")
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    assert "accelerator:" in build.stderr
    verify = doit(tmp_path, "verify:baguette")
    for check in ("boot", "tools-mount", "user-session", "garcon", "shell", "failed-units"):
        assert f"PASS  {check}" in verify.stderr, verify.stderr[-3000:]
    assert "FAIL" not in verify.stderr
    # the integration pieces, in the rootfs tarball that was packed (pack fidelity is
    # test_pack's subject)
    (rootfs,) = (tmp_path / "artifacts" / "store" / "rootfs").glob("*/rootfs.tar")
    with tarfile.open(rootfs) as tf:
        names = set(tf.getnames())
        group = tf.extractfile("./etc/group").read().decode()  # type: ignore[union-attr]
        hosts = tf.extractfile("./etc/hosts").read().decode()  # type: ignore[union-attr]
        sources = tf.extractfile(  # type: ignore[union-attr]
            "./etc/apt/sources.list.d/debian.sources").read().decode()
        resolv = tf.getmember("./etc/resolv.conf")
    with tarfile.open(rootfs.with_name("container.tar")) as tf:
        container = set(tf.getnames())
    assert "100.115.92.2\tarc" in hosts.splitlines()
    assert "Suites: bookworm bookworm-updates" in sources and "bookworm-security" in sources
    assert "./etc/apt/sources.list" not in names
    for vm_only in ("vshd.service", "maitred.service", "baguette-resize.service"):
        assert f"./etc/systemd/system/{vm_only}" in names
        assert f"./etc/systemd/system/{vm_only}" not in container
    assert "./etc/systemd/user/cros-garcon.service" in container
    assert "./var/lib/systemd/linger/user" in names and "./etc/skel/.bashrc" in names
    for unit in ("vshd", "maitred", "cros-port-listener", "baguette-resize"):
        assert f"./etc/systemd/system/multi-user.target.wants/{unit}.service" in names
    for unit in ("sommelier@0", "sommelier-x@0", "cros-garcon"):
        assert f"./etc/systemd/user/default.target.wants/{unit}.service" in names
    assert "./etc/udev/rules.d/10-cros-virtwl.rules" in names
    assert "./etc/profile.d/10-cros-guest-env.sh" in names
    assert "./usr/sbin/usermod" in names
    assert resolv.issym() and resolv.linkname == "../run/resolv.conf"
    assert {"kvm", "netdev", "sudo", "tss", "plugdev"} <= {
        line.split(":")[0] for line in group.splitlines()}


def test_gc_keeps_what_the_config_needs(project: Path) -> None:
    doit(project, "build:baguette")
    store = project / "artifacts" / "store"

    def entries() -> set[str]:
        return {f"{p.parent.name}/{p.name}" for p in store.glob("[!.]*/[!.]*")}

    first = entries()
    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -la'\n")
    doit(project, "build:baguette")
    both = entries()
    old = {e for e in first if e.split("/")[0] in ("rootfs", "pack", "baguette")}
    assert len(both - first) == 3 and len(old) == 3, "a dotfile edit makes 3 new entries"

    assert "removed 0" in doit(project, "gc", "--keep", "1").stderr, "all were built just now"
    assert "removed 0" in doit(project, "gc", "--keep", "2", "--min-age", "0").stderr, \
        "keep 2 keeps both"
    kept = doit(project, "gc", "--keep", "1", "--min-age", "0")
    assert "removed 3" in kept.stderr, kept.stderr
    assert entries() == both - old
    assert ran(doit(project, "build:baguette")) == set(), "gc removed something still needed"


def test_parallel_images_share_one_base(project: Path) -> None:
    """`doit -n 2` builds two images at once; their common base is built once."""
    text = (project / "images.toml").read_text()
    text = text.replace('default_images = ["first"]', 'default_images = ["first", "second"]')
    (project / "images.toml").write_text(text)
    proc = doit(project, "-n", "2", "build:baguette")
    assert proc.stderr.count("==> Base rootfs from tarball") == 1, proc.stderr
    for name in ("first", "second"):
        assert (project / "artifacts" / name / "baguette_rootfs.img.zst").is_file()


def test_two_processes_building_one_image(project: Path) -> None:
    """Two builds of the same image at once both succeed with the same output; the store
    lock makes the second wait and reuse."""
    env = dict(os.environ, IMAGES_TOML=str(project / "images.toml"))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "doit", "run", "-f", str(ROOT / "dodo.py"),
         "--db-file", str(project / f".doit-{i}.db"), "build:baguette"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    packs = sum(err.count("==> Packing the btrfs image") for _, err in outs)
    assert packs == 1, "the image was packed twice"
    assert len(list((project / "artifacts" / "store" / "baguette").iterdir())) == 1
    # identical outputs: both name the same published file, which is the store's bytes
    published = project / "artifacts" / "first" / "baguette_rootfs.img.zst"
    assert all(f"first: {published}" in out for out, _ in outs), [o for o, _ in outs]
    (entry,) = (project / "artifacts" / "store" / "baguette").iterdir()
    digest = hashlib.sha256(published.read_bytes()).hexdigest()
    assert hashlib.sha256((entry / published.name).read_bytes()).hexdigest() == digest
    assert (published.parent / f"{published.name}.sha256").read_text().split()[0] == digest
    for stage_dir in (project / "artifacts" / "store").glob("[!.]*"):
        for e in stage_dir.glob("[!.]*"):
            assert verify_entry(e) == [], e
    assert not list((project / "artifacts" / "store").glob("*/.*.tmp"))


def test_full_disk_is_one_message_and_leaves_nothing(project: Path) -> None:
    """The artifacts on a 4 MiB tmpfs: the first stage that writes much (the VM helper's
    appliance, 70 MiB) runs out of space."""
    with small_tmpfs(project / "artifacts", "4m") as artifacts:
        proc = doit(project, "build:baguette", check=False)
        assert proc.returncode != 0
        out = proc.stdout + proc.stderr
        assert "the disk is full" in out and "doit gc" in out
        assert "Traceback" not in out
        failed = re.search(r"TaskFailed - taskid:(\w+)", out)
        assert failed is not None, out
        stage = failed.group(1)  # the store folder is named after the stage
        store = artifacts / "store"
        assert not list(store.glob(f"{stage}/[!.]*")), f"{stage} ran out of space, left an entry"
        assert not list(store.glob("*/.*.tmp")), "temporary files were left behind"


def test_failed_delta_update_falls_back_to_a_full_pack(project: Path) -> None:
    """A previous image the guest cannot mount (zeroed here) makes the delta update fail;
    the build says so, packs in full, and the result is a valid image."""
    doit(project, "build:baguette")
    (previous,) = (project / "artifacts" / "store" / "pack").glob("*/disk.img")
    with open(previous, "r+b") as f:
        f.write(bytes(1 << 20))  # the superblock lives at 64 KiB
    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -la'\n")
    proc = doit(project, "build:baguette")
    assert "delta update failed, packing in full instead" in proc.stderr
    assert "==> Extracting the rootfs on the host" in proc.stderr
    new = [p for p in (project / "artifacts" / "store" / "pack").glob("*/disk.img")
           if p != previous]
    assert len(new) == 1
    validate.check_raw(new[0])


def _fill(directory: Path, leave: int) -> Path:
    """A ballast file taking all free space of `directory`'s filesystem but `leave` bytes."""
    st = os.statvfs(directory)
    ballast = directory / "ballast"
    with open(ballast, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


@pytest.mark.parametrize("stage, before", [("pack", "rootfs:first"),
                                           ("baguette", "pack:first")])
def test_full_disk_while_packing_or_compressing(project: Path, stage: str,
                                                before: str) -> None:
    """The artifacts on a tmpfs that fills up during the pack (host extraction) or the
    compression: one message, a non-zero exit, no entry, no temporary files; with space
    again the same command completes."""
    with small_tmpfs(project / "artifacts", "160m") as artifacts:
        doit(project, before, "appliance")
        ballast = _fill(artifacts, 256 << 10)
        proc = doit(project, f"{stage}:first", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert "the disk is full" in out or "No space left on device" in out, out
        assert "Traceback" not in out, out
        store = artifacts / "store"
        assert not list(store.glob(f"{stage}/[!.]*")), f"{stage} left an entry"
        assert not list(store.glob("*/.*.tmp")), "a half-built entry was left behind"
        assert not list((artifacts / "tmp").iterdir()), "temporary files were left behind"
        ballast.unlink()
        doit(project, f"{stage}:first")


def test_verify_checks_the_store_first(project: Path) -> None:
    """`doit verify` hashes the image's store entries before booting: a rootfs tarball with
    one byte changed (same size, so a reuse check would not see it) fails it, the damaged
    entry is removed, and the next build makes it again."""
    doit(project, "build:baguette")
    (rootfs,) = (project / "artifacts" / "store" / "rootfs").glob("*/rootfs.tar")
    with open(rootfs, "r+b") as f:
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = doit(project, "verify:first", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rootfs.tar does not match its sha256" in out, out
    assert "1 damaged store entries were removed: rootfs/" in out, out
    assert "conformance" not in out, "the image was booted despite a damaged store"
    assert not rootfs.exists()
    again = doit(project, "build:baguette")
    assert "rootfs:first" in ran(again)
    assert rootfs.is_file() and verify_entry(rootfs.parent) == []
