# ChromeOS Linux guests from one NixOS configuration: a Crostini (LXC) container and a
# Baguette (btrfs VM disk) image. The pipeline builds them with `source = "nix"` in
# images.toml; see README.md here for using the modules from your own flake.
#
# There is no flake.lock in the repository: the first build on a machine with network
# creates it (pinning nixpkgs); commit it to make later builds reproducible.
{
  description = "ChromeOS guest images (Crostini container, Baguette VM) from NixOS";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      host = guest: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [ self.nixosModules.${guest} ./hosts/sample.nix ];
      };
    in
    {
      nixosModules = {
        # what every ChromeOS guest needs: garcon, sommelier, notificationd, groups, ...
        chromeos-guest = ./modules/chromeos-guest.nix;
        # the user's dotfiles copied into their home
        dotfiles = ./modules/dotfiles.nix;
        # a Crostini container: NixOS's LXC container profile + the guest integration
        crostini = {
          imports = [ ./modules/crostini.nix ./modules/chromeos-guest.nix ./modules/dotfiles.nix ];
        };
        # a Baguette VM: root on /dev/vdb btrfs, the VM's own daemons, first-boot resize
        baguette = {
          imports = [ ./modules/baguette.nix ./modules/chromeos-guest.nix ./modules/dotfiles.nix ];
        };
      };

      # The sample host, once per guest kind; images.toml names them in `host`.
      nixosConfigurations = {
        sample-crostini = host "crostini";
        sample-baguette = host "baguette";
      };
    };
}
