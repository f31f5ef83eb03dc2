# The sample host: one person's working environment, with no secret of any kind (no
# password hash, no key, no token). Edit it, or import the modules into your own flake.
{ pkgs, ... }:
{
  # uid 1000: use the name you give (or gave) in ChromeOS's Linux setup
  chromeos.guest.user = "user";
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
