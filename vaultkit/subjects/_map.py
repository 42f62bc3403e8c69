"""The subject map: which tables hold a member's data, how their rows reach the member, and what
each exported column is. Built and checked once, at start-up, by :func:`collect`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from vaultkit.errors import ConfigurationError
from vaultkit.sqla import BlindIndexType, Encrypted, token_indexes
from vaultkit.subjects._annotations import (
    LINK_KEY,
    NOT_PERSONAL_KEY,
    PERSONAL_KEY,
    NotPersonal,
    Personal,
    SubjectLink,
)
from vaultkit.subjects._export import export_subject
from vaultkit.subjects._import import ImportReport, import_subject

if TYPE_CHECKING:
    from vaultkit import Subject, Vault
    from vaultkit.subjects._export import SubjectExport

__all__ = ["ExportedColumn", "LinkedTable", "SubjectMap", "collect"]


def _qualified(table: sa.Table) -> str:
    return table.name if table.schema is None else f"{table.schema}.{table.name}"


def _title(name: str) -> str:
    words = re.sub(r"[_\-.]+", " ", name).strip()
    return words[:1].upper() + words[1:] if words else name


def _type_name(column_type: sa.types.TypeEngine[Any]) -> str:
    try:
        return str(column_type.compile(dialect=sa.engine.default.DefaultDialect()))
    except Exception:  # a dialect-specific type the generic compiler cannot render
        return type(column_type).__name__.upper()


@dataclass(frozen=True, slots=True)
class ExportedColumn:
    """One annotated column of a linked table: exported, with its annotation and model facts.

    Attributes:
        name: the column's name.
        personal: its :class:`~vaultkit.subjects.Personal` annotation.
        type_name: its SQL type (the inner type of an encrypted column), such as ``VARCHAR(320)``.
        domain: the key domain of an encrypted column, else ``None``.
        subject: the ``subject=`` column of a subject-scoped encrypted column, else ``None``.
        row_key: the ``row_key=`` column of a row-bound encrypted column, else ``None``.
        nullable: whether the column takes NULL.

    .. versionadded:: 0.3.0
    """

    name: str
    personal: Personal
    type_name: str
    domain: str | None
    subject: str | None
    row_key: str | None
    nullable: bool
    column: sa.Column[Any] = field(repr=False, compare=False)

    @property
    def encrypted(self) -> bool:
        """Whether the column is an ``Encrypted`` one."""
        return self.domain is not None

    @property
    def encrypted_type(self) -> Encrypted:
        """The column's ``Encrypted`` type.

        Raises:
            TypeError: the column is a plain one.
        """
        column_type = self.column.type
        if not isinstance(column_type, Encrypted):
            raise TypeError(f"{self.name} is not an encrypted column")
        return column_type

    @property
    def label(self) -> str:
        """The column's name in plain language."""
        return self.personal.label or _title(self.name)


@dataclass(frozen=True, slots=True)
class LinkedTable:
    """A table whose rows belong to members, as the map resolved its link.

    Attributes:
        name: the table's name (``schema.table`` with a schema).
        table: the SQLAlchemy table.
        kind: ``"column"`` (a root: the member id is in :attr:`subject_column`), ``"via"`` (a
            foreign key, :attr:`via`, to :attr:`parent`) or ``"match"`` (the blind index
            :attr:`match` against :attr:`identity` of :attr:`parent`).
        parent: the linked table this one is reached through (``None`` for a root).
        subject_column: the member-id column of a root.
        via: the foreign-key column of a ``"via"`` table, and :attr:`parent_column` the column
            of the parent it references.
        match, identity: the blind-index column, and the parent's encrypted column it matches.
        columns: the exported (annotated) columns, in table order.
        key: the primary-key columns, and the columns other tables' links reference.
        links: the columns that link the rows (the foreign key or member-id column of the link,
            and the ``subject=`` and ``row_key=`` columns of the exported encrypted columns):
            structural, exported with each row so that it can be written again.
        title: the table's name in plain language.
        depth: the number of links between it and a root.

    .. versionadded:: 0.3.0
    """

    name: str
    table: sa.Table = field(repr=False, compare=False)
    kind: str
    parent: str | None
    subject_column: str | None
    via: str | None
    parent_column: str | None
    match: str | None
    identity: str | None
    columns: tuple[ExportedColumn, ...]
    key: tuple[str, ...]
    links: tuple[str, ...]
    title: str
    depth: int

    def path(self, tables: Mapping[str, LinkedTable]) -> str:
        """The path from this table to a member, such as ``claims.policy_id = policies.id,
        policies.member_id = members.id, members.id is the member id``."""
        return _path_text(self, tables)


