# diskledger: `make demo` and `make test` work on a fresh Debian 12 machine (as root or with sudo).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ROOT ?= $(CURDIR)/var/demo

.PHONY: setup demo test check lint format bench docs clean

setup:  ## system packages and the venv (idempotent)
	@./scripts/bootstrap.sh

demo: setup  ## the main job on the embedded default: SQLite + qcow2 under ./var/demo
	DISKLEDGER_ROOT=$(DEMO_ROOT) DISKLEDGER_BACKEND=qcow2 $(VENV)/bin/diskledger demo

test: setup lint check  ## lint, then the whole suite (PostgreSQL is started by a fixture)

check: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=25  # two workers (groups: tests/conftest.py); the slowest 25 in every log: the 30-minute budget stays visible

lint: setup
	$(VENV)/bin/ruff check diskledger tests benchmarks
	$(VENV)/bin/ruff format --check diskledger tests benchmarks
	$(VENV)/bin/mypy --strict diskledger

format: setup
	$(VENV)/bin/ruff check --fix diskledger tests benchmarks
	$(VENV)/bin/ruff format diskledger tests benchmarks

CEPH_DEV ?= $(CURDIR)/var/ceph

.PHONY: ceph-dev ceph-dev-stop
ceph-dev: setup  ## start a one-node Ceph cluster under ./var/ceph and print its settings
	@./scripts/ceph-dev.sh start $(CEPH_DEV) >/dev/null
	@echo "# a one-node Ceph cluster runs under $(CEPH_DEV); to use it:"
	@./scripts/ceph-dev.sh env $(CEPH_DEV)

ceph-dev-stop:  ## stop the cluster started by ceph-dev (by its pid files)
	@./scripts/ceph-dev.sh stop $(CEPH_DEV)
	@rm -rf $(CEPH_DEV)

GLANCE_DEV ?= $(CURDIR)/var/glance

.PHONY: glance-dev glance-dev-stop
glance-dev: setup  ## start a Glance API server (no Keystone, SQLite, file store) under ./var/glance
	@./scripts/glance-dev.sh start $(GLANCE_DEV) >/dev/null
	@echo "# a Glance API server runs under $(GLANCE_DEV); to use it:"
	@./scripts/glance-dev.sh env $(GLANCE_DEV)

glance-dev-stop:  ## stop the server started by glance-dev (by its pid file)
	@./scripts/glance-dev.sh stop $(GLANCE_DEV)
	@rm -rf $(GLANCE_DEV)

LIBVIRT_DEV ?= $(CURDIR)/var/libvirt

.PHONY: libvirt-dev libvirt-dev-stop
libvirt-dev: setup  ## use or start (as root) a libvirtd at qemu:///system; pid files under ./var/libvirt
	@./scripts/libvirt-dev.sh start $(LIBVIRT_DEV) >/dev/null
	@echo "# libvirtd answers at qemu:///system (pid files of what this started: $(LIBVIRT_DEV)); to use it:"
	@echo "virsh -c qemu:///system list --all"

libvirt-dev-stop:  ## stop the daemons started by libvirt-dev (by their pid files; never one found running)
	@./scripts/libvirt-dev.sh stop $(LIBVIRT_DEV)
	@rm -rf $(LIBVIRT_DEV)

.PHONY: soak
soak: setup  ## the property-based harness on raw, qcow2 and rbd for 100,000 steps; prints the counts
	$(PY) -m tests.testing.soak

.PHONY: torture
torture: setup  ## SIGKILL operations at random moments, 2000 times on files and 100 on rbd; prints the outcome counts
	DISKLEDGER_TORTURE_KILLS=2000 DISKLEDGER_TORTURE_RBD_KILLS=100 $(PY) -m pytest -q -s tests/recovery/test_torture.py

.PHONY: guest-faults
guest-faults: setup  ## the lvm crash fault matrix in full (every operation x every point, thick and sparse) in the test guest
	DISKLEDGER_LVM_FAULTS=all $(PY) -m pytest -q -s tests/guest/test_lvm.py -k fault_matrix

.PHONY: guest-all
guest-all: setup  ## every lvm test in the test guest in full: the fault matrix and encrypted disks, thick and sparse
	DISKLEDGER_LVM_FAULTS=all DISKLEDGER_LVM_CRYPT=all $(PY) -m pytest -q -s tests/guest

.PHONY: powerloss
powerloss: setup  ## power cuts: every crash state of a 150-call workload (dm-log-writes in the test guest, replayed here) and 100 guest kills
	$(PY) -m tests.powerloss.rig --ops 150 --kills 100 $(POWERLOSS_ARGS)

bench: setup  ## side-by-side benchmarks; figures go into docs/performance.md
	$(PY) -m benchmarks --markdown

docs: setup  ## regenerate the lifecycle diagrams and docs/cli.md's session, then build the site into var/site
	$(PY) -m diskledger.states.machine > docs/states.md
	$(PY) -m diskledger.cli.transcript
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir var/site
	@echo "docs: the site is in var/site (open var/site/index.html)"

clean:
	rm -rf var build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis

CLUSTER_DEV ?= $(CURDIR)/var/cluster

.PHONY: cluster-dev cluster-dev-stop chaos
cluster-dev: setup  ## (as root) three hosts in network namespaces sharing PostgreSQL and Ceph under ./var/cluster
	@./scripts/cluster-dev.sh start $(CLUSTER_DEV)

cluster-dev-stop:  ## remove what cluster-dev made (the names and pid files it recorded)
	@./scripts/cluster-dev.sh stop $(CLUSTER_DEV)
	@rm -rf $(CLUSTER_DEV)

chaos: setup  ## (as root, ~90 min) 500 host kills and every nemesis on the multi-host rig; figures for docs/multihost.md
	$(PY) -m tests.multihost.run --kills 500 --freezes-short 40 --freezes-long 60 \
		--partitions 150 --link-downs 20 --pg-restarts 20 --listener-kills 50 \
		--subscriber-kills 50 --clock-offsets 30 --clock-rates 30 --figures var/chaos-figures.json
