"""One client's connection to a Ceph cluster, its retry policies, and error translation.

Every librados/librbd call the RBD backend makes goes through ``Cluster.call``, which retries it
under one of two declared, bounded policies and translates what is left into the error tree:

================  =============================================  ============  ===============
policy            retried errnos                                 backoff       budget
================  =============================================  ============  ===============
**transient**     ``ETIMEDOUT``; ``EAGAIN``, ``EINTR``,           0.2 s → 2 s   ``retry_budget``
                  ``ECONNRESET``; ``EROFS``, ``EBADMSG`` (see                  (30 s)
                  below); ``ESHUTDOWN``, ``ENOTCONN`` (see
                  below)
**busy**          the above and ``EBUSY`` (an image a client      0.5 s → 4 s   ``busy_budget``
                  still watches: a VM shutting down, or a                      (30 s)
                  crashed client whose watch has not expired)
================  =============================================  ============  ===============

The busy policy is used for removing images and snapshots. Waits grow exponentially; no attempt
starts once the next wait would end past the budget, so a call gives up within the budget plus
the length of one attempt (at most ``op_timeout`` when the cluster does not answer).

- librados is told to give up on an unanswered request after ``op_timeout`` seconds
  (``rados_osd_op_timeout``, ``rados_mon_op_timeout``), so an OSD that is down turns into a
  retried ``ETIMEDOUT`` rather than a hang.
- librbd answers a change to an image whose exclusive lock it could not take with ``EROFS``; with
  an OSD down the lock request goes unanswered, so it is retried like a timeout. A snapshot
  request by the lock owner whose notification goes unanswered fails with ``EBADMSG``: the same.
- ``ESHUTDOWN`` (the client was blocklisted, or its connection shut down) and ``ENOTCONN`` mean
  the connection is gone, and every pool and image handle opened on it with it. The connection is
  retired (shut down once the last handle on it is closed) and the next request opens a new one;
  the request that saw it is retried only when it opens its handles itself (opening a pool,
  reading the fsid, monitor commands). Any other request fails at once: its caller's handles are
  dead, and retrying on them would only fail again (or hang in librados).

Permanent errors fail at once: ``ENOENT``, ``EEXIST``, ``EPERM``/``EACCES`` (a client without the
caps), ``ENOSPC``/``EDQUOT``, ``EINVAL``.

Past the budget the caller gets one of:

- ``CephUnavailable``: "no answer from the cluster within N s" (timeouts, or a lock request that
  went unanswered), or "lost its connection to the cluster";
- ``ImageBusy``: "still in use after N s" (``EBUSY``), or another client holds the image's
  exclusive lock (``EROFS`` answered at once);
- ``StorageIOError`` for ``ENOSPC``/``EDQUOT``; ``CephError`` for everything else, with ``errno``.

Once a call has run out of its budget without an answer, the cluster is taken to be down: for
the next budget's length each call makes one attempt instead of retrying for the whole budget
again (the compensation that follows a failed operation then fails fast, leaving the intent to
``recover``), until a librbd request is answered.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from diskledger.backends.settings import seconds
from diskledger.errors import (
    BackendError,
    CephError,
    CephUnavailable,
    ImageBusy,
    InvalidInput,
    StorageIOError,
)

__all__ = ["MSGR2_PORT", "CephConfig", "Cluster", "Policy", "client_key", "errno_of", "translate"]

# Named as before the module moved (docs/backends/rbd.md tells operators this name).
log = logging.getLogger("diskledger.backends.ceph")
# The library never configures logging; without a handler anywhere, Python's last-resort handler
# would print the retry warnings on stderr, under the CLI's one error line.
log.addHandler(logging.NullHandler())

T = TypeVar("T")

_LOST = frozenset({errno.ESHUTDOWN, errno.ENOTCONN})
"""The connection is gone (blocklisted, or shut down): the handles opened on it are dead."""
_NO_ANSWER = frozenset({errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.ECONNRESET})
_LOCK = frozenset({errno.EROFS, errno.EBADMSG})
"""librbd could not take the image's exclusive lock, or a notification went unanswered: with an
OSD down, both mean a request nobody answered."""
_TRANSIENT = _NO_ANSWER | _LOCK | _LOST
_BUSY = _TRANSIENT | {errno.EBUSY}
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EPERM, errno.EACCES})


MSGR2_PORT = 3300
"""The IANA port of Ceph's msgr2 protocol."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A bounded retry policy: which errnos, how long in total, how the waits grow."""

    name: str
    retry_on: frozenset[int]
    budget: float
    first_wait: float
    max_wait: float


