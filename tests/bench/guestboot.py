"""What every VM helper job pays before its work: the appliance booted in probe mode under TCG
(the job settings: one vCPU, qemu64, JOB_MEMORY_MIB), N times. Prints the medians of the wall
time to /init (@@BOOTED) and to QEMU's exit, and of QEMU's own CPU seconds (steadier than wall
time when other work shares the cores). `python -m tests.bench.guestboot` runs it alone."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

from pipeline.config import Accel
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import qemu_argv

RUNS = int(os.environ.get("BENCH_BOOTS", "5"))


def measure(appliance: Appliance, log: Path, runs: int = RUNS) -> tuple[float, float, float]:
    argv = qemu_argv(appliance, Accel.TCG, [], "appliance.mode=probe", 1024, log, job=True)
    out = []
    for _ in range(runs):
        log.write_bytes(b"")
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        booted = None
        while True:
            pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if booted is None and b"@@BOOTED" in log.read_bytes():
                booted = time.monotonic() - start
            time.sleep(0.01)
        proc.returncode = 0
        out.append((booted or 0.0, time.monotonic() - start, usage.ru_utime + usage.ru_stime))
    return tuple(statistics.median(r[i] for r in out) for i in range(3))  # type: ignore[return-value]


def report(appliance: Appliance, scratch: Path) -> None:
    booted, total, cpu = measure(appliance, scratch / "guestboot.console.log")
    print(f"guest boot (probe, TCG, median of {RUNS}): /init after {booted:.2f} s, exit after "
          f"{total:.2f} s, QEMU CPU {cpu:.2f} s; initramfs "
          f"{appliance.initrd.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    from pipeline import config, stages

    ROOT = Path(__file__).resolve().parent.parent.parent
    ctx = stages.open_run(config.load(ROOT / "images.toml"), None)
    report(stages.appliance(ctx), stages.work_dir(ctx))
