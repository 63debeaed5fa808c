"""One client's connection to a Ceph cluster, its retry policies, and error translation.

Every librados/librbd call the RBD backend makes goes through ``Cluster.call``, which retries it
under one of two declared, bounded policies and translates what is left into the error tree:

- **transient**: timeouts (``ETIMEDOUT``), a lost connection (``ESHUTDOWN``, ``ECONNRESET``,
  ``ENOTCONN``; the connection is re-opened), ``EAGAIN``/``EINTR``. Exponential backoff from
  0.2 s to 2 s, for at most ``retry_budget`` seconds (30).
- **busy**: the above and ``EBUSY`` (an image a client still watches: a VM shutting down, or a
  crashed client whose watch has not expired yet). Backoff from 0.5 s to 4 s, for at most
  ``busy_budget`` seconds (30). Used for removing images and snapshots.

Permanent errors fail at once: ``ENOENT``, ``EEXIST``, ``EPERM``/``EACCES`` (a client without the
caps), ``ENOSPC``/``EDQUOT``, ``EINVAL``. librados is told to give up on an unanswered request after
``op_timeout`` seconds (``rados_osd_op_timeout``, ``rados_mon_op_timeout``), so an OSD that is down
turns into a retried ``ETIMEDOUT`` rather than a hang.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from diskledger.errors import (
    BackendError,
    CephError,
    CephUnavailable,
    ImageBusy,
    StorageIOError,
)

__all__ = ["CephConfig", "Cluster", "Policy"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT = frozenset(
    {errno.ETIMEDOUT, errno.ESHUTDOWN, errno.ECONNRESET, errno.ENOTCONN, errno.EAGAIN, errno.EINTR}
)
_BUSY = _TRANSIENT | {errno.EBUSY}
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EPERM, errno.EACCES})


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
    """How to reach the cluster and which pools to use (see ``Config`` for the environment)."""

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

    @property
    def transient(self) -> Policy:
        return Policy("transient", _TRANSIENT, self.retry_budget, 0.2, 2.0)

    @property
    def busy(self) -> Policy:
        return Policy("busy", _BUSY, self.busy_budget, 0.5, 4.0)


class Cluster:
    """A lazily opened, shared connection as ``config.user``; re-opened after a lost connection.

    Thread-safe: librados handles may be shared between threads; (re)connecting is serialised.
    """

    def __init__(self, config: CephConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._handle: Any = None

    def call(self, what: str, fn: Callable[[], T], *, policy: Policy | None = None) -> T:
        """Run ``fn`` under ``policy`` (default: transient); translate what still fails.

        ``what`` names the request for the error message (``"clone pool/image@snap"``).
        """
        policy = policy or self.config.transient

        def attempt() -> T:
            try:
                return fn()
            except Exception as exc:
                code = errno_of(exc)
                if code in (errno.ESHUTDOWN, errno.ENOTCONN):
                    self.reset()
                raise

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: errno_of(e) in policy.retry_on),
            stop=tenacity.stop_after_delay(policy.budget),
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
            return retrying(attempt)
        except BackendError:
            raise
        except Exception as exc:
            raise translate(exc, what, policy) from exc

    @contextmanager
    def ioctx(self, pool: str) -> Iterator[Any]:
        """An I/O context on ``pool``, closed afterwards."""
        ctx = self.call(f"open pool {pool}", lambda: self._connected().open_ioctx(pool))
        try:
            yield ctx
        finally:
            ctx.close()

    def fsid(self) -> str:
        return str(self.call("read the cluster fsid", lambda: self._connected().get_fsid()))

    def mon_command(self, command: dict[str, Any]) -> Any:
        import json

        def run() -> Any:
            ret, out, err = self._connected().mon_command(json.dumps(command), b"")
            if ret != 0:
                raise OSError(-ret, err or f"mon command {command['prefix']} failed")
            return json.loads(out) if out else None

        return self.call(f"mon command {command['prefix']}", run)

    def reset(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.shutdown()
            except Exception:  # a dead connection may refuse to shut down cleanly
                log.debug("ceph: shutting down a lost connection failed", exc_info=True)

    close = reset

    def _connected(self) -> Any:
        with self._lock:
            if self._handle is None:
                self._handle = self._connect()
            return self._handle

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
            handle.connect(timeout=int(config.connect_timeout))
        except Exception:
            handle.shutdown()
            raise
        return handle


def errno_of(exc: BaseException) -> int | None:
    """librados' error number of ``exc``, whichever binding raised it."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return abs(code)
    return None


def translate(exc: Exception, what: str, policy: Policy) -> BackendError:
    """The diskledger error for a librados/librbd exception that is not retried (any more)."""
    code = errno_of(exc)
    reason = str(exc) or type(exc).__name__
    if code == errno.EBUSY:
        return ImageBusy(f"ceph: {what}: still in use after {policy.budget:g} s", errno=code)
    if code in _TRANSIENT:
        return CephUnavailable(
            f"ceph: {what}: no answer from the cluster within {policy.budget:g} s ({reason})",
            errno=code,
        )
    if code in _NO_SPACE:
        return StorageIOError(f"ceph: {what}: no space left in the pool ({reason})", errno=code)
    if code in _DENIED:
        return CephError(f"ceph: {what}: permission denied ({reason})", errno=code)
    if type(exc).__module__ in ("rados", "rbd") or isinstance(exc, OSError):
        return CephError(f"ceph: {what}: {reason}", errno=code)
    return BackendError(f"ceph: {what}: {type(exc).__name__}: {reason}")
