"""One client's connection to a Ceph cluster (``Cluster``): shared, re-opened when lost, fenced
for good in member mode.

Every librados/librbd call the RBD backend makes goes through ``Cluster.call``, which retries it
under the policies of ``policies.py`` (transient, busy) and translates what is left into the
error tree there.

Once a call has run out of its budget without an answer, the cluster is taken to be down: for
the next budget's length each call makes one attempt instead of retrying for the whole budget
again (the compensation that follows a failed operation then fails fast, leaving the intent to
``recover``), until a librbd request is answered; an image open at that moment is closed in the
background (``Cluster.opened``).

**Single-host mode and member mode.** Without a registrar (``on_connect``), a connection lost
with ``ESHUTDOWN`` is replaced by the next request (``policies.py``), and that is a hazard
wherever another process may fence this one: blocklisting matches a client's address *and
nonce*, and the new connection has a new nonce, so a blocklisted process that makes one more
request is silently unfenced (the request that met the blocklist fails, the next succeeds).
That is fine for one engine per cluster, and wrong for members of a shared ledger. With a
registrar (member mode):

- every new connection's client addresses are handed to ``on_connect`` after librados connected
  and before the connection serves any request of the caller (the engine records them in the
  ledger, so that a fence can name them); if ``on_connect`` raises, the connection is shut down
  and its error reaches the caller unchanged: no OSD or monitor request was made on it;
- ``ESHUTDOWN`` means this client was fenced: the connection is retired and never replaced;
  the call raises ``Fenced``, and so does every later call; ``on_fenced`` is called once, with
  the reason (the engine then stops all effects). ``ENOTCONN`` is still a lost connection,
  replaced by the next request, through ``on_connect`` again.

A blocklisted client is refused by the OSDs only: the monitors still answer it, so a fenced
client learns it is fenced at its next OSD request (``prove_unfenced`` makes one).
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from diskledger.backends.rbd.config import CephConfig
from diskledger.backends.rbd.policies import LOCK, LOST, TRANSIENT, Policy, errno_of, translate
from diskledger.errors import (
    BackendError,
    CephError,
    CephUnavailable,
    Fenced,
)

__all__ = ["MSGR2_PORT", "Cluster", "FenceHandler", "Registrar", "split_addresses"]

# Named as before the module moved (docs/backends/rbd.md tells operators this name).
log = logging.getLogger("diskledger.backends.ceph")
# The library never configures logging; without a handler anywhere, Python's last-resort handler
# would print the retry warnings on stderr, under the CLI's one error line.
log.addHandler(logging.NullHandler())

T = TypeVar("T")

MSGR2_PORT = 3300
"""The IANA port of Ceph's msgr2 protocol."""

Registrar = Callable[[Sequence[str]], None]
"""Called with a new connection's client addresses before the connection is used (member mode).
It must not call back into the ``Cluster``: connecting is serialised around it."""

FenceHandler = Callable[[str], None]
"""Called once, with the reason, when a member-mode connection finds itself blocklisted."""

_PROBE_OBJECT = "diskledger.fence-probe"
"""An object nobody writes: reading it costs one OSD round trip that answers ``ENOENT``, or
``ESHUTDOWN`` to a blocklisted client."""


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


