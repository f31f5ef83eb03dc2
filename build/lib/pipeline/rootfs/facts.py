"""What a published image's manifest says about its root tree, read from the rootfs tarball
in one pass over its headers: os-release, the installed packages (dpkg's status database for
Debian; the top-level /nix/store paths for a NixOS closure), setuid and setgid files, and file
capabilities (the `security.capability` xattr, decoded to `cap_net_raw+ep` form)."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import PipelineError
from ..core.tarballs import member_path, members, open_plain
from ..core.tartree import read_text, resolve

# linux/capability.h, by bit number
CAPS = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)
CAP_XATTR = "SCHILY.xattr.security.capability"


def decode_capability(raw: bytes) -> str:
    """`security.capability` (VFS caps revision 1-3) as getcap prints it (`cap_net_raw+ep`);
    hex if it is not a format known here."""
    if len(raw) < 12:
        return raw.hex()
    magic = int.from_bytes(raw[0:4], "little")
    revision, effective = magic & 0xFF000000, magic & 1
    words = [int.from_bytes(raw[i:i + 4], "little") for i in range(4, len(raw) - len(raw) % 4, 4)]
    if revision == 0x01000000:
        permitted, inheritable = words[0], words[1]
    elif revision in (0x02000000, 0x03000000) and len(words) >= 4:
        permitted = words[0] | words[2] << 32
        inheritable = words[1] | words[3] << 32
    else:
        return raw.hex()

    def names(bits: int) -> str:
        return ",".join(f"cap_{CAPS[b]}" if b < len(CAPS) else f"cap_{b}"
                        for b in range(64) if bits >> b & 1)

    parts = []
    if permitted:
        parts.append(f"{names(permitted)}+{'e' if effective else ''}p")
    if inheritable:
        parts.append(f"{names(inheritable)}+i")
    return " ".join(parts) or raw.hex()


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """Installed packages from var/lib/dpkg/status: name, version, architecture; sorted."""
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            out.append({"name": fields["Package"], "version": fields.get("Version", ""),
                        "architecture": fields.get("Architecture", "")})
    return sorted(out, key=lambda p: (p["name"], p["architecture"]))


def parse_os_release(text: str) -> dict[str, str]:
    """os-release's KEY=value lines (quotes removed)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def os_release(rootfs: Path, entries: dict[str, tarfile.TarInfo]) -> dict[str, str]:
    """The tree's os-release (/etc/os-release, else /usr/lib/os-release); {} if none."""
    for path in ("etc/os-release", "usr/lib/os-release"):
        text = read_text(rootfs, entries, path)
        if text is not None:
            return parse_os_release(text)
    return {}


def os_name(release: dict[str, str]) -> str:
    return release.get("NAME") or release.get("ID") or "Linux"


def release_name(configured: str, release: dict[str, str]) -> str:
    """The image's release as LXD and the published index show it: the configured one, else
    the codename, else the version from os-release."""
    return configured or release.get("VERSION_CODENAME") or release.get("VERSION_ID") \
        or "current"


def require_init(entries: dict[str, tarfile.TarInfo]) -> None:
    """Refuse a tree without an executable /sbin/init: no guest could boot it."""
    m = resolve(entries, "sbin/init")
    if m is None or not m.isreg() or not m.mode & 0o111:
        raise PipelineError(
            "the rootfs has no executable /sbin/init: neither a Baguette VM nor a Crostini "
            "container could start it",
            hint="add an init to the image (for Debian: the systemd-sysv package)")


@dataclass
class RootfsFacts:
    os_release: dict[str, str] = field(default_factory=dict)
    packages: dict[str, Any] = field(default_factory=dict)  # {"format": ..., "list": [...]}
    setuid: list[str] = field(default_factory=list)
    setgid: list[str] = field(default_factory=list)
    capabilities: dict[str, str] = field(default_factory=dict)


def read(rootfs: Path) -> RootfsFacts:
    """The facts of the plain rootfs tarball `rootfs` (the rootfs stage's output)."""
    facts = RootfsFacts()
    entries: dict[str, tarfile.TarInfo] = {}
    nix_paths: list[str] = []
    with open_plain(rootfs) as tf:
        for m in members(tf, rootfs):
            path = member_path(m.name)
            entries[path] = m
            if m.isreg() or m.islnk():
                if m.mode & 0o4000:
                    facts.setuid.append("/" + path)
                if m.mode & 0o2000:
                    facts.setgid.append("/" + path)
            cap = m.pax_headers.get(CAP_XATTR)
            if cap is not None:
                facts.capabilities["/" + path] = decode_capability(
                    cap.encode("utf-8", "surrogateescape"))
            parts = path.split("/")
            if len(parts) == 3 and parts[:2] == ["nix", "store"]:
                nix_paths.append("/" + path)
    facts.os_release = os_release(rootfs, entries)
    status = read_text(rootfs, entries, "var/lib/dpkg/status")
    if status is not None:
        facts.packages = {"format": "dpkg", "list": parse_dpkg_status(status)}
    elif nix_paths:
        facts.packages = {"format": "nix-store-paths", "list": sorted(nix_paths)}
    else:
        facts.packages = {"format": "none", "list": []}
    return facts
