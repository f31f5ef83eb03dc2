"""One image, from images.toml to baguette_rootfs.img.zst: the stage list.

    base     sources.<kind>.build       -> store/base/<key>/base.tar
    rootfs   customize.customize        -> store/rootfs/<key>/rootfs.tar
    pack     pack.pack (VM helper)      -> store/pack/<key>/disk.img
    baguette compress + validate        -> store/baguette/<key>/baguette_rootfs.img.zst
             published as artifacts/<image>/baguette_rootfs.img.zst (+ .sha256)
    verify   boot.boot_image            (boots the published image)

Each stage's key is computed from its inputs before anything runs (`*_inputs`), so an
up-to-date check is a lookup in the store. `run_stage` builds a missing entry under a lock,
logs why it was missing, and records the inputs for the next explanation. Each entry also
holds `build.json`: when it was built, how long it took and what the stage reports about how
(the pack stage: the accelerator and why), for publish's manifest.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .baguette import check as validate
from .baguette import compress, delta, pack
from .baguette.boottest import boot_image
from .config import Config, Image
from .core.errors import GuestError, PipelineError
from .core.fsutil import atomic_write_bytes, remove_stale_work
from .core.log import info, step, warn
from .core.run import require_version
from .lxc import image as lxc
from .rootfs import customize
from .sources import nix as nix_source
from .sources import source_for
from .store.entries import StageInputs, Store, explain_miss, publish, record_build
from .store.entries import verify as verify_entry
from .store.hashing import FileHashMemo, sha256_file
from .vmhelper import appliance as appliance_mod
from .vmhelper.accel import choose
from .vmhelper.qemu import memory_mib

IMAGE_NAME = "baguette_rootfs.img.zst"
BUILD_FILE = "build.json"  # in each store entry: built_at, seconds, and the stage's facts


def source_date_epoch(env: dict[str, str] | os._Environ[str] = os.environ) -> int | None:
    value = env.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return None
    if not value.isdigit():
        raise PipelineError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
                            hint="set it to a unix time such as $(git log -1 --format=%ct)")
    return int(value)


@dataclass
class Context:
    """What every stage of every image shares: the config, the store, the hash memo."""

    config: Config
    source_date_epoch: int | None = None
    store: Store = field(init=False)
    memo: FileHashMemo = field(init=False)
    _appliance: appliance_mod.Appliance | None = field(default=None, init=False)
    _appliance_inputs: StageInputs | None = field(default=None, init=False)
    _keys: dict[tuple[str, str], StageInputs] = field(default_factory=dict, init=False)
    _swept: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.store = Store(self.root)
        self.memo = FileHashMemo(self.root / ".cache" / "filehash.json")

    @property
    def root(self) -> Path:
        return self.config.build.artifacts

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"

    @property
    def work_dir(self) -> Path:
        """Temporary files' directory. On first use, what killed builds left goes: their
        temporary files, and half-built store entries no running build holds."""
        d = self.root / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            remove_stale_work(d)
            self.store.sweep()
            self._swept = True
        return d

    def log_path(self, image: Image, what: str) -> Path:
        return self.root / "logs" / image.name / f"{what}.console.log"

    def output_dir(self, image: Image) -> Path:
        return self.root / image.name

    def record(self, image: Image, stage: str) -> Path:
        return self.root / image.name / ".inputs" / f"{stage}.json"

    def _memo_key(self, stage: str, image: Image,
                  compute: Callable[[Image], StageInputs]) -> StageInputs:
        """Keys are computed once per run: inputs do not change while the build runs."""
        k = (stage, image.name)
        if k not in self._keys:
            self._keys[k] = compute(image)
        return self._keys[k]

    # --- keys --------------------------------------------------------------------------

    def appliance_inputs(self) -> StageInputs:
        if self._appliance_inputs is None:
            plan = appliance_mod.plan(self.config.build.kernel)
            self._appliance_inputs = appliance_mod.inputs(plan, self.memo)
        return self._appliance_inputs

    def appliance(self) -> appliance_mod.Appliance:
        if self._appliance is None:
            self._appliance = appliance_mod.ensure(self.store, self.config.build.kernel,
                                                   self.memo)
        return self._appliance

    def base_inputs(self, image: Image) -> StageInputs:
        return self._memo_key("base", image, self._base_inputs)

    def _base_inputs(self, image: Image) -> StageInputs:
        return source_for(image.source).inputs(image, self.memo)  # type: ignore[no-any-return]

    def rootfs_inputs(self, image: Image) -> StageInputs:
        return self._memo_key("rootfs", image, self._rootfs_inputs)

    def _rootfs_inputs(self, image: Image) -> StageInputs:
        return customize.inputs(image, self.base_inputs(image).key, self.source_date_epoch,
                                self.memo)

    def pack_inputs(self, image: Image) -> StageInputs:
        return self._memo_key("pack", image, self._pack_inputs)

    def _pack_inputs(self, image: Image) -> StageInputs:
        b = image.baguette
        return StageInputs("pack", pack.VERSION, {
            "rootfs": self.rootfs_inputs(image).key,
            "appliance": self.appliance_inputs().key,
            "label": b.label,
            "size": b.size,
            "slack": b.slack,
        })

    def baguette_inputs(self, image: Image) -> StageInputs:
        return self._memo_key("baguette", image, self._baguette_inputs)

    def _baguette_inputs(self, image: Image) -> StageInputs:
        return StageInputs("baguette", compress.VERSION, {
            "pack": self.pack_inputs(image).key,
            "level": image.baguette.compression_level,
        })

    def lxc_inputs(self, image: Image) -> StageInputs:
        return self._memo_key("lxc", image, self._lxc_inputs)

    def _lxc_inputs(self, image: Image) -> StageInputs:
        x = image.lxc
        return StageInputs("lxc", lxc.VERSION, {
            "rootfs": self.rootfs_inputs(image).key,
            "rootfs_format": x.rootfs_format,
            "unified": x.unified,
            "level": x.compression_level,
            "variant": x.variant,
            "release": x.release,
            "expiry_days": x.expiry_days,
            "description": image.description,
            "arch": image.arch,
            "source_date_epoch": self.source_date_epoch,
        })

    # --- paths of built entries -------------------------------------------------------

    def base_tarball(self, image: Image) -> Path:
        return self.store.path(self.base_inputs(image)) / "base.tar"

    def rootfs_tarball(self, image: Image) -> Path:
        return self.store.path(self.rootfs_inputs(image)) / "rootfs.tar"

    def raw_image(self, image: Image) -> Path:
        return self.store.path(self.pack_inputs(image)) / "disk.img"

    def baguette_image(self, image: Image) -> Path:
        return self.store.path(self.baguette_inputs(image)) / IMAGE_NAME

    def published_image(self, image: Image) -> Path:
        return self.output_dir(image) / IMAGE_NAME


def run_stage(ctx: Context, image: Image, si: StageInputs, title: str,
              build: Callable[[Path], dict[str, Any] | None]) -> Path:
    """Build the store entry for `si` unless present; returns its directory.

    `build` fills the temporary entry and may return facts about how it built it (JSON-able),
    kept with the duration in the entry's build.json."""
    entry = ctx.store.path(si)
    record = ctx.record(image, si.stage)
    if ctx.store.has(si) and ctx.store.intact(si):
        info(f"{si.stage}: in the store ({si.key})")
        record_build(record, si)
        return entry
    with ctx.store.lock(si):
        if ctx.store.has(si):  # another process built it while we waited, or it is damaged
            problems = verify_entry(entry, full=False)
            if not problems:
                record_build(record, si)
                return entry
            ctx.store.set_aside(entry, problems)
        ctx.store.remove_stale(si)  # what a killed build of this key left
        with step(f"{title} [{image.name}] ({explain_miss(record, si)})"), \
                ctx.store.new_entry(si) as tmp:
            started = time.monotonic()
            facts = build(tmp) or {}
            atomic_write_bytes(tmp / BUILD_FILE, json.dumps(
                {"built_at": int(time.time()), "seconds": round(time.monotonic() - started, 3),
                 **facts}, indent=1, sort_keys=True).encode())
    record_build(record, si)
    ctx.memo.save()
    return entry


