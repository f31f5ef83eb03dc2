set number
syntax on
set expandtab shiftwidth=4
