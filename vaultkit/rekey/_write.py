"""The SQL writers of the re-keying engine: compare-and-set UPDATEs, and conflicts to retry."""

from __future__ import annotations

import re
from typing import Any, Final

import sqlalchemy as sa

from vaultkit.rekey._classify import Change
from vaultkit.rekey._table import as_raw

__all__ = ["CAS_ATTEMPTS", "conflict_of", "lock_statement", "write_each", "write_postgresql"]

#: Attempts at a value the application keeps changing, within one batch, before it is left
#: for the next run (and counted in ``RekeyReport.left_changing``).
CAS_ATTEMPTS: Final = 3
#: Transactions the server aborts on a conflict with another transaction: retried.
_CONFLICT_SQLSTATES: Final = {
    "40P01": "deadlock detected",
    "40001": "serialization failure",
    "55P03": "lock not available (lock_timeout)",
}
_CONFLICT_MYSQL: Final = {1213: "deadlock", 1205: "lock wait timeout"}


def lock_statement(dialect: sa.Dialect, pk: sa.Column[Any]) -> sa.Select[Any] | None:
    """``SELECT key ... WHERE key IN (:keys) ORDER BY key FOR UPDATE``; None on SQLite, which
    locks the whole database for a writer instead of rows."""
    if dialect.name == "sqlite":
        return None
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        keys: Any = pk == sa.any_(sa.bindparam("keys", type_=ARRAY(pk.type)))
    else:
        keys = pk.in_(sa.bindparam("keys", expanding=True))
    return sa.select(pk).where(keys).order_by(pk).with_for_update()


def write_each(
    conn: sa.Connection,
    table: sa.Table,
    pk: sa.Column[Any],
    indexes: dict[str, list[sa.Column[Any]]],
    changes: list[Change],
) -> list[Change]:
    """Portable path: one executemany of compare-and-set UPDATEs per column. Returns the misses."""
    missed: list[Change] = []
    by_column: dict[str, list[Change]] = {}
    for change in changes:
        by_column.setdefault(change.column, []).append(change)
    for name, items in by_column.items():
        column = table.columns[name]
        values: dict[Any, Any] = {column: sa.bindparam("_new", type_=sa.LargeBinary)}
        for j, index in enumerate(indexes.get(name, ())):
            values[index] = sa.bindparam(f"_ix{j}", type_=sa.LargeBinary)
        statement = (
            sa.update(table)
            .where(
                pk == sa.bindparam("_pk", type_=pk.type),
                sa.type_coerce(column, sa.LargeBinary)
                == sa.bindparam("_old", type_=sa.LargeBinary),
            )
            .values(values)
            .execution_options(vaultkit_raw=True)
        )
        count = len(indexes.get(name, ()))
        params = [
            {
                "_pk": c.pk,
                "_old": c.old,
                "_new": c.new,
                **{f"_ix{j}": c.digests[j] if j < len(c.digests) else None for j in range(count)},
            }
            for c in items
        ]
        result = conn.execute(statement, params)
        if conn.dialect.supports_sane_multi_rowcount and result.rowcount == len(items):
            continue
        # Some rows changed meanwhile (or the driver cannot tell): look at each row; a row the
        # application changed does not hold our new value.
        current: dict[Any, Any] = dict(
            conn.execute(
                sa.select(pk, sa.type_coerce(column, sa.LargeBinary)).where(
                    pk.in_([c.pk for c in items])
                )
            ).all()
        )
        missed.extend(c for c in items if as_raw(current.get(c.pk)) != c.new)
    return missed


