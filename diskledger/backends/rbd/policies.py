"""How the RBD backend's librados/librbd calls are retried, and what is left becomes.

Every call goes through ``Cluster.call``, which retries it under one of two declared, bounded
policies and translates what is left into the error tree (``translate``):

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
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from diskledger.errors import (
    BackendError,
    CephError,
    CephUnavailable,
    ImageBusy,
    StorageIOError,
)

__all__ = [
    "BUSY",
    "DENIED",
    "LOCK",
    "LOST",
    "NO_ANSWER",
    "NO_SPACE",
    "TRANSIENT",
    "Policy",
    "errno_of",
    "translate",
]

LOST = frozenset({errno.ESHUTDOWN, errno.ENOTCONN})
"""The connection is gone (blocklisted, or shut down): the handles opened on it are dead."""
NO_ANSWER = frozenset({errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.ECONNRESET})
LOCK = frozenset({errno.EROFS, errno.EBADMSG})
"""librbd could not take the image's exclusive lock, or a notification went unanswered: with an
OSD down, both mean a request nobody answered."""
TRANSIENT = NO_ANSWER | LOCK | LOST
BUSY = TRANSIENT | {errno.EBUSY}
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
DENIED = frozenset({errno.EPERM, errno.EACCES})


@dataclass(frozen=True, slots=True)
class Policy:
    """A bounded retry policy: which errnos, how long in total, how the waits grow."""

    name: str
    retry_on: frozenset[int]
    budget: float
    first_wait: float
    max_wait: float


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
    if code in LOST:
        return CephUnavailable(
            f"ceph: {what}: lost its connection to the cluster ({reason}); "
            "the next request reconnects",
            errno=code,
        )
    if code in NO_ANSWER or (code in LOCK and unanswered):
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
    if code in NO_SPACE:
        return StorageIOError(f"ceph: {what}: no space left in the pool ({reason})", errno=code)
    if code in DENIED:
        return CephError(f"ceph: {what}: permission denied ({reason})", errno=code)
    if type(exc).__module__ in ("rados", "rbd") or isinstance(exc, OSError):
        return CephError(f"ceph: {what}: {reason}", errno=code)
    return BackendError(f"ceph: {what}: {type(exc).__name__}: {reason}")
