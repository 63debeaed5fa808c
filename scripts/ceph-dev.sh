#!/usr/bin/env bash
# A one-node Ceph cluster in a directory, on loopback (or CEPH_DEV_ADDR), with cephx on as in production.
#
#   scripts/ceph-dev.sh start DIR [PORT]   start (or find running) and print DIR/ceph.conf
#   scripts/ceph-dev.sh stop DIR           stop the daemons by their pid files, keep DIR
#   scripts/ceph-dev.sh env DIR            print the DISKLEDGER_* settings for the cluster
#
# One ceph-mon (v2:127.0.0.1:PORT, and msgr1 on another free port: qemu's rbd driver, which libvirt
# hands monitor hosts and ports, takes an address without a v2: prefix for msgr1 unless its port
# is 3300) and one ceph-osd on memstore (data lives in memory: a stopped
# cluster does not come back), pool size 1. Two keyrings: client.admin for set-up only, and the
# restricted client.diskledger (mon 'profile rbd', osd 'profile rbd' on the two pools, and
# 'profile rbd-read-only' on the image service's pool) that diskledger uses. No ceph-mgr: nothing
# diskledger does needs one, so "healthy" here means a mon in quorum, the OSD up and in, and a
# write/read round trip through the pool as the restricted user.
set -euo pipefail

POOL=${DISKLEDGER_RBD_POOL:-diskledger}
IMAGE_POOL=${DISKLEDGER_RBD_SNAPSHOT_POOL:-diskledger-snapshots}
# The image service's pool (scripts/glance-dev.sh makes it): diskledger clones templates from its
# images' protected snapshots and never writes to it (Nova's client is granted the same).
GLANCE_POOL=${GLANCE_DEV_RBD_POOL:-glance-images}
CLIENT=diskledger
TIMEOUT=${CEPH_DEV_TIMEOUT:-90}
# The address the daemons bind to: loopback, or (the multi-host rig, tests/multihost, run inside a
# network namespace with `ip netns exec`) that namespace's own address, which other namespaces reach.
ADDR=${CEPH_DEV_ADDR:-127.0.0.1}

die() { echo "ceph-dev: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("'"$ADDR"'", 0)); print(s.getsockname()[1])'
}

# shellcheck source=scripts/pidfiles.sh
. "$(dirname "$0")/pidfiles.sh"

admin() { timeout 30 ceph -c "$DIR/ceph.conf" -n client.admin -k "$DIR/client.admin.keyring" "$@"; }

wait_for() {  # wait_for DESCRIPTION COMMAND...: retry until it succeeds or TIMEOUT passes
    local what=$1; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out after ${TIMEOUT}s waiting for $what (logs in $DIR/log)"
        sleep 0.5
    done
}

