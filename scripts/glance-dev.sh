#!/usr/bin/env bash
# A real OpenStack Glance API server (Glance 33.x from PyPI, in var/glance-venv) in a directory, on
# loopback, without Keystone: the settings of an image service for template sources (issue 17).
#
#   scripts/glance-dev.sh start DIR [PORT]   start (or find running); print DIR/glance-api.conf
#   scripts/glance-dev.sh stop DIR           stop it by its pid file, keep DIR
#   scripts/glance-dev.sh env DIR            print the DISKLEDGER_* settings for it
#
# Glance 32 removed the standalone (eventlet) glance-api: its API is the WSGI application
# glance.wsgi.api:application, and upstream deploys it under uWSGI, as here (pyuwsgi, uWSGI as
# a wheel, in the same venv; one master process, one worker with 4 threads, HTTP on
# 127.0.0.1:PORT). What the directory holds:
#
#   glance-api.conf        no Keystone (paste flavor empty: the release's "unauthenticated-context"
#                          pipeline, every request an admin without a project), SQLite database
#                          (glance.sqlite, schema by glance-manage db_sync), one file store "fs"
#                          (images/) as multi-store config (enabled_backends), direct_url shown,
#                          and the legacy policy defaults (the new ones want a Keystone project)
#   glance-api-paste.ini   the release's own, copied from the venv
#   uwsgi.ini              the uWSGI settings; run/glance-api.pid the master's pid; log/ the logs
#
# With GLANCE_DEV_CEPH=CEPH_DIR (a cluster started by scripts/ceph-dev.sh), the second configuration:
# a store "ceph" (glance_store's rbd driver) next to "fs", and the default, in the pool
# GLANCE_DEV_RBD_POOL (glance-images), made by client.admin, written by the restricted client.glance
# (mon 'profile rbd', osd 'profile rbd pool=glance-images'; its keyring and a ceph.conf naming it
# are in DIR). Each image is then an RBD image with a protected snapshot "snap", and its direct_url
# is rbd://FSID/POOL/IMAGE/snap: what Nova's direct-clone path reads.
#
# Daemons are stopped only by their pid file, never by name.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TIMEOUT=${GLANCE_DEV_TIMEOUT:-60}
ADDR=127.0.0.1
CEPH=${GLANCE_DEV_CEPH:-}
RBD_POOL=${GLANCE_DEV_RBD_POOL:-glance-images}

die() { echo "glance-dev: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("'"$ADDR"'", 0)); print(s.getsockname()[1])'
}

# shellcheck source=scripts/pidfiles.sh
. "$(dirname "$0")/pidfiles.sh"

answers() {  # GET /versions answers 200 (no proxy for loopback, whatever the environment says)
    curl -sf --noproxy '*' -o /dev/null --max-time 2 "http://$ADDR:$1/versions"
}

write_config() {  # write_config DIR PORT VENV
    local dir=$1 port=$2 venv=$3
    mkdir -p "$dir"/{run,log,images,staging,tasks,cache}
    cp "$venv/etc/glance/glance-api-paste.ini" "$dir/glance-api-paste.ini"
    cat >"$dir/glance-api.conf" <<CONF
[DEFAULT]
enabled_backends = fs:file
show_image_direct_url = true
image_cache_dir = $dir/cache
worker_self_reference_url = http://$ADDR:$port
log_file = $dir/log/glance-api.log
use_stderr = false

[database]
connection = sqlite:///$dir/glance.sqlite

[paste_deploy]
flavor =
config_file = $dir/glance-api-paste.ini

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = $dir/images

[os_glance_staging_store]
filesystem_store_datadir = $dir/staging

[os_glance_tasks_store]
filesystem_store_datadir = $dir/tasks

[oslo_policy]
# Without Keystone every request is an admin context with no roles and no project, which the
# release's secure RBAC defaults refuse (403 on POST /v2/images); the deprecated defaults, which
# oslo.policy still honours, allow what a trusted dev client does.
enforce_new_defaults = false
enforce_scope = false
CONF
    if [ -n "$CEPH" ]; then
        sed -i 's/^enabled_backends = fs:file$/enabled_backends = fs:file, ceph:rbd/;
                s/^default_backend = fs$/default_backend = ceph/' "$dir/glance-api.conf"
        cat >>"$dir/glance-api.conf" <<CONF

[ceph]
rbd_store_pool = $RBD_POOL
rbd_store_user = glance
rbd_store_ceph_conf = $dir/ceph.conf
rbd_store_chunk_size = 8
rados_connect_timeout = 30
CONF
    fi
    cat >"$dir/uwsgi.ini" <<INI
[uwsgi]
http-socket = $ADDR:$port
module = glance.wsgi.api:application
env = OS_GLANCE_CONFIG_DIR=$dir
master = true
processes = 1
threads = 4
enable-threads = true
lazy-apps = true
need-app = true
die-on-term = true
http-chunked-input = true
http-auto-chunked = true
http-raw-body = true
buffer-size = 65535
add-header = Connection: close
logto = $dir/log/uwsgi.log
INI
    echo "$port" >"$dir/port"
}

