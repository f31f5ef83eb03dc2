"""One image, from images.toml to baguette_rootfs.img.zst: the stage table.

    stage     made by                         store entry              stable name
    base      sources.<kind>.make_base        base/<key>/base.tar
    rootfs    rootfs.customize.customize      rootfs/<key>/rootfs.tar (+ container.tar)
    pack      baguette.pack.pack (or .delta)  pack/<key>/disk.img
    baguette  baguette.compress + .check      baguette/<key>/*.img.zst  <image>/*.img.zst
    lxc       lxc.image.write_image           lxc/<key>/...            <image>/lxc/*

STAGES is the only list of them: the doit wiring (tasks.py), gc, fsck and publish read it.
Each stage's key is computed from its inputs before anything runs, by the `inputs` function
beside the code that uses the same values (pack.inputs next to pack.pack...), so an up-to-date
check is a lookup in the store. `build` makes a missing entry under the key's lock, logs why it
was missing, records the inputs for the next explanation and links the stable names. Each
entry also holds `build.json`: when it was built, how long it took and what the stage reports
about how (the pack stage: the accelerator and why), for publish's manifest.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .baguette import check, compress, delta, pack
from .baguette.boottest import boot_image
from .config import Accel, Config, Image, SourceKind
from .conformance import baguette as conformance
from .conformance import checks
from .conformance.toolsdisk import dotfile_names
from .core.arch import arch
from .core.errors import PipelineError
from .core.fsutil import atomic_write_bytes, hold_run_dir, remove_stale_run_dirs
from .core.log import info, step, warn
from .core.run import require_version
from .hostsetup import codename
from .lxc import image as lxc
from .lxc.metadata import Properties
from .rootfs import customize
from .sources import lxd_metadata, source_for
from .sources.debian import host_mirror
from .sources.nix import wrong_kind
from .store import gc
from .store.entries import Store, link_output, problems
from .store.hashing import FileHashMemo, sha256_file
from .store.keys import StageInputs
from .store.layout import (
    BUILD_FILE,
    Layout,
    claim,
    explain_miss,
    read_entry_inputs,
    read_record,
    recent_keys,
    recorded_since,
    write_record,
)
from .store.remote import Remote, remote_for
from .vmhelper import appliance as appliance_mod
from .vmhelper import toolroot
from .vmhelper.accel import choose, verdict_dir
from .vmhelper.qemu import Guest, memory_mib
from .vmhelper.toolroot import host_root

IMAGE_NAME = "baguette_rootfs.img.zst"


@dataclass
class Run:
    """One invocation's state: the config, SOURCE_DATE_EPOCH, the artifacts layout, the
    store, the hash memo; stage keys are computed once per run (inputs do not change while
    it runs), and the appliance is built at most once. `held` holds the run's own work
    directory (and its lock) until the run is garbage or the process ends. `remote` is the
    shared store ([cache] remote), if one is configured."""

    config: Config
    source_date_epoch: int | None
    layout: Layout
    store: Store
    memo: FileHashMemo
    keys: dict[tuple[str, str], StageInputs] = field(default_factory=dict)
    appliance: appliance_mod.Appliance | None = None
    foreign: dict[str, appliance_mod.Appliance] = field(default_factory=dict)  # by arch
    work: Path | None = None
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    remote: Remote | None = None


def open_run(config: Config, source_date_epoch: int | None) -> Run:
    """A run on the config's artifacts directory, which must be the pipeline's (claim)."""
    layout = Layout(config.build.artifacts)
    claim(layout)
    run = Run(config, source_date_epoch, layout, Store(layout), FileHashMemo(layout.hash_memo),
              remote=remote_for(config.cache))
    weakref.finalize(run, run.held.close)
    return run


def work_dir(run: Run) -> Path:
    """This run's own directory for temporary files (`tmp/run.<id>/`, held by a lock until
    the run ends). The first call removes what killed builds left: their run directories,
    and half-built store entries no build holds."""
    if run.work is None:
        remove_stale_run_dirs(run.layout.tmp)
        run.store.sweep()
        run.work = hold_run_dir(run.layout.tmp, run.held)
    return run.work


# --- the VM helper ------------------------------------------------------------------------


def appliance_inputs(run: Run) -> StageInputs:
    k = ("appliance", "")
    if k not in run.keys:
        plan = appliance_mod.plan(run.config.build.kernel)
        run.keys[k] = appliance_mod.inputs(plan, run.memo)
    return run.keys[k]


def appliance(run: Run) -> appliance_mod.Appliance:
    """The VM helper's appliance: from the store, else the remote store, else built (and
    then pushed, like a stage's entry)."""
    if run.appliance is None:
        si = appliance_inputs(run)
        built = False
        if run.remote is not None and not run.store.has(si):
            with run.store.lock(si):
                if not run.store.has(si):
                    run.store.remove_stale(si)
                    built = not run.remote.pull(run.store, si, work_dir(run))
        run.appliance = appliance_mod.ensure(run.store, run.config.build.kernel, run.memo)
        if built and run.remote is not None:
            run.remote.push(run.store, si, "", work_dir(run))
    return run.appliance


