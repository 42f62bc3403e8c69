"""pandas: write a DataFrame into a table with encrypted columns, keeping its blind indexes.

``DataFrame.to_sql`` builds a table of its own from the frame's columns and inserts into that.
Given the model's ``Encrypted`` types as ``dtype=``, it encrypts, but its table has no blind-index
column, so the index stays NULL and lookups silently find nothing; given no types, it writes the
plaintext itself into the binary columns (strict reads then raise ``DecryptionError``).
:func:`to_sql` inserts the frame's rows through the model's own table instead, so the statement
hook of :mod:`vaultkit.sqla` encrypts every value, binds row-bound values to their rows, encrypts
subject-scoped values under each row's member key (the frame must carry the subject column; a row
whose subject is missing raises :class:`~vaultkit.errors.ConfigurationError`) and fills every blind
index, as for any Core insert::

    import vaultkit.sqla.pandas

    vaultkit.sqla.pandas.to_sql(frame, Member, engine, chunksize=10_000)

Reading back: ``pandas.read_sql(sa.select(Member.__table__), engine)`` decrypts through the
column types (a reader without the grant gets ``SealedValue`` cells). Row-bound columns come back
as :class:`~vaultkit.sqla.EncryptedCell` objects in a Core select; decrypt them with the row key
selected alongside (``cell.decrypt(row=row_id)``), or load the entities through the ORM.

pandas itself is not imported here: the frame's own ``to_sql`` method does the batching.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from vaultkit.errors import ConfigurationError
from vaultkit.sqla.types import BlindIndexType, Encrypted

__all__ = ["to_sql"]


def _table_of(target: Any) -> sa.Table:
    table = getattr(target, "__table__", target)
    if not isinstance(table, sa.Table):
        raise TypeError(f"to_sql takes a mapped class or a Table, not {type(target).__name__}")
    return table


def _integer_columns(table: sa.Table) -> frozenset[str]:
    """Encrypted integer columns: pandas holds integers with gaps as floats (30.0 and NaN)."""
    out = set()
    for column in table.columns:
        if isinstance(column.type, Encrypted) and column.type.python_type is int:
            out.add(column.key)
    return frozenset(out)


def _plain(value: Any, integer: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None  # pandas' missing value in a float column
        if integer and value.is_integer():
            return int(value)
    return value


def to_sql(
    frame: Any,
    target: Any,
    con: sa.Engine | sa.Connection,
    *,
    chunksize: int | None = None,
) -> int:
    """Append the rows of ``frame`` to the model's table, encrypted and with blind indexes filled.

    Args:
        frame: a ``pandas.DataFrame`` whose columns are columns of the table (by column key);
            its index is not written.
        target: the mapped class (``Member``) or its ``Table``.
        con: an engine or connection; with an engine, pandas writes in one transaction.
        chunksize: rows per ``INSERT`` executemany (default: all at once).

    Returns:
        the number of rows written.

    Raises:
        ConfigurationError: the table does not exist (it is never created from the frame: its
            column types would be the frame's, not the model's); the frame names a column the
            table lacks, or a blind-index column (derived from its source, never given).

    .. versionadded:: 0.1.0
    """
    table = _table_of(target)
    columns = [str(c) for c in frame.columns]
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise ConfigurationError(
            f"{table.name} has no column {', '.join(sorted(unknown))} (named in the frame)"
        )
    derived = [c for c in columns if isinstance(table.columns[c].type, BlindIndexType)]
    if derived:
        raise ConfigurationError(
            f"{table.name}.{', '.join(derived)}: blind indexes are computed from their source "
            "columns; leave them out of the frame"
        )
    if not sa.inspect(con).has_table(table.name, schema=table.schema):
        raise ConfigurationError(
            f"table {table.name} does not exist: create it from the model first (create_all or "
            "a migration); to_sql never creates it from the frame's column types"
        )
    integers = _integer_columns(table)
    statement = table.insert()

    def insert(_pd_table: Any, conn: sa.Connection, keys: list[str], rows: Iterable[Any]) -> int:
        flags = [key in integers for key in keys]
        params = [
            {key: _plain(value, flag) for key, value, flag in zip(keys, row, flags, strict=True)}
            for row in rows
        ]
        if not params:
            return 0
        # Through the model's own table: the statement hook encrypts, binds rows, fills indexes.
        conn.execute(statement, params)
        return len(params)

    written = frame.to_sql(
        table.name,
        con,
        schema=table.schema,
        if_exists="append",
        index=False,
        chunksize=chunksize,
        method=insert,
    )
    return int(written or 0)
