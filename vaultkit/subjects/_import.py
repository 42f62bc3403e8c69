"""Loading a member's export into a database with the same models (art. 20(1): "transmit those
data to another controller"), re-encrypted under that database's vault.

The export (``vaultkit-subject-export/1``, a portability or access export) names
each table with its ``model`` block (per exported column its SQL type, value type, key domain and
subject column) and each row with its ``key`` and ``links``. :func:`import_subject` checks it all
against the models' :class:`~vaultkit.subjects.SubjectMap` *before* writing anything:

1. the document: its schema id, kind and part, every table in the map, in the map's order
   (parents first);
2. the models: each exported column must still exist, be annotated, have the same SQL type and
   value type, and be encrypted in the same domain with the same subject and row key (a column
   moved to another domain would be written under the wrong key); each key and link column must
   exist. The error names ``table.column`` and what changed;
3. the values: each is decoded from typed JSON into the column's Python type (an ISO date into a
   ``date``, a decimal string into a ``Decimal``, base64 into ``bytes``); a value of the wrong
   shape is an error naming the column and the row's position, never the value;
4. the target: no row of the export may be there already (looked up by primary key, one query
   per table and batch of keys); a NOT NULL column without default that the export cannot fill
   (an erased cell, a column the export leaves out) is an error naming it.

Then the rows are inserted, table by table, parents first, with one multi-row ``INSERT`` per
table, through the column types (``vaultkit.sqla``: values sealed under the target vault's keys,
subject keys made for the member there, blind indexes computed with the target's index keys), in
one transaction: a failure leaves nothing written. Erased cells (``marks``) are written as NULL and
counted in the report, and so are cells the export withheld (``withheld``: a value under
another member's key, or one that failed to authenticate at the source): the import has no value
for them either.

The separate part of the restricted domains (an export made with ``split_restricted``, delivered
through the medical adviser) is imported after the main part: it fills the restricted cells that
the main part left empty, one ``UPDATE`` per table whose ``WHERE`` names each row's key and links
and the empty cells, so a row that is missing, another member's or filled already makes the whole
part refused.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from vaultkit.errors import ConfigurationError, VaultkitError
from vaultkit.sqla import BlindIndexType, Encrypted
from vaultkit.subjects._export import from_jsonable

if TYPE_CHECKING:
    from vaultkit import Vault
    from vaultkit.subjects._map import ExportedColumn, LinkedTable, SubjectMap

__all__ = ["ImportReport", "import_subject"]

#: The export layout this release reads.
SCHEMA_ID: Final = "vaultkit-subject-export/1"
#: Primary keys per ``IN (...)`` of the existence check.
_BATCH: Final = 500
_DURATION: Final = re.compile(r"(-?)P(\d+)D(?:T(\d+(?:\.\d+)?(?:e[+-]?\d+)?)S)?")


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :meth:`vaultkit.Vault.import_subject` wrote; counts and names only, no value.

    Attributes:
        kind: the export's kind (``"access"`` or ``"portability"``).
        tables: ``(table, rows inserted)``, parents first (for the restricted part: rows whose
            restricted cells were filled).
        erased: ``(table.column, cells)`` written as NULL because the export marks them erased
            (the member's key was destroyed, or the retention was over, at the source).
        not_read: ``(table.column, cells)`` written as NULL because the export could not read
            them (no grant, or a separate restricted part).
        withheld: ``(table.column, cells)`` written as NULL because the export withheld them
            (``subject_mismatch``: under another member's key; ``unreadable``: the stored value
            failed to authenticate at the source).
        part: ``"main"``, or ``"restricted"`` for the separate part of the restricted domains.

    .. versionadded:: 0.3.0
    """

    kind: str
    tables: tuple[tuple[str, int], ...]
    erased: tuple[tuple[str, int], ...] = ()
    not_read: tuple[tuple[str, int], ...] = ()
    part: str = "main"
    withheld: tuple[tuple[str, int], ...] = ()

    @property
    def rows(self) -> int:
        """Rows inserted in all tables."""
        return sum(n for _, n in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows": self.rows,
            "tables": dict(self.tables),
            "erased": dict(self.erased),
            "not_read": dict(self.not_read),
            "withheld": dict(self.withheld),
        }