def _path_text(entry: LinkedTable, tables: Mapping[str, LinkedTable]) -> str:
    parts: list[str] = []
    current: LinkedTable | None = entry
    while current is not None:
        if current.kind == "column":
            parts.append(f"{current.name}.{current.subject_column} is the member id")
            break
        if current.kind == "via":
            parts.append(f"{current.name}.{current.via} = {current.parent}.{current.parent_column}")
        else:
            parts.append(f"{current.name}.{current.match} matches {current.identity}")
        current = tables.get(current.parent) if current.parent is not None else None
    return ", ".join(parts)


class SubjectMap:
    """The checked map of where members' data lives; made by :func:`collect`.

    Attributes:
        tables: the linked tables, parents first (the order of the export and of an import).
        not_personal: tables and columns declared not personal, with their reasons.
        unannotated: plain columns of linked tables that carry no annotation (never exported).

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_by_name", "not_personal", "tables", "unannotated")

    def __init__(
        self,
        tables: Iterable[LinkedTable],
        *,
        not_personal: Mapping[str, str],
        unannotated: Iterable[str],
    ) -> None:
        self.tables: tuple[LinkedTable, ...] = tuple(tables)
        self._by_name = {t.name: t for t in self.tables}
        self.not_personal: dict[str, str] = dict(not_personal)
        self.unannotated: tuple[str, ...] = tuple(unannotated)

    def __iter__(self) -> Iterator[LinkedTable]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    def table(self, name: str) -> LinkedTable:
        """The linked table ``name``.

        Raises:
            KeyError: no linked table of that name.
        """
        return self._by_name[name]

    def describe(self) -> str:
        """The map as text for the DPO: each table, its path to a member and its exported columns."""
        lines: list[str] = []
        for entry in self.tables:
            lines.append(f"{entry.title} ({entry.name})")
            lines.append(f"  reached by: {entry.path(self._by_name)}")
            for column in entry.columns:
                p = column.personal
                where = f"encrypted, domain {column.domain}" if column.domain else "plain"
                lines.append(
                    f"  - {column.name}: {p.category}, {p.provenance}, {where}; "
                    f"purpose: {p.purpose}; legal basis: {p.legal_basis}; "
                    f"retention: {p.retention or 'not stated'}"
                )
        if self.not_personal:
            lines.append("Not personal:")
            lines.extend(f"  - {name}: {reason}" for name, reason in self.not_personal.items())
        if self.unannotated:
            lines.append("Not exported (no annotation): " + ", ".join(self.unannotated))
        return "\n".join(lines)

    def export(
        self,
        vault: Vault,
        session: Any,
        subject: Subject,
        *,
        kind: str,
        purpose: str,
        request_id: str | None,
        split_restricted: bool,
    ) -> SubjectExport:
        """Export ``subject``'s data; what :meth:`vaultkit.Vault.export_subject` hands off to."""
        return export_subject(
            vault,
            session,
            subject,
            subjects=self,
            kind=kind,  # type: ignore[arg-type]  # checked there
            purpose=purpose,
            request_id=request_id,
            split_restricted=split_restricted,
        )

    def import_subject(self, vault: Vault, session: Any, data: Any) -> ImportReport:
        """Insert a member's export; what :meth:`vaultkit.Vault.import_subject` hands off to."""
        return import_subject(vault, session, data, subjects=self)

    def __repr__(self) -> str:
        return f"SubjectMap(tables={len(self.tables)})"


# -- collect ------------------------------------------------------------------------------------