# --- the stages, in order -----------------------------------------------------------------


def base(ctx: Context, image: Image) -> Path:
    src = source_for(image.source)
    run_stage(ctx, image, ctx.base_inputs(image), f"Base rootfs from {image.source.value}",
              lambda d: src.build(image, d / "base.tar", ctx.base_inputs(image)))
    return ctx.base_tarball(image)


def rootfs(ctx: Context, image: Image) -> Path:
    def build(d: Path) -> None:
        n = customize.customize(ctx.base_tarball(image), image, d / "rootfs.tar",
                                work_dir=ctx.work_dir,
                                source_date_epoch=ctx.source_date_epoch)
        info(f"{n} entries")

    run_stage(ctx, image, ctx.rootfs_inputs(image), "Customizing the rootfs", build)
    return ctx.rootfs_tarball(image)


def _delta_base(ctx: Context, image: Image) -> tuple[Path, Path] | None:
    """(previous raw image, its rootfs tarball) if the image's last pack can be updated into
    this one: same base rootfs, VM helper and image options, both still in the store."""
    try:
        previous = json.loads(ctx.record(image, "pack").read_text())
        prev_inputs = previous["inputs"]
        prev_rootfs = ctx.root / "store" / "rootfs" / prev_inputs["rootfs"]
        prev_base = json.loads((prev_rootfs / "inputs.json").read_text())["inputs"]["base"]
    except (OSError, ValueError, KeyError):
        return None
    now = ctx.pack_inputs(image).inputs
    same = all(prev_inputs.get(k) == now[k] for k in ("appliance", "label", "size", "slack"))
    prev_image = ctx.root / "store" / "pack" / previous["key"] / "disk.img"
    if (not same or prev_base != ctx.base_inputs(image).key or not prev_image.is_file()
            or previous.get("version") != pack.VERSION):
        return None
    return prev_image, prev_rootfs / "rootfs.tar"