def guest(run: Run) -> Guest:
    """How this run's VM helper guests boot (the accelerator is chosen, and said, here)."""
    app = appliance(run)
    b = run.config.build
    accel = choose(b.accel, app, verdict_dir())
    return Guest(app, accel.accel, b.vm_timeout, memory_mib(b.vm_memory), run.source_date_epoch,
                 accel.reason)


def guest_for(run: Run, image: Image) -> Guest:
    """The guest that boots the image itself: the host's VM helper for the host's
    architecture, else an appliance of the image's architecture (made from its tool tree,
    vmhelper/toolroot.py), always emulated."""
    a = arch(image.arch)
    if a is host_root().arch:
        return guest(run)
    b = run.config.build
    if b.accel is Accel.KVM:
        raise PipelineError(f"build.accel = \"kvm\" but images.{image.name} is {a.name} on "
                            f"this {host_root().arch.name} host, which only QEMU's emulation "
                            "(TCG) runs", hint="set build.accel = \"auto\" or \"tcg\"")
    if a.name not in run.foreign:
        suite = codename() or "bookworm"
        tools = toolroot.for_arch(a, verdict_dir(), suite, host_mirror(suite))
        run.foreign[a.name] = appliance_mod.ensure(run.store, None, run.memo, tools)
    reason = f"an {a.name} guest on an {host_root().arch.name} host is emulated"
    info(f"accelerator: tcg ({reason})")
    return Guest(run.foreign[a.name], Accel.TCG, b.vm_timeout, memory_mib(b.vm_memory),
                 run.source_date_epoch, reason)


# --- the stages: key, then how to make the entry ------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str  # the store directory and the doit task group
    title: str  # the step line while it builds
    doc: str  # doit's description; {image} is the image's name
    after: tuple[str, ...]  # what must be built first: stages, or "appliance"
    inputs: Callable[[Run, Image], StageInputs]
    make: Callable[[Run, Image, Path], dict[str, Any] | None]  # fills the new entry
    summary: str = ""  # the task group's line in `doit list`
    file: str | None = None  # the entry's main file, if it has one
    stable: Callable[[Path], list[tuple[str, str]]] | None = None  # (entry file, output path)


def key(run: Run, stage: Stage, image: Image) -> StageInputs:
    """The stage's inputs for the image (computed once per run)."""
    k = (stage.name, image.name)
    if k not in run.keys:
        run.keys[k] = stage.inputs(run, image)
    return run.keys[k]


def entry(run: Run, stage: Stage, image: Image) -> Path:
    return run.store.path(key(run, stage, image))


def main_file(run: Run, stage: Stage, image: Image) -> Path:
    assert stage.file is not None
    return entry(run, stage, image) / stage.file


def _base_inputs(run: Run, image: Image) -> StageInputs:
    si: StageInputs = source_for(image.source).inputs(image, run.memo)
    stamp = refreshed_at(run, image)
    return StageInputs(si.stage, si.version, {**si.inputs, "refreshed": stamp}) if stamp else si


# --- refreshing a base --------------------------------------------------------------------

REFRESHABLE = (SourceKind.DEBIAN,)  # a nix base moves with flake.lock, a tarball with its file


