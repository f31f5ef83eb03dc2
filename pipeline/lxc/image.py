"""The Crostini (LXC) image: metadata tarball + rootfs tarball, from the rootfs stage's tar.

Formats (what LXD accepts, `lxc image import metadata.tar.xz rootfs.tar.xz --alias NAME`):
- metadata.tar.xz: `metadata.yaml` at the root (architecture, creation_date, properties,
  templates) and `templates/*.tpl`; here the templates give each container its own
  /etc/hostname and /etc/hosts;
- rootfs.tar.xz (sorted, numeric owners: the rootfs stage's tar recompressed) or
  rootfs.squashfs (the same tree through tar2sqfs);
- or one unified tarball: metadata.yaml + templates/ + rootfs/.
LXD's fingerprint of a split image is sha256(metadata file ‖ rootfs file), of a unified one
the file's sha256. The metadata is a typed structure, validated before anything is written.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import lzma
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..core.errors import PipelineError
from ..core.fsutil import atomic_path
from ..core.log import warn
from ..core.run import run
from ..core.tarballs import member_path, members, open_plain, rewrite

VERSION = 1
ARCHITECTURES = ("x86_64", "aarch64")
WHEN = ("create", "copy", "start", "rename")

HOSTNAME_TPL = "{{ container.name }}\n"
HOSTS_TPL = ("127.0.0.1\tlocalhost\n127.0.1.1\t{{ container.name }}\n"
             "::1\tlocalhost ip6-localhost ip6-loopback\n"
             "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")


@dataclass(frozen=True)
class Template:
    template: str  # file name under templates/
    when: tuple[str, ...] = ("create", "copy")
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Metadata:
    architecture: str
    creation_date: int
    properties: dict[str, str]
    templates: dict[str, Template]  # target path in the container -> template
    expiry_date: int | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "architecture": self.architecture,
            "creation_date": self.creation_date,
        }
        if self.expiry_date is not None:
            out["expiry_date"] = self.expiry_date
        out["properties"] = dict(sorted(self.properties.items()))
        out["templates"] = {
            path: {"when": list(t.when), "template": t.template,
                   "properties": dict(sorted(t.properties.items()))}
            for path, t in sorted(self.templates.items())
        }
        return out

    def to_yaml(self) -> str:
        return "\n".join(_yaml(self.as_dict())) + "\n"


def _yaml(value: object, indent: int = 0) -> list[str]:
    """Block YAML for dicts; scalars and lists of scalars in JSON form (valid YAML)."""
    pad = "  " * indent
    assert isinstance(value, dict)
    lines = []
    for key, v in value.items():
        k = json.dumps(str(key))
        if isinstance(v, dict) and v:
            lines.append(f"{pad}{k}:")
            lines.extend(_yaml(v, indent + 1))
        else:
            lines.append(f"{pad}{k}: {json.dumps(v)}")
    return lines


def validate(md: Metadata, template_files: dict[str, str]) -> None:
    """Refuse what LXD would refuse, with our own message first."""
    def bad(what: str, hint: str) -> PipelineError:
        return PipelineError(f"LXC metadata: {what}", hint=hint)

    if md.architecture not in ARCHITECTURES:
        raise bad(f"architecture {md.architecture!r} is not one LXD knows",
                  f"use one of {', '.join(ARCHITECTURES)} (images.<name>.arch)")
    if not isinstance(md.creation_date, int) or md.creation_date <= 0:
        raise bad(f"creation_date {md.creation_date!r} is missing or not a unix time",
                  "set SOURCE_DATE_EPOCH to a unix time, or leave it unset")
    if md.expiry_date is not None and md.expiry_date <= md.creation_date:
        raise bad("expiry_date is not after creation_date",
                  "raise images.<name>.lxc.expiry_days")
    for path, t in md.templates.items():
        if not path.startswith("/"):
            raise bad(f"template target {path!r} is not an absolute path",
                      "templates are keyed by the file they write in the container")
        if t.template not in template_files:
            raise bad(f"template {t.template!r} for {path} is not in templates/",
                      "every template named in metadata.yaml needs its .tpl file")
        unknown = [w for w in t.when if w not in WHEN]
        if unknown or not t.when:
            raise bad(f"template {t.template!r} has bad 'when' {list(t.when)}",
                      f"use some of {', '.join(WHEN)}")


# --- reading the rootfs tarball -----------------------------------------------------------


def _entries(rootfs: Path) -> dict[str, tarfile.TarInfo]:
    out: dict[str, tarfile.TarInfo] = {}
    with open_plain(rootfs) as tf:
        for m in members(tf, rootfs):
            out[member_path(m.name)] = m
    return out


def resolve(entries: dict[str, tarfile.TarInfo], path: str) -> tarfile.TarInfo | None:
    """The entry `path` names inside the rootfs, following its symlinks (as the container
    would see them); None if it does not exist."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = "/".join([*done, part])
        m = entries.get(here)
        if m is None:
            return None
        if m.issym():
            hops += 1
            if hops > 40:
                return None
            target = PurePosixPath(m.linkname)
            if target.is_absolute():
                done = []
            parts = [p for p in target.parts if p != "/"] + parts
            continue
        done.append(part)
    return entries.get("/".join(done)) if done else None


def _read(rootfs_fd: int, m: tarfile.TarInfo) -> str:
    return os.pread(rootfs_fd, m.size, m.offset_data).decode(errors="replace")


