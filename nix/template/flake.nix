# My ChromeOS Linux guests: one NixOS configuration as a Baguette VM disk and as a Crostini
# container. `cros-guest build:baguette` (or `doit`, with a dodo.py from `cros-guest init`)
# builds what images.toml names; `cros-guest check:nix` checks this flake.
{
  description = "ChromeOS guests from my NixOS configuration";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
  # the modules: this project's nix/ directory. OWNER/REPO is where the project is hosted
  # (as in the `nix flake init -t` command you ran); a checkout works as path:/abs/nix
  inputs.cros-guest.url = "github:OWNER/REPO?dir=nix";
  inputs.cros-guest.inputs.nixpkgs.follows = "nixpkgs";

  outputs = { nixpkgs, cros-guest, ... }:
    let
      guest = kind: nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [ cros-guest.nixosModules.${kind} ./host.nix ];
      };
    in
    {
      nixosConfigurations.baguette = guest "baguette";
      nixosConfigurations.crostini = guest "crostini";
    };
}
