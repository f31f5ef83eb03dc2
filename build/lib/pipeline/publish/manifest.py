"""manifest.json of one published version: what went in, how it was built, what it holds.

The image, version and architecture; the source and its key (for Debian: suite, variant,
packages, mirror; for NixOS: the derivation paths); every stage's store key with its build
record (when, how long, the pack stage's accelerator); each file's sha256 and size; the
Baguette image's compressed, raw and allocated sizes; the LXD fingerprint, os and release (the
release from the same function the LXC metadata uses); and the root tree's facts (os-release,
packages, setuid/setgid files, capabilities: rootfs/facts.py).
"""

from __future__ import annotations

from typing import Any

from ..config import Image
from ..core.errors import PipelineError
from ..rootfs import facts as rootfs_facts
from ..stages import (
    BASE,
    IMAGE_NAME,
    LXC,
    PACK,
    ROOTFS,
    STAGES,
    Run,
    built_entry,
    key,
    lxc_files,
    main_file,
)
from ..store.layout import read_build_facts


def _stage_records(run: Run, image: Image) -> dict[str, Any]:
    records: dict[str, Any] = {}
    for stage in STAGES:
        entry = built_entry(run, stage, image)
        if entry is not None:
            records[stage.name] = {"key": entry.name, **read_build_facts(entry)}
    return records


def _sizes(run: Run, image: Image, files: dict[str, tuple[str, int]],
           built: dict[str, Any]) -> dict[str, Any]:
    sizes: dict[str, Any] = {name: size for name, (_digest, size) in sorted(files.items())}
    raw = main_file(run, PACK, image) if PACK.name in built else None
    if raw is not None and raw.is_file() and IMAGE_NAME in files:
        st = raw.stat()
        sizes["baguette"] = {"compressed": files[IMAGE_NAME][1], "uncompressed": st.st_size,
                             "allocated": st.st_blocks * 512}
    return sizes


def _lxc(run: Run, image: Image, release: dict[str, str]) -> dict[str, Any] | None:
    entry = built_entry(run, LXC, image)
    if entry is None:
        return None
    return {"fingerprint": (entry / "fingerprint").read_text().strip(),
            "files": lxc_files(entry),
            "os": rootfs_facts.os_name(release),
            "release": rootfs_facts.release_name(image.lxc.release, release),
            "variant": image.lxc.variant}


def manifest(run: Run, image: Image, version: str,
             files: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """manifest.json of one version; `files` maps each published name to (sha256, size)."""
    built = _stage_records(run, image)
    base = key(run, BASE, image)
    rootfs = main_file(run, ROOTFS, image)
    if not rootfs.is_file():
        raise PipelineError(f"{image.name}: the rootfs tarball is no longer in the store",
                            hint=f"run `doit rootfs:{image.name}` again, then publish")
    facts = rootfs_facts.read(rootfs)
    durations = [s["seconds"] for s in built.values() if isinstance(s.get("seconds"), float | int)]
    return {
        "image": image.name,
        "version": version,
        "arch": image.arch,
        "description": image.description,
        "source": {"kind": image.source.value, "key": base.key, **base.inputs},
        "stages": built,
        "accel": built.get(PACK.name, {}).get("accel"),
        "build_seconds": round(sum(durations), 3) if durations else None,
        "files": {name: {"sha256": digest, "size": size}
                  for name, (digest, size) in sorted(files.items())},
        "sizes": _sizes(run, image, files, built),
        "lxc": _lxc(run, image, facts.os_release),
        "os_release": facts.os_release,
        "packages": facts.packages,
        "setuid": facts.setuid,
        "setgid": facts.setgid,
        "capabilities": facts.capabilities,
    }
