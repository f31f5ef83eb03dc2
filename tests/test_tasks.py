"""pipeline/tasks.py: the doit wiring of the stage table, without a doit subprocess: the task
creators, their dependencies and docs, the store-lookup `uptodate` hook (InStore) and what it
says in `doit info`, and how an action's error reaches doit (TaskFailed, no traceback).

The project is the tiny busybox tarball image (tests/support/projects.py): its base, rootfs
and lxc stages build without a VM; pack and baguette are only wired here, never built."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain
from doit.exceptions import TaskFailed

from pipeline import config, stages, tasks
from pipeline.core.errors import PipelineError
from pipeline.store.layout import FILES_FILE
from tests.support.projects import built, write_project

SDE = 1_700_000_000
BUILDABLE = (stages.BASE, stages.ROOTFS, stages.LXC)  # no VM needed
OTHER = """
[images.other]
source = "tarball"
dotfiles = ""
hostname = "elsewhere"
[images.other.tarball]
path = "rootfs.tar"
"""
EXPECTED_DEPS = {
    "base": [],
    "rootfs": ["base:{n}"],
    "pack": ["rootfs:{n}", "appliance"],
    "baguette": ["pack:{n}"],
    "lxc": ["rootfs:{n}"],
}


def two_images(tmp_path: Path) -> Path:
    """The tiny project plus a second image that is not a default one."""
    toml = write_project(tmp_path)
    toml.write_text(toml.read_text() + OTHER)
    return toml


def make_creators(toml: Path) -> dict[str, Callable[[], Any]]:
    return tasks.creators(config.load(toml), SDE)


def group(creators: dict[str, Callable[[], Any]], name: str) -> list[dict[str, Any]]:
    """The task dicts of a group (a creator returns one dict or yields several)."""
    made = creators[f"task_{name}"]()
    return [made] if isinstance(made, dict) else list(made)


def stage_task(creators: dict[str, Callable[[], Any]], stage: str,
               image: str = "tiny") -> dict[str, Any]:
    (task,) = [t for t in group(creators, stage) if t["name"] == image]
    return task


def in_store(task: dict[str, Any]) -> tasks.InStore:
    (hook,) = task["uptodate"]
    assert isinstance(hook, tasks.InStore)
    return hook


def doit(creators: dict[str, Callable[[], Any]], tmp_path: Path, *args: str) -> int:
    """doit in this process, on these creators (its state file under tmp_path)."""
    namespace: dict[str, Any] = dict(creators)
    namespace["DOIT_CONFIG"] = {"dep_file": str(tmp_path / ".doit.db"), "backend": "json",
                                "verbosity": 2}
    return DoitMain(ModuleTaskLoader(namespace)).run(list(args))


# --- the tasks and their dependencies ----------------------------------------------------------


def test_one_creator_per_stage_and_group(tmp_path: Path) -> None:
    creators = make_creators(write_project(tmp_path))
    names = {n.removeprefix("task_") for n in creators}
    assert {s.name for s in stages.STAGES} == {"base", "rootfs", "pack", "baguette", "lxc"}
    assert {"base", "rootfs", "pack", "baguette", "lxc", "appliance", "build", "verify", "gc",
            "fsck", "publish", "check", "bench"} <= names
    assert all(n.startswith("task_") for n in creators)


def test_one_task_per_stage_per_image_with_its_dependencies(tmp_path: Path) -> None:
    creators = make_creators(two_images(tmp_path))
    for stage, deps in EXPECTED_DEPS.items():
        made = group(creators, stage)
        assert [t["name"] for t in made] == ["tiny", "other"], stage
        for t in made:
            assert t["task_dep"] == [d.format(n=t["name"]) for d in deps], (stage, t["name"])
            assert len(t["actions"]) == 1
            assert in_store(t).stage is stages.stage(stage)
            assert in_store(t).image.name == t["name"]


def test_build_and_verify_cover_the_default_images_only(tmp_path: Path) -> None:
    creators = make_creators(two_images(tmp_path))
    build = {t["name"]: t["task_dep"] for t in group(creators, "build")}
    assert build == {"baguette": ["baguette:tiny"], "lxc": ["lxc:tiny"]}
    verify = {t["name"]: t["task_dep"] for t in group(creators, "verify")}
    assert verify == {"tiny": ["baguette:tiny", "appliance"],
                      "other": ["baguette:other", "appliance"],
                      "baguette": ["verify:tiny"]}


def test_every_group_has_its_doit_list_line(tmp_path: Path) -> None:
    creators = make_creators(write_project(tmp_path))
    docs = {name.removeprefix("task_"): (fn.__doc__ or "").strip()
            for name, fn in creators.items()}
    assert all(docs.values()), [n for n, d in docs.items() if not d]
    assert len(set(docs.values())) == len(docs)  # no two groups share a line
    for stage in stages.STAGES:
        assert docs[stage.name].startswith(f"{stage.name}:<image>: "), docs[stage.name]
        assert len(docs[stage.name]) > len(f"{stage.name}:<image>: ") + 10
    assert "--keep" in docs["gc"]


def test_task_docs_name_the_image_and_the_real_artifacts_path(tmp_path: Path) -> None:
    creators = make_creators(write_project(tmp_path))
    artifacts = tmp_path / "artifacts"
    for stage in stages.STAGES:
        doc = stage_task(creators, stage.name)["doc"]
        assert "tiny" in doc and "{" not in doc and "<artifacts>" not in doc, doc
    assert stage_task(creators, "base")["doc"] == "base rootfs of tiny (tarball)"
    assert str(artifacts / "tiny" / stages.IMAGE_NAME) in stage_task(creators, "baguette")["doc"]
    assert f"{artifacts / 'tiny' / 'lxc'}/" in stage_task(creators, "lxc")["doc"]


def test_doit_list_shows_every_task_with_its_doc(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    creators = make_creators(write_project(tmp_path))
    assert doit(creators, tmp_path, "list", "--all") == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    for stage in stages.STAGES:
        assert lines[stage.name] == f"{stage.name}:<image>: {stage.summary}"
        assert lines[f"{stage.name}:tiny"] == stage_task(creators, stage.name)["doc"]
    assert lines["gc"] == creators["task_gc"].__doc__
    assert {"build:baguette", "build:lxc", "verify:baguette", "verify:tiny",
            "check:nix"} <= lines.keys()


def test_gc_has_a_keep_parameter(tmp_path: Path) -> None:
    (gc_task,) = group(make_creators(write_project(tmp_path)), "gc")
    keep, min_age = gc_task["params"]
    assert (keep["name"], keep["long"], keep["default"]) == ("keep", "keep", 2)
    assert (min_age["name"], min_age["long"]) == ("min_age", "min-age")
    assert keep["type"]("0") == 0 and min_age["type"]("15") == 15
    assert min_age["default"] > 0, "entries built in the last minutes are kept by default"
    assert gc_task["uptodate"] == [False]


def test_gc_action_keeps_the_newest_keep_entries(tmp_path: Path) -> None:
    built(write_project(tmp_path, description="first"))
    second = built(write_project(tmp_path, description="second"))
    current = stages.key(second, stages.LXC, second.config.image("tiny")).key
    (gc_task,) = group(make_creators(tmp_path / "images.toml"), "gc")
    (collect,) = gc_task["actions"]

    def lxc_entries() -> list[str]:
        return [e.name for e in second.store.entries()["lxc"]]

    assert collect(keep=0) is None  # just built: the age guard keeps both
    assert len(lxc_entries()) == 2
    assert collect(keep=2, min_age=0) is None
    assert len(lxc_entries()) == 2
    assert collect(keep=0, min_age=0) is None
    assert lxc_entries() == [current]
    assert len(second.store.entries()["rootfs"]) == 1


# --- up to date: a store lookup ---------------------------------------------------------------


def test_not_up_to_date_before_a_build_and_says_why(tmp_path: Path) -> None:
    creators = make_creators(write_project(tmp_path))
    for stage in stages.STAGES:
        hook = in_store(stage_task(creators, stage.name))
        assert hook() is False, stage.name
    for stage in BUILDABLE:
        hook = in_store(stage_task(creators, stage.name))
        assert str(hook) == (f"{stage.name} of tiny: not in the store "
                             "(no previous build of this image)")


def test_up_to_date_after_the_stage_is_built(tmp_path: Path) -> None:
    creators = make_creators(write_project(tmp_path))
    hooks = {s.name: in_store(stage_task(creators, s.name)) for s in BUILDABLE}
    run = hooks["base"].run
    image = run.config.image("tiny")
    for stage in BUILDABLE:
        assert hooks[stage.name]() is False
        stages.build(run, stage, image)
        assert hooks[stage.name]() is True, stage.name
    assert in_store(stage_task(creators, "pack"))() is False  # never packed here
    # the next doit invocation loads the config anew: still up to date
    again = make_creators(tmp_path / "images.toml")
    for stage in BUILDABLE:
        assert in_store(stage_task(again, stage.name))() is True, stage.name


def test_the_stage_action_builds_the_entry(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    creators = make_creators(write_project(tmp_path))
    for stage in BUILDABLE:
        task = stage_task(creators, stage.name)
        (action,) = task["actions"]
        done = action()  # what doit records of the run (`doit forget` clears it)
        assert done == {"key": stages.key(in_store(task).run, stage,
                                          in_store(task).image).key}
        assert in_store(task)() is True
    out = capsys.readouterr().out  # an output stage says how to load what it made
    assert "lxc image import metadata.tar.xz rootfs.tar.xz --alias tiny" in out
    assert (tmp_path / "artifacts" / "tiny" / "lxc" / "fingerprint").is_file()


def test_a_missing_stable_name_is_in_the_store_not_yet_published(tmp_path: Path) -> None:
    built(write_project(tmp_path))
    (tmp_path / "artifacts" / "tiny" / "lxc" / "rootfs.tar.xz").unlink()
    hook = in_store(stage_task(make_creators(tmp_path / "images.toml"), "lxc"))
    assert hook() is False
    assert str(hook) == "lxc of tiny: in the store, not yet published"


def test_a_dotfile_change_is_named(tmp_path: Path) -> None:
    toml = write_project(tmp_path)
    toml.write_text(toml.read_text().replace('dotfiles = ""', 'dotfiles = "dots"'))
    (tmp_path / "dots").mkdir()
    (tmp_path / "dots" / ".bashrc").write_text("alias ll='ls -l'\n")
    (tmp_path / "dots" / ".vimrc").write_text("set number\n")
    built(toml)
    (tmp_path / "dots" / ".bashrc").write_text("alias ll='ls -la --color'\n")
    creators = make_creators(toml)
    rootfs = in_store(stage_task(creators, "rootfs"))
    assert rootfs() is False
    assert str(rootfs) == "rootfs of tiny: not in the store (changed: dotfiles/.bashrc)"
    assert in_store(stage_task(creators, "base"))() is True  # the base does not read them


def test_a_config_change_is_named(tmp_path: Path) -> None:
    built(write_project(tmp_path))
    write_project(tmp_path, description="another description")
    creators = make_creators(tmp_path / "images.toml")
    lxc = in_store(stage_task(creators, "lxc"))
    assert lxc() is False
    assert str(lxc) == "lxc of tiny: not in the store (changed: description)"
    assert in_store(stage_task(creators, "rootfs"))() is True


def test_doit_info_prints_the_reason(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert doit(make_creators(write_project(tmp_path)), tmp_path, "lxc:tiny") == 0
    write_project(tmp_path, description="another description")
    creators = make_creators(tmp_path / "images.toml")
    assert doit(creators, tmp_path, "info", "lxc:tiny") == 1  # 1: not up to date
    out = capsys.readouterr().out
    assert "lxc of tiny: not in the store (changed: description)" in out
    assert doit(creators, tmp_path, "info", "rootfs:tiny") == 0
    assert "status     : up-to-date" in capsys.readouterr().out


def test_an_unkeyable_stage_is_not_up_to_date_and_says_why(tmp_path: Path) -> None:
    """No usable kernel for the VM helper: pack and baguette cannot be keyed, and say why."""
    (tmp_path / "vmlinuz-9.9.9-test").write_bytes(b"not a kernel")
    creators = make_creators(write_project(
        tmp_path, extra=f'kernel = "{tmp_path / "vmlinuz-9.9.9-test"}"'))
    for stage in ("pack", "baguette"):
        hook = in_store(stage_task(creators, stage))
        assert hook() is False
        assert str(hook) == "tiny: no modules for kernel 9.9.9-test in /lib/modules/9.9.9-test"
    assert str(in_store(stage_task(creators, "lxc"))).startswith("lxc of tiny: not in the store")


def test_a_damaged_entry_is_explained_as_damaged(tmp_path: Path) -> None:
    run = built(write_project(tmp_path))
    entry = stages.entry(run, stages.LXC, run.config.image("tiny"))
    metadata = entry / "metadata.tar.xz"
    assert f"  {metadata.stat().st_size}  metadata.tar.xz" in (entry / FILES_FILE).read_text()
    data = bytearray(metadata.read_bytes())
    data[40] ^= 0xFF  # same size, other bytes
    metadata.write_bytes(bytes(data))
    hook = in_store(stage_task(make_creators(tmp_path / "images.toml"), "lxc"))
    assert hook() is False
    assert str(hook) != "lxc of tiny: in the store, not yet published"
    assert "damaged" in str(hook)


# --- errors reach doit as TaskFailed ----------------------------------------------------------


def failing(exc: BaseException) -> Callable[[], None]:
    def fn() -> None:
        raise exc
    return fn


def test_a_pipeline_error_is_a_task_failure_with_its_hint() -> None:
    result = tasks._action(failing(PipelineError("the base rootfs is corrupt",
                                                 hint="give a tar archive")))()
    assert isinstance(result, TaskFailed)
    assert result.message == "error: the base rootfs is corrupt\n  hint: give a tar archive"
    assert result.traceback == ""


def test_a_successful_action_returns_nothing() -> None:
    done: list[int] = []
    assert tasks._action(lambda: done.append(1))() is None
    assert done == [1]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_said_plainly(code: int) -> None:
    result = tasks._action(failing(OSError(code, "No space left", "/art/store/x.tmp")))()
    assert isinstance(result, TaskFailed)
    assert result.message.startswith(
        "error: the disk is full writing /art/store/x.tmp; nothing half-written was kept\n"
        "  hint: free space under artifacts/ (`doit gc`)")
    assert result.traceback == ""


def test_a_full_disk_without_a_file_name() -> None:
    result = tasks._action(failing(OSError(errno.ENOSPC, "No space left on device")))()
    assert isinstance(result, TaskFailed)
    assert result.message.startswith("error: the disk is full; nothing half-written was kept")


def test_other_os_errors_name_the_path_or_propagate() -> None:
    result = tasks._action(failing(PermissionError(errno.EACCES, "Permission denied",
                                                   "/art/store")))()
    assert isinstance(result, TaskFailed)
    assert result.message == ("error: Permission denied: /art/store\n"
                              "  hint: check that path's permissions and its disk")
    with pytest.raises(OSError, match="no path"):  # a bug, not the user's: doit shows it
        tasks._action(failing(OSError(errno.EIO, "no path")))()


def test_an_interrupt_is_a_task_failure() -> None:
    result = tasks._action(failing(KeyboardInterrupt()))()
    assert isinstance(result, TaskFailed)
    assert result.message == "interrupted; nothing half-written was kept"


def test_a_failing_stage_reaches_doit_without_a_traceback(tmp_path: Path) -> None:
    toml = write_project(tmp_path)
    (tmp_path / "rootfs.tar").write_bytes(b"not a tarball at all\n" * 100)
    creators = make_creators(toml)
    (action,) = stage_task(creators, "base")["actions"]
    result = action()
    assert isinstance(result, TaskFailed)
    assert result.message.startswith(f"error: {tmp_path / 'rootfs.tar'} is not a rootfs tarball")
    assert "\n  hint: " in result.message
    report = tmp_path / "doit.out"
    assert doit(creators, tmp_path, "run", "-o", str(report), "rootfs:tiny") != 0
    text = report.read_text()
    assert "TaskFailed - taskid:base:tiny\nerror: " in text
    assert "hint: give a tar archive" in text
    assert "Traceback" not in text
    assert "rootfs:tiny" not in text.replace("taskid:base:tiny", "")  # never started
    assert not (tmp_path / "artifacts" / "store" / "base").is_dir() or not any(
        (tmp_path / "artifacts" / "store" / "base").iterdir())
    assert json.loads((tmp_path / ".doit.db").read_text() or "{}").get("rootfs:tiny") is None
