"""Put first on PYTHONPATH of the rig's processes that run under libfaketime (tests/multihost/rig.py).

libfaketime 0.9.10 (Debian 12) with ``DONT_FAKE_MONOTONIC=1`` breaks ``time.sleep`` in Python
3.11: Python sleeps with ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...)`` and libfaketime
shifts that absolute deadline as if it were wall-clock time, so the kernel gets a negative time and
``time.sleep`` raises ``OSError: [Errno 22]`` (libfaketime issue 426, fixed after 0.9.10). Lock and
event waits (``sem_clockwait`` on the real monotonic clock) are not touched, so ``time.sleep`` is
replaced by a wait on a lock nobody releases: same length on the real monotonic clock, and signal
handlers still run during it, as with the real ``time.sleep``.
"""

import os
import threading
import time

if "libfaketime" in os.environ.get("LD_PRELOAD", ""):
    _never = threading.Lock()
    _never.acquire()
    _monotonic = time.monotonic

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        deadline = _monotonic() + seconds
        while (remaining := deadline - _monotonic()) > 0:
            _never.acquire(timeout=min(remaining, threading.TIMEOUT_MAX))

    time.sleep = _sleep  # type: ignore[assignment]
