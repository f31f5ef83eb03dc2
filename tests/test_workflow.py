"""The CI workflow (.github/workflows/) passes actionlint, and actionlint here does catch a
broken workflow (so a pass means something)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.tools import tool_missing
from tests.support.workflow import workflow_problems

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def actionlint() -> str:
    """The actionlint binary (the test extra installs it into the venv); skipped where it is
    missing, a failure in CI (CI=true), where every tool is installed."""
    found = shutil.which("actionlint") or shutil.which(
        "actionlint", path=str(Path(sys.executable).parent))
    if found is None:
        tool_missing("actionlint is not installed (run `python3 -m pipeline.hostsetup --tests`)")
    return found


def lint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint(), "-no-color", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, check=False)


def test_the_workflow_exists_and_runs_the_readme_commands() -> None:
    assert [p.name for p in WORKFLOWS] == ["build.yml"]
    text = WORKFLOWS[0].read_text()
    assert "bash .ci/run" in text  # the README's test command, with CI=true
    assert ".venv/bin/doit build:baguette build:lxc baguette:bookworm-arm64" in text
    assert 'images = ["bookworm", "bookworm-arm64"]' in text, "one index over both arches"
    assert 'remote = \\"$remote\\"' in text and "oci://ghcr.io/" in text, "the store on GHCR"
    assert "packages: write" in text
    assert "doit publish --verify" in text
    assert "startsWith(github.ref, 'refs/tags/v')" in text
    assert "doit refresh:all" in text, "the monthly run refreshes the bases"
    assert "python3 -m pipeline.publish.pkgdiff" in text, "releases carry a package diff"
    assert "-manifest.json" in text and "find site/images -mindepth 3" in text, (
        "every file of each version (both image kinds, the manifest) is released")


def test_the_workflow_pins_caches_and_refreshes() -> None:
    assert workflow_problems(WORKFLOWS[0].read_text()) == []


def test_the_pin_and_credential_checks_catch_a_loose_workflow() -> None:
    text = WORKFLOWS[0].read_text()
    loose = re.sub(r"actions/checkout@[0-9a-f]{40}", "actions/checkout@v4", text, count=1)
    loose = loose.replace("persist-credentials: false", "fetch-depth: 1", 1)
    loose = loose.replace('cron: "17 4 1 * *"', 'cron: "17 4 * * *"')
    assert workflow_problems(loose) == ["not pinned by commit: actions/checkout@v4",
                                        "a checkout keeps its credentials",
                                        "no monthly schedule"]


def test_actionlint_passes_on_the_workflows() -> None:
    proc = lint(*WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOWS[0].read_text().replace("runs-on: ubuntu-latest",
                                                       "runs_on: ubuntu-latest", 1)
                      .replace("${{ matrix.arch }}", "${{ matrix.archh }}", 1))
    proc = lint(broken)
    assert proc.returncode != 0
    assert "runs_on" in proc.stdout and "archh" in proc.stdout, proc.stdout