def _tables_of(target: Any) -> list[sa.Table]:
    metadata = getattr(target, "metadata", target)
    if isinstance(metadata, sa.MetaData):
        return list(metadata.tables.values())  # the map orders parents first itself
    if isinstance(target, sa.Table):
        return [target]
    if isinstance(target, Iterable) and not isinstance(target, str | bytes):
        tables: list[sa.Table] = []
        for item in target:
            table = getattr(item, "__table__", item)
            if not isinstance(table, sa.Table):
                raise TypeError(
                    f"collect takes tables or mapped classes, not {type(item).__name__}"
                )
            tables.append(table)
        return tables
    raise TypeError(
        f"collect takes a MetaData, a declarative base or tables, not {type(target).__name__}"
    )


@dataclass
class _Pending:
    table: sa.Table
    link: SubjectLink
    columns: tuple[ExportedColumn, ...]


def _column_annotations(
    table: sa.Table, name: str, linked: bool
) -> tuple[list[ExportedColumn], list[str], dict[str, str]]:
    exported: list[ExportedColumn] = []
    unannotated: list[str] = []
    not_personal: dict[str, str] = {}
    for column in table.columns:
        where = f"{name}.{column.name}"
        info = column.info
        annotation = info.get(PERSONAL_KEY)
        declared = info.get(NOT_PERSONAL_KEY)
        if annotation is not None and not isinstance(annotation, Personal):
            raise ConfigurationError(f"{where}: info[{PERSONAL_KEY!r}] is not made by personal()")
        if annotation is not None and declared is not None:
            raise ConfigurationError(f"{where} is annotated both personal() and not_personal()")
        column_type = column.type
        if _hidden_encryption(column_type):
            # Encrypted on one dialect only, or inside another type: the map (and the export)
            # would take it for a plain column.
            raise ConfigurationError(
                f"{where}: an Encrypted or BlindIndex type as a dialect variant (with_variant) "
                "or inside another TypeDecorator is not supported by the subject map; use "
                "Encrypted (or a subclass) as the column's type on every dialect"
            )
        if isinstance(column_type, BlindIndexType):
            if annotation is not None:
                raise ConfigurationError(
                    f"{where} is a blind index (a keyed digest, never exported); annotate its "
                    f"source column {column_type.source!r} instead"
                )
            continue
        encrypted = isinstance(column_type, Encrypted)
        if isinstance(declared, NotPersonal):
            not_personal[where] = declared.reason
            continue
        if annotation is None:
            if encrypted and linked:
                raise ConfigurationError(
                    f"{where} is encrypted but not annotated: every encrypted column of a linked "
                    "table says what it holds, with info=personal(...) or "
                    "info=not_personal(reason) (no silent gap in an export)"
                )
            if encrypted:
                raise ConfigurationError(
                    f"{where} is encrypted, but {name} has no subject link: declare "
                    '__table_args__ = {"info": subject_link(...)} or mark the table or the column '
                    "not_personal(reason) (no silent gap in an export)"
                )
            if linked:
                unannotated.append(where)
            continue
        if not linked:
            raise ConfigurationError(
                f"{where} is annotated personal(), but {name} has no subject link: declare "
                '__table_args__ = {"info": subject_link(...)}'
            )
        if column.primary_key:
            raise ConfigurationError(
                f"{where} is a primary key: it is exported as the row's key, not annotated"
            )
        if isinstance(column_type, Encrypted):
            exported.append(
                ExportedColumn(
                    name=column.name,
                    personal=annotation,
                    type_name=_type_name(column_type.inner),
                    domain=column_type.domain,
                    subject=column_type.subject,
                    row_key=column_type.row_key,
                    nullable=bool(column.nullable),
                    column=column,
                )
            )
        else:
            exported.append(
                ExportedColumn(
                    name=column.name,
                    personal=annotation,
                    type_name=_type_name(column_type),
                    domain=None,
                    subject=None,
                    row_key=None,
                    nullable=bool(column.nullable),
                    column=column,
                )
            )
    return exported, unannotated, not_personal


