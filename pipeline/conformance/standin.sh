#!/opt/google/cros-containers/bin/busybox sh
# Stand-ins for ChromeOS's guest daemons, for the conformance harness (conformance/).
#
# Technical details. ChromeOS brings its guest tools on the tools disk (ext4 `cros-vm-tools`,
# mounted by the image at /opt/google/cros-containers); the image's own units start them.
# This one script is every tool there, by the name it is called as (bin/<name> links to it),
# and behaves like the real one at the interface the image serves, not at the host's:
#
#   maitred        root, started by the image's system unit. Writes /run/resolv.conf as the
#                  real one does (nameserver lines, then its `options` line), the container
#                  token garcon reads (/dev/.container_token), then, as `vmc start` does, waits
#                  for garcon to come up and sets up the ChromeOS user the way the real
#                  SetUpUser RPC does: the same name rule, refusal when uid 1000 belongs to
#                  another name or a group is missing, /usr/sbin/useradd or /usr/sbin/usermod
#                  called by absolute path, then linger through logind's SetUserLinger over
#                  the system D-Bus. Then it runs the checks (conformance-check) and powers the
#                  VM off through logind, as the real one does on Shutdown.
#   vshd           root, a system unit; `vshd --inherit_env` (what garcon starts for
#                  `vsh ... --target_container=penguin`) opens the login shell of the uid it
#                  runs as, in its home, with the caller's environment.
#   garcon         a user unit; refuses any uid but 1000 (as the real one), waits for the
#                  token, records its environment, and starts vshd on request.
#   sommelier      user units; takes the real one's arguments: publishes WAYLAND_DISPLAY
#                  (--socket) or DISPLAY (-X --x-display) to the command it is given, runs that
#                  command, reports readiness to systemd (--sd-notify), records it all.
#   notificationd, port_listener   record that they started, then stay up.
#   tremplin       (Crostini) what the termina VM does for a container, run inside it as root:
#                  the container token, waiting for garcon, the user setup (tremplin's own
#                  code is not public: maitred's rules stand in), then the checks.
#
# Records go to $STATE (/tmp/cros-standin); verdicts are `@@CHECK <name> PASS|FAIL <detail>`
# lines on $RESULTS (the VM's second serial port, or stdout in a container). What the real
# daemons do over vsock (the host's side) is not modelled.

TOOLS=/opt/google/cros-containers
BB=$TOOLS/bin/busybox
STATE=/tmp/cros-standin
CONF=$TOOLS/etc/standin.conf
GROUPS_VMC="audio,cdrom,dialout,disk,floppy,kvm,netdev,plugdev,sudo,tss,video"
SETUP_USER=""
RESULTS=/dev/ttyS1
GARCON_WAIT=300  # seconds of the guest's uptime: garcon is up by then, or the checks go on
SETTLE_WAIT=360  # likewise for the boot to finish
KIND=baguette
[ -r "$CONF" ] && . "$CONF"
# The real daemons speak D-Bus themselves; the stand-ins borrow the image's busctl, systemctl
# and udevadm. A unit's PATH need not name them (NixOS's maitred PATH has no systemd): look
# in the system profile last. Programs the real ones run by absolute path stay absolute.
PATH="${PATH:-/usr/bin:/bin}:/run/current-system/sw/bin"
export PATH

bb() { "$BB" "$@"; }

state_dir() {
    [ -d "$STATE" ] || bb mkdir -p -m 1777 "$STATE" 2>/dev/null
    bb chmod 1777 "$STATE" 2>/dev/null
    return 0
}

record() {
    # record NAME: who started us, how, with which environment
    state_dir
    {
        echo "uid=$(bb id -u)"
        echo "pid=$$"
        echo "args=$ARGS"
        echo "cgroup=$(bb cat /proc/$$/cgroup 2>/dev/null | bb tail -n 1)"
    } > "$STATE/$1.rec.tmp" && bb mv "$STATE/$1.rec.tmp" "$STATE/$1.rec"
    bb env | bb sort > "$STATE/$1.env"
}

stay_up() {
    while :; do bb sleep 3600; done
}

# --- maitred -----------------------------------------------------------------------------

write_resolv_conf() {
    # the real defaults when the host sends no servers
    printf 'nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844\noptions single-request timeout:1 attempts:5\n' \
        > /run/resolv.conf.tmp && bb mv /run/resolv.conf.tmp /run/resolv.conf
}

passwd_name_of_uid() { bb awk -F: -v u="$1" '$3 == u { print $1; exit }' /etc/passwd; }
passwd_uid_of_name() { bb awk -F: -v n="$1" '$1 == n { print $3; exit }' /etc/passwd; }
group_exists() { bb awk -F: -v g="$1" '$1 == g { found = 1 } END { exit !found }' /etc/group; }

set_up_user() {
    # SetUpUser(username, uid 1000, vmc's default groups); prints the outcome, 0 on success
    name=$1 uid=1000
    case "$name" in
        [a-z]*) ;;
        *) echo "invalid username $name"; return 1 ;;
    esac
    if echo "$name" | bb grep -qv '^[a-z][-a-z0-9_]*\$\{0,1\}$'; then
        echo "invalid username $name"; return 1
    fi
    holder=$(passwd_name_of_uid "$uid")
    if [ -n "$holder" ] && [ "$holder" != "$name" ]; then
        echo "Another user with uid $uid already exists ($holder)"; return 1
    fi
    known=$(passwd_uid_of_name "$name")
    if [ -n "$known" ] && [ "$known" != "$uid" ]; then
        echo "User exists, but with a different uid: $known"; return 1
    fi
    for g in $(echo "$GROUPS_VMC" | bb tr ',' ' '); do
        group_exists "$g" || { echo "one or more specified groups do not exist ($g)"; return 1; }
    done
    if [ -n "$known" ]; then
        out=$(/usr/sbin/usermod --append --groups "$GROUPS_VMC" "$name" 2>&1) ||
            { echo "Could not create new user: /usr/sbin/usermod: $out"; return 1; }
    else
        out=$(/usr/sbin/useradd --uid "$uid" --create-home --shell /bin/bash \
            --groups "$GROUPS_VMC" "$name" 2>&1) ||
            { echo "Could not create new user: /usr/sbin/useradd: $out"; return 1; }
    fi
    out=$(busctl call org.freedesktop.login1 /org/freedesktop/login1 \
        org.freedesktop.login1.Manager SetUserLinger ubb "$uid" true false 2>&1) ||
        { echo "SetUserLinger over D-Bus failed: $out"; return 1; }
    echo "ok ($([ -n "$known" ] && echo usermod || echo useradd))"
}

garcon_up_or_hopeless() {
    # garcon runs, or cannot come: uid 1000's manager failed, or the boot finished without it
    [ -e "$STATE/garcon.rec" ] && return 0
    systemctl is-failed -q user@1000.service && return 0
    case "$(systemctl is-system-running 2>/dev/null)" in
        starting|initializing) return 1 ;;
    esac
    case "$(systemctl show -p ActiveState --value user@1000.service 2>/dev/null)" in
        active|activating|reloading) return 1 ;;
    esac
    return 0
}

uptime_s() {
    # seconds since the guest started: the VM's uptime; in a container (whose /proc/uptime
    # may be the host's) since tremplin started
    up=$(bb cut -d. -f1 /proc/uptime)
    echo $((up - $(bb cat "$STATE/t0" 2>/dev/null || echo 0)))
}

wait_for() {
    # wait_for SECONDS TEST...: until the test passes, or the guest's uptime reaches SECONDS
    # (a deadline from the boot, so a broken image cannot make each wait add up)
    limit=$1; shift
    while ! "$@"; do
        [ "$(uptime_s)" -ge "$limit" ] && return 1
        bb sleep 1
    done
}

