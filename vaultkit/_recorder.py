"""The audit recorder: turns a vault's accesses to audited domains into batched audit events.

One job: :meth:`AuditRecorder.record` is called on every read (``decrypt``, ``denied``) and write
of an audited domain, before plaintext leaves (or a ciphertext is made), and either records the
access or raises :class:`~vaultkit.errors.AuditError`; never neither. It knows nothing of keys.

It has one lock of its own, never held while another collaborator's lock is held, and let go
while a write waits in SQLAlchemy's asyncio greenlet; after a fork the child gets a fresh lock,
no open batches and no pending events (the parent's are the parent's to write).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from vaultkit._access import current_scope
from vaultkit._offload import CancelledCall, in_greenlet
from vaultkit._offload import call as _call
from vaultkit._redact import NoPickle
from vaultkit.audit import AuditEvent, AuditLog, audit_log_exists, writer_table_prefix
from vaultkit.core import wire
from vaultkit.errors import AuditError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from sqlalchemy.engine import Engine

__all__ = ["DEFAULT_AUDIT_BATCH", "AuditRecorder"]

DEFAULT_AUDIT_BATCH: Final = 5000  # row keys per audit event in bulk reads

#: (principal, purpose, action, domain, table, column, DEK id): the accesses one event covers.
_BatchKey = tuple[str, str | None, str, str, Any, Any, bytes | None]


def _after_fork(ref: weakref.ReferenceType[AuditRecorder]) -> None:
    recorder = ref()
    if recorder is not None:
        recorder.reset_after_fork()


class AuditRecorder(NoPickle):
    """Batches a vault's audit events and writes them to its :class:`~vaultkit.audit.AuditLog`.

    Args:
        log: the log written to.
        batch_size: accesses per event in bulk reads.
        owned_engine: an engine opened for the log, disposed of by :meth:`close`.
        writers: pinned encrypt-only writers (name -> public key) whose chains can be read.
    """

    def __init__(
        self,
        log: AuditLog,
        *,
        batch_size: int = DEFAULT_AUDIT_BATCH,
        owned_engine: Engine | None = None,
        writers: dict[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self.log = log
        self.batch_size = batch_size
        self._owned_engine = owned_engine
        self.writers = dict(writers or {})
        self._batches: dict[_BatchKey, list[Any]] = {}
        self._pending: list[AuditEvent] = []  # events a failed write kept, written first
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))

    def writer_logs(self) -> dict[str, AuditLog]:
        """The chains of the pinned writers that have logged anything, read-only, by name."""
        engine = self.log.engine
        return {
            name: AuditLog.of_writer(engine, key, name=name)
            for name, key in self.writers.items()
            if audit_log_exists(engine, table_prefix=writer_table_prefix(key))
        }

    def record(self, action: str, domain: str, where: Any, dek_id: bytes | None) -> None:
        """Log one access to an audited domain, or raise :class:`AuditError`: never neither.

        Bulk reads share one event per batch, a batch being the accesses of one (principal,
        purpose, action, domain, table, column, DEK). The first access of a batch is written at
        once, so a log that cannot be written fails the access. Further row keys are written
        together when the batch is full (``batch_size`` accesses), when the ``vault.acting_as``
        block ends, on :meth:`flush` and on the vault's ``close``.

        A write that fails keeps its events (never discards them): every later access first
        writes them, and fails while it cannot. So a batch holds at most ``batch_size - 1``
        unwritten accesses, and while the log is down no access succeeds and nothing piles up.
        """
        table = column = row = None
        if isinstance(where, tuple):
            table, column, row = where
        elif where:
            table, column, row = where.get("table"), where.get("column"), where.get("row")
        scope = current_scope()
        key: _BatchKey = (
            scope.principal.name,
            scope.purpose,
            action,
            domain,
            table,
            column,
            dek_id,
        )
        row_text = wire.context_value_text(row) if row is not None else None
        with self._lock:
            if self._pending:
                # An earlier write failed: its events go first, or this access fails too.
                pending, self._pending = self._pending, []
                try:
                    self._write_locked(pending)
                except (AuditError, CancelledCall):
                    self._pending[:0] = pending
                    raise
            batch = self._batches.get(key)
            if batch is None:
                self._write_locked([_event(key, (row_text,) if row_text else (), 1)])
                # setdefault: in asyncio another task may have opened the batch meanwhile.
                self._batches.setdefault(key, [[], 0])
                return
            if batch[1] + 1 < self.batch_size:
                if row_text is not None:
                    batch[0].append(row_text)
                batch[1] += 1
                return
            # The batch is full with this access: write it now, this access included. The batch
            # is emptied first: in asyncio other tasks may add to it while the write is under way.
            rows = (*batch[0], row_text) if row_text is not None else tuple(batch[0])
            earlier = (tuple(batch[0]), batch[1])
            batch[0], batch[1] = [], 0
            try:
                self._write_locked([_event(key, rows, earlier[1] + 1)])
            except (AuditError, CancelledCall):
                # Keep the batch's earlier accesses (they returned); this one fails, unrecorded.
                if not batch[1] and self._batches.get(key) is batch:
                    del self._batches[key]
                if earlier[1]:
                    self._pending.append(_event(key, *earlier))
                raise

    def record_now(self, events: Sequence[AuditEvent]) -> None:
        """Write events of the data life cycle (erasure, retention) at once, not batched.

        Events an earlier write could not store go first. If the write fails, those earlier
        events are kept; these are not (the operation that made them raises, and running it
        again makes them again).

        Raises:
            AuditError: the events could not be written.
        """
        with self._lock:
            pending, self._pending = self._pending, []
            try:
                self._write_locked([*pending, *events])
            except (AuditError, CancelledCall):
                self._pending[:0] = pending
                raise

    def _write_locked(self, events: list[AuditEvent]) -> None:
        """:meth:`_write` for a caller holding the lock.

        In SQLAlchemy's asyncio greenlet the write goes to a worker thread and the lock is let go
        meanwhile: the greenlet switches to the event loop, and another task of the loop's thread
        taking the lock would block that thread, and with it the write, for good.
        """
        if not in_greenlet():
            self._write(events)
            return
        self._lock.release()
        try:
            self._write(events)
        finally:
            self._lock.acquire()

    def _write(self, events: list[AuditEvent]) -> None:
        """Write events to the log: the one place the recorder writes (in SQLAlchemy's asyncio
        greenlet, in a worker thread, awaited)."""
        _call(self.log.append, events, finish=True)

    def flush(self) -> None:
        """Write the row keys of every open batch and close the batches (see ``flush_audit``).

        Raises:
            AuditError: the events could not be written (they are kept).
        """
        with self._lock:
            events = [
                *self._pending,
                *(_event(k, tuple(b[0]), b[1]) for k, b in self._batches.items() if b[1]),
            ]
            self._batches.clear()
            self._pending = []
        # Written outside the lock (other threads and tasks go on auditing meanwhile); in
        # SQLAlchemy's asyncio greenlet in a worker thread.
        try:
            self._write(events)
        except (AuditError, CancelledCall):
            with self._lock:
                self._pending[:0] = events
            raise

    def close(self) -> None:
        """Release the engine opened for the log (the caller flushed first)."""
        if self._owned_engine is not None:
            self._owned_engine.dispose()

    def reset_after_fork(self) -> None:
        # The parent's open batches and pending events are the parent's to write, not the
        # child's; the lock may have been held by another thread of the parent at the fork.
        self._lock = threading.Lock()
        self._batches = {}
        self._pending = []
        # The parent's pooled audit connections are the parent's: the child opens its own
        # (SQLAlchemy's "Using Connection Pools with Multiprocessing or os.fork()").
        self.log.engine.dispose(close=False)


def _event(key: _BatchKey, rows: tuple[str, ...], count: int) -> AuditEvent:
    principal, purpose, action, domain, table, column, dek_id = key
    return AuditEvent(
        principal=principal,
        purpose=purpose,
        action=action,
        domain=domain,
        table=table,
        column=column,
        rows=rows,
        count=count,
        dek_id=dek_id.hex() if dek_id else None,
        at=dt.datetime.now(dt.UTC),
    )
