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

NAME=glance-venv
VENV=${GLANCE_VENV:-$(cd "$(dirname "$0")/.." && pwd)/var/glance-venv}
# uWSGI, as a wheel (no compiler): Glance 32 removed the standalone glance-api, and upstream runs
# glance.wsgi.api:application under uWSGI.
SPECS=('glance==33.*' 'pyuwsgi==2.0.*')
WHAT="Glance 33.x's WSGI app, its file store and pyuwsgi"
# shellcheck source=lib/peer-venv.sh
source "$(dirname "$0")/lib/peer-venv.sh"

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

peer_venv
