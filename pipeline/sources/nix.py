"""Source `nix`: a NixOS configuration in a flake, built by Nix.

The image's `nixosConfigurations.<host>.config.system.build` must offer `tarball` (the rootfs,
as NixOS's lxc-container module and nix/modules/baguette.nix make it: `$out/tarball/*.tar.xz`)
and may offer `metadata` (LXD metadata: metadata.yaml + templates/, merged by the lxc stage).

The key is the derivation paths from `nix eval` (cheap, nothing is built): when they are
unchanged nothing downstream reruns; any change to a file the flake reads (a module, a
dotfile, flake.lock) changes them. The same evaluation reads which guest the configuration
is (`chromeos.guest.kind`, set by nix/modules; else `boot.isContainer`, which NixOS's
container profile sets), so that a Baguette disk of a container configuration, or the
reverse, is refused before anything is built. The base entry holds base.tar and, when the
host has LXD metadata, lxc-metadata.tar (both plain tars).

Architecture: the same evaluation reads the system the configuration is for
(`nixpkgs.hostPlatform.system`, else the tarball derivation's `system`); one for another
architecture than `arch` is refused, naming both (the flake in nix/ has a `-aarch64` twin of
each sample host). Before building, a derivation whose `system` this Nix cannot build (not its
`system`, not in its `extra-platforms`, no `builders`) is refused in one line that says what
Nix needs: qemu-user through binfmt_misc with `extra-platforms`, or a remote builder.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Image
from ..core.arch import ARCHES, arch
from ..core.errors import PipelineError
from ..store.hashing import FileHashMemo
from ..store.keys import StageInputs
from .nixcli import NixError, eval_json, show_config
from .nixcli import build as nix_build
from .tarball import decompress

VERSION = 3  # 2: the configuration's system; 3: its ChromeOS user
METADATA_TAR = "lxc-metadata.tar"
NIX_SYSTEMS = {a.nix for a in ARCHES.values()}  # others are not guests' (a test's "x")
KINDS = {"crostini": "a Crostini container", "baguette": "a Baguette VM"}
# one evaluation yields both derivation paths (`metadata` is optional) and the guest kind
APPLY = """c: let b = c.system.build; k = c.chromeos.guest.kind or null; in {
  user = c.chromeos.guest.user or null;
  tarball = b.tarball.drvPath;
  system = c.nixpkgs.hostPlatform.system or (b.tarball.system or null);
  builder = b.tarball.system or null;
  metadata = if b ? metadata then b.metadata.drvPath else null;
  kind = if k != null then k
    else if (c.boot.isContainer or null) == null then null
    else if c.boot.isContainer then "crostini" else "baguette";
}"""


def inputs(image: Image, memo: FileHashMemo) -> StageInputs:
    assert image.nix is not None
    value = eval_json(image.nix.flake, image.nix.attribute, APPLY)
    if not isinstance(value, dict) or not str(value.get("tarball", "")).endswith(".drv"):
        raise NixError(f"{image.nix.flake}#{image.nix.attribute}.system.build.tarball is not "
                       "a derivation", hint="a NixOS host needs system.build.tarball (import "
                       "NixOS's lxc-container module or nix/modules/baguette.nix)")
    system = value.get("system")
    want = arch(image.arch).nix
    if system in NIX_SYSTEMS and system != want:
        raise NixError(
            f"images.{image.name}: nixosConfigurations.{image.nix.host} is for {system}, "
            f"but arch = {image.arch!r} ({want})",
            hint=f"set nix.host to the configuration for {want} (nix/ has sample-<kind> and "
                 "sample-<kind>-aarch64), or arch to the configuration's architecture")
    return StageInputs("base", VERSION, {
        "source": "nix",
        "tarball": value["tarball"],
        "system": system,
        "builder": value.get("builder"),
        "metadata": value.get("metadata"),
        "kind": value.get("kind") if value.get("kind") in KINDS else None,
        # the ChromeOS user the configuration declares (nix/modules: chromeos.guest.user),
        # whom `doit verify` has maitred set up
        "user": value["user"] if isinstance(value.get("user"), str) else None,
    })


def wrong_kind(image: Image, kind: str) -> PipelineError:
    """The error for making the other image kind from a configuration of guest `kind`."""
    assert image.nix is not None
    config = f"nixosConfigurations.{image.nix.host}"
    if kind == "crostini":
        what, task, other, module = "a Baguette disk", "baguette", "lxc", "baguette"
    else:
        what, task, other, module = "a Crostini container", "lxc", "baguette", "crostini"
    return PipelineError(
        f"{image.name}: {config} is {KINDS[kind]} configuration; {what} made from it "
        f"({task}:{image.name}) would not work",
        hint=f"build `doit {other}:{image.name}` instead, or set images.{image.name}.nix.host "
             f"to a configuration that imports nixosModules.{module} (nix/ has "
             f"sample-{module})")


def make_base(image: Image, out: Path, si: StageInputs | None = None) -> None:
    assert image.nix is not None and si is not None
    require_platform(image, si.inputs.get("builder"))
    drvs = [d for d in (si.inputs["tarball"], si.inputs["metadata"]) if d]
    outputs = nix_build(drvs)
    decompress(tarball_file(_out(outputs, si.inputs["tarball"]), "system-tarball"), out)
    if si.inputs["metadata"]:
        decompress(tarball_file(_out(outputs, si.inputs["metadata"]), "system-tarball"),
                   out.parent / METADATA_TAR)


def require_platform(image: Image, system: str | None) -> None:
    """Refuse, before `nix build`, a derivation for a system this Nix cannot build."""
    if system is None:
        return
    settings = show_config()
    own = str(settings.get("system", ""))
    extra = str(settings.get("extra-platforms", "")).split()
    if system == own or system in extra or has_builders(str(settings.get("builders", ""))):
        return
    raise NixError(
        f"images.{image.name}: its configuration is built for {system}, which this Nix "
        f"(system {own or '?'}, extra-platforms: {' '.join(extra) or 'none'}) cannot build",
        hint=f"Nix needs `extra-platforms = {system}` in nix.conf with qemu-user registered "
             "through binfmt_misc (`sudo python3 -m pipeline.hostsetup` registers it), or a "
             f"remote builder for {system} (`builders = ssh://HOST {system}`)")


def has_builders(value: str) -> bool:
    """Whether Nix's `builders` names a machine (`@FILE` refers to a machines file)."""
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError:
            return False
        return any(ln.strip() and not ln.lstrip().startswith("#") for ln in text.splitlines())
    return bool(value.strip())


def lxd_metadata(base_entry: Path) -> Path | None:
    """The configuration's own LXD metadata (system.build.metadata), kept beside base.tar."""
    path = base_entry / METADATA_TAR
    return path if path.is_file() else None


def _out(outputs: dict[str, dict[str, str]], drv: str) -> Path:
    try:
        return Path(outputs[drv]["out"])
    except KeyError:
        raise NixError(f"nix build did not report the `out` output of {drv}",
                       hint="the derivation must have an `out` output") from None


def tarball_file(out: Path, kind: str) -> Path:
    """The tarball in a make-system-tarball output: named in nix-support/hydra-build-products,
    else the one file under tarball/; an output that is itself a file is taken as is."""
    if out.is_file():
        return out
    products = out / "nix-support" / "hydra-build-products"
    if products.is_file():
        for line in products.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "file" and fields[1] == kind:
                return Path(fields[2])
    found = sorted(p for p in (out / "tarball").glob("*.tar*") if p.is_file()) \
        if (out / "tarball").is_dir() else []
    if len(found) == 1:
        return found[0]
    raise PipelineError(f"{out} holds no single tarball",
                        hint="expected $out/tarball/<name>.tar.xz, as NixOS's "
                             "make-system-tarball writes it")
