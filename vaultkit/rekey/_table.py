"""What the re-keying engine reads of a table: its key, its encrypted columns, stored bytes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from vaultkit.errors import ConfigurationError
from vaultkit.sqla.keyset import single_primary_key
from vaultkit.sqla.types import BlindIndexType, Encrypted

__all__ = [
    "as_raw",
    "in_transaction",
    "indexes_of",
    "key_text",
    "key_value",
    "plan_table",
    "selection",
]


def indexes_of(
    table: sa.Table, handled: Iterable[str] | None = None
) -> dict[str, list[sa.Column[Any]]]:
    """The index columns of ``table`` by the source column whose values carry them through a job:
    an index of one source under that source, a compound index under its first source among the
    job's columns ``handled`` (by default its first source; its other sources are read, and
    decrypted, alongside). A job over any one source of a compound index rewrites it."""
    chosen = set(handled) if handled is not None else None
    out: dict[str, list[sa.Column[Any]]] = {}
    for column in table.columns:
        if isinstance(column.type, BlindIndexType):
            sources = column.type.sources
            carrier = next((s for s in sources if chosen is not None and s in chosen), sources[0])
            out.setdefault(carrier, []).append(column)
    return out


def plan_table(
    table: sa.Table, columns: Sequence[str] | None
) -> tuple[sa.Column[Any], list[sa.Column[Any]]]:
    """The key and the encrypted columns a job over ``table`` handles (all, or those named)."""
    pk = single_primary_key(table, user="the re-keying engine")
    try:
        key_type = pk.type.python_type
    except NotImplementedError:
        key_type = object
    if key_type not in (int, str, uuid.UUID):
        raise ConfigurationError(
            f"{table.name}: the re-keying engine walks integer, string or UUID primary keys"
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
    return pk, encrypted


def selection(
    pk: sa.Column[Any],
    encrypted: list[sa.Column[Any]],
    indexes: dict[str, list[sa.Column[Any]]] | None = None,
) -> tuple[dict[str, sa.Column[Any]], list[Any]]:
    """Row-key columns of the row-bound columns, and what to select: key, row keys, raw values,
    the stored index values of those columns, and the raw values of the other sources of their
    compound indexes (with their row keys)."""
    table = pk.table
    names = {c.name for c in encrypted}
    others: dict[str, sa.Column[Any]] = {}
    for column in encrypted:
        for index in (indexes or {}).get(column.name, ()):
            for source in index.type.sources:  # type: ignore[attr-defined]
                if source not in names and source in table.columns:
                    others[source] = table.columns[source]
    row_keys = {
        c.name: table.columns[c.type.row_key]
        for c in [*encrypted, *others.values()]
        if isinstance(c.type, Encrypted) and c.type.row_key
    }
    extra = list({k.name: k for k in row_keys.values() if k is not pk}.values())
    raw = [sa.type_coerce(c, sa.LargeBinary).label(c.name) for c in [*encrypted, *others.values()]]
    stored = [
        sa.type_coerce(index, sa.LargeBinary).label(index.name)
        for c in encrypted
        for index in (indexes or {}).get(c.name, ())
    ]
    return row_keys, [pk, *extra, *raw, *stored]


def key_text(value: Any) -> str | None:
    """A primary-key value as the job tables store it (JSON text; ``None`` for no bound)."""
    if value is None:
        return None
    return json.dumps(str(value) if isinstance(value, uuid.UUID) else value)


def key_value(pk: sa.Column[Any], text: str | None) -> Any:
    """The key value of ``text`` from :func:`key_text`."""
    if text is None:
        return None
    value = json.loads(text)
    if pk.type.python_type is uuid.UUID:
        return uuid.UUID(value)
    return value


def as_raw(value: Any) -> bytes | None:
    """A stored value as bytes, whatever the driver returned (``None`` stays ``None``)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")  # legacy text read through a text column type


@contextmanager
def in_transaction(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    """The caller's connection (inside its transaction, as in an Alembic migration) or a new
    transaction on the engine."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn
