"""The ChromeOS conformance harness: does a guest come up the way ChromeOS needs it?

ChromeOS's guest daemons cannot run here, so stand-ins for them (standin.sh) sit on a tools
disk where the real ones are (/opt/google/cros-containers/bin), behaving like the real ones at
the interfaces the image serves: the image's own units start them, maitred sets up the user
through /usr/sbin/useradd or usermod and lingers it over D-Bus, garcon and sommelier run in
uid 1000's session and record their environment, vshd opens the user's login shell. Then
one check per requirement reports PASS or FAIL with a reason (checks.py).

    checks.py     the checks each guest kind must pass, and the report
    toolsdisk.py  the tools disk: busybox, the stand-ins, the run's settings
    baguette.py   boot a Baguette image as ChromeOS does (tools disk vda, rootfs vdb grown
                  like `vmc create --size`, `root=/dev/vdb rw net.ifnames=0`) to its own
                  default target, and read the verdicts from the second serial port
"""
