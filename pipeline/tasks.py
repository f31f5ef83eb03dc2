"""The doit layer: wires the stage table of stages.py into tasks. No stage logic lives here.

Tasks (see `doit list`):
    build:baguette        every default image's baguette_rootfs.img.zst
    build:lxc             every default image's Crostini container (metadata + rootfs)
    verify:baguette       boot every default image with ChromeOS's disk layout
    <stage>:<image>       one stage of one image: base, rootfs, pack, baguette, lxc
    kind:<stage>-<image>  a NixOS image's configuration is for the guest the stage makes
    verify:<image>        check one image's store entries (fsck), then boot it
    fsck                  check every store entry against its recorded hashes
    gc                    free store entries the config does not need
    publish               lay out what is built as a static image server (publish/)
    publish --verify      re-read a published tree and check every hash and the index
    appliance             the VM helper's kernel + initramfs
    refresh:<image>       the next build of a Debian image makes a new base (refresh:all)
    check:nix             the config's flakes parse and pass `nix flake check`
    bench                 the benchmarks in tests/bench/ (a checkout only)

Up-to-date checks are store lookups (doit's `uptodate` hook), never doit's md5 of multi-GB
files: a no-op run hashes no artifact. doit's own record of a run is part of it, so `doit
forget` and `doit -a` build a stage again (InStore). A stage error is reported as doit's
TaskFailed with the pipeline's message and hint, without a Python traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from doit.action import CmdAction
from doit.exceptions import TaskFailed
from doit.globals import Globals

from . import report, stages
from .config import Config, Image
from .core.errors import PipelineError
from .publish import tree as published_tree
from .sources import nixcheck
from .stages import IMAGE_NAME, OUTPUTS, STAGES, Run, Stage
from .store import fsck, gc
from .store.layout import explain_miss, read_record

T = TypeVar("T")


def _action(fn: Callable[[], object]) -> Callable[[], TaskFailed | dict[str, Any] | None]:
    """A doit action calling fn: an error is a TaskFailed with its message and hint; a dict
    fn returns is what doit records for the task (its `values`)."""
    def run() -> TaskFailed | dict[str, Any] | None:
        try:
            result = fn()
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
        return result if isinstance(result, dict) else None

    return run


@dataclass
class InStore:
    """doit's `uptodate` hook for a stage: is its output in the store (and do the image's
    stable names point at it), and has doit recorded a run of the task? `doit info TASK`
    prints str(self), which says why the task would run, as the build's own log line does.

    doit's record is what `doit forget` clears: a task without one is not up to date, and
    its action builds the entry again even though the store has it; so does `doit -a`,
    which runs the action of a task this hook found current (`verdict` tells the action)."""

    run: Run
    stage: Stage
    image: Image
    verdict: str = ""  # "current", "stale" (not in the store, or names moved), "forgotten"

    def __call__(self, task: object = None, values: dict[str, Any] | None = None) -> bool:
        try:
            current = stages.is_current(self.run, self.stage, self.image)
            ours = current and stages.built_for(self.run, self.stage, self.image)
        except PipelineError:
            current = ours = False
        finally:
            self.run.memo.save()  # hashes found while checking serve the next run (if new)
        if values is not None and not values.get("key"):
            # no record of doit's: built again if this image's last build of the stage is
            # the entry there (forgotten); an entry another image (a shared base) or another
            # process built meanwhile is reused
            self.verdict = "forgotten" if ours else "stale"
            return False
        self.verdict = "current" if current else "stale"
        return current

    @property
    def rebuild(self) -> bool:
        """doit runs the action although the entry is current (-a) or forgotten."""
        return self.verdict in ("current", "forgotten")

    def __str__(self) -> str:
        try:
            si = stages.key(self.run, self.stage, self.image)
            if self.verdict == "forgotten" and self.run.store.has(si):
                return (f"{si.stage} of {self.image.name}: in the store, but doit has no "
                        "record of it (doit forget, or a new doit state): built again")
            if self.run.store.has(si) and not self.run.store.intact(si):
                return f"{si.stage} of {self.image.name}: in the store but damaged (rebuilt)"
            if self.run.store.has(si):
                return f"{si.stage} of {self.image.name}: in the store, not yet published"
            why = explain_miss(read_record(self.run.layout, self.image.name, si.stage), si)
            return f"{si.stage} of {self.image.name}: not in the store ({why})"
        except PipelineError as exc:
            return f"{self.image.name}: {exc.message}"


def load_instructions(image: Image, path: Path) -> str:
    return (f"Load it on a Chromebook: copy {path.name} to the Downloads folder, then in "
            f"crosh (Ctrl+Alt+T):\n  vmc create --vm-type BAGUETTE --size 15G "
            f"--source /home/chronos/user/MyFiles/Downloads/{path.name} {image.name}\n"
            f"  vmc start --vm-type BAGUETTE {image.name}")


def lxc_instructions(image: Image, files: list[Path], fp: str) -> str:
    names = " ".join(f.name for f in files)
    return (f"Load it in Crostini: copy {names} into the Linux files, then in the termina VM "
            f"(crosh: vsh termina):\n  lxc image import {names} --alias {image.name}\n"
            f"  lxc launch {image.name} {image.name}-1\n"
            f"LXD fingerprint: {fp}")


def _announce(run: Run, stage: Stage, image: Image, entry: Path) -> None:
    """What a user does with an output stage's files."""
    out = run.layout.outputs(image.name)
    if stage is stages.BAGUETTE:
        print(f"\n{image.name}: {out / IMAGE_NAME}\n"
              f"{load_instructions(image, out / IMAGE_NAME)}\n")
    elif stage is stages.LXC:
        files = [out / "lxc" / f for f in stages.lxc_files(entry)]
        fp = (entry / "fingerprint").read_text().strip()
        print(f"\n{image.name}: {', '.join(map(str, files))}\n"
              f"{lxc_instructions(image, files, fp)}\n")


