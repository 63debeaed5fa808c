"""The one connection to libvirtd: the few calls diskledger makes, libvirt's errors translated.

The binding (Debian ``python3-libvirt``) is imported on first use, so an engine that never
touches a domain needs neither it nor a running libvirtd.
"""

from __future__ import annotations

import contextlib
import functools
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from diskledger.backends.contract import DiskSource
from diskledger.errors import (
    DomainNotFound,
    HypervisorError,
    HypervisorUnavailable,
    InvalidInput,
    NotFound,
)
from diskledger.hypervisor.device import disks_in

__all__ = ["DEFAULT_URI", "DomainInfo", "Hypervisor"]

DEFAULT_URI = "qemu:///system"
T = TypeVar("T")

# virErrorNumber values this module acts on (libvirt's ABI: they never change).
_NO_CONNECT, _NO_DOMAIN, _NO_SECRET = 5, 42, 66
_POLL = 0.1
_SECTOR = 512


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """A domain as libvirt reports it now. ``disks`` are those of the running guest when it is
    active, of its stored definition otherwise."""

    name: str
    uuid: str
    active: bool
    disks: Mapping[str, DiskSource]
    handle: Any = field(default=None, compare=False, repr=False)
    """The libvirt domain this was read from. libvirtd finds a domain by UUID, so a call made
    through it reaches this very domain or fails: never another one that took its name since."""


