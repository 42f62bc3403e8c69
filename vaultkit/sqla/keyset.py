"""Keyset walks over a table in primary-key order: the one batch loop of vaultkit's table rewrites.

The re-keying engine (:mod:`vaultkit.rekey`) and the Alembic operations
(:mod:`vaultkit.sqla.alembic`) both read a table in pages of ``key > last ORDER BY key LIMIT n``
(keyset pagination: each page is one index range scan, however far into the table; ``OFFSET``
would rescan every row before it), and both need a single-column key to do that.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from vaultkit.errors import ConfigurationError

__all__ = ["boundaries", "page", "single_primary_key", "walk"]


def single_primary_key(table: sa.Table, *, user: str) -> sa.Column[Any]:
    """The table's primary-key column; ``user`` names who needs it in the error.

    Raises:
        ConfigurationError: the table has no primary key, or a composite one.
    """
    primary = list(table.primary_key.columns)
    if len(primary) != 1:
        raise ConfigurationError(f"{table.name}: {user} needs a single-column primary key")
    return primary[0]


def page(
    query: sa.Select[Any], key: sa.Column[Any], size: int, *, after: Any = None, upto: Any = None
) -> sa.Select[Any]:
    """The page of ``query`` after ``after`` (exclusive) up to ``upto`` (inclusive), in key order.

    ``None`` for either bound means the start or the end of the table.
    """
    query = query.order_by(key).limit(size)
    if after is not None:
        query = query.where(key > after)
    if upto is not None:
        query = query.where(key <= upto)
    return query


def walk(
    conn: sa.Connection,
    query: sa.Select[Any],
    key: sa.Column[Any],
    size: int,
    *,
    after: Any = None,
    upto: Any = None,
) -> Iterator[Sequence[Any]]:
    """Yield the rows of ``query`` (which selects ``key`` first) in pages of at most ``size``.

    Each page is read when the previous one has been handled, on ``conn``: a caller may write
    the rows it was given before asking for the next page.
    """
    while True:
        rows = conn.execute(page(query, key, size, after=after, upto=upto)).all()
        if rows:
            yield rows
        if len(rows) < size:
            return
        after = rows[-1][0]


def boundaries(conn: sa.Connection, key: sa.Column[Any], every: int) -> Iterator[Any]:
    """Yield every ``every``-th key in order: the last key of each full run of ``every`` rows.

    The keys cut the table into ranges of ``every`` rows (the last one shorter); one indexed
    ``OFFSET`` query per range.
    """
    last: Any = None
    while True:
        query = sa.select(key).order_by(key).offset(every - 1).limit(1)
        if last is not None:
            query = query.where(key > last)
        bound = conn.execute(query).scalar()
        if bound is None:
            return
        yield bound
        last = bound
