#!/usr/bin/env bash
# libvirtd serving qemu:///system, for tests that boot real KVM domains.
#
#   scripts/libvirt-dev.sh start DIR    use a running libvirtd ("running") or start one ("started")
#   scripts/libvirt-dev.sh stop DIR     stop the daemons by their pid files in DIR, nothing else
#   scripts/libvirt-dev.sh status DIR   exit 0 when qemu:///system answers
#
# There is one qemu:///system per machine, so DIR only holds the pid files (and the daemons'
# stderr) of what this script started: a libvirtd someone else runs is used as it is and never
# stopped, and so is a virtlogd someone else runs when only libvirtd has to be started. Starting
# needs root (libvirtd for qemu:///system runs as root, qemu as libvirt-qemu) and works without
# systemd or udev, as in a container.
#
# Exit status 3 means a component is missing (packages, /dev/kvm), so callers can tell "cannot
# run here" from "failed to start".
set -euo pipefail

URI=qemu:///system
TIMEOUT=${LIBVIRT_DEV_TIMEOUT:-60}
# libvirtd and virtlogd live in /usr/sbin, which a non-login root shell may not have on PATH.
PATH=$PATH:/usr/sbin:/sbin

die() { echo "libvirt-dev: $*" >&2; exit 1; }
unavailable() { echo "libvirt-dev: $*" >&2; exit 3; }

# shellcheck source=scripts/pidfiles.sh
. "$(dirname "$0")/pidfiles.sh"

answers() { timeout 10 virsh -c "$URI" version >/dev/null 2>&1; }

virtlogd_answers() {  # something accepts connections on virtlogd's socket
    python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("/var/run/libvirt/virtlogd-sock")
except OSError:
    sys.exit(1)' 2>/dev/null
}

start() {
    if command -v virsh >/dev/null && answers; then
        echo running
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "starting libvirtd for $URI needs root (or start it yourself)"
    local tool
    for tool in libvirtd virtlogd virsh; do
        command -v "$tool" >/dev/null ||
            unavailable "$tool is not installed (Debian packages libvirt-daemon-system libvirt-daemon-driver-qemu; scripts/bootstrap.sh installs them)"
    done
    id libvirt-qemu >/dev/null 2>&1 ||
        unavailable "user libvirt-qemu does not exist (Debian package libvirt-daemon-system)"
    [ -e /dev/kvm ] || unavailable "no /dev/kvm: KVM is not available on this machine"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    mkdir -p /var/run/libvirt /var/log/libvirt
    # Without udev nothing applies the rule that hands /dev/kvm to group kvm (it stays root:root
    # 0600), and qemu, running as libvirt-qemu in group kvm, fails with "Could not access KVM
    # kernel module: Permission denied". Do what udev would.
    if [ "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" ]; then
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
    fi
    if ! virtlogd_answers; then
        virtlogd -d -p "$DIR/virtlogd.pid" </dev/null >/dev/null 2>>"$DIR/virtlogd.stderr"
    fi
    libvirtd -d -p "$DIR/libvirtd.pid" </dev/null >/dev/null 2>>"$DIR/libvirtd.stderr"
    local deadline=$((SECONDS + TIMEOUT))
    until answers; do
        [ $SECONDS -lt $deadline ] ||
            die "timed out after ${TIMEOUT}s waiting for libvirtd to answer on $URI (stderr in $DIR)"
        sleep 0.2
    done
    echo started
}

stop() {
    [ -d "$DIR" ] || return 0
    local pidfile
    for pidfile in "$DIR/libvirtd.pid" "$DIR/virtlogd.pid"; do
        stop_pidfile "$pidfile"
        rm -f "$pidfile"
    done
}

[ $# -ge 2 ] || die "usage: $0 start|stop|status DIR"
DIR=$2
case $1 in
    start) start ;;
    stop) stop ;;
    status) command -v virsh >/dev/null && answers ;;
    *) die "unknown command $1 (start, stop, status)" ;;
esac
