# ChromeOS Linux guests from one NixOS configuration: a Crostini (LXC) container and a
# Baguette (btrfs VM disk) image, for x86_64 and aarch64 Chromebooks. The pipeline builds
# them with `source = "nix"` in images.toml; see README.md here for using the modules from
# your own flake.
#
# There is no flake.lock in the repository: the first build on a machine with network
# creates it (pinning nixpkgs); commit it to make later builds reproducible.
{
  description = "ChromeOS guest images (Crostini container, Baguette VM) from NixOS";

  # The newest stable release (supported until 2026-12-31; the modules also evaluate on
  # later ones). Like every nixpkgs from 25.11 on, it needs Nix 2.18 or newer.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      host = kind: system: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [ self.nixosModules.${kind} ./hosts/sample.nix ];
      };
      # the sample host as one guest kind, per architecture (images.toml names them in `host`)
      sample = kind: {
        "sample-${kind}" = host kind "x86_64-linux";
        "sample-${kind}-aarch64" = host kind "aarch64-linux";
      };
    in
    {
      nixosModules = {
        # a Crostini container: NixOS's LXC container profile + the guest integration
        crostini = ./modules/crostini.nix;
        # a Baguette VM: root on /dev/vdb btrfs, the VM's own daemons, the resize
        baguette = ./modules/baguette.nix;
        # what both import: garcon, sommelier, notificationd, groups, the user, ...
        chromeos-guest = ./modules/chromeos-guest.nix;
        # the user's dotfiles copied into /etc/skel and their home
        dotfiles = ./modules/dotfiles.nix;
      };

      nixosConfigurations = sample "crostini" // sample "baguette";

      # `nix flake init -t <this flake>`: a flake of one's own with images.toml beside it
      templates.default = {
        path = ./template;
        description = "a NixOS configuration as ChromeOS guests (Baguette and Crostini)";
      };
    };
}