wait_more() {
    # wait_more SECONDS TEST...: SECONDS from now
    limit=$(($(uptime_s) + $1)); shift
    wait_for "$limit" "$@"
}

maitred() {
    record maitred
    write_resolv_conf
    start_container_guest
    "$TOOLS/bin/conformance-check" > "$RESULTS" 2>&1
    bb sync
    busctl call org.freedesktop.login1 /org/freedesktop/login1 \
        org.freedesktop.login1.Manager PowerOff b false >/dev/null 2>&1 ||
        systemctl poweroff >/dev/null 2>&1
    bb sleep 120
    echo o > /proc/sysrq-trigger
    stay_up
}

tremplin() {
    # `lxc exec` can come while the container still boots: its systemd-tmpfiles empties /tmp
    # (our state) during sysinit, so start once sysinit.target is reached
    i=0
    until systemctl is-active -q sysinit.target 2>/dev/null || [ "$i" -ge 300 ]; do
        i=$((i + 1)); bb sleep 1
    done
    state_dir
    bb cut -d. -f1 /proc/uptime > "$STATE/t0"
    start_container_guest
    "$TOOLS/bin/conformance-check"
}

start_container_guest() {
    # the token garcon reads, then `vmc start`'s order: garcon first, the user setup after
    state_dir
    bb cat /proc/sys/kernel/random/uuid > /dev/.container_token
    bb chmod 0644 /dev/.container_token
    if wait_for "$GARCON_WAIT" garcon_up_or_hopeless && [ -e "$STATE/garcon.rec" ]; then
        echo "garcon started" > "$STATE/garcon.wait"
    elif systemctl is-failed -q user@1000.service; then
        echo "garcon cannot start: user@1000.service failed" > "$STATE/garcon.wait"
    elif garcon_up_or_hopeless; then
        echo "garcon cannot start: the boot finished without a session for uid 1000" \
            > "$STATE/garcon.wait"
    else
        echo "garcon did not start within $GARCON_WAIT s" > "$STATE/garcon.wait"
    fi
    if [ -n "$SETUP_USER" ]; then
        set_up_user "$SETUP_USER" > "$STATE/setup-user" 2>&1
    fi
}

# --- vshd --------------------------------------------------------------------------------

vshd() {
    case " $ARGS " in
        *" --inherit_env "*) ;;
        *) record vshd; stay_up ;;
    esac
    # the shell of the uid we run as, in its home, as a login shell; the commands come from
    # the request file (the real one takes them from the vsock stream)
    uid=$(bb id -u)
    line=$(bb awk -F: -v u="$uid" '$3 == u { print; exit }' /etc/passwd)
    home=$(echo "$line" | bb cut -d: -f6)
    shell=$(echo "$line" | bb cut -d: -f7)
    [ -n "$shell" ] || shell=/bin/sh
    cd "$home" 2>/dev/null || cd /
    export HOME="$home" SHELL="$shell"
    "$shell" -l < "$STATE/vsh.script" > "$STATE/vsh.out.tmp" 2>&1
    echo "EXIT=$?" >> "$STATE/vsh.out.tmp"
    bb mv "$STATE/vsh.out.tmp" "$STATE/vsh.out"
}

# --- garcon ------------------------------------------------------------------------------

garcon() {
    if [ "$(bb id -u)" != 1000 ]; then
        echo "garcon normally runs only as uid(1000). Use --allow_any_user to override" >&2
        exit 255
    fi
    wait_more 60 [ -r /dev/.container_token ] || { echo "no container token" >&2; exit 1; }
    record garcon
    while :; do
        if [ -e "$STATE/vsh.request" ]; then
            bb rm -f "$STATE/vsh.request"
            "$TOOLS/bin/vshd" --inherit_env --forward_to_host_port=0
        fi
        bb sleep 1
    done
}

# --- sommelier ---------------------------------------------------------------------------

