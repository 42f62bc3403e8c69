"""The data-key store: rows of wrapped DEKs, never a DEK in the clear."""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol, runtime_checkable

from vaultkit.errors import KeyStoreError

__all__ = [
    "SCHEMA_VERSION",
    "WRAPPING_KEK_ID",
    "DataKeyRecord",
    "DekState",
    "KeyStore",
    "KeySummary",
    "MemoryKeyStore",
    "SubjectRecord",
    "SupportsBulkScopedKeys",
    "SupportsGetMany",
    "SupportsScopedKeys",
    "SupportsStates",
]

#: Version of the key-store layout this release writes and reads. A store written by a newer
#: release is refused at start-up instead of being misread. Version 2 (0.3.0) added the key
#: scope and retention columns and the subjects table; a version 1 store is upgraded in place.
SCHEMA_VERSION: Final = 2
#: The ``kek_id`` of subject and bucket DEKs: wrapped in process under the domain's wrapping
#: key (a key-store row of purpose ``wrapping``), whose epoch is the row's ``kek_version``.
WRAPPING_KEK_ID: Final = "vaultkit:wrapping"
DATA_PURPOSE: Final = "data"
WRAPPING_PURPOSE: Final = "wrapping"


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
        subject: the subject *reference* of a subject-scoped DEK: 32 hex digits, a keyed
            HMAC of the member id (:meth:`Vault.subject_ref`), never the member id itself.
        encryptions: encryptions counted under this DEK, flushed at roll-over and close.
        name: for named keys (blind-index keys), what the key is for, such as
            ``members.email@v1``; ``None`` for data keys.
        scope: ``"subject"`` or ``"bucket"`` for a scoped DEK, ``None`` for a process DEK.
        not_after: a bucket DEK's bucket end (UTC, whole seconds); bound into its wrapping, so
            moving it makes the key unreadable rather than longer-lived.
        destroy_at: when the DEK becomes unreadable (bucket end + retention, or relationship end +
            retention); reads refuse it from then on, even before a sweep destroys it.
        destroyed_at: when it was destroyed.
        destroy_reason: why: ``"erasure"``, ``"retention"``, ``"destroyed"`` or another word.

    .. versionchanged:: 0.3.0 ``scope``, ``not_after``, ``destroy_at``, ``destroyed_at`` and
       ``destroy_reason``.
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
    scope: str | None = None
    not_after: dt.datetime | None = None
    destroy_at: dt.datetime | None = None
    destroyed_at: dt.datetime | None = None
    destroy_reason: str | None = None


@dataclass(frozen=True, slots=True)
class SubjectRecord:
    """What the key store knows of one subject in one domain (table ``vaultkit_subjects``).

    Args:
        domain: the key domain.
        subject_ref: the subject's reference in that domain (never the member id).
        relationship_end: the end of the relationship, as recorded by
            :meth:`Vault.end_relationship`.
        fenced_at: while set, writes for this subject are refused (an erasure was requested);
            :meth:`Vault.allow_subject` clears it.
        erased_at: when the subject was last erased.
        request_id: the id of the erasure request, as its caller gave it.

    .. versionadded:: 0.3.0
    """

    domain: str
    subject_ref: str
    relationship_end: dt.datetime | None = None
    fenced_at: dt.datetime | None = None
    erased_at: dt.datetime | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class KeySummary:
    """Counts of one domain's data keys at one time, computed by the store; no key, no reference.

    Args:
        live: data keys not destroyed.
        destroyed: data keys destroyed.
        due: live keys whose ``destroy_at`` has passed (reads already refuse them; a sweep
            destroys them).
        oldest_readable_capture: the earliest capture time still readable: for bucket keys the
            start of the oldest live, not due bucket (``not_after - bucket``), for others the
            creation time of the oldest live, not due key; ``None`` if there is none.
        subjects: distinct subject references with a live key.
        subjects_without_end: of those, the ones with no relationship end recorded.
        ended_without_deadline: live keys with no ``destroy_at`` of subjects whose relationship
            end is recorded (``end_relationship`` gives them one: a row changed since).

    .. versionadded:: 0.3.0
    """

    live: int
    destroyed: int
    due: int
    oldest_readable_capture: dt.datetime | None
    subjects: int
    subjects_without_end: int
    ended_without_deadline: int = 0


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


