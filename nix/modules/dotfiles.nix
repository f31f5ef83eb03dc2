# The user's dotfiles, copied into their home at activation and owned by them (editable,
# not store links). A copy is refreshed only when the dotfiles changed, so a guest keeps
# the user's own edits between boots of the same image.
{ config, lib, pkgs, ... }:

let
  cfg = config.chromeos.dotfiles;
  user = config.chromeos.guest.user;
  home = config.users.users.${user}.home;
in
{
  options.chromeos.dotfiles.source = lib.mkOption {
    type = lib.types.nullOr lib.types.path;
    default = null;
    description = "A directory whose contents go into the user's home.";
  };

  config = lib.mkIf (cfg.source != null) {
    system.activationScripts.chromeos-dotfiles = {
      deps = [ "users" "groups" ];
      text = ''
        src=${cfg.source}
        stamp=${home}/.cache/chromeos-dotfiles
        if [ "$(cat "$stamp" 2>/dev/null)" != "$src" ]; then
          ${pkgs.coreutils}/bin/install -d -m 0700 -o ${user} -g users ${home}
          ${pkgs.coreutils}/bin/cp -rT --no-preserve=ownership "$src" ${home}
          ${pkgs.coreutils}/bin/chmod -R u+w ${home}
          ${pkgs.coreutils}/bin/install -d -m 0755 ${home}/.cache
          echo "$src" > "$stamp"
          ${pkgs.coreutils}/bin/chown -R ${user}:users ${home}
        fi
      '';
    };
  };
}