@dataclass(frozen=True, slots=True)
class CephConfig:
    """How to reach the cluster and which pools to use (``from_environ`` reads the environment)."""

    conf: str
    pool: str
    user: str | None = None
    keyring: str | None = None
    snapshot_pool: str | None = None
    """The pool ``direct-snapshot`` clones into (Glance's images pool in OpenStack)."""
    op_timeout: float = 10.0
    connect_timeout: float = 10.0
    retry_budget: float = 30.0
    busy_budget: float = 30.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> CephConfig:
        """The configuration ``DISKLEDGER_*`` variables describe: ``DISKLEDGER_CEPH_CONF``
        (default ``/etc/ceph/ceph.conf``), ``DISKLEDGER_RBD_POOL`` (default ``rbd``),
        ``DISKLEDGER_RBD_USER`` (the cephx client id, without ``client.``),
        ``DISKLEDGER_CEPH_KEYRING``, ``DISKLEDGER_RBD_SNAPSHOT_POOL`` (where direct snapshots
        go), ``DISKLEDGER_CEPH_OP_TIMEOUT`` (seconds before an unanswered request fails, default
        10), ``DISKLEDGER_CEPH_RETRY_BUDGET`` (seconds of retries for transient and busy errors,
        default 30). A number of seconds that is not one, or not in (0, 3600], is
        ``InvalidInput``."""
        budget = seconds(environ, "DISKLEDGER_CEPH_RETRY_BUDGET", 30.0)
        return cls(
            conf=environ.get("DISKLEDGER_CEPH_CONF") or "/etc/ceph/ceph.conf",
            pool=environ.get("DISKLEDGER_RBD_POOL") or "rbd",
            user=environ.get("DISKLEDGER_RBD_USER") or None,
            keyring=environ.get("DISKLEDGER_CEPH_KEYRING") or None,
            snapshot_pool=environ.get("DISKLEDGER_RBD_SNAPSHOT_POOL") or None,
            op_timeout=seconds(environ, "DISKLEDGER_CEPH_OP_TIMEOUT", 10.0),
            retry_budget=budget,
            busy_budget=budget,
        )

    @property
    def transient(self) -> Policy:
        return Policy("transient", _TRANSIENT, self.retry_budget, 0.2, 2.0)

    @property
    def busy(self) -> Policy:
        return Policy("busy", _BUSY, self.busy_budget, 0.5, 4.0)


def client_key(config: CephConfig) -> str:
    """The cephx key of ``config.user`` from ``config.keyring`` (base64, as the keyring holds it):
    what a hypervisor is given, in a secret, to reach the cluster as that user."""
    import configparser

    if not config.user or not config.keyring:
        raise InvalidInput(
            "a libvirt secret needs the RBD user and its keyring "
            "(DISKLEDGER_RBD_USER, DISKLEDGER_CEPH_KEYRING)"
        )
    keyring = configparser.ConfigParser(interpolation=None)
    try:
        with open(config.keyring, encoding="utf-8") as handle:
            keyring.read_file(handle)
    except (OSError, configparser.Error) as exc:
        raise InvalidInput(f"cannot read keyring {config.keyring}: {exc}") from exc
    key = keyring.get(f"client.{config.user}", "key", fallback=None)
    if not key:
        raise InvalidInput(f"keyring {config.keyring} holds no key for client.{config.user}")
    return key


class _Slot:
    """The current connection, in an object the finalizer can hold without holding the
    ``Cluster``."""

    __slots__ = ("connection",)

    def __init__(self) -> None:
        self.connection: _Connection | None = None

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and connection.users == 0:
            _shutdown(connection)


class _Connection:
    """One librados handle and how many pool handles are open on it."""

    __slots__ = ("generation", "handle", "retired", "users")

    def __init__(self, handle: Any, generation: int) -> None:
        self.handle = handle
        self.generation = generation
        self.users = 0
        self.retired = False


@dataclass(slots=True)
class _Attempts:
    """What the attempts of one call saw."""

    generation: int = 0
    unanswered: bool = False
    """Some attempt went unanswered (a timeout, or a lock request that took ``op_timeout``)."""


