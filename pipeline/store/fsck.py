"""`doit fsck` (and the first step of `doit verify`): check store entries against the sizes
and sha256 hashes recorded when they were committed (store.verify).

A damaged entry is reported with what is wrong and taken out of the store, so the next build
makes it again; the check then fails, since something changed bytes behind the pipeline's
back (a disk fault, or a hand edit of a published file, which shares the store's inode).
"""

from __future__ import annotations

from pathlib import Path

from ..config import Image
from ..core.errors import PipelineError
from ..core.log import info, step
from ..stages import Context
from .entries import FILES_FILE, verify


def image_entries(ctx: Context, image: Image) -> list[Path]:
    """The store entries one image's current config uses, those that exist."""
    out = []
    for inputs in (ctx.base_inputs, ctx.rootfs_inputs, ctx.pack_inputs, ctx.baguette_inputs,
                   ctx.lxc_inputs):
        entry = ctx.store.path(inputs(image))
        if ctx.store.has(inputs(image)):
            out.append(entry)
    return out


def check(ctx: Context, entries: list[Path]) -> int:
    """Verify `entries` fully; set aside the damaged ones. Returns the number checked."""
    damaged: list[str] = []
    unlisted = 0
    with step(f"Verifying {len(entries)} store entries"):
        for entry in entries:
            problems = verify(entry)
            if not (entry / FILES_FILE).is_file():
                unlisted += 1
            if problems:
                damaged.append(f"{entry.parent.name}/{entry.name}")
                ctx.store.set_aside(entry, problems)
        if unlisted:
            info(f"{unlisted} entries predate {FILES_FILE}: nothing to compare them with")
    if damaged:
        raise PipelineError(
            f"{len(damaged)} damaged store entries were removed: {', '.join(damaged[:5])}",
            hint="build again to make them anew; if it recurs, check the disk")
    info(f"{len(entries)} entries intact")
    return len(entries)


def check_store(ctx: Context) -> int:
    return check(ctx, [e for entries in ctx.store.entries().values() for e in entries])
