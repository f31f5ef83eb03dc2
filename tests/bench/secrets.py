"""The secret scan on the default image's rootfs against the scan it replaced, in one run.

    .venv/bin/python -m tests.bench.secrets [ROOTFS.tar]

`before` is what the scan did before the rule set came in (commit af5c551): every regular
member read by offset, ELF files skipped, then one regular expression of 12 literals, the
seven hand-written patterns on the files that held one. `after` is secrets.scan. The two
alternate, RUNS times; the medians and their ratio are printed. Without an argument the
rootfs is built through the pipeline if it is not in the store yet. Nothing is asserted.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipeline.core.tarballs import members, open_plain
from pipeline.rootfs import secrets

ROOT = Path(__file__).resolve().parent.parent.parent
RUNS = int(os.environ.get("BENCH_REPEAT", "5"))
_BEFORE_PREFILTER = re.compile(b"|".join(re.escape(lit) for lit in (
    b"PRIVATE KEY", b"AKIA", b"ASIA", b"ws_secret_access_key", b"WS_SECRET_ACCESS_KEY",
    b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_", b"glpat-")))
_BEFORE_RULES = re.compile(
    rb"-----BEGIN (?:OPENSSH |RSA |EC |DSA |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
    rb"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|(?i:aws_secret_access_key)\s*[=:]\s*[A-Za-z0-9/+=]{40}"
    rb"|\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})|\bglpat-[A-Za-z0-9_\-]{20,}")


def before(rootfs: Path) -> int:
    found = 0
    fd = os.open(rootfs, os.O_RDONLY)
    try:
        with open_plain(rootfs) as tf:
            for m in members(tf, rootfs):
                if not m.isreg() or not m.size:
                    continue
                data = os.pread(fd, min(m.size, 64 << 20), m.offset_data)
                if not data.startswith(b"\x7fELF") and _BEFORE_PREFILTER.search(data):
                    found += _BEFORE_RULES.search(data) is not None
    finally:
        os.close(fd)
    return found


def default_rootfs() -> Path:
    from pipeline import config, stages

    cfg = config.load(ROOT / "images.toml")
    ctx = stages.open_run(cfg, config.source_date_epoch())
    image = cfg.image(cfg.build.default_images[0])
    stages.build(ctx, stages.BASE, image)
    return stages.build(ctx, stages.ROOTFS, image) / "rootfs.tar"


def main(argv: list[str]) -> int:
    rootfs = Path(argv[0]) if argv else default_rootfs()
    print(f"secret scan on {rootfs} ({rootfs.stat().st_size / 2**20:.0f} MiB), {RUNS} runs each")
    times: dict[str, list[float]] = {"before": [], "after": []}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(RUNS):
            for name in times:  # interleaved, so drift hits both alike
                start = time.monotonic()
                counts[name] = (before(rootfs) if name == "before"
                                else len(secrets.scan(rootfs, work=Path(work))))
                times[name].append(time.monotonic() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<7} {med:>6.2f} s  ({runs})  findings: {counts[name]}  "
              f"{med / medians['before']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
