"""`doit gc`: free the store of what neither the config nor recent builds need.

Kept: every entry the current images.toml needs (each image's stage keys and the appliance),
and the newest `keep` entries of each stage in each image's build history (so switching back
to a recent variant stays free). Everything else is removed: renamed out of the way first, so
a concurrent build never sees a half-deleted entry under a valid name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PipelineError
from ..core.log import info
from ..stages import Context
from .entries import read_history


@dataclass(frozen=True)
class Collected:
    kept: int
    removed: list[Path]
    freed_bytes: int


def needed(ctx: Context) -> set[str]:
    keys = set()
    for image in ctx.config.images.values():
        for inputs in (ctx.base_inputs, ctx.rootfs_inputs, ctx.pack_inputs,
                       ctx.baguette_inputs, ctx.lxc_inputs):
            with contextlib.suppress(PipelineError):  # a stage that cannot be keyed now
                keys.add(inputs(image).key)
    with contextlib.suppress(PipelineError):
        keys.add(ctx.appliance_inputs().key)
    return keys


def recent(ctx: Context, keep: int) -> set[str]:
    keys: set[str] = set()
    for image in ctx.config.images.values():
        records = ctx.output_dir(image) / ".inputs"
        for history in records.glob("*.history") if records.is_dir() else []:
            keys.update(read_history(history)[-keep:] if keep else [])
    return keys


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def collect(ctx: Context, keep: int = 2, dry_run: bool = False) -> Collected:
    wanted = needed(ctx) | recent(ctx, keep)
    removed: list[Path] = []
    freed = kept = 0
    for _stage, entries in ctx.store.entries().items():
        for entry in entries:
            if entry.name in wanted:
                kept += 1
                continue
            freed += _size(entry)
            removed.append(entry)
            if not dry_run:
                trash = entry.with_name(f".{entry.name}.gc")
                os.rename(entry, trash)
                shutil.rmtree(trash)
    info(f"gc: kept {kept} store entries, {'would remove' if dry_run else 'removed'} "
         f"{len(removed)}, {'would free' if dry_run else 'freed'} {freed / 2**20:.0f} MiB")
    return Collected(kept, removed, freed)