@runtime_checkable
class SupportsScopedKeys(Protocol):
    """A key store for subject- and bucket-scoped keys and their life cycle.

    A vault with a domain of ``dek_scope="subject"`` or ``"bucket"`` requires it
    (:class:`MemoryKeyStore` and :class:`~vaultkit.store.SQLKeyStore` have it).

    .. versionadded:: 0.3.0
    """

    def subject_keys(self, domain: str, subject_ref: str) -> list[DataKeyRecord]:
        """The data-key rows of one subject in ``domain``, in any state, oldest first."""
        ...

    def set_destroy_at(self, domain: str, subject_ref: str, destroy_at: dt.datetime) -> int:
        """Set ``destroy_at`` on the subject's data keys not yet destroyed; return how many."""
        ...

    def destroy_key(self, dek_id: bytes, *, reason: str, at: dt.datetime) -> bool:
        """Erase a row's wrapped key, recording when and why; ``False`` if it was destroyed."""
        ...

    def rebind(self, old: DataKeyRecord, *, wrapped: bytes, destroy_at: dt.datetime | None) -> bool:
        """Replace a live row's wrapped key and ``destroy_at`` together if its wrapped key is
        still ``old``'s (compare-and-set); return success."""
        ...

    def due_keys(self, at: dt.datetime, *, limit: int) -> list[DataKeyRecord]:
        """Up to ``limit`` data keys not destroyed whose ``destroy_at <= at``, earliest first."""
        ...

    def get_subject(self, domain: str, subject_ref: str) -> SubjectRecord | None:
        """The subject's row, or ``None``."""
        ...

    def put_subject(self, record: SubjectRecord) -> None:
        """Insert or replace the subject's row."""
        ...

    def key_summary(
        self, domain: str, at: dt.datetime, *, bucket: dt.timedelta | None = None
    ) -> KeySummary:
        """Counts of ``domain``'s data keys at ``at`` (aggregates, not a scan in Python).

        ``bucket`` is the domain's bucket width, for ``oldest_readable_capture`` of bucket keys.
        """
        ...

    def wrapping_keys(self, domain: str) -> list[DataKeyRecord]:
        """The rows of ``domain``'s wrapping keys (purpose ``wrapping``), any state, by epoch."""
        ...

    def provider_wrapped(self, domain: str) -> list[DataKeyRecord]:
        """The rows of ``domain`` wrapped by its KEK (not by a wrapping key), not destroyed."""
        ...

    def key_deadlines(
        self, dek_ids: Collection[bytes]
    ) -> dict[bytes, tuple[DekState, dt.datetime | None]]:
        """The state and ``destroy_at`` of each of ``dek_ids`` the store has, in few queries."""
        ...


@runtime_checkable
class SupportsDestroyMany(Protocol):
    """A key store that destroys many data keys in one transaction (optional).

    :meth:`Vault.enforce_retention` destroys each batch of due keys with it (one commit per
    batch); with any other :class:`SupportsScopedKeys` store it calls
    :meth:`~SupportsScopedKeys.destroy_key` per key (one commit each). :class:`MemoryKeyStore`
    and :class:`~vaultkit.store.SQLKeyStore` have it.

    .. versionadded:: 0.3.0
    """

    def destroy_keys(
        self, dek_ids: Sequence[bytes], *, reason: str, at: dt.datetime
    ) -> list[bytes]:
        """Destroy the rows of ``dek_ids`` not destroyed yet, as :meth:`destroy_key` does each
        (wrapped key erased, ``destroyed_at`` and ``destroy_reason`` recorded), in one
        transaction; return the ids this call destroyed (exactly: a row destroyed meanwhile
        by another caller is not among them). Ids the store does not have are left out.
        """
        ...


@runtime_checkable
class SupportsGetMany(Protocol):
    """A key store that reads many rows in one query (optional; :meth:`Vault.preload` uses it).

    .. versionadded:: 0.3.0
    """

    def get_many(self, dek_ids: Collection[bytes]) -> dict[bytes, DataKeyRecord]:
        """The rows of ``dek_ids`` the store has, by id."""
        ...


