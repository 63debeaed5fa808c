#!/usr/bin/env bash
# A multi-host diskledger playground on this machine: one core network namespace running
# PostgreSQL and a one-node Ceph cluster, and host namespaces h1..hN on a bridge with it
# (the topology of tests/support/netns.py; the test rig itself is tests/multihost/rig.py).
#
#   scripts/cluster-dev.sh start DIR [HOSTS]   build it (3 hosts by default), write DIR/h<i>.env
#   scripts/cluster-dev.sh status DIR          what runs
#   scripts/cluster-dev.sh run DIR h<i> CMD... run CMD on host h<i> with its environment
#   scripts/cluster-dev.sh stop DIR            remove exactly what start made (names and pid
#                                              files recorded in DIR/state), then DIR's files
#
# Needs root. Nothing is connected to the root namespace: hosts reach PostgreSQL and Ceph on the
# core address over their veths; from the root namespace PostgreSQL answers on its unix socket.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
PG_PORT=5432
DB=diskledger

die() { echo "cluster-dev: $*" >&2; exit 1; }

# shellcheck source=scripts/pidfiles.sh
. "$(dirname "$0")/pidfiles.sh"

state() { grep "^$1=" "$DIR/state" 2>/dev/null | tail -1 | cut -d= -f2-; }
record() { echo "$1=$2" >>"$DIR/state"; }

start() {
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
    [ ! -e "$DIR/state" ] || die "$DIR/state exists: stop that cluster first ($0 stop $DIR)"
    local hosts=${HOSTS:-3}
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    local run net prefix core_addr bindir pgdir i
    run=$(python3 -c 'import secrets; print(secrets.token_hex(3))')
    net=$(cd "$ROOT" && "$PY" -c 'import sys; from tests.support.netns import pick_network; print(pick_network(sys.argv[1]))' "$run")
    prefix=${net%.0/24}
    core_addr=$prefix.1
    : >"$DIR/state"
    record run "$run"
    record network "$net"
    record core_address "$core_addr"
    trap 'echo "cluster-dev: start failed; undoing" >&2; stop' ERR

    ip netns add "dlt$run-core"
    record netns "dlt$run-core"
    ip -n "dlt$run-core" link set lo up
    ip -n "dlt$run-core" link add br0 type bridge
    ip -n "dlt$run-core" addr add "$core_addr/24" dev br0
    ip -n "dlt$run-core" link set br0 up
    for i in $(seq 1 "$hosts"); do
        local ns=dlt$run-h$i addr=$prefix.$((10 + i))
        ip netns add "$ns"
        record netns "$ns"
        ip -n "$ns" link set lo up
        ip link add "v${run}h$i" netns "dlt$run-core" type veth peer name eth0 netns "$ns"
        ip -n "dlt$run-core" link set "v${run}h$i" master br0
        ip -n "dlt$run-core" link set "v${run}h$i" up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        record host "h$i $ns $addr"
    done

    # PostgreSQL in the core namespace, as the postgres user, on a directory it owns under /tmp
    # (it must traverse every directory above it).
    bindir=$(cd "$ROOT" && "$PY" -c 'from tests.support.postgres import find_bindir; print(find_bindir())')
    pgdir=$(mktemp -d /tmp/diskledger-cluster-pg-XXXXXX)
    record pgdir "$pgdir"
    chown postgres: "$pgdir"
    local as_pg=(runuser -u postgres --)
    "${as_pg[@]}" "$bindir/initdb" -D "$pgdir/data" -A trust -U postgres --no-sync -E UTF8 --no-locale >/dev/null
    cat >>"$pgdir/data/postgresql.conf" <<EOF
# Added by scripts/cluster-dev.sh
listen_addresses = '$core_addr'
port = $PG_PORT
unix_socket_directories = '$pgdir'
fsync = off
synchronous_commit = off
EOF
    echo "host all all $net trust" >>"$pgdir/data/pg_hba.conf"
    ip netns exec "dlt$run-core" "${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w start >/dev/null
    record pg_pidfile "$pgdir/data/postmaster.pid"
    "${as_pg[@]}" psql -q -h "$pgdir" -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE $DB" >/dev/null

    # Ceph in the core namespace, on the core address.
    record ceph_dir "$DIR/ceph"
    ip netns exec "dlt$run-core" env CEPH_DEV_ADDR="$core_addr" "$ROOT/scripts/ceph-dev.sh" start "$DIR/ceph" >/dev/null

    for i in $(seq 1 "$hosts"); do
        {
            echo "DISKLEDGER_LEDGER=postgresql+psycopg://postgres@$core_addr:$PG_PORT/$DB"
            echo "DISKLEDGER_HOST=h$i"
            echo "DISKLEDGER_BOOT_ID=$(python3 -c 'import uuid; print(uuid.uuid4())')"
            "$ROOT/scripts/ceph-dev.sh" env "$DIR/ceph" | sed 's/^export //'
        } >"$DIR/h$i.env"
        record envfile "$DIR/h$i.env"
    done
    trap - ERR
    cat <<EOF
# diskledger cluster $run: core dlt$run-core ($core_addr: PostgreSQL :$PG_PORT, Ceph), hosts:
$(grep '^host=' "$DIR/state" | cut -d= -f2- | sed 's/^/#   /')
# run a command on a host (its settings are in $DIR/h<i>.env):
ip netns exec dlt$run-h1 env \$(cat $DIR/h1.env) $ROOT/.venv/bin/diskledger --help
# the ledger from here (unix socket):
runuser -u postgres -- psql -h $pgdir -p $PG_PORT -U postgres $DB
# stop and remove it all:
$0 stop $DIR
EOF
}