sommelier() {
    x=0 socket="" xdisplay="" xauth=""
    while [ $# -gt 0 ]; do
        case "$1" in
            -X) x=1 ;;
            --socket=*) socket=${1#--socket=} ;;
            --x-display=*) xdisplay=${1#--x-display=} ;;
            --x-auth=*) xauth=${1#--x-auth=} ;;
            -*) ;;
            *) break ;;
        esac
        shift
    done
    name=sommelier
    if [ "$x" = 1 ]; then
        name="sommelier-x@${xdisplay:-0}"
        export DISPLAY=":${xdisplay:-0}" XCURSOR_SIZE=24
    else
        name="sommelier@${socket#wayland-}"
        export WAYLAND_DISPLAY="${socket:-wayland-0}"
    fi
    child=0
    [ $# -gt 0 ] && { "$@"; child=$?; }
    record "$name"
    echo "child_exit=$child" >> "$STATE/$name.rec"
    if [ -n "$xauth" ]; then
        if [ -s "$xauth" ]; then echo "xauth=present" >> "$STATE/$name.rec"
        else echo "xauth=missing" >> "$STATE/$name.rec"; fi
    fi
    systemd-notify --ready >/dev/null 2>&1
    stay_up
}

# --- the checks --------------------------------------------------------------------------

verdict() {
    # verdict NAME STATUS DETAIL...
    name=$1 status=$2; shift 2
    echo "@@CHECK $name $status $*"
}

check() {
    # check NAME DETAIL-ON-FAILURE TEST...
    name=$1 detail=$2; shift 2
    if "$@" >/dev/null 2>&1; then verdict "$name" PASS; else verdict "$name" FAIL "$detail"; fi
}

unit_active() { [ "$(systemctl is-active "$1" 2>/dev/null)" = active ]; }

bus_answers() {
    # a unit can be "active" with no bus (an LSB script that found no daemon): ask the bus
    busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId
}

any_active() {
    for u in "$@"; do unit_active "$u" && return 0; done
    return 1
}

rec_field() { bb sed -n "s/^$2=//p" "$STATE/$1.rec" 2>/dev/null | bb head -n 1; }

running() {
    # running NAME: its record exists and its process is alive
    pid=$(rec_field "$1" pid)
    [ -n "$pid" ] && [ -d "/proc/$pid" ]
}

check_daemon() {
    # check_daemon NAME UID [SESSION]: started, still running, as UID (inside user@UID)
    name=$1 want=$2
    if ! [ -e "$STATE/$name.rec" ]; then verdict "$name" FAIL "never started"; return; fi
    if ! running "$name"; then verdict "$name" FAIL "started, then exited"; return; fi
    uid=$(rec_field "$name" uid)
    [ "$uid" = "$want" ] || { verdict "$name" FAIL "runs as uid $uid, not $want"; return; }
    if [ -n "$3" ]; then
        case "$(rec_field "$name" cgroup)" in
            *"/user@$want.service/"*) ;;
            *) verdict "$name" FAIL "not in user@$want's session: $(rec_field "$name" cgroup)"
               return ;;
        esac
    fi
    verdict "$name" PASS
}

env_has() { bb grep -qx "$2" "$STATE/$1.env" 2>/dev/null; }

check_env() {
    # check_env NAME VAR=VALUE...: the recorded environment holds each
    name=$1; shift
    missing=""
    for kv in "$@"; do
        case "$kv" in
            # a program of that name, wherever the image keeps it (/usr/bin, a store path)
            *=\*/*)
                v=$(bb sed -n "s/^${kv%%=*}=//p" "$STATE/$name.env" 2>/dev/null)
                case "$v" in /*/"${kv#*=\*/}") [ -x "$v" ] && continue ;; esac
                missing="$missing ${kv%%=*}" ;;
            *) env_has "$name" "$kv" || missing="$missing ${kv%%=*}" ;;
        esac
    done
    if [ -z "$missing" ]; then verdict "$name-env" PASS
    else verdict "$name-env" FAIL "missing or wrong:$missing"; fi
}

