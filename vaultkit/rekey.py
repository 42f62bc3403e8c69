"""The re-keying engine: re-encrypt values in place, in resumable batches, while the application runs.

For one table and its encrypted columns (``vaultkit.sqla.Encrypted``), it rewrites every value that
is legacy plaintext (a column in migration mode) or encrypted under a retired DEK, under the
domain's current DEK, and fills the blind indexes of those columns in the same UPDATE.

* **Batches by primary key**, in key order (keyset pagination): ``WHERE pk > :last ORDER BY pk``.
* **Compare-and-set**: each UPDATE carries the old bytes in its WHERE clause, so a row that the
  application changed after the batch was read is never overwritten with stale data; it is
  counted and left for the next pass.
* **Checkpoints** in ``vaultkit_rekey_checkpoints``, committed in the same transaction as the
  batch's UPDATEs: after a crash at any point, a new run resumes after the last committed batch,
  and redoing a batch is harmless (values already current are skipped).
* ``dry_run`` counts what would change without writing; :func:`verify` decrypts everything and
  counts values by DEK.

No printing, no argv: the command line and migration scripts call :func:`rekey_table`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa

from vaultkit._access import Principal, SealedValue
from vaultkit._vault import Vault
from vaultkit.core import wire
from vaultkit.errors import ConfigurationError, DecryptionError
from vaultkit.sqla.types import BlindIndexType, Encrypted, RowBound
from vaultkit.store import DekState

__all__ = ["RekeyReport", "VerifyReport", "rekey_table", "verify_table"]

CHECKPOINTS: Final = "vaultkit_rekey_checkpoints"


@dataclass
class RekeyReport:
    """What a run did, in counts; never a value."""

    job: str
    rows_scanned: int = 0
    values_rewritten: int = 0
    plaintext_encrypted: int = 0
    retired_reencrypted: int = 0
    changed_meanwhile: int = 0
    batches: int = 0
    resumed_after: Any = None
    finished: bool = False
    dry_run: bool = False


@dataclass
class VerifyReport:
    """Values by DEK id, plus those that do not decrypt or are still plaintext."""

    values: int = 0
    by_dek: Counter[str] = field(default_factory=Counter)
    plaintext: int = 0
    undecryptable: int = 0


def _checkpoints(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        CHECKPOINTS,
        metadata,
        sa.Column("job", sa.String(255), primary_key=True),
        sa.Column("last_key", sa.Text, nullable=True),
        sa.Column("done", sa.Boolean, nullable=False, default=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _plan(
    table: sa.Table, columns: Sequence[str] | None
) -> tuple[sa.Column[Any], list[sa.Column[Any]]]:
    primary = list(table.primary_key.columns)
    if len(primary) != 1:
        raise ConfigurationError(
            f"{table.name}: the re-keying engine needs a single-column primary key"
        )
    encrypted = [c for c in table.columns if isinstance(c.type, Encrypted)]
    if columns is not None:
        wanted = set(columns)
        missing = wanted - {c.name for c in encrypted}
        if missing:
            raise ConfigurationError(
                f"{table.name}: not encrypted columns: {', '.join(sorted(missing))}"
            )
        encrypted = [c for c in encrypted if c.name in wanted]
    if not encrypted:
        raise ConfigurationError(f"{table.name} has no encrypted column to re-key")
    return primary[0], encrypted


def _selection(
    pk: sa.Column[Any], encrypted: list[sa.Column[Any]]
) -> tuple[dict[str, sa.Column[Any]], list[Any]]:
    """Row-key columns of the row-bound columns, and what to select: key, row keys, raw values."""
    table = pk.table
    row_keys = {c.name: table.columns[c.type.row_key] for c in encrypted if c.type.row_key}  # type: ignore[attr-defined]
    extra = [k for k in row_keys.values() if k is not pk]
    raw = [sa.type_coerce(c, sa.LargeBinary).label(c.name) for c in encrypted]
    return row_keys, [pk, *extra, *raw]


def _key_text(value: Any) -> str:
    return json.dumps(
        value if isinstance(value, int | float | str) or value is None else str(value)
    )


def rekey_table(
    engine: sa.Engine,
    table: sa.Table,
    *,
    vault: Vault,
    columns: Sequence[str] | None = None,
    job: str | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    principal: Principal | None = None,
    max_batches: int | None = None,
    progress: Callable[[RekeyReport], None] | None = None,
    _after_read: Callable[[Sequence[Any]], None] | None = None,
) -> RekeyReport:
    """Re-encrypt the legacy-plaintext and retired-DEK values of ``table``'s encrypted columns.

    Args:
        engine: the database of ``table``.
        table: an SQLAlchemy table (``Model.__table__``) with ``Encrypted`` columns.
        vault: the vault those columns use (configured with ``vaultkit.sqla.configure``).
        columns: names of the encrypted columns to re-key (default: all).
        job: checkpoint name (default ``<table>:rekey``); a run resumes its job's checkpoint.
        batch_size: rows per batch and transaction.
        dry_run: count what would change; write nothing, keep no checkpoint.
        principal: who the engine acts as (default: ``vaultkit-rekey`` with grants for every
            domain of the vault); its reads and writes appear in the audit log under that name.
        max_batches: stop after this many batches (the checkpoint keeps the place).

    Returns:
        A :class:`RekeyReport`.
    """
    if batch_size < 1:
        raise ConfigurationError("batch_size must be at least 1")
    pk, encrypted = _plan(table, columns)
    job = job or f"{table.name}:rekey"
    report = RekeyReport(job=job, dry_run=dry_run)
    indexes = {
        c.type.source: c for c in table.columns if isinstance(c.type, BlindIndexType)
    }  # source column name -> index column
    row_keys, selected = _selection(pk, encrypted)
    meta = sa.MetaData()
    checkpoints = _checkpoints(meta)
    if not dry_run:
        meta.create_all(engine, checkfirst=True)
    last: Any = None
    with engine.connect() as conn:
        if not dry_run:
            saved = conn.execute(sa.select(checkpoints).where(checkpoints.c.job == job)).first()
            if saved is not None and saved.last_key is not None:
                last = json.loads(saved.last_key)
                report.resumed_after = last
    states: dict[bytes, DekState | None] = {}
    actor = principal or Principal("vaultkit-rekey", grants=vault.domains)

    def needs(value: bytes | None) -> str | None:
        if value is None:
            return None
        if value[:2] != wire.MAGIC:
            return "plaintext"
        dek_id = value[4:20]
        if dek_id not in states:
            record = vault.store.get(dek_id)
            states[dek_id] = record.state if record is not None else None
        return "retired" if states[dek_id] is DekState.RETIRED else None

    with vault.acting_as(actor, purpose=f"rekey {job}"):
        while max_batches is None or report.batches < max_batches:
            query = sa.select(*selected).order_by(pk).limit(batch_size)
            if last is not None:
                query = query.where(pk > last)
            with engine.begin() as conn:
                rows = conn.execute(query).all()
                if _after_read is not None:
                    _after_read(rows)
                if not rows:
                    report.finished = True
                    if not dry_run:
                        _save(conn, checkpoints, job, last, done=True)
                    break
                pending: dict[str, list[tuple[dict[str, Any], str]]] = {}
                for row in rows:
                    report.rows_scanned += 1
                    _rekey_row(table, row, encrypted, row_keys, indexes, needs, pending)
                if dry_run:
                    for items in pending.values():
                        for _, reason in items:
                            _count(report, reason)
                else:
                    _write(conn, table, pk, indexes, pending, report)
                last = getattr(rows[-1], pk.name)
                if not dry_run:
                    _save(conn, checkpoints, job, last, done=False)
            report.batches += 1
            if progress is not None:
                progress(report)
    return report


def _rekey_row(
    table: sa.Table,
    row: Any,
    encrypted: list[sa.Column[Any]],
    row_keys: dict[str, sa.Column[Any]],
    indexes: dict[str, sa.Column[Any]],
    needs: Callable[[bytes | None], str | None],
    pending: dict[str, list[tuple[dict[str, Any], str]]],
) -> None:
    """Compute the new values of one row; queue them per column as UPDATE parameters."""
    mapping = row._mapping
    for column in encrypted:
        old = mapping[column.name]
        if old is not None and not isinstance(old, bytes):
            old = (
                bytes(old) if isinstance(old, bytearray | memoryview) else str(old).encode("utf-8")
            )
        reason = needs(old)
        if reason is None:
            continue
        column_type: Encrypted = column.type  # type: ignore[assignment]
        row_key = mapping[row_keys[column.name].name] if column.name in row_keys else None
        if reason == "plaintext" and not column_type.migrating:
            raise DecryptionError(
                f"{table.name}.{column.name} holds plaintext but is not in migration mode"
            )
        plain = column_type.decrypt_value(mapping[column.name], row=row_key)
        if isinstance(plain, SealedValue):
            raise ConfigurationError(
                f"the re-keying principal has no grant for {column_type.domain}"
            )
        params: dict[str, Any] = {
            "_pk": mapping[table.primary_key.columns[0].name],
            "_old": old,
            "_new": column_type.encrypt_value(
                RowBound(plain, row_key) if row_key is not None else plain
            ),
        }
        index = indexes.get(column.name)
        if index is not None:
            index_type: BlindIndexType = index.type  # type: ignore[assignment]
            params["_ix"] = index_type.digest(plain)
        pending.setdefault(column.name, []).append((params, reason))


def _write(
    conn: sa.Connection,
    table: sa.Table,
    pk: sa.Column[Any],
    indexes: dict[str, sa.Column[Any]],
    pending: dict[str, list[tuple[dict[str, Any], str]]],
    report: RekeyReport,
) -> None:
    """One executemany of compare-and-set UPDATEs per column; exact counts either way."""
    for name, items in pending.items():
        column = table.columns[name]
        values: dict[Any, Any] = {column: sa.bindparam("_new", type_=sa.LargeBinary)}
        index = indexes.get(name)
        if index is not None:
            values[index] = sa.bindparam("_ix", type_=sa.LargeBinary)
        statement = (
            sa.update(table)
            .where(
                pk == sa.bindparam("_pk"),
                sa.type_coerce(column, sa.LargeBinary)
                == sa.bindparam("_old", type_=sa.LargeBinary),
            )
            .values(values)
            .execution_options(vaultkit_raw=True)
        )
        result = conn.execute(statement, [params for params, _ in items])
        if conn.dialect.supports_sane_multi_rowcount and result.rowcount == len(items):
            for _, reason in items:
                _count(report, reason)
            continue
        # Some rows changed meanwhile (or the driver cannot tell): check each row to count
        # exactly; a row the application changed does not hold our new value.
        for params, reason in items:
            current = conn.execute(
                sa.select(sa.type_coerce(column, sa.LargeBinary)).where(pk == params["_pk"])
            ).scalar()
            if current is not None and bytes(current) == params["_new"]:
                _count(report, reason)
            else:
                report.changed_meanwhile += 1


def _count(report: RekeyReport, reason: str) -> None:
    report.values_rewritten += 1
    if reason == "plaintext":
        report.plaintext_encrypted += 1
    else:
        report.retired_reencrypted += 1


def _save(conn: sa.Connection, checkpoints: sa.Table, job: str, last: Any, *, done: bool) -> None:
    values = {
        "last_key": None if last is None else _key_text(last),
        "done": done,
        "updated_at": dt.datetime.now(dt.UTC),
    }
    updated = conn.execute(
        checkpoints.update().where(checkpoints.c.job == job).values(**values)
    ).rowcount
    if updated == 0:
        conn.execute(checkpoints.insert().values(job=job, **values))


def verify_table(
    engine: sa.Engine, table: sa.Table, *, vault: Vault, principal: Principal | None = None
) -> VerifyReport:
    """Decrypt every value of ``table``'s encrypted columns; count by DEK, plaintext, failures."""
    pk, encrypted = _plan(table, None)
    report = VerifyReport()
    row_keys, selected = _selection(pk, encrypted)
    actor = principal or Principal("vaultkit-verify", grants=vault.domains)
    with vault.acting_as(actor, purpose=f"verify {table.name}"), engine.connect() as conn:
        for row in conn.execute(sa.select(*selected).order_by(pk)):
            mapping = row._mapping
            for column in encrypted:
                value = mapping[column.name]
                if value is None:
                    continue
                report.values += 1
                value = bytes(value) if not isinstance(value, bytes) else value
                if value[:2] != wire.MAGIC:
                    report.plaintext += 1
                    continue
                row_key = mapping[row_keys[column.name].name] if column.name in row_keys else None
                try:
                    column.type.decrypt_value(value, row=row_key)  # type: ignore[attr-defined]
                except DecryptionError:
                    report.undecryptable += 1
                    continue
                report.by_dek[value[4:20].hex()] += 1
    return report
