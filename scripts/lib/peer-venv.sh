# Sourced by scripts/nova-venv.sh and scripts/glance-venv.sh: a venv of a peer from PyPI, made
# with the interpreter of diskledger's .venv, built in VENV.tmp and renamed when complete (a
# failed or interrupted install never leaves a venv that looks usable), idempotent, the pip log
# in VENV.log, one line on stderr and exit status 1 on failure. Debian's rados/rbd modules, when
# installed, are the only part of dist-packages the venv sees (a .pth naming a directory of
# links). The caller sets NAME (for messages), VENV, SPECS (an array of pip requirements), WHAT
# (what `works` checks, for the failure line) and defines `works DIR` (0 when DIR is a venv
# that imports the peer), then calls `peer_venv`, which prints the venv's python.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOG=$VENV.log

fail() { echo "$NAME: $* (log: $LOG)" >&2; exit 1; }

link_ceph() {
    local dir=$1/ceph-bindings site found=0 so
    site=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$dir"
    for so in /usr/lib/python3/dist-packages/rados.cpython-*.so /usr/lib/python3/dist-packages/rbd.cpython-*.so; do
        [ -e "$so" ] || continue
        ln -sf "$so" "$dir/"
        found=1
    done
    if [ $found = 1 ]; then echo "$dir" > "$site/ceph-bindings.pth"; else rm -rf "$dir"; fi
}

peer_venv() {
    # One builder at a time: a second caller (the test that needs the venv, while the session's
    # prebuild makes it) waits here, then finds it made.
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"
    flock 9
    if works "$VENV"; then
        link_ceph "$VENV"
        echo "$VENV/bin/python"
        return 0
    fi
    local python="" tmp=$VENV.tmp
    if [ -f "$ROOT/.venv/pyvenv.cfg" ]; then
        python=$(sed -n 's/^executable *= *//p' "$ROOT/.venv/pyvenv.cfg")
    fi
    [ -n "$python" ] && [ -x "$python" ] || python=$(readlink -f "$ROOT/.venv/bin/python" 2>/dev/null || true)
    [ -n "$python" ] && [ -x "$python" ] || python=$(command -v python3 || true)
    [ -n "$python" ] || fail "no python3 to make the venv with"
    rm -rf "$tmp"
    {
        echo "# $(date -u +%FT%TZ) $python -m venv $VENV; pip install ${SPECS[*]}"
        "$python" -m venv "$tmp" &&
            nice -n 10 "$tmp/bin/python" -m pip install --disable-pip-version-check -q -U pip &&
            nice -n 10 "$tmp/bin/python" -m pip install --disable-pip-version-check "${SPECS[@]}"
    } >"$LOG" 2>&1 || { rm -rf "$tmp"; fail "could not make the venv with $python and pip install ${SPECS[*]}"; }
    # Only bin/python is used (python -m ..., python -c): it works from the venv's final place;
    # the console scripts in bin/ keep the temporary path in their #! lines.
    rm -rf "$VENV"
    mv "$tmp" "$VENV"
    works "$VENV" || { rm -rf "$VENV"; fail "$VENV was made but does not import $WHAT"; }
    link_ceph "$VENV"
    echo "$VENV/bin/python"
}
