"""pipeline/conformance/: the report of a run, the tools disk's tree, the stand-ins' script."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.conformance import checks, toolsdisk
from pipeline.core.errors import GuestError
from pipeline.core.run import which


def all_pass(kind: str, setup_user: bool = True) -> str:
    return "".join(f"@@CHECK {n} PASS\n" for n, _ in checks.expected(kind, setup_user)) + \
        "@@CONFORMANCE DONE\n"


def test_every_expected_check_passing_is_a_clean_report() -> None:
    report = checks.parse("noise\n" + all_pass("baguette"), "baguette", True)
    assert report.finished and report.failed == []
    names = [v.name for v in report.verdicts]
    assert names[:3] == ["boot", "dbus", "logind"] and "resize" in names
    checks.require(report, "verify:x", "log")  # nothing raised


def test_a_missing_verdict_is_a_failure_that_says_what_it_meant() -> None:
    output = all_pass("baguette").replace("@@CHECK garcon PASS\n", "")
    report = checks.parse(output, "baguette", True)
    (failed,) = report.failed
    assert failed.name == "garcon" and failed.detail.startswith("no verdict (garcon runs as")


def test_require_names_each_failed_check_on_its_own_line() -> None:
    output = all_pass("crostini").replace("@@CHECK dbus PASS",
                                          "@@CHECK dbus FAIL no system bus")
    report = checks.parse(output, "crostini", True)
    with pytest.raises(GuestError) as err:
        checks.require(report, "verify:img", "/logs/c.log")
    msg = err.value.message
    assert "1 of 20 ChromeOS checks failed (dbus)" in msg
    assert "\n  FAIL  dbus " in msg and "no system bus" in msg and "/logs/c.log" in msg
    assert err.value.hint and err.value.console_log == "/logs/c.log"


def test_kinds_differ_where_chromeos_does() -> None:
    vm = {n for n, _ in checks.expected("baguette", False)}
    ct = {n for n, _ in checks.expected("crostini", False)}
    assert {"tools-mount", "maitred", "vshd", "resolv.conf", "resize", "udevd"} <= vm - ct
    assert {"gshadow", "no-vm-units", "network"} <= ct - vm
    assert "user-setup" not in vm and "user-setup" in {
        n for n, _ in checks.expected("baguette", True)}


def test_a_verdict_the_list_does_not_know_still_shows() -> None:
    report = checks.parse(all_pass("baguette") + "@@CHECK extra FAIL why\n", "baguette", True)
    assert report.verdict("extra").detail == "why" and len(report.failed) == 1


def test_tools_tree_holds_the_standins_and_the_settings(tmp_path: Path) -> None:
    if which("busybox") is None:
        pytest.skip("busybox-static is not installed")
    settings = toolsdisk.Settings("baguette", "alice", "/dev/ttyS1", (".bashrc", "my dir"))
    tree = toolsdisk.write_tree(tmp_path / "t", settings)
    for tool in toolsdisk.STANDIN_TOOLS:
        assert (tree / "bin" / tool).resolve() == (tree / "bin" / "cros-standin").resolve()
    script = (tree / "bin" / "cros-standin").read_bytes()
    assert script.startswith(b"#!/opt/google/cros-containers/bin/busybox sh\n")
    conf = (tree / "etc" / "standin.conf").read_text()
    assert "SETUP_USER=alice\n" in conf and "KIND=baguette\n" in conf
    assert (tree / "etc" / "dotfiles").read_text() == ".bashrc\nmy dir\n"
    assert (tree / "bin" / "busybox").stat().st_mode & 0o111


def test_the_standin_script_parses_in_busybox_sh() -> None:
    busybox = which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed")
    script = Path(checks.__file__).with_name("standin.sh")
    subprocess.run([busybox, "sh", "-n", str(script)], check=True)
    broken = script.read_text().replace("esac\n", "", 1)
    assert subprocess.run([busybox, "sh", "-n", "-c", broken],
                          capture_output=True).returncode != 0, "sh -n does check syntax"


def test_the_unknown_tool_name_is_refused(tmp_path: Path) -> None:
    busybox = which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed")
    link = tmp_path / "nonsense"
    link.symlink_to(Path(checks.__file__).with_name("standin.sh"))
    r = subprocess.run([busybox, "sh", str(link)], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown tool nonsense" in r.stderr
