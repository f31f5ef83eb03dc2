"""Step announcements: every stage says what it does and how long it took.

    with step("Packing btrfs image"):
        ...

prints `==> Packing btrfs image` and, when done, `<== Packing btrfs image (3.2 s)`; nested
steps are indented. Messages go to stderr so stdout stays free for results.
"""

from __future__ import annotations

import contextlib
import logging
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
        disable=not sys.stderr.isatty(),
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
