"""The VM helper's appliance: ELF checks, the PVH kernel, kernel choice, the initramfs, its key."""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import subprocess
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.store.hashing import FileHashMemo
from pipeline.vmhelper import appliance
from pipeline.vmhelper.appliance import (
    Plan,
    _has_interpreter,
    _has_pvh_note,
    _version_key,
    find_kernel,
    plan,
    pvh_kernel,
    write_initrd,
)
from tests.support.tools import tool_missing


def newest_kernel() -> Path:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=_version_key)
    if not kernels:
        tool_missing("no kernel installed in /boot (apt-get install linux-image-amd64)")
    if not os.access(kernels[-1], os.R_OK):
        pytest.skip(f"{kernels[-1]} is not readable by this user")
    return kernels[-1]


def elf64(notes: list[tuple[bytes, int, bytes]]) -> bytes:
    """A minimal little-endian ELF64 with one PT_NOTE segment holding `notes`."""
    blob = b""
    for name, ntype, desc in notes:
        n = name + b"\0"
        blob += struct.pack("<III", len(n), len(desc), ntype)
        blob += n.ljust((len(n) + 3) & ~3, b"\0") + desc.ljust((len(desc) + 3) & ~3, b"\0")
    phoff, phentsize, notes_off = 64, 56, 64 + 56
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 4, 4, notes_off, 0, 0, len(blob), len(blob), 4)
    return header + ph + blob


PVH_NOTES = [(b"GNU", 3, b"\xaa" * 20), (b"Xen", 18, b"\x00\x10\x00\x01")]


# --- ELF helpers ---------------------------------------------------------------------------


def test_has_interpreter_dynamic_vs_static(tmp_path: Path) -> None:
    assert _has_interpreter("/usr/bin/tar") is True
    assert _has_interpreter("/bin/busybox") is False  # busybox-static
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert _has_interpreter(str(script)) is False


def test_pvh_note_found_in_synthetic_elf() -> None:
    assert _has_pvh_note(elf64(PVH_NOTES)) is True
    assert _has_pvh_note(elf64([(b"GNU", 3, b"\xaa" * 20)])) is False
    assert _has_pvh_note(elf64([(b"Xen", 17, b"\0" * 4)])) is False  # another Xen note


def test_pvh_kernel_unpacks_compressed_payload() -> None:
    elf = elf64(PVH_NOTES)
    stub = b"MZ setup code " * 50  # the bzImage's real-mode part comes first
    assert pvh_kernel(stub + gzip.compress(elf)) == elf
    assert pvh_kernel(stub + lzma.compress(elf)) == elf
    assert pvh_kernel(stub + lzma.compress(elf64(PVH_NOTES[:1]))) is None  # no PVH note
    assert pvh_kernel(stub + lzma.compress(b"not an ELF at all")) is None


def test_pvh_kernel_of_garbage_is_none() -> None:
    assert pvh_kernel(b"garbage") is None
    assert pvh_kernel(b"\xfd7zXZ\x00 truncated xz") is None


def test_pvh_kernel_of_the_real_kernel() -> None:
    elf = pvh_kernel(newest_kernel().read_bytes())
    assert elf is not None
    assert elf[:4] == b"\x7fELF"
    assert _has_pvh_note(elf)


# --- choosing the kernel -------------------------------------------------------------------


def test_version_key_orders_like_sort_v() -> None:
    names = ["vmlinuz-6.1.0-10-amd64", "vmlinuz-6.1.0-9-amd64", "vmlinuz-6.10.0-1-amd64",
             "vmlinuz-6.2.0-1-amd64", "vmlinuz-5.19.0-99-amd64", "vmlinuz-6.1.0-10-cloud-amd64"]
    ours = [p.name for p in sorted(map(Path, names), key=_version_key)]
    assert ours.index("vmlinuz-6.1.0-9-amd64") < ours.index("vmlinuz-6.1.0-10-amd64")
    assert ours[-1] == "vmlinuz-6.10.0-1-amd64"
    proc = subprocess.run(["sort", "-V"], input="\n".join(names) + "\n",
                          capture_output=True, text=True, check=True)
    assert ours == proc.stdout.split()


