# My environment: tools, settings, dotfiles; no password hash, key or token.
{ pkgs, ... }:
{
  chromeos.guest.user = "user";   # the name given to ChromeOS's Linux setup
  chromeos.dotfiles.source = ./dotfiles;
  environment.systemPackages = with pkgs; [ bashInteractive curl git less vim ];
  system.stateVersion = "26.05";
}