def filesystem_uuid(key: str) -> str:
    """The btrfs filesystem UUID of a full pack: from its store key, so that two builds of
    the same inputs agree (a delta update keeps the UUID of the image it updates)."""
    return str(uuid.UUID(hex=key[:32], version=4))


def raw_image(ctx: Context, image: Image) -> Path:
    def build(d: Path) -> dict[str, Any]:
        for tool in ("mkfs.btrfs", "qemu-system-x86_64"):  # before the appliance copies them
            require_version(tool)
        app = ctx.appliance()
        accel = choose(ctx.config.build.accel, app, ctx.cache_dir)
        b = image.baguette
        args = dict(appliance=app, accel=accel.accel, timeout=ctx.config.build.vm_timeout,
                    memory_mib=memory_mib(ctx.config.build.vm_memory),
                    log_path=ctx.log_path(image, "pack"), clock=ctx.source_date_epoch)
        base = _delta_base(ctx, image)
        changes = delta.diff(base[1], ctx.rootfs_tarball(image)) if base else None
        if base is not None and changes is not None:
            try:
                with step(f"Delta update of the previous image ({len(changes.changed)} new or "
                          f"changed, {len(changes.deleted)} removed)"):
                    delta.apply(base[0], d / "disk.img", changes, ctx.rootfs_tarball(image),
                                work=d, **args)  # type: ignore[arg-type]
            except PipelineError as exc:
                warn(f"delta update failed, packing in full instead: {exc.message}")
                (d / "disk.img").unlink(missing_ok=True)
                changes = None
        if changes is None:
            pack.pack(ctx.rootfs_tarball(image), d / "disk.img", label=b.label,
                      fixed_size=b.size, slack=b.slack, work_dir=ctx.work_dir,
                      fsid=filesystem_uuid(ctx.pack_inputs(image).key),
                      **args)  # type: ignore[arg-type]
        with step("Checking the filesystem"):
            validate.check_raw(d / "disk.img")
        return {"accel": accel.accel.value, "accel_reason": accel.reason,
                "delta": changes is not None}

    run_stage(ctx, image, ctx.pack_inputs(image), "Packing the btrfs image", build)
    return ctx.raw_image(image)


def baguette_image(ctx: Context, image: Image) -> Path:
    raw = ctx.raw_image(image)

    def build(d: Path) -> None:
        out = d / IMAGE_NAME
        size = compress.compress(raw, out, level=image.baguette.compression_level)
        validate.check_compressed(out, image.baguette.label, raw.stat().st_size)
        (d / f"{IMAGE_NAME}.sha256").write_text(f"{sha256_file(out)}  {IMAGE_NAME}\n")
        info(f"{size / 2**20:.0f} MiB compressed, {raw.stat().st_size / 2**20:.0f} MiB raw")

    entry = run_stage(ctx, image, ctx.baguette_inputs(image), "Compressing", build)
    out_dir = ctx.output_dir(image)
    publish(entry / IMAGE_NAME, out_dir / IMAGE_NAME)
    publish(entry / f"{IMAGE_NAME}.sha256", out_dir / f"{IMAGE_NAME}.sha256")
    ctx.memo.save()
    return out_dir / IMAGE_NAME


def _same_file(ctx: Context, src: Path, dst: Path) -> bool:
    try:
        return os.path.samefile(src, dst) or ctx.memo.sha256(src) == ctx.memo.sha256(dst)
    except OSError:
        return False


def is_published(ctx: Context, image: Image) -> bool:
    """The per-image name points at the current store entry (same file, or same bytes)."""
    return _same_file(ctx, ctx.baguette_image(image), ctx.published_image(image))


