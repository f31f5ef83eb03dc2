"""Build ChromeOS Linux guest images (Baguette VM disks, Crostini containers).

One image, in the order it is built (stages.py holds the stage table; tasks.py wires it into
doit; config.py reads images.toml into frozen dataclasses; cli.py is the `cros-guest`
command, doit's own over a loader for images.toml; report.py the end-of-run summary):

    sources/    base      the base rootfs tarball: debian (mmdebstrap), tarball, nix (nix build)
    rootfs/     rootfs    customize: the user, dotfiles, ChromeOS integration files, normalised
                          entries, the secret scan -> the rootfs tarball
    baguette/   pack      the raw btrfs image: mkfs.btrfs on the host, the VM helper for what
                          the host cannot set (or a delta update of the previous one);
                          baguette: compress + check -> baguette_rootfs.img.zst;
                          the boot test behind `doit verify`
    lxc/        lxc       LXD metadata + rootfs tarballs (or one unified tarball) for Crostini
    publish/              a static image server: versions, SHA256SUMS, manifest.json, the
                          simplestreams index LXD reads

Services the stages call: store/ (content-addressed entries under keys computed from each
stage's inputs, the artifacts layout and build records, gc, fsck) and vmhelper/ (QEMU, the
appliance kernel + initramfs, the accelerator choice). core/ is the floor every module may
use: errors, log, running tools, atomic writes, tarball rules.
"""
