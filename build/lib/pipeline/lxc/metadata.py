"""LXD image metadata: `metadata.yaml` (architecture, creation_date, properties, templates)
and `templates/*.tpl`, as a typed structure validated before anything is written; here the
templates give each container its own /etc/hostname and /etc/hosts. A NixOS configuration's
own metadata (system.build.metadata) contributes its templates.
"""

from __future__ import annotations

import datetime
import io
import json
import lzma
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import PipelineError
from ..core.fsutil import atomic_path
from ..core.tarballs import member_path, members, open_plain
from ..rootfs import facts

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


# --- what the metadata says ---------------------------------------------------------------


@dataclass(frozen=True)
class Properties:
    """What the image says about itself (images.<name>.lxc and the image's description)."""

    description: str
    variant: str
    release: str
    expiry_days: int
    architecture: str


def metadata(opts: Properties, release_info: dict[str, str], creation_date: int) -> Metadata:
    os_name = facts.os_name(release_info)
    release = facts.release_name(opts.release, release_info)
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


def meta_members(md: Metadata, files: dict[str, str]) -> list[tuple[tarfile.TarInfo, bytes]]:
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
            for t, data in meta_members(md, files):
                tf.addfile(t, io.BytesIO(data) if t.isreg() else None)
        tmp.write_bytes(lzma.compress(buf.getvalue(), preset=level))


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


