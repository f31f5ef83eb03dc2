# ~/.bashrc from the pipeline's sample dotfiles
[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc
export EDITOR=vi
alias ll='ls -l'
alias la='ls -A'
# delta test
