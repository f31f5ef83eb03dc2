"""`doit publish`: what is built, as a tree any static HTTPS host can serve.

    <publish.dir>/
      SHA256SUMS                                   every other file of the tree
      streams/v1/index.json, streams/v1/images.json  the simplestreams index LXD reads
      images/<image>/<arch>/<YYYYMMDD_HHMM>/
        baguette_rootfs.img.zst                    (when built)
        metadata.tar.xz + rootfs.tar.xz | rootfs.squashfs | image.tar.xz   (when built)
        manifest.json                              what went in, how it was built, what it holds
        SHA256SUMS                                 this version's files

A version holds the store's files (hard links where the filesystem allows), each checked first
against the sha256 its store entry recorded (a damaged entry is removed and nothing is
published). Publishing what is already the newest version adds nothing; otherwise a new
version gets a name after every existing one (the minute of publishing, or the minute after
the newest version when that is not earlier), is written under a temporary name, and the
new index files and SHA256SUMS are computed before anything changes. Then the versions are
renamed into place, the index files and SHA256SUMS replaced atomically, and only then the
versions beyond `publish.keep` of the images this config publishes removed, so at every
moment the index and SHA256SUMS name only files that exist; a publish that fails in between
puts the previous ones back. One lock in the tree (`.publish.lock`) serialises publishes from
any artifacts directory. `verify` re-reads a tree: every hash, the index against the files,
and the fingerprints LXD will compute.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Image
from ..core.errors import PipelineError
from ..core.fsutil import atomic_write_bytes, fsync_dir, link_or_copy
from ..core.log import info, step, warn
from ..lxc.image import fingerprint as lxc_fingerprint
from ..stages import BAGUETTE, IMAGE_NAME, LXC, Run, built_entry, lxc_files
from ..store.entries import recorded
from ..store.hashing import sha256_file
from . import simplestreams as ss
from .manifest import manifest

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
IMAGES_DIR = "images"
LOCK = ".publish.lock"


@dataclass(frozen=True)
class Published:
    root: Path
    versions: dict[str, str]  # image -> its newest version
    new: list[str]  # images that got a new version in this run
    removed: list[str]  # version directories pruned (relative paths)


def version_name(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y%m%d_%H%M")


def next_version(now: datetime.datetime, existing: list[str]) -> str:
    """The name of a new version: the minute of `now`, or the minute after the newest of
    `existing` (sorted) when that one is not earlier, so the new version sorts last."""
    name = version_name(now)
    if existing and name <= existing[-1]:
        newest = datetime.datetime.strptime(existing[-1], "%Y%m%d_%H%M").replace(
            tzinfo=datetime.UTC)
        name = version_name(newest + datetime.timedelta(minutes=1))
        if existing[-1] > version_name(now):
            warn(f"the newest published version {existing[-1]} is dated after now "
                 f"({version_name(now)} UTC): naming this one {name}")
    return name


# --- what one image has built -------------------------------------------------------------


def built_files(run: Run, image: Image) -> dict[str, Path]:
    """The image's outputs in the store, by their published name ({} if none is built)."""
    files: dict[str, Path] = {}
    bag = built_entry(run, BAGUETTE, image)
    if bag is not None:
        files[IMAGE_NAME] = bag / IMAGE_NAME
    lxc = built_entry(run, LXC, image)
    if lxc is not None:
        for name in lxc_files(lxc):
            files[name] = lxc / name
    return files


# --- laying out the tree ------------------------------------------------------------------


def _versions(image_dir: Path) -> list[Path]:
    """Complete version directories of one image/arch, oldest first."""
    if not image_dir.is_dir():
        return []
    return sorted(p for p in image_dir.iterdir()
                  if p.is_dir() and ss.VERSION_RE.match(p.name) and (p / MANIFEST).is_file())


