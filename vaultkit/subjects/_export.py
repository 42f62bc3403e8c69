"""The export of one member's data (GDPR art. 15 access, art. 20 portability) over the subject map.

How it reads: table by table, parents first, one ``SELECT`` per table (per batch of
:data:`BATCH` parent keys), selecting only the structural columns (primary key, link) and the
annotated ones the current principal may read; the ciphertexts' DEKs are preloaded in one go
per table, so the provider calls are bounded by the member's keys, not by their rows. A column of
a restricted domain without the grant is not selected at all: it is listed in
``incomplete_sources`` (``no_grant``), and its cells say so.

What a database writer can plant is checked with no query more on the application's database: a
subject-scoped value must be under the exported member's key (the DEK's key-store row names its
owner), a row's member columns must name the member, and a row found by a blind index must hold
one of the member's values in the index's source column; otherwise the cell is withheld or the
row left out, and listed (``subject_mismatch``). A value that fails to authenticate is withheld
and listed (``value_unreadable``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import datetime as dt
import decimal
import enum
import json
import math
import os
import re
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import sqlalchemy as sa

from vaultkit._access import current_scope
from vaultkit._erasure import looks_personal
from vaultkit.core import wire
from vaultkit.errors import (
    AccessDeniedError,
    ConfigurationError,
    DecryptionError,
    ValueErasedError,
)
from vaultkit.sqla import Encrypted, get_vault
from vaultkit.store import SupportsGetMany

if TYPE_CHECKING:
    from vaultkit import Subject, Vault
    from vaultkit.subjects._map import ExportedColumn, LinkedTable, SubjectMap

__all__ = [
    "BATCH",
    "DEFAULT_PURPOSE",
    "SCHEMA_ID",
    "ExportKind",
    "SubjectExport",
    "export_subject",
    "from_jsonable",
    "jsonable",
]

#: The ``schema`` member of every export (the JSON Schema's version).
SCHEMA_ID: Final = "vaultkit-subject-export/1"
#: The purpose the reads of an export are made (and audited) for, unless told otherwise.
DEFAULT_PURPOSE: Final = "DataSubjectRequest"
#: Parent keys per ``IN (...)`` of one query.
BATCH: Final = 500

ExportKind = Literal["access", "portability"]
KINDS: Final = ("access", "portability")

NO_DATA_NOTE: Final = "no data found for this subject"

_ERASED_REASONS: Final = {
    "erasure": "subject_erased",
    "retention": "retention_expired",
    "destroyed": "key_destroyed",
}

#: The rights a member has, for the art. 15(1)(e)-(f) part of an access export.
RIGHTS: Final = (
    ("rectification", "16", "Ask us to correct data about you that is wrong or incomplete."),
    ("erasure", "17", "Ask us to erase data about you that we no longer need or may not keep."),
    (
        "restriction",
        "18",
        "Ask us to restrict how we use data about you while a dispute is settled.",
    ),
    ("portability", "20", "Receive the data you gave us in a machine-readable form."),
    ("objection", "21", "Object to processing based on our legitimate interest or for marketing."),
    ("complaint", "77", "Lodge a complaint with a data protection supervisory authority."),
)


# -- typed JSON -------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A Python value as typed JSON: ISO 8601 dates and times, Decimal as a string, bytes as
    base64, UUID as a string, enums by value, mappings and sequences item by item.

    Raises:
        TypeError: a value with no JSON form (never a value's content in the message).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    raise TypeError(f"a {type(value).__name__} value has no JSON form in an export")


def from_jsonable(value: Any, value_type: str, *, enum_class: type[enum.Enum] | None = None) -> Any:
    """The Python value of a typed-JSON cell, by its column's ``value_type`` (the inverse of
    :func:`jsonable`, for an import).

    Raises:
        ValueError: the cell does not hold a value of that type (the message names the type
            only, never the value).
    """
    if value is None:
        return None
    if value_type not in _PARSERS and value_type not in _CHECKED:
        raise ValueError(f"unknown value type {value_type!r}")
    parsed: Any = _INVALID
    if value_type in _CHECKED:
        if _CHECKED[value_type](value):
            parsed = float(value) if value_type == "number" else value
    elif value_type == "enum":
        try:
            parsed = enum_class(value) if enum_class is not None else value
        except ValueError:
            pass
    else:
        try:
            parsed = _PARSERS[value_type](value)
        except (TypeError, ValueError, decimal.InvalidOperation, binascii.Error):
            pass
    if parsed is _INVALID:
        raise ValueError(f"a cell does not hold a {value_type} value")
    return parsed


_INVALID: Final = object()


def _number(value: Any) -> bool:
    if isinstance(value, str):  # a non-finite float travels as its text
        return value in ("inf", "-inf", "nan")
    return not isinstance(value, bool) and isinstance(value, int | float)


_CHECKED: Final[dict[str, Any]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _number,
    "json": lambda v: True,
}


_DURATION = re.compile(r"(-?)P(\d+)D(?:T(\d+(?:\.\d+)?)S)?")


def _parse_duration(value: str) -> dt.timedelta:
    found = _DURATION.fullmatch(value)
    if found is None:
        raise ValueError
    micros = int(found.group(2)) * 86400 * 1_000_000
    micros += int(decimal.Decimal(found.group(3) or 0) * 1_000_000)
    return dt.timedelta(microseconds=-micros if found.group(1) else micros)


def _duration(value: dt.timedelta) -> str:
    """ISO 8601 ``[-]PnDTn.nnnnnnS``, exact to the microsecond."""
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    days, rest = divmod(abs(micros), 86400 * 1_000_000)
    text = f"{sign}P{days}D"
    if rest:
        seconds = f"{rest // 1_000_000}.{rest % 1_000_000:06d}".rstrip("0").rstrip(".")
        text += f"T{seconds}S"
    return text


def _decimal(value: Any) -> decimal.Decimal:
    if not isinstance(value, str):  # exported as a string: a JSON number lost its precision
        raise TypeError
    return decimal.Decimal(value)


_PARSERS: Final[dict[str, Any]] = {
    "decimal": lambda v: _decimal(v),
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "duration": lambda v: _parse_duration(v),
    "base64": lambda v: base64.b64decode(v, validate=True),
    "uuid": uuid.UUID,
    "enum": None,
}


def _value_type(column: ExportedColumn) -> str:
    column_type = column.column.type
    inner = column_type.inner if isinstance(column_type, Encrypted) else column_type
    if isinstance(inner, sa.Enum):
        return "enum"
    if isinstance(inner, sa.JSON | sa.ARRAY):
        return "json"
    try:
        python = inner.python_type
    except NotImplementedError:
        return "string"
    if issubclass(python, list | tuple | dict):  # an ARRAY or a JSON-like type: as it came
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
    return "string"


# -- the export object ------------------------------------------------------------------------


class SubjectExport:
    """One member's export: the typed JSON document and its renderings (JSON, CSV zip, HTML).

    Its ``repr`` shows counts only, never a value. :attr:`restricted` is the separate part
    with the restricted domains' values (for delivery through the medical adviser) when the
    export was made with ``split_restricted=True``, else ``None``.

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_data", "restricted")

    def __init__(self, data: dict[str, Any], *, restricted: SubjectExport | None = None) -> None:
        self._data = data
        self.restricted = restricted

    @property
    def kind(self) -> str:
        """``"access"`` or ``"portability"``."""
        return str(self._data["kind"])

    @property
    def status(self) -> str:
        """``"complete"``, or ``"incomplete"`` when a source could not be read."""
        return str(self._data["status"])

    @property
    def incomplete_sources(self) -> list[dict[str, Any]]:
        """The sources that could not be read, with the reason (a copy)."""
        return copy.deepcopy(self._data["incomplete_sources"])

    @property
    def row_count(self) -> int:
        """The number of rows exported, over all tables."""
        return sum(len(t["rows"]) for t in self._data["tables"])

    def to_dict(self) -> dict[str, Any]:
        """The export as a JSON-ready dictionary (a deep copy)."""
        return copy.deepcopy(self._data)

    def to_json(self, *, indent: int | None = 2) -> str:
        """The export as JSON text (UTF-8 characters kept as they are)."""
        return json.dumps(self._data, indent=indent, ensure_ascii=False, sort_keys=False)

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` (UTF-8), owner-only (also over an existing file)."""
        _write(path, self.to_json().encode("utf-8"))

    def write_csv_zip(self, path: str | os.PathLike[str]) -> None:
        """Write a zip with one CSV per table, ``manifest.json`` and, for access, ``art15.csv``
        (owner-only, like :meth:`write_json`)."""
        from vaultkit.subjects._render import csv_zip

        _write(path, csv_zip(self._data))

    def to_html(self) -> str:
        """One self-contained HTML page (inline CSS, no script, nothing fetched); every value
        escaped."""
        from vaultkit.subjects._render import html_page

        return html_page(self._data)

    def write_html(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_html` to ``path`` (UTF-8, owner-only, like :meth:`write_json`)."""
        _write(path, self.to_html().encode("utf-8"))

    def __repr__(self) -> str:
        data = self._data
        erased = sum(
            1
            for t in data["tables"]
            for r in t["rows"]
            for m in r["marks"].values()
            if m["status"] == "erased"
        )
        part = "" if data.get("part", "main") == "main" else f", part={data['part']!r}"
        return (
            f"SubjectExport(kind={self.kind!r}, status={self.status!r}{part}, "
            f"tables={len(data['tables'])}, rows={self.row_count}, erased_cells={erased}, "
            f"incomplete_sources={len(data['incomplete_sources'])})"
        )

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError("a SubjectExport holds a member's data and is not pickled")


def _write(path: str | os.PathLike[str], data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    fd = os.open(os.fspath(path), flags, 0o600)
    if hasattr(os, "fchmod"):
        # The mode of ``os.open`` applies to a new file only: one that was there keeps its own.
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            raise
    with os.fdopen(fd, "wb") as out:
        out.write(data)


# -- reading ----------------------------------------------------------------------------------


@dataclass(repr=False)  # holds a member's plaintext: no repr of it in a traceback
class _Source:
    """One table as read: its rows as Python values, and the reads refused or failed."""

    entry: LinkedTable
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: Per row: column -> mark (erased, not read).
    marks: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    read: bool = True


@dataclass(repr=False)  # holds a member's plaintext: no repr of it in a traceback
class _Reader:
    vault: Vault
    connection: sa.Connection
    kind: str
    split: bool
    at: dt.datetime
    incomplete: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, _Source] = field(default_factory=dict)
    #: DEK id -> (reason, date) of an erased value's key, looked up once per key.
    erased_keys: dict[bytes, tuple[str, str | None]] = field(default_factory=dict)
    #: DEK id -> the subject reference its key-store row names (``None``: no subject's key).
    owners: dict[bytes, str | None] = field(default_factory=dict)
    #: domain and member id as a column holds it -> the exported subject's reference there.
    refs: dict[str, str] = field(default_factory=dict)
    #: (table, column) already listed as holding another member's values.
    mismatched: set[tuple[str, str | None]] = field(default_factory=set)
    subject: Any = None
    #: match table -> the member's identity values, normalised as its blind index does.
    matched: dict[str, list[Any]] = field(default_factory=dict)
    #: (table, column) already listed as holding a value that failed to decrypt.
    unreadable: set[tuple[str, str]] = field(default_factory=set)
    #: Whether the connection is the export's own (opened from an Engine, closed after).
    owned: bool = False

    def exported(self, entry: LinkedTable) -> list[ExportedColumn]:
        if self.kind == "portability":
            return [c for c in entry.columns if c.personal.portable]
        return list(entry.columns)

    def denied(self, column: ExportedColumn) -> bool:
        if column.domain is None:
            return False
        domain = self.vault.key_domain(column.domain)
        restricted = domain is None or domain.restricted
        return restricted and column.domain not in current_scope().principal.grants

    def restricted(self, column: ExportedColumn) -> bool:
        if column.domain is None:
            return False
        domain = self.vault.key_domain(column.domain)
        return domain is None or domain.restricted

    def read(self, entry: LinkedTable, subject: Any) -> None:
        source = self.sources[entry.name] = _Source(entry)
        table = entry.table
        filters = self._filters(entry, subject)
        if filters is None:
            return
        columns = self.exported(entry)
        readable = [c for c in columns if not self.denied(c)]
        denied = [c for c in columns if self.denied(c)]
        plain = [c.name for c in readable if not c.encrypted]
        structural = list(dict.fromkeys((*entry.key, *entry.links)))
        row_keys = [c.row_key for c in readable if c.row_key is not None]
        plain_names = list(dict.fromkeys((*structural, *row_keys, *plain)))
        selected: list[sa.ColumnElement[Any]] = [table.c[n] for n in plain_names]
        selected += [
            sa.type_coerce(table.c[c.name], sa.LargeBinary).label(f"__raw_{i}")
            for i, c in enumerate(readable)
            if c.encrypted
        ]
        encrypted = [c for c in readable if c.encrypted]
        primary = list(table.primary_key.columns)
        raw_rows: list[Any] = []
        try:
            for clause in filters:
                query = sa.select(*selected).where(clause).order_by(*primary)
                raw_rows.extend(self._execute(query))
        except sa.exc.SQLAlchemyError as exc:
            # Told apart only on failure: no query more per table on the way of a good export.
            source.read = False
            if self._exists(table):
                failure = _source_row(entry.name, "database_error", detail=type(exc).__name__)
            else:
                failure = _source_row(entry.name, "table_missing")
            self.incomplete.append(failure)
            return
        if not raw_rows:
            return
        # By primary key, over all batches, in Python's order (code points for text): the same
        # rows in the same order on every engine, whatever its collation.
        positions = [plain_names.index(c.name) for c in primary]
        raw_rows.sort(key=lambda row: _order_key(row[i] for i in positions))
        aware = [c.name for c in readable if _is_aware(c.column)]
        for column in denied:
            self.incomplete.append(
                _source_row(entry.name, "no_grant", column=column.name, domain=column.domain)
            )
            # Not read, but refused as a read would be: one "denied" audit event per column.
            with contextlib.suppress(AccessDeniedError):
                column.encrypted_type.deny()
        offset = len(plain_names)
        deks = {
            header.dek_id
            for row in raw_rows
            for blob in row[offset:]
            if blob is not None and (header := _header(bytes(blob))) is not None
        }
        if deks:
            self.vault.preload(deks)
            self._load_owners(deks)
        # The columns naming the member of a row (the ``subject=`` of its encrypted columns):
        # a row whose column names another member came by a link a database writer edited.
        subject_columns = [
            n for n in dict.fromkeys(c.subject for c in entry.columns if c.subject) if n
        ]
        root = entry.subject_column
        wanted = _subject_value(table.c[root], subject) if root is not None else None
        foreign_rows = 0
        for row in raw_rows:
            values = {name: row[i] for i, name in enumerate(plain_names)}
            if root is not None and not _same(table.c[root], values[root], wanted):
                # Another id that a server's collation matched ("M-17" or "m-17 " for "m-17" on
                # MariaDB): not this member's row, and no sign of an edit.
                continue
            if not all(
                _same(table.c[n], values.get(n), _subject_value(table.c[n], subject))
                for n in subject_columns
            ):
                foreign_rows += 1  # not given as this member's, nor followed to its children
                continue
            marks: dict[str, dict[str, Any]] = {}
            for i, column in enumerate(encrypted):
                blob = row[offset + i]
                if blob is not None and self._foreign(column, bytes(blob)):
                    values[column.name] = None
                    marks[column.name] = {"status": "withheld", "reason": "subject_mismatch"}
                    self._mismatch(entry, column, "a value under another member's key")
                    continue
                values[column.name], mark = self._open(column, blob, values)
                if mark is not None:
                    marks[column.name] = mark
            if entry.kind == "match" and not self._matches(entry, values):
                foreign_rows += 1  # a digest a writer copied: the row's own value is another
                continue
            for column in denied:
                marks[column.name] = {"status": "not_read", "reason": "no_grant"}
            for name in aware:
                if isinstance(values.get(name), dt.datetime):
                    values[name] = _utc(values[name])
            source.rows.append(values)
            source.marks.append(marks)
        if foreign_rows:
            self._mismatch(
                entry,
                None,
                f"{foreign_rows} row(s) reached by the link whose member column names another "
                "member: left out",
            )

    def _matches(self, entry: LinkedTable, values: Mapping[str, Any]) -> bool:
        """Whether a row found by a blind-index match holds, in the index's source column, one
        of the member's values (when that column was read): the digest alone can be copied."""
        index = entry.table.c[cast(str, entry.match)].type
        source = getattr(index, "source", None)
        value = values.get(source) if isinstance(source, str) else None
        if value is None:
            return True  # not read here (not exported, erased, no grant): nothing to compare
        normalize = getattr(index, "normalize", None) or (lambda v: v)
        return bool(normalize(value) in self.matched.get(entry.name, ()))

    def _load_owners(self, deks: Iterable[bytes]) -> None:
        missing = [d for d in deks if d not in self.owners]
        if not missing:
            return
        store = self.vault.store
        if isinstance(store, SupportsGetMany):
            records = store.get_many(missing)
        else:
            records = {d: r for d in missing if (r := store.get(d)) is not None}
        for dek in missing:
            record = records.get(dek)
            self.owners[dek] = record.subject if record is not None else None

    def _foreign(self, column: ExportedColumn, blob: bytes) -> bool:
        """Whether ``blob`` is under another member's subject key than the exported one's."""
        header = _header(blob)
        if header is None:
            return False  # not a value of ours: the decryption says so
        owner = self.owners.get(header.dek_id)
        if owner is None:
            return False  # a process or bucket key: it names no member
        domain = cast(str, column.domain)  # only encrypted columns get here
        # The member id as the subject column holds it (a UUID from its text, in any case):
        # the reference the key was made under.
        table = column.column.table
        subject = self.subject
        if column.subject is not None and column.subject in table.c:
            subject = _subject_value(table.c[column.subject], subject)
        if subject is None:
            return True  # the id cannot even be one of this column's members
        ref = self.refs.get(f"{domain}\x00{subject!r}")
        if ref is None:
            ref = self.vault.subject_ref(domain, subject)
            self.refs[f"{domain}\x00{subject!r}"] = ref
        return owner != ref

    def _mismatch(self, entry: LinkedTable, column: ExportedColumn | None, detail: str) -> None:
        name = column.name if column is not None else None
        if (entry.name, name) in self.mismatched:
            return
        self.mismatched.add((entry.name, name))
        domain = column.domain if column is not None else None
        self.incomplete.append(
            _source_row(entry.name, "subject_mismatch", column=name, domain=domain, detail=detail)
        )

    def _open(
        self, column: ExportedColumn, blob: Any, values: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any] | None]:
        if blob is None:
            return None, None
        row = values[column.row_key] if column.row_key is not None else None
        try:
            return column.encrypted_type.decrypt_value(
                bytes(blob), row=row, on_erased="raise"
            ), None
        except ValueErasedError as exc:
            return None, self._erased(exc, bytes(blob))
        except DecryptionError:
            # Tampered or corrupt (a database writer's edit): that cell is not given, the rest is.
            if (column.column.table.name, column.name) not in self.unreadable:
                self.unreadable.add((column.column.table.name, column.name))
                self.incomplete.append(
                    _source_row(
                        _qualified(column.column.table),
                        "value_unreadable",
                        column=column.name,
                        domain=column.domain,
                        detail="a stored value failed to authenticate",
                    )
                )
            return None, {"status": "withheld", "reason": "unreadable"}

    def _erased(self, exc: ValueErasedError, blob: bytes) -> dict[str, Any]:
        header = _header(blob)
        dek_id = exc.dek_id or (header.dek_id if header is not None else None)
        reason = _ERASED_REASONS.get(exc.reason, "key_destroyed")
        on: str | None = None
        if dek_id is not None:
            known = self.erased_keys.get(dek_id)
            if known is None:
                record = self.vault.store.get(dek_id)
                when = None
                if record is not None:
                    when = record.destroyed_at
                    if reason == "retention_expired" and record.destroy_at is not None:
                        when = record.destroy_at if when is None else min(when, record.destroy_at)
                known = (reason, when.date().isoformat() if when is not None else None)
                self.erased_keys[dek_id] = known
            on = known[1]
        return {"status": "erased", "reason": reason, "on": on}

    def _filters(self, entry: LinkedTable, subject: Any) -> list[sa.ColumnElement[bool]] | None:
        table = entry.table
        if entry.kind == "column":
            column = table.c[cast(str, entry.subject_column)]  # set for this kind
            value = _subject_value(column, subject)
            if value is None:
                return None
            return [column == value]
        parent = self.sources.get(cast(str, entry.parent))  # set for the other kinds
        if parent is None or not parent.rows:
            return None
        if entry.kind == "via":
            referenced = cast(str, entry.parent_column)
            keys = list(
                dict.fromkeys(r[referenced] for r in parent.rows if r[referenced] is not None)
            )
            column = table.c[cast(str, entry.via)]
            return [column.in_(batch) for batch in _batches(keys)] or None
        identity = cast(str, entry.identity).rpartition(".")[2]
        values: list[Any] = []
        unreadable = 0
        for row, marks in zip(parent.rows, parent.marks, strict=True):
            if identity in marks:
                unreadable += 1
            elif row.get(identity) is not None:
                values.append(row[identity])
            elif identity not in row:
                unreadable += 1
        if unreadable and not values:
            self.incomplete.append(
                _source_row(
                    entry.name,
                    "identity_unreadable",
                    detail=f"{entry.identity} could not be read to match {entry.match}",
                )
            )
        values = list(dict.fromkeys(values))
        if not values:
            return None
        column = table.c[cast(str, entry.match)]
        normalize = getattr(column.type, "normalize", None) or (lambda v: v)
        self.matched[entry.name] = [normalize(v) for v in values]
        return [column.in_(batch) for batch in _batches(values)]

    def _exists(self, table: sa.Table) -> bool:
        try:
            return bool(sa.inspect(self.connection).has_table(table.name, schema=table.schema))
        except sa.exc.SQLAlchemyError:
            return True  # unknown: reported as the database error it was

    def _execute(self, statement: sa.Select[Any]) -> Iterable[Any]:
        conn = self.connection
        if conn.dialect.name == "sqlite":
            return conn.execute(statement).all()
        if self.owned:
            # The export's own connection (an Engine given): no caller's transaction to keep, so
            # no savepoint (two round trips more per table); a failed read rolls back instead.
            try:
                return conn.execute(statement).all()
            except sa.exc.SQLAlchemyError:
                if conn.in_transaction():
                    conn.rollback()
                raise
        # On a server, a failed statement aborts the transaction: each read goes in a savepoint,
        # so that the other tables are still read and the caller's transaction stays usable.
        if not conn.in_transaction():
            conn.begin()  # what the first execute would begin anyway
        with conn.begin_nested():
            return conn.execute(statement).all()