def write_postgresql(
    conn: sa.Connection,
    table: sa.Table,
    pk: sa.Column[Any],
    indexes: dict[str, list[sa.Column[Any]]],
    changes: list[Change],
) -> list[Change]:
    """PostgreSQL path: one UPDATE ... FROM unnest(arrays) per batch, a compare-and-set per column.

    ``SET c = CASE WHEN t.c = old THEN new ELSE t.c END`` for every column, so a value the
    application changed is left alone while the row's other columns are still re-keyed; RETURNING
    tells which values were written.
    """
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    names = sorted({c.column for c in changes})
    rows: dict[Any, dict[str, Change]] = {}
    for change in changes:
        rows.setdefault(change.pk, {})[change.column] = change
    keys = list(rows)
    params: dict[str, Any] = {"pk": keys}
    arrays = [f"CAST(:pk AS {pk.type.compile(dialect=dialect)}[])"]
    aliases = ["pk"]
    sets: list[str] = []
    wanted: list[str] = []
    returned: list[str] = []
    for i, name in enumerate(names):
        col = quote(name)
        params[f"o{i}"] = [rows[k][name].old if name in rows[k] else None for k in keys]
        params[f"n{i}"] = [rows[k][name].new if name in rows[k] else None for k in keys]
        arrays += [f"CAST(:o{i} AS BYTEA[])", f"CAST(:n{i} AS BYTEA[])"]
        aliases += [f"o{i}", f"n{i}"]
        hit = f"(v.n{i} IS NOT NULL AND t.{col} = v.o{i})"
        sets.append(f"{col} = CASE WHEN {hit} THEN v.n{i} ELSE t.{col} END")
        wanted.append(hit)
        returned.append(f"t.{col} = v.n{i}")
        for j, index in enumerate(indexes.get(name, ())):
            ix = quote(index.name)
            params[f"x{i}_{j}"] = [
                rows[k][name].digests[j] if name in rows[k] else None for k in keys
            ]
            arrays.append(f"CAST(:x{i}_{j} AS BYTEA[])")
            aliases.append(f"x{i}_{j}")
            sets.append(f"{ix} = CASE WHEN {hit} THEN v.x{i}_{j} ELSE t.{ix} END")
    # Identifiers come from the table definition, quoted by the dialect; values are parameters.
    statement = (
        f"UPDATE {dialect.identifier_preparer.format_table(table)} AS t SET {', '.join(sets)} "  # noqa: S608
        f"FROM unnest({', '.join(arrays)}) AS v({', '.join(aliases)}) "
        f"WHERE t.{quote(pk.name)} = v.pk AND ({' OR '.join(wanted)}) "
        f"RETURNING t.{quote(pk.name)}, {', '.join(returned)}"
    )
    # Straight to the driver, with binary parameters: the text form of a bytea array would
    # escape every byte in Python (measured: a third of the engine's time).
    cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(re.sub(r":(\w+)", r"%(\1)b", statement), params, binary=True)
        returned_rows = cursor.fetchall()
    finally:
        cursor.close()
    written: set[tuple[Any, str]] = set()
    for result_row in returned_rows:
        key = result_row[0]
        written.update((key, name) for i, name in enumerate(names) if result_row[i + 1])
    return [c for c in changes if (c.pk, c.column) not in written]


def conflict_of(exc: BaseException) -> str | None:
    """What a deadlock, serialization failure or lock timeout the server reported is called, or
    None for any other error.

    PostgreSQL says it by SQLSTATE (psycopg 3 ``sqlstate``, psycopg2 ``pgcode``), MySQL and
    MariaDB by error number (the first argument of PyMySQL's and mysqlclient's errors); the error
    comes wrapped by SQLAlchemy (``DBAPIError.orig``) or straight from the driver (the PostgreSQL
    write path uses the driver's cursor).
    """
    error = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(code, str) and code in _CONFLICT_SQLSTATES:
        return f"SQLSTATE {code}: {_CONFLICT_SQLSTATES[code]}"
    args = getattr(error, "args", ())
    if args and type(args[0]) is int and args[0] in _CONFLICT_MYSQL:
        return f"error {args[0]}: {_CONFLICT_MYSQL[args[0]]}"
    return None
