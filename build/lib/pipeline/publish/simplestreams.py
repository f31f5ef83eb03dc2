"""The simplestreams index LXD reads from an image server: typed, written and read back.

What LXD (5.0) reads, and so what is written here:
- `streams/v1/index.json`: `{"format": "index:1.0", "index": {"images": {"datatype":
  "image-downloads", "path": "streams/v1/images.json", "format": "products:1.0",
  "products": [...]}}}`; LXD reads only entries of datatype `image-downloads` with products.
- `streams/v1/images.json`: `{"format": "products:1.0", "content_id": "images", "datatype":
  "image-downloads", "products": {NAME: product}}`. A product (`<image>:<release>:<arch>:
  <variant>`) has `aliases` (comma-separated; LXD adds `<alias>/<arch>` to each), `arch` (LXD
  architecture names such as `amd64`, `arm64`), `os`, `release`, `release_title`, `variant`
  and `versions`.
- A version's name starts with its date, `YYYYMMDD_HHMM`: LXD parses the first eight
  characters as the image's date and skips a version whose name does not start with one.
- A version's `items` hold files by `ftype`: `lxd.tar.xz` (the metadata tarball) with
  `root.tar.xz` or `squashfs` (the rootfs), or `lxd_combined.tar.gz` (a unified tarball,
  whatever its compression). Each item has `path` (relative to the server's root), `sha256`
  and `size`; LXD checks every downloaded file against its `sha256`. The metadata item also
  carries the image's fingerprint, which LXD uses to name the image: `combined_rootxz_sha256`
  (and the older `combined_sha256`) for a `root.tar.xz`, `combined_squashfs_sha256` for a
  `squashfs`; both are sha256(metadata file ‖ rootfs file). A unified image's fingerprint is
  its own `sha256`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import PipelineError

INDEX_PATH = "streams/v1/index.json"
IMAGES_PATH = "streams/v1/images.json"
VERSION_RE = re.compile(r"^\d{8}_\d{4}$")
LXD_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}

META = "lxd.tar.xz"
ROOT_XZ = "root.tar.xz"
SQUASHFS = "squashfs"
COMBINED = "lxd_combined.tar.gz"
FTYPES = (META, ROOT_XZ, SQUASHFS, COMBINED)
COMBINED_KEYS = {ROOT_XZ: ("combined_rootxz_sha256", "combined_sha256"),
                 SQUASHFS: ("combined_squashfs_sha256",)}


@dataclass(frozen=True)
class Item:
    ftype: str
    path: str
    sha256: str
    size: int
    combined: dict[str, str] = field(default_factory=dict)  # combined_*_sha256 -> digest

    def as_dict(self) -> dict[str, Any]:
        return {"ftype": self.ftype, "path": self.path, "sha256": self.sha256,
                "size": self.size, **dict(sorted(self.combined.items()))}


@dataclass(frozen=True)
class Version:
    name: str  # YYYYMMDD_HHMM
    items: dict[str, Item]  # item name -> item

    def fingerprint(self) -> str:
        """The fingerprint LXD gives the image this version describes."""
        meta = self.items.get(META)
        if meta is None:
            combined = next((i for i in self.items.values() if i.ftype == COMBINED), None)
            return combined.sha256 if combined else ""
        for item in self.items.values():
            for key in COMBINED_KEYS.get(item.ftype, ()):
                return meta.combined.get(key, "")
        return ""


@dataclass(frozen=True)
class Product:
    name: str
    aliases: tuple[str, ...]
    arch: str  # LXD's name: amd64, arm64
    os: str
    release: str
    release_title: str
    variant: str
    versions: dict[str, Version]

    def as_dict(self) -> dict[str, Any]:
        return {
            "aliases": ",".join(self.aliases), "arch": self.arch, "os": self.os,
            "release": self.release, "release_title": self.release_title,
            "variant": self.variant,
            "versions": {name: {"items": {k: i.as_dict() for k, i in sorted(v.items.items())}}
                         for name, v in sorted(self.versions.items())},
        }


def product_name(image: str, release: str, arch: str, variant: str) -> str:
    return f"{image}:{release}:{arch}:{variant}"


def lxc_items(version_dir: str, files: dict[str, tuple[str, int]],
              fingerprint: str) -> dict[str, Item]:
    """The items of one version from its LXC files ({name: (sha256, size)}) under
    `version_dir` (a path relative to the server's root)."""
    def item(ftype: str, name: str, combined: dict[str, str] | None = None) -> Item:
        digest, size = files[name]
        return Item(ftype, f"{version_dir}/{name}", digest, size, combined or {})

    if "image.tar.xz" in files:
        return {COMBINED: item(COMBINED, "image.tar.xz")}
    if "rootfs.squashfs" in files:
        root_ftype, root_name = SQUASHFS, "rootfs.squashfs"
    else:
        root_ftype, root_name = ROOT_XZ, "rootfs.tar.xz"
    combined = dict.fromkeys(COMBINED_KEYS[root_ftype], fingerprint)
    return {META: item(META, "metadata.tar.xz", combined),
            root_ftype: item(root_ftype, root_name)}


def images_json(products: list[Product]) -> dict[str, Any]:
    return {"content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
            "products": {p.name: p.as_dict() for p in sorted(products, key=lambda p: p.name)}}


def index_json(products: list[Product]) -> dict[str, Any]:
    return {"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": IMAGES_PATH, "format": "products:1.0",
        "products": sorted(p.name for p in products)}}}


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


