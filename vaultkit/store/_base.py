"""The data-key store: rows of wrapped DEKs, never a DEK in the clear."""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from typing import Final, Protocol, runtime_checkable

from vaultkit.errors import KeyStoreError

__all__ = [
    "SCHEMA_VERSION",
    "DataKeyRecord",
    "DekState",
    "KeyStore",
    "MemoryKeyStore",
    "SupportsStates",
]

#: Version of the key-store layout this release writes and reads. A store written by a newer
#: release is refused at start-up instead of being misread.
SCHEMA_VERSION: Final = 1


class DekState(enum.StrEnum):
    """Life cycle of a data key."""

    #: Decrypts, and its creating process may still encrypt under it within its budget.
    ACTIVE = "active"
    #: Decrypts, never encrypts again; its values are due to be re-encrypted (the re-key job).
    RETIRED = "retired"
    #: The wrapped key is erased; values under it are unreadable for good (crypto-shredding).
    DESTROYED = "destroyed"


@dataclass(frozen=True, slots=True)
class DataKeyRecord:
    """One row of the key store.

    Args:
        dek_id: 16 random bytes, also carried in the header of every value under this DEK.
        domain: the key domain; bound into the wrapping context, so a row moved to another domain
            does not unwrap.
        purpose: ``"data"`` for value encryption, ``"index"`` for blind-index keys, ``"audit"``
            for the audit log's key.
        kek_id: the provider's id of the KEK the DEK is wrapped under.
        kek_version: the KEK version.
        wrapped: the DEK wrapped by the KEK; empty once destroyed.
        state: see :class:`DekState`.
        created_at: creation time, timezone-aware UTC.
        subject: optional subject (a member id) for per-subject DEKs.
        encryptions: encryptions counted under this DEK, flushed at roll-over and close.
        name: for named keys (blind-index keys), what the key is for, such as
            ``members.email@v1``; ``None`` for data keys.
    """

    dek_id: bytes
    domain: str
    purpose: str
    kek_id: str
    kek_version: int
    wrapped: bytes = field(repr=False)
    state: DekState
    created_at: dt.datetime
    subject: str | None = None
    encryptions: int = 0
    name: str | None = None


@runtime_checkable
class KeyStore(Protocol):
    """Where wrapped DEKs are kept: an SQL table by default, memory in tests."""

    def insert(self, record: DataKeyRecord) -> None:
        """Store a new DEK row; ids never repeat."""
        ...

    def get(self, dek_id: bytes) -> DataKeyRecord | None:
        """Return the row of ``dek_id``, or ``None``."""
        ...

    def records(
        self, *, domain: str | None = None, state: DekState | None = None
    ) -> Iterator[DataKeyRecord]:
        """Iterate over rows, optionally of one domain and state."""
        ...

    def add_encryptions(self, dek_id: bytes, count: int) -> None:
        """Add ``count`` to a row's encryption counter."""
        ...

    def set_state(self, dek_id: bytes, state: DekState) -> None:
        """Change a row's state."""
        ...

    def rewrap(self, old: DataKeyRecord, *, kek_id: str, kek_version: int, wrapped: bytes) -> bool:
        """Replace a row's wrapping if it is still ``old``'s (compare-and-set); return success."""
        ...

    def destroy(self, dek_id: bytes) -> None:
        """Erase a row's wrapped key and mark it destroyed (the row stays as a tombstone)."""
        ...

    def close(self) -> None:
        """Release connections the store opened itself."""
        ...


@runtime_checkable
class SupportsStates(Protocol):
    """A key store that reads the states of many rows in one query (optional).

    A vault re-checks the states of its cached DEKs every ``key_check_interval`` seconds; a store
    with this method answers for all of them at once, any other store is asked row by row.

    .. versionadded:: 0.1.0
    """

    def states(self, dek_ids: Collection[bytes]) -> dict[bytes, DekState]:
        """The state of each of ``dek_ids`` the store has; ids it does not have are left out."""
        ...


class MemoryKeyStore:
    """A key store in a dict, for tests. Thread-safe; lost with the process.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        self._rows: dict[bytes, DataKeyRecord] = {}
        self._lock = threading.Lock()

    def insert(self, record: DataKeyRecord) -> None:
        with self._lock:
            if record.dek_id in self._rows:
                raise KeyStoreError(f"DEK {record.dek_id.hex()} already exists")
            self._rows[record.dek_id] = record

    def get(self, dek_id: bytes) -> DataKeyRecord | None:
        return self._rows.get(dek_id)

    def states(self, dek_ids: Collection[bytes]) -> dict[bytes, DekState]:
        rows = self._rows
        return {dek_id: rows[dek_id].state for dek_id in dek_ids if dek_id in rows}

    def records(
        self, *, domain: str | None = None, state: DekState | None = None
    ) -> Iterator[DataKeyRecord]:
        with self._lock:
            rows = list(self._rows.values())
        for row in rows:
            if (domain is None or row.domain == domain) and (state is None or row.state == state):
                yield row

    def _update(self, dek_id: bytes, **changes: object) -> None:
        with self._lock:
            row = self._rows.get(dek_id)
            if row is None:
                raise KeyStoreError(f"DEK {dek_id.hex()} is not in the key store")
            self._rows[dek_id] = replace(row, **changes)  # type: ignore[arg-type]

    def add_encryptions(self, dek_id: bytes, count: int) -> None:
        with self._lock:
            row = self._rows.get(dek_id)
            if row is None:
                raise KeyStoreError(f"DEK {dek_id.hex()} is not in the key store")
            self._rows[dek_id] = replace(row, encryptions=row.encryptions + count)

    def set_state(self, dek_id: bytes, state: DekState) -> None:
        self._update(dek_id, state=DekState(state))

    def destroy(self, dek_id: bytes) -> None:
        self._update(dek_id, state=DekState.DESTROYED, wrapped=b"")

    def rewrap(self, old: DataKeyRecord, *, kek_id: str, kek_version: int, wrapped: bytes) -> bool:
        with self._lock:
            row = self._rows.get(old.dek_id)
            if row is None or (row.kek_id, row.kek_version, row.wrapped) != (
                old.kek_id,
                old.kek_version,
                old.wrapped,
            ):
                return False
            self._rows[old.dek_id] = replace(
                row, kek_id=kek_id, kek_version=kek_version, wrapped=wrapped
            )
            return True

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"MemoryKeyStore(rows={len(self._rows)})"
