# The user's dotfiles, copied at activation (editable files owned by the user, not store
# links): into /etc/skel, which useradd copies into a new home (ChromeOS's maitred makes
# the Baguette user that way), and, when the image has its user, into that user's home.
# The home copy is refreshed only when the dotfiles changed, so a guest keeps the user's
# own edits between boots of the same image.
{ config, lib, pkgs, ... }:

let
  cfg = config.chromeos.dotfiles;
  user = config.chromeos.guest.user;
  home = config.users.users.${user}.home;
  coreutils = "${pkgs.coreutils}/bin";
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
        ${coreutils}/rm -rf /etc/skel.new
        ${coreutils}/cp -rT --no-preserve=ownership "$src" /etc/skel.new
        ${coreutils}/chmod -R u+w,go-w /etc/skel.new
        ${coreutils}/rm -rf /etc/skel
        ${coreutils}/mv /etc/skel.new /etc/skel
      '' + lib.optionalString (user != null) ''
        stamp=${home}/.cache/chromeos-dotfiles
        if [ "$(${coreutils}/cat "$stamp" 2>/dev/null)" != "$src" ]; then
          ${coreutils}/install -d -m 0700 -o ${user} -g users ${home}
          ${coreutils}/cp -rT --no-preserve=ownership "$src" ${home}
          ${coreutils}/chmod -R u+w ${home}
          ${coreutils}/install -d -m 0755 ${home}/.cache
          echo "$src" > "$stamp"
          ${coreutils}/chown -R ${user}:users ${home}
        fi
      '';
    };
  };
}
