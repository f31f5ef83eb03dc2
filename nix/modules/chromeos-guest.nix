# What every ChromeOS guest needs, container or VM. ChromeOS brings the binaries (garcon,
# sommelier, notificationd, ...) on its tools disk at /opt/google/cros-containers; this
# module only declares the services that start them, the groups and the user ChromeOS
# expects, the paths it runs by absolute name, and the session environment. Nothing comes
# from Google's package repository. The crostini and baguette modules import it.
{ config, lib, pkgs, ... }:

let
  cfg = config.chromeos.guest;
  tools = "/opt/google/cros-containers";
  # maitred may add the user to any of these (vmc's default list) and refuses the whole
  # request when one is missing
  groups = [ "audio" "cdrom" "dialout" "disk" "floppy" "kvm" "netdev" "plugdev" "sudo"
             "tss" "video" ];
  onToolsDisk = bin: { ConditionPathExists = "${tools}/bin/${bin}"; };
  # what ChromeOS runs by absolute path, never through PATH: maitred's useradd and usermod
  # (and /bin/bash, the shell it gives the user), garcon's sftp-server for the Files app
  absolutePaths = {
    "/usr/sbin/useradd" = "${pkgs.shadow}/bin/useradd";
    "/usr/sbin/usermod" = "${pkgs.shadow}/bin/usermod";
    "/bin/bash" = "${pkgs.bashInteractive}/bin/bash";
    "/usr/lib/openssh/sftp-server" = "${pkgs.openssh}/libexec/sftp-server";
  };
  # garcon's URL handler (what cros-garcon installs as /usr/bin/garcon-url-handler): apps
  # open links through BROWSER, and this hands them to ChromeOS's browser
  urlHandler = pkgs.writeShellScript "garcon-url-handler" ''
    exec ${tools}/bin/garcon --client --url "$@"
  '';
  # sommelier -X runs this once Xwayland is up; sommelier reads --x-auth, which must hold
  # a cookie for the display
  xReady = pkgs.writeShellScript "sommelier-x-ready" ''
    systemctl --user import-environment DISPLAY XCURSOR_SIZE
    touch "$HOME/.Xauthority"
    ${pkgs.xauth}/bin/xauth -f "$HOME/.Xauthority" add "$DISPLAY" . "$(${pkgs.util-linux}/bin/mcookie)"
  '';
in
{
  options.chromeos.guest = {
    kind = lib.mkOption {
      type = lib.types.nullOr (lib.types.enum [ "crostini" "baguette" ]);
      default = null;
      description = "The guest this configuration makes (set by the crostini and baguette modules); the pipeline refuses to build the other image kind from it.";
    };
    user = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = "user";
      description = "The image's user (uid `uid`): give it the name of ChromeOS's Linux setup, since maitred refuses a uid-1000 user of another name. null leaves the user to ChromeOS (maitred's useradd copies /etc/skel), but `vmc start` waits for garcon, which needs it, before it sets a user up.";
    };
    uid = lib.mkOption {
      type = lib.types.int;
      default = 1000;
      description = "The ChromeOS user's uid (garcon runs only as 1000).";
    };
  };

  config = {
    users.groups = lib.genAttrs groups (_: { });
    users.users = lib.mkMerge [
      { root.hashedPassword = lib.mkDefault "!"; }
      (lib.mkIf (cfg.user != null) {
        ${cfg.user} = {
          isNormalUser = true;
          inherit (cfg) uid;
          extraGroups = groups;
          # no password: ChromeOS opens the shell; sudo needs none (below)
          hashedPassword = "!";
          # garcon and sommelier start with the VM, before anyone logs in
          linger = true;
        };
      })
    ];
    # without a user here, maitred creates it at run time; NixOS keeps users it did not
    # declare only while users are mutable
    assertions = [{
      assertion = cfg.user != null || config.users.mutableUsers;
      message = "chromeos.guest.user = null needs users.mutableUsers (ChromeOS adds the user)";
    }];
    security.sudo.wheelNeedsPassword = false;
    security.sudo.extraRules = [{
      groups = [ "sudo" ];
      commands = [{ command = "ALL"; options = [ "NOPASSWD" ]; }];
    }];

    # tremplin reads /etc/gshadow (`vmc start termina <container>` fails without it), and
    # NixOS writes /etc/shadow but never /etc/gshadow
    environment.etc.gshadow = { mode = "0640"; group = "shadow"; text = ""; };
    # eth0 is reachable from ChromeOS only, which forwards the ports the guest listens on
    networking.firewall.enable = false;

    system.activationScripts.chromeos-absolute-paths = {
      deps = [ ];
      text = lib.concatStrings (lib.mapAttrsToList (path: target: ''
        mkdir -p ${dirOf path}
        ln -sfn ${target} ${path}
      '') absolutePaths);
    };

    # the session environment ChromeOS's tools expect
    environment.sessionVariables = {
      XDG_SESSION_TYPE = "wayland";
      WAYLAND_DISPLAY = "wayland-0";
      DISPLAY = ":0";
      BROWSER = "${urlHandler}";
    };

    # Wayland forwarding through /dev/wl*
    services.udev.extraRules = ''
      KERNEL=="wl*", MODE="0666"
    '';
    # the journal on the console, which vmc logs (a drop-in: services.journald.extraConfig
    # is gone from NixOS 26.11)
    environment.etc."systemd/journald.conf.d/50-console.conf".text = ''
      [Journal]
      ForwardToConsole=yes
    '';

    systemd.user.services = {
      "sommelier@" = {
        description = "Wayland forwarding to ChromeOS (sommelier, socket wayland-%i)";
        unitConfig = onToolsDisk "sommelier";
        serviceConfig = {
          Type = "notify";
          # readiness may come from a helper sommelier starts, not its main process (the
          # Debian image's units say the same)
          NotifyAccess = "all";
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
          NotifyAccess = "all";
          ExecStart = "${tools}/bin/sommelier -X --x-display=%i --sd-notify=READY=1 "
            + "--no-exit-with-child --x-auth=%h/.Xauthority --stable-scaling "
            + "--xwayland-path=${pkgs.xwayland}/bin/Xwayland ${xReady}";
          Restart = "always";
        };
      };
      cros-garcon = {
        description = "ChromeOS app and file bridge (garcon)";
        unitConfig = onToolsDisk "garcon";
        after = [ "sommelier@0.service" "sommelier-x@0.service" ];
        wantedBy = [ "default.target" ];
        environment = {
          BROWSER = "${urlHandler}";
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
  };
}