def _order_key(values: Iterable[Any]) -> tuple[Any, ...]:
    """A primary key as a sort key: an enum by its value, a type that does not order by its
    text (one table's key columns hold one type each, so the keys compare)."""
    key: list[Any] = []
    for value in values:
        if isinstance(value, enum.Enum):
            value = value.value
        if not isinstance(value, int | float | decimal.Decimal | str | bytes | dt.date | uuid.UUID):
            value = str(value)
        key.append(value)
    return tuple(key)


def _is_aware(column: sa.Column[Any]) -> bool:
    """Whether ``column`` holds instants (``DateTime(timezone=True)``, plain or encrypted)."""
    column_type = column.type
    inner = column_type.inner if isinstance(column_type, Encrypted) else column_type
    return isinstance(inner, sa.DateTime) and bool(inner.timezone)


def _utc(value: dt.datetime) -> dt.datetime:
    """An instant in UTC with its offset (``+00:00``). A naive value of a
    ``DateTime(timezone=True)`` column is taken as UTC: SQLite and MariaDB keep no offset (they
    store the wall-clock time they were given, so instants are written in UTC)."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _qualified(table: sa.Table) -> str:
    return table.name if table.schema is None else f"{table.schema}.{table.name}"


def _header(blob: bytes) -> wire.ValueHeader | None:
    try:
        return wire.parse_value(blob)
    except DecryptionError:
        return None


def _batches(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), BATCH):
        yield list(values[start : start + BATCH])


def _subject_value(column: sa.Column[Any], subject: Any) -> Any:
    """The subject as the member-id column's type takes it (a UUID from its text, an int from
    its digits), or ``None`` when it cannot be one (then no row can belong to it)."""
    try:
        python = column.type.python_type
    except NotImplementedError:
        return subject
    if isinstance(subject, python):
        return subject
    try:
        if python is uuid.UUID:
            return uuid.UUID(str(subject))
        if python is int and isinstance(subject, str):
            return int(subject) if subject.strip().lstrip("-").isdigit() else None
        if python is str:
            return str(subject)
    except ValueError:
        return None
    return subject


def _same(column: sa.Column[Any], stored: Any, wanted: Any) -> bool:
    """Whether a member-id cell as read holds ``wanted`` (a fixed-length ``CHAR`` comes back
    padded with spaces on PostgreSQL)."""
    if isinstance(stored, str) and isinstance(wanted, str) and isinstance(column.type, sa.CHAR):
        return stored.rstrip(" ") == wanted.rstrip(" ")
    return bool(stored == wanted)


def _source_row(
    table: str,
    reason: str,
    *,
    column: str | None = None,
    domain: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    return {"table": table, "column": column, "domain": domain, "reason": reason, "detail": detail}


# -- the document -----------------------------------------------------------------------------


def _model(entry: LinkedTable, columns: Sequence[ExportedColumn]) -> dict[str, Any]:
    return {
        "key": list(entry.key),
        "links": {
            name: (
                f"{entry.parent}.{entry.parent_column}"
                if name == entry.via
                else "member id"
                if name == entry.subject_column
                else "subject key"
            )
            for name in entry.links
        },
        "columns": {
            c.name: {
                "type": c.type_name,
                "value_type": _value_type(c),
                "nullable": c.nullable,
                "encrypted": (
                    None
                    if c.domain is None
                    else {"domain": c.domain, "subject": c.subject, "row_key": c.row_key}
                ),
                "label": c.label,
                "category": c.personal.category,
                "provenance": c.personal.provenance,
            }
            for c in columns
        },
    }


def _link(entry: LinkedTable) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "parent": entry.parent,
        "column": entry.subject_column or entry.via or entry.match,
        "identity": entry.identity,
    }


def _art15(subjects: SubjectMap) -> dict[str, Any]:
    categories: dict[str, dict[str, Any]] = {}
    automated = False
    for entry in subjects.tables:
        for column in entry.columns:
            p = column.personal
            item = categories.setdefault(
                p.category,
                {
                    "category": p.category,
                    "purposes": [],
                    "legal_bases": [],
                    "recipients": [],
                    "retention": [],
                    "provenance": [],
                    "sources": [],
                    "automated_decision": False,
                    "columns": [],
                },
            )
            for key, values in (
                ("purposes", (p.purpose,)),
                ("legal_bases", (p.legal_basis,)),
                ("recipients", p.recipients),
                ("retention", (p.retention,) if p.retention else ()),
                ("provenance", (p.provenance,)),
                ("sources", (p.source,) if p.source else ()),
                ("columns", (f"{entry.name}.{column.name}",)),
            ):
                for value in values:
                    if value not in item[key]:
                        item[key].append(value)
            if p.automated_decision:
                item["automated_decision"] = True
                automated = True
    return {
        "categories": list(categories.values()),
        "automated_decisions": automated,
        "rights": [{"right": r, "article": a, "text": t} for r, a, t in RIGHTS],
    }


def _row(
    entry: LinkedTable,
    values: Mapping[str, Any],
    marks: Mapping[str, dict[str, Any]],
    columns: Sequence[ExportedColumn],
) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for name in (*entry.key, *entry.links, *(c.name for c in columns if c.name not in marks)):
        try:
            given[name] = jsonable(values.get(name))
        except TypeError as exc:  # name the column, never the value
            raise TypeError(f"{entry.name}.{name}: {exc}") from None
    return {
        "key": {name: given[name] for name in entry.key},
        "links": {name: given[name] for name in entry.links},
        "values": {c.name: given[c.name] for c in columns if c.name not in marks},
        "marks": {name: dict(mark) for name, mark in marks.items()},
    }


def _document(
    reader: _Reader,
    subjects: SubjectMap,
    *,
    kind: str,
    request_id: str | None,
    part: str,
) -> dict[str, Any]:
    tables: list[dict[str, Any]] = []
    restricted_domains: set[str] = set()
    for entry in subjects.tables:
        source = reader.sources[entry.name]
        columns = reader.exported(entry)
        if reader.split:
            if part == "restricted":
                columns = [c for c in columns if reader.restricted(c)]
                if not columns:
                    continue
            else:
                restricted_domains.update(
                    c.domain for c in columns if c.domain and reader.restricted(c)
                )
        rows = []
        for values, marks in zip(source.rows, source.marks, strict=True):
            marks = dict(marks)
            if reader.split and part == "main":
                # Whatever the restricted part says of a cell (a value, erased, not read), the
                # main part only points there.
                for c in columns:
                    if reader.restricted(c):
                        marks[c.name] = {"status": "separate", "part": "restricted"}
            elif part == "restricted":
                marks = {n: m for n, m in marks.items() if any(c.name == n for c in columns)}
            rows.append(_row(entry, values, marks, columns))
        tables.append(
            {
                "table": entry.name,
                "title": entry.title,
                "link": _link(entry),
                "model": _model(entry, columns),
                "rows": rows,
            }
        )
    if part == "restricted":
        incomplete = [s for s in reader.incomplete if s["domain"] and _is_restricted(reader, s)]
    elif reader.split:
        incomplete = [
            s for s in reader.incomplete if not (s["domain"] and _is_restricted(reader, s))
        ]
    else:
        incomplete = list(reader.incomplete)
    found = any(t["rows"] for t in tables)
    data: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "kind": kind,
        "part": part,
        "generated_at": reader.at.isoformat(),
        "request_id": request_id,
        "status": "incomplete" if incomplete else "complete",
        "note": None if found or part == "restricted" else NO_DATA_NOTE,
        "tables": tables,
        "incomplete_sources": incomplete,
        "restricted_part": None,
    }
    if part == "main" and reader.split and restricted_domains:
        data["restricted_part"] = {
            "domains": sorted(restricted_domains),
            "delivery": "separately, through the medical adviser",
        }
    if kind == "access":
        data["art15"] = _art15(subjects)
    return data


def _is_restricted(reader: _Reader, source: Mapping[str, Any]) -> bool:
    domain = reader.vault.key_domain(str(source["domain"]))
    return domain is None or domain.restricted


# -- the entry point --------------------------------------------------------------------------


def _connection(session: Any) -> tuple[sa.Connection, bool]:
    """The connection to read with, and whether it was opened here (and is closed here)."""
    if isinstance(session, sa.Connection):
        return session, False
    if isinstance(session, sa.Engine):
        return session.connect(), True
    connection = getattr(session, "connection", None)
    if callable(connection):
        conn = connection()
        if isinstance(conn, sa.Connection):
            return conn, False
    raise TypeError(
        f"export_subject reads through a Session, a Connection or an Engine, not "
        f"{type(session).__name__}"
    )


def _check_request_id(request_id: str | None) -> str | None:
    if request_id is None:
        return None
    if not isinstance(request_id, str):
        raise TypeError(f"request_id must be str, not {type(request_id).__name__}")
    if not request_id.strip() or len(request_id) > 200 or not request_id.isprintable():
        raise ConfigurationError("request_id must be 1 to 200 printable characters")
    kind = looks_personal(request_id)
    if kind is not None:
        raise ConfigurationError(
            f"request_id seems to hold {kind}; it is written into the export and the audit "
            "log, which name no person: use a ticket or case number"
        )
    return request_id


def _check_columns(vault: Vault, subjects: SubjectMap) -> None:
    from vaultkit.subjects._annotations import PERSONAL_KEY

    for entry in subjects.tables:
        # A column added to a mapped table after the map was built (a module imported late):
        # the map would export around it without a word.
        known = {c.name for c in entry.columns}
        for table_column in entry.table.columns:
            where = f"{entry.name}.{table_column.name}"
            if table_column.name in known or where in subjects.not_personal:
                continue
            if isinstance(table_column.type, Encrypted) or PERSONAL_KEY in table_column.info:
                raise ConfigurationError(
                    f"{where} is not in the subject map (added after collect()?): build the "
                    "map again once every model is imported"
                )
        for column in entry.columns:
            column_type = column.column.type
            if not isinstance(column_type, Encrypted):
                continue
            try:
                configured = get_vault(column_type.vault)
            except ConfigurationError:
                configured = None
            if configured is not vault:
                raise ConfigurationError(
                    f"{entry.name}.{column.name} is read through the vault configured as "
                    f"{column_type.vault!r} (vaultkit.sqla.configure), and that is not the vault "
                    "exporting: configure this vault for the models first"
                )
            if vault.key_domain(column_type.domain) is None:
                raise ConfigurationError(
                    f"{entry.name}.{column.name}: domain {column_type.domain!r} is not declared "
                    "in this vault"
                )


def export_subject(
    vault: Vault,
    session: Any,
    subject: Subject,
    *,
    subjects: SubjectMap,
    kind: ExportKind = "access",
    purpose: str = DEFAULT_PURPOSE,
    request_id: str | None = None,
    split_restricted: bool = False,
) -> SubjectExport:
    """Export every annotated value of ``subject`` across the map's tables.

    :meth:`vaultkit.Vault.export_subject` and :func:`vaultkit.subjects.export_subject` hand off
    here (through :meth:`SubjectMap.export`); see there.
    """
    if kind not in KINDS:
        raise ConfigurationError(f'kind is "access" or "portability", not {kind!r}')
    if isinstance(subject, bool) or not isinstance(subject, str | int | uuid.UUID):
        raise TypeError(f"a subject is a str, an int or a UUID, not {type(subject).__name__}")
    if not isinstance(purpose, str) or not purpose:
        raise TypeError("export_subject needs a non-empty purpose")
    request_id = _check_request_id(request_id)
    subject_map = subjects
    _check_columns(vault, subject_map)
    principal = current_scope().principal
    connection, owned = _connection(session)
    reader = _Reader(
        vault,
        connection,
        kind=kind,
        split=bool(split_restricted),
        at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        subject=subject,
        owned=owned,
    )
    try:
        try:
            # The reads are made, and audited, for the request's purpose by the caller's
            # principal.
            with vault.acting_as(principal, purpose=purpose):
                for entry in subject_map.tables:
                    reader.read(entry, subject)
        finally:
            if owned:
                connection.close()
        main = _document(reader, subject_map, kind=kind, request_id=request_id, part="main")
        restricted = None
        if split_restricted:
            restricted = SubjectExport(
                _document(reader, subject_map, kind=kind, request_id=request_id, part="restricted")
            )
    except BaseException as exc:
        # Error reporters capture frame locals: no frame of the failed export keeps the rows.
        reader.sources.clear()
        traceback.clear_frames(exc.__traceback__)
        raise
    return SubjectExport(main, restricted=restricted)