boot_finished() {
    case "$(systemctl is-system-running 2>/dev/null)" in
        running|degraded|maintenance|stopping) return 0 ;;
    esac
    return 1
}

settle() {
    # until the boot has finished (running, or degraded with failed units)
    wait_for "$SETTLE_WAIT" boot_finished
}

shell_check() {
    # what `vsh ... --target_container=penguin` gives: garcon starts vshd --inherit_env
    state_dir
    {
        echo 'echo "HOME=$HOME"'
        echo 'echo "PWD=$(pwd)"'
        echo 'echo "GROUPS=$(id -Gn)"'
        echo 'if sudo -n true 2>/dev/null; then echo SUDO=ok; else echo SUDO=fail; fi'
        if [ -r "$TOOLS/etc/dotfiles" ]; then
            while IFS= read -r f; do
                [ -n "$f" ] && printf 'if [ -e "$HOME/%s" ]; then echo "DOT ok"; else echo "DOT missing %s"; fi\n' "$f" "$f"
            done < "$TOOLS/etc/dotfiles"
        fi
    } > "$STATE/vsh.script"
    bb rm -f "$STATE/vsh.out"
    bb touch "$STATE/vsh.request"
    if ! running garcon; then
        verdict shell FAIL "no garcon to start vshd (vsh ... --target_container=penguin)"
        verdict groups FAIL "no shell to ask"; verdict sudo FAIL "no shell to ask"; return
    fi
    if ! wait_more 120 [ -e "$STATE/vsh.out" ]; then
        verdict shell FAIL "garcon did not start vshd (no shell within 120 s)"; return
    fi
    out=$(bb cat "$STATE/vsh.out")
    home=$(echo "$out" | bb sed -n 's/^HOME=//p')
    pwd_=$(echo "$out" | bb sed -n 's/^PWD=//p')
    [ -n "$home" ] && [ "$home" = "$pwd_" ] && [ "$home" != / ] ||
        { verdict shell FAIL "not in the user's home (HOME=$home PWD=$pwd_)"; return; }
    missing=$(echo "$out" | bb sed -n 's/^DOT missing //p' | bb tr '\n' ' ')
    [ -z "$missing" ] || { verdict shell FAIL "dotfiles missing in $home: $missing"; return; }
    verdict shell PASS "$home"
    groups=" $(echo "$out" | bb sed -n 's/^GROUPS=//p') "
    lacking=""
    for g in $(echo "$GROUPS_VMC" | bb tr ',' ' '); do
        case "$groups" in *" $g "*) ;; *) lacking="$lacking $g" ;; esac
    done
    if [ -z "$lacking" ]; then verdict groups PASS
    else verdict groups FAIL "the user is not in:$lacking"; fi
    if echo "$out" | bb grep -qx SUDO=ok; then verdict sudo PASS
    else verdict sudo FAIL "sudo -n true fails for the user"; fi
}

udev_rule_check() {
    # udevd loads a rule giving wl* devices mode 0666. /dev/wl0 itself needs crosvm's virtwl,
    # which QEMU lacks: the test device is a wl0 network interface (a `dummy`), through which
    # `udevadm test` shows the rules files udevd reads for a wl* device and any it refuses.
    if ! unit_active systemd-udevd.service; then
        verdict wl-udev-rule FAIL "udevd is not running"; return
    fi
    made=$(bb ip link add wl0 type dummy 2>&1) ||
        { verdict wl-udev-rule FAIL "cannot make a wl0 device to test with: $made"; return; }
    out=$(udevadm test /sys/class/net/wl0 2>&1)
    bb ip link del wl0 2>/dev/null
    found=""
    for f in $(echo "$out" | bb sed -n 's/^Reading rules file: //p'); do
        if bb grep -Eq '^[^#]*KERNEL=="wl\*".*MODE="0666"' "$f" 2>/dev/null; then
            if echo "$out" | bb grep -F "$f" | bb grep -qi 'invalid'; then
                verdict wl-udev-rule FAIL "udevd refuses $f"; return
            fi
            found="$f"
        fi
    done
    if [ -n "$found" ]; then verdict wl-udev-rule PASS "$found"
    else verdict wl-udev-rule FAIL "no rules file udevd reads gives wl* mode 0666"; fi
}

