"""A self-contained flake shaped like a NixOS configuration, for tests with the real Nix.

A real NixOS evaluation needs nixpkgs and its binary cache, which the test machines cannot
reach. This flake has no inputs: `nixosConfigurations.testhost.config.system.build` offers
`tarball` and `metadata` derivations laid out as NixOS's make-system-tarball lays them out
($out/tarball/*.tar.xz, $out/nix-support/hydra-build-products), built by /bin/sh from host
tools (busybox-static, tar, xz). Everything else is the real path: `nix eval` for the key,
`nix build --json --no-link` for the outputs, the pipeline's stages for the images.

NIX_TEST_CONFIG is the test environment's Nix settings (the user's are never touched):
no substituters (no network here), no sandbox (the builder uses host tools) and no build
users (nix-bin without the daemon package has no nixbld group).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.run import which
from tests.support.tools import tool_missing

NIX_TEST_CONFIG = "\n".join([
    "experimental-features = nix-command flakes",
    "substituters =",
    "sandbox = false",
    "build-users-group =",
])

FLAKE = r"""{
  description = "Test stand-in for a NixOS configuration: same attribute shape, no nixpkgs";
  outputs = { self }:
    let
      system = "x86_64-linux";
      motd = builtins.readFile ./motd;  # a file the configuration reads
      tarball = derivation {
        name = "nixos-system-x86_64-linux.tar.xz";
        inherit system motd;
        builder = "/bin/sh";
        args = [ ./make-rootfs.sh ];
        failWith = FAIL;
      };
      metadata = derivation {
        name = "nixos-lxc-metadata.tar.xz";
        inherit system;
        builder = "/bin/sh";
        args = [ ./make-metadata.sh ];
        # NixOS writes metadata.yaml with lib.generators.toYAML, which emits JSON
        metadataYaml = builtins.toJSON {
          architecture = "x86_64";
          creation_date = 1;
          properties = { description = "NixOS test"; os = "nixos"; release = "testing"; };
          templates."/etc/nixos-container-name" = {
            when = [ "create" "copy" ];
            template = "container-name.tpl";
            properties = { };
          };
        };
      };
    in {
      nixosConfigurations.testhost.config.system.build = { inherit tarball metadata; };
    };
}
"""

MAKE_ROOTFS = r"""set -eu
export PATH=/usr/bin:/bin
if [ "$failWith" != 0 ]; then
  echo "compiling the world"; echo "error: the test asked this build to fail" >&2
  exit "$failWith"
fi
echo "making the test rootfs"
r=$PWD/root
mkdir -p $r/bin $r/sbin $r/etc $r/dev $r/proc $r/sys $r/run $r/tmp $r/root
mkdir -p $r/nix/store/00000000000000000000000000000000-hello/bin
cp /bin/busybox $r/bin/busybox
for a in sh cat ls sleep hostname true id; do ln -s busybox $r/bin/$a; done
printf '#!/bin/sh\nexec /bin/busybox sleep 1000000\n' > $r/sbin/init
chmod 755 $r/sbin/init
printf '#!/bin/sh\necho hello\n' > $r/nix/store/00000000000000000000000000000000-hello/bin/hello
chmod 555 $r/nix/store/00000000000000000000000000000000-hello/bin/hello
printf 'NAME=NixOS\nID=nixos\nVERSION_CODENAME=testing\nVERSION_ID="test"\n' > $r/etc/os-release
printf '%s' "$motd" > $r/etc/motd
echo /nix/store/00000000000000000000000000000000-hello > $r/nix-path-registration
mkdir -p $out/tarball $out/nix-support
tar -C $r --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner -c . \
  | xz -1 > $out/tarball/nixos-system-x86_64-linux.tar.xz
echo "file system-tarball $out/tarball/nixos-system-x86_64-linux.tar.xz" \
  > $out/nix-support/hydra-build-products
"""

MAKE_METADATA = r"""set -eu
export PATH=/usr/bin:/bin
m=$PWD/meta
mkdir -p $m/templates $out/tarball $out/nix-support
printf '%s\n' "$metadataYaml" > $m/metadata.yaml
printf '%s\n' '{{ container.name }} (from the NixOS metadata)' > $m/templates/container-name.tpl
tar -C $m --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner -c . \
  | xz -1 > $out/tarball/nixos-lxc-metadata.tar.xz
echo "file system-tarball $out/tarball/nixos-lxc-metadata.tar.xz" \
  > $out/nix-support/hydra-build-products
"""


def write_flake(directory: Path, *, motd: str = "welcome\n", fail_with: int = 0,
                flake_nix: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flake.nix").write_text(
        flake_nix if flake_nix is not None else FLAKE.replace("FAIL", str(fail_with)))
    (directory / "make-rootfs.sh").write_text(MAKE_ROOTFS)
    (directory / "make-metadata.sh").write_text(MAKE_METADATA)
    (directory / "motd").write_text(motd)
    return directory


def require_nix() -> None:
    """Skip where Nix or busybox is missing; in CI (CI=true) that is a failure."""
    missing = [t for t in ("nix", "nix-instantiate") if which(t) is None]
    if not Path("/bin/busybox").is_file():
        missing.append("/bin/busybox")
    if missing:
        tool_missing(f"missing {', '.join(missing)} "
                     "(run `python3 -m pipeline.hostsetup --tests`: nix-bin, busybox-static)")


@pytest.fixture
def nix_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's own Nix settings, for this process and the doit processes it starts."""
    require_nix()
    monkeypatch.setenv("NIX_CONFIG", NIX_TEST_CONFIG)
