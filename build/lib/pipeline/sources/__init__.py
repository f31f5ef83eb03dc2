"""Where a base rootfs comes from: one module per source kind.

Each source module offers two plain functions:
    inputs(image, memo) -> StageInputs   what the base rootfs depends on (cheap, no build)
    make_base(image, out, si)             write the base rootfs tarball to `out`
and may offer
    lxd_metadata(base_entry) -> Path | None   LXD metadata of its own, stored beside base.tar
A new source is one new module registered in SOURCES.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..config import SourceKind
from ..core.errors import ConfigError
from . import debian, nix, tarball

SOURCES: dict[SourceKind, ModuleType] = {
    SourceKind.DEBIAN: debian,
    SourceKind.TARBALL: tarball,
    SourceKind.NIX: nix,
}


def source_for(kind: SourceKind) -> ModuleType:
    try:
        return SOURCES[kind]
    except KeyError:
        raise ConfigError(f"source {kind.value!r} is not available in this version",
                          hint="use source = \"debian\" or \"tarball\"") from None


def lxd_metadata(kind: SourceKind, base_entry: Path) -> Path | None:
    """The source's own LXD metadata tar in its base entry, if it makes one (NixOS does)."""
    own = getattr(source_for(kind), "lxd_metadata", None)
    return own(base_entry) if own is not None else None