# --- reading back -------------------------------------------------------------------------


def _bad(what: str) -> PipelineError:
    return PipelineError(f"simplestreams index: {what}",
                         hint="publish again (`doit publish`) to rewrite the index")


def read_products(index: Any, images: Any) -> list[Product]:
    """The products of index.json + images.json, checking that they agree and are what LXD
    reads; a PipelineError names the first problem."""
    if not isinstance(index, dict) or index.get("format") != "index:1.0":
        raise _bad(f"{INDEX_PATH} is not an index:1.0 document")
    entry = (index.get("index") or {}).get("images")
    if not isinstance(entry, dict) or entry.get("datatype") != "image-downloads" \
            or entry.get("path") != IMAGES_PATH:
        raise _bad(f"{INDEX_PATH} has no image-downloads entry pointing at {IMAGES_PATH}")
    if not isinstance(images, dict) or images.get("format") != "products:1.0" \
            or images.get("datatype") != "image-downloads":
        raise _bad(f"{IMAGES_PATH} is not a products:1.0 image-downloads document")
    listed = entry.get("products")
    table = images.get("products")
    if not isinstance(table, dict) or sorted(table) != sorted(listed or []):
        raise _bad(f"{INDEX_PATH} lists products {sorted(listed or [])}, {IMAGES_PATH} "
                   f"holds {sorted(table or {})}")
    out = []
    for name, p in sorted(table.items()):
        try:
            versions = {}
            for vname, v in p["versions"].items():
                if not VERSION_RE.match(vname):
                    raise _bad(f"{name}: version {vname!r} is not named YYYYMMDD_HHMM")
                items = {}
                for iname, i in v["items"].items():
                    if i["ftype"] not in FTYPES:
                        raise _bad(f"{name} {vname}: item {iname} has unknown ftype "
                                   f"{i['ftype']!r}")
                    combined = {k: str(val) for k, val in i.items()
                                if k.startswith("combined_")}
                    items[iname] = Item(i["ftype"], i["path"], i["sha256"], int(i["size"]),
                                        combined)
                versions[vname] = Version(vname, items)
            out.append(Product(name, tuple(a for a in p["aliases"].split(",") if a),
                               p["arch"], p["os"], p["release"], p["release_title"],
                               p.get("variant", ""), versions))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise _bad(f"{name}: malformed product ({type(exc).__name__}: {exc})") from None
    return out
