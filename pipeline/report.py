"""The end of a run, on one screen: a doit reporter (doit's own console output, then a
summary). Per image: each stage that ran (with its time) or was reused from the store, and
where its files are; then any other task that ran.

    summary (27.4 s)
      tiny      base reused, rootfs 1.9 s, lxc 2.2 s
                /home/me/images/artifacts/tiny/lxc/
      other     appliance 3.1 s
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from doit.reporter import ConsoleReporter

from .stages import IMAGE_NAME, STAGE

# where each output stage's files are, under <artifacts>/<image>/
OUTPUT_PATHS: dict[str, Callable[[Path], Path]] = {
    "baguette": lambda out: out / IMAGE_NAME,
    "lxc": lambda out: out / "lxc",
}


class Summary:
    """What happened to each task of a run, in the order doit reported it."""

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts
        self.started = time.monotonic()
        self.begun: dict[str, float] = {}
        self.outcome: dict[str, str] = {}  # task -> "reused" | "12.3 s" | "FAILED"

    def begin(self, name: str) -> None:
        self.begun[name] = time.monotonic()

    def end(self, name: str, failed: bool = False) -> None:
        took = time.monotonic() - self.begun.get(name, time.monotonic())
        self.outcome[name] = "FAILED" if failed else f"{took:.1f} s"

    def reused(self, name: str) -> None:
        self.outcome[name] = "reused"

    def lines(self) -> list[str]:
        images: dict[str, list[str]] = {}
        paths: dict[str, list[Path]] = {}
        other: list[str] = []
        for name, what in self.outcome.items():
            group, _, image = name.partition(":")
            if group not in STAGE or not image:
                if what != "reused" and not name.startswith(("kind:", "build:")):
                    other.append(f"{name} {what}")
                continue
            images.setdefault(image, []).append(f"{group} {what}")
            if group in OUTPUT_PATHS and what != "FAILED":
                paths.setdefault(image, []).append(
                    OUTPUT_PATHS[group](self.artifacts / image))
        if not images and not other:
            return []
        width = max([len(i) for i in images] + [5]) + 2
        out = [f"summary ({time.monotonic() - self.started:.1f} s)"]
        for image, stages in images.items():
            out.append(f"  {image:<{width}}{', '.join(stages)}")
            out += [f"  {'':<{width}}{p}{'/' if p.suffix == '' else ''}"
                    for p in paths.get(image, [])]
        if other:
            out.append(f"  {'other':<{width}}{', '.join(other)}")
        return out


def reporter(artifacts: Path) -> type[ConsoleReporter]:
    """doit's console reporter with the summary at the end (DOIT_CONFIG's `reporter`)."""

    class SummaryReporter(ConsoleReporter):  # type: ignore[misc]
        def __init__(self, outstream: Any, options: dict[str, Any]) -> None:
            super().__init__(outstream, options)
            self.summary = Summary(artifacts)

        def execute_task(self, task: Any) -> None:
            super().execute_task(task)
            if task.actions:
                self.summary.begin(task.name)

        def add_success(self, task: Any) -> None:
            super().add_success(task)
            if task.actions:
                self.summary.end(task.name)

        def add_failure(self, task: Any, fail: Any) -> None:
            super().add_failure(task, fail)
            self.summary.end(task.name, failed=True)

        def skip_uptodate(self, task: Any) -> None:
            super().skip_uptodate(task)
            if task.actions:
                self.summary.reused(task.name)

        def complete_run(self) -> None:
            super().complete_run()
            lines = self.summary.lines()
            if lines:
                self.write("\n" + "\n".join(lines) + "\n")

    return SummaryReporter
