"""`doit bench` runs in the runtime venv, which has no pytest: nothing the benchmarks import
(tests/bench, tests/support helpers they use) may import pytest, directly or indirectly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys
sys.modules["pytest"] = None  # `import pytest` raises ImportError, as in the runtime venv
import tests.bench.__main__, tests.bench.incremental, tests.bench.guestboot
import tests.bench.remote
"""


def test_the_benchmarks_import_without_pytest() -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_doit_bench_runs_the_benchmarks_with_the_venv_python() -> None:
    from pipeline import config, tasks

    creators = tasks.creators(config.load(ROOT / "images.toml"), None)
    task = creators["task_bench"]()
    (action,) = task["actions"]
    assert action.action == [sys.executable, "-m", "tests.bench"]
    assert action.pkwargs["cwd"] == str(ROOT), "run from the checkout, wherever doit runs"
    assert action.shell is False, "a list with shell=True runs its first word alone"


def test_doit_bench_outside_a_checkout_says_so(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import config, tasks

    monkeypatch.setattr(tasks, "CHECKOUT", tmp_path)  # an installed package: no tests/
    (action,) = tasks.creators(config.load(ROOT / "images.toml"), None)["task_bench"]()[
        "actions"]
    failed = action()
    assert "the benchmarks are not installed" in failed.message
    assert "run `doit bench` in a checkout" in failed.message
