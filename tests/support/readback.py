"""Read a Baguette image back without mounting it on the host: the VM helper's `inspect` mode.

The guest mounts the image read-only (its default subvolume), reports the label, the default
subvolume and the subvolume list on the console, and writes the whole tree as a GNU tar
(numeric owners, xattrs) onto a scratch disk that the host then reads like any tarball.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Accel
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Disk, boot


@dataclass(frozen=True)
class Inspection:
    label: str
    default_subvolume: str  # its path, e.g. "rootfs_subvol"
    subvolumes: tuple[str, ...]
    tree: Path  # a plain tar of the default subvolume's tree


def inspect_image(image: Path, tree: Path, *, appliance: Appliance, accel: Accel,
                  timeout: float, log_path: Path) -> Inspection:
    """Boot the appliance on `image` (read-only); the tree lands as a tar at `tree`."""
    with open(tree, "wb") as f:  # room for the tree, sparse
        f.truncate(image.stat().st_size + (64 << 20))
    result = boot(appliance, accel, [Disk(image, "image", readonly=True), Disk(tree, "out")],
                  "appliance.mode=inspect", log_path=log_path, timeout=timeout,
                  what="inspect", expect="INSPECTED", job=True)

    def path_of(line: str) -> str:
        m = re.search(r"\bpath (\S+)\s*$", line)
        return m.group(1) if m else line.strip()

    default = path_of(result.marker("DEFAULT") or "")
    subvols = tuple(path_of(s) for s in result.markers.get("SUBVOL", []))
    return Inspection(result.marker("LABEL") or "", default, subvols, tree)