osd_up() { admin osd dump --format json | python3 -c '
import json, sys
osds = json.load(sys.stdin)["osds"]
sys.exit(0 if osds and all(o["up"] and o["in"] for o in osds) else 1)'; }

round_trip() {
    local obj="ceph-dev-health-$$"
    echo ok | rados -c "$DIR/ceph.conf" -n "client.$CLIENT" -k "$DIR/client.$CLIENT.keyring" -p "$POOL" put "$obj" - &&
        rados -c "$DIR/ceph.conf" -n "client.$CLIENT" -k "$DIR/client.$CLIENT.keyring" -p "$POOL" rm "$obj"
}

start() {
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if alive "$DIR/run/mon.a.pid" && alive "$DIR/run/osd.0.pid"; then
        echo "$DIR/ceph.conf"
        return
    fi
    [ ! -e "$DIR/ceph.conf" ] || die "$DIR holds a stopped cluster (memstore data is gone); remove it first"
    command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null ||
        die "ceph-mon/ceph-osd are not installed (run scripts/bootstrap.sh --ceph)"
    local port=${PORT:-$(free_port)} v1port
    v1port=$(free_port)
    local fsid
    fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    mkdir -p "$DIR"/{run,log,mon/ceph-a,osd/ceph-0}
    cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:$ADDR:$port,v1:$ADDR:$v1port]
public addr = $ADDR
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
mon data = $DIR/mon/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
keyring = $DIR/\$name.keyring

[mon]
# Snapshot and pool changes wait for the monitor's next proposal: 1 s by default, which a
# one-node dev cluster has no reason to batch for.
paxos propose interval = 0.05

[osd]
keyring = $DIR/osd/\$cluster-\$id/keyring
osd objectstore = memstore
memstore device bytes = $((8 << 30))
osd max object name len = 256
osd max object namespace len = 64
# The fault tests end a thawed placement group's read-lease wait by marking the OSD down (as an
# operator would); past 5 markdowns in 10 minutes the OSD would shut itself down for good.
osd max markdown count = 1000
EOF
    ceph-authtool --create-keyring "$DIR/mon.a.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.a.keyring" --import-keyring "$DIR/client.admin.keyring" >/dev/null
    monmaptool --create --addv a "[v2:$ADDR:$port,v1:$ADDR:$v1port]" --fsid "$fsid" "$DIR/monmap" >/dev/null
    ceph-mon -c "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.a.keyring"
    ceph-mon -c "$DIR/ceph.conf" -i a 2>>"$DIR/log/mon.a.stderr"
    wait_for "the monitor" admin mon stat

    local osd_uuid
    osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    [ "$(admin osd new "$osd_uuid")" = 0 ] || die "expected the first OSD to get id 0"
    ceph-osd -c "$DIR/ceph.conf" -i 0 --mkfs --mkkey --no-mon-config --osd-uuid "$osd_uuid" \
        2>>"$DIR/log/mkfs.log"
    admin auth add osd.0 osd 'allow *' mon 'allow profile osd' -i "$DIR/osd/ceph-0/keyring" 2>/dev/null
    ceph-osd -c "$DIR/ceph.conf" -i 0 2>>"$DIR/log/osd.0.stderr"
    wait_for "the OSD to be up and in" osd_up

    for pool in "$POOL" "$IMAGE_POOL"; do
        admin osd pool create "$pool" 8 8 >/dev/null 2>&1
        admin osd pool application enable "$pool" rbd >/dev/null 2>&1
    done
    admin auth get-or-create "client.$CLIENT" mon 'profile rbd' \
        osd "profile rbd pool=$POOL, profile rbd pool=$IMAGE_POOL, profile rbd-read-only pool=$GLANCE_POOL" -o "$DIR/client.$CLIENT.keyring" 2>/dev/null
    chmod 0600 "$DIR"/*.keyring
    wait_for "a write/read round trip through pool $POOL" round_trip
    echo "$DIR/ceph.conf"
}

stop() {
    [ -d "$DIR" ] || return 0
    local pidfile
    for pidfile in "$DIR/run/osd.0.pid" "$DIR/run/mon.a.pid"; do
        stop_pidfile "$pidfile"
    done
}

print_env() {
    DIR=$(cd "$DIR" && pwd)
    cat <<EOF
export DISKLEDGER_BACKEND=rbd
export DISKLEDGER_CEPH_CONF=$DIR/ceph.conf
export DISKLEDGER_CEPH_KEYRING=$DIR/client.$CLIENT.keyring
export DISKLEDGER_RBD_USER=$CLIENT
export DISKLEDGER_RBD_POOL=$POOL
export DISKLEDGER_RBD_SNAPSHOT_POOL=$IMAGE_POOL
EOF
}

[ $# -ge 2 ] || die "usage: $0 start|stop|env DIR [PORT]"
DIR=$2
PORT=${3:-}
case $1 in
    start) start ;;
    stop) stop ;;
    env) print_env ;;
    *) die "unknown command $1 (start, stop, env)" ;;
esac