def os_release(rootfs: Path, entries: dict[str, tarfile.TarInfo]) -> dict[str, str]:
    for path in ("etc/os-release", "usr/lib/os-release"):
        m = resolve(entries, path)
        if m is not None and m.isreg():
            fd = os.open(rootfs, os.O_RDONLY)
            try:
                text = _read(fd, m)
            finally:
                os.close(fd)
            out = {}
            for line in text.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    out[key.strip()] = value.strip().strip('"')
            return out
    return {}


def require_init(entries: dict[str, tarfile.TarInfo]) -> None:
    m = resolve(entries, "sbin/init")
    if m is None or not m.isreg() or not m.mode & 0o111:
        raise PipelineError(
            "the rootfs has no executable /sbin/init: LXD could not start a container from it",
            hint="add an init to the image (for Debian: the systemd-sysv package)")


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rootfs_format: str  # "tar.xz" | "squashfs"
    unified: bool
    compression_level: int
    description: str
    variant: str
    release: str
    expiry_days: int
    architecture: str


def metadata(opts: Options, release_info: dict[str, str], creation_date: int) -> Metadata:
    os_name = release_info.get("NAME") or release_info.get("ID") or "Linux"
    release = opts.release or release_info.get("VERSION_CODENAME") \
        or release_info.get("VERSION_ID") or "current"
    serial = datetime.datetime.fromtimestamp(creation_date, datetime.UTC).strftime("%Y%m%d_%H%M")
    return Metadata(
        architecture=opts.architecture,
        creation_date=creation_date,
        expiry_date=creation_date + opts.expiry_days * 86400 if opts.expiry_days else None,
        properties={
            "description": opts.description or f"{os_name} {release} ({opts.variant})",
            "os": os_name,
            "release": release,
            "variant": opts.variant,
            "serial": serial,
            "architecture": opts.architecture,
        },
        templates={
            "/etc/hostname": Template("hostname.tpl"),
            "/etc/hosts": Template("hosts.tpl"),
        },
    )


TEMPLATE_FILES = {"hostname.tpl": HOSTNAME_TPL, "hosts.tpl": HOSTS_TPL}


def _meta_members(md: Metadata, files: dict[str, str]) -> list[tuple[tarfile.TarInfo, bytes]]:
    def ti(name: str, kind: bytes, mode: int, data: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
        t = tarfile.TarInfo(name)
        t.type, t.mode, t.mtime, t.size = kind, mode, md.creation_date, len(data)
        return t, data

    out = [ti("metadata.yaml", tarfile.REGTYPE, 0o644, md.to_yaml().encode()),
           ti("templates", tarfile.DIRTYPE, 0o755)]
    for name, text in sorted(files.items()):
        out.append(ti(f"templates/{name}", tarfile.REGTYPE, 0o644, text.encode()))
    return out


def write_metadata_tarball(md: Metadata, files: dict[str, str], out: Path, level: int) -> None:
    validate(md, files)
    with atomic_path(out) as tmp:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for t, data in _meta_members(md, files):
                tf.addfile(t, io.BytesIO(data) if t.isreg() else None)
        tmp.write_bytes(lzma.compress(buf.getvalue(), preset=level))


def _xz(src: Path, out: Path, level: int) -> None:
    with atomic_path(out) as tmp, open(src, "rb") as i, open(tmp, "wb") as o:
        run(["xz", f"-{level}", "-T0", "-c"], stdin=i, stdout=o,
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
                head=_meta_members(md, files))
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


def source_templates(metadata_tar: Path) -> tuple[dict[str, Template], dict[str, str]]:
    """Templates of a NixOS configuration's own LXD metadata (system.build.metadata):
    metadata.yaml (NixOS writes it as JSON, which is YAML) and its templates/ files."""
    yaml_text, files = "", {}
    with open_plain(metadata_tar) as tf:
        for m in members(tf, metadata_tar):
            name = member_path(m.name)
            if not m.isreg():
                continue
            f = tf.extractfile(m)
            assert f is not None
            text = f.read().decode(errors="replace")
            if name == "metadata.yaml":
                yaml_text = text
            elif name.startswith("templates/") and name.count("/") == 1:
                files[name.split("/", 1)[1]] = text
    try:
        doc = json.loads(yaml_text) if yaml_text else {}
    except json.JSONDecodeError:
        raise PipelineError(f"{metadata_tar}: metadata.yaml is not in the JSON form NixOS "
                            "writes", hint="build system.build.metadata with NixOS's "
                            "lxc-image-metadata module") from None
    templates = {}
    for target, t in (doc.get("templates") or {}).items():
        templates[target] = Template(str(t.get("template", "")), tuple(t.get("when") or ()),
                                     {k: str(v) for k, v in (t.get("properties") or {}).items()})
    return templates, files


def build(rootfs: Path, out_dir: Path, opts: Options, *, creation_date: int,
          work: Path, source_metadata: Path | None = None) -> dict[str, str]:
    """The LXC stage: write the image files into `out_dir`; returns names and fingerprint.
    `source_metadata`: the image source's own LXD metadata tar (a NixOS configuration's),
    whose templates replace our /etc/hosts one and win over ours for the same target."""
    entries = _entries(rootfs)
    require_init(entries)
    md = metadata(opts, os_release(rootfs, entries), creation_date)
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