def _hidden_encryption(column_type: sa.types.TypeEngine[Any]) -> bool:
    """Whether an Encrypted or BlindIndex type hides under ``column_type`` (a dialect variant,
    or the implementation of another ``TypeDecorator``)."""
    seen: list[sa.types.TypeEngine[Any]] = []
    todo = list((getattr(column_type, "_variant_mapping", None) or {}).values())
    if isinstance(column_type, sa.types.TypeDecorator) and not isinstance(
        column_type, Encrypted | BlindIndexType
    ):
        todo.append(column_type.impl_instance)
    while todo:
        inner = todo.pop()
        if any(inner is s for s in seen):
            continue
        seen.append(inner)
        if isinstance(inner, Encrypted | BlindIndexType):
            return True
        todo.extend((getattr(inner, "_variant_mapping", None) or {}).values())
        if isinstance(inner, sa.types.TypeDecorator):
            todo.append(inner.impl_instance)
    return False


def _fk_target(table: sa.Table, name: str, column: sa.Column[Any]) -> sa.Column[Any]:
    keys = list(column.foreign_keys)
    if len(keys) != 1:
        raise ConfigurationError(
            f"{name}.{column.name}: subject_link(via=) names a column with "
            f"{'no' if not keys else 'more than one'} foreign key"
        )
    fk = keys[0]
    if fk.constraint is not None and len(fk.constraint.columns) != 1:
        raise ConfigurationError(
            f"{name}.{column.name}: a foreign key over several columns is not a subject link"
        )
    try:
        return fk.column
    except (sa.exc.NoReferencedTableError, sa.exc.NoReferencedColumnError):
        raise ConfigurationError(
            f"{name}.{column.name} references {fk.target_fullname}, which is not in the metadata"
        ) from None


def _is_token_side_table(table: sa.Table) -> bool:
    """Whether ``table`` is the side table of a TokenIndex (its terms are index digests)."""
    return any(
        index.table is table
        for fk in table.foreign_keys
        for index in token_indexes(fk.column.table)
    )


def _check_unlinked_children(
    tables: Iterable[sa.Table], linked: Mapping[str, Any], not_personal: Mapping[str, str]
) -> None:
    """Refuse a table with no subject link, not marked not personal, that has a foreign key to
    a linked table: its rows hang off a member's (an address, a note, a consent), and the export
    would leave them out without a word, plain columns or encrypted."""
    for table in tables:
        name = _qualified(table)
        if name in linked or name in not_personal or _is_token_side_table(table):
            # A TokenIndex's side table holds index digests of its parent's rows, like a blind
            # index column: never exported, its rows deleted with the member's at erasure.
            continue
        for column in table.columns:
            for fk in column.foreign_keys:
                try:
                    parent = _qualified(fk.column.table)
                except (sa.exc.NoReferencedTableError, sa.exc.NoReferencedColumnError):
                    continue
                if parent not in linked:
                    continue
                raise ConfigurationError(
                    f"{name}.{column.name} is a foreign key to {parent}, a linked table, but "
                    f"{name} has no subject link: its rows would be left out of every export "
                    f'without a word. Declare __table_args__ = {{"info": subject_link(via='
                    f'"{column.name}")}} (and annotate its personal columns with personal(...)), '
                    f'or mark the table {{"info": not_personal(reason)}} if it holds nothing '
                    "about the member"
                )