status() {
    [ -f "$DIR/state" ] || { echo "no cluster recorded in $DIR"; return 1; }
    local ns pidfile code=0
    echo "run $(state run), network $(state network), core $(state core_address)"
    for ns in $(grep '^netns=' "$DIR/state" | cut -d= -f2); do
        if ip netns list | grep -q "^$ns\b"; then
            echo "netns $ns: present ($(ip netns pids "$ns" | wc -l) processes)"
        else
            echo "netns $ns: MISSING"; code=1
        fi
    done
    pidfile=$(state pg_pidfile)
    if [ -n "$pidfile" ] && [ -s "$pidfile" ] && kill -0 "$(head -1 "$pidfile")" 2>/dev/null; then
        echo "postgresql: running (pid $(head -1 "$pidfile"))"
    else
        echo "postgresql: NOT running"; code=1
    fi
    for pidfile in "$(state ceph_dir)"/run/mon.a.pid "$(state ceph_dir)"/run/osd.0.pid; do
        if alive "$pidfile"; then echo "ceph $(basename "$pidfile" .pid): running (pid $(cat "$pidfile"))"
        else echo "ceph $(basename "$pidfile" .pid): NOT running"; code=1; fi
    done
    grep '^envfile=' "$DIR/state" | cut -d= -f2 | sed 's/^/env file: /'
    return $code
}

stop() {
    [ -f "$DIR/state" ] || return 0
    local pgdir pidfile ceph_dir ns pids bindir
    ceph_dir=$(state ceph_dir)
    [ -z "$ceph_dir" ] || "$ROOT/scripts/ceph-dev.sh" stop "$ceph_dir"
    pgdir=$(state pgdir)
    pidfile=$(state pg_pidfile)
    if [ -n "$pgdir" ] && [ -s "$pgdir/data/postmaster.pid" ]; then
        bindir=$(cd "$ROOT" && "$PY" -c 'from tests.support.postgres import find_bindir; print(find_bindir())')
        runuser -u postgres -- "$bindir/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null || true
    fi
    if [ -n "$pidfile" ] && [ -s "$pidfile" ]; then
        head -1 "$pidfile" >"$DIR/.pg.pid" && stop_pidfile "$DIR/.pg.pid" && rm -f "$DIR/.pg.pid"
    fi
    for ns in $(grep '^netns=' "$DIR/state" | cut -d= -f2 | tac); do
        ip netns list | grep -q "^$ns\b" || continue
        pids=$(ip netns pids "$ns" | tr '\n' ' ')
        [ -z "$pids" ] || echo "cluster-dev: processes still in $ns (not started by this script, left alone): $pids" >&2
        ip netns delete "$ns"
    done
    [ -z "$pgdir" ] || rm -rf "$pgdir"
    [ -z "$ceph_dir" ] || rm -rf "$ceph_dir"
    grep '^envfile=' "$DIR/state" | cut -d= -f2 | xargs -r rm -f
    rm -f "$DIR/state"
    rmdir "$DIR" 2>/dev/null || true
}

run_on() {
    local host=$1; shift
    [ $# -ge 1 ] || die "usage: $0 run DIR h<i> COMMAND..."
    [ -e "$DIR/state" ] || die "no cluster in $DIR (start one: $0 start $DIR)"
    local ns envfile
    ns=$(grep '^netns=' "$DIR/state" | cut -d= -f2 | grep -- "-$host\$" | head -1)
    envfile="$DIR/$host.env"
    [ -n "$ns" ] && [ -e "$envfile" ] || die "no host $host in $DIR (see $0 status $DIR)"
    # The env file holds KEY=VALUE lines without spaces in the values.
    # shellcheck disable=SC2046
    exec ip netns exec "$ns" env $(grep -v '^#' "$envfile") PATH="$ROOT/.venv/bin:$PATH" "$@"
}

[ $# -ge 2 ] || die "usage: $0 start|stop|status|run DIR [HOSTS | h<i> COMMAND...]"
DIR=$2
case $1 in
    start) HOSTS=${3:-}; start ;;
    stop) stop ;;
    status) status ;;
    run) [ $# -ge 4 ] || die "usage: $0 run DIR h<i> COMMAND..."; shift 2; run_on "$@" ;;
    *) die "unknown command $1 (start, stop, status, run)" ;;
esac
