"""The doit layer: wires the stages of build.py into tasks. No stage logic lives here.

Tasks (see `doit list`):
    build:baguette        every default image's baguette_rootfs.img.zst
    build:lxc             every default image's Crostini container (metadata + rootfs)
    verify:baguette       boot every default image with ChromeOS's disk layout
    baguette:<image>      one image, by name (base:, rootfs:, pack: are its stages)
    lxc:<image>           one image's Crostini container
    verify:<image>        check one image's store entries (fsck), then boot it
    fsck                  check every store entry against its recorded hashes
    publish               lay out what is built as a static image server (publish.py)
    publish --verify      re-read a published tree and check every hash and the index
    appliance             the VM helper's kernel + initramfs
    check:nix             the nix/ flake parses and passes `nix flake check`
    bench                 the benchmarks in tests/bench/

Up-to-date checks are store lookups (doit's `uptodate` hook), never doit's md5 of multi-GB
files: a no-op run hashes no artifact. A stage error is reported as doit's TaskFailed with
the pipeline's message and hint, without a Python traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from doit.exceptions import TaskFailed

from . import stages as build
from .config import Config, Image
from .core.errors import PipelineError
from .core.paths import NIX_DIR
from .publish import tree as publish_mod
from .sources import nixcheck
from .stages import Context
from .store import fsck, gc
from .store.entries import StageInputs, explain_miss

T = TypeVar("T")


def _action(fn: Callable[[], object]) -> Callable[[], TaskFailed | None]:
    def run() -> TaskFailed | None:
        try:
            fn()
        except PipelineError as exc:
            return TaskFailed(f"error: {exc}")
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                if exc.filename is None:
                    raise
                return TaskFailed(f"error: {exc.strerror}: {exc.filename}"
                                  "\n  hint: check that path's permissions and its disk")
            where = f" writing {exc.filename}" if exc.filename else ""
            return TaskFailed(f"error: the disk is full{where}; nothing half-written was kept"
                              "\n  hint: free space under artifacts/ (`doit gc`), or point "
                              "build.artifacts at a larger disk")
        except KeyboardInterrupt:
            return TaskFailed("interrupted; nothing half-written was kept")
        return None

    return run


def _check(fn: Callable[[], bool]) -> Callable[[], bool]:
    """An uptodate callable; an error computing it means "run the task" (it then reports)."""
    def check() -> bool:
        try:
            return fn()
        except PipelineError:
            return False

    return check


@dataclass
class InStore:
    """doit's `uptodate` hook for a stage: is its output in the store (and, for a published
    output, do the image's stable names point at it)? `doit info TASK` prints str(self),
    which says why the task would run, as the build's own log line does."""

    ctx: Context
    image: Image
    inputs: Callable[[Image], StageInputs]
    published: Callable[[Context, Image], bool] | None = None

    def __call__(self) -> bool:
        try:
            si = self.inputs(self.image)
            return self.ctx.store.has(si) and self.ctx.store.intact(si) and (
                self.published is None or self.published(self.ctx, self.image))
        except PipelineError:
            return False
        finally:
            self.ctx.memo.save()  # hashes found while checking serve the next run (if new)

    def __str__(self) -> str:
        try:
            si = self.inputs(self.image)
            if self.ctx.store.has(si):
                return f"{si.stage} of {self.image.name}: in the store, not yet published"
            why = explain_miss(self.ctx.record(self.image, si.stage), si)
            return f"{si.stage} of {self.image.name}: not in the store ({why})"
        except PipelineError as exc:
            return f"{self.image.name}: {exc.message}"


def _stage_tasks(ctx: Context, image: Image) -> Iterator[dict[str, Any]]:
    n = image.name
    stages: list[tuple[str, str, Callable[[Context, Image], object],
                       Callable[[Image], StageInputs], list[str]]] = [
        ("base", f"base rootfs of {n} ({image.source.value})",
         build.base, ctx.base_inputs, []),
        ("rootfs", f"customized, normalised rootfs tarball of {n}",
         build.rootfs, ctx.rootfs_inputs, [f"base:{n}"]),
        ("pack", f"raw btrfs image of {n}, packed through the VM helper",
         build.raw_image, ctx.pack_inputs, [f"rootfs:{n}", "appliance"]),
    ]
    for basename, doc, stage, inputs, deps in stages:
        yield {
            "basename": basename, "name": n, "doc": doc,
            "actions": [_action(partial(stage, ctx, image))],
            "uptodate": [InStore(ctx, image, inputs)],
            "task_dep": deps,
            "verbosity": 2,
        }

    def baguette() -> None:
        out = build.baguette_image(ctx, image)
        print(f"\n{image.name}: {out}\n{build.load_instructions(image, out)}\n")

    def crostini() -> None:
        files, fp = build.lxc_image(ctx, image)
        print(f"\n{image.name}: {', '.join(map(str, files))}\n"
              f"{build.lxc_instructions(image, files, fp)}\n")

    outputs: list[tuple[str, str, Callable[[], None], Callable[[Image], StageInputs],
                        Callable[[Context, Image], bool], str]] = [
        ("baguette", f"{n}: artifacts/{n}/{build.IMAGE_NAME}", baguette,
         ctx.baguette_inputs, build.is_published, f"pack:{n}"),
        ("lxc", f"{n}: artifacts/{n}/lxc/ (Crostini container image)", crostini,
         ctx.lxc_inputs, build.lxc_is_published, f"rootfs:{n}"),
    ]
    for basename, doc, make, inputs, published, dep in outputs:
        yield {
            "basename": basename, "name": n, "doc": doc,
            "actions": [_action(make)],
            "uptodate": [InStore(ctx, image, inputs, published)],
            "task_dep": [dep],
            "verbosity": 2,
        }
    yield {
        "basename": "verify", "name": n,
        "doc": f"boot {n} with ChromeOS's disk layout and check its init runs",
        "actions": [_action(lambda: fsck.check(ctx, fsck.image_entries(ctx, image))),
                    _action(lambda: build.verify(ctx, image))],
        "task_dep": [f"baguette:{n}", "appliance"],
        "verbosity": 2,
    }