def build_facts(entry: Path) -> dict[str, Any]:
    """The build.json of a store entry ({} for an entry built before it was recorded)."""
    try:
        facts = json.loads((entry / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def lxc_files(ctx: Context, image: Image) -> list[str]:
    entry = ctx.store.path(ctx.lxc_inputs(image))
    return (entry / "files").read_text().split()


def lxc_is_published(ctx: Context, image: Image) -> bool:
    entry = ctx.store.path(ctx.lxc_inputs(image))
    out = ctx.output_dir(image) / "lxc"
    return all(_same_file(ctx, entry / f, out / f) for f in [*lxc_files(ctx, image),
                                                              "fingerprint"])


def lxc_image(ctx: Context, image: Image) -> tuple[list[Path], str]:
    """The Crostini image of `image`: its files under artifacts/<image>/lxc/, fingerprint."""
    rootfs_tar = ctx.rootfs_tarball(image)
    x = image.lxc

    def build_lxc(d: Path) -> None:
        opts = lxc.Options(x.rootfs_format, x.unified, x.compression_level, image.description,
                           x.variant, x.release, x.expiry_days, image.arch)
        created = ctx.source_date_epoch or int(time.time())
        source_md = ctx.base_tarball(image).parent / nix_source.METADATA_TAR
        result = lxc.build(rootfs_tar, d, opts, creation_date=created, work=d,
                           source_metadata=source_md if source_md.is_file() else None)
        (d / "files").write_text(result["files"] + "\n")
        (d / "fingerprint").write_text(result["fingerprint"] + "\n")
        sizes = ", ".join(f"{f} {(d / f).stat().st_size / 2**20:.1f} MiB"
                          for f in result["files"].split())
        info(f"{sizes}; fingerprint {result['fingerprint'][:12]}")

    entry = run_stage(ctx, image, ctx.lxc_inputs(image), "Writing the LXC image", build_lxc)
    out_dir = ctx.output_dir(image) / "lxc"
    names = lxc_files(ctx, image)
    for name in [*names, "fingerprint"]:
        publish(entry / name, out_dir / name)
    ctx.memo.save()
    return [out_dir / n for n in names], (entry / "fingerprint").read_text().strip()


def lxc_instructions(image: Image, files: list[Path], fp: str) -> str:
    names = " ".join(f.name for f in files)
    return (f"Load it in Crostini: copy {names} into the Linux files, then in the termina VM "
            f"(crosh: vsh termina):\n  lxc image import {names} --alias {image.name}\n"
            f"  lxc launch {image.name} {image.name}-1\n"
            f"LXD fingerprint: {fp}")


def baguette(ctx: Context, image: Image) -> Path:
    """The whole Baguette pipeline for one image, stage by stage."""
    base(ctx, image)
    rootfs(ctx, image)
    raw_image(ctx, image)
    return baguette_image(ctx, image)


def verify(ctx: Context, image: Image) -> dict[str, str]:
    """Boot the published image with ChromeOS's disk layout; returns its os-release."""
    zst = ctx.published_image(image)
    if not zst.is_file():
        raise PipelineError(f"{zst} does not exist", hint="run `doit build:baguette` first")
    app = ctx.appliance()
    accel = choose(ctx.config.build.accel, app, ctx.cache_dir)
    with step(f"Booting {image.name} with ChromeOS's disk layout ({accel.accel.value})"):
        result = boot_image(zst, appliance=app, accel=accel.accel,
                            timeout=ctx.config.build.vm_timeout,
                            log_path=ctx.log_path(image, "boot"), work_dir=ctx.work_dir,
                            memory_mib=memory_mib(ctx.config.build.vm_memory))
        info(f"booted {result.os_release.get('PRETTY_NAME', '?')} in {result.seconds:.1f} s")
        if image.chromeos_integration:
            if not result.tools_mounted:
                raise GuestError(
                    f"boot test: the image did not mount the cros-vm-tools disk read-only at "
                    f"/opt/google/cros-containers (console log: {result.log_path})",
                    hint="ChromeOS's tools (vshd, maitred) come from that disk; see the "
                    "mount unit's messages in the console log",
                    console_log=str(result.log_path))
            info("the tools disk (LABEL=cros-vm-tools) is mounted read-only")
    stamp = ctx.output_dir(image) / "verified.json"
    atomic_write_bytes(stamp, json.dumps({"image": ctx.memo.sha256(zst),
                                          "os_release": result.os_release}).encode())
    return result.os_release


def load_instructions(image: Image, path: Path) -> str:
    return (f"Load it on a Chromebook: copy {path.name} to the Downloads folder, then in "
            f"crosh (Ctrl+Alt+T):\n  vmc create --vm-type BAGUETTE --size 15G "
            f"--source /home/chronos/user/MyFiles/Downloads/{path.name} {image.name}\n"
            f"  vmc start --vm-type BAGUETTE {image.name}")
