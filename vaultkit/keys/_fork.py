"""Fork safety for the remote providers: what one process owns is made again in a forked child.

A provider's connection to its key server (an HTTP connection pool, a PKCS#11 session and the
module's initialised state) belongs to the process that made it. A child made by ``fork()`` has a
copy of it, and using that copy would interleave the two processes' bytes on one socket or one
session. :class:`PerProcess` holds such a resource with the id of the process that made it and
makes a new one, on first use, in any other process: the check is one ``os.getpid()`` per use, and
nothing runs at fork time (``os.register_at_fork`` callbacks run while other threads' locks may be
held).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A resource of the current process, made by ``make`` on first use in each process.

    Args:
        make: makes the resource; called again after fork (and after :meth:`reset`).
        value: one already made by the current process (for a constructor that must fail early).
    """

    __slots__ = ("_make", "_pid", "_value")

    def __init__(self, make: Callable[[], T], *, value: T | None = None) -> None:
        self._make = make
        self._value = value
        self._pid = os.getpid() if value is not None else -1

    def get(self) -> T:
        """This process's resource: the one made here, or a new one."""
        pid = os.getpid()
        value = self._value
        if value is None or self._pid != pid:
            value = self._make()
            self._value, self._pid = value, pid
        return value

    def current(self) -> T | None:
        """This process's resource if it has made one, else ``None`` (never the parent's)."""
        return self._value if self._pid == os.getpid() else None

    def reset(self) -> None:
        """Forget the resource; the next :meth:`get` makes a new one."""
        self._value = None
        self._pid = -1

    def __repr__(self) -> str:
        return "PerProcess(...)"  # the resource may hold credentials: never shown
