"""The guest's @@STEP lines as a status line while QEMU runs (on a terminal only)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.core import log
from pipeline.vmhelper import qemu


def _guest(log_path: Path) -> list[str]:
    """A stand-in for QEMU: writes the console as the guest would, then exits."""
    return ["sh", "-c", f"echo '@@BOOTED' >> {log_path}; "
            f"echo '@@STEP 1.52 extracting the rootfs' >> {log_path}; sleep 0.8; "
            f"echo '@@STEP 2.10 setting owners' >> {log_path}; sleep 0.8"]


def test_the_newest_step_is_the_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(log, "showing_progress", lambda: True)
    caplog.set_level(logging.DEBUG, "pipeline")
    console = tmp_path / "console.log"
    console.write_bytes(b"")
    code, _, booted = qemu._wait_qemu(_guest(console), console, 60, 60)
    assert (code, booted) == (0, True)
    err = capsys.readouterr().err
    assert "guest" in err and "extracting the rootfs" in err and "setting owners" in err
    assert "run: sh -c echo '@@BOOTED'" in caplog.text, "--debug shows the QEMU command too"


def test_no_status_off_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(log, "showing_progress", lambda: False)
    console = tmp_path / "console.log"
    console.write_bytes(b"")
    assert qemu._wait_qemu(_guest(console), console, 60, 60)[0] == 0
    assert capsys.readouterr().err == ""
