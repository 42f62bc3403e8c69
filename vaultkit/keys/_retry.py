"""Retries with exponential backoff and jitter, for the transient failures of remote key services."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["Retry"]

log = logging.getLogger("vaultkit.keys")

T = TypeVar("T")


class Transient(Exception):  # noqa: N818 - a signal to retry, not an error for users
    """Raised inside a retried call to say: this failure may pass; try again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a provider retries a transient failure.

    Attempt ``n`` (from 0) that fails waits ``min(max_delay, base_delay * 2**n)`` times a random
    factor from 0.5 to 1 before the next; after ``attempts`` tries the last failure stands.
    """

    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("attempts must be at least 1 and delays not negative")

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """Run ``operation``; on :class:`Transient`, wait and try again, up to ``attempts`` times.

        Raises:
            Transient: the last attempt failed transiently (the caller turns it into its error).
        """
        for attempt in range(self.attempts):
            try:
                return operation()
            except Transient as failure:
                if attempt == self.attempts - 1:
                    raise
                delay = min(self.max_delay, self.base_delay * 2**attempt)
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                log.warning(
                    "%s failed (%s); retry %d of %d in %.2f s",
                    what,
                    failure.reason,
                    attempt + 1,
                    self.attempts - 1,
                    delay,
                )
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
