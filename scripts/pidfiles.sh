# Sourced by the dev scripts: daemons are found and stopped by the pid files they wrote, never by
# name (other clusters and libvirtds may run on the same machine).

alive() {  # alive PIDFILE: the daemon named by the pid file is running
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pidfile() {  # stop_pidfile PIDFILE: TERM the daemon it names, KILL it after 20 s
    local pid deadline
    alive "$1" || return 0
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null || true; fi
        sleep 0.2
    done
}
