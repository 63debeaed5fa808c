"""Several "hosts" on this one machine: network namespaces joined by a bridge.

``topology(hosts=3)`` creates, for one run id ``<run>``:

* the core namespace ``dlt<run>-core`` with a bridge ``br0`` holding the core address
  ``10.213.<x>.1/24`` (PostgreSQL and Ceph listen there, see tests/multihost/rig.py);
* host namespaces ``dlt<run>-h1`` .. ``-hN``, each with one interface ``eth0`` at
  ``10.213.<x>.11``, ``.12``, ..., the other end of a veth pair ``v<run>h<i>`` enslaved to the
  bridge in the core namespace;
* loopback up everywhere.

Nothing is connected to the root namespace: no address or route is added there, so the topology
is a closed network of its own (processes in the root namespace reach PostgreSQL by its unix
socket, which is a file). ``<x>`` is derived from the run id and checked to be unused by the
root namespace's addresses and routes, so that a reader of ``ip addr`` never confuses two networks.

Everything is removed on exit, and only what this run created (deleting a namespace deletes its
interfaces). An ``atexit`` hook removes it too should the process end without leaving the block::

    with topology(hosts=2) as net:
        net.run(net.hosts[0], "ping", "-c1", net.core.address)
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "HOST_ADDRESS_BASE",
    "Namespace",
    "NetnsError",
    "NetnsUnavailable",
    "Topology",
    "create_topology",
    "new_run_id",
    "pick_network",
    "topology",
]

SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
"""Each run takes one /24 of this range."""
HOST_ADDRESS_BASE = 10
"""Host ``i`` (1-based) gets ``.<10 + i>``; the core namespace gets ``.1``."""
BRIDGE = "br0"
HOST_INTERFACE = "eth0"
_TOOLS = ("ip",)


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or iproute2 missing)."""


class NetnsError(RuntimeError):
    """A command setting up or using the topology failed."""


@dataclass(frozen=True)
class Namespace:
    """One network namespace of the topology and its one address."""

    name: str
    address: str

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass
class Topology:
    run_id: str
    network: ipaddress.IPv4Network
    core: Namespace
    hosts: tuple[Namespace, ...]
    veths: dict[str, str] = field(default_factory=dict)
    """Host namespace name -> the name of its veth end in the core namespace."""
    _created: list[str] = field(default_factory=list)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def host(self, name: str) -> Namespace:
        """The host namespace by its short name (``h1``) or full name."""
        for ns in self.hosts:
            if name in (ns.name, ns.name.rsplit("-", 1)[1]):
                return ns
        raise KeyError(name)

    def run(
        self,
        ns: Namespace | None,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``ns`` (``None``: here), capturing output; raise NetnsError when it
        fails and ``check``."""
        return _run(ns.argv(*argv) if ns else list(argv), check=check, timeout=timeout, input=input)

    def set_link(self, host: Namespace, up: bool) -> None:
        """Take the host's veth end in the core namespace down (its cable pulled) or up again."""
        self.run(self.core, "ip", "link", "set", self.veths[host.name], "up" if up else "down")

    def close(self) -> None:
        """Delete the namespaces this run created (idempotent). Processes still inside keep an
        anonymous copy alive until they exit: stop them first."""
        errors = []
        while self._created:
            name = self._created.pop()
            done = _run(["ip", "netns", "delete", name], check=False)
            if done.returncode != 0 and name in _existing_namespaces():
                errors.append(f"{name}: {done.stderr.strip()}")
        atexit.unregister(self.close)
        if errors:
            raise NetnsError("could not delete " + "; ".join(errors))


def new_run_id() -> str:
    """Six hex digits: short enough for 15-byte interface names (``v<run>h<i>``)."""
    return secrets.token_hex(3)


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _existing_namespaces() -> set[str]:
    listing = _run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def _networks_in_use() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """IPv4 networks of the root namespace's addresses and routes."""
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for line in _run(
        ["ip", "-4", "route", "show", "table", "all"], check=False
    ).stdout.splitlines():
        words = line.split()
        if not words:
            continue
        target = (
            words[1]
            if words[0] in ("local", "broadcast", "unicast") and len(words) > 1
            else words[0]
        )
        if target == "default":
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(target, strict=False))
    return used


