"""A build stopped with SIGTERM (what `kill`, systemd and CI runners send) while QEMU runs
stops QEMU too, as Ctrl-C does; QEMU never outlives the pipeline's process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.tools import sigint_as_from_a_terminal

# the pipeline's QEMU runner, with a stand-in for QEMU that only sleeps
RUNNER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.vmhelper import qemu
    fake = [sys.executable, "-c", "import os, sys, time; "
            "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(10**6)", sys.argv[1]]
    qemu._run_qemu(fake, Path(sys.argv[2]), timeout=10**6, deadline=10**6)
    """)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # exited, not yet reaped by whoever inherited it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_qemu_runs_stops_qemu(tmp_path: Path, sig: signal.Signals) -> None:
    pidfile = tmp_path / "qemu.pid"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(pidfile), str(tmp_path / "log")],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_from_a_terminal)
    while not (pidfile.exists() and pidfile.read_text()):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    qemu_pid = int(pidfile.read_text())
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=300)  # a hang guard, not a time limit
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the pipeline's process ignored {sig.name}") from None
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err, err
    try:
        assert gone(qemu_pid), "QEMU outlived the pipeline"
    finally:
        if not gone(qemu_pid):
            os.kill(qemu_pid, signal.SIGKILL)
