"""The one way to call Nix: evaluate a flake attribute, build derivations, explain failures.

Nix's own settings are honoured: nothing here writes nix.conf or sets NIX_CONFIG. The only
flag added is `--extra-experimental-features "nix-command flakes"`, which Nix 2.8 (Debian 12's
nix-bin) needs for `nix eval`/`nix build` on a flake and which newer Nix accepts unchanged.
Nix 2.8 can build self-contained flakes, but nixpkgs from 25.11 on refuses it (it needs Nix
2.18 or newer): that refusal is reported in nixpkgs' own words with how to get a newer Nix.

    eval_json(flake, attr, apply)  -> the value, via `nix eval --json` (no build)
    build(drv_paths)               -> {drvPath: {output: storePath}}, via `nix build --json
                                      --no-link --log-format internal-json`; builds are shown
                                      as step lines and a tqdm bar, a failure names the
                                      derivation and its last log lines.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import PipelineError, ToolError
from ..core.log import info, progress
from ..core.run import log_command, require, tool_version

FEATURES = ["--extra-experimental-features", "nix-command flakes"]
LOG_LINES = 25  # of a failed build's log, shown in the error
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# what Nix prints when an input or substitute cannot be fetched
OFFLINE = re.compile(r"unable to download|Could(?:n't| not) resolve host|cannot connect|"
                     r"Connection refused|timed out|Network is unreachable")

# what nixpkgs' default.nix aborts with when the Nix evaluating it is too old: "This version
# of Nixpkgs requires Nix >= 2.18, please upgrade:" (minver.nix), "... requires an
# implementation of Nix with the following features:" from 25.11 (lib/minfeatures.nix)
NIXPKGS_REFUSES = "This version of Nixpkgs requires"
NEWER_NIX = ("nixpkgs 25.11 and newer need Nix 2.18 or newer; Debian 12 has only nix-bin 2.8 "
             "(none in bookworm-backports): install Nix from https://nixos.org/download "
             "(it goes first on PATH), or use Debian 13, whose nix-bin is 2.26")

# Nix's internal-json activity and result types (libutil/logging.hh)
ACT_BUILDS, ACT_BUILD = 104, 105
RES_BUILD_LOG_LINE, RES_PROGRESS, RES_SET_PHASE = 101, 105, 104


class NixError(PipelineError):
    """Nix evaluation or build failed; the message carries Nix's own words, trimmed."""


def nix() -> str:
    try:
        return require("nix")
    except ToolError:
        raise ToolError(
            "this image has source = \"nix\", but Nix is not installed",
            hint="`python3 -m pipeline.hostsetup` installs Debian's nix-bin (or see "
                 "https://nixos.org/download); images with source = \"debian\" or \"tarball\" "
                 "build without Nix") from None


def version() -> tuple[int, ...]:
    return tool_version(nix()) or (0, 0, 0)


def clean(text: str) -> str:
    return _ANSI.sub("", text)


def trim_error(stderr: str, max_lines: int = 14) -> str:
    """Nix's error without the noise: from the last `error:` on, no `--show-trace` advice,
    no blank runs, at most `max_lines` lines."""
    lines = [ln.rstrip() for ln in clean(stderr).splitlines()]
    lines = [ln for ln in lines if ln.strip() and "--show-trace" not in ln
             and not ln.startswith("warning: Git tree") and not ln.startswith("@nix ")]
    starts = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("error:")]
    if starts:
        # a trace ("error: … while evaluating") ends in the real cause: keep the first error
        # line for context when the block is short, else the last one
        first, last = starts[0], starts[-1]
        lines = lines[first:] if len(lines) - first <= max_lines else lines[last:]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["…"]
    return "\n".join(lines) or "(Nix printed nothing)"


def nixpkgs_refusal(stderr: str) -> str | None:
    """nixpkgs' own words when it refuses the Nix evaluating it (what it requires, the
    version found), without the upgrade advice for NixOS users that follows; None when
    the error is something else."""
    text = clean(stderr)
    start = text.find(NIXPKGS_REFUSES)
    if start < 0:
        return None
    lines: list[str] = []
    for line in text[start:].splitlines():
        line = line.strip().rstrip("'").rstrip()
        if line:
            lines.append(line)
        if "please upgrade" in line:
            break
    return "\n".join(lines)


def too_old_for_nixpkgs(stderr: str, what: str) -> NixError | None:
    refusal = nixpkgs_refusal(stderr)
    if refusal is None:
        return None
    return NixError(f"nixpkgs refuses this Nix ({'.'.join(map(str, version()))}) while "
                    f"{what}:\n" + "\n".join(f"  {ln}" for ln in refusal.splitlines()),
                    hint=NEWER_NIX)