# -- decoding typed JSON ----------------------------------------------------------------------


class _BadValueError(Exception):
    """A value of the wrong shape (the message never holds the value)."""


def _python_type(column: sa.Column[Any]) -> type | None:
    inner = column.type.inner if isinstance(column.type, Encrypted) else column.type
    try:
        python: type = inner.python_type
    except NotImplementedError:
        return None
    return python


def _decode(value: Any, value_type: str, column: sa.Column[Any]) -> Any:
    """``value`` (typed JSON) as the Python value ``column`` takes (the export's inverse)."""
    inner = column.type.inner if isinstance(column.type, Encrypted) else column.type
    enum_class = getattr(inner, "enum_class", None)
    if not (isinstance(enum_class, type) and issubclass(enum_class, enum.Enum)):
        enum_class = None
    try:
        return from_jsonable(value, value_type, enum_class=enum_class)
    except ValueError:
        raise _BadValueError(f"not a {value_type[:20]} value") from None


def _structural_type(column: sa.Column[Any]) -> str:
    """The value type of a key or link column (the export writes them as typed JSON too)."""
    inner = column.type.inner if isinstance(column.type, Encrypted) else column.type
    if isinstance(inner, sa.Enum):
        return "enum"
    python = _python_type(column)
    if python is None:
        return "json"
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (decimal.Decimal, "decimal"),
        (dt.datetime, "datetime"),
        (dt.date, "date"),
        (dt.time, "time"),
        (dt.timedelta, "duration"),
        (bytes, "base64"),
        (uuid.UUID, "uuid"),
        (str, "string"),
    ):
        if issubclass(python, kind):
            return name
    return "json"


# -- checking the document against the models -------------------------------------------------


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    _need(isinstance(value, Mapping), f"the export is damaged: {what} is not an object")
    return value  # type: ignore[no-any-return]


def _sequence(value: Any, what: str) -> Sequence[Any]:
    _need(isinstance(value, list | tuple), f"the export is damaged: {what} is not a list")
    return value  # type: ignore[no-any-return]


def _domain_text(encrypted: Any) -> str:
    if not encrypted:
        return "not encrypted"
    return f"encrypted in domain {encrypted.get('domain')!r}"


def _check_column(
    table: str, name: str, exported: Mapping[str, Any], current: ExportedColumn | None
) -> None:
    """The exported column ``name`` as the export describes it, against the models today."""
    where = f"{table}.{name}"
    _need(
        current is not None,
        f"{where} is in the export but not an annotated column of the models (removed, renamed "
        "or no longer personal()): the models changed since the export",
    )
    assert current is not None  # noqa: S101 - narrowing after _need
    was, now = exported.get("type"), current.type_name
    _need(
        was == now,
        f"{where}: its type changed from {str(was)[:40]} (in the export) to {now} (in the models)",
    )
    from vaultkit.subjects._export import _value_type

    was_value, now_value = exported.get("value_type"), _value_type(current)
    _need(
        was_value == now_value,
        f"{where}: its value type changed from {str(was_value)[:20]} to {now_value}",
    )
    encrypted = exported.get("encrypted")
    was_domain = encrypted.get("domain") if isinstance(encrypted, Mapping) else None
    _need(
        was_domain == current.domain,
        f"{where}: was {_domain_text(encrypted)} in the export, is "
        + (f"encrypted in domain {current.domain!r}" if current.domain else "not encrypted")
        + " in the models",
    )
    if isinstance(encrypted, Mapping):
        for part in ("subject", "row_key"):
            was_part, now_part = encrypted.get(part), getattr(current, part)
            _need(
                was_part == now_part,
                f"{where}: its {part.replace('_', ' ')} column changed from {was_part!r} to "
                f"{now_part!r}",
            )


@dataclass
class _Plan:
    entry: LinkedTable
    rows: list[dict[str, Any]]
    erased: dict[str, int]
    not_read: dict[str, int]
    withheld: dict[str, int]
    #: The exported (non-structural) columns of the table in this part.
    columns: tuple[str, ...] = ()


