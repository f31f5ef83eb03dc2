# The sample host: one person's working environment, with no secret of any kind (no
# password hash, no key, no token). Edit it, or import the modules into your own flake.
# Its user: on Baguette none (ChromeOS creates it under the name you give in its Linux
# setup, with these dotfiles from /etc/skel); on Crostini `user` (set chromeos.guest.user
# to your ChromeOS Linux name).
{ pkgs, ... }:
{
  # the same dotfiles/ tree the Debian image uses: editing one dotfile changes both images
  chromeos.dotfiles.source = ../../dotfiles;

  networking.hostName = "penguin";
  time.timeZone = "UTC";

  environment.systemPackages = with pkgs; [
    bashInteractive curl git htop less ripgrep vim
  ];

  programs.bash.completion.enable = true;
  nix.settings.experimental-features = [ "nix-command" "flakes" ];

  system.stateVersion = "26.05";
}
