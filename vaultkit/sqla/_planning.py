"""The planner on a model: which indexes touch a column, and its counts from the database.

:func:`plan_column` collects every index of a mapped class (or ``Table``) that reads a column (blind,
compound, prefix, bucket and token indexes), reads the column's row and distinct counts from the
database, and hands them to :func:`vaultkit.search.plan`.

Counting: a full-width blind index on the column (256 bits, no partitions) gives the exact distinct
count and the most common value's share in SQL (``COUNT(DISTINCT)`` and ``GROUP BY`` over digests;
nothing is decrypted). Otherwise a random sample of the column is decrypted through the vault and
the distinct counts of the column and of every index's input are estimated from it (GEE estimator).
Counts given by the caller win.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from vaultkit._access import SealedValue
from vaultkit.errors import AccessDeniedError, ConfigurationError, ValueErasedError
from vaultkit.search import Plan, PlannedIndex, distinct_estimate, plan
from vaultkit.sqla._tokens import TokenIndex, token_indexes
from vaultkit.sqla.types import BlindIndexType, Encrypted, EncryptedCell, Parts

__all__ = ["DEFAULT_SAMPLE", "indexes_of", "plan_column"]

#: Values decrypted for an estimate when no full-width blind index gives exact counts.
DEFAULT_SAMPLE: Final = 10_000


class _Index:
    """An index as the planner reads it: its declaration and how to get its input from a row."""

    __slots__ = ("inputs", "planned")

    def __init__(
        self, planned: PlannedIndex, inputs: Callable[[dict[str, Any]], Iterable[Any]]
    ) -> None:
        self.planned = planned
        #: row ({source column: plaintext}) -> the index's inputs (one, none, or several words).
        self.inputs = inputs


def _table_of(model: Any) -> sa.Table:
    table = getattr(model, "__table__", model)
    if not isinstance(table, sa.Table):
        raise ConfigurationError("plan_column takes a mapped class or a Table")
    return table


def _inputs_of(kind: BlindIndexType) -> Callable[[dict[str, Any]], list[Any]]:
    def inputs(row: dict[str, Any]) -> list[Any]:
        if kind.takes_parts:
            value = kind.transform(Parts(row))
        else:
            source = row.get(kind.source)
            value = None if source is None else kind.transform(source)
        return [] if value is None else [value]

    return inputs


def indexes_of(model: Any) -> list[tuple[PlannedIndex, Callable[[dict[str, Any]], Iterable[Any]]]]:
    """Every index of ``model`` (a mapped class or ``Table``), as the planner counts it, with the
    function giving its inputs from a row of decrypted source values."""
    table = _table_of(model)
    found: list[_Index] = []
    for column in table.columns:
        kind = column.type
        if not isinstance(kind, BlindIndexType):
            continue
        found.append(
            _Index(
                PlannedIndex(
                    name=column.key,
                    kind=kind.kind or "blind",
                    sources=tuple(kind.sources),
                    bits=kind.bits or 256,
                    partitions=int(kind.partitions or 1),
                ),
                _inputs_of(kind),
            )
        )
    for token in token_indexes(table):
        found.append(_Index(_token_planned(token), _token_inputs(token)))
    return [(i.planned, i.inputs) for i in found]


def _token_planned(token: TokenIndex) -> PlannedIndex:
    return PlannedIndex(name=token.name, kind="token", sources=(token.source,), bits=token.bits)


def _token_inputs(token: TokenIndex) -> Callable[[dict[str, Any]], list[Any]]:
    def inputs(row: dict[str, Any]) -> list[Any]:
        return list(token.words(row.get(token.source)))

    return inputs


def _connection(bind: Any) -> Any:
    if isinstance(bind, Session):
        return bind.connection()
    return bind


def _random(dialect: str) -> Any:
    return sa.func.rand() if dialect in ("mysql", "mariadb") else sa.func.random()


def plan_column(
    model: Any,
    column: str,
    *,
    bind: sa.Engine | sa.Connection | Session | None = None,
    rows: int | None = None,
    distinct: int | None = None,
    top_share: float | None = None,
    sample: int = DEFAULT_SAMPLE,
    max_false_positives: float | None = None,
) -> Plan:
    """Plan the indexes of ``model.column``: counts from ``bind`` (or given), then
    :func:`vaultkit.search.plan` over every index reading the column.

    Args:
        model: a mapped class or ``Table``.
        column: the column's key.
        bind: the application's database (an engine, connection or session) to count from;
            decrypting a sample needs the vault configured (:func:`vaultkit.sqla.configure`).
        rows, distinct, top_share: counts to use instead of reading them.
        sample: rows decrypted for an estimate (when no full-width blind index counts exactly).
        max_false_positives: see :func:`vaultkit.search.plan`.

    Raises:
        ConfigurationError: no such column, no counts (neither ``bind`` nor ``rows`` and
            ``distinct``), an empty column.

    .. versionadded:: 0.4.0
    """
    table = _table_of(model)
    if column not in table.columns:
        raise ConfigurationError(f"{table.name} has no column {column!r}")
    declared = [(p, f) for p, f in indexes_of(table) if column in p.sources]
    planned = [p for p, _ in declared]
    if bind is None and (rows is None or distinct is None):
        raise ConfigurationError("give a database to count from, or both rows and distinct")
    if bind is not None and (
        rows is None or distinct is None or any(p.distinct is None for p in planned)
    ):
        counted = _count(_connection(bind), table, column, declared, sample=sample)
        rows = rows if rows is not None else counted["rows"]
        distinct = distinct if distinct is not None else counted["distinct"]
        top_share = top_share if top_share is not None else counted["top_share"]
        planned = counted["indexes"]
    assert rows is not None and distinct is not None  # noqa: S101 - both set above
    if rows < 1:
        raise ConfigurationError(f"{table.name}.{column} holds no value to plan from")
    options: dict[str, Any] = {}
    if max_false_positives is not None:
        options["max_false_positives"] = max_false_positives
    return plan(
        rows=rows,
        distinct=min(max(1, distinct), rows),
        column=f"{table.name}.{column}",
        indexes=planned,
        top_share=top_share,
        **options,
    )


def _full_width(table: sa.Table, column: str) -> sa.Column[Any] | None:
    for candidate in table.columns:
        kind = candidate.type
        if (
            type(kind) is BlindIndexType
            and kind.source == column
            and (kind.bits or 256) == 256
            and int(getattr(kind, "partitions", 1) or 1) == 1
            and len(kind.query_versions) == 1
        ):
            return candidate
    return None


def _count(
    conn: Any,
    table: sa.Table,
    column: str,
    declared: list[tuple[PlannedIndex, Callable[[dict[str, Any]], Iterable[Any]]]],
    *,
    sample: int,
) -> dict[str, Any]:
    source = table.columns[column]
    rows = int(
        conn.execute(
            sa.select(sa.func.count()).select_from(table).where(source.is_not(None))
        ).scalar_one()
    )
    result: dict[str, Any] = {"rows": rows, "distinct": None, "top_share": None, "indexes": []}
    if rows == 0:
        result["distinct"] = 0
        result["indexes"] = [p for p, _ in declared]
        return result
    exact = _full_width(table, column)
    if exact is not None:
        digest = sa.type_coerce(exact, sa.LargeBinary)
        result["distinct"] = int(
            conn.execute(sa.select(sa.func.count(sa.distinct(digest)))).scalar_one()
        )
        top = conn.execute(
            sa.select(sa.func.count())
            .select_from(table)
            .where(digest.is_not(None))
            .group_by(digest)
            .order_by(sa.func.count().desc())
            .limit(1)
        ).scalar()
        result["top_share"] = (int(top) / rows) if top else None
    # Every other count comes from a sample of the sources, decrypted through the vault.
    sources = sorted({s for p, _ in declared for s in p.sources} | {column})
    columns = [table.columns[s] for s in sources]
    # Row-bound columns come back from a Core select as cells, opened with their row key.
    row_keys = sorted(
        {
            c.type.row_key
            for c in columns
            if isinstance(c.type, Encrypted) and c.type.row_key is not None
        }
        - set(sources)
    )
    # A value whose key was destroyed (an erased member, an expired retention) reads as None:
    # it is no value of the column any more, and the sample leaves its row out.
    reading = [_reading_erased_as_null(c) for c in columns]
    query = sa.select(*reading, *(table.columns[k] for k in row_keys)).where(source.is_not(None))
    if sample < rows:
        query = query.order_by(_random(conn.dialect.name)).limit(sample)
    values = []
    for row in conn.execute(query):
        found = dict(zip([*sources, *row_keys], row, strict=True))
        opened = {key: _opened(table, key, found) for key in sources}
        if opened[column] is not None:
            values.append(opened)
    seen = len(values)
    if result["distinct"] is None:
        counts = collections.Counter(_hashable(v[column]) for v in values)
        result["distinct"] = distinct_estimate(counts, rows)
        if counts and seen:
            result["top_share"] = counts.most_common(1)[0][1] / seen
    planned: list[PlannedIndex] = []
    for index, inputs in declared:
        counter: collections.Counter[Any] = collections.Counter()
        entries = 0
        holding = 0
        for value in values:
            got = [_hashable(x) for x in inputs(value)]
            entries += len(got)
            holding += 1 if got else 0
            counter.update(got)
        scale = rows / seen if seen else 1.0
        population = max(1, round(entries * scale)) if entries else rows
        estimated = distinct_estimate(counter, population) if counter else None
        planned.append(
            PlannedIndex(
                name=index.name,
                kind=index.kind,
                sources=index.sources,
                bits=index.bits,
                distinct=estimated,
                population=population,
                partitions=index.partitions,
                probes=index.probes,
            )
        )
    result["indexes"] = planned
    return result


def _reading_erased_as_null(column: sa.Column[Any]) -> Any:
    """``column``, read with ``on_erased="null"`` when it is an encrypted column."""
    column_type = column.type
    if not isinstance(column_type, Encrypted) or column_type.on_erased == "null":
        return column
    reading = column_type.copy()
    reading.on_erased = "null"
    return sa.type_coerce(column, reading)


def _opened(table: sa.Table, key: str, row: dict[str, Any]) -> Any:
    """The plaintext of ``row[key]``: a cell opened with its row key; a sealed value refused."""
    value = row[key]
    if isinstance(value, SealedValue):
        raise AccessDeniedError(
            f"planning {table.name}.{key} decrypts a sample of it, which needs the grant of its "
            "domain: act as a principal holding it, or give --rows and --distinct"
        )
    if isinstance(value, EncryptedCell):
        kind = table.columns[key].type
        assert isinstance(kind, Encrypted) and kind.row_key is not None  # noqa: S101 - a cell
        try:
            return value.decrypt(row=row[kind.row_key])
        except ValueErasedError:
            return None  # its key was destroyed: left out of the sample
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value
