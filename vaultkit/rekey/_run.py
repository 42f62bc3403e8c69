"""The re-keying engine: one worker's run over a table, range by range and batch by batch."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from vaultkit import Principal, Vault
from vaultkit.errors import ConfigurationError, ConflictError
from vaultkit.rekey._classify import Batch, Change, Classifier, changes_in, targets_of
from vaultkit.rekey._jobs import (
    Claims,
    create_job_tables,
    cut_ranges,
    default_job,
    default_worker_name,
    job_done,
    job_tables,
    load_checkpoint,
    save_checkpoint,
)
from vaultkit.rekey._manifest import Manifest, begin_migration, legacy_entries, manifests_of
from vaultkit.rekey._reports import ConflictRetry, RekeyReport
from vaultkit.rekey._table import indexes_of, key_value, plan_table, selection
from vaultkit.rekey._write import (
    CAS_ATTEMPTS,
    conflict_of,
    lock_statement,
    write_each,
    write_postgresql,
)
from vaultkit.sqla.keyset import page

__all__ = ["after_read", "rekey_table"]

log = logging.getLogger("vaultkit.rekey")

#: A test seam, not an option: called with each batch's rows after they were read and before
#: they are written, in the batch's transaction (tests make the application write there).
#: Set it with ``monkeypatch.setattr(vaultkit.rekey._run, "after_read", ...)``.
after_read: Callable[[Sequence[Any]], None] | None = None

_Fetched = tuple[Sequence[Any], Batch]


def rekey_table(
    engine: sa.Engine,
    table: sa.Table,
    *,
    vault: Vault,
    columns: Sequence[str] | None = None,
    job: str | None = None,
    batch_size: int = 1000,
    range_size: int = 20_000,
    dry_run: bool = False,
    principal: Principal | None = None,
    max_batches: int | None = None,
    progress: Callable[[RekeyReport], None] | None = None,
    worker: str | None = None,
    prefetch: bool = True,
    retry: ConflictRetry | None = None,
) -> RekeyReport:
    """Re-encrypt the values of ``table``'s encrypted columns that need it; one worker's run.

    Run it in several processes, here or on other machines, with the same ``job`` to share the
    work (PostgreSQL or MariaDB); each returns the counts of what it did itself.

    Args:
        engine: the database of ``table``.
        table: an SQLAlchemy table (``Model.__table__``) with ``Encrypted`` columns.
        vault: the vault those columns use (configured with ``vaultkit.sqla.configure``).
        columns: names of the encrypted columns to re-key (default: all).
        job: the job's name (default ``<table>:rekey``); workers of one job share its ranges and
            a new run resumes its checkpoints. Use a new name for a new pass.
        batch_size: rows per batch and transaction.
        range_size: rows per range claimed by one worker (used when the job's ranges are cut).
        dry_run: count what would change; write nothing (not even checkpoints), one worker.
        principal: who the engine acts as (default: ``vaultkit-rekey`` with grants for every
            domain of the vault); its reads and writes appear in the audit log under that name.
        max_batches: stop after this many batches (the checkpoints keep the place).
        progress: called after every batch with the report so far.
        worker: this worker's name in the checkpoints (default ``host:pid``).
        prefetch: on a database server, read and re-encrypt the next batch in a helper thread
            while this one is written (about 20% faster on PostgreSQL here; see
            docs/benchmarks.md). Ignored on SQLite.
        retry: how a batch aborted by the database on a conflict (deadlock, serialization
            failure, lock timeout) is retried; default :class:`ConflictRetry()`.

    Returns:
        A :class:`RekeyReport`.

    Raises:
        ConflictError: the database aborted one batch on a conflict at every attempt.
    """
    if batch_size < 1 or range_size < 1:
        raise ConfigurationError("batch_size and range_size must be at least 1")
    started = time.monotonic()
    run = _Run(
        engine,
        table,
        vault=vault,
        columns=columns,
        job=job or default_job(table),
        batch_size=batch_size,
        dry_run=dry_run,
        principal=principal,
        max_batches=max_batches,
        progress=progress,
        worker=worker or default_worker_name(),
        prefetch=prefetch,
        retry=retry or ConflictRetry(),
    )
    run.run(range_size)
    run.report.seconds = time.monotonic() - started
    return run.report


class _Run:
    """One worker's run of one job: the state the batches share, and one method per step."""

    def __init__(
        self,
        engine: sa.Engine,
        table: sa.Table,
        *,
        vault: Vault,
        columns: Sequence[str] | None,
        job: str,
        batch_size: int,
        dry_run: bool,
        principal: Principal | None,
        max_batches: int | None,
        progress: Callable[[RekeyReport], None] | None,
        worker: str,
        prefetch: bool,
        retry: ConflictRetry,
    ) -> None:
        self.engine = engine
        self.table = table
        self.vault = vault
        self.job = job
        self.batch_size = batch_size
        self.dry_run = dry_run
        self.max_batches = max_batches
        self.progress = progress
        self.retry = retry
        self.pk, self.encrypted = plan_table(table, columns)
        if not dry_run:
            _refuse_subject_columns(vault, table, self.encrypted)
        self.report = RekeyReport(job=job, worker=worker, dry_run=dry_run)
        # source column name -> the index columns it carries (see indexes_of)
        self.indexes = indexes_of(table, [c.name for c in self.encrypted])
        row_keys, self.selected = selection(self.pk, self.encrypted, self.indexes)
        self.classify = Classifier(vault, decrypt=not dry_run)
        self.actor = principal or Principal("vaultkit-rekey", grants=vault.domains)
        dialect = engine.dialect
        self.write = write_postgresql if dialect.name == "postgresql" else write_each
        self.lock_rows = lock_statement(dialect, self.pk)
        self.targets = targets_of(dialect, self.selected, self.encrypted, row_keys, self.indexes)
        # Safe on PostgreSQL: a batch's values and its checkpoint commit together, so losing the
        # last commits in a server crash only means redoing those batches.
        self.relaxed_commit = dialect.name == "postgresql" and not dry_run
        # On a database server, the next batch is read and re-encrypted in a helper thread while
        # this one is written: the client's work and the server's overlap. (SQLite runs
        # in-process.)
        self.prefetch = prefetch and dialect.name != "sqlite"
        self.executor: ThreadPoolExecutor | None = None
        self.ranges, self.checkpoints = job_tables(sa.MetaData())
        self.manifests: dict[str, Manifest] = {}
        #: The next batch, being read in the helper thread while this one is written.
        self.ahead: Future[_Fetched] | None = None

    # -- the job ------------------------------------------------------------------------------

    def run(self, range_size: int) -> None:
        """Claim ranges and work through them until none is left (or ``max_batches``)."""
        report, vault = self.report, self.vault
        if not self.dry_run:
            migrating = [c.name for c in self.encrypted if c.type.migrating]  # type: ignore[attr-defined]
            if migrating:
                with vault.acting_as(self.actor, purpose=f"rekey {self.job}"):
                    begin_migration(self.engine, self.table, vault=vault, columns=migrating)
        self.manifests = manifests_of(self.engine, vault, self.encrypted)
        if self.prefetch:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="vaultkit-rekey")
        with (
            vault.acting_as(self.actor, purpose=f"rekey {self.job}"),
            self.executor if self.executor is not None else contextlib.nullcontext(),
        ):
            if self.dry_run:
                report.ranges_total = 1
                report.finished = self.work_range(0, None, None)
                report.ranges_done = int(report.finished)
            else:
                self.claim_ranges(range_size)
        if report.finished and not self.dry_run and self.manifests:
            with self.engine.begin() as conn:
                for manifest in self.manifests.values():
                    manifest.finish_if_empty(conn)

    def claim_ranges(self, range_size: int) -> None:
        """Cut the job's ranges if nobody has, then claim and work through them one by one."""
        engine, report = self.engine, self.report
        create_job_tables(engine)
        report.ranges_total = cut_ranges(engine, self.pk, self.ranges, self.job, range_size)
        claims = Claims(engine, self.ranges, self.job)
        stopped = False
        while not stopped:
            with claims.claim() as claimed:
                if claimed is None:
                    report.finished = job_done(engine, self.ranges, self.job)
                    if report.finished or not claims.locking:
                        break
                    # Other workers hold the last ranges: wait, so as to take over a range
                    # whose worker dies (its lock goes with its connection).
                    time.sleep(0.2)
                    continue
                lo, hi = key_value(self.pk, claimed.lo), key_value(self.pk, claimed.hi)
                claimed.finished = self.work_range(claimed.seq, lo, hi)
                stopped = not claimed.finished  # max_batches: the range stays open
                report.ranges_done += claimed.finished

    # -- one range ----------------------------------------------------------------------------

    def work_range(self, seq: int, lo: Any, hi: Any) -> bool:
        """Work through one range from its checkpoint; False when stopped by ``max_batches``."""
        report, executor, max_batches = self.report, self.executor, self.max_batches
        last = lo
        if not self.dry_run:
            saved = load_checkpoint(self.engine, self.checkpoints, self.job, seq)
            if saved is not None and saved.done:
                return True
            if saved is not None and saved.last_key is not None:
                last = key_value(self.pk, saved.last_key)
                if report.resumed_after is None:
                    report.resumed_after = last
        self.ahead = None
        while True:
            if max_batches is not None and report.batches >= max_batches:
                return False
            prefetched: _Fetched | None = None
            if executor is not None:
                # Read and compute this batch in the helper thread (already started while the
                # previous batch was written), then start on the next one while this is written.
                ahead = self.ahead
                if ahead is None:
                    ahead = executor.submit(contextvars.copy_context().run, self.fetch, last, hi)
                prefetched = ahead.result()
                self.ahead = None
                rows = prefetched[0]
                last_batch = max_batches is not None and report.batches + 1 >= max_batches
                if len(rows) == self.batch_size and not last_batch:
                    after = getattr(rows[-1], self.pk.name)
                    self.ahead = executor.submit(
                        contextvars.copy_context().run, self.fetch, after, hi
                    )
            rows, done = self.batch_with_retries(seq, last, hi, prefetched)
            if rows:
                last = getattr(rows[-1], self.pk.name)
            report.batches += 1
            if self.progress is not None:
                self.progress(report)
            if done:
                return True

    def batch_with_retries(
        self, seq: int, after: Any, hi: Any, prefetched: _Fetched | None
    ) -> tuple[Sequence[Any], bool]:
        """One batch, tried again (read afresh) when the database aborts it on a conflict."""
        report, retry = self.report, self.retry
        for attempt in range(retry.attempts):
            counts = dataclasses.replace(report)  # restored if the database aborts the batch
            try:
                return self.batch(seq, after, hi, prefetched)
            except Exception as exc:
                conflict = conflict_of(exc)
                if conflict is None:
                    raise
                _restore(report, counts)
                # Read the batch again inside the next transaction (what the application
                # committed meanwhile), and the batch after it too: its place may move.
                prefetched = None
                if self.ahead is not None:
                    self.ahead.cancel()
                    self.ahead = None
                if attempt == retry.attempts - 1:
                    raise ConflictError(
                        f"{self.table.name}: the database aborted a batch {retry.attempts} times "
                        f"on a conflict ({conflict}); the batches before it are committed: "
                        "run the same command again to resume"
                    ) from None
                report.conflicts_retried += 1
                delay = retry.delay(attempt)
                log.warning(
                    "%s: batch aborted by the database (%s); retry %d of %d in %.2f s",
                    self.table.name,
                    conflict,
                    attempt + 1,
                    retry.attempts - 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # -- one batch ----------------------------------------------------------------------------

    def query(self, after: Any, hi: Any) -> sa.Select[Any]:
        """The batch of the range after ``after`` up to ``hi``."""
        return page(sa.select(*self.selected), self.pk, self.batch_size, after=after, upto=hi)

    def read(self, conn: sa.Connection, rows: Sequence[Any]) -> Batch:
        """What the rows need (with their legacy manifest entries, read on ``conn``)."""
        legacy = legacy_entries(conn, self.manifests, rows)
        return changes_in(
            rows, self.targets, self.classify, self.manifests, legacy, dry_run=self.dry_run
        )

    def fetch(self, after: Any, hi: Any) -> _Fetched:
        """Read and classify a batch on a connection of its own (the prefetch thread)."""
        with self.engine.connect() as reader:
            rows = reader.execute(self.query(after, hi)).all()
            return rows, self.read(reader, rows)

    def batch(
        self, seq: int, after: Any, hi: Any, prefetched: _Fetched | None
    ) -> tuple[Sequence[Any], bool]:
        """One batch in one transaction (read unless prefetched, write, checkpoint)."""
        report = self.report
        with self.engine.begin() as conn:
            if self.relaxed_commit:
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            if prefetched is None:
                rows = conn.execute(self.query(after, hi)).all()
                found = self.read(conn, rows)
            else:
                rows, found = prefetched
            if after_read is not None:
                after_read(rows)
            report.rows_scanned += len(rows)
            report.undecryptable += found.undecryptable
            report.tampered += found.tampered
            report.erased += found.erased
            report.kept_in_scope += found.kept
            if self.dry_run:
                for change in found.changes:
                    _count(report, change)
            else:
                self.apply(conn, found)
            done = len(rows) < self.batch_size
            if not self.dry_run:
                position = getattr(rows[-1], self.pk.name) if rows else after
                save_checkpoint(
                    conn, self.checkpoints, self.job, seq, position, done=done, worker=report.worker
                )
        return rows, done

    def apply(self, conn: sa.Connection, found: Batch) -> None:
        """Write a batch's changes (rows locked in key order first) and forget what it migrated."""
        if found.changes and self.lock_rows is not None:
            # Lock the rows to be written first, in key order: two transactions that each lock
            # in key order cannot deadlock on these rows (an application that locks them in
            # another order still can; the batch is then retried).
            conn.execute(self.lock_rows, {"keys": sorted({c.pk for c in found.changes})}).all()
        # Rows that hold ciphertext after this batch leave the legacy manifest, in the same
        # transaction as the batch's values.
        forget = list(found.forget)
        self.write_changes(conn, found, forget)
        by_column: dict[str, list[str]] = {}
        for name, row_id in forget:
            by_column.setdefault(name, []).append(row_id)
        for name, row_ids in by_column.items():
            self.manifests[name].forget(conn, row_ids)

    def write_changes(
        self, conn: sa.Connection, found: Batch, forget: list[tuple[str, str]]
    ) -> None:
        """Compare-and-set the changes; redo those whose rows the application changed meanwhile."""
        report, pk = self.report, self.pk
        pending = found.changes
        legacy_ids = dict(found.legacy_ids)
        for attempt in range(CAS_ATTEMPTS):
            missed = self.write(conn, self.table, pk, self.indexes, pending) if pending else []
            missed_ids = {id(c) for c in missed}
            for change in pending:
                if id(change) not in missed_ids:
                    _count(report, change)
                    row_id = legacy_ids.get((change.column, change.pk))
                    if change.reason == "plaintext" and row_id is not None:
                        forget.append((change.column, row_id))
            if not missed:
                return
            if attempt == 0:
                report.changed_meanwhile += len(missed)
            # Read the changed rows again (this transaction sees the application's commit) and
            # redo only what still needs it.
            again = conn.execute(
                sa.select(*self.selected).where(pk.in_({c.pk for c in missed})).order_by(pk)
            ).all()
            wanted = {(c.pk, c.column) for c in missed}
            legacy = legacy_entries(conn, self.manifests, again)
            redo = changes_in(again, self.targets, self.classify, self.manifests, legacy)
            report.undecryptable += redo.undecryptable
            report.tampered += redo.tampered
            report.erased += redo.erased
            report.kept_in_scope += redo.kept
            forget.extend(redo.forget)
            legacy_ids.update(redo.legacy_ids)
            pending = [c for c in redo.changes if (c.pk, c.column) in wanted]
        report.left_changing += len(pending)


def _refuse_subject_columns(vault: Vault, table: sa.Table, encrypted: list[sa.Column[Any]]) -> None:
    """Refuse to re-key columns of subject-scoped domains (their values need their subject)."""
    for column in encrypted:
        domain = vault.key_domain(column.type.domain)  # type: ignore[attr-defined]
        if domain is not None and domain.dek_scope == "subject":
            raise ConfigurationError(
                f"{table.name}.{column.name} is in the subject-scoped domain {domain.name}: "
                "re-encrypting its values needs each row's subject, which vaultkit rekey does not "
                "read in this release; leave it out (--column), or re-encrypt through the "
                "application (dry runs and verify work)"
            )


def _restore(report: RekeyReport, saved: RekeyReport) -> None:
    """Put back the counts of an aborted transaction's batch (it is redone)."""
    for item in dataclasses.fields(report):
        setattr(report, item.name, getattr(saved, item.name))


def _count(report: RekeyReport, change: Change) -> None:
    """Count a change written (or, in a dry run, found) under its reason."""
    report.values_rewritten += 1
    if change.reason == "plaintext":
        report.plaintext_encrypted += 1
    elif change.reason == "retired":
        report.retired_reencrypted += 1
    elif change.reason == "outdated":
        report.outdated_reencrypted += 1
    elif change.reason == "index":
        report.values_rewritten -= 1  # the value itself was not rewritten
        report.indexes_rebuilt += 1
    elif change.reason == "unchecked":
        report.values_rewritten -= 1  # a dry run cannot tell without decrypting
        report.unchecked += 1
    else:
        report.moved += 1
