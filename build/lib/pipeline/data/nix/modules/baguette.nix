# A Baguette VM: ChromeOS boots its own kernel with the tools disk as /dev/vda and this
# image as /dev/vdb (`root=/dev/vdb rw`), straight into /sbin/init. So: no boot loader, no
# initrd, no kernel or modules of our own; the VM's daemons (vshd, maitred, port_listener)
# from the tools disk; maitred configures eth0 and DNS; the root filesystem grown to the
# disk on every boot (ChromeOS resizes the disk, not the filesystem). The pipeline packs
# system.build.tarball into the btrfs image.
{ config, lib, options, pkgs, modulesPath, ... }:

let
  tools = "/opt/google/cros-containers";
  toolsMount = "opt-google-cros\\x2dcontainers.mount";
  toplevel = config.system.build.toplevel;
  nix = config.nix.package.out;
  bootspecSettable = options.boot.bootspec ? enable
    && (options.boot.bootspec.enable.visible or true);
  daemon = description: command: extra: lib.recursiveUpdate {
    inherit description;
    wantedBy = [ "multi-user.target" ];
    after = [ toolsMount ];
    requires = [ toolsMount ];
    serviceConfig = {
      ExecStart = "${tools}/bin/${command}";
      Restart = "always";
      RestartSec = 1;
    };
  } extra;
in
{
  imports = [ ./chromeos-guest.nix ./dotfiles.nix ];

  chromeos.guest.kind = "baguette";

  boot.loader.grub.enable = false;
  # nixos-rebuild's boot loader: points /sbin/init at the new generation
  boot.loader.initScript.enable = true;
  boot.initrd.enable = false;
  boot.kernel.enable = false;
  boot.isContainer = false;
  # no modules to load: ChromeOS's kernel has what the VM needs built in
  boot.modprobeConfig.enable = false;
  # Up to NixOS 26.05 bootspec names a kernel, which pulls one into the image. Later
  # releases follow boot.kernel.enable and keep boot.bootspec.enable only as a removed
  # option (hidden), whose definition fails the evaluation.
  boot.bootspec = lib.optionalAttrs bootspecSettable { enable = false; };

  fileSystems."/" = { device = "/dev/vdb"; fsType = "btrfs"; };
  # The tools disk, as ChromeOS's own image mounts it: before local-fs.target. (A `nofail`
  # fileSystems entry is not ordered before it, so the user's session could start first
  # and the user units' ConditionPathExists skip them for good.)
  systemd.mounts = [{
    what = "LABEL=cros-vm-tools";
    where = tools;
    type = "ext4";
    options = "ro";
    wantedBy = [ "local-fs.target" ];
    before = [ "local-fs.target" "umount.target" ];
    conflicts = [ "umount.target" ];
    unitConfig.DefaultDependencies = false;
    mountConfig.TimeoutSec = "10";
  }];
  systemd.services."user@${toString config.chromeos.guest.uid}" = {
    overrideStrategy = "asDropin";
    after = [ toolsMount ];
    wants = [ toolsMount ];
  };
  # ChromeOS mounts shared folders and the stateful disk here
  systemd.tmpfiles.rules = [ "d /mnt/shared 0755 root root -" "d /mnt/stateful 0755 root root -" ];

  # maitred configures eth0 and writes /run/resolv.conf; the ChromeOS host is `arc`
  networking.dhcpcd.enable = false;
  networking.resolvconf.enable = false;
  environment.etc."resolv.conf".source = "/run/resolv.conf";
  networking.hosts."100.115.92.2" = [ "arc" ];

  systemd.services = {
    vshd = daemon "ChromeOS vsh daemon" "vshd" { };
    maitred = daemon "ChromeOS maitred" "maitred" {
      # ChromeOS's own order, then what maitred runs by name (btrfs to resize, mount)
      environment.PATH = lib.mkForce ("${tools}/bin:/usr/sbin:/usr/bin:/sbin:/bin:"
        + lib.makeBinPath [ pkgs.btrfs-progs pkgs.util-linux pkgs.shadow pkgs.coreutils ]);
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
    # the tarball's store paths into Nix's database, and the system profile nixos-rebuild
    # needs, once (NixOS's LXC container does the same)
    register-nix-paths = {
      description = "Register the image's store paths with Nix";
      wantedBy = [ "sysinit.target" ];
      before = [ "sysinit.target" "shutdown.target" "nix-daemon.socket" "nix-daemon.service" ];
      conflicts = [ "shutdown.target" ];
      unitConfig = {
        ConditionPathExists = "/nix-path-registration";
        DefaultDependencies = false;
      };
      serviceConfig.Type = "oneshot";
      script = ''
        ${nix}/bin/nix-store --load-db < /nix-path-registration
        ${nix}/bin/nix-env -p /nix/var/nix/profiles/system --set /run/current-system
        rm /nix-path-registration
      '';
    };
  };

  # the rootfs tarball the pipeline packs, laid out as NixOS's container tarball is
  system.build.tarball = pkgs.callPackage "${modulesPath}/../lib/make-system-tarball.nix" {
    fileName = "nixos-baguette-${pkgs.stdenv.hostPlatform.system}";
    storeContents = [{ object = toplevel; symlink = "none"; }];
    contents = [
      { source = "${toplevel}/init"; target = "/sbin/init"; }
      { source = "${toplevel}/etc/os-release"; target = "/etc/os-release"; }
    ];
    # /boot on the root filesystem, where the init-script boot loader wants it
    extraCommands = "mkdir -p boot proc sys dev run tmp mnt/shared mnt/stateful";
  };
}