class Hypervisor:
    """libvirtd at ``uri``, connected on first use."""

    def __init__(self, uri: str = DEFAULT_URI, *, detach_timeout: float = 30.0) -> None:
        self.uri = uri
        self.detach_timeout = detach_timeout
        self._conn: Any = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a dead connection is not an error
                conn.close()

    def find(self, domain: str) -> DomainInfo | None:
        """The domain called ``domain``, or None when libvirt has none."""
        try:
            return self.domain(domain)
        except DomainNotFound:
            return None

    def domain(self, domain: str, *, stored: bool = False) -> DomainInfo:
        """The domain called ``domain``; ``stored``: the disks of its stored definition even
        while it runs."""
        dom = self._lookup(domain)

        def read() -> DomainInfo:
            if stored:
                active = bool(dom.isActive())
                description = ET.fromstring(dom.XMLDesc(self._libvirt().VIR_DOMAIN_XML_INACTIVE))
            else:
                # One round trip: libvirt describes the running guest when there is one, and
                # only a running domain has an id (libvirt's domain XML format).
                description = ET.fromstring(dom.XMLDesc(0))
                active = description.get("id", "-1") != "-1"
            return DomainInfo(
                name=dom.name(),
                uuid=dom.UUIDString(),
                active=active,
                disks=disks_in(description),
                handle=dom,
            )

        return self._call(f"read domain {domain}", read, domain=domain)

    def attach(self, domain: str, device_xml: str) -> None:
        """Plug the disk into the running guest (and its stored definition, if it has one)."""
        dom = self._lookup(domain)
        self._call(
            f"attach a disk to domain {domain}",
            lambda: dom.attachDeviceFlags(device_xml, self._affect(dom, domain)),
            domain=domain,
        )

    def detach(self, domain: str, device_xml: str, target_dev: str) -> None:
        """Unplug the disk at ``target_dev`` from the running guest and wait until it has let go
        of it, then take it out of the stored definition (if the domain has one).

        A guest releases a hot-unplugged disk when it acknowledges the unplug; one that does not
        within ``detach_timeout`` keeps it, and that is a ``HypervisorError`` with the definition
        left as it was, so that ledger and domain still agree.
        """
        lv = self._libvirt()
        dom = self._lookup(domain)
        active, persistent = self._state(dom, domain)
        if active:
            self._call(
                f"detach {target_dev} from domain {domain}",
                lambda: dom.detachDeviceFlags(device_xml, lv.VIR_DOMAIN_AFFECT_LIVE),
                domain=domain,
            )
            self._wait_released(domain, target_dev)
        stored = self.find(domain) if persistent else None  # a transient one may be gone now
        if stored is not None and target_dev in self.domain(domain, stored=True).disks:
            self._call(
                f"detach {target_dev} from the definition of domain {domain}",
                lambda: dom.detachDeviceFlags(device_xml, lv.VIR_DOMAIN_AFFECT_CONFIG),
                domain=domain,
            )

    def _wait_released(self, domain: str, target_dev: str) -> None:
        deadline = time.monotonic() + self.detach_timeout
        while True:
            info = self.find(domain)
            if info is None or not info.active or target_dev not in info.disks:
                return
            if time.monotonic() > deadline:
                raise HypervisorError(
                    f"domain {domain} did not release {target_dev} within "
                    f"{self.detach_timeout:g} s (the guest must acknowledge the unplug)"
                )
            time.sleep(_POLL)

    def block_resize(self, domain: DomainInfo, target_dev: str, size: int) -> int:
        """Grow the disk ``target_dev`` of the running ``domain`` (as ``find`` returned it: the
        call reaches that domain or fails) to ``size`` bytes through qemu, which holds the image,
        so the guest sees the new size at once; the size it sees after.

        qemu grows an image to exactly the size asked or fails, so that is the size returned;
        libvirt rounds a qcow2 size up to whole 512-byte sectors, so a size that is not one is
        read back (``verify`` compares what the ledger recorded with the image either way).
        """
        dom = domain.handle if domain.handle is not None else self._lookup(domain.name)
        flags = self._libvirt().VIR_DOMAIN_BLOCK_RESIZE_BYTES
        self._call(
            f"resize {target_dev} of domain {domain.name}",
            lambda: dom.blockResize(target_dev, size, flags),
            domain=domain.name,
        )
        if size % _SECTOR:
            return self._capacity(dom, domain.name, target_dev)
        return size

    def capacity(self, domain: str, target_dev: str) -> int:
        """The virtual size of ``target_dev`` as the domain sees it."""
        return self._capacity(self._lookup(domain), domain, target_dev)

    def define_ceph_secret(self, usage: str, key: bytes, *, secret_uuid: str | None = None) -> str:
        """A private libvirt secret of usage type ceph named ``usage`` holding ``key``; an
        existing one of that name gets the key. Returns its UUID."""
        conn = self._connection()
        secret = self._secret(usage)
        if secret is None:
            root = ET.Element("secret", ephemeral="no", private="yes")
            if secret_uuid is not None:
                ET.SubElement(root, "uuid").text = secret_uuid
            usage_element = ET.SubElement(root, "usage", type="ceph")
            ET.SubElement(usage_element, "name").text = usage
            xml = ET.tostring(root, encoding="unicode")
            secret = self._call(f"define secret {usage}", lambda: conn.secretDefineXML(xml, 0))
        elif secret_uuid is not None and secret.UUIDString() != secret_uuid:
            raise InvalidInput(
                f"libvirt secret {usage!r} exists with uuid {secret.UUIDString()}, "
                f"not {secret_uuid}"
            )
        self._call(f"set the value of secret {usage}", lambda: secret.setValue(key, 0))
        return str(secret.UUIDString())

    def define_volume_secret(self, volume: str, key: bytes, *, secret_uuid: str) -> str:
        """A private libvirt secret of usage type volume for the encrypted disk at ``volume``
        holding its LUKS passphrase ``key``, under ``secret_uuid``. It is kept (not ephemeral),
        so that libvirt can start the domain again without diskledger; private, so that
        libvirt never hands the value back. A secret of another UUID for the same volume (a
        disk deleted and made again there) is replaced. Returns its UUID."""
        conn = self._connection()
        usage_type = self._libvirt().VIR_SECRET_USAGE_TYPE_VOLUME
        secret = self._secret(volume, usage_type)
        if secret is not None and secret.UUIDString() != secret_uuid:
            self._call(f"undefine the old secret of {volume}", secret.undefine)
            secret = None
        if secret is None:
            root = ET.Element("secret", ephemeral="no", private="yes")
            ET.SubElement(root, "uuid").text = secret_uuid
            ET.SubElement(root, "description").text = f"diskledger: LUKS key of {volume}"
            usage_element = ET.SubElement(root, "usage", type="volume")
            ET.SubElement(usage_element, "volume").text = volume
            xml = ET.tostring(root, encoding="unicode")
            secret = self._call(f"define secret for {volume}", lambda: conn.secretDefineXML(xml, 0))
        self._call(f"set the value of the secret for {volume}", lambda: secret.setValue(key, 0))
        return str(secret.UUIDString())

    def undefine_volume_secret(self, volume: str) -> str | None:
        """Remove the secret ``define_volume_secret`` made for ``volume``; its UUID, or None
        when there was none."""
        secret = self._secret(volume, self._libvirt().VIR_SECRET_USAGE_TYPE_VOLUME)
        if secret is None:
            return None
        found = str(secret.UUIDString())
        try:
            self._call(f"undefine the secret for {volume}", secret.undefine)
        except NotFound:
            return None
        return found

    def undefine_secret(self, usage: str) -> str | None:
        """Remove the ceph secret named ``usage``; its UUID, or None when there was none."""
        secret = self._secret(usage)
        if secret is None:
            return None
        found = str(secret.UUIDString())
        try:
            self._call(f"undefine secret {usage}", secret.undefine)
        except NotFound:
            return None
        return found

    # -- the binding ---------------------------------------------------------------------------

    def _secret(self, usage: str, usage_type: int | None = None) -> Any:
        lv = self._libvirt()
        conn = self._connection()
        kind = lv.VIR_SECRET_USAGE_TYPE_CEPH if usage_type is None else usage_type
        try:
            return self._call(
                f"look up secret {usage}",
                lambda: conn.secretLookupByUsage(kind, usage),
            )
        except NotFound:
            return None

    def _lookup(self, domain: str) -> Any:
        conn = self._connection()
        return self._call(
            f"look up domain {domain}", lambda: conn.lookupByName(domain), domain=domain
        )

    def _affect(self, dom: Any, domain: str) -> int:
        lv = self._libvirt()
        active, persistent = self._state(dom, domain)
        flags = lv.VIR_DOMAIN_AFFECT_LIVE if active else 0
        if persistent:
            flags |= lv.VIR_DOMAIN_AFFECT_CONFIG
        return int(flags)

    def _capacity(self, dom: Any, domain: str, target_dev: str) -> int:
        info = self._call(
            f"read {target_dev} of domain {domain}",
            lambda: dom.blockInfo(target_dev),
            domain=domain,
        )
        return int(info[0])

    def _state(self, dom: Any, domain: str) -> tuple[bool, bool]:
        """(running, persistent) of the looked-up ``dom``."""
        return self._call(
            f"read domain {domain}",
            lambda: (bool(dom.isActive()), bool(dom.isPersistent())),
            domain=domain,
        )

    def _connection(self) -> Any:
        if self._conn is None:
            lv = self._libvirt()
            try:
                self._conn = lv.open(self.uri)
            except lv.libvirtError as exc:
                raise HypervisorUnavailable(
                    f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}",
                    code=exc.get_error_code(),
                ) from exc
        return self._conn

    @staticmethod
    def _libvirt() -> Any:
        return _binding()

    def _call(self, what: str, fn: Callable[[], T], *, domain: str | None = None) -> T:
        lv = self._libvirt()
        try:
            return fn()
        except lv.libvirtError as exc:
            code = exc.get_error_code()
            message = exc.get_error_message() or str(exc)
            if code == _NO_DOMAIN and domain is not None:
                raise DomainNotFound(domain) from exc
            if code == _NO_SECRET:
                raise _SecretNotFound(message) from exc
            if code == _NO_CONNECT or not self._alive():
                self.close()
                raise HypervisorUnavailable(
                    f"{what}: libvirt at {self.uri} stopped answering: {message}", code=code
                ) from exc
            raise HypervisorError(f"{what}: {message}", code=code) from exc

    def _alive(self) -> bool:
        try:
            return self._conn is not None and bool(self._conn.isAlive())
        except Exception:  # a dead connection may fail any call
            return False


@functools.cache
def _binding() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise HypervisorUnavailable(
            "the libvirt Python binding is not installed (Debian package python3-libvirt)"
        ) from exc
    # The binding prints every error on stderr by default; ours are raised and translated, and
    # the CLI's contract is one line. (Nova's libvirt driver silences it the same way.)
    libvirt.registerErrorHandler(_ignore_error, None)
    return libvirt


def _ignore_error(context: object, error: object) -> None:
    """libvirt's error callback: the error is raised as ``libvirtError`` anyway."""


class _SecretNotFound(NotFound):
    """libvirt has no such secret (only ever caught inside this module)."""
