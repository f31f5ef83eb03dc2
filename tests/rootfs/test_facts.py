"""pipeline/rootfs/facts.py: what the published manifest says about a root tree."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from pipeline.rootfs import facts as rootfs_facts
from pipeline.rootfs.facts import decode_capability, parse_dpkg_status
from tests.support.rootfs import CAP_NET_RAW, write_rich_rootfs


def caps(revision: int, effective: bool, permitted: int, inheritable: int = 0) -> bytes:
    magic = (revision << 24 | int(effective)).to_bytes(4, "little")
    if revision == 1:
        return magic + permitted.to_bytes(4, "little") + inheritable.to_bytes(4, "little")
    words = [permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF, permitted >> 32,
             inheritable >> 32]
    raw = magic + b"".join(w.to_bytes(4, "little") for w in words)
    return raw + (bytes(4) if revision == 3 else b"")  # v3 ends with the root uid


def test_capabilities_read_as_getcap_prints_them() -> None:
    assert decode_capability(CAP_NET_RAW) == "cap_net_raw+ep"
    assert decode_capability(caps(1, False, 1 << 10)) == "cap_net_bind_service+p"
    both = 1 << 12 | 1 << 13
    assert decode_capability(caps(3, True, both)) == "cap_net_admin,cap_net_raw+ep"
    assert decode_capability(caps(2, True, 1 << 38, 1 << 38)) == "cap_perfmon+ep cap_perfmon+i"
    assert decode_capability(b"\x09\x00\x00\x07" + bytes(16)) == "09000007" + "00" * 16


def test_dpkg_status_lists_installed_packages_only() -> None:
    text = ("Package: b\nStatus: install ok installed\nVersion: 2\nArchitecture: all\n\n"
            "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
            "Package: a\nStatus: install ok installed\nVersion: 1:1.0-1\nArchitecture: amd64\n"
            "Description: x\n y\n")
    assert parse_dpkg_status(text) == [
        {"name": "a", "version": "1:1.0-1", "architecture": "amd64"},
        {"name": "b", "version": "2", "architecture": "all"}]


def test_facts_of_a_rich_rootfs(tmp_path: Path) -> None:
    facts = rootfs_facts.read(write_rich_rootfs(tmp_path / "rootfs.tar"))
    assert facts.setuid == ["/usr/bin/su"]
    assert facts.setgid == ["/usr/bin/wall"]  # /var/mail is a setgid directory, not a file
    assert facts.capabilities == {"/usr/bin/ping": "cap_net_raw+ep"}
    assert facts.packages == {"format": "none", "list": []}


def test_a_nix_closure_lists_its_store_paths(tmp_path: Path) -> None:
    path = tmp_path / "nixos.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("etc", "nix", "nix/store", "nix/store/aaa-glibc-2.39",
                     "nix/store/aaa-glibc-2.39/lib", "nix/store/bbb-bash-5.2"):
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
        ti = tarfile.TarInfo("etc/os-release")
        data = b'NAME=NixOS\nID=nixos\nVERSION_CODENAME="vicuna"\n'
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    facts = rootfs_facts.read(path)
    assert facts.packages == {"format": "nix-store-paths",
                              "list": ["/nix/store/aaa-glibc-2.39", "/nix/store/bbb-bash-5.2"]}
    assert facts.os_release == {"NAME": "NixOS", "ID": "nixos", "VERSION_CODENAME": "vicuna"}