def run_nix(args: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`nix [features] ARGS`, its output captured; a run over `timeout` is an error naming
    `what` (the caller reads the exit status)."""
    log_command([nix(), *FEATURES, *args])
    try:
        return subprocess.run([nix(), *FEATURES, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NixError(f"{what} did not finish within {timeout:.0f} s",
                       hint="is Nix fetching inputs over a slow network?") from None


def eval_json(flake: str, attr: str, apply: str | None = None, *,
              timeout: float = 600) -> Any:
    """`nix eval --json FLAKE#ATTR [--apply FN]`: evaluation only, nothing is built."""
    args = ["eval", "--json", f"{flake}#{attr}", *(["--apply", apply] if apply else [])]
    proc = run_nix(args, f"evaluating {flake}#{attr}", timeout)
    if proc.returncode != 0:
        refused = too_old_for_nixpkgs(proc.stderr, f"evaluating {flake}#{attr}")
        if refused is not None:
            raise refused
        raise NixError(
            f"Nix could not evaluate {flake}#{attr}:\n{trim_error(proc.stderr)}",
            hint=_eval_hint(proc.stderr, flake, attr))
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise NixError(f"`nix eval --json` printed no JSON for {flake}#{attr}: {exc}",
                       hint="check the Nix installation (`nix --version`)") from None


def _eval_hint(stderr: str, flake: str, attr: str) -> str:
    text = clean(stderr)
    if "does not provide attribute" in text:
        return (f"the flake has no {attr.removesuffix('.config')}; check `host` in images.toml "
                f"against `nix flake show {flake}`")
    if OFFLINE.search(text):
        return ("an input could not be fetched: the first build needs network to create "
                "flake.lock, later builds use the locked inputs (and Nix's binary cache)")
    if "experimental" in text:
        return f"this Nix has no flakes; {NEWER_NIX}"
    return f"run `nix eval --show-trace {flake}#{attr}` for the full trace"


def show_config(*, timeout: float = 60) -> dict[str, Any]:
    """Nix's effective settings (`nix show-config --json`): name -> value."""
    proc = run_nix(["show-config", "--json"], "`nix show-config`", timeout)
    if proc.returncode != 0:
        raise NixError(f"`nix show-config` failed:\n{trim_error(proc.stderr)}",
                       hint="check the Nix installation (`nix --version`)")
    try:
        raw = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise NixError(f"`nix show-config --json` printed no JSON: {exc}",
                       hint="check the Nix installation (`nix --version`)") from None
    out: dict[str, Any] = {}
    for name, value in raw.items():
        v = value.get("value") if isinstance(value, dict) else value
        out[name] = " ".join(map(str, v)) if isinstance(v, list) else v
    return out


@dataclass
class _BuildLog:
    """Follows `--log-format internal-json`: which derivation each activity builds, its last
    log lines, and the overall count of builds done."""

    bar: Any
    drvs: dict[int, str] = field(default_factory=dict)
    counters: set[int] = field(default_factory=set)  # the "builds" activity: done/expected
    lines: dict[str, deque[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def feed(self, raw: str) -> None:
        if not raw.startswith("@nix "):
            if raw.strip():
                self.other.append(clean(raw.rstrip()))
            return
        try:
            ev = json.loads(raw[5:])
        except json.JSONDecodeError:
            return
        action = ev.get("action")
        if action == "start" and ev.get("type") == ACT_BUILDS:
            self.counters.add(ev["id"])
        elif action == "start" and ev.get("type") == ACT_BUILD:
            drv = (ev.get("fields") or [""])[0]
            self.drvs[ev["id"]] = drv
            self.lines[drv] = deque(maxlen=LOG_LINES)
            info(f"building {drv}")
        elif action == "result":
            fields = ev.get("fields") or []
            kind = ev.get("type")
            drv = self.drvs.get(ev.get("id", -1))
            if kind == RES_BUILD_LOG_LINE and drv is not None and fields:
                self.lines[drv].append(clean(str(fields[0])))
            elif kind == RES_PROGRESS and ev.get("id") in self.counters and len(fields) >= 2 \
                    and fields[1]:
                self.bar.total = fields[1]
                self.bar.n = fields[0]
                self.bar.refresh()
        elif action == "msg" and ev.get("level", 9) == 0:
            self.errors.append(clean(str(ev.get("msg", ""))))

    def failed_drv(self) -> str | None:
        for msg in self.errors:
            m = re.search(r"builder for '([^']+\.drv)' failed", msg)
            if m:
                return m.group(1)
        return None


def build_command(drv_paths: list[str], nix_version: tuple[int, ...]) -> list[str]:
    # a bare .drv path means "its outputs" up to Nix 2.14; later Nix needs `drv^*`
    suffix = "^*" if nix_version >= (2, 15) else ""
    return [nix(), *FEATURES, "build", "--json", "--no-link", "--log-format", "internal-json",
            *(f"{d}{suffix}" for d in drv_paths)]


def build(drv_paths: list[str], *, timeout: float = 6 * 3600) -> dict[str, dict[str, str]]:
    """Realise derivations; returns their outputs by derivation path."""
    argv = build_command(drv_paths, version())
    with progress(0, "nix build", unit="drv") as bar:
        log = _BuildLog(bar)
        log_command(argv)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace")
        assert proc.stderr is not None and proc.stdout is not None
        try:
            for line in proc.stderr:
                log.feed(line)
            out = proc.stdout.read()
            rc = proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise _build_error(log, drv_paths)
    try:
        results = json.loads(out)
        return {r["drvPath"]: dict(r["outputs"]) for r in results}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise NixError(f"`nix build --json` printed no result list: {exc}",
                       hint="check the Nix installation (`nix --version`)") from None


def _build_error(log: _BuildLog, drv_paths: list[str]) -> NixError:
    drv = log.failed_drv()
    if drv is not None:
        tail = "\n".join(f"  | {ln}" for ln in log.lines.get(drv, [])) or "  | (no output)"
        return NixError(f"building {drv} failed; its last log lines:\n{tail}",
                        hint=f"`nix log {drv}` shows the whole log")
    text = "\n".join(log.errors + log.other)
    hint = "check the Nix settings (substituters, sandbox, build users) with `nix show-config`"
    if "build-users-group" in text:
        hint = ("Nix is set to build as users of a group that does not exist: install "
                "Debian's nix-setup-systemd (it creates them and runs nix-daemon), or, "
                "building as root, set `build-users-group =` in /etc/nix/nix.conf")
    return NixError(f"nix build of {' '.join(drv_paths)} failed:\n{trim_error(text)}",
                    hint=hint)
