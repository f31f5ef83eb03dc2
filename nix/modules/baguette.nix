# A Baguette VM: ChromeOS boots its own kernel with the tools disk as /dev/vda and this
# image as /dev/vdb (`root=/dev/vdb rw`), straight into /sbin/init. So: no boot loader, no
# initrd, no kernel of our own; the VM's daemons (vshd, maitred, port_listener) from the
# tools disk; the root filesystem grown to the disk on every boot (ChromeOS resizes the
# disk, not the filesystem). The pipeline packs system.build.tarball into the btrfs image.
{ config, lib, pkgs, modulesPath, ... }:

let
  tools = "/opt/google/cros-containers";
  daemon = description: command: extra: lib.recursiveUpdate {
    inherit description;
    wantedBy = [ "multi-user.target" ];
    after = [ "opt-google-cros\\x2dcontainers.mount" ];
    requires = [ "opt-google-cros\\x2dcontainers.mount" ];
    serviceConfig = {
      ExecStart = "${tools}/bin/${command}";
      Restart = "always";
      RestartSec = 1;
    };
  } extra;
in
{
  boot.loader.grub.enable = false;
  boot.initrd.enable = false;
  boot.kernel.enable = false;
  boot.isContainer = false;

  fileSystems."/" = { device = "/dev/vdb"; fsType = "btrfs"; };
  fileSystems.${tools} = {
    device = "LABEL=cros-vm-tools";
    fsType = "ext4";
    options = [ "ro" "nofail" ];
  };
  # ChromeOS mounts shared folders and the stateful disk here
  systemd.tmpfiles.rules = [ "d /mnt/shared 0755 root root -" "d /mnt/stateful 0755 root root -" ];

  systemd.services = {
    vshd = daemon "ChromeOS vsh daemon" "vshd" { };
    maitred = daemon "ChromeOS maitred" "maitred" {
      # maitred runs usermod and friends
      path = [ pkgs.shadow pkgs.util-linux pkgs.coreutils ];
    };
    cros-port-listener = daemon "ChromeOS port listener" "port_listener" { };
    baguette-resize = {
      description = "Grow the root btrfs to the disk ChromeOS gave the VM";
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${pkgs.btrfs-progs}/bin/btrfs filesystem resize max /";
      };
    };
  };

  # the rootfs tarball the pipeline packs, laid out as NixOS's container tarball is
  system.build.tarball = pkgs.callPackage "${modulesPath}/../lib/make-system-tarball.nix" {
    fileName = "nixos-baguette-${pkgs.stdenv.hostPlatform.system}";
    storeContents = [{ object = config.system.build.toplevel; symlink = "none"; }];
    contents = [{ source = config.system.build.toplevel + "/init"; target = "/sbin/init"; }];
    extraCommands = "mkdir -p proc sys dev run tmp mnt/shared mnt/stateful";
  };
}
