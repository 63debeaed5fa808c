#!/usr/bin/env bash
# Install everything diskledger needs on a fresh Debian 12 machine, idempotently:
# system packages (qemu-utils, PostgreSQL for the ledger tests, a one-node Ceph cluster's daemons,
# the rados/rbd Python bindings and qemu's rbd driver, libvirtd with its qemu and rbd drivers,
# KVM's qemu-system-x86 and the libvirt Python bindings for the tests that boot real domains,
# python3-venv, for the multi-host rig (tests/multihost) iptables and libfaketime, and for the test
# guest (tests/support/guest.py, device-mapper for LVM and dm-crypt) mkfs.ext4; the guest's own
# kernel and userland are Debian packages it downloads into /var/cache/diskledger-guest, installed
# nowhere) and a venv made from /usr/bin/python3 with --system-site-packages (Debian's
# rados/rbd/libvirt bindings live there).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
packages=(
    qemu-utils python3-venv postgresql
    ceph-mon ceph-osd ceph-common python3-rados python3-rbd qemu-block-extra
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-daemon-driver-storage-rbd
    python3-libvirt qemu-system-x86
    iptables faketime
    # tests/support/crash_report.py: a crashed test worker's native stacks, from its core
    gdb
    e2fsprogs apt
    # tests/test_cli_completion.py: zsh completion, and the man page rendered by groff and man
    zsh groff-base man-db
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # Another apt run (a second checkout's make setup, unattended-upgrades) holds dpkg's lock for
    # a while on a fresh machine: wait for it rather than fail.
    lock=(-o DPkg::Lock::Timeout=600)
    $SUDO apt-get "${lock[@]}" update -qq
    $SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$VENV/.bootstrap-stamp"
if [ ! -x "$VENV/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