def collect(target: Any) -> SubjectMap:
    """Build and check the subject map of ``target``'s tables; call it once at start-up.

    Args:
        target: a ``MetaData``, a declarative base, or an iterable of tables or mapped classes.

    Returns:
        The :class:`SubjectMap`, tables parents first.

    Raises:
        ConfigurationError: naming ``table.column``, for an encrypted column in a table with no
            subject link that is not marked :func:`~vaultkit.subjects.not_personal`; an
            unannotated encrypted column of a linked table; a :func:`~vaultkit.subjects.personal`
            column in an unlinked table; a table with a foreign key to a linked table and
            neither a subject link nor ``not_personal()`` (its rows would be left out of every
            export); a link to an unknown or unlinked table or column; a cycle of links; two
            paths from one table to a member (both named).

    .. versionadded:: 0.3.0
    """
    tables = _tables_of(target)
    by_name = {_qualified(t): t for t in tables}
    pending: dict[str, _Pending] = {}
    not_personal: dict[str, str] = {}
    unannotated: list[str] = []
    for table in tables:
        name = _qualified(table)
        link = table.info.get(LINK_KEY)
        declared = table.info.get(NOT_PERSONAL_KEY)
        if link is not None and not isinstance(link, SubjectLink):
            raise ConfigurationError(f"{name}: info[{LINK_KEY!r}] is not made by subject_link()")
        if link is not None and declared is not None:
            raise ConfigurationError(f"{name} has a subject link and is marked not_personal()")
        if isinstance(declared, NotPersonal):
            for column in table.columns:
                if PERSONAL_KEY in column.info:
                    raise ConfigurationError(
                        f"{name}.{column.name} is annotated personal(), but {name} is marked "
                        "not_personal()"
                    )
            not_personal[name] = declared.reason
            continue
        exported, plain, columns_np = _column_annotations(table, name, link is not None)
        not_personal.update(columns_np)
        unannotated.extend(plain)
        if link is not None:
            pending[name] = _Pending(table, link, tuple(exported))

    _check_unlinked_children(tables, pending, not_personal)
    resolved: dict[str, LinkedTable] = {}
    referenced: dict[str, set[str]] = {name: set() for name in pending}

    def resolve(name: str, stack: tuple[str, ...]) -> LinkedTable:
        done = resolved.get(name)
        if done is not None:
            return done
        if name in stack:
            cycle = " -> ".join((*stack[stack.index(name) :], name))
            raise ConfigurationError(f"subject links form a cycle: {cycle}")
        item = pending[name]
        table, link = item.table, item.link
        stack = (*stack, name)

        def linked_target(column: sa.Column[Any], what: str) -> str:
            target_column = _fk_target(table, name, column)
            parent = _qualified(target_column.table)
            if parent not in pending:
                state = "not in the metadata" if parent not in by_name else "not linked"
                raise ConfigurationError(
                    f"{name}.{column.name}: {what} leads to {parent}, which is {state}: give "
                    f"{parent} a subject_link(...)"
                )
            return parent

        def own(column_name: str | None, what: str) -> sa.Column[Any]:
            column = table.columns.get(column_name) if column_name else None
            if column is None:
                raise ConfigurationError(
                    f"{name}: subject_link({what}={column_name!r}) names no column of {name}"
                )
            return column

        for ignored in link.ignore:
            own(ignored, "ignore")
        # Every foreign key of this table to a linked table is a path to a member.
        paths: dict[str, str] = {}
        for column in table.columns:
            if column.name in link.ignore:
                continue
            for fk in column.foreign_keys:
                try:
                    parent_table = fk.column.table
                except (sa.exc.NoReferencedTableError, sa.exc.NoReferencedColumnError):
                    continue
                parent = _qualified(parent_table)
                if parent in pending and parent != name:
                    paths[column.name] = parent

        subject_column = via = parent_column = match = identity = None
        parent_name: str | None = None
        links: tuple[str, ...] = ()
        kind = link.kind
        if kind == "column":
            column = own(link.column, "column")
            if isinstance(column.type, Encrypted | BlindIndexType):
                raise ConfigurationError(
                    f"{name}.{column.name}: the member-id column of a subject link is a plain "
                    "column, not an encrypted one or a blind index"
                )
            subject_column = column.name
            others = {c: p for c, p in paths.items() if c != column.name}
            chosen = f"{name}.{column.name} (member id)"
        elif kind == "match":
            column = own(link.match, "match")
            if not isinstance(column.type, BlindIndexType):
                raise ConfigurationError(
                    f"{name}.{column.name}: subject_link(match=) names a blind-index column "
                    "(BlindIndex), and this is not one"
                )
            parent_name, _, identity_column = (link.identity or "").rpartition(".")
            if parent_name not in pending:
                state = "not in the metadata" if parent_name not in by_name else "not linked"
                raise ConfigurationError(
                    f"{name}: subject_link(identity={link.identity!r}) names table "
                    f"{parent_name!r}, which is {state}"
                )
            parent_item = pending[parent_name]
            identity_col = parent_item.table.columns.get(identity_column)
            if identity_col is None or not isinstance(identity_col.type, Encrypted):
                raise ConfigurationError(
                    f"{name}: subject_link(identity={link.identity!r}) names no encrypted "
                    f"column of {parent_name}"
                )
            if not any(c.name == identity_column for c in parent_item.columns):
                raise ConfigurationError(
                    f"{name}: subject_link(identity={link.identity!r}) names a column that is "
                    "not annotated personal()"
                )
            match, identity = column.name, link.identity
            others = dict(paths)
            chosen = f"{name}.{column.name} ~ {link.identity}"
        else:
            if kind == "follow":
                if not paths:
                    raise ConfigurationError(
                        f"{name}: subject_link() follows the table's foreign keys to linked "
                        "tables, and it has none: give column=, via= or match="
                    )
                if len(paths) > 1:
                    first, second = sorted(paths)[:2]
                    raise ConfigurationError(
                        f"{name} has two paths to a member: {name}.{first} -> {paths[first]} and "
                        f"{name}.{second} -> {paths[second]}; choose one with "
                        f'subject_link(via="{first}") and ignore="{second}" if it is not a path'
                    )
                column = table.columns[next(iter(paths))]
            else:
                column = own(link.via, "via")
            parent_name = linked_target(column, "subject_link(via=)")
            via = column.name
            parent_column = _fk_target(table, name, column).name
            links = (via,)
            others = {c: p for c, p in paths.items() if c != column.name}
            chosen = f"{name}.{via} -> {parent_name}"
        if others:
            other = sorted(others)[0]
            raise ConfigurationError(
                f"{name} has two paths to a member: {chosen} and {name}.{other} -> "
                f"{others[other]}; keep one, or declare subject_link(..., ignore=({other!r},)) "
                "if that foreign key does not lead to the row's member"
            )
        key = tuple(c.name for c in table.primary_key.columns)
        if not key:
            raise ConfigurationError(
                f"{name} has no primary key: the rows of an export are identified by it"
            )
        if subject_column is not None and subject_column not in key:
            links = (subject_column,)
        # The columns every exported value needs to be written again: its subject and row key.
        needed = [c.subject or "" for c in item.columns] + [c.row_key or "" for c in item.columns]
        links += tuple(n for n in dict.fromkeys(needed) if n and n not in key and n not in links)
        depth = 0
        if parent_name is not None:
            parent_entry = resolve(parent_name, stack)
            depth = parent_entry.depth + 1
            if parent_column is not None:
                referenced[parent_name].add(parent_column)
        entry = LinkedTable(
            name=name,
            table=table,
            kind="via" if kind == "follow" else kind,
            parent=parent_name,
            subject_column=subject_column,
            via=via,
            parent_column=parent_column,
            match=match,
            identity=identity,
            columns=item.columns,
            key=key,
            links=links,
            title=link.title or _title(table.name),
            depth=depth,
        )
        resolved[name] = entry
        return entry

    for name in pending:
        resolve(name, ())
    # Add the columns children reference to each parent's key (needed to rebuild the rows), and
    # order parents first, keeping the metadata's order among equals.
    ordered: list[LinkedTable] = []
    placed: set[str] = set()

    def place(entry: LinkedTable) -> None:
        if entry.name in placed:
            return
        if entry.parent is not None:
            place(resolved[entry.parent])
        extra = tuple(sorted(referenced[entry.name] - set(entry.key)))
        if extra:
            entry = _replace_key(entry, entry.key + extra)
        placed.add(entry.name)
        ordered.append(entry)

    for name in pending:
        place(resolved[name])
    structural = {f"{e.name}.{c}" for e in ordered for c in (*e.key, *e.links)}
    unannotated = [name for name in unannotated if name not in structural]
    return SubjectMap(ordered, not_personal=not_personal, unannotated=unannotated)


def _replace_key(entry: LinkedTable, key: tuple[str, ...]) -> LinkedTable:
    import dataclasses

    return dataclasses.replace(entry, key=key)
