# What every ChromeOS guest needs, container or VM. ChromeOS brings the binaries (garcon,
# sommelier, notificationd, ...) on its tools disk at /opt/google/cros-containers; this
# module only declares the services that start them, the user and the groups maitred and
# garcon expect, and the session environment. Nothing comes from Google's package repository.
{ config, lib, pkgs, ... }:

let
  cfg = config.chromeos.guest;
  tools = "/opt/google/cros-containers";
  # maitred may add the user to any of these (ChromeOS's list)
  groups = [ "audio" "cdrom" "dialout" "disk" "floppy" "kvm" "netdev" "plugdev" "sudo"
             "tss" "video" ];
  onToolsDisk = bin: { ConditionPathExists = "${tools}/bin/${bin}"; };
in
{
  options.chromeos.guest = {
    user = lib.mkOption {
      type = lib.types.str;
      default = "user";
      description = "The guest's user: owns the dotfiles, runs garcon and sommelier.";
    };
    uid = lib.mkOption {
      type = lib.types.int;
      default = 1000;
      description = "That user's uid.";
    };
  };

  config = {
    users.groups = lib.genAttrs groups (_: { });
    users.users.${cfg.user} = {
      isNormalUser = true;
      inherit (cfg) uid;
      extraGroups = groups;
      # no password: ChromeOS opens the shell; sudo needs none (below)
      hashedPassword = "!";
    };
    security.sudo.wheelNeedsPassword = false;
    security.sudo.extraRules = [{
      groups = [ "sudo" ];
      commands = [{ command = "ALL"; options = [ "NOPASSWD" ]; }];
    }];
    users.users.root.hashedPassword = lib.mkDefault "!";

    # ChromeOS writes the resolver configuration to /run/resolv.conf
    environment.etc."resolv.conf".source = lib.mkForce "/run/resolv.conf";
    networking.resolvconf.enable = false;

    # the session environment ChromeOS's tools expect
    environment.sessionVariables = {
      XDG_SESSION_TYPE = "wayland";
      WAYLAND_DISPLAY = "wayland-0";
      DISPLAY = ":0";
    };

    # Wayland forwarding through /dev/wl*
    services.udev.extraRules = ''
      KERNEL=="wl*", MODE="0666"
    '';
    services.journald.extraConfig = "ForwardToConsole=yes";

    systemd.user.services = {
      "sommelier@" = {
        description = "Wayland forwarding to ChromeOS (sommelier, socket wayland-%i)";
        unitConfig = onToolsDisk "sommelier";
        serviceConfig = {
          Type = "notify";
          ExecStart = "${tools}/bin/sommelier --parent --sd-notify=READY=1 "
            + "--socket=wayland-%i --stable-scaling "
            + "${pkgs.runtimeShell} -c 'systemctl --user import-environment WAYLAND_DISPLAY'";
          Restart = "always";
        };
      };
      "sommelier-x@" = {
        description = "X forwarding to ChromeOS (sommelier -X, display :%i)";
        unitConfig = onToolsDisk "sommelier";
        path = [ pkgs.xwayland ];
        serviceConfig = {
          Type = "notify";
          ExecStart = "${tools}/bin/sommelier -X --x-display=%i --sd-notify=READY=1 "
            + "--no-exit-with-child --x-auth=%h/.Xauthority --stable-scaling "
            + "--xwayland-path=${pkgs.xwayland}/bin/Xwayland "
            + "${pkgs.runtimeShell} -c 'systemctl --user import-environment DISPLAY XCURSOR_SIZE'";
          Restart = "always";
        };
      };
      cros-garcon = {
        description = "ChromeOS app and file bridge (garcon)";
        unitConfig = onToolsDisk "garcon";
        after = [ "sommelier@0.service" "sommelier-x@0.service" ];
        wantedBy = [ "default.target" ];
        environment = {
          XDG_CURRENT_DESKTOP = "X-Generic";
          XDG_SESSION_TYPE = "wayland";
        };
        serviceConfig = {
          ExecStart = "${tools}/bin/garcon --server";
          Restart = "always";
        };
      };
      cros-notificationd = {
        description = "ChromeOS notification server";
        unitConfig = onToolsDisk "notificationd";
        serviceConfig = {
          Type = "dbus";
          BusName = "org.freedesktop.Notifications";
          ExecStart = "${tools}/bin/notificationd --virtwl_device=/dev/wl0";
          Restart = "always";
        };
      };
    };
    # templates are enabled through their instance
    systemd.user.targets.default.wants = [ "sommelier@0.service" "sommelier-x@0.service" ];

    services.dbus.packages = [
      (pkgs.writeTextDir "share/dbus-1/services/org.freedesktop.Notifications.service" ''
        [D-BUS Service]
        Name=org.freedesktop.Notifications
        Exec=/bin/false
        SystemdService=cros-notificationd.service
      '')
    ];

    # the user's services run without a login session (ChromeOS starts them)
    systemd.tmpfiles.rules = [ "f /var/lib/systemd/linger/${cfg.user}" ];
  };
}
