"""Statement and ORM hooks that give row-bound columns their row keys, subject-scoped columns their
subjects, and keep blind indexes in sync.

A column type sees one value at a time, never its row. Two hooks fill the gap, with cost per
statement and per row, never per query plan:

* ``before_execute`` on every engine: for an INSERT or UPDATE of a table with row-bound,
  subject-scoped or blind-indexed columns, each parameter set gets its row key (filled from the key
  column's Python default when the application left it unset, as the insert would have), each
  row-bound or subject-scoped value is wrapped with its row key and subject (:class:`RowBound`),
  and each blind index receives its source value. An UPDATE that moves rows to another subject
  without rewriting their subject-scoped values is refused. It also refuses ``ORDER BY`` on an
  encrypted column.
* ``load`` and ``refresh`` on mapped classes: row-bound values of a loaded entity are decrypted with
  the entity's own row key. ``before_update``: a subject-scoped value changed alone is given the
  entity's subject, and all of them are rewritten when the subject changes.

At definition time, a column event records table and column names on the types and refuses
indexes, unique constraints and primary keys on encrypted columns.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
import weakref
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.cursor import FullyBufferedCursorFetchStrategy
from sqlalchemy.ext.mutable import Mutable
from sqlalchemy.orm import (
    InstanceState,
    LoaderCallableStatus,
    Mapper,
    ORMExecuteState,
    Session,
    attributes,
)
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.orm.attributes import InstrumentedAttribute
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.selectable import Select

from vaultkit._access import SealedValue, current_scope
from vaultkit._offload import call as _call
from vaultkit._offload import in_greenlet
from vaultkit.core import wire
from vaultkit.errors import (
    AccessDeniedError,
    AuditError,
    ConfigurationError,
    QueryError,
    VaultkitError,
)
from vaultkit.sqla import _registry
from vaultkit.sqla._exact import frozen_rows
from vaultkit.sqla.types import (
    CELL_KEY,
    UNKNOWN,
    BlindIndexType,
    Encrypted,
    EncryptedCell,
    Parts,
    Pending,
    RowBound,
    cell_of,
    orm_cells,
)


@dataclass(frozen=True)
class _TablePlan:
    """What the write hook must do for one table."""

    #: Columns with a row key or a subject: (column key, row-key column key, subject column key).
    bound: tuple[tuple[str, str | None, str | None], ...]
    #: (index column key, source column keys, whether the index takes its sources as Parts).
    indexes: tuple[tuple[str, tuple[str, ...], bool], ...]
    row_keys: dict[str, sa.Column[Any]]  # row-key column key -> column
    #: Subject column key -> the keys of the columns encrypted under that subject's keys.
    subjects: dict[str, tuple[str, ...]]
    subject_columns: dict[str, sa.Column[Any]]  # subject column key -> column


_plans: weakref.WeakKeyDictionary[sa.Table, _TablePlan | None] = weakref.WeakKeyDictionary()


def _row_key_column(table: Any, column: sa.Column[Any]) -> sa.Column[Any]:
    """Return the column that ``column``'s row key names, or explain that there is none."""
    row_key = column.type.row_key if isinstance(column.type, Encrypted) else None
    key_column = table.columns.get(row_key) if row_key is not None else None
    if key_column is None:
        raise ConfigurationError(
            f"{table.name}.{column.name} is bound to row key {row_key!r}, which is not a column "
            f"of {table.name}"
        )
    return key_column  # type: ignore[no-any-return]


def _subject_column(table: Any, column: sa.Column[Any]) -> sa.Column[Any]:
    """Return the column that ``column``'s ``subject=`` names, or explain why it cannot serve."""
    subject = column.type.subject if isinstance(column.type, Encrypted) else None
    subject_column = table.columns.get(subject) if subject is not None else None
    if subject_column is None:
        raise ConfigurationError(
            f"{table.name}.{column.name} names subject column {subject!r}, which is not a column "
            f"of {table.name}"
        )
    if isinstance(subject_column.type, Encrypted | BlindIndexType):
        raise ConfigurationError(
            f"{table.name}.{column.name}: its subject column {subject!r} is itself encrypted or a "
            "blind index; the subject is a plain column (a member id), known at every write and "
            "searchable when the subject is erased"
        )
    return subject_column  # type: ignore[no-any-return]


def _plan(table: Any) -> _TablePlan | None:
    if not isinstance(table, sa.Table):
        return None
    try:
        return _plans[table]
    except KeyError:
        pass
    row_keys: dict[str, sa.Column[Any]] = {}
    bound: list[tuple[str, str | None, str | None]] = []
    subjects: dict[str, list[str]] = {}
    subject_columns: dict[str, sa.Column[Any]] = {}
    indexes = []
    for column in table.columns:
        if isinstance(column.type, Encrypted) and (
            column.type.row_key is not None or column.type.subject is not None
        ):
            row_key: str | None = None
            subject_key: str | None = None
            if column.type.row_key is not None:
                key_column = _row_key_column(table, column)
                row_keys[key_column.key] = key_column
                row_key = key_column.key
            if column.type.subject is not None:
                subject_column = _subject_column(table, column)
                subject_key = subject_column.key
                subject_columns[subject_key] = subject_column
                subjects.setdefault(subject_key, []).append(column.key)
            bound.append((column.key, row_key, subject_key))
        elif isinstance(column.type, BlindIndexType):
            keys = []
            for name in column.type.sources:
                source = table.columns.get(name)
                if source is None:
                    raise ConfigurationError(
                        f"blind index {table.name}.{column.name} names source {name!r}, "
                        f"which is not a column of {table.name}"
                    )
                keys.append(source.key)
            indexes.append((column.key, tuple(keys), column.type.takes_parts))
    plan = (
        _TablePlan(
            tuple(bound),
            tuple(indexes),
            row_keys,
            {key: tuple(columns) for key, columns in subjects.items()},
            subject_columns,
        )
        if (bound or indexes)
        else None
    )
    _plans[table] = plan
    return plan


# -- definition time ----------------------------------------------------------------------------