# the stages whose guest kind a NixOS configuration must match (checked before its base is
# built: doit runs a task's task_dep in order, and the guard comes first)
KIND_CHECKED = (stages.PACK, stages.LXC)


def _kind_guard(stage: Stage, image: Image) -> list[str]:
    return [f"kind:{stage.name}-{image.name}"] if image.nix and stage in KIND_CHECKED else []


def _stage_task(run: Run, stage: Stage, image: Image) -> dict[str, Any]:
    check = InStore(run, stage, image)

    def make() -> dict[str, str]:
        entry = stages.build(run, stage, image, rebuild=check.rebuild)
        if stage in OUTPUTS:
            _announce(run, stage, image, entry)
        return {"key": entry.name}  # doit's record of the run (what `doit forget` clears)

    n = image.name
    doc = stage.doc.format(image=n, source=image.source.value).replace(
        "<artifacts>", str(run.layout.root))
    return {
        "name": n, "doc": doc,
        "actions": [_action(make)],
        "uptodate": [check],
        "task_dep": _kind_guard(stage, image)
        + [d if d == "appliance" else f"{d}:{n}" for d in stage.after],
        "verbosity": 2,
    }


def _kind(run: Run) -> Iterator[dict[str, Any]]:
    """kind:<stage>-<image>: refuse a NixOS configuration of the other guest kind, up front"""
    for image in run.config.images.values():
        for stage in KIND_CHECKED:
            if _kind_guard(stage, image):
                yield _kind_task(run, stage, image)


def _kind_task(run: Run, stage: Stage, image: Image) -> dict[str, Any]:
    def matches() -> bool:
        try:
            stages.check_kind(run, stage, image)
        except PipelineError:
            return False  # the action reports it
        return True
    return {"name": f"{stage.name}-{image.name}",
            "doc": f"{image.name}'s NixOS configuration is for the guest {stage.name} makes",
            "actions": [_action(lambda: stages.check_kind(run, stage, image))],
            "uptodate": [matches], "verbosity": 2}


def _verify_task(run: Run, image: Image) -> dict[str, Any]:
    return {
        "name": image.name,
        "doc": f"check {image.name}'s store entries, then boot it with ChromeOS's disk layout",
        "actions": [_action(lambda: fsck.check(run.store, stages.image_entries(run, image))),
                    _action(lambda: stages.boot_test(run, image))],
        "task_dep": [f"baguette:{image.name}", "appliance"],
        "verbosity": 2,
    }


# --- one creator per task group; each docstring is its line in `doit list` ----------------


def _per_image(run: Run, stage: Stage) -> Iterator[dict[str, Any]]:
    for image in run.config.images.values():
        yield _stage_task(run, stage, image)


def _verify(run: Run) -> Iterator[dict[str, Any]]:
    """verify:baguette boots the default images the way ChromeOS does"""
    for image in run.config.images.values():
        yield _verify_task(run, image)
    defaults = run.config.build.default_images
    yield {"name": "baguette", "doc": f"boot the default images ({', '.join(defaults)})",
           "actions": None, "task_dep": [f"verify:{n}" for n in defaults]}