class Cluster:
    """A lazily opened, shared connection as ``config.user``; re-opened after a lost connection.

    Thread-safe: librados handles may be shared between threads; (re)connecting is serialised.
    A lost connection is retired, not shut down under the pool and image handles still open on
    it (librados hangs or crashes on those): it is shut down when the last of them is closed.
    """

    def __init__(self, config: CephConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._slot = _Slot()
        # librados does not shut a handle down when it is garbage-collected: an engine closed
        # without closing its cluster would leave a connection (and its ~15 threads) behind.
        weakref.finalize(self, self._slot.close).atexit = False
        self._generation = 0
        self._down_until = 0.0

    def call(self, what: str, fn: Callable[[], T], *, policy: Policy | None = None) -> T:
        """Run ``fn`` under ``policy`` (default: transient); translate what still fails.

        ``what`` names the request for the error message (``"clone pool/image@snap"``).
        """
        return self._call(what, fn, policy or self.config.transient, reconnects=False)

    def _call(self, what: str, fn: Callable[[], T], policy: Policy, *, reconnects: bool) -> T:
        """``reconnects``: ``fn`` gets its handles from ``_connected`` itself on each attempt, so
        it may be retried after a lost connection; it is answered by librados or the monitor
        alone (opening a pool, the fsid, monitor commands), so its success says nothing of the
        OSDs and does not end the one-attempt window."""
        seen = _Attempts()
        slow = self.config.op_timeout / 2

        def attempt() -> T:
            seen.generation = self._generation
            started = time.monotonic()
            try:
                result = fn()
            except Exception as exc:
                code = errno_of(exc)
                if code in _LOST:
                    self._lose(seen.generation)
                if code == errno.ETIMEDOUT or (
                    code in _LOCK and time.monotonic() - started >= slow
                ):
                    seen.unanswered = True
                raise
            return result

        def retried(exc: BaseException) -> bool:
            code = errno_of(exc)
            if code in _LOST and not reconnects:
                return False  # the caller's handles died with the connection
            return code in policy.retry_on

        one_attempt = time.monotonic() < self._down_until
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retried),
            stop=(
                tenacity.stop_after_attempt(1)
                if one_attempt
                else tenacity.stop_before_delay(policy.budget)
            ),
            wait=tenacity.wait_exponential(multiplier=policy.first_wait, max=policy.max_wait),
            before_sleep=lambda state: log.warning(
                "ceph: %s failed (%s), retrying under the %s policy (attempt %d)",
                what,
                state.outcome.exception() if state.outcome else "?",
                policy.name,
                state.attempt_number,
            ),
            reraise=True,
        )
        try:
            result = retrying(attempt)
        except BackendError:
            raise
        except Exception as exc:
            error = translate(exc, what, policy, unanswered=seen.unanswered, tried_once=one_attempt)
            if isinstance(error, CephUnavailable) and errno_of(exc) not in _LOST:
                self._down_until = time.monotonic() + policy.budget
            elif errno_of(exc) not in _TRANSIENT and not reconnects:
                self._down_until = 0.0  # the OSDs answered, if only with a refusal
            raise error from exc
        if not reconnects:
            # Answered by the OSDs. Opening a pool or reading the fsid is answered by librados
            # or the monitor alone, and proves nothing about the OSDs.
            self._down_until = 0.0
        return result

    @contextmanager
    def ioctx(self, pool: str) -> Iterator[Any]:
        """An I/O context on ``pool``, closed afterwards."""
        connection, ctx = self._call(
            f"open pool {pool}",
            lambda: self._open_ioctx(pool),
            self.config.transient,
            reconnects=True,
        )
        try:
            yield ctx
        finally:
            try:
                ctx.close()
            finally:
                self._release(connection)

    def fsid(self) -> str:
        return str(
            self._call(
                "read the cluster fsid",
                lambda: self._connected().get_fsid(),
                self.config.transient,
                reconnects=True,
            )
        )

    def instance_id(self) -> int:
        """This client's global id (``client.<id>``): the id its watches and locks carry."""
        return int(
            self._call(
                "read the client id",
                lambda: self._connected().get_instance_id(),
                self.config.transient,
                reconnects=True,
            )
        )

    def mon_command(self, command: dict[str, Any]) -> Any:
        def run() -> Any:
            ret, out, err = self._connected().mon_command(json.dumps(command), b"")
            if ret != 0:
                raise OSError(-ret, err or f"mon command {command['prefix']} failed")
            return json.loads(out) if out else None

        return self._call(
            f"mon command {command['prefix']}", run, self.config.transient, reconnects=True
        )

    def monitors(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of each monitor, as a hypervisor's rbd driver must be told them.

        qemu takes an address without a ``v2:`` prefix for msgr1 unless its port is 3300 (what
        Ceph does with an untyped ``mon_host``), so each monitor's msgr1 address is given, or
        its msgr2 address when that is on 3300; a monitor with neither cannot be reached so.
        """
        found: list[tuple[str, int]] = []
        for mon in self.mon_command({"prefix": "mon dump", "format": "json"})["mons"]:
            addrs = {a["type"]: a["addr"] for a in mon.get("public_addrs", {}).get("addrvec", ())}
            usable = addrs.get("v1") or (
                addrs["v2"] if addrs.get("v2", "").endswith(f":{MSGR2_PORT}") else None
            )
            if usable is None:
                raise CephError(
                    f"monitor {mon.get('name')} listens on msgr2 only ({addrs.get('v2')}), not "
                    f"on port {MSGR2_PORT}: qemu's rbd driver cannot be pointed at it"
                )
            host, _, port = usable.rpartition(":")
            found.append((host.strip("[]"), int(port)))
        return tuple(found)

    def reset(self) -> None:
        """Retire the connection: the next request opens a new one; this one is shut down now
        when nothing is open on it, or else when the last handle on it is closed."""
        with self._lock:
            connection, self._slot.connection = self._slot.connection, None
            if connection is None:
                return
            connection.retired = True
            idle = connection.users == 0
        if idle:
            _shutdown(connection)

    close = reset

    def _connected(self) -> Any:
        return self._connection().handle

    def _connection(self) -> _Connection:
        with self._lock:
            if self._slot.connection is None:
                self._generation += 1
                self._slot.connection = _Connection(self._connect(), self._generation)
            return self._slot.connection

    def _open_ioctx(self, pool: str) -> tuple[_Connection, Any]:
        connection = self._connection()
        with self._lock:
            connection.users += 1
        try:
            return connection, connection.handle.open_ioctx(pool)
        except BaseException:
            self._release(connection)
            raise

    def _release(self, connection: _Connection) -> None:
        with self._lock:
            connection.users -= 1
            idle = connection.retired and connection.users == 0
        if idle:
            _shutdown(connection)

    def _lose(self, generation: int) -> None:
        """The connection an attempt used is gone: retire it, unless a newer one replaced it."""
        current = self._slot.connection
        if current is not None and current.generation <= generation:
            log.warning("ceph: the connection to the cluster was lost; the next request reconnects")
            self.reset()

    def _connect(self) -> Any:
        import rados

        config = self.config
        options = {
            "rados_osd_op_timeout": f"{config.op_timeout:g}",
            "rados_mon_op_timeout": f"{config.op_timeout:g}",
            "client_mount_timeout": f"{config.connect_timeout:g}",
        }
        if config.keyring:
            options["keyring"] = config.keyring
        handle = rados.Rados(conffile=config.conf, rados_id=config.user, conf=options)
        try:
            handle.connect(timeout=max(1, round(config.connect_timeout)))
        except Exception:
            handle.shutdown()
            raise
        return handle


def _shutdown(connection: _Connection) -> None:
    try:
        connection.handle.shutdown()
    except Exception:  # a dead connection may refuse to shut down cleanly
        log.debug("ceph: shutting down a lost connection failed", exc_info=True)


def errno_of(exc: BaseException) -> int | None:
    """librados' error number of ``exc``, whichever binding raised it."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return abs(code)
    return None


def translate(
    exc: Exception,
    what: str,
    policy: Policy,
    *,
    unanswered: bool = False,
    tried_once: bool = False,
) -> BackendError:
    """The diskledger error for a librados/librbd exception that is not retried (any more).

    ``unanswered``: some attempt went unanswered (an ``EROFS``/``EBADMSG`` then means a lock
    request nobody answered, not a lock held by another client). ``tried_once``: the call made a
    single attempt because the cluster had just run another call out of its budget.
    """
    code = errno_of(exc)
    reason = str(exc) or type(exc).__name__
    if code in _LOST:
        return CephUnavailable(
            f"ceph: {what}: lost its connection to the cluster ({reason}); "
            "the next request reconnects",
            errno=code,
        )
    if code in _NO_ANSWER or (code in _LOCK and unanswered):
        within = (
            f"(tried once: it gave none within {policy.budget:g} s just before)"
            if tried_once
            else f"within {policy.budget:g} s"
        )
        return CephUnavailable(
            f"ceph: {what}: no answer from the cluster {within} ({reason})", errno=code
        )
    if code == errno.EBUSY:
        return ImageBusy(f"ceph: {what}: still in use after {policy.budget:g} s", errno=code)
    if code == errno.EROFS:
        return ImageBusy(
            f"ceph: {what}: another client holds the image's exclusive lock ({reason})",
            errno=code,
        )
    if code in _NO_SPACE:
        return StorageIOError(f"ceph: {what}: no space left in the pool ({reason})", errno=code)
    if code in _DENIED:
        return CephError(f"ceph: {what}: permission denied ({reason})", errno=code)
    if type(exc).__module__ in ("rados", "rbd") or isinstance(exc, OSError):
        return CephError(f"ceph: {what}: {reason}", errno=code)
    return BackendError(f"ceph: {what}: {type(exc).__name__}: {reason}")
