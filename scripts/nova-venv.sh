#!/usr/bin/env bash
# The venv OpenStack Nova runs in for the Nova benchmark (benchmarks/nova.py,
# benchmarks/peers/nova_vs_diskledger.py): var/nova-venv, Nova 34.x from PyPI, made with the same
# interpreter as diskledger's .venv (Nova's qemu-img info runs a Python wrapper: the interpreter
# matters to its timings). Idempotent: a venv that already imports Nova 34's imagebackend is kept.
# Built in var/nova-venv.tmp and renamed when complete, so a failed or interrupted install never
# leaves a venv that looks usable. The pip log goes to var/nova-venv.log. On failure: one line on
# stderr, exit status 1.
#
#   scripts/nova-venv.sh            make it (or find it made); prints its python's path
#   NOVA_VENV=DIR scripts/nova-venv.sh
#
# When Debian's python3-rados and python3-rbd are installed, the venv also sees those two modules
# (and only them, through a .pth file naming a directory of links), for Nova's Rbd backend.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${NOVA_VENV:-$ROOT/var/nova-venv}
LOG=$VENV.log
SPEC='nova==34.*'

fail() { echo "nova-venv: $* (log: $LOG)" >&2; exit 1; }

works() {  # the venv imports Nova 34's libvirt image backend
    [ -x "$1/bin/python" ] && "$1/bin/python" - >/dev/null 2>&1 <<'PY'
import warnings
warnings.simplefilter("ignore")
from importlib.metadata import version
assert version("nova").startswith("34."), version("nova")
import nova.virt.libvirt.imagebackend  # noqa: F401
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
    echo "# $(date -u +%FT%TZ) $PYTHON -m venv $VENV; pip install '$SPEC'"
    "$PYTHON" -m venv "$TMP" &&
        "$TMP/bin/python" -m pip install --disable-pip-version-check -q -U pip &&
        "$TMP/bin/python" -m pip install --disable-pip-version-check "$SPEC"
} >"$LOG" 2>&1 || { rm -rf "$TMP"; fail "could not make the venv with $PYTHON and pip install '$SPEC'"; }

# Only bin/python is used (python -m pip, python -m oslo_concurrency.prlimit): it works from
# the venv's final place; the console scripts in bin/ keep the temporary path in their #! lines.
rm -rf "$VENV"
mv "$TMP" "$VENV"
works "$VENV" || { rm -rf "$VENV"; fail "$VENV was made but does not import nova.virt.libvirt.imagebackend 34.x"; }
link_ceph "$VENV"
echo "$VENV/bin/python"