def _appliance(run: Run) -> dict[str, Any]:
    """the VM helper's appliance (host kernel + small initramfs)"""
    def current() -> bool:
        try:
            return run.store.has(stages.appliance_inputs(run))
        except PipelineError:
            return False  # the action reports it
    return {"actions": [_action(lambda: stages.appliance(run))], "uptodate": [current],
            "verbosity": 2}


def _build(run: Run) -> Iterator[dict[str, Any]]:
    """build:baguette / build:lxc build the default images (Baguette / Crostini)"""
    defaults = run.config.build.default_images
    for stage, what in ((stages.BAGUETTE, "Baguette disks"), (stages.LXC, "Crostini containers")):
        yield {"name": stage.name,
               "doc": f"build the default images' {what} ({', '.join(defaults)})",
               "actions": None, "task_dep": [f"{stage.name}:{n}" for n in defaults]}


class Count:
    """A param's type: a whole number of at least `minimum`. doit turns the ValueError into
    its own one-line parse error (exit 3), before any task runs."""

    def __init__(self, flag: str, minimum: int, what: str) -> None:
        self.flag, self.minimum, self.what = flag, minimum, what

    def __call__(self, text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or value < self.minimum:
            raise ValueError(f"{self.flag}={text!r} is not a whole number of {self.minimum} "
                             f"or more\n  hint: give {self.what}, e.g. "
                             f"{self.flag}={max(self.minimum, 2)}")
        return value

    def __str__(self) -> str:
        return f"(a whole number, {self.minimum} or more)"


def _refresh(run: Run) -> Iterator[dict[str, Any]]:
    """refresh:<image> makes the next build fetch a new Debian base (archive updates)"""
    names = []
    for image in run.config.images.values():
        if image.source in stages.REFRESHABLE:
            names.append(image.name)
            yield {"name": image.name,
                   "doc": f"the next build of {image.name} runs mmdebstrap again (a new base "
                          "with the archive's updates, then every stage after it)",
                   "actions": [_action(partial(stages.refresh, run, image))],
                   "uptodate": [False], "verbosity": 2}
    defaults = [n for n in run.config.build.default_images if n in names]
    yield {"name": "all", "doc": f"refresh the default images' bases ({', '.join(defaults)})",
           "actions": None, "task_dep": [f"refresh:{n}" for n in defaults]}


def _gc(run: Run) -> dict[str, Any]:
    """free store entries the config does not need (keeps the newest --keep N)"""
    def collect(keep: int, min_age: int = gc.MIN_AGE // 60) -> TaskFailed | None:
        return _action(lambda: stages.collect_garbage(run, keep, min_age * 60))()
    return {
        "actions": [collect],
        "params": [{"name": "keep", "long": "keep", "default": 2,
                    "type": Count("--keep", 0, "the number of builds to keep per stage and image"),
                    "help": "newest entries to keep per stage and image (of every config "
                            "that built here), besides what images.toml needs"},
                   {"name": "min_age", "long": "min-age",
                    "type": Count("--min-age", 0, "a number of minutes"),
                    "default": gc.MIN_AGE // 60,
                    "help": "minutes: entries built (or recorded by a build) more recently "
                            "are kept, whatever config built them"}],
        "uptodate": [False],
        "verbosity": 2,
    }


def _fsck(run: Run) -> dict[str, Any]:
    """check every store entry against the sizes and hashes recorded with it"""
    return {"actions": [_action(lambda: fsck.check_store(run.store))], "uptodate": [False],
            "verbosity": 2}


def _check(run: Run) -> Iterator[dict[str, Any]]:
    """check:nix checks the config's flakes (parse, then `nix flake check`)"""
    names = ", ".join(str(p) for p in nixcheck.flakes(run.config))
    yield {
        "name": "nix",
        "doc": f"parse every .nix file of {names}, then `nix flake check` it (needs network "
               "for nixpkgs; says so where there is none)",
        "actions": [_action(lambda: nixcheck.check_all(run.config))],
        "uptodate": [False],
        "verbosity": 2,
    }


def _publish(run: Run) -> dict[str, Any]:
    """lay out what is built as a static image server (--verify: check one)"""
    def publish(verify: bool) -> TaskFailed | None:
        def act() -> None:
            if verify:
                published_tree.verify_tree(run.config.publish.dir)
                return
            done = published_tree.publish(run)
            print(f"\npublished: {done.root} "
                  f"({', '.join(f'{i} {v}' for i, v in sorted(done.versions.items()))})\n"
                  f"{published_tree.remote_instructions(run.config.publish.base_url, done)}\n")
        return _action(act)()
    return {
        "actions": [publish],
        "params": [{"name": "verify", "long": "verify", "type": bool, "default": False,
                    "help": "only re-read the published tree and check every hash and "
                            "the index (publishes nothing)"}],
        "uptodate": [False],
        "verbosity": 2,
    }


CHECKOUT = Path(__file__).resolve().parents[1]  # the benchmarks exist in a checkout only


def _bench(run: Run) -> dict[str, Any]:
    """benchmarks (tests/bench/, a checkout only): ratios against baselines measured in one run"""
    if not (CHECKOUT / "tests" / "bench").is_dir():
        return {"actions": [_action(_no_bench)], "uptodate": [False], "verbosity": 2}
    # a list, not a shell line: shell=False (doit's CmdAction would hand the shell its first
    # word only, a bare python reading an empty stdin)
    return {"actions": [CmdAction([sys.executable, "-m", "tests.bench"], shell=False,
                                  cwd=str(CHECKOUT))],
            "uptodate": [False], "verbosity": 2}


def _no_bench() -> None:
    raise PipelineError("the benchmarks are not installed (they live in the checkout's "
                        "tests/bench/)", hint="run `doit bench` in a checkout of the project")


GROUPS: dict[str, Callable[[Run], Any]] = {
    "appliance": _appliance, "build": _build, "verify": _verify, "gc": _gc, "fsck": _fsck,
    "check": _check, "publish": _publish, "bench": _bench, "kind": _kind,
    "refresh": _refresh}


def _creator(make: Callable[[], Any], doc: str) -> Callable[[], Any]:
    def creator() -> Any:
        exit_on_config_error(_check_doit_state)
        return make()
    creator.__doc__ = doc
    return creator


# groups holding a task per image beside fixed ones: an image may not take a fixed name
FIXED_NAMES = {"verify": ("baguette",), "refresh": ("all",)}


def check_names(config: Config) -> None:
    """Refuse an image whose tasks would collide with a group's own (verify:baguette boots
    the default images, so an image named `baguette` cannot have its verify:<image>)."""
    for group, fixed in FIXED_NAMES.items():
        for name in fixed:
            if name in config.images:
                raise PipelineError(
                    f"images.{name}: the name {name!r} is taken by the task {group}:{name} "
                    f"({GROUPS[group].__doc__})",
                    hint=f"rename the image (e.g. [images.my-{name}]); for a NixOS host of "
                    f"that name keep it in the flake and set nix.host = \"{name}\"")


def creators(config: Config, source_date_epoch: int | None) -> dict[str, Callable[[], Any]]:
    """doit task creators by name (`task_<name>`), each with the docstring `doit list` shows:
    one group per stage of the table (`<stage>:<image>`), and the groups above."""
    check_names(config)
    run = stages.open_run(config, source_date_epoch)
    out = {name: _creator(partial(group, run), group.__doc__ or "")
           for name, group in GROUPS.items()}
    for stage in STAGES:
        out[stage.name] = _creator(partial(_per_image, run, stage),
                                   f"{stage.name}:<image>: {stage.summary}")
    return {f"task_{name}": fn for name, fn in out.items()}


def _check_doit_state() -> None:
    """doit writes its state file after the last task: one it cannot write would end a
    successful build in a traceback, so say it before anything runs. doit has opened the
    file (Globals.dep_manager) when it calls the task creators."""
    manager = Globals.dep_manager
    if manager is None:
        return
    state = Path(manager.name).absolute()
    for path in (state, state.parent):  # SQLite writes a journal beside the file
        if path.exists() and not os.access(path, os.W_OK):
            raise PipelineError(
                f"doit's state {state} is not writable ({path} is read-only): doit could not "
                "record this run", hint=f"make it writable (chmod u+w {path}), or remove "
                f"{state.name}: doit starts a new one (and, having no record of any task, "
                "builds each stage again once, as after `doit forget --all`)")


def doit_config(state_dir: Path, artifacts: Path) -> dict[str, Any]:
    """DOIT_CONFIG: doit's state in `state_dir` (the directory of images.toml), a summary
    of the run at its end (report.py)."""
    return {
        "reporter": report.reporter(artifacts),
        "default_tasks": ["build:baguette"],
        "verbosity": 2,
        # sqlite commits atomically: a build killed while doit saves its state (or a power
        # cut) cannot leave a half-written file that stops every later run, as json can
        "dep_file": str(state_dir / ".doit.db.sqlite"),
        "backend": "sqlite3",
        "par_type": "thread",  # `doit -n 2`: stages are I/O- and QEMU-bound, threads suffice
    }


def exit_on_config_error(fn: Callable[[], T]) -> T:
    """Load the config for dodo.py; a config error ends doit with the message, not a trace."""
    try:
        return fn()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
