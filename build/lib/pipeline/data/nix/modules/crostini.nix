# A Crostini container: NixOS's own LXC container profile (system.build.tarball and
# system.build.metadata, the two files `lxc image import` takes), adjusted for ChromeOS.
# LXD gives the container its network and DNS (dhcpcd + resolvconf, NixOS's defaults).
{ lib, modulesPath, ... }:
{
  imports = [
    "${modulesPath}/virtualisation/lxc-container.nix"
    ./chromeos-guest.nix
    ./dotfiles.nix
  ];

  chromeos.guest.kind = "crostini";

  # no hostname of our own: the container keeps the one LXD gives it (its name)
  networking.hostName = lib.mkForce "";
  # The container profile sets root's initialHashedPassword to "" (no password); root is
  # locked by chromeos-guest's hashedPassword "!" instead, and two password options on one
  # user make NixOS warn on every evaluation.
  users.users.root.initialHashedPassword = lib.mkForce null;
  # ChromeOS reaches the container through LXD, never over ssh
  services.openssh.enable = lib.mkForce false;
}