def creators(config: Config, source_date_epoch: int | None) -> dict[str, Callable[[], Any]]:
    """doit task creators by name (`task_<name>`), each with the docstring `doit list` shows."""
    ctx = Context(config, source_date_epoch)
    images = list(config.images.values())
    defaults = config.build.default_images

    def per_image(stage: str) -> Callable[[], Iterator[dict[str, Any]]]:
        def creator() -> Iterator[dict[str, Any]]:
            for image in images:
                for t in _stage_tasks(ctx, image):
                    if t["basename"] == stage:
                        yield {k: v for k, v in t.items() if k != "basename"}
            if stage == "verify":
                yield {
                    "name": "baguette",
                    "doc": f"boot the default images ({', '.join(defaults)})",
                    "actions": None,
                    "task_dep": [f"verify:{n}" for n in defaults],
                }
        return creator

    def task_appliance() -> dict[str, Any]:
        return {
            "actions": [_action(ctx.appliance)],
            "uptodate": [_check(lambda: ctx.store.has(ctx.appliance_inputs()))],
            "verbosity": 2,
        }

    def task_build() -> Iterator[dict[str, Any]]:
        yield {
            "name": "baguette",
            "doc": f"build the default images' Baguette disks ({', '.join(defaults)})",
            "actions": None,
            "task_dep": [f"baguette:{n}" for n in defaults],
        }
        yield {
            "name": "lxc",
            "doc": f"build the default images' Crostini containers ({', '.join(defaults)})",
            "actions": None,
            "task_dep": [f"lxc:{n}" for n in defaults],
        }

    def collect(keep: int) -> TaskFailed | None:
        return _action(lambda: gc.collect(ctx, keep=keep))()

    def task_gc() -> dict[str, Any]:
        return {
            "actions": [collect],
            "params": [{"name": "keep", "long": "keep", "type": int, "default": 2,
                        "help": "newest entries to keep per stage and image, besides what "
                                "images.toml needs"}],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_fsck() -> dict[str, Any]:
        return {
            "actions": [_action(lambda: fsck.check_store(ctx))],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_check() -> Iterator[dict[str, Any]]:
        yield {
            "name": "nix",
            "doc": "parse every .nix file in nix/, then `nix flake check` it (needs network "
                   "for nixpkgs; says so where there is none)",
            "actions": [_action(lambda: nixcheck.check(NIX_DIR))],
            "uptodate": [False],
            "verbosity": 2,
        }

    def publish(verify: bool) -> TaskFailed | None:
        def run() -> None:
            if verify:
                publish_mod.verify(config.publish.dir)
                return
            done = publish_mod.publish(ctx)
            print(f"\npublished: {done.root} "
                  f"({', '.join(f'{i} {v}' for i, v in sorted(done.versions.items()))})\n"
                  f"{publish_mod.remote_instructions(config.publish.base_url, done)}\n")
        return _action(run)()

    def task_publish() -> dict[str, Any]:
        return {
            "actions": [publish],
            "params": [{"name": "verify", "long": "verify", "type": bool, "default": False,
                        "help": "only re-read the published tree and check every hash and "
                                "the index (publishes nothing)"}],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_bench() -> dict[str, Any]:
        return {
            "actions": [[sys.executable, "-m", "tests.bench"]],
            "uptodate": [False],
            "verbosity": 2,
        }

    docs = {
        "appliance": "the VM helper's appliance (host kernel + small initramfs)",
        "build": "build:baguette / build:lxc build the default images (Baguette / Crostini)",
        "bench": "benchmarks (tests/bench/): ratios against baselines measured in one run",
        "check": "check:nix checks the nix/ flake (parse, then `nix flake check`)",
        "gc": "free store entries the config does not need (keeps the newest --keep N)",
        "fsck": "check every store entry against the sizes and hashes recorded with it",
        "publish": "lay out what is built as a static image server (--verify: check one)",
        "base": "base:<image>: the base rootfs tarball from the image's source",
        "rootfs": "rootfs:<image>: the customized, normalised rootfs tarball",
        "pack": "pack:<image>: the raw btrfs image, packed through the VM helper",
        "baguette": "baguette:<image>: build one image by name (compressed, validated)",
        "verify": "verify:baguette boots the default images the way ChromeOS does",
        "lxc": "lxc:<image>: one image's Crostini container (metadata + rootfs tarballs)",
    }
    out: dict[str, Callable[[], Any]] = {
        "appliance": task_appliance, "build": task_build, "bench": task_bench, "gc": task_gc,
        "fsck": task_fsck, "check": task_check, "publish": task_publish}
    for stage in ("base", "rootfs", "pack", "baguette", "lxc", "verify"):
        out[stage] = per_image(stage)
    for name, fn in out.items():
        fn.__doc__ = docs[name]
    return {f"task_{name}": fn for name, fn in out.items()}


def exit_on_config_error(fn: Callable[[], T]) -> T:
    """Load the config for dodo.py; a config error ends doit with the message, not a trace."""
    try:
        return fn()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