@event.listens_for(sa.Column, "after_parent_attach")
def _column_attached(column: sa.Column[Any], table: Any) -> None:
    if not isinstance(table, sa.Table):
        return
    column_type = column.type
    if isinstance(column_type, Encrypted):
        if column.primary_key or column.index or column.unique:
            what = (
                "a primary key" if column.primary_key else "indexed" if column.index else "unique"
            )
            raise QueryError(
                f"{table.name}.{column.name} is encrypted and cannot be {what}: its ciphertexts are "
                "random; index a BlindIndex column instead"
            )
        # The schema is part of the binding: the same type in a table of another schema is a copy.
        where = (table.name, column.name, table.schema)
        if column_type._attached is not None and column_type._attached != where:
            column_type = column_type.copy()
            column.type = column_type
        column_type._attach(*where)
        _sensitive_keys.add(column.key)
    elif isinstance(column_type, BlindIndexType):
        if column_type._attached is not None and column_type._attached[0] != table.name:
            column_type = column_type.copy()
            column.type = column_type
        # The source column may be attached later (Alembic builds tables column by column): the
        # domain is resolved from it on first use.
        column_type._attach(table, column.name)
        _sensitive_keys.add(column.key)
    _plans.pop(table, None)


@event.listens_for(sa.Index, "after_parent_attach")
def _index_attached(index: sa.Index, table: Any) -> None:
    for column in index.columns:
        if isinstance(column.type, Encrypted):
            raise QueryError(
                f"index {index.name!r} covers encrypted column {column.name!r}: its ciphertexts are "
                "random; index a BlindIndex column instead"
            )


# -- statements ---------------------------------------------------------------------------------


def _where_binds(statement: Update, columns: dict[str, sa.Column[Any]]) -> dict[str, Any]:
    """Map row-key column keys to the bind parameters a WHERE clause compares them with."""
    found: dict[str, Any] = {}
    where = statement.whereclause
    if where is None:
        return found
    for element in visitors.iterate(where):
        if isinstance(element, sa.BinaryExpression) and element.operator is sa.sql.operators.eq:
            left, right = element.left, element.right
            for col, other in ((left, right), (right, left)):
                if isinstance(col, sa.Column) and isinstance(other, sa.BindParameter):
                    for key, row_key_column in columns.items():
                        if col.shares_lineage(row_key_column):
                            found[key] = other
    return found


def _default_for(column: sa.Column[Any]) -> Any:
    default = column.default
    if default is None or not (
        getattr(default, "is_scalar", False) or getattr(default, "is_callable", False)
    ):
        return None
    if default.is_scalar:
        return default.arg  # type: ignore[attr-defined]
    try:
        # SQLAlchemy wraps a zero-argument callable (uuid.uuid4) to take an execution context.
        return default.arg(None)  # type: ignore[attr-defined]
    except (TypeError, AttributeError):
        return None  # a default that needs the execution context: left to the insert


def _rewrite(
    params: dict[str, Any], plan: _TablePlan, *, insert: bool, where_binds: dict[str, Any]
) -> dict[str, Any]:
    touches = any(c in params for c, _, _ in plan.bound) or any(
        s in params for _, sources, _ in plan.indexes for s in sources
    )
    if not touches and not (insert and plan.bound):
        return params
    out = dict(params)
    if insert:
        # Every parameter set of one executemany must name the same columns, so the row key is
        # filled in for rows whose row-bound values are NULL too.
        for name, key_column in (*plan.row_keys.items(), *plan.subject_columns.items()):
            if out.get(name) is None:
                default = _default_for(key_column)
                if default is not None:
                    out[name] = default

    def known(key: str) -> Any:
        """The value of column ``key`` in this row: None when NULL, UNKNOWN when not written."""
        found = out.get(key)
        if found is not None:
            return found
        if key in where_binds:
            bind = where_binds[key]
            return params.get(bind.key, bind.effective_value)
        return None if key in out else UNKNOWN

    for column_key, row_key, subject_key in plan.bound:
        if column_key not in out:
            continue
        value = out[column_key]
        if value is None or type(value) is RowBound:
            continue
        row = None
        if row_key is not None:
            row = known(row_key)
            if row is None or row is UNKNOWN:
                continue  # the column type explains that the row key is missing
        subject = UNKNOWN
        if subject_key is not None:
            subject = _as_stored(plan.subject_columns[subject_key], known(subject_key))
        out[column_key] = RowBound(value, row, subject=subject)
    for index_key, source_keys, takes_parts in plan.indexes:
        # The index is always derived from its sources; a value given for it directly is ignored.
        if not takes_parts:
            if source_keys[0] in params:
                out[index_key] = params[source_keys[0]]
            continue
        given = [key for key in source_keys if key in params]
        if not given:
            continue
        if len(given) < len(source_keys) and not insert:
            if type(params.get(index_key)) is Parts:
                continue  # the ORM gave the values of the sources it does not write
            missing = ", ".join(key for key in source_keys if key not in params)
            raise QueryError(
                f"this UPDATE writes some sources of the compound index {index_key!r} but not "
                f"{missing}: the index is computed from all of them, which SQL does not have in "
                "plaintext. Write all of them in the statement, or update through the ORM"
            )
        # An INSERT that leaves a source out stores NULL there: the index is NULL too.
        out[index_key] = Parts({key: params.get(key) for key in source_keys})
    return out


def _as_stored(column: sa.Column[Any], value: Any) -> Any:
    """A subject as its column holds it, so that its key is the one the erasure of what the row
    stores finds: a UUID given as text to a ``Uuid`` column is the UUID, a decimal text given to
    an ``Integer`` column the integer (``"017"`` is 17; other text is refused, before anything is
    written), an integer given to a ``String`` column its text.

    Raises:
        ConfigurationError: text that is not a decimal integer, for an ``Integer`` column.
    """
    kind = column.type
    if type(value) is str and isinstance(kind, sa.Uuid) and kind.as_uuid:
        try:
            return uuid.UUID(value)
        except ValueError:
            return value  # the database refuses it, with its own error
    if type(value) is str and isinstance(kind, sa.Integer):
        digits = value[1:] if value[:1] in ("+", "-") else value
        if not (digits.isascii() and digits.isdigit()):
            raise ConfigurationError(  # never the value: it is a member id
                f"the subject column {column.name!r} is an integer column: its subject must "
                "be an int or a decimal text"
            )
        return int(value)
    if type(value) is int and isinstance(kind, sa.String):
        return str(value)
    return value


