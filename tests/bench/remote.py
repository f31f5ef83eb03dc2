"""A cold build with a warm remote, as a ratio of a cold build (the goal: at most 15%).

The shipped images.toml's default image, through the doit CLI, against Debian's
docker-registry on 127.0.0.1 (TLS, htpasswd; tests/support/registry.py):
  machine A   an empty artifacts directory, `[cache] push = true`: the cold build, which
              pushes each stage as it is built (the pushes are timed apart, from their step
              lines, and taken out of the cold figure)
  machine B   another empty artifacts directory, the same config: every stage is pulled
The ratio is B's wall time over A's without its pushes. Nothing is asserted; `python -m
tests.bench.remote` runs it alone, and `doit bench` with the others.
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.registry import running_registry

ROOT = Path(__file__).resolve().parent.parent.parent


def config_for(work: Path, name: str, remote: str, push: bool) -> Path:
    """The shipped images.toml with its own artifacts directory and the remote."""
    text = (ROOT / "images.toml").read_text()
    text = text.replace("[build]", f'[build]\nartifacts = "{work / name / "artifacts"}"', 1)
    text = text.replace('dotfiles = "dotfiles"', f'dotfiles = "{ROOT / "dotfiles"}"')
    text += f'\n[cache]\nremote = "{remote}"\npush = {"true" if push else "false"}\n'
    path = work / f"{name}.toml"
    path.write_text(text)
    return path


def build(config: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "doit", "run", "-f", str(ROOT / "dodo.py"),
                           "--db-file", str(config.with_suffix(".db")), "build:baguette"],
                          env=dict(os.environ, **env, IMAGES_TOML=str(config)),
                          capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-3000:])
    return took, proc.stderr


def step_seconds(log: str, verb: str) -> float:
    return sum(float(m.group(1)) for m in
               re.finditer(rf"^\s*<== {verb} .* \((\d+(?:\.\d+)?) s\)$", log, re.M))


def per_stage(log: str, verb: str) -> str:
    """'base 1.2 s, rootfs 3.4 s, ...' from the step lines."""
    return ", ".join(f"{m.group(1)} {m.group(2)} s" for m in
                     re.finditer(rf"^\s*<== {verb} (\S+) \S+ .* \((\d+(?:\.\d+)?) s\)$",
                                 log, re.M))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-remote.") as tmp:
        work = Path(tmp)
        with running_registry(work / "registry") as reg:
            remote = f"oci://{reg.host}/bench/guest-cache"
            env = reg.env()
            cold, log_a = build(config_for(work, "a", remote, push=True), env)
            pushing = step_seconds(log_a, "Pushing")
            warm, log_b = build(config_for(work, "b", remote, push=False), env)
            pulling = step_seconds(log_b, "Pulling")
            built = [t for t in ("Base rootfs from", "Customizing", "Packing", "Compressing",
                                 "Building the VM helper") if f"==> {t}" in log_b]
            image = Path("bookworm") / "baguette_rootfs.img.zst"
            same = filecmp.cmp(work / "a" / "artifacts" / image, work / "b" / "artifacts" / image,
                               shallow=False)
            sent = sum(f.stat().st_size for f in (work / "registry" / "storage").rglob("*")
                       if f.is_file())
    local = cold - pushing
    print(f"cold build with a warm remote (the default image, registry on 127.0.0.1): "
          f"{warm:.1f} s (pulling {pulling:.1f} s) against a cold build of {local:.1f} s "
          f"(+ {pushing:.1f} s pushing, {sent / 2**20:.0f} MiB in the registry): "
          f"{warm / local:.0%} of a cold build (goal: at most 15%)"
          + (f"; built on B anyway: {', '.join(built)}" if built else "; nothing built on B")
          + ("; B's image is A's byte for byte" if same else "; B's image DIFFERS from A's"))
    print(f"  pulls: {per_stage(log_b, 'Pulling')}")
    print(f"  pushes: {per_stage(log_a, 'Pushing')}")


if __name__ == "__main__":
    main()