def _read_manifest(version_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((version_dir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{version_dir / MANIFEST}: unreadable ({exc})",
                            hint="remove that version directory and publish again") from None
    if not isinstance(doc, dict):
        raise PipelineError(f"{version_dir / MANIFEST}: not a JSON object",
                            hint="remove that version directory and publish again")
    return doc


def _sums(lines: dict[str, str]) -> bytes:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(lines.items())).encode()


def _stage_version(run: Run, image: Image, image_dir: Path, version: str,
                   files: dict[str, Path], hashes: dict[str, tuple[str, int]]) -> Path:
    """The version's directory under a temporary name in `image_dir` (renamed by _commit)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=image_dir))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    try:
        for name, src in files.items():
            link_or_copy(src, tmp / name)
            run.memo.note(src, hashes[name][0])  # linking changed its ctime, not its bytes
        doc = manifest(run, image, version, hashes)
        (tmp / MANIFEST).write_bytes(ss.dumps(doc))
        sums = {name: digest for name, (digest, _size) in hashes.items()}
        sums[MANIFEST] = sha256_file(tmp / MANIFEST)
        (tmp / SUMS).write_bytes(_sums(sums))
        for name in (MANIFEST, SUMS):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _tree_files(root: Path) -> list[str]:
    """Every file of the tree, relative, sorted; temporary (dot) names and the top-level
    SHA256SUMS left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel != SUMS:
                out.append(rel)
    return sorted(out)


def _products(root: Path, version_dirs: list[Path],
              staged: dict[Path, Path] | None = None) -> list[ss.Product]:
    """The simplestreams products of the given versions (those with an LXC image); a
    version's files are read from its temporary directory while it is `staged`."""
    products: dict[str, ss.Product] = {}
    for vdir in version_dirs:
        doc = _read_manifest((staged or {}).get(vdir, vdir))
        lxc = doc.get("lxc")
        if not lxc:
            continue
        files = {name: (f["sha256"], f["size"]) for name, f in doc["files"].items()
                 if name in lxc["files"]}
        rel = vdir.relative_to(root).as_posix()
        arch = ss.LXD_ARCH.get(doc["arch"], doc["arch"])
        name = ss.product_name(doc["image"], lxc["release"], arch, lxc["variant"])
        version = ss.Version(doc["version"], ss.lxc_items(rel, files, lxc["fingerprint"]))
        if name not in products:
            products[name] = ss.Product(
                name, (doc["image"],), arch, lxc["os"], lxc["release"], lxc["release"],
                lxc["variant"], {})
        products[name].versions[version.name] = version
    return list(products.values())


def publish(run: Run, now: datetime.datetime | None = None) -> Published:
    """Publish the configured images' built outputs into `publish.dir`."""
    opts = run.config.publish
    root = opts.dir
    now = now or datetime.datetime.now(datetime.UTC)
    todo = [(image, built_files(run, image))
            for image in (run.config.image(n) for n in opts.images)]
    for image, files in todo:
        if not files:
            info(f"{image.name}: nothing built for the current config, not published")
    todo = [(image, files) for image, files in todo if files]
    if not todo:
        raise PipelineError(
            f"nothing is built to publish (images: {', '.join(opts.images)})",
            hint="run `doit build:lxc` and/or `doit build:baguette` first, then `doit publish`")
    root.mkdir(parents=True, exist_ok=True)
    newest: dict[str, str] = {}
    new: list[str] = []
    staged: dict[Path, Path] = {}  # final version directory -> its temporary one
    with step(f"Publishing {', '.join(i.name for i, _ in todo)} into {root}"), \
            _lock(root / LOCK):
        try:
            for image, files in todo:
                image_dir = root / IMAGES_DIR / image.name / image.arch
                _remove_leftovers(image_dir)
                hashes = _checked_hashes(run, image, files)
                existing = _versions(image_dir)
                if existing:
                    last = _read_manifest(existing[-1])
                    same = {n: (f["sha256"], f["size"])
                            for n, f in last.get("files", {}).items()}
                    if same == hashes:
                        info(f"{image.name}: {existing[-1].name} already holds these files")
                        newest[image.name] = existing[-1].name
                        continue
                version = next_version(now, [p.name for p in existing])
                staged[image_dir / version] = _stage_version(run, image, image_dir, version,
                                                             files, hashes)
                info(f"{image.name}: new version {version} ({', '.join(sorted(files))})")
                newest[image.name] = version
                new.append(image.name)
            ours = {root / IMAGES_DIR / i.name / i.arch for i, _ in todo}
            removed = _commit(run, root, staged, opts.keep, ours)
        finally:
            for tmp in staged.values():  # the ones _commit did not rename into place
                shutil.rmtree(tmp, ignore_errors=True)
        run.memo.save()
    return Published(root, newest, new, removed)


def _checked_hashes(run: Run, image: Image, files: dict[str, Path]
                    ) -> dict[str, tuple[str, int]]:
    """sha256 and size of each file to publish, as its store entry recorded them; a file
    that differs (damaged in the store, or edited through a published hard link) takes its
    entry out of the store and stops the publish."""
    hashes = {}
    for name, src in files.items():
        got = (run.memo.sha256(src), src.stat().st_size)
        entry = src.parent
        want = recorded(entry).get(src.name)
        if want is not None and want != got:
            with run.store.unused(entry.parent.name, entry.name) as free:
                if free:
                    run.store.set_aside(entry, [f"{src.name} does not match its sha256"])
            raise PipelineError(
                f"{image.name}: {src.name} in store entry {entry.parent.name}/{entry.name} "
                "does not match the sha256 recorded when it was built (the entry was "
                "removed; nothing was published)",
                hint=f"build it again (`doit {entry.parent.name}:{image.name}`), then "
                     "`doit publish`; if it recurs, check the disk")
        hashes[name] = got
    return hashes


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One publish into a tree at a time, from any artifacts directory (a second waits)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(image_dir: Path) -> None:
    """Temporary version directories a killed publish left (dot names: in no index)."""
    for p in image_dir.glob(".*") if image_dir.is_dir() else []:
        if p.is_dir() and (p.name.endswith(".tmp") or p.name.endswith(".old")):
            shutil.rmtree(p, ignore_errors=True)


def _plan(root: Path, staged: dict[Path, Path], keep: int, ours: set[Path]
          ) -> tuple[list[Path], list[Path]]:
    """(versions the tree keeps, versions it drops): the newest `keep` of each image this
    config publishes, every version of the others."""
    kept: list[Path] = []
    dropped: list[Path] = []
    images = root / IMAGES_DIR
    dirs = set(images.glob("*/*")) if images.is_dir() else set()
    for image_dir in sorted(dirs | {v.parent for v in staged}):
        versions = sorted({*_versions(image_dir), *(v for v in staged if v.parent == image_dir)},
                          key=lambda v: v.name)
        if image_dir in ours:
            kept += versions[-keep:]
            dropped += versions[:-keep]
        else:
            kept += versions
    return kept, dropped


def _commit(run: Run, root: Path, staged: dict[Path, Path], keep: int,
            ours: set[Path]) -> list[str]:
    """Put the staged versions, the index and SHA256SUMS in place, then drop the versions
    beyond `keep`; on a failure before the drop, put the previous index files back."""
    kept, dropped = _plan(root, staged, keep, ours)
    products = _products(root, kept, staged)
    index = {root / ss.IMAGES_PATH: ss.dumps(ss.images_json(products)),
             root / ss.INDEX_PATH: ss.dumps(ss.index_json(products))}
    sums = _tree_sums(run, root, staged, dropped, index)
    previous = {p: p.read_bytes() if p.is_file() else None for p in [*index, root / SUMS]}
    placed: list[Path] = []
    try:
        for final, tmp in staged.items():
            os.rename(tmp, final)
            placed.append(final)
            fsync_dir(final.parent)
        (root / ss.INDEX_PATH).parent.mkdir(parents=True, exist_ok=True)
        for path, data in [*index.items(), (root / SUMS, sums)]:
            atomic_write_bytes(path, data)
    except BaseException:
        _roll_back(placed, previous)
        raise
    run.memo.save()
    for d in dropped:
        trash = d.with_name(f".{d.name}.old")
        os.rename(d, trash)
        shutil.rmtree(trash)
        info(f"removed {d.relative_to(root)} (publish.keep = {keep})")
    if dropped:
        fsync_dir(root)
    return [d.relative_to(root).as_posix() for d in dropped]


def _tree_sums(run: Run, root: Path, staged: dict[Path, Path], dropped: list[Path],
               index: dict[Path, bytes]) -> bytes:
    """SHA256SUMS of the tree as it will be: its files now, less the dropped versions, plus
    the staged versions and the new index files."""
    dropped_rel = [d.relative_to(root).as_posix() + "/" for d in dropped]
    lines = {rel: run.memo.sha256(root / rel) for rel in _tree_files(root)
             if not any(rel.startswith(d) for d in dropped_rel)}
    for final, tmp in staged.items():
        base = final.relative_to(root).as_posix()
        for name in os.listdir(tmp):
            lines[f"{base}/{name}"] = run.memo.sha256(tmp / name)
    for path, data in index.items():
        lines[path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return _sums(lines)


def _roll_back(placed: list[Path], previous: dict[Path, bytes | None]) -> None:
    """Undo a commit that failed half-way (best effort: the disk may be what failed)."""
    with contextlib.suppress(OSError):
        for path, data in previous.items():
            if data is None:
                path.unlink(missing_ok=True)
            elif not path.is_file() or path.read_bytes() != data:
                atomic_write_bytes(path, data)
        for final in placed:
            trash = final.with_name(f".{final.name}.old")
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)


# --- verifying a published tree -----------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    files: int
    products: int
    versions: int


def _read_sums(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise PipelineError(f"{path}: malformed line {line!r}",
                                hint="publish again to rewrite it")
        out[name] = digest
    return out


def verify_tree(root: Path) -> Verified:
    """Re-read the published tree at `root`: every file against SHA256SUMS (the top-level
    one and each version's), the index against the files (paths, sizes, hashes, LXD's
    fingerprints) and the manifests. Every file is read in full (no hash memo: a tampered
    file may keep its size and mtime). Raises a PipelineError naming every bad file."""
    problems: list[str] = []
    if not (root / SUMS).is_file():
        raise PipelineError(f"{root} holds no {SUMS}: not a published tree",
                            hint="run `doit publish` first (publish.dir says where)")
    sums = _read_sums(root / SUMS)
    actual: dict[str, str] = {}
    with step(f"Verifying {root}"):
        for rel in _tree_files(root):
            actual[rel] = sha256_file(root / rel)
            if rel not in sums:
                problems.append(f"{rel}: not listed in {SUMS}")
            elif sums[rel] != actual[rel]:
                problems.append(f"{rel}: sha256 differs from {SUMS}")
        problems += [f"{rel}: listed in {SUMS} but missing" for rel in sums if rel not in actual]
        for rel in [r for r in actual if r.endswith("/" + SUMS)]:
            base = rel[: -len(SUMS)]
            for name, digest in _read_sums(root / rel).items():
                got = actual.get(base + name)
                if got is None:
                    problems.append(f"{base + name}: listed in {rel} but missing")
                elif got != digest:
                    problems.append(f"{base + name}: sha256 differs from {rel}")
        try:
            index = json.loads((root / ss.INDEX_PATH).read_text())
            images = json.loads((root / ss.IMAGES_PATH).read_text())
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{root}: unreadable simplestreams index ({exc})",
                                hint="publish again to rewrite it") from None
        products = ss.read_products(index, images)
        versions = 0
        for product in products:
            for version in product.versions.values():
                versions += 1
                problems += _check_version(root, product, version, actual)
    if problems:
        shown = "\n  ".join(problems[:30]) + ("\n  ..." if len(problems) > 30 else "")
        raise PipelineError(
            f"the published tree {root} failed verification ({len(problems)} problems):\n  "
            f"{shown}",
            hint="a file whose hash differs was changed after publishing: fetch or publish "
                 "the tree again (`doit publish`)")
    info(f"{len(actual)} files, {len(products)} products, {versions} versions: all hashes match")
    return Verified(len(actual), len(products), versions)


def _check_version(root: Path, product: ss.Product, version: ss.Version,
                   actual: dict[str, str]) -> list[str]:
    problems = []
    where = f"{product.name} {version.name}"
    for item in version.items.values():
        path = root / item.path
        if item.path not in actual:
            problems.append(f"{item.path}: in {ss.IMAGES_PATH} ({where}) but missing")
            continue
        if path.stat().st_size != item.size:
            problems.append(f"{item.path}: size differs from {ss.IMAGES_PATH}")
        if actual[item.path] != item.sha256:
            problems.append(f"{item.path}: sha256 differs from {ss.IMAGES_PATH}")
    meta = version.items.get(ss.META)
    roots = [i for i in version.items.values() if i.ftype in ss.COMBINED_KEYS]
    if meta is not None and roots and all(i.path in actual for i in (meta, *roots)):
        combined = lxc_fingerprint(root / meta.path, root / roots[0].path)
        for key in ss.COMBINED_KEYS[roots[0].ftype]:
            if meta.combined.get(key) != combined:
                problems.append(f"{roots[0].path}: {key} in {ss.IMAGES_PATH} is not "
                                "sha256(metadata ‖ rootfs)")
    vdir = root / Path(next(iter(version.items.values())).path).parent
    if not (vdir / MANIFEST).is_file():
        problems.append(f"{vdir.relative_to(root)}/{MANIFEST}: missing")
    else:
        doc = _read_manifest(vdir)
        if (doc.get("lxc") or {}).get("fingerprint") != version.fingerprint():
            problems.append(f"{vdir.relative_to(root)}/{MANIFEST}: its LXD fingerprint "
                            f"differs from {ss.IMAGES_PATH}")
    return problems


def remote_instructions(base_url: str, published: Published) -> str:
    """How to use the tree: the LXD remote lines for the containers its index offers."""
    images = json.loads((published.root / ss.IMAGES_PATH).read_text())
    aliases = sorted({a for p in images.get("products", {}).values()
                      for a in p.get("aliases", "").split(",") if a})
    lines = [f"Serve {published.root} over HTTPS."]
    if aliases:
        url = base_url or "https://HOST/PATH"
        lines += ["Then on the Chromebook (crosh: vsh termina):",
                  f"  lxc remote add NAME {url} --protocol simplestreams"]
        lines += [f"  lxc launch NAME:{a} {a}-1" for a in aliases]
    else:
        lines.append("Its index offers no container yet: `doit build:lxc` first, to serve "
                     "Crostini images as an LXD remote.")
    return "\n".join(lines)
