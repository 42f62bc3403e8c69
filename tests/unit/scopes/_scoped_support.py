"""Helpers of the scoped-key tests (a module, not the conftest: test modules import it)."""

from __future__ import annotations

import datetime as dt

from tests._support import FakeClock
from vaultkit import KeyDomain, Retention

START = dt.datetime(2026, 3, 2, 10, 30, tzinfo=dt.UTC)


class Wall:
    """The vault's wall clock (``Vault(clock=wall)``), moved with the monotonic ``clock`` fixture."""

    def __init__(self, mono: FakeClock) -> None:
        self.now = START
        self._mono = mono

    def __call__(self) -> dt.datetime:
        return self.now

    def set(self, when: dt.datetime) -> None:
        """Move both clocks to ``when`` (never back)."""
        step = (when - self.now).total_seconds()
        assert step >= 0
        self.now = when
        self._mono.now += step

    def advance(self, **delta: float) -> None:
        self.set(self.now + dt.timedelta(**delta))


def seed_domains() -> list[KeyDomain]:
    """The seeds' policies: chats 72 h (1 h buckets), contracts 5 years after the end, a
    subject-scoped medical domain without retention (and a restricted one, health), and a
    process-scoped identity domain."""
    return [
        KeyDomain(
            "chat",
            dek_scope="bucket",
            bucket=dt.timedelta(hours=1),
            retention=Retention("PT72H", after="capture"),
        ),
        KeyDomain(
            "contract",
            dek_scope="subject",
            retention=Retention(
                "P5Y", after="relationship_end", kind="no_less_than", ground="art. 60 law"
            ),
        ),
        KeyDomain("medical", dek_scope="subject"),
        KeyDomain("health", dek_scope="subject", restricted=True),
        KeyDomain("identity"),
    ]
