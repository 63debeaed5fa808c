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

NAME=nova-venv
VENV=${NOVA_VENV:-$(cd "$(dirname "$0")/.." && pwd)/var/nova-venv}
SPECS=('nova==34.*')
WHAT="nova.virt.libvirt.imagebackend 34.x"
# shellcheck source=lib/peer-venv.sh
source "$(dirname "$0")/lib/peer-venv.sh"

works() {  # the venv imports Nova 34's libvirt image backend
    [ -x "$1/bin/python" ] && "$1/bin/python" - >/dev/null 2>&1 <<'PY'
import warnings
warnings.simplefilter("ignore")
from importlib.metadata import version
assert version("nova").startswith("34."), version("nova")
import nova.virt.libvirt.imagebackend  # noqa: F401
PY
}

peer_venv