def _plan_table(entry: LinkedTable, body: Mapping[str, Any], kind: str, part: str) -> _Plan:
    name = entry.name
    table = entry.table
    model = _mapping(body.get("model"), f"the model of {name}")
    columns = _mapping(model.get("columns"), f"the columns of {name}")
    current = {c.name: c for c in entry.columns}
    for column_name, exported in columns.items():
        _check_column(
            name,
            str(column_name),
            _mapping(exported, f"{name}.{column_name}"),
            current.get(column_name),
        )
    key = [str(k) for k in _sequence(model.get("key"), f"the key of {name}")]
    links = [str(k) for k in _mapping(model.get("links"), f"the links of {name}")]
    for column_name in (*key, *links):
        _need(
            column_name in table.c,
            f"{name}.{column_name} (a key or link column in the export) is not in the models",
        )
    primary = [c.name for c in table.primary_key.columns]
    _need(
        bool(primary) and all(c in key for c in primary),
        f"{name}: its primary key ({', '.join(primary) or 'none'}) is not the key of the "
        f"export ({', '.join(key)}): the models changed since the export",
    )
    rows: list[dict[str, Any]] = []
    erased: dict[str, int] = {}
    not_read: dict[str, int] = {}
    withheld: dict[str, int] = {}
    counters = {
        "erased": erased,
        "withheld": withheld,
        "not_read": not_read,
        "separate": not_read,
    }
    for position, raw in enumerate(_sequence(body.get("rows"), f"the rows of {name}"), 1):
        row = _mapping(raw, f"row {position} of {name}")
        values: dict[str, Any] = {}
        for part in ("key", "links"):
            for column_name, value in _mapping(
                row.get(part, {}), f"row {position} of {name}"
            ).items():
                _need(
                    column_name in table.c,
                    f"{name}.{column_name} (in row {position} of the export) is not in the models",
                )
                column = table.c[column_name]
                values[column_name] = _decoded(
                    name, column_name, position, value, _structural_type(column), column
                )
        for column_name, value in _mapping(
            row.get("values", {}), f"row {position} of {name}"
        ).items():
            _need(
                column_name in columns,
                f"{name}.{column_name} has values in the export but no model entry (damaged export)",
            )
            exported = columns[column_name]
            column = table.c[column_name]
            values[column_name] = _decoded(
                name, column_name, position, value, str(exported.get("value_type")), column
            )
        for column_name, mark in _mapping(
            row.get("marks", {}), f"row {position} of {name}"
        ).items():
            _need(
                column_name in columns,
                f"{name}.{column_name} is marked in the export but has no model entry",
            )
            status = _mapping(mark, f"a mark of {name}.{column_name}").get("status")
            _need(
                isinstance(status, str) and status in counters,
                f"{name}.{column_name} in row {position} of the export has a mark of unknown "
                f"status {str(status)[:20]!r} (damaged export, or a newer layout)",
            )
            counter = counters[str(status)]
            counter[f"{name}.{column_name}"] = counter.get(f"{name}.{column_name}", 0) + 1
            values[column_name] = None
        rows.append(values)
    if part == "main":
        _check_not_null(entry, rows, kind)
    return _Plan(entry, rows, erased, not_read, withheld, tuple(str(c) for c in columns))


def _decoded(
    table: str, name: str, position: int, value: Any, value_type: str, column: sa.Column[Any]
) -> Any:
    try:
        return _decode(value, value_type, column)
    except _BadValueError as exc:
        raise ConfigurationError(
            f"{table}.{name} in row {position} of the export: the value is {exc}"
        ) from None


def _has_default(column: sa.Column[Any]) -> bool:
    return (
        column.default is not None
        or column.server_default is not None
        or (column.primary_key and column.autoincrement in (True, "auto") and _is_integer(column))
    )


def _is_integer(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, sa.Integer)


def _check_not_null(entry: LinkedTable, rows: Sequence[Mapping[str, Any]], kind: str) -> None:
    """A NOT NULL column without default must get a value in every row."""
    for column in entry.table.columns:
        if column.nullable or _has_default(column):
            continue
        for position, row in enumerate(rows, 1):
            if row.get(column.name) is None:
                why = (
                    "an erased, withheld or unread cell"
                    if column.name in row
                    else f"not in the {kind} export"
                )
                raise ConfigurationError(
                    f"{entry.name}.{column.name} is NOT NULL without a default, and row "
                    f"{position} of the export has no value for it ({why})"
                )