def _statement_values(statement: Insert | Update) -> dict[str, Any] | None:
    values = getattr(statement, "_values", None)
    if not values:
        return None
    out = {}
    for key, value in values.items():
        name = key if isinstance(key, str) else getattr(key, "key", None)
        if name is None:
            return None
        if isinstance(value, sa.BindParameter):
            out[name] = value.effective_value
        elif not isinstance(value, sa.ClauseElement):
            out[name] = value
        # Other SQL expressions (another column, a function) are computed by the database and
        # written as they are; the application asked for exactly that.
    return out


def _unbound(value: Any) -> bool:
    """Whether ``value`` (of ``statement.values(...)``) is a bind parameter filled per parameter
    set (``bindparam("name")``), whose value the statement does not hold."""
    return isinstance(value, sa.BindParameter) and bool(value.required)


def _refuse_plaintext_binds(statement: Insert | Update) -> None:
    """``values(name=sa.literal("x"))`` (or a bind parameter of another type) on an encrypted
    column: the bind keeps its own type, so the value would be written as plaintext, with no
    encryption. Refused, before anything is written."""
    values = getattr(statement, "_values", None)
    table = statement.table
    if not values or not isinstance(table, sa.Table):
        return
    for key, value in values.items():
        name = key if isinstance(key, str) else getattr(key, "key", None)
        column = table.columns.get(name) if name is not None else None
        if (
            column is not None
            and isinstance(column.type, Encrypted)
            and isinstance(value, sa.BindParameter)
            and not isinstance(value.type, Encrypted | sa.types.NullType)
        ):
            raise QueryError(
                f"{table.name}.{column.name} is set to a bind parameter of type "
                f"{type(value.type).__name__} (sa.literal(), a typed bindparam), which would "
                "write the value unencrypted: give the plain value, or a bindparam without type"
            )


def _refuse_unbound_sources(statement: Insert | Update, plan: Any) -> None:
    """``values(last_name=bindparam("new_name"))`` with an executemany: the index of
    ``last_name`` would be computed from the statement (no value: NULL) while the column gets
    each parameter set's value, leaving the index empty. Refused, before anything is written."""
    values = getattr(statement, "_values", None)
    if not values or not plan.indexes:
        return
    sources = {key for _index, keys, _parts in plan.indexes for key in keys}
    for key, value in values.items():
        name = key if isinstance(key, str) else getattr(key, "key", None)
        if name in sources and _unbound(value):
            raise QueryError(
                f"{_table_name(statement)}.{name} is set to a named bind parameter, whose values "
                "its indexes cannot follow: pass the values under the column's own key "
                f"({name!r}) in the parameter sets instead of .values({name}=bindparam(...))"
            )