def test_find_kernel_default_is_newest_installed() -> None:
    newest = newest_kernel()
    kernel, version = find_kernel(None)
    assert kernel == newest
    assert version == newest.name.removeprefix("vmlinuz-")
    assert Path(f"/lib/modules/{version}").is_dir()


def test_find_kernel_configured_real_kernel() -> None:
    newest = newest_kernel()
    assert find_kernel(newest) == (newest, newest.name.removeprefix("vmlinuz-"))


@pytest.mark.parametrize("name", ["bzImage", "vmlinux-6.1.0", "vmlinuz-"])
def test_find_kernel_refuses_non_vmlinuz(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"kernel?")
    with pytest.raises(PipelineError, match="not a vmlinuz-VERSION file") as err:
        find_kernel(path)
    assert str(path) in err.value.message
    assert "vmlinuz-<version>" in err.value.hint


def test_find_kernel_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not a vmlinuz-VERSION file"):
        find_kernel(tmp_path / "vmlinuz-6.1.0-1-amd64")


def test_find_kernel_needs_modules(tmp_path: Path) -> None:
    path = tmp_path / "vmlinuz-0.0.0-no-such-modules"
    path.write_bytes(b"kernel")
    with pytest.raises(PipelineError, match="no modules for kernel 0.0.0-no-such-modules") as e:
        find_kernel(path)
    assert e.value.hint


# --- the initramfs and its key -------------------------------------------------------------


@pytest.fixture(scope="module")
def real_plan() -> Plan:
    newest_kernel()
    return plan(None)


def test_initrd_lists_with_cpio(real_plan: Plan, tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.cpio"
    write_initrd(real_plan, initrd)
    with open(initrd, "rb") as f:
        proc = subprocess.run(["cpio", "-t"], stdin=f, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split()
    assert len(listed) == len(set(listed))
    for name in ("init", "bin/busybox", "bin/tar", "modules/order", "modules/boot-order",
                 "usr/sbin/btrfs", "usr/bin/xargs", "usr/bin/chown"):
        assert name in listed

    out = tmp_path / "x"
    out.mkdir()
    with open(initrd, "rb") as f:
        subprocess.run(["cpio", "-id", "--quiet"], stdin=f, cwd=out, check=True)
    order = (out / "modules" / "order").read_text().split()
    assert "btrfs.ko" in order and "virtio_blk.ko" in order and "ext4.ko" not in order
    assert len(order) == len(real_plan.modules)
    boot = (out / "modules" / "boot-order").read_text().split()
    assert "ext4.ko" in boot and not set(boot) & set(order)
    order += boot
    for name in order:
        assert f"modules/{name}" in listed
        assert (out / "modules" / name).read_bytes()[:4] == b"\x7fELF"  # decompressed
    assert (out / "init").read_bytes() == appliance.INIT_SCRIPT.read_bytes()
    assert os.access(out / "init", os.X_OK)
    assert (out / "bin" / "tar").read_bytes() == Path(real_plan.files["/bin/tar"]).read_bytes()


def test_inputs_follow_the_init_script(real_plan: Plan, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    init = tmp_path / "init"
    init.write_bytes(appliance.INIT_SCRIPT.read_bytes())
    monkeypatch.setattr(appliance, "INIT_SCRIPT", init)
    memo = FileHashMemo(tmp_path / "memo.json")
    before = appliance.inputs(real_plan, memo).key
    os.utime(init, (1, 1))
    assert appliance.inputs(real_plan, memo).key == before
    init.write_bytes(init.read_bytes() + b"# edited\n")
    assert appliance.inputs(real_plan, memo).key != before