# -- writing ----------------------------------------------------------------------------------


def _key_batches(
    entry: LinkedTable, rows: Sequence[Mapping[str, Any]]
) -> Iterator[sa.ColumnElement[bool]]:
    primary = [c for c in entry.table.primary_key.columns]
    keys = [tuple(row.get(c.name) for c in primary) for row in rows]
    for start in range(0, len(keys), _BATCH):
        batch = keys[start : start + _BATCH]
        if len(primary) == 1:
            yield primary[0].in_([k[0] for k in batch])
        else:
            yield sa.or_(
                *(sa.and_(*(c == v for c, v in zip(primary, k, strict=True))) for k in batch)
            )


def _existing(conn: sa.Connection, plan: _Plan) -> int:
    table = plan.entry.table
    primary = list(table.primary_key.columns)
    found = 0
    for clause in _key_batches(plan.entry, plan.rows):
        found += len(conn.execute(sa.select(*primary).where(clause)).all())
    return found


def _connection(session: Any) -> tuple[sa.Connection, str]:
    """The connection to write with, and who owns its transaction: ``"engine"`` (opened and
    committed here), ``"caller"``."""
    if isinstance(session, sa.Engine):
        return session.connect(), "engine"
    if isinstance(session, sa.Connection):
        return session, "caller"
    connection = getattr(session, "connection", None)
    if callable(connection):
        conn = connection()
        if isinstance(conn, sa.Connection):
            return conn, "caller"
    raise TypeError(
        f"import_subject writes through a Session, a Connection or an Engine, not "
        f"{type(session).__name__}"
    )


def _check_document(
    data: Any, subjects: SubjectMap
) -> tuple[str, str, list[tuple[LinkedTable, Mapping[str, Any]]]]:
    body = _mapping(data, "the document")
    _need(
        body.get("schema") == SCHEMA_ID,
        f"not a vaultkit subject export of this version (schema {str(body.get('schema'))[:40]!r}, "
        f"expected {SCHEMA_ID!r})",
    )
    kind = body.get("kind")
    _need(kind in ("access", "portability"), "the export's kind is neither access nor portability")
    part = body.get("part", "main")
    _need(part in ("main", "restricted"), "the export's part is neither main nor restricted")
    order = {entry.name: i for i, entry in enumerate(subjects.tables)}
    tables: list[tuple[LinkedTable, Mapping[str, Any]]] = []
    seen: set[str] = set()
    for raw in _sequence(body.get("tables"), "the tables"):
        table_body = _mapping(raw, "a table")
        name = str(table_body.get("table"))
        _need(
            name in order,
            f"table {name[:64]} is in the export but not a linked table of the models",
        )
        _need(name not in seen, f"table {name} is in the export twice")
        seen.add(name)
        tables.append((subjects.table(name), table_body))
    tables.sort(key=lambda item: order[item[0].name])
    return str(kind), str(part), tables