class _Registration(Exception):
    """The registrar refused a new connection: carries its error past the translation into
    ``BackendError`` (the caller gets the registrar's own error)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Cluster:
    """A lazily opened, shared connection as ``config.user``; re-opened after a lost connection
    (in member mode, only through ``on_connect``, and never once fenced: see the module doc).

    Thread-safe: librados handles may be shared between threads; (re)connecting is serialised.
    A lost connection is retired, not shut down under the pool and image handles still open on
    it (librados hangs or crashes on those): it is shut down when the last of them is closed.
    """

    def __init__(
        self,
        config: CephConfig,
        *,
        on_connect: Registrar | None = None,
        on_fenced: FenceHandler | None = None,
    ) -> None:
        self.config = config
        self._lock = threading.Lock()
        # Held while a connection is made and registered, so that no other thread can use it
        # before the registrar has recorded it; ``_lock`` stays free for releasing handles.
        self._connecting = threading.Lock()
        self._slot = _Slot()
        # librados does not shut a handle down when it is garbage-collected: an engine closed
        # without closing its cluster would leave a connection (and its ~15 threads) behind.
        weakref.finalize(self, self._slot.close).atexit = False
        self._generation = 0
        self._down_until = 0.0
        self._on_connect = on_connect
        self._on_fenced = on_fenced
        self._fenced: str | None = None
        self._closing: set[threading.Thread] = set()

    def set_registrar(
        self, on_connect: Registrar, *, on_fenced: FenceHandler | None = None
    ) -> None:
        """Enter member mode: from now on every new connection goes through ``on_connect``
        before it is used, and a blocklisted one raises ``Fenced`` for good (``on_fenced`` is
        told once). The current connection, opened without registration, is retired: the next
        request opens a registered one."""
        with self._connecting:
            self._on_connect = on_connect
            self._on_fenced = on_fenced
            self.reset()

    @property
    def member_mode(self) -> bool:
        """Whether connections are registered (and a blocklisted one is final)."""
        return self._on_connect is not None

    @property
    def fenced(self) -> str | None:
        """Why this client is fenced (member mode, after it met the blocklist), else None."""
        return self._fenced

    def call(self, what: str, fn: Callable[[], T], *, policy: Policy | None = None) -> T:
        """Run ``fn`` under ``policy`` (default: transient); translate what still fails.

        ``what`` names the request for the error message (``"clone pool/image@snap"``).
        In member mode, ``Fenced`` once this client is blocklisted (and on every call after).
        """
        return self._call(what, fn, policy or self.config.transient, reconnects=False)

    def _call(self, what: str, fn: Callable[[], T], policy: Policy, *, reconnects: bool) -> T:
        """``reconnects``: ``fn`` gets its handles from ``_connected`` itself on each attempt, so
        it may be retried after a lost connection; it is answered by librados or the monitor
        alone (opening a pool, the fsid, monitor commands), so its success says nothing of the
        OSDs and does not end the one-attempt window."""
        self._refuse_if_fenced()
        seen = _Attempts()
        slow = self.config.op_timeout / 2

        def attempt() -> T:
            seen.generation = self._generation
            started = time.monotonic()
            try:
                result = fn()
            except Exception as exc:
                code = errno_of(exc)
                if code == errno.ESHUTDOWN and self.member_mode:
                    raise self._fence(what, exc) from exc
                if code in LOST:
                    self._lose(seen.generation)
                if code == errno.ETIMEDOUT or (code in LOCK and time.monotonic() - started >= slow):
                    seen.unanswered = True
                raise
            return result

        def retried(exc: BaseException) -> bool:
            code = errno_of(exc)
            if code in LOST and not reconnects:
                return False  # the caller's handles died with the connection
            return code in policy.retry_on

        one_attempt = self.silent
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
        except _Registration as exc:
            # The registrar's own error, as it raised it (its cause kept, this frame's hidden).
            raise exc.error from exc.error.__cause__
        except (BackendError, Fenced):
            raise
        except Exception as exc:
            error = translate(exc, what, policy, unanswered=seen.unanswered, tried_once=one_attempt)
            if isinstance(error, CephUnavailable) and errno_of(exc) not in LOST:
                self._down_until = time.monotonic() + policy.budget
            elif errno_of(exc) not in TRANSIENT and not reconnects:
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
        connection, ioctx = self._open_pool(pool)
        try:
            yield ioctx
        finally:
            self._close_pool(connection, ioctx)

    def _open_pool(self, pool: str) -> tuple[_Connection, Any]:
        return self._call(
            f"open pool {pool}",
            lambda: self._open_ioctx(pool),
            self.config.transient,
            reconnects=True,
        )

    def _close_pool(self, connection: _Connection, ioctx: Any) -> None:
        try:
            ioctx.close()
        finally:
            self._release(connection)

    @contextmanager
    def opened(self, pool: str, what: str, open_handle: Callable[[Any], Any]) -> Iterator[Any]:
        """The handle ``open_handle(ioctx)`` makes on an I/O context on ``pool`` (a librbd
        image, named ``what`` in errors), opened under the transient policy; closed afterwards,
        then its I/O context.

        When the block leaves the cluster found ``silent``, the close is left to a thread of its
        own and the caller goes on: closing an image sends requests too, one after another (an
        image that holds its exclusive lock releases it in three: object map, unlock, unwatch),
        and each would wait a whole op timeout for the same silence before the caller could
        report it. That thread releases the handle, its I/O context and its hold on the
        connection in that order. Should the process end first, the image is left as a crash
        leaves it, which recovery settles (it fences the dead writer's watch).
        """
        connection, ioctx = self._open_pool(pool)
        try:
            handle = self.call(f"open {what}", lambda: open_handle(ioctx))
        except BaseException:
            self._close_pool(connection, ioctx)
            raise
        try:
            yield handle
        finally:
            if self.silent:
                closer = threading.Thread(
                    target=self._close_in_background,
                    args=(what, handle, connection, ioctx),
                    name=f"ceph close {what}",
                    daemon=True,
                )
                with self._lock:
                    self._closing.add(closer)
                closer.start()
            else:
                self._close(handle, connection, ioctx)

    def closing(self) -> list[threading.Thread]:
        """The threads of this cluster still closing an image in the background (``opened``)."""
        with self._lock:
            return list(self._closing)

    def _close(self, handle: Any, connection: _Connection, ioctx: Any) -> None:
        try:
            handle.close()
        finally:
            self._close_pool(connection, ioctx)

    def _close_in_background(
        self, what: str, handle: Any, connection: _Connection, ioctx: Any
    ) -> None:
        try:
            self._close(handle, connection, ioctx)
        except Exception:  # nobody is left to tell but the log
            log.warning("ceph: closing %s in the background failed", what, exc_info=True)
        finally:
            with self._lock:
                self._closing.discard(threading.current_thread())

    @property
    def silent(self) -> bool:
        """Whether the cluster was found silent: a request ran out of its budget unanswered (or
        made its one attempt in vain since), and none was answered after it."""
        return time.monotonic() < self._down_until

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

    def client_addresses(self) -> list[str]:
        """This client's addresses (``ip:port/nonce``, as a blocklist names a client), from the
        current connection; one is opened (and registered, in member mode) when there is none."""
        return self._call(
            "read this client's addresses",
            lambda: split_addresses(self._connected().get_addrs()),
            self.config.transient,
            reconnects=True,
        )

    def prove_unfenced(self, pool: str) -> None:
        """One OSD round trip on this connection (reading an object nobody writes, in
        ``pool``): returns when an OSD served this client just now. A blocklisted client gets
        ``Fenced`` in member mode (``CephUnavailable`` otherwise): the monitors answer a
        blocklisted client as before, so only an OSD request tells."""
        with self.ioctx(pool) as ioctx:
            try:
                self.call(
                    "check that this client is not blocklisted",
                    lambda: ioctx.stat(_PROBE_OBJECT),
                )
            except CephError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    def latest_osdmap(self) -> int:
        """Wait until this client has the cluster's latest OSD map, and return its epoch: a
        request this client sends from now on is served by an OSD only once that OSD has this
        map too (an OSD holds a request stamped with a newer map than its own until it has
        caught up)."""

        def wait() -> None:
            # The binding returns librados' status rather than raising on a failure.
            status = self._connected().wait_for_latest_osdmap()
            if isinstance(status, int) and status < 0:
                raise OSError(-status, "waiting for the latest OSD map failed")

        self._call("wait for the latest OSD map", wait, self.config.transient, reconnects=True)
        status = self.mon_command({"prefix": "osd stat", "format": "json"})
        return int(status["epoch"])

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
            self._refuse_if_fenced()
            if self._slot.connection is not None:
                return self._slot.connection
        with self._connecting:
            with self._lock:
                self._refuse_if_fenced()
                if self._slot.connection is not None:  # another thread connected meanwhile
                    return self._slot.connection
            handle = self._connect()
            try:
                self._register(handle)
                with self._lock:
                    self._refuse_if_fenced()  # fenced on an older connection meanwhile
                    self._generation += 1
                    connection = _Connection(handle, self._generation)
                    self._slot.connection = connection
            except BaseException:
                _shutdown_handle(handle)
                raise
            return connection

    def _register(self, handle: Any) -> None:
        """Hand a new connection's addresses to the registrar before anything uses it."""
        on_connect = self._on_connect
        if on_connect is None:
            return
        addresses = split_addresses(handle.get_addrs())  # local: no request to the cluster
        try:
            on_connect(addresses)
        except Fenced as exc:
            # The member is fenced (its lease is gone): no connection of this client may serve
            # anything any more, the next call included.
            with self._lock:
                self._fenced = self._fenced or str(exc)
            raise _Registration(exc) from exc
        except Exception as exc:
            raise _Registration(exc) from exc

    def _fence(self, what: str, exc: BaseException) -> Fenced:
        """This client met the blocklist (member mode): retire the connection for good, tell
        ``on_fenced`` once, and give the caller its ``Fenced``."""
        with self._lock:
            first = self._fenced is None
            if first:
                self._fenced = (
                    f"ceph: {what}: this client was blocklisted ({exc}): another member fenced "
                    "it, and it does not reconnect"
                )
            reason = self._fenced
            assert reason is not None
        if first:
            log.critical("%s", reason)
            self.reset()  # shut down once the handles still open on it are closed
            handler = self._on_fenced
            if handler is not None:
                try:
                    handler(reason)
                except Exception:  # the caller must still see Fenced
                    log.exception("ceph: the fence handler failed")
        return Fenced(reason)

    def _refuse_if_fenced(self) -> None:
        if self._fenced is not None:
            raise Fenced(self._fenced)

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
    _shutdown_handle(connection.handle)


def _shutdown_handle(handle: Any) -> None:
    try:
        handle.shutdown()
    except Exception:  # a dead connection may refuse to shut down cleanly
        log.debug("ceph: shutting down a lost connection failed", exc_info=True)


def split_addresses(addrs: str) -> list[str]:
    """librados' ``get_addrs()`` as a list: one address (``127.0.0.1:0/3719287140``), or each
    address of a vector (``[v2:10.0.0.1:0/42,v1:10.0.0.1:0/42]``)."""
    text = addrs.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part.strip() for part in text.split(",") if part.strip()]
