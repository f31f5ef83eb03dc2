"""The Crostini (LXC) image: metadata tarball + rootfs tarball, from the rootfs stage's tar.

Formats (what LXD accepts, `lxc image import metadata.tar.xz rootfs.tar.xz --alias NAME`):
- metadata.tar.xz (metadata.py);
- rootfs.tar.xz (sorted, numeric owners: the rootfs stage's tar recompressed) or
  rootfs.squashfs (the same tree through tar2sqfs);
- or one unified tarball: metadata.yaml + templates/ + rootfs/.
LXD's fingerprint of a split image is sha256(metadata file ‖ rootfs file), of a unified one
the file's sha256.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..core.fsutil import atomic_path
from ..core.log import warn
from ..core.run import run
from ..core.tarballs import member_path, members, open_plain, rewrite
from ..core.tartree import index
from ..rootfs.facts import os_release, require_init
from ..store.keys import StageInputs
from .metadata import (
    TEMPLATE_FILES,
    Metadata,
    Properties,
    meta_members,
    metadata,
    source_templates,
    validate,
    write_metadata_tarball,
)

VERSION = 1


@dataclass(frozen=True)
class Options:
    """How the image is written: the rootfs format, one file or two, the xz level."""

    rootfs_format: str  # "tar.xz" | "squashfs"
    unified: bool
    compression_level: int


def inputs(rootfs_key: str, opts: Options, props: Properties,
           source_date_epoch: int | None) -> StageInputs:
    """The LXC stage's key: the rootfs, and everything write_image() is given."""
    return StageInputs("lxc", VERSION, {
        "rootfs": rootfs_key,
        "rootfs_format": opts.rootfs_format,
        "unified": opts.unified,
        "level": opts.compression_level,
        "variant": props.variant,
        "release": props.release,
        "expiry_days": props.expiry_days,
        "description": props.description,
        "arch": props.architecture,
        "source_date_epoch": source_date_epoch,
    })


def _xz(src: Path, out: Path, level: int) -> None:
    with atomic_path(out) as tmp, open(src, "rb") as i, open(tmp, "wb") as o:
        run(["xz", f"-{level}", "-T0", "-c"], stdin=i, stdout=o, progress=f"xz {src.name}",
            hint="xz could not compress the rootfs; is the disk full?")


def write_rootfs_xz(rootfs: Path, out: Path, level: int) -> None:
    _xz(rootfs, out, level)


SQUASHFS_XATTR_PREFIXES = ("user.", "trusted.", "security.")


def squashfs_compatible(rootfs: Path, work: Path) -> Path:
    """`rootfs` itself, or a copy without the xattrs squashfs cannot hold (POSIX ACLs such as
    systemd's on /var/log/journal); the dropped ones are named in the log."""
    dropped: list[str] = []
    with open_plain(rootfs) as tf:
        for m in members(tf, rootfs):
            if any(k.startswith("SCHILY.xattr.") and
                   not k[13:].startswith(SQUASHFS_XATTR_PREFIXES) for k in m.pax_headers):
                dropped.append(m.name)
    if not dropped:
        return rootfs
    warn(f"squashfs cannot hold POSIX ACLs (system.* xattrs); dropped on: "
         f"{', '.join('/' + member_path(n) for n in dropped[:5])}"
         f"{' and more' if len(dropped) > 5 else ''}")
    out = work / "rootfs-for-squashfs.tar"

    def kept(m: tarfile.TarInfo) -> tarfile.TarInfo:
        m.pax_headers = {k: v for k, v in m.pax_headers.items()
                         if not k.startswith("SCHILY.xattr.")
                         or k[13:].startswith(SQUASHFS_XATTR_PREFIXES)}
        return m

    with open_plain(rootfs) as tf:
        rewrite(rootfs, out, map(kept, members(tf, rootfs)))
    return out


def write_rootfs_squashfs(rootfs: Path, out: Path, work: Path) -> None:
    source = squashfs_compatible(rootfs, work)
    try:
        with atomic_path(out) as tmp, open(source, "rb") as i:
            run(["tar2sqfs", "--quiet", "--no-skip", "--force", "--compressor", "xz",
                 "--num-jobs", str(max(1, len(os.sched_getaffinity(0)))), tmp],
                stdin=i, hint="tar2sqfs (squashfs-tools-ng) could not pack the rootfs")
    finally:
        if source != rootfs:
            source.unlink(missing_ok=True)


def write_unified(md: Metadata, files: dict[str, str], rootfs: Path, out: Path,
                  level: int, work: Path) -> None:
    """metadata.yaml + templates/ + rootfs/ in one tar.xz."""
    validate(md, files)
    plain = work / "unified.tar"

    def under_rootfs(m: tarfile.TarInfo) -> tarfile.TarInfo:
        m.name = f"rootfs/{member_path(m.name)}".rstrip("/")
        if m.islnk():
            m.linkname = f"rootfs/{member_path(m.linkname)}"
        return m

    with open_plain(rootfs) as tf:
        rewrite(rootfs, plain, map(under_rootfs, members(tf, rootfs)),
                head=meta_members(md, files))
    try:
        _xz(plain, out, level)
    finally:
        plain.unlink(missing_ok=True)


def fingerprint(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def write_image(rootfs: Path, out_dir: Path, opts: Options, props: Properties, *,
                creation_date: int, work: Path,
                source_metadata: Path | None = None) -> dict[str, str]:
    """The LXC stage: write the image files into `out_dir`; returns names and fingerprint.
    `source_metadata`: the image source's own LXD metadata tar (a NixOS configuration's),
    whose templates replace our /etc/hosts one and win over ours for the same target."""
    entries = index(rootfs)
    require_init(entries)
    md = metadata(props, os_release(rootfs, entries), creation_date)
    files = dict(TEMPLATE_FILES)
    if source_metadata is not None:
        # NixOS owns /etc/hosts (a link into the store, which a template cannot write)
        del md.templates["/etc/hosts"], files["hosts.tpl"]
        templates, extra = source_templates(source_metadata)
        md.templates.update(templates)
        files.update(extra)
    if opts.unified:
        image = out_dir / "image.tar.xz"
        write_unified(md, files, rootfs, image, opts.compression_level, work)
        return {"files": image.name, "fingerprint": fingerprint(image)}
    meta = out_dir / "metadata.tar.xz"
    write_metadata_tarball(md, files, meta, opts.compression_level)
    if opts.rootfs_format == "squashfs":
        root = out_dir / "rootfs.squashfs"
        write_rootfs_squashfs(rootfs, root, work)
    else:
        root = out_dir / "rootfs.tar.xz"
        write_rootfs_xz(rootfs, root, opts.compression_level)
    return {"files": f"{meta.name} {root.name}", "fingerprint": fingerprint(meta, root)}