def _param_sets(multiparams: Any, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if multiparams:
        yield from multiparams
    else:
        yield params


@event.listens_for(Engine, "before_execute", retval=True)
def _before_execute(
    conn: Any, statement: Any, multiparams: Any, params: Any, execution_options: Any
) -> tuple[Any, Any, Any]:
    if execution_options.get("vaultkit_raw"):
        # The re-keying engine writes finished ciphertexts and index digests itself.
        return statement, multiparams, params
    if isinstance(statement, Insert | Update):
        _refuse_plaintext_binds(statement)
        plan = _plan(statement.table)
        if plan is None:
            return statement, multiparams, params
        insert = isinstance(statement, Insert)
        if getattr(statement, "_multi_values", None) and (plan.bound or plan.indexes):
            raise ConfigurationError(
                f"multi-row VALUES on {_table_name(statement)}, which has row-bound or blind-indexed "
                "columns: pass the rows as a list of parameter dicts instead"
            )
        where_binds = (
            _where_binds(statement, {**plan.row_keys, **plan.subject_columns})
            if isinstance(statement, Update) and plan.bound
            else {}
        )
        _refuse_unbound_sources(statement, plan)
        embedded = _statement_values(statement)
        if isinstance(statement, Update) and plan.subjects:
            _check_subject_change(statement, plan, embedded, multiparams or [params])
        if embedded is not None:
            rewritten = _rewrite(embedded, plan, insert=insert, where_binds=where_binds)
            if rewritten is not embedded:
                changed = {k: v for k, v in rewritten.items() if embedded.get(k, _MISSING) is not v}
                statement = statement.values(**changed)
        if multiparams:
            multiparams = [
                _rewrite(p, plan, insert=insert, where_binds=where_binds) for p in multiparams
            ]
            _prepare_subjects(statement.table, plan, multiparams)
        elif params:
            params = _rewrite(params, plan, insert=insert, where_binds=where_binds)
    elif isinstance(statement, Select):
        for clause in statement._order_by_clauses:
            element = clause
            while hasattr(element, "element") and not isinstance(element, sa.Column):
                element = element.element
            if isinstance(getattr(element, "type", None), Encrypted):
                raise QueryError(
                    f"ORDER BY {getattr(element, 'name', 'an encrypted column')}: the column is "
                    "encrypted with random nonces, so its order is meaningless; sort after decrypting"
                )
    return statement, multiparams, params


#: Distinct subjects of one statement from which their keys are made ahead, in one batch.
_PREPARE_MIN: Final = 2


def _prepare_subjects(table: Any, plan: _TablePlan, param_sets: list[dict[str, Any]]) -> None:
    """Before the values of a multi-row write are sealed: make the missing subject keys of the
    statement's members per subject-scoped domain in one batch (:meth:`Vault.prepare_subjects`),
    instead of one key-store transaction per new member while sealing."""
    if not plan.subjects or len(param_sets) < _PREPARE_MIN:
        return
    wanted: dict[tuple[int, str], tuple[Encrypted, set[Any]]] = {}
    for column_key, _row_key, subject_key in plan.bound:
        if subject_key is None:
            continue
        column_type = table.columns[column_key].type
        if not isinstance(column_type, Encrypted) or column_type.subject is None:
            continue
        found: set[Any] | None = None
        for p in param_sets:
            bound = p.get(column_key)
            if type(bound) is not RowBound or bound.value is None:
                continue
            subject = bound.subject
            if subject is None or subject is UNKNOWN:
                continue  # the column type explains it when sealing
            if found is None:
                slot = (id(column_type._slot), column_type.domain)
                found = wanted.setdefault(slot, (column_type, set()))[1]
            try:
                found.add(column_type._canonical_subject(subject))
            except (ConfigurationError, TypeError):
                continue  # the column type refuses it when sealing
    for column_type, subjects in wanted.values():
        if len(subjects) < _PREPARE_MIN:
            continue
        vault = column_type._slot.get()
        if not column_type.subject_scoped():
            continue  # the column type refuses its subject= when sealing
        try:
            vault.prepare_subjects(column_type.domain, subjects)
        except (TypeError, ValueError):
            continue  # a bad subject: the column type raises its own error when sealing


_MISSING = object()


def _check_subject_change(
    statement: Update, plan: _TablePlan, embedded: dict[str, Any] | None, param_sets: Any
) -> None:
    """Refuse an UPDATE that moves rows to another subject and leaves their values behind.

    A subject-scoped value is encrypted under its subject's key: after the subject column
    changes it would stay under the old subject's key (readable after the new subject's
    erasure, unreadable after the old one's). Rewriting it needs its plaintext, which SQL does not
    have; the statement must write the values too (the ORM does so by itself).
    """
    written = set(embedded or ())
    for subject_key, columns in plan.subjects.items():
        for param_set in param_sets:
            keys = written.union(param_set or ())
            if subject_key in keys and not all(c in keys for c in columns):
                missing = ", ".join(c for c in columns if c not in keys)
                raise ConfigurationError(
                    f"UPDATE of {_table_name(statement)} sets the subject column {subject_key!r} "
                    f"but not {missing}, encrypted under the subject's keys: write those columns "
                    "in the same statement (re-encrypted under the new subject's keys), or update "
                    "through the ORM, which does so"
                )


def _table_name(statement: Insert | Update) -> str:
    return str(getattr(statement.table, "name", statement.table))


# -- errors and logs ---------------------------------------------------------------------------
#
# A failing statement is reported by SQLAlchemy with its parameters: for vaultkit columns those are
# plaintexts when the failure comes before or during the bind processors (another column's
# processor, a value an encrypted column refuses). The failure is reported here instead: vaultkit's
# own errors as they are, SQLAlchemy's with the values of encrypted columns and blind-index sources
# replaced, and the finished frames below the failure (bind processors, parameter processing)
# cleared of their locals. SQLAlchemy's frames that are still running when the error is raised
# (``Connection.execute`` and the ORM flush above it) keep the parameters they were given; see
# docs/sqlalchemy.md.

_REDACTED: Final = "<encrypted column value hidden by vaultkit>"

#: Keys of the parameters that carry plaintext into vaultkit columns: encrypted columns and
#: blind indexes (whose parameter is the source plaintext until the processor digests it).
_sensitive_keys: set[str] = set()


def _redacted(params: Any) -> Any:
    if isinstance(params, dict):
        return {k: (_REDACTED if k in _sensitive_keys else v) for k, v in params.items()}
    if isinstance(params, list | tuple):
        return type(params)(_redacted(p) for p in params)
    return params


def _clear_finished_frames(tb: Any) -> None:
    # Frames still running (the ones that will see the exception next) cannot be cleared and are
    # skipped by traceback.clear_frames; the finished ones, down to the raise, lose their locals.
    traceback.clear_frames(tb)


@event.listens_for(Engine, "handle_error", retval=True)
def _handle_error(context: Any) -> BaseException | None:
    original = context.original_exception
    _clear_finished_frames(original.__traceback__)
    if isinstance(original, VaultkitError):
        return original
    wrapped = context.sqlalchemy_exception
    if wrapped is not None and getattr(wrapped, "params", None) is not None:
        wrapped.params = _redacted(wrapped.params)
    return None


def _result_columns(context: Any) -> Iterator[Any]:
    compiled = getattr(context, "compiled", None)
    for entry in getattr(compiled, "_result_columns", None) or ():
        yield entry[3]


@event.listens_for(Engine, "before_cursor_execute")
def _before_cursor_execute(
    conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool
) -> None:
    logger = getattr(conn.engine, "logger", None)
    if logger is None or not logger.isEnabledFor(logging.DEBUG):
        return
    # SQLAlchemy logs each result row at DEBUG level after the result processors ran, that is
    # after vaultkit decrypted it, whatever hide_parameters says.
    for column_type in _result_columns(context):
        if isinstance(column_type, Encrypted):
            raise ConfigurationError(
                "the SQLAlchemy engine logs result rows (echo='debug', or the sqlalchemy.engine "
                f"logger at DEBUG), and this statement reads the encrypted column "
                f"{column_type._name_or_unknown()}: its decrypted values would be logged. Log "
                "statements only (echo=True, the logger at INFO)"
            )


# -- reads: the keys of a result's subject- and bucket-scoped values, fetched at once --------------
#
# A cold read of N members' values would cost one key-store query per member: each value's key is
# found when the result processor opens it. So, for a SELECT whose result has a column of a
# subject- or bucket-scoped domain, the rows are fetched as soon as the cursor has them (as an ORM
# load does anyway), the DEK ids in those values' headers are read, and the vault preloads them
# (one key-store query per 500 ids, SupportsGetMany) before any value is opened. A SELECT of
# process-scoped columns only is left as it was; so are streams (yield_per, stream_results,
# server-side cursors), whose rows are not all fetched at once.


def _scoped_positions(context: Any) -> tuple[int, list[tuple[int, Any]]] | None:
    """The number of result columns and the positions of those of subject- or bucket-scoped
    domains, with their vaults; ``None`` when the statement has none (or is not a SELECT)."""
    if context.isinsert or context.isupdate or context.isdelete or context.is_text:
        return None
    compiled = getattr(context, "compiled", None)
    columns = getattr(compiled, "_result_columns", None)
    if not columns:
        return None
    found: list[tuple[int, Any]] = []
    for position, entry in enumerate(columns):
        column_type = entry[3]
        if not isinstance(column_type, Encrypted):
            continue
        try:
            vault = column_type._slot.get()
        except ConfigurationError:
            continue  # not configured: the value's own open raises, as it would have
        policy = vault.key_domain(column_type.domain)
        if policy is not None and policy.scoped:
            found.append((position, vault))
    return (len(columns), found) if found else None


@event.listens_for(Engine, "after_cursor_execute")
def _after_cursor_execute(
    conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool
) -> None:
    if context is None or executemany:
        return
    scoped = _scoped_positions(context)
    if scoped is None:
        return
    width, positions = scoped
    options = context.execution_options
    if (
        options.get("stream_results")  # server-side cursors come only with it (or yield_per)
        or options.get("yield_per")
        or cursor.description is None
        or len(cursor.description) != width
    ):
        return
    rows = cursor.fetchall()
    context.cursor_fetch_strategy = FullyBufferedCursorFetchStrategy(
        cursor, cursor.description, rows
    )
    # Per vault, the ids in the order the values come (dict: ordered, no repeats); at most
    # what its cache holds, since the first values are opened first.
    vaults = {id(vault): vault for _position, vault in positions}
    wanted: dict[int, dict[bytes, None]] = {key: {} for key in vaults}
    dek = wire.DEK_ID_SLICE
    starts_like = wire.is_vaultkit_value
    for row in rows:
        for position, vault in positions:
            value = row[position]
            if value is not None and starts_like(value):
                wanted[id(vault)][bytes(value[dek])] = None
    for key, ids in wanted.items():
        vault = vaults[key]
        if len(ids) > 1:
            room = vault.cache_info().max_size
            _call(vault.preload, list(ids)[:room])


# -- ORM: values of restricted and audited domains are opened on access -------------------------
#
# A Session is shared by whoever uses it, and its identity map outlives any ``acting_as`` block.
# So for a column whose domain is restricted or audited, an ORM load never decrypts: the
# attribute holds an EncryptedCell (the ciphertext) in the instance's committed state, and reading
# the attribute decrypts it under the reader's own scope. The vault then applies that reader's
# grants and writes that reader's audit event. What a scope decrypted is cached in the scope itself
# (Scope.opened), keyed by object and attribute and checked against the cell it came from, so
# repeated reads cost a dictionary lookup and a mutable value keeps its identity, while another
# scope, of another principal or of the same one, never sees it.
#
# A value the application assigns is its own until the flush; reading it needs the grant like any
# other. The flush writes its ciphertext and the attribute then holds that ciphertext as a cell.
# Columns of other domains keep the plain fast path: decrypted once, on load.


class _Guard:
    """What the ORM needs to know about one encrypted attribute of one mapped class."""

    __slots__ = ("column_type", "key", "mutable", "row_attr", "subject_attr")

    def __init__(
        self,
        key: str,
        column_type: Encrypted,
        row_attr: str | None,
        mutable: bool,
        subject_attr: str | None = None,
    ):
        self.key = key
        self.column_type = column_type
        self.row_attr = row_attr
        self.mutable = mutable  # sqlalchemy.ext.mutable tracks it: cells travel in containers
        self.subject_attr = subject_attr  # the attribute holding the value's subject

    def row(self, instance: Any) -> Any:
        return getattr(instance, self.row_attr) if self.row_attr is not None else None

    def read(self, instance: Any, value: Any, *, opening_ahead: bool = False) -> Any:
        """What ``instance.<key>`` gives the current scope, for the non-None ``value`` held."""
        column_type = self.column_type
        cell = value if type(value) is EncryptedCell else cell_of(value) if self.mutable else None
        if cell is None:
            # A plaintext: loaded for a domain that is neither restricted nor audited (the fast
            # path), or assigned by the application and not yet flushed (wrapped for a flush
            # that failed, until the session rolls back).
            if type(value) is RowBound:
                value = value.value
            if type(value) is Pending:
                value = value.value
            if (
                column_type.restricted()
                and column_type.domain not in current_scope().principal.grants
            ):
                return column_type.deny(self.row(instance))
            return value
        state = attributes.instance_state(instance)
        scope = current_scope()
        opened = scope.opened if scope.purpose is not None else None
        if opened is not None:
            held = opened.get(state)
            if held is not None:
                hit = held.get(self.key)
                if hit is not None and hit[0] is cell:
                    if type(hit[1]) is not _Raised:
                        return hit[1]
                    if not (opening_ahead and hit[1].error is AuditError):
                        raise hit[1].error(hit[1].message)
                    # An audit write that failed: the next statement tries again.
        try:
            plain = cell.decrypt(row=self.row(instance))
        except (AccessDeniedError, AuditError) as exc:
            if opening_ahead and opened is not None:
                # Opened ahead (asyncio): the access raises the same error without trying
                # again, outside the greenlet, on the loop's thread. A denial is audited once;
                # an audit log that is down does not stall the loop once per value read.
                opened.setdefault(state, {})[self.key] = (cell, _Raised(type(exc), str(exc)))
            raise
        if type(plain) is SealedValue:
            if opening_ahead and opened is not None:
                # Opened ahead of access (asyncio, see _open_ahead): the denial is the scope's
                # answer for this cell, as a decrypted value would be, and is audited once.
                opened.setdefault(state, {})[self.key] = (cell, plain)
            return plain
        if self.mutable and cell is not value and isinstance(value, Mutable):
            # The same Mutable class that sqlalchemy.ext.mutable put around the cell, so that
            # in-place changes flag the attribute (see _modified below).
            tracked: Any = type(value).coerce(self.key, plain)
            tracked._parents[state] = self.key
            plain = tracked
        if opened is not None:
            opened.setdefault(state, {})[self.key] = (cell, plain)
        return plain


class _Raised:
    """What a value opened ahead raised (a denial that raises, an audit write that failed)."""

    __slots__ = ("error", "message")

    def __init__(self, error: type[VaultkitError], message: str) -> None:
        self.error = error
        self.message = message  # the error's own: names principal and domain, never a value


class _GuardedAttribute(InstrumentedAttribute[Any]):
    """The class attribute of an encrypted column: reads go through :meth:`_Guard.read`."""

    __slots__ = ()
    inherit_cache = True
    _vaultkit_guard: _Guard

    def __get__(self, instance: Any, owner: Any) -> Any:
        if instance is None:
            return self
        dict_ = attributes.instance_dict(instance)
        key = self.key
        if key in dict_:
            value = dict_[key]
        else:
            value = self.impl.get(attributes.instance_state(instance), dict_)
        if value is None:
            return None
        return self._vaultkit_guard.read(instance, value)


def _mutable_class(attribute: Any) -> type | None:
    """The ``sqlalchemy.ext.mutable`` class tracking ``attribute``, found among its set listeners.

    ``Mutable.as_mutable`` records the class nowhere but in its listener; the listener is wrapped
    by the attribute events, so look one closure deep. ``None`` when there is none.
    """
    for listener in attribute.dispatch.set:
        fn = listener
        for _ in range(3):
            names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
            cells = getattr(fn, "__closure__", None) or ()
            closure = dict(zip(names, cells, strict=False))
            if getattr(fn, "__module__", "") == "sqlalchemy.ext.mutable" and "cls" in closure:
                found = closure["cls"].cell_contents
                return found if isinstance(found, type) else None
            if "fn" not in closure:
                break
            fn = closure["fn"].cell_contents
    return None


def _in_container(mutable: type | None, cell: EncryptedCell) -> Any:
    # The container sqlalchemy.ext.mutable accepts (it coerces it to its own class on load).
    if mutable is not None and issubclass(mutable, list):
        return [cell]
    return {CELL_KEY: cell}


class _MapperPlan:
    """The encrypted attributes of one mapper, and which of them are row-bound."""

    __slots__ = ("_epoch", "_guarded", "_slots", "guards", "mutables", "row_bound", "subjects")

    def __init__(self, guards: tuple[_Guard, ...]) -> None:
        self.guards = guards
        self.row_bound = tuple(g for g in guards if g.row_attr is not None)
        self.subjects = tuple(g for g in guards if g.subject_attr is not None)
        self.mutables: dict[str, type | None] = {}
        self._slots = tuple({id(g.column_type._slot): g.column_type._slot for g in guards}.values())
        self._epoch = -1
        self._guarded = True

    def any_guarded(self) -> bool:
        """Whether any attribute's domain is restricted or audited (rechecked on reconfiguration)."""
        # Generations only grow, so their sum changes whenever one of them does.
        epoch = sum(slot.generation for slot in self._slots)
        if epoch != self._epoch:
            self._guarded = any(g.column_type.guarded() for g in self.guards)
            self._epoch = epoch
        return self._guarded


_mapper_plans: weakref.WeakKeyDictionary[Mapper[Any], _MapperPlan] = weakref.WeakKeyDictionary()


def _cells_after_load(
    target: Any, plan: _MapperPlan, context: Any, only: Any = None, *, expire: bool = True
) -> None:
    if not plan.row_bound and not plan.any_guarded():
        return  # the fast path: every value was decrypted once, on load
    state_dict = attributes.instance_dict(target)
    stale = []
    for guard in plan.guards:
        key = guard.key
        if only is not None and key not in only:
            continue
        value = state_dict.get(key)
        if value is None:
            continue
        if type(value) is EncryptedCell:
            if guard.column_type.guarded():
                if guard.mutable:
                    mutable = plan.mutables.get(key)
                    if key not in plan.mutables:
                        mutable = plan.mutables[key] = _mutable_class(
                            attributes.manager_of_class(type(target))[key]
                        )
                    state_dict[key] = _in_container(mutable, value)
            elif guard.row_attr is not None:
                attributes.set_committed_value(
                    target, key, value.decrypt(row=getattr(target, guard.row_attr))
                )
        elif expire and guard.column_type.guarded() and cell_of(value) is None:
            # Decrypted outside an entity load that vaultkit saw (a textual statement, a
            # yield_per stream): under whoever ran the query. Drop it; the next read loads the
            # ciphertext again and opens it under the reader's scope.
            stale.append(key)
    if stale:
        state = attributes.instance_state(target)
        session = getattr(context, "session", None)
        if session is not None and state.key is not None:
            session.expire(target, stale)
        elif state.key is not None:
            # An ORM UPDATE's synchronize_session set the statement's plaintext on the object
            # (the refresh event without a query context): expired, the attribute is loaded
            # again as ciphertext and opened under the reader's scope.
            state._expire_attributes(state_dict, stale)
        else:
            for key in stale:
                state_dict.pop(key, None)


def _wrap_pending(target: Any, plan: _MapperPlan, *, insert: bool) -> None:
    if not plan.any_guarded():
        return
    state = attributes.instance_state(target)
    state_dict = state.dict
    for guard in plan.guards:
        key = guard.key
        value = state_dict.get(key)
        bound = value if type(value) is RowBound else None  # given its subject (_bind_subjects)
        if bound is not None:
            value = bound.value
        if value is None or type(value) is Pending or cell_of(value) is not None:
            continue
        if not insert and key not in state.committed_state:
            continue
        if guard.column_type.guarded():
            if bound is not None:
                bound.value = Pending(value)
            else:
                state_dict[key] = Pending(value)


def _cells_after_flush(target: Any, plan: _MapperPlan) -> None:
    if not plan.any_guarded():
        return
    state = attributes.instance_state(target)
    state_dict = state.dict
    scope = current_scope()
    for guard in plan.guards:
        key = guard.key
        pending = state_dict.get(key)
        if type(pending) is not Pending:
            continue
        if pending.ciphertext is None:
            state_dict[key] = pending.value
            continue
        cell = EncryptedCell(guard.column_type, pending.ciphertext)
        value = pending.value
        if guard.mutable and isinstance(value, Mutable):
            # The value keeps tracking its parent; the attribute holds the cell in a container
            # of the value's own Mutable class, as after a load.
            holder: Any = type(value).coerce(key, _in_container(type(value), cell))
            holder._parents[state] = key
            state_dict[key] = holder
        else:
            state_dict[key] = cell
        # The writer reads its own value back without decrypting it again, in this scope only.
        column_type = guard.column_type
        if scope.purpose is not None and (
            not column_type.restricted() or column_type.domain in scope.principal.grants
        ):
            scope.opened.setdefault(state, {})[key] = (cell, value)


def _modified(target: Any, initiator: Any) -> None:
    # flag_modified (also what a Mutable value calls on an in-place change) on an attribute that
    # holds a cell: the value to write is the one this scope opened and changed.
    key = initiator.key
    state = attributes.instance_state(target)
    cell = cell_of(state.dict.get(key))
    if cell is None:
        return
    scope = current_scope()
    held = scope.opened.get(state) if scope.purpose is not None else None
    hit = held.get(key) if held is not None else None
    if hit is not None and hit[0] is cell and type(hit[1]) is not _Raised:
        state.dict[key] = hit[1]


def _guard_attributes(mapper: Mapper[Any]) -> _MapperPlan | None:
    guards = []
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if not (isinstance(column, sa.Column) and isinstance(column.type, Encrypted)):
            continue
        row_attr = None
        if column.type.row_key:
            key_column = _row_key_column(column.table, column)
            row_attr = mapper.get_property_by_column(key_column).key
        subject_attr = None
        if column.type.subject:
            subject_column = _subject_column(column.table, column)
            subject_attr = mapper.get_property_by_column(subject_column).key
        mutable = column.info.get("_ext_mutable_orig_type") is not None
        guard = _Guard(prop.key, column.type, row_attr, mutable, subject_attr)
        guards.append(guard)
        attribute = mapper.class_manager.get(prop.key)
        if type(attribute) is InstrumentedAttribute:
            attribute.__class__ = type(
                f"Guarded_{mapper.class_.__name__}_{prop.key}",
                (_GuardedAttribute,),
                {"__slots__": (), "inherit_cache": True, "_vaultkit_guard": guard},
            )
            event.listen(attribute, "modified", _modified, raw=False)
    if not guards:
        return None
    plan = _MapperPlan(tuple(guards))
    _mapper_plans[mapper] = plan
    return plan


#: The entities an AsyncSession statement loads, while it runs (see _open_ahead): those of its
#: rows and those loaded alongside (joined eager loads), which its rows do not name.
_loaded: ContextVar[list[Any] | None] = ContextVar("vaultkit_loaded", default=None)


def _listen_loads(mapper: Mapper[Any], plan: _MapperPlan) -> None:
    def on_load(target: Any, context: Any) -> None:
        _cells_after_load(target, plan, context)
        loaded = _loaded.get()
        if loaded is not None:
            loaded.append(target)

    def on_refresh(target: Any, context: Any, attrs: Any) -> None:
        _cells_after_load(target, plan, context, attrs)
        loaded = _loaded.get()
        if loaded is not None:
            loaded.append(target)

    def on_refresh_flush(target: Any, context: Any, attrs: Any) -> None:
        _cells_after_load(target, plan, context, attrs, expire=False)

    # Inserted first: sqlalchemy.ext.mutable's own load listener must find the cell already in
    # the container it accepts.
    event.listen(mapper, "load", on_load, raw=False, insert=True)
    event.listen(mapper, "refresh", on_refresh, raw=False, insert=True)
    event.listen(mapper, "refresh_flush", on_refresh_flush, raw=False, insert=True)


def _listen_flushes(mapper: Mapper[Any], plan: _MapperPlan) -> None:
    def before_insert(mapper_: Any, connection: Any, target: Any) -> None:
        _wrap_pending(target, plan, insert=True)

    def before_update(mapper_: Any, connection: Any, target: Any) -> None:
        _wrap_pending(target, plan, insert=False)

    def after_write(mapper_: Any, connection: Any, target: Any) -> None:
        _cells_after_flush(target, plan)

    event.listen(mapper, "before_insert", before_insert)
    event.listen(mapper, "before_update", before_update)
    event.listen(mapper, "after_insert", after_write)
    event.listen(mapper, "after_update", after_write)


# The per-row listeners of a mapper whose domains are neither restricted nor audited would only
# return at once; they are registered when a domain of the mapper is (or may be) guarded: at
# configuration, or later, before the first ORM statement or flush after the vault changed.
_armed: weakref.WeakSet[Mapper[Any]] = weakref.WeakSet()
_loads_listened: weakref.WeakSet[Mapper[Any]] = weakref.WeakSet()
_arm_lock = threading.Lock()
_epoch = -1


def _arm(mapper: Mapper[Any], plan: _MapperPlan) -> None:
    with _arm_lock:
        if mapper in _armed:
            return
        if mapper not in _loads_listened:
            _listen_loads(mapper, plan)
            _loads_listened.add(mapper)
        _listen_flushes(mapper, plan)
        _armed.add(mapper)


def _arm_guarded() -> None:
    global _epoch
    epoch = sum(slot.generation for slot in _registry._slots.values())
    if epoch == _epoch:
        return
    for mapper, plan in list(_mapper_plans.items()):
        if mapper not in _armed and plan.any_guarded():
            _arm(mapper, plan)
    _epoch = epoch


def _listen_index_sources(mapper: Mapper[Any]) -> None:
    """Expire a blind-index attribute when an ORM UPDATE synchronises its source into an object.

    The statement hook derives the index in SQL, out of the ORM's sight; ``synchronize_session``
    would leave the old digest on the object. It reports the attributes it set through the
    refresh event without a query context, the only refresh that comes without one.
    """
    indexes: dict[str, list[str]] = {}
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if isinstance(column, sa.Column) and isinstance(column.type, BlindIndexType):
            for name in column.type.sources:
                source = column.table.columns.get(name)
                if source is None:
                    continue
                try:
                    source_key = mapper.get_property_by_column(source).key
                except orm_exc.UnmappedColumnError:
                    continue  # an unmapped source: nothing to synchronise
                indexes.setdefault(source_key, []).append(prop.key)
    if not indexes:
        return

    def on_refresh(target: Any, context: Any, attrs: Any) -> None:
        if context is not None or not attrs:
            return
        stale = [index for key in attrs for index in indexes.get(key, ())]
        if stale:
            state = attributes.instance_state(target)
            state._expire_attributes(state.dict, stale)

    event.listen(mapper, "refresh", on_refresh, raw=False)


def _bind_subjects(target: Any, plan: _MapperPlan) -> None:
    """Before an ORM UPDATE: give each subject-scoped value being written its subject.

    The ORM's UPDATE names only the changed columns and the primary key, so the statement hook
    would not see the subject of a value changed alone: the value is wrapped with it here
    (:class:`RowBound`, unwrapped after the write). When the subject itself changes, every
    subject-scoped value of the row is read (under the current scope, which needs the grant of a
    restricted domain) and written again, under the new subject's key.
    """
    state = attributes.instance_state(target)
    state_dict = state.dict
    committed = state.committed_state
    for guard in plan.subjects:
        key = guard.key
        subject_attr = guard.subject_attr
        if subject_attr is None:  # not in plan.subjects; for the type checker
            continue
        moved = subject_attr in committed and not _same(
            committed[subject_attr], state_dict.get(subject_attr)
        )
        if moved and key not in committed:
            value = getattr(target, key)  # loaded if need be, opened under the current scope
            if type(value) is SealedValue:
                raise AccessDeniedError(
                    f"{guard.column_type._name_or_unknown()}: moving the row to another subject "
                    "re-encrypts this value under the new subject's key, which needs the grant "
                    f"of domain {guard.column_type.domain!r}"
                )
            state_dict[key] = value
            attributes.flag_modified(target, key)
        elif key not in committed:
            continue
        value = state_dict.get(key)
        if value is None or type(value) is RowBound:
            continue
        row = guard.row(target) if guard.row_attr is not None else None
        state_dict[key] = RowBound(value, row, subject=getattr(target, subject_attr))


def _same(old: Any, new: Any) -> bool:
    if old is LoaderCallableStatus.NO_VALUE:
        return False
    try:
        return bool(old == new)
    except Exception:  # an odd type's comparison: treat it as changed
        return False


def _unbind_subjects(target: Any, plan: _MapperPlan) -> None:
    state_dict = attributes.instance_dict(target)
    for guard in plan.subjects:
        value = state_dict.get(guard.key)
        if type(value) is RowBound:
            state_dict[guard.key] = value.value


def _listen_subjects(mapper: Mapper[Any], plan: _MapperPlan) -> None:
    def before_update(mapper_: Any, connection: Any, target: Any) -> None:
        _bind_subjects(target, plan)

    def after_update(mapper_: Any, connection: Any, target: Any) -> None:
        _unbind_subjects(target, plan)

    # Inserted first: the guarded values' Pending wrapper goes inside (before_update), and is
    # found again by _cells_after_flush once the RowBound is gone (after_update).
    event.listen(mapper, "before_update", before_update, insert=True)
    event.listen(mapper, "after_update", after_update, insert=True)


@event.listens_for(Mapper, "mapper_configured")
def _mapper_configured(mapper: Mapper[Any], class_: type) -> None:
    _listen_index_sources(mapper)
    plan = _guard_attributes(mapper)
    if plan is None:
        return
    if plan.subjects:
        _listen_subjects(mapper, plan)
    if plan.any_guarded():
        _arm(mapper, plan)
    elif plan.row_bound:
        # Row-bound values of other domains are decrypted on load with the entity's row key.
        with _arm_lock:
            _listen_loads(mapper, plan)
            _loads_listened.add(mapper)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    _arm_guarded()


def _loads_guarded_entities(orm_state: ORMExecuteState) -> bool:
    if orm_state.is_column_load or orm_state.is_relationship_load:
        mappers = orm_state.all_mappers
    else:
        mappers = []
        statement = orm_state.statement
        if isinstance(statement, Insert | Update):
            # INSERT/UPDATE ... RETURNING(Member): the entity is returned as its annotated table.
            for returned in statement._returning:
                mapper = returned._annotations.get("parentmapper")
                if mapper is not None and isinstance(returned, sa.FromClause):
                    mappers.append(mapper)
        else:
            # A UNION of ORM selects has no column descriptions of its own: those of its selects.
            selects = getattr(statement, "selects", None) or [statement]
            for select in selects:
                for description in getattr(select, "column_descriptions", ()):
                    entity = description.get("entity")
                    if entity is not None and description.get("expr") is entity:
                        mappers.append(sa.inspect(entity).mapper)
        if not mappers:
            return False
    seen: set[Mapper[Any]] = set()
    todo = list(mappers)
    while todo:
        mapper = todo.pop()
        if mapper in seen:
            continue
        seen.add(mapper)
        plan = _mapper_plans.get(mapper)
        if plan is not None and plan.any_guarded():
            return True
        # Entities loaded alongside (joined eager loads) come through the same rows.
        todo.extend(rel.mapper for rel in mapper.relationships)
        todo.extend(mapper.self_and_descendants)
    return False


@event.listens_for(Session, "do_orm_execute")
def _do_orm_execute(orm_state: ORMExecuteState) -> Any:
    if not orm_state.is_orm_statement or not _mapper_plans:
        return None
    _arm_guarded()
    statement = orm_state.statement
    if not (orm_state.is_select or getattr(statement, "_returning", None)):
        return None
    options = orm_state.execution_options
    if options.get("yield_per") or options.get("stream_results"):
        # A stream is read as it is consumed, outside this call: its guarded values are
        # dropped on load instead (see _cells_after_load) and read again on access.
        return None
    if not _loads_guarded_entities(orm_state):
        return None
    ahead = in_greenlet()
    token = orm_cells.set(True)
    loaded: list[Any] = []
    loading = _loaded.set(loaded) if ahead else None
    try:
        # The rows are fetched, and the entities built, while the flag is set.
        frozen = frozen_rows(orm_state.invoke_statement())
    finally:
        orm_cells.reset(token)
        if loading is not None:
            _loaded.reset(loading)
    if ahead:
        _open_ahead(frozen.data, loaded)
    return frozen()


def _open_ahead(rows: Any, loaded: Iterable[Any] = ()) -> None:
    """Open the guarded values of the entities a statement returned, for the current scope.

    In SQLAlchemy's asyncio greenlet (an ``AsyncSession`` statement), where the vault's key-store
    reads, unwraps and audit writes go to worker threads, awaited on the event loop. The
    attributes are read later in the coroutine, outside the greenlet, where a decrypt could only
    do that I/O on the loop's own thread: blocking every other task and, with SQLite, waiting on
    a read transaction that one of those tasks holds. Opened here, the values land in the
    scope's cache (``Scope.opened``) and the access is a dictionary lookup; another scope that
    reads the same object still decrypts under its own grants, on access. A value that fails to
    open here is left to its access, which raises as it would have.

    The entities are those of the rows (one per row, or several in a ``Row``) and ``loaded``:
    the ones the statement loaded alongside (joined eager loads).
    """
    scope = current_scope()
    if scope.purpose is None:  # no scope cache to keep the values in
        return
    seen: set[int] = set()
    for row in (*rows, tuple(loaded)):
        for item in row if isinstance(row, tuple | sa.Row) else (row,):
            if item is None or id(item) in seen:
                continue
            state = sa.inspect(item, raiseerr=False)
            if not isinstance(state, InstanceState):  # a scalar, not an entity
                continue
            seen.add(id(item))
            plan = _mapper_plans.get(state.mapper)
            if plan is None:
                continue
            for guard in plan.guards:
                value = state.dict.get(guard.key)
                if value is None or not guard.column_type.guarded():
                    continue
                if type(value) is not EncryptedCell and not (
                    guard.mutable and cell_of(value) is not None
                ):
                    continue
                try:
                    guard.read(item, value, opening_ahead=True)
                except VaultkitError:
                    continue  # raised again on access, where the application expects it