def refreshed_at(run: Run, image: Image) -> str:
    """When `doit refresh:<image>` last asked for a new base ('' if never): part of the base
    key of a Debian image, whose inputs (suite, packages, mirror) name no archive state."""
    if image.source not in REFRESHABLE:
        return ""
    try:
        return str(json.loads(run.layout.record(image.name, "refresh").read_text())["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def refresh(run: Run, image: Image) -> str:
    """The image's next build makes a new base (mmdebstrap again: the archive's updates),
    and so everything after it; the previous builds stay in the store until `doit gc`."""
    if image.source not in REFRESHABLE:
        raise PipelineError(f"{image.name}: a {image.source.value} base cannot be refreshed "
                            "here", hint="a nix base follows flake.lock (`nix flake update`), "
                            "a tarball base its file: change those")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = run.layout.record(image.name, "refresh")
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(record, json.dumps({"at": stamp}).encode())
    for k in [k for k in run.keys if k[1] == image.name]:
        del run.keys[k]  # keys computed earlier in this run no longer hold
    info(f"{image.name}: the next build makes a new base (refreshed {stamp})")
    return stamp


def _make_base(run: Run, image: Image, d: Path) -> None:
    source_for(image.source).make_base(image, d / "base.tar", key(run, BASE, image))


# the guest each output stage makes, checked against the one a source says its tree is for
GUEST_OF = {"pack": "baguette", "lxc": "crostini"}


def check_kind(run: Run, stage: Stage, image: Image) -> None:
    """Refuse a Baguette disk of a Crostini configuration and the reverse: a NixOS source
    says which guest its configuration is (other sources say nothing)."""
    kind = key(run, BASE, image).inputs.get("kind")
    if kind is not None and kind != GUEST_OF[stage.name]:
        raise wrong_kind(image, kind)


def _rootfs_inputs(run: Run, image: Image) -> StageInputs:
    return customize.inputs(image, key(run, BASE, image).key, run.source_date_epoch, run.memo)


def _make_rootfs(run: Run, image: Image, d: Path) -> None:
    n = customize.customize(main_file(run, BASE, image), image, d / customize.VM_TAR,
                            work_dir=work_dir(run), source_date_epoch=run.source_date_epoch,
                            container_out=d / customize.CONTAINER_TAR, bootable=True,
                            dotfiles_key=key(run, ROOTFS, image).inputs["dotfiles"])
    info(f"{n} entries")


def pack_options(image: Image) -> pack.PackOptions:
    b = image.baguette
    return pack.PackOptions(b.label, b.size, b.slack)


def _pack_inputs(run: Run, image: Image) -> StageInputs:
    check_kind(run, PACK, image)
    return pack.inputs(key(run, ROOTFS, image).key, appliance_inputs(run).key,
                       pack_options(image))


def filesystem_uuid(key: str) -> str:
    """The btrfs filesystem UUID of a full pack: from its store key, so that two builds of
    the same inputs agree (a delta update keeps the UUID of the image it updates)."""
    return str(uuid.UUID(hex=key[:32], version=4))


def previous_pack(run: Run, image: Image) -> tuple[Path, Path] | None:
    """(previous raw image, its rootfs tarball) if the image's last pack can be updated into
    this one: same base rootfs, VM helper and image options, both still in the store."""
    last = read_record(run.layout, image.name, PACK.name)
    if last is None or last.get("version") != pack.VERSION:
        return None
    try:
        prev_inputs, prev_key = last["inputs"], last["key"]
        prev_rootfs = run.layout.entry(ROOTFS.name, prev_inputs["rootfs"])
        prev_base = (read_entry_inputs(prev_rootfs) or {})["base"]
    except (KeyError, TypeError):
        return None
    now = key(run, PACK, image).inputs
    same = all(prev_inputs.get(k) == now[k] for k in ("appliance", "label", "size", "slack"))
    prev_image = run.layout.entry(PACK.name, prev_key) / "disk.img"
    if not same or prev_base != key(run, BASE, image).key or not prev_image.is_file():
        return None
    return prev_image, prev_rootfs / "rootfs.tar"


def _make_pack(run: Run, image: Image, d: Path) -> dict[str, Any]:
    # before the appliance is made: the host's own emulator packs every architecture's image
    for tool in ("mkfs.btrfs", host_root().arch.qemu):
        require_version(tool)
    vm = guest(run)
    log = run.layout.console_log(image.name, "pack")
    rootfs_tar = main_file(run, ROOTFS, image)
    previous = previous_pack(run, image)
    changes = delta.diff(previous[1], rootfs_tar) if previous else None
    if previous is not None and changes is not None:
        try:
            with step(f"Delta update of the previous image ({len(changes.changed)} new or "
                      f"changed, {len(changes.deleted)} removed)"):
                delta.apply(previous[0], d / "disk.img", changes, rootfs_tar, vm,
                            log_path=log, work=d)
        except PipelineError as exc:
            warn(f"delta update failed, packing in full instead: {exc.message}")
            (d / "disk.img").unlink(missing_ok=True)
            changes = None
    if changes is None:
        pack.pack(rootfs_tar, d / "disk.img", pack_options(image), vm, log_path=log,
                  work_dir=work_dir(run), fsid=filesystem_uuid(key(run, PACK, image).key),
                  clock=run.source_date_epoch)
    with step("Checking the filesystem"):
        check.check_raw(d / "disk.img")
    return {"accel": vm.accel.value, "accel_reason": vm.accel_reason,
            "delta": changes is not None}


def _baguette_inputs(run: Run, image: Image) -> StageInputs:
    return compress.inputs(key(run, PACK, image).key, image.baguette.compression_level)


def _make_baguette(run: Run, image: Image, d: Path) -> None:
    raw = main_file(run, PACK, image)
    out = d / IMAGE_NAME
    size = compress.compress(raw, out, level=image.baguette.compression_level)
    check.check_compressed(out, image.baguette.label, raw.stat().st_size)
    (d / f"{IMAGE_NAME}.sha256").write_text(f"{sha256_file(out)}  {IMAGE_NAME}\n")
    info(f"{size / 2**20:.0f} MiB compressed, {raw.stat().st_size / 2**20:.0f} MiB raw")


def _baguette_names(_entry: Path) -> list[tuple[str, str]]:
    return [(IMAGE_NAME, IMAGE_NAME), (f"{IMAGE_NAME}.sha256", f"{IMAGE_NAME}.sha256")]


def lxc_options(image: Image) -> tuple[lxc.Options, Properties]:
    x = image.lxc
    return (lxc.Options(x.rootfs_format, x.unified, x.compression_level),
            Properties(image.description, x.variant, x.release, x.expiry_days, image.arch))


def _lxc_inputs(run: Run, image: Image) -> StageInputs:
    check_kind(run, LXC, image)
    return lxc.inputs(key(run, ROOTFS, image).key, *lxc_options(image), run.source_date_epoch)


def _make_lxc(run: Run, image: Image, d: Path) -> None:
    opts, props = lxc_options(image)
    result = lxc.write_image(
        entry(run, ROOTFS, image) / customize.CONTAINER_TAR, d, opts, props,
        creation_date=run.source_date_epoch or int(time.time()), work=d,
        source_metadata=lxd_metadata(image.source, entry(run, BASE, image)))
    (d / "files").write_text(result["files"] + "\n")
    (d / "fingerprint").write_text(result["fingerprint"] + "\n")
    sizes = ", ".join(f"{f} {(d / f).stat().st_size / 2**20:.1f} MiB"
                      for f in result["files"].split())
    info(f"{sizes}; fingerprint {result['fingerprint'][:12]}")


def lxc_files(lxc_entry: Path) -> list[str]:
    """The image files an LXC entry holds (metadata + rootfs, or the unified tarball)."""
    return (lxc_entry / "files").read_text().split()


def _lxc_names(lxc_entry: Path) -> list[tuple[str, str]]:
    return [(f, f"lxc/{f}") for f in [*lxc_files(lxc_entry), "fingerprint"]]


BASE = Stage("base", "Base rootfs from {source}", "base rootfs of {image} ({source})", (),
             _base_inputs, _make_base, "the base rootfs tarball from the image's source",
             file="base.tar")
ROOTFS = Stage("rootfs", "Customizing the rootfs", "customized, normalised rootfs tarball of "
               "{image}", ("base",), _rootfs_inputs, _make_rootfs,
               "the customized, normalised rootfs tarballs (VM and container)",
               file=customize.VM_TAR)
PACK = Stage("pack", "Packing the btrfs image", "raw btrfs image of {image} (mkfs.btrfs on "
             "the host; the VM helper for what the host cannot set)", ("rootfs", "appliance"),
             _pack_inputs, _make_pack, "the raw btrfs image (mkfs.btrfs on the host, the VM "
             "helper where needed)", file="disk.img")
BAGUETTE = Stage("baguette", "Compressing", "{image}: the Baguette disk, "
                 f"<artifacts>/{{image}}/{IMAGE_NAME}", ("pack",), _baguette_inputs,
                 _make_baguette, "build one image by name (compressed, validated)",
                 file=IMAGE_NAME, stable=_baguette_names)
LXC = Stage("lxc", "Writing the LXC image", "{image}: the Crostini container image, "
            "<artifacts>/{image}/lxc/", ("rootfs",), _lxc_inputs, _make_lxc,
            "one image's Crostini container (metadata + rootfs tarballs)", stable=_lxc_names)
STAGES = (BASE, ROOTFS, PACK, BAGUETTE, LXC)
STAGE = {s.name: s for s in STAGES}
OUTPUTS = (BAGUETTE, LXC)  # the stages whose files users take (doit build:baguette/lxc)


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


# --- building one stage -------------------------------------------------------------------


def build(run: Run, stage: Stage, image: Image, rebuild: bool = False) -> Path:
    """The stage's store entry for `image`, built now unless it is in the store (or
    `rebuild`: the entry there is replaced by a new build); its stable names are linked.
    Returns the entry's directory."""
    si = key(run, stage, image)
    path = run.store.path(si)
    if not rebuild and run.store.has(si) and run.store.intact(si):
        info(f"{si.stage}: in the store ({si.key})")
    elif _build_entry(run, stage, image, si, rebuild) and run.remote is not None:
        run.remote.push(run.store, si, image.name, work_dir(run))
    write_record(run.layout, image.name, si)
    for name, dest in stage.stable(path) if stage.stable else []:
        link_output(path / name, run.layout.outputs(image.name) / dest)
    run.memo.save()
    return path


def _build_entry(run: Run, stage: Stage, image: Image, si: StageInputs,
                 rebuild: bool = False) -> bool:
    """Make the entry under its key's lock: True when this process built it (not when
    another process did meanwhile, nor when it came from the remote store; a `rebuild`
    never pulls)."""
    with run.store.lock(si):
        path = run.store.path(si)
        why = ""
        if run.store.has(si) and rebuild:
            run.store.discard(path)
            why = "rebuilt on request: doit forget or doit -a"
        elif run.store.has(si):  # another process built it while we waited, or it is damaged
            found = problems(path, full=False)
            if not found:
                return False
            run.store.set_aside(path, found)
        run.store.remove_stale(si)  # what a killed build of this key left
        if not rebuild and run.remote is not None and run.remote.pull(run.store, si,
                                                                      work_dir(run)):
            return False
        why = why or explain_miss(read_record(run.layout, image.name, si.stage), si)
        title = stage.title.format(source=image.source.value)
        with contextlib.ExitStack() as reading:
            for upstream in stage.after:  # held while read, so gc leaves them alone
                if upstream != "appliance":
                    reading.enter_context(run.store.using(key(run, STAGE[upstream], image)))
            _make_entry(run, stage, image, si, f"{title} [{image.name}] ({why})")
        return True


def _make_entry(run: Run, stage: Stage, image: Image, si: StageInputs, title: str) -> None:
    with step(title), run.store.new_entry(si) as tmp:
        started = time.monotonic()
        facts = stage.make(run, image, tmp) or {}
        atomic_write_bytes(tmp / BUILD_FILE, json.dumps(
            {"built_at": int(time.time()), "seconds": round(time.monotonic() - started, 3),
             **facts}, indent=1, sort_keys=True).encode())


def is_current(run: Run, stage: Stage, image: Image) -> bool:
    """The stage's entry is in the store, intact, and its stable names point at it."""
    si = key(run, stage, image)
    if not (run.store.has(si) and run.store.intact(si)):
        return False
    path = run.store.path(si)
    out = run.layout.outputs(image.name)
    return all(_same_file(run, path / name, out / dest)
               for name, dest in (stage.stable(path) if stage.stable else []))


def built_for(run: Run, stage: Stage, image: Image) -> bool:
    """The image's own record (artifacts/<image>/.inputs/) names the stage's current key:
    this image built (or linked) that entry last."""
    last = read_record(run.layout, image.name, stage.name)
    return last is not None and last.get("key") == key(run, stage, image).key


def _same_file(run: Run, src: Path, dst: Path) -> bool:
    try:
        return src.samefile(dst) or run.memo.sha256(src) == run.memo.sha256(dst)
    except OSError:
        return False


def built_entry(run: Run, stage: Stage, image: Image) -> Path | None:
    """The stage's entry for the image as configured now, if it is built."""
    try:
        si = key(run, stage, image)
    except PipelineError:  # e.g. no kernel for the VM helper: nothing was packed here
        return None
    return run.store.path(si) if run.store.has(si) else None


def image_entries(run: Run, image: Image) -> list[Path]:
    """The store entries the image's current config uses that exist."""
    return [e for e in (built_entry(run, s, image) for s in STAGES) if e is not None]


def wanted_keys(run: Run) -> set[str]:
    """Every key the current config needs: each image's stages, and the appliance."""
    keys = {k for image in run.config.images.values()
            for s in STAGES if (k := _key_or_none(run, s, image)) is not None}
    with contextlib.suppress(PipelineError):
        keys.add(appliance_inputs(run).key)
    return keys


def collect_garbage(run: Run, keep: int, min_age: float = gc.MIN_AGE) -> gc.Collected:
    """`doit gc`: keep what the config needs, the newest `keep` builds of every image built
    here (whatever config built it) and what was recorded in the last `min_age` seconds;
    gc itself keeps entries a process holds and entries younger than that."""
    remove_stale_run_dirs(run.layout.tmp)  # what killed builds (and a killed gc) left
    run.store.sweep()
    images = run.layout.images()
    wanted = (wanted_keys(run) | recent_keys(run.layout, images, keep)
              | recorded_since(run.layout, images, min_age))
    return gc.collect(run.store, wanted, min_age=min_age)


def _key_or_none(run: Run, stage: Stage, image: Image) -> str | None:
    try:
        return key(run, stage, image).key
    except PipelineError:  # a stage that cannot be keyed now
        return None


# --- the boot test ------------------------------------------------------------------------


def boot_test(run: Run, image: Image) -> dict[str, str]:
    """Boot the image's Baguette disk with ChromeOS's disk layout: the conformance checks for
    a ChromeOS guest (its own init, stand-ins for ChromeOS's daemons), or, for an image built
    without the integration, that its init runs. Returns its os-release where read."""
    zst = run.layout.outputs(image.name) / IMAGE_NAME
    if not zst.is_file():
        raise PipelineError(f"{zst} does not exist", hint="run `doit build:baguette` first")
    vm = guest_for(run, image)
    nix = image.source is SourceKind.NIX
    if not (image.chromeos_integration or nix):
        return _plain_boot(run, image, zst, vm)
    log = run.layout.console_log(image.name, "conformance")
    with step(f"ChromeOS conformance of {image.name} ({vm.accel.value})"):
        report = conformance.run(
            zst, vm, setup_user=_chromeos_user(run, image),
            dotfiles=() if nix else dotfile_names(image.dotfiles), log_path=log,
            work_dir=work_dir(run))
        for line in report.lines():
            info(line)
        checks.require(report, f"verify:{image.name}", str(log))
    _stamp(run, image, zst, {"conformance": "passed"})
    return {}


def _chromeos_user(run: Run, image: Image) -> str:
    """The name the conformance boot has maitred set up: the image's `user`, or for a NixOS
    image the `chromeos.guest.user` its configuration declares ("" when it declares none:
    ChromeOS then adds the user itself, and the user-setup check is left out)."""
    if image.source is not SourceKind.NIX:
        return image.user
    return key(run, BASE, image).inputs.get("user") or ""


def _plain_boot(run: Run, image: Image, zst: Path, vm: Guest) -> dict[str, str]:
    with step(f"Booting {image.name} with ChromeOS's disk layout ({vm.accel.value})"):
        result = boot_image(zst, vm, log_path=run.layout.console_log(image.name, "boot"),
                            work_dir=work_dir(run))
        info(f"booted {result.os_release.get('PRETTY_NAME', '?')} in {result.seconds:.1f} s")
    _stamp(run, image, zst, {"os_release": result.os_release})
    return result.os_release


def _stamp(run: Run, image: Image, zst: Path, facts: dict[str, Any]) -> None:
    stamp = run.layout.outputs(image.name) / "verified.json"
    atomic_write_bytes(stamp, json.dumps({"image": run.memo.sha256(zst), **facts}).encode())
