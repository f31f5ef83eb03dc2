"""What a client of a published tree can rely on at every moment, even while a publish runs
or after one was killed: the index names only files that exist with the size and sha256 it
gives, SHA256SUMS names only files that exist, and every version under its final name is
complete (its own SHA256SUMS and manifest match its files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.publish import simplestreams as ss


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sums(path: Path) -> dict[str, str]:
    return {name: digest for digest, name in
            (line.split("  ", 1) for line in path.read_text().splitlines())}


def served_consistently(root: Path) -> list[str]:
    """What breaks those promises in the tree at `root` (empty: none)."""
    problems: list[str] = []
    if not (root / "SHA256SUMS").exists():
        return [] if not (root / ss.IMAGES_PATH).exists() else ["an index without SHA256SUMS"]
    for rel in _sums(root / "SHA256SUMS"):
        if not (root / rel).is_file():
            problems.append(f"SHA256SUMS names missing {rel}")
    index = json.loads((root / ss.INDEX_PATH).read_text())
    images = json.loads((root / ss.IMAGES_PATH).read_text())
    for product in ss.read_products(index, images):
        for version in product.versions.values():
            for item in version.items.values():
                path = root / item.path
                if not path.is_file():
                    problems.append(f"the index names missing {item.path}")
                elif path.stat().st_size != item.size or _sha256(path) != item.sha256:
                    problems.append(f"the index's sha256 or size of {item.path} is wrong")
    for vdir in sorted((root / "images").glob("*/*/[!.]*")):
        if not (vdir / "SHA256SUMS").is_file() or not (vdir / "manifest.json").is_file():
            problems.append(f"{vdir.relative_to(root)} is incomplete")
            continue
        for name, digest in _sums(vdir / "SHA256SUMS").items():
            if not (vdir / name).is_file() or _sha256(vdir / name) != digest:
                problems.append(f"{vdir.relative_to(root)}/{name} differs from its SHA256SUMS")
    return problems
