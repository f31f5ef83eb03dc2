"""pipeline.run: finding host tools, and running them with useful errors."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from pipeline.core import run as run_mod
from pipeline.core.errors import ToolError
from pipeline.core.run import HOST_TOOLS, require, run, which


@pytest.fixture
def no_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing on PATH and empty sbin directories."""
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    monkeypatch.setattr(run_mod, "SBIN_DIRS", (str(tmp_path / "empty-sbin"),))


def _executable(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho found\n")
    path.chmod(mode)
    return path


# --- which / require -----------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["mkfs.btrfs", "qemu-system-x86_64", "mmdebstrap"])
def test_missing_tool_names_tool_and_package(no_tools: None, tool: str) -> None:
    with pytest.raises(ToolError) as err:
        require(tool)
    assert repr(tool) in err.value.message
    package = HOST_TOOLS[tool]
    assert f"apt-get install {package}" in err.value.hint
    assert repr(package) in err.value.hint
    assert err.value.hint in str(err.value)


def test_missing_unknown_tool_falls_back_to_its_name(no_tools: None) -> None:
    with pytest.raises(ToolError) as err:
        require("frobnicate")
    assert "'frobnicate'" in err.value.message
    assert "apt-get install frobnicate" in err.value.hint


def test_missing_tool_hint_names_a_module_that_exists(no_tools: None) -> None:
    """The suggested `python3 -m MODULE` must be runnable."""
    with pytest.raises(ToolError) as err:
        require("zstd")
    m = re.search(r"python3 -m ([\w.]+)", err.value.hint)
    assert m, err.value.hint
    assert importlib.util.find_spec(m.group(1)) is not None, m.group(1)


def test_which_prefers_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on_path = _executable(tmp_path / "path" / "mytool")
    _executable(tmp_path / "sbin" / "mytool")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setattr(run_mod, "SBIN_DIRS", (str(tmp_path / "sbin"),))
    assert which("mytool") == str(on_path)


def test_which_finds_tools_in_sbin_dirs_off_path(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    first, second = tmp_path / "local-sbin", tmp_path / "sbin"
    _executable(first / "notexec", mode=0o644)  # not executable: skipped
    (first / "adir").mkdir()  # a directory is no tool
    _executable(second / "notexec")
    _executable(second / "adir")
    _executable(second / "mytool")
    monkeypatch.setattr(run_mod, "SBIN_DIRS", (str(first), str(second)))
    assert which("mytool") == str(second / "mytool")
    assert which("notexec") == str(second / "notexec")
    assert which("adir") == str(second / "adir")
    assert which("absent") is None
    assert require("mytool") == str(second / "mytool")


# --- run ------------------------------------------------------------------------------------


def test_failing_command_carries_stderr_tail_and_exit_code() -> None:
    script = "for i in $(seq 1 20); do echo problem-line-$i >&2; done; exit 3"
    with pytest.raises(ToolError) as err:
        run(["sh", "-c", script], hint="do something about it")
    e = err.value
    assert "sh failed (exit 3)" in e.message
    assert "problem-line-20" in e.message and "problem-line-6" in e.message
    assert "problem-line-5\n" not in e.message  # only the tail goes into the message
    assert e.stderr.splitlines() == [f"problem-line-{i}" for i in range(1, 21)]
    assert e.hint == "do something about it"


def test_missing_tool_in_run_is_tool_error(no_tools: None) -> None:
    with pytest.raises(ToolError, match="'busybox' is not installed"):
        run(["busybox", "true"])


def test_timeout_says_it_did_not_finish() -> None:
    with pytest.raises(ToolError) as err:
        run(["sleep", "60"], timeout=1)
    assert "sleep did not finish within 1 s" in err.value.message
    assert err.value.hint


def test_capture_stdout() -> None:
    proc = run(["sh", "-c", "echo out; echo err >&2"], capture_stdout=True)
    assert proc.returncode == 0
    assert proc.stdout == b"out\n"
    assert proc.stderr == b"err\n"
    assert run(["true"]).stdout is None  # not captured unless asked


def test_run_passes_input_env_and_cwd(tmp_path: Path) -> None:
    proc = run(["sh", "-c", 'cat; printf "%s:%s" "$PIPELINE_TEST" "$(pwd)"'],
               input=b"stdin-data|", env={"PIPELINE_TEST": "set"}, cwd=tmp_path,
               capture_stdout=True)
    assert proc.stdout.decode() == f"stdin-data|set:{tmp_path}"


def test_run_takes_absolute_paths_and_pathlike_args(tmp_path: Path) -> None:
    script = _executable(tmp_path / "tool.sh")
    assert run([script, tmp_path], capture_stdout=True).stdout == b"found\n"


@pytest.mark.parametrize("printed, expected", [
    ("mkfs.btrfs, part of btrfs-progs v6.2", (6, 2)),
    ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)", (7, 2, 22)),
    ("nix (Nix) 2.8.0", (2, 8, 0)),
    ("no number here", None),
])
def test_tool_version_reads_what_tools_print(tmp_path: Path, printed: str,
                                             expected: tuple[int, ...] | None) -> None:
    tool = tmp_path / "tool"
    tool.write_text(f"#!/bin/sh\necho '{printed}'\n")
    tool.chmod(0o755)
    assert run_mod.tool_version(str(tool)) == expected


def _showing(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    from pipeline.core import log
    monkeypatch.setattr(log, "showing_progress", lambda: on)
    monkeypatch.setattr(run_mod, "showing_progress", lambda: on)


def test_progress_shows_the_tools_lines_and_bytes_on_a_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _showing(monkeypatch, True)
    run(["sh", "-c", "echo 'I: phase one' >&2; echo 'I: phase two' >&2"], progress="demo")
    err = capsys.readouterr().err
    assert "demo" in err and "I: phase two" in err
    data = tmp_path / "data"
    data.write_bytes(b"x" * 3 * 2**20)
    with open(data, "rb") as f, open(tmp_path / "out", "wb") as o:
        run(["sh", "-c", "sleep 0.5; cat"], stdin=f, stdout=o, progress="copying")
    assert "copying" in capsys.readouterr().err
    assert (tmp_path / "out").stat().st_size == 3 * 2**20
    with pytest.raises(ToolError) as e:  # stderr read for the bar is still the error's
        run(["sh", "-c", "echo 'E: no such package' >&2; exit 3"], progress="demo")
    assert "E: no such package" in str(e.value) and "exit 3" in str(e.value)


def test_no_progress_when_stderr_is_not_a_terminal(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _showing(monkeypatch, False)
    run(["sh", "-c", "echo 'I: phase' >&2"], progress="demo")
    assert capsys.readouterr().err == ""