tools_order_check() {
    # The user units skip themselves (ConditionPathExists) when the tools disk is not there
    # yet: the mount must be ordered before the user's session, before local-fs.target (and
    # so before logind starts user@1000) or before user@1000 itself. A `nofail` fstab entry
    # is neither, and whether it loses the race differs from boot to boot: ask systemd.
    unit='opt-google-cros\x2dcontainers.mount'
    before=" $(systemctl show -p Before --value "$unit" 2>/dev/null) "
    after=" $(systemctl show -p After --value user@1000.service 2>/dev/null) "
    case "$before$after" in
        *" local-fs.target "*|*" $unit "*) verdict tools-mount-order PASS ;;
        *) verdict tools-mount-order FAIL "$unit is ordered neither before local-fs.target nor before user@1000.service" ;;
    esac
}

notificationd_activatable() {
    [ -e /usr/share/dbus-1/services/org.freedesktop.Notifications.service ] && return 0
    # where else the session bus finds it (NixOS: services.dbus.packages): ask that bus,
    # as its user
    who=$(passwd_name_of_uid 1000)
    [ -n "$who" ] || return 1
    bb su -s /bin/sh "$who" -c "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus \
        busctl --user call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
        ListActivatableNames" 2>/dev/null | bb grep -q '"org.freedesktop.Notifications"'
}

failed_units() {
    sys=$(systemctl --failed --no-legend --plain 2>/dev/null | bb awk '{print $1}' | bb tr '\n' ' ')
    usr=$(systemctl --machine=1000@.host --user --failed --no-legend --plain 2>/dev/null |
          bb awk '{print $1}' | bb tr '\n' ' ')
    if [ -z "$sys$usr" ]; then verdict failed-units PASS
    else verdict failed-units FAIL "system: ${sys:-none}; user@1000: ${usr:-none}"; fi
}

resize_check() {
    disk=$(bb cat /sys/block/vdb/size 2>/dev/null)
    fs=$(bb df -k / | bb awk 'NR == 2 { print $2 }')
    if [ -z "$disk" ] || [ -z "$fs" ]; then verdict resize FAIL "cannot read the sizes"; return; fi
    disk_k=$((disk / 2))
    if [ $((fs * 100)) -ge $((disk_k * 90)) ]; then verdict resize PASS "$fs KiB of $disk_k"
    else verdict resize FAIL "the filesystem has $fs KiB of a $disk_k KiB disk"; fi
}

network_check() {
    # Crostini: LXD's DHCP gives eth0 its address and DNS (no DHCP client in the image, or no
    # eth0 config for it, leaves the container unreachable); it may still be on its way
    addr="" ns=""
    n=0
    while [ "$n" -lt 30 ]; do
        addr=$(bb ip -4 -o addr show dev eth0 2>/dev/null | bb awk '{ print $4; exit }')
        ns=$(bb grep -m1 '^nameserver ' /etc/resolv.conf 2>/dev/null)
        [ -n "$addr" ] && [ -n "$ns" ] && break
        bb sleep 1
        n=$((n + 1))
    done
    if [ -n "$addr" ] && [ -n "$ns" ]; then verdict network PASS "eth0 $addr, $ns"
    elif [ -n "$addr" ]; then verdict network FAIL "eth0 $addr, but no nameserver in /etc/resolv.conf"
    else verdict network FAIL "eth0 has no IPv4 address (no DHCP client, or none configured for eth0)"
    fi
}

