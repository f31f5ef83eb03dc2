# A Crostini container: NixOS's own LXC container profile (system.build.tarball and
# system.build.metadata, the two files `lxc image import` takes), adjusted for ChromeOS.
{ lib, modulesPath, ... }:
{
  imports = [ "${modulesPath}/virtualisation/lxc-container.nix" ];

  # the container's name is its hostname (LXD's template), as Crostini expects
  networking.hostName = lib.mkForce "";
  # NixOS's container profile allows root with an empty password; ChromeOS never needs it
  users.users.root.initialHashedPassword = lib.mkForce "!";
  # ChromeOS reaches the container through LXD, never over ssh
  services.openssh.enable = lib.mkForce false;
}
