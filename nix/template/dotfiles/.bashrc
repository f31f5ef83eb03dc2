# copied into the user's home (and /etc/skel) by the dotfiles module
alias ll='ls -l'