conformance_check() {
    if settle; then verdict boot PASS "$(systemctl is-system-running 2>&1)"
    else verdict boot FAIL "not finished within $SETTLE_WAIT s: $(systemctl is-system-running 2>&1)"
    fi
    check dbus "the system bus does not answer (no dbus-daemon or dbus-broker)" bus_answers
    check logind "systemd-logind is not running" unit_active systemd-logind.service
    if [ "$KIND" = baguette ]; then
        check udevd "systemd-udevd is not running" unit_active systemd-udevd.service
        check tools-mount "the tools disk is not mounted read-only at $TOOLS" \
            bb grep -Eq "^/dev/vda $TOOLS ext4 ro[, ]" /proc/mounts
        tools_order_check
        check_daemon maitred 0
        check_daemon vshd 0
        check_daemon port_listener 0
        check resolv.conf "/etc/resolv.conf does not lead to maitred's /run/resolv.conf" \
            bb cmp /etc/resolv.conf /run/resolv.conf
        check arc-host "no 100.115.92.2 arc line in /etc/hosts" \
            bb grep -Eq '^100\.115\.92\.2[[:space:]]+arc$' /etc/hosts
        resize_check
    else
        check gshadow "/etc/gshadow is missing (tremplin reads it)" [ -e /etc/gshadow ]
        network_check
        vm_units=""
        for u in vshd.service maitred.service 'opt-google-cros\x2dcontainers.mount' \
                 baguette-resize.service; do
            for d in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
                [ -e "$d/$u" ] && vm_units="$vm_units $d/$u"
            done
        done
        if [ -z "$vm_units" ]; then verdict no-vm-units PASS
        else verdict no-vm-units FAIL "VM-only units in the container:$vm_units"; fi
    fi
    verdict garcon-start "$(bb grep -q '^garcon started' "$STATE/garcon.wait" 2>/dev/null && echo PASS || echo FAIL)" \
        "$(bb cat "$STATE/garcon.wait" 2>/dev/null)"
    if [ -n "$SETUP_USER" ]; then
        out=$(bb cat "$STATE/setup-user" 2>/dev/null)
        case "$out" in ok*) verdict user-setup PASS "$SETUP_USER: $out" ;;
            *) verdict user-setup FAIL "$SETUP_USER: ${out:-no outcome}" ;; esac
    fi
    check user-session "user@1000.service is not active" unit_active user@1000.service
    check_daemon garcon 1000 session
    check_env garcon XDG_RUNTIME_DIR=/run/user/1000 \
        DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus WAYLAND_DISPLAY=wayland-0 \
        DISPLAY=:0 'BROWSER=*/garcon-url-handler'
    check_daemon sommelier@0 1000 session
    check_daemon sommelier-x@0 1000 session
    if [ "$(rec_field sommelier-x@0 xauth)" = present ]; then verdict sommelier-x-xauth PASS
    else verdict sommelier-x-xauth FAIL "no X cookie at sommelier's --x-auth path"; fi
    check notificationd "cros-notificationd is not D-Bus activatable" \
        notificationd_activatable
    check sftp-server "/usr/lib/openssh/sftp-server is missing (the Files app)" \
        [ -x /usr/lib/openssh/sftp-server ]
    [ "$KIND" = baguette ] && udev_rule_check
    shell_check
    failed_units
    echo "@@CONFORMANCE DONE"
}

# --- dispatch ----------------------------------------------------------------------------

ARGS="$*"
case "${0##*/}" in
    maitred) maitred ;;
    vshd) vshd ;;
    garcon) garcon ;;
    sommelier) sommelier "$@" ;;
    notificationd) record notificationd; stay_up ;;
    port_listener) record port_listener; stay_up ;;
    conformance-check) conformance_check ;;
    tremplin) tremplin ;;
    *) echo "cros-standin: unknown tool ${0##*/}" >&2; exit 2 ;;
esac
