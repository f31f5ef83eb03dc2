"""Build ChromeOS Linux guest images (Baguette VM disks, Crostini containers).

Data flow for one image, one module per stage:

    images.toml -> config -> sources.<kind> (base rootfs tarball)
                -> customize (rootfs tarball)
                -> pack (raw btrfs image, through the VM helper: appliance + vm)
                -> compress (baguette_rootfs.img.zst) -> validate -> boot (verify)

`build.py` lists the stages in order; `tasks.py` wires them into doit.
"""