def pick_network(run_id: str) -> ipaddress.IPv4Network:
    """A /24 of 10.213.0.0/16 chosen by ``run_id``, the first free one from there on."""
    subnets = list(ipaddress.IPv4Network(SUPERNET).subnets(new_prefix=24))
    used = _networks_in_use()
    start = int(run_id, 16) % len(subnets)
    for step in range(len(subnets)):
        candidate = subnets[(start + step) % len(subnets)]
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise NetnsError(f"every /24 of {SUPERNET} is in use in the root namespace")


def _check_available() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise NetnsUnavailable(f"{', '.join(missing)} not installed (Debian package iproute2)")


def create_topology(
    hosts: int = 3, *, run_id: str | None = None, network: str | None = None
) -> Topology:
    """Create the namespaces and links (see the module docstring); the caller must ``close()``
    the result. Whatever was created is removed again if a step fails."""
    _check_available()
    if not 1 <= hosts <= 200:
        raise ValueError("hosts must be between 1 and 200")
    run_id = run_id or new_run_id()
    net = ipaddress.ip_network(network) if network else pick_network(run_id)
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 24:
        raise ValueError(f"{net} must be an IPv4 network of at least /24")
    addresses = list(net.hosts())
    prefix = f"dlt{run_id}"
    core = Namespace(f"{prefix}-core", str(addresses[0]))
    host_namespaces = tuple(
        Namespace(f"{prefix}-h{i}", str(addresses[HOST_ADDRESS_BASE + i - 1]))
        for i in range(1, hosts + 1)
    )
    topo = Topology(run_id, net, core, host_namespaces)
    existing = _existing_namespaces()
    clash = [ns.name for ns in (core, *host_namespaces) if ns.name in existing]
    if clash:
        raise NetnsError(f"namespaces {clash} exist already (run id {run_id} is in use)")
    atexit.register(topo.close)
    try:
        for ns in (core, *host_namespaces):
            _run(["ip", "netns", "add", ns.name])
            topo._created.append(ns.name)
            _run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        _run(["ip", "-n", core.name, "link", "add", BRIDGE, "type", "bridge"])
        _run(
            ["ip", "-n", core.name, "addr", "add", f"{core.address}/{net.prefixlen}", "dev", BRIDGE]
        )
        _run(["ip", "-n", core.name, "link", "set", BRIDGE, "up"])
        for i, ns in enumerate(host_namespaces, start=1):
            veth = f"v{run_id}h{i}"
            # Both ends are created directly in their namespaces: nothing appears in ours.
            peer = ["peer", "name", HOST_INTERFACE, "netns", ns.name]
            _run(["ip", "link", "add", veth, "netns", core.name, "type", "veth", *peer])
            topo.veths[ns.name] = veth
            _run(["ip", "-n", core.name, "link", "set", veth, "master", BRIDGE])
            _run(["ip", "-n", core.name, "link", "set", veth, "up"])
            cidr = f"{ns.address}/{net.prefixlen}"
            _run(["ip", "-n", ns.name, "addr", "add", cidr, "dev", HOST_INTERFACE])
            _run(["ip", "-n", ns.name, "link", "set", HOST_INTERFACE, "up"])
    except BaseException:
        topo.close()
        raise
    return topo


@contextlib.contextmanager
def topology(
    hosts: int = 3, *, run_id: str | None = None, network: str | None = None
) -> Iterator[Topology]:
    """The topology of the module docstring, removed on the way out."""
    topo = create_topology(hosts, run_id=run_id, network=network)
    try:
        yield topo
    finally:
        topo.close()