setup_rbd() {  # the pool and client.glance on the cluster in $CEPH; DIR/ceph.conf for client.glance
    local conf=$CEPH/ceph.conf admin_keyring=$CEPH/client.admin.keyring
    [ -s "$conf" ] && [ -s "$admin_keyring" ] ||
        die "GLANCE_DEV_CEPH=$CEPH holds no cluster started by scripts/ceph-dev.sh"
    command -v ceph >/dev/null || die "ceph (ceph-common) is not installed"
    admin() { timeout 30 ceph -c "$conf" -n client.admin -k "$admin_keyring" "$@"; }
    admin osd pool create "$RBD_POOL" 8 8 >/dev/null 2>&1 || die "could not create pool $RBD_POOL"
    admin osd pool application enable "$RBD_POOL" rbd >/dev/null 2>&1 ||
        die "could not enable rbd on pool $RBD_POOL"
    admin auth get-or-create client.glance mon 'profile rbd' osd "profile rbd pool=$RBD_POOL" \
        -o "$DIR/client.glance.keyring" 2>/dev/null || die "could not create client.glance"
    chmod 0600 "$DIR/client.glance.keyring"
    # The cluster's ceph.conf, with client.glance's keyring, log and no admin socket in DIR.
    { cat "$conf"; printf '\n[client.glance]\nkeyring = %s\nlog file = %s\nadmin socket =\n' \
        "$DIR/client.glance.keyring" "$DIR/log/ceph-client.glance.log"; } >"$DIR/ceph.conf"
}

start() {
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if alive "$DIR/run/glance-api.pid"; then
        [ -s "$DIR/port" ] && answers "$(cat "$DIR/port")" ||
            die "the glance-api of $DIR (pid $(cat "$DIR/run/glance-api.pid")) does not answer; stop it first"
        echo "$DIR/glance-api.conf"
        return
    fi
    command -v curl >/dev/null || die "curl is not installed"
    local python
    python=$("$ROOT/scripts/glance-venv.sh") || exit 1
    local venv
    venv=$(dirname "$(dirname "$python")")
    local port=${PORT:-$(free_port)}
    write_config "$DIR" "$port" "$venv"
    if [ -n "$CEPH" ]; then
        CEPH=$(cd "$CEPH" && pwd)
        setup_rbd
    fi
    OS_GLANCE_CONFIG_DIR=$DIR "$python" -m glance.cmd.manage --config-file "$DIR/glance-api.conf" \
        db_sync >"$DIR/log/db_sync.log" 2>&1 || die "glance-manage db_sync failed (log: $DIR/log/db_sync.log)"
    # The server's own process group (setsid): a ^C at the terminal that ran make does not reach it.
    OS_GLANCE_CONFIG_DIR=$DIR setsid "$python" -c 'import sys, pyuwsgi; sys.exit(pyuwsgi.run())' \
        --ini "$DIR/uwsgi.ini" >>"$DIR/log/uwsgi.stdout" 2>&1 </dev/null &
    echo $! >"$DIR/run/glance-api.pid"
    local deadline=$((SECONDS + TIMEOUT))
    until answers "$port"; do
        alive "$DIR/run/glance-api.pid" ||
            die "glance-api exited while starting (logs: $DIR/log/uwsgi.log, $DIR/log/glance-api.log)"
        if [ $SECONDS -ge $deadline ]; then
            stop_pidfile "$DIR/run/glance-api.pid"
            die "timed out after ${TIMEOUT}s waiting for GET /versions on $ADDR:$port (logs in $DIR/log)"
        fi
        sleep 0.2
    done
    echo "$DIR/glance-api.conf"
}

stop() {
    [ -d "$DIR" ] || return 0
    stop_pidfile "$DIR/run/glance-api.pid"
}

print_env() {
    DIR=$(cd "$DIR" && pwd)
    [ -s "$DIR/port" ] || die "no Glance configured in $DIR (start it first)"
    cat <<ENV
export DISKLEDGER_GLANCE_URL=http://$ADDR:$(cat "$DIR/port")
# no Keystone: any token (or none) is accepted; images are stored under $DIR/images
ENV
}

[ $# -ge 2 ] || die "usage: $0 start|stop|env DIR [PORT]"
CMD=$1 DIR=$2 PORT=${3:-}
case $CMD in
    start) start ;;
    stop) stop ;;
    env) print_env ;;
    *) die "usage: $0 start|stop|env DIR [PORT]" ;;
esac
