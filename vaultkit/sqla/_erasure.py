"""The database side of an erasure: null a subject's blind-index cells, count their rows.

Destroying a subject's keys makes its values unreadable; its blind-index digests stay readable and
keep telling equal values apart (the same e-mail address in two rows, a guessed value confirmed by
whoever holds the index key). :func:`erasure_cells` builds the callback that
:meth:`vaultkit.Vault.erase_subject` runs after the keys are gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from vaultkit.errors import ConfigurationError
from vaultkit.sqla._hooks import _subject_column
from vaultkit.sqla.types import BlindIndexType, Encrypted

__all__ = ["erasure_cells"]


@dataclass(frozen=True, slots=True)
class _TableErasure:
    table: sa.Table
    #: Subject column -> the blind-index columns nulled in the rows where it holds the subject.
    indexes: dict[sa.Column[Any], tuple[sa.Column[Any], ...]]

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
    for column in table.columns:
        if not isinstance(column.type, BlindIndexType):
            continue
        source = table.columns.get(column.type.source)
        owners = [s for s, columns in subjects.items() if source in columns]
        # The index of a value under a subject's key goes with that subject; the index of any
        # other column of the row (an e-mail address of a process-scoped domain) goes with the
        # row's subject, in a table with one subject column, and with every subject otherwise.
        for subject in owners or list(subjects):
            indexes[subject].append(column)
    return _TableErasure(table, {s: tuple(columns) for s, columns in indexes.items()})


def erasure_cells(
    tables: sa.MetaData | sa.Table | Iterable[Any],
    bind: sa.Engine | sa.Connection,
    subject: str | int | Any,
) -> Callable[[], dict[str, int]]:
    """The ``cells=`` callback of :meth:`vaultkit.Vault.erase_subject` for these tables.

    In every table with an ``Encrypted(..., subject=...)`` column of a subject-scoped domain, the
    callback runs ``UPDATE <table> SET <each blind index> = NULL WHERE <subject column> =
    :subject`` and returns, per table (``schema.table`` for a table with a schema), the number of
    the subject's rows: those whose subject-scoped cells became unreadable, also in a table
    without a blind index. It runs in one transaction (its own with an engine; the connection's
    with a connection, committed by the caller) and is idempotent.

    The tables are checked when the callback is built, so a configuration error is raised before
    the erasure begins.

    Args:
        tables: a ``MetaData`` (all its tables), a ``Table``, or tables and mapped classes.
        bind: the engine or connection of the application's database.
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
        if isinstance(bind, sa.Connection):
            return _null_cells(bind, plans, subject)
        with bind.begin() as connection:
            return _null_cells(connection, plans, subject)

    return cells


def _null_cells(
    connection: sa.Connection, plans: list[_TableErasure], subject: Any
) -> dict[str, int]:
    rows: dict[str, int] = {}
    for plan in plans:
        table = plan.table
        where = sa.or_(*(column == subject for column in plan.indexes))
        count = connection.execute(sa.select(sa.func.count()).select_from(table).where(where))
        rows[plan.name] = int(count.scalar_one())
        for column, indexes in plan.indexes.items():
            if indexes:
                connection.execute(
                    sa.update(table)
                    .where(column == subject)
                    .values({index.key: None for index in indexes})
                )
    return rows