@runtime_checkable
class SupportsBulkScopedKeys(Protocol):
    """A key store that makes the subject keys of many members at once (optional).

    :meth:`vaultkit.Vault.prepare_subjects` uses it: the keys of N new members cost a few
    statements per 500 members instead of one transaction each. Without it the vault makes them
    one by one.

    .. versionadded:: 0.3.0
    """

    def active_subject_keys(
        self, domain: str, subject_refs: Collection[str]
    ) -> dict[str, list[DataKeyRecord]]:
        """The ACTIVE data-key rows of each of ``subject_refs`` in ``domain``, oldest first;
        refs with none are left out."""
        ...

    def subject_records(
        self, domain: str, subject_refs: Collection[str]
    ) -> dict[str, SubjectRecord]:
        """The rows of those of ``subject_refs`` that have one in ``domain``, by ref."""
        ...

    def insert_many(self, records: Collection[DataKeyRecord]) -> None:
        """Insert every row of ``records`` in one transaction (all or none)."""
        ...


class MemoryKeyStore:
    """A key store in a dict, for tests. Thread-safe; lost with the process.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        self._rows: dict[bytes, DataKeyRecord] = {}
        self._subjects: dict[tuple[str, str], SubjectRecord] = {}
        self._lock = threading.Lock()

    def insert(self, record: DataKeyRecord) -> None:
        with self._lock:
            if record.dek_id in self._rows:
                raise KeyStoreError(f"DEK {record.dek_id.hex()} already exists")
            self._rows[record.dek_id] = record

    def get(self, dek_id: bytes) -> DataKeyRecord | None:
        return self._rows.get(dek_id)

    def get_many(self, dek_ids: Collection[bytes]) -> dict[bytes, DataKeyRecord]:
        rows = self._rows
        return {dek_id: rows[dek_id] for dek_id in dek_ids if dek_id in rows}

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

    # -- scoped keys (SupportsScopedKeys) ----------------------------------------------------

    def subject_keys(self, domain: str, subject_ref: str) -> list[DataKeyRecord]:
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if r.domain == domain and r.subject == subject_ref and r.purpose == DATA_PURPOSE
            ]
        return sorted(rows, key=lambda r: (r.created_at, r.dek_id))

    def set_destroy_at(self, domain: str, subject_ref: str, destroy_at: dt.datetime) -> int:
        count = 0
        with self._lock:
            for dek_id, row in list(self._rows.items()):
                if (
                    row.domain == domain
                    and row.subject == subject_ref
                    and row.purpose == DATA_PURPOSE
                    and row.state is not DekState.DESTROYED
                ):
                    self._rows[dek_id] = replace(row, destroy_at=destroy_at)
                    count += 1
        return count

    def destroy_key(self, dek_id: bytes, *, reason: str, at: dt.datetime) -> bool:
        with self._lock:
            row = self._rows.get(dek_id)
            if row is None:
                raise KeyStoreError(f"DEK {dek_id.hex()} is not in the key store")
            if row.state is DekState.DESTROYED and not row.wrapped:
                return False
            self._rows[dek_id] = replace(
                row, state=DekState.DESTROYED, wrapped=b"", destroyed_at=at, destroy_reason=reason
            )
            return True

    def rebind(self, old: DataKeyRecord, *, wrapped: bytes, destroy_at: dt.datetime | None) -> bool:
        with self._lock:
            row = self._rows.get(old.dek_id)
            if row is None or row.state is DekState.DESTROYED or row.wrapped != old.wrapped:
                return False
            self._rows[old.dek_id] = replace(row, wrapped=wrapped, destroy_at=destroy_at)
            return True

    def destroy_keys(
        self, dek_ids: Sequence[bytes], *, reason: str, at: dt.datetime
    ) -> list[bytes]:
        done = []
        with self._lock:
            for dek_id in dict.fromkeys(dek_ids):
                row = self._rows.get(dek_id)
                if row is None or row.state is DekState.DESTROYED:
                    continue
                self._rows[dek_id] = replace(
                    row,
                    state=DekState.DESTROYED,
                    wrapped=b"",
                    destroyed_at=at,
                    destroy_reason=reason,
                )
                done.append(dek_id)
        return done

    def due_keys(self, at: dt.datetime, *, limit: int) -> list[DataKeyRecord]:
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if r.purpose == DATA_PURPOSE
                and r.state is not DekState.DESTROYED
                and r.destroy_at is not None
                and r.destroy_at <= at
            ]
        rows.sort(key=lambda r: (r.destroy_at or at, r.dek_id))
        return rows[: max(limit, 0)]

    def ended_keys(self, domain: str, by: dt.datetime, *, limit: int) -> list[DataKeyRecord]:
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if r.domain == domain
                and r.purpose == DATA_PURPOSE
                and r.state is not DekState.DESTROYED
                and r.not_after is not None
                and r.not_after <= by
            ]
        rows.sort(key=lambda r: (r.not_after or by, r.dek_id))
        return rows[: max(limit, 0)]

    def get_subject(self, domain: str, subject_ref: str) -> SubjectRecord | None:
        return self._subjects.get((domain, subject_ref))

    def get_subjects(self, domain: str, subject_refs: Collection[str]) -> dict[str, SubjectRecord]:
        subjects = self._subjects
        return {r: subjects[(domain, r)] for r in subject_refs if (domain, r) in subjects}

    def put_subject(self, record: SubjectRecord) -> None:
        with self._lock:
            self._subjects[(record.domain, record.subject_ref)] = record

    def key_summary(
        self, domain: str, at: dt.datetime, *, bucket: dt.timedelta | None = None
    ) -> KeySummary:
        with self._lock:
            rows = [
                r for r in self._rows.values() if r.domain == domain and r.purpose == DATA_PURPOSE
            ]
            ended = {
                ref for (d, ref), s in self._subjects.items() if d == domain and s.relationship_end
            }
        live = [r for r in rows if r.state is not DekState.DESTROYED]
        due = [r for r in live if r.destroy_at is not None and r.destroy_at <= at]
        readable = [r for r in live if r.destroy_at is None or r.destroy_at > at]
        captures = [
            r.not_after - bucket if bucket is not None and r.not_after is not None else r.created_at
            for r in readable
        ]
        subjects = {r.subject for r in live if r.subject is not None}
        undated = [r for r in live if r.destroy_at is None and r.subject in ended]
        return KeySummary(
            live=len(live),
            destroyed=len(rows) - len(live),
            due=len(due),
            oldest_readable_capture=min(captures, default=None),
            subjects=len(subjects),
            subjects_without_end=len(subjects - ended),
            ended_without_deadline=len(undated),
        )

    def key_deadlines(
        self, dek_ids: Collection[bytes]
    ) -> dict[bytes, tuple[DekState, dt.datetime | None]]:
        rows = self._rows
        return {
            dek_id: (rows[dek_id].state, rows[dek_id].destroy_at)
            for dek_id in dek_ids
            if dek_id in rows
        }

    def wrapping_keys(self, domain: str) -> list[DataKeyRecord]:
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if r.domain == domain and r.purpose == WRAPPING_PURPOSE
            ]
        return sorted(rows, key=lambda r: _epoch(r.name or ""))

    def provider_wrapped(self, domain: str) -> list[DataKeyRecord]:
        with self._lock:
            return [
                r
                for r in self._rows.values()
                if r.domain == domain
                and r.kek_id != WRAPPING_KEK_ID
                and r.state is not DekState.DESTROYED
            ]

    # -- many subjects at once (SupportsBulkScopedKeys) --------------------------------------

    def active_subject_keys(
        self, domain: str, subject_refs: Collection[str]
    ) -> dict[str, list[DataKeyRecord]]:
        wanted = set(subject_refs)
        found: dict[str, list[DataKeyRecord]] = {}
        with self._lock:
            rows = [
                r
                for r in self._rows.values()
                if r.domain == domain
                and r.subject in wanted
                and r.purpose == DATA_PURPOSE
                and r.state is DekState.ACTIVE
            ]
        for row in sorted(rows, key=lambda r: (r.created_at, r.dek_id)):
            found.setdefault(row.subject or "", []).append(row)
        return found

    def subject_records(
        self, domain: str, subject_refs: Collection[str]
    ) -> dict[str, SubjectRecord]:
        with self._lock:
            return {
                ref: self._subjects[(domain, ref)]
                for ref in set(subject_refs)
                if (domain, ref) in self._subjects
            }

    def insert_many(self, records: Collection[DataKeyRecord]) -> None:
        with self._lock:
            ids = [r.dek_id for r in records]
            if len(set(ids)) != len(ids) or any(i in self._rows for i in ids):
                raise KeyStoreError("a DEK of the batch already exists")
            for record in records:
                self._rows[record.dek_id] = record

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"MemoryKeyStore(rows={len(self._rows)})"


def _epoch(name: str) -> int:
    """The epoch of a wrapping key's name ``wrapping@<epoch>`` (0 if it is not one)."""
    _, _, tail = name.partition("@")
    return int(tail) if tail.isdigit() else 0