def _read(path: os.PathLike[str]) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except OSError as exc:
        raise ConfigurationError(f"cannot read the export: {type(exc).__name__}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        # The parser's message quotes the text around the error: a member's data.
        raise ConfigurationError("the export is not JSON (damaged or not an export)") from None


def import_subject(vault: Vault, session: Any, data: Any, *, subjects: SubjectMap) -> ImportReport:
    """Insert the rows of a member's export (or fill in its restricted part); see
    :meth:`vaultkit.Vault.import_subject`."""
    from vaultkit.subjects._export import _check_columns

    _check_columns(vault, subjects)
    if isinstance(data, os.PathLike):
        data = _read(data)
    kind, part, tables = _check_document(data, subjects)
    plans = [_plan_table(entry, body, kind, part) for entry, body in tables]
    _warm(vault, plans)
    write = _write if part == "main" else _fill
    conn, owner = _connection(session)
    try:
        if owner == "engine":
            with conn.begin():
                write(conn, plans)
        elif conn.in_transaction() and conn.dialect.name != "sqlite":
            with conn.begin_nested():
                write(conn, plans)
        else:
            write(conn, plans)
    finally:
        if owner == "engine":
            conn.close()
    erased: dict[str, int] = {}
    not_read: dict[str, int] = {}
    withheld: dict[str, int] = {}
    for plan in plans:
        erased.update(plan.erased)
        not_read.update(plan.not_read)
        withheld.update(plan.withheld)
    return ImportReport(
        kind=kind,
        part=part,
        tables=tuple((p.entry.name, len(p.rows)) for p in plans),
        erased=tuple(sorted(erased.items())),
        not_read=tuple(sorted(not_read.items())),
        withheld=tuple(sorted(withheld.items())),
    )


def _warm(vault: Vault, plans: Sequence[_Plan]) -> None:
    """Make the keys the rows will be sealed under before the write transaction opens.

    The member's subject keys (one batch per domain), the process key of each other domain and
    the blind-index keys are found or made here, in the key store's own transactions: made
    while the import's transaction holds the database (an SQLite file holding both the data and
    the key store), they would wait for it and fail ("database is locked").
    """
    for plan in plans:
        table = plan.entry.table
        for column in table.columns:
            kind = column.type
            if isinstance(kind, BlindIndexType):
                found = [row[kind.source] for row in plan.rows if row.get(kind.source) is not None]
                if found:
                    kind.digest(found[0])
                continue
            if not isinstance(kind, Encrypted):
                continue
            if not any(row.get(column.name) is not None for row in plan.rows):
                continue
            domain = vault.key_domain(kind.domain)
            if domain is None:
                continue  # _check_columns refused it already
            try:
                if domain.dek_scope == "subject" and kind.subject is not None:
                    subjects = {
                        row[kind.subject]
                        for row in plan.rows
                        if row.get(column.name) is not None and row.get(kind.subject) is not None
                    }
                    vault.prepare_subjects(kind.domain, subjects)
                elif domain.dek_scope == "process":
                    # One throwaway encryption takes this process's key of the domain.
                    vault.encrypt(b"", domain=kind.domain)
            except VaultkitError:
                continue  # the write raises the same error, in its place


def _fill(conn: sa.Connection, plans: Sequence[_Plan]) -> None:
    """The restricted part: fill the restricted cells of rows the main part inserted.

    Each row must be there with those cells empty (NULL, as the main part's import left them):
    one ``UPDATE`` per table, its ``WHERE`` naming the row's key and links and the empty cells;
    a row missing, of another member, or already filled makes the whole part refused.
    """
    for plan in plans:
        if not plan.rows:
            continue
        table = plan.entry.table
        # The key and links in the WHERE clause (the row, and its subject for the sealing of
        # subject-scoped values: an UPDATE that set the subject column would have to rewrite
        # every value under it); the part's columns in the SET clause.
        structural = [n for n in plan.rows[0] if n not in plan.columns]
        binds = {name: f"where_{i}" for i, name in enumerate(structural)}
        condition = sa.and_(
            *(table.c[name] == sa.bindparam(bind) for name, bind in binds.items()),
            *(table.c[name].is_(None) for name in plan.columns),
        )
        rows = [
            {
                **{binds[n]: row.get(n) for n in structural},
                **{n: row.get(n) for n in plan.columns},
            }
            for row in plan.rows
        ]
        result = conn.execute(table.update().where(condition), rows)
        if result.rowcount != len(rows):
            raise ConfigurationError(
                f"{plan.entry.name}: {len(rows) - max(result.rowcount, 0)} rows of the restricted "
                "part are not in the database with their restricted cells empty (import the "
                "main part first, once); nothing was imported"
            )


def _write(conn: sa.Connection, plans: Sequence[_Plan]) -> None:
    for plan in plans:
        if plan.rows and _existing(conn, plan):
            raise ConfigurationError(
                f"{plan.entry.name}: {_existing(conn, plan)} rows of the export are in the "
                "database already (same primary key); nothing was imported"
            )
    for plan in plans:
        if not plan.rows:
            continue
        # Every parameter set of one executemany names the same columns.
        names = list(dict.fromkeys(n for row in plan.rows for n in row))
        rows = [{n: row.get(n) for n in names} for row in plan.rows]
        try:
            conn.execute(plan.entry.table.insert(), rows)
        except sa.exc.IntegrityError:
            raise ConfigurationError(
                f"{plan.entry.name}: the database refused the rows of the export (a key or "
                "constraint, such as a row inserted meanwhile); nothing was imported"
            ) from None
