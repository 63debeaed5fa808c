#!/usr/bin/env bash
# The venv a real OpenStack Glance API server runs in (scripts/glance-dev.sh, tests/support/glance.py):
# var/glance-venv, Glance 33.x (2026.2) and uWSGI (pyuwsgi) from PyPI, made with the same interpreter
# as diskledger's .venv. Idempotent: a venv that already imports Glance 33's WSGI application, its
# file store and pyuwsgi is kept. Built in var/glance-venv.tmp and renamed when complete, so a failed
# or interrupted install never leaves a venv that looks usable. The pip log goes to
# var/glance-venv.log. On failure: one line on stderr, exit status 1.
#
#   scripts/glance-venv.sh            make it (or find it made); prints its python's path
#   GLANCE_VENV=DIR scripts/glance-venv.sh
#
# When Debian's python3-rados and python3-rbd are installed, the venv also sees those two modules
# (and only them, through a .pth file naming a directory of links), for glance_store's rbd store.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${GLANCE_VENV:-$ROOT/var/glance-venv}
LOG=$VENV.log
SPEC='glance==33.*'
# uWSGI, as a wheel (no compiler): Glance 32 removed the standalone glance-api, and upstream runs
# glance.wsgi.api:application under uWSGI.
SERVER_SPEC='pyuwsgi==2.0.*'

fail() { echo "glance-venv: $* (log: $LOG)" >&2; exit 1; }

works() {  # the venv imports Glance 33's WSGI app and glance_store's file store
    [ -x "$1/bin/python" ] && "$1/bin/python" - >/dev/null 2>&1 <<'PY'
import warnings
warnings.simplefilter("ignore")
from importlib.metadata import version
assert version("glance").startswith("33."), version("glance")
import glance.common.wsgi_app  # noqa: F401
import glance.cmd.manage  # noqa: F401
import pyuwsgi  # noqa: F401
import glance_store._drivers.filesystem  # noqa: F401
PY
}

link_ceph() {  # rados/rbd from Debian's packages, if installed, and nothing else of dist-packages
    local dir=$1/ceph-bindings site
    site=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$dir"
    local found=0 so
    for so in /usr/lib/python3/dist-packages/rados.cpython-*.so /usr/lib/python3/dist-packages/rbd.cpython-*.so; do
        [ -e "$so" ] || continue
        ln -sf "$so" "$dir/"
        found=1
    done
    if [ $found = 1 ]; then echo "$dir" > "$site/ceph-bindings.pth"; else rm -rf "$dir"; fi
}

if works "$VENV"; then
    link_ceph "$VENV"
    echo "$VENV/bin/python"
    exit 0
fi

PYTHON=""
if [ -f "$ROOT/.venv/pyvenv.cfg" ]; then
    PYTHON=$(sed -n 's/^executable *= *//p' "$ROOT/.venv/pyvenv.cfg")
fi
[ -n "$PYTHON" ] && [ -x "$PYTHON" ] || PYTHON=$(readlink -f "$ROOT/.venv/bin/python" 2>/dev/null || true)
[ -n "$PYTHON" ] && [ -x "$PYTHON" ] || PYTHON=$(command -v python3 || true)
[ -n "$PYTHON" ] || fail "no python3 to make the venv with"

mkdir -p "$(dirname "$VENV")"
TMP=$VENV.tmp
rm -rf "$TMP"
{
    echo "# $(date -u +%FT%TZ) $PYTHON -m venv $VENV; pip install '$SPEC' '$SERVER_SPEC'"
    "$PYTHON" -m venv "$TMP" &&
        nice -n 10 "$TMP/bin/python" -m pip install --disable-pip-version-check -q -U pip &&
        nice -n 10 "$TMP/bin/python" -m pip install --disable-pip-version-check "$SPEC" "$SERVER_SPEC"
} >"$LOG" 2>&1 || { rm -rf "$TMP"; fail "could not make the venv with $PYTHON and pip install '$SPEC' '$SERVER_SPEC'"; }

# Only bin/python is used (python -m glance.cmd.manage, pyuwsgi.run() from python -c): it works from
# the venv's final place; the console scripts in bin/ keep the temporary path in their #! lines.
rm -rf "$VENV"
mv "$TMP" "$VENV"
works "$VENV" || { rm -rf "$VENV"; fail "$VENV was made but does not import Glance 33.x's WSGI app, its file store and pyuwsgi"; }
link_ceph "$VENV"
echo "$VENV/bin/python"
