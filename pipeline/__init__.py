"""Build ChromeOS Linux guest images (Baguette VM disks, Crostini containers).

Data flow for one image, one module per stage:

    images.toml -> config -> sources.<kind> (base rootfs tarball)
                -> customize (+ integration, secrets): the rootfs tarball
                -> pack, or delta from the previous image (raw btrfs, through the VM helper:
                   appliance + vm) -> compress (baguette_rootfs.img.zst) -> validate -> boot
                -> lxc (metadata + rootfs tarballs for Crostini)
                -> publish (a static image server: versions, SHA256SUMS, manifest.json from
                   rootfs_facts, the simplestreams index LXD reads)

`build.py` lists the stages in order; `tasks.py` wires them into doit; `store.py` keeps
every stage's output under a key computed from its inputs, and `gc.py` prunes it.
"""
