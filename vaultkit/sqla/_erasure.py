"""The database side of an erasure: null a subject's blind-index cells, count their rows.

Destroying a subject's keys makes its values unreadable; its blind-index digests stay readable and
keep telling equal values apart (the same e-mail address in two rows, a guessed value confirmed by
whoever holds the index key). :func:`erasure_cells` builds the callback that
:meth:`vaultkit.Vault.erase_subject` runs after the keys are gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from vaultkit.core import wire
from vaultkit.errors import ConfigurationError
from vaultkit.sqla._hooks import _subject_column
from vaultkit.sqla._tokens import erase_terms
from vaultkit.sqla.keyset import single_primary_key, walk
from vaultkit.sqla.types import BlindIndexType, Encrypted
from vaultkit.store import DekState, SupportsScopedKeys

__all__ = ["erasure_cells", "misplaced_cells"]


@dataclass(frozen=True, slots=True)
class _TableErasure:
    table: sa.Table
    #: Subject column -> the blind-index columns nulled in the rows where it holds the subject.
    indexes: dict[sa.Column[Any], tuple[sa.Column[Any], ...]]
    #: Subject-scoped column -> its own blind indexes, also nulled wherever the column holds a
    #: value under one of the subject's keys (whatever its subject column says).
    sources: dict[sa.Column[Any], tuple[sa.Column[Any], ...]]

    @property
    def name(self) -> str:
        table = self.table
        return table.name if table.schema is None else f"{table.schema}.{table.name}"


def _tables(target: sa.MetaData | sa.Table | Iterable[sa.Table]) -> list[sa.Table]:
    if isinstance(target, sa.MetaData):
        return list(target.sorted_tables)
    if isinstance(target, sa.Table):
        return [target]
    tables = [getattr(t, "__table__", t) for t in target]
    for table in tables:
        if not isinstance(table, sa.Table):
            raise TypeError(
                f"erasure_cells takes tables or mapped classes, not {type(table).__name__}"
            )
    return tables


def _plan(table: sa.Table) -> _TableErasure | None:
    subjects: dict[sa.Column[Any], list[sa.Column[Any]]] = {}
    for column in table.columns:
        column_type = column.type
        if isinstance(column_type, Encrypted) and column_type.subject is not None:
            if column_type.subject_scoped():
                subjects.setdefault(_subject_column(table, column), []).append(column)
    if not subjects:
        return None
    indexes: dict[sa.Column[Any], list[sa.Column[Any]]] = {s: [] for s in subjects}
    sources: dict[sa.Column[Any], list[sa.Column[Any]]] = {
        c: [] for columns in subjects.values() for c in columns
    }
    for column in table.columns:
        if not isinstance(column.type, BlindIndexType):
            continue
        found = [table.columns.get(name) for name in column.type.sources]
        owners = [s for s, columns in subjects.items() if any(f in columns for f in found)]
        # The index of a value under a subject's key goes with that subject; the index of any
        # other column of the row (an e-mail address of a process-scoped domain) goes with the
        # row's subject, in a table with one subject column, and with every subject otherwise.
        # Every kind of index (compound, prefix, bucket) goes like a blind index of its sources.
        for subject in owners or list(subjects):
            indexes[subject].append(column)
        for source in found:
            if source in sources:
                sources[source].append(column)
    return _TableErasure(
        table,
        {s: tuple(columns) for s, columns in indexes.items()},
        {c: tuple(columns) for c, columns in sources.items()},
    )


def erasure_cells(
    tables: sa.MetaData | sa.Table | Iterable[Any],
    bind: sa.Engine | sa.Connection | Session,
    subject: str | int | Any,
) -> Callable[[], dict[str, int]]:
    """The ``cells=`` callback of :meth:`vaultkit.Vault.erase_subject` for these tables.

    In every table with an ``Encrypted(..., subject=...)`` column of a subject-scoped domain, the
    callback runs ``UPDATE <table> SET <each blind index> = NULL WHERE <subject column> =
    :subject`` (and deletes those rows' terms from the table's token indexes), and nulls the blind index of each subject-scoped column wherever that column
    holds a value under one of the subject's keys (matched by the DEK id in the value's header,
    whatever the subject column says: a database writer who changed a row's subject column or
    copied a ciphertext into another row does not keep the subject's index cells alive). It
    returns, per table (``schema.table`` for a table with a schema), the number of the subject's
    rows: those whose subject-scoped cells became unreadable, also in a table without a blind
    index. It runs in one transaction (its own with an engine; the connection's with a
    connection or session, committed by the caller) and is idempotent.

    Cost: the subject-column match uses that column's index (declare one); the header match
    reads every row of the table once (``substr`` of the binary column), which is the price of
    not trusting the subject column.

    What the erasure keeps, the indexes keep: the callback runs after the keys are destroyed,
    and a subject-scoped domain where the subject still has a live key (retained by a
    ``no_less_than`` retention whose minimum is not over, or left out with ``domains=``) keeps
    its values' indexes. The index of a subject-scoped column follows that column's domain;
    any other index of the row is nulled when one of the row's subject-scoped columns was
    erased. A table whose subject-scoped columns are all retained keeps every index (0 rows).

    The tables are checked when the callback is built, so a configuration error is raised before
    the erasure begins.

    Args:
        tables: a ``MetaData`` (all its tables), a ``Table``, or tables and mapped classes.
        bind: the engine, connection or session of the application's database.
        subject: the subject (member id) as stored in the subject columns.

    Returns:
        a function of no arguments giving ``{table name: rows}``.

    Raises:
        ConfigurationError: a subject column names no column, or the vault is not configured.

    .. versionadded:: 0.3.0
    """
    if subject is None:
        raise ConfigurationError("erasure_cells needs the subject whose cells to null")
    plans = [plan for plan in map(_plan, _tables(tables)) if plan is not None]

    def cells() -> dict[str, int]:
        if isinstance(bind, Session):
            return _null_cells(bind.connection(), plans, subject)
        if isinstance(bind, sa.Connection):
            return _null_cells(bind, plans, subject)
        with bind.begin() as connection:
            return _null_cells(connection, plans, subject)

    return cells


def _subject_keys(
    column: sa.Column[Any], subject: Any, found: dict[str, tuple[list[bytes], bool]]
) -> tuple[list[bytes], bool]:
    """The ids of every key the subject ever had in ``column``'s domain (any state), and
    whether one of them is still live (the erasure retained that domain, or left it out)."""
    column_type = column.type
    if not isinstance(column_type, Encrypted):
        return [], False
    domain = column_type.domain
    if domain not in found:
        vault = column_type._slot.get()
        store = vault.store
        if not isinstance(store, SupportsScopedKeys):
            raise ConfigurationError(f"the key store of domain {domain!r} has no subject keys")
        ref = vault.subject_ref(domain, subject)
        keys = [key for key in store.subject_keys(domain, ref) if key.purpose == "data"]
        live = any(key.state is not DekState.DESTROYED for key in keys)
        found[domain] = ([key.dek_id for key in keys], live)
    return found[domain]


def _under(column: sa.Column[Any], deks: list[bytes]) -> sa.ColumnElement[bool]:
    """``column`` holds a value under one of ``deks``: the DEK id in its header, read in SQL."""
    raw = sa.type_coerce(column, sa.LargeBinary)
    header_dek = sa.func.substr(raw, wire.DEK_ID_SQL_START, wire.DEK_ID_SIZE)
    return header_dek.in_([sa.literal(dek, sa.LargeBinary) for dek in deks])


def _null_cells(
    connection: sa.Connection, plans: list[_TableErasure], subject: Any
) -> dict[str, int]:
    rows: dict[str, int] = {}
    found: dict[str, tuple[list[bytes], bool]] = {}
    for plan in plans:
        table = plan.table
        # The callback runs after the keys were destroyed: a domain where the subject still
        # has a live key was retained by the erasure (a no_less_than minimum not yet over) or
        # left out of it (domains=); its values still read, so their indexes stay.
        keys = {column: _subject_keys(column, subject, found) for column in plan.sources}
        erased = {column for column, (_deks, live) in keys.items() if not live}
        # A row is the subject's when its subject column says so, or when one of its values is
        # under the subject's keys: a database writer who changed the subject column, or copied
        # a ciphertext into another row, does not keep the subject's index cells alive.
        under = {
            column: _under(column, deks)
            for column, (deks, _live) in keys.items()
            if column in erased and deks
        }
        # A subject column's row-level indexes go when one of its subject-scoped columns was
        # erased; a table whose subject-scoped columns were all retained keeps every index.
        owners = [
            subject_column
            for subject_column in plan.indexes
            if any(_subject_column(table, column) is subject_column for column in erased)
        ]
        if not owners and not under:
            rows[plan.name] = 0
            continue
        where = sa.or_(*(column == subject for column in owners), *under.values())
        count = connection.execute(sa.select(sa.func.count()).select_from(table).where(where))
        rows[plan.name] = int(count.scalar_one())
        retained_own = {
            index
            for column in plan.sources
            if column not in erased
            for index in plan.sources[column]
        }
        for column in owners:
            indexes = [i for i in plan.indexes[column] if i not in retained_own]
            if indexes:
                connection.execute(
                    sa.update(table)
                    .where(column == subject)
                    .values({index.key: None for index in indexes})
                )
        for column, condition in under.items():
            own = plan.sources[column]
            if own:
                connection.execute(
                    sa.update(table).where(condition).values({index.key: None for index in own})
                )
        # Token indexes (side tables, vaultkit.sqla._tokens) lose the terms of the same rows,
        # except those of a subject-scoped source the erasure retained.
        erase_terms(connection, table, where, keep={c.key for c in plan.sources if c not in erased})
    return rows


def misplaced_cells(
    tables: sa.MetaData | sa.Table | Iterable[Any],
    bind: sa.Engine | sa.Connection,
    *,
    batch: int = 1000,
) -> dict[str, list[Any]]:
    """Find subject-scoped values encrypted under another subject's key than their row's.

    A value of a column without ``row_key=`` that a database writer copied into another member's
    row still decrypts there (under the first member's key; see docs/sqlalchemy.md). This check
    flags such values, and rows whose subject column was changed behind vaultkit's back: for each
    subject-scoped column it compares the DEK named in each value's header (read in SQL) with the
    subject reference the key store holds for that DEK, and the reference of the row's subject.
    Nothing is decrypted; key-store rows are read once per DEK. Values not yet moved from a
    ``previous=`` domain (under a process-wide key) are reported too: they are under no
    subject's key yet.

    Args:
        tables: a ``MetaData`` (all its tables), a ``Table``, or tables and mapped classes.
        bind: the engine or connection of the application's database.
        batch: rows read per query.

    Returns:
        per table (``schema.table`` for a table with a schema), the primary keys of the rows
        holding at least one misplaced value; tables with none are left out.

    .. versionadded:: 0.3.0
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError("batch= is a number of rows, at least 1")
    found: dict[str, list[Any]] = {}
    plans = [plan for plan in map(_plan, _tables(tables)) if plan is not None]
    refs: dict[tuple[str, Any], str] = {}
    owners: dict[bytes, str | None] = {}
    for plan in plans:
        table = plan.table
        pk = single_primary_key(table, user="misplaced_cells")
        columns = [
            (column, subject)
            for subject in plan.indexes
            for column in plan.sources
            if isinstance(column.type, Encrypted) and column.type.subject == subject.key
        ]
        selected = [pk, *{subject for _, subject in columns}]
        headers = [
            sa.func.substr(
                sa.type_coerce(c, sa.LargeBinary), wire.DEK_ID_SQL_START, wire.DEK_ID_SIZE
            )
            for c, _ in columns
        ]
        query = sa.select(*selected, *headers)
        subjects_at = {subject: i for i, subject in enumerate(selected)}
        misplaced: list[Any] = []
        with _reading(bind) as connection:
            for rows in walk(connection, query, pk, batch):
                for row in rows:
                    for i, (column, subject) in enumerate(columns):
                        dek = row[len(selected) + i]
                        if dek is None:
                            continue
                        vault = column.type._slot.get()  # type: ignore[attr-defined]
                        domain = column.type.domain  # type: ignore[attr-defined]
                        dek = bytes(dek)
                        if dek not in owners:
                            record = vault.store.get(dek)
                            owners[dek] = record.subject if record is not None else None
                        value = row[subjects_at[subject]]
                        key = (domain, value)
                        if value is not None and key not in refs:
                            refs[key] = vault.subject_ref(domain, value)
                        if value is None or owners[dek] != refs[key]:
                            misplaced.append(row[0])
                            break
        if misplaced:
            found[plan.name] = misplaced
    return found


@contextlib.contextmanager
def _reading(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    """A connection to read with: the caller's, or a new one of the engine, closed after."""
    if isinstance(bind, sa.Connection):
        yield bind
        return
    with bind.connect() as connection:
        yield connection
