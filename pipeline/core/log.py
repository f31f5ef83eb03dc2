"""Step announcements: every stage says what it does and how long it took.

    with step("Packing btrfs image"):
        ...

prints `==> Packing btrfs image` and, when done, `<== Packing btrfs image (3.2 s)`; nested
steps are indented. Messages go to stderr so stdout stays free for results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

_depth = [0]


def _emit(line: str) -> None:
    print("  " * _depth[0] + line, file=sys.stderr, flush=True)


def info(message: str) -> None:
    _emit(f"    {message}")


def warn(message: str) -> None:
    _emit(f"    warning: {message}")


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    _emit(f"==> {title}")
    start = time.monotonic()
    _depth[0] += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _depth[0] -= 1
        took = time.monotonic() - start
        _emit(f"<== {title} ({took:.1f} s){'' if ok else ' FAILED'}")


def progress(total: int, desc: str, unit: str = "B"):  # type: ignore[no-untyped-def]
    """A tqdm bar on stderr (total 0: unknown), quiet when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total or None,
        desc=desc,
        unit=unit,
        unit_scale=True,
        unit_divisor=1024 if unit == "B" else 1000,
        file=sys.stderr,
        disable=not showing_progress(),
        leave=False,
    )


def enable_debug() -> None:
    """Show the pipeline's debug log on stderr: every command it runs (core.run), and more."""
    logger = logging.getLogger("pipeline")
    if any(getattr(h, "pipeline_debug", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("    debug: %(message)s"))
    handler.pipeline_debug = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def showing_progress() -> bool:
    """Progress bars are for a person: stderr is a terminal (never in CI logs)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class Status:
    """A one-line status under the current step (tqdm with no total): the newest phase a
    tool reported, and optionally bytes done; nothing at all when not showing_progress()."""

    def __init__(self, desc: str, total: int = 0) -> None:
        self.enabled = showing_progress()
        self._bar = progress(total, desc) if self.enabled else None
        if self._bar is not None and not total:  # no bytes to count: the time and the line
            self._bar.bar_format = "{desc}: {elapsed} {postfix}"

    def line(self, text: str) -> None:
        if self._bar is not None and text.strip():
            self._bar.set_postfix_str(text.strip()[:60], refresh=True)

    def position(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
