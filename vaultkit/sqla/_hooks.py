"""Statement and ORM hooks that give row-bound columns their row keys and keep blind indexes in sync.

A column type sees one value at a time, never its row. Two hooks fill the gap, with cost per
statement and per row, never per query plan:

* ``before_execute`` on every engine: for an INSERT or UPDATE of a table with row-bound or
  blind-indexed columns, each parameter set gets its row key (filled from the key column's Python
  default when the application left it unset, as the insert would have), each row-bound value is
  wrapped with that key (:class:`RowBound`), and each blind index receives its source value. It also
  refuses ``ORDER BY`` on an encrypted column.
* ``load`` and ``refresh`` on mapped classes: row-bound values of a loaded entity are decrypted with
  the entity's own row key.

At definition time, a column event records table and column names on the types and refuses
indexes, unique constraints and primary keys on encrypted columns.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, attributes
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.selectable import Select

from vaultkit.errors import ConfigurationError, QueryError, VaultkitError
from vaultkit.sqla.types import BlindIndexType, Encrypted, EncryptedCell, RowBound


@dataclass(frozen=True)
class _TablePlan:
    """What the write hook must do for one table."""

    row_bound: tuple[tuple[str, str], ...]  # (column key, row-key column key)
    indexes: tuple[tuple[str, str], ...]  # (index column key, source column key)
    row_keys: dict[str, sa.Column[Any]]  # row-key column key -> column


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


def _plan(table: Any) -> _TablePlan | None:
    if not isinstance(table, sa.Table):
        return None
    try:
        return _plans[table]
    except KeyError:
        pass
    row_bound = []
    row_keys: dict[str, sa.Column[Any]] = {}
    indexes = []
    for column in table.columns:
        if isinstance(column.type, Encrypted) and column.type.row_key is not None:
            key_column = _row_key_column(table, column)
            row_bound.append((column.key, key_column.key))
            row_keys[key_column.key] = key_column
        elif isinstance(column.type, BlindIndexType):
            source = table.columns.get(column.type.source)
            if source is None:
                raise ConfigurationError(
                    f"blind index {table.name}.{column.name} names source {column.type.source!r}, "
                    f"which is not a column of {table.name}"
                )
            indexes.append((column.key, source.key))
    plan = (
        _TablePlan(tuple(row_bound), tuple(indexes), row_keys) if (row_bound or indexes) else None
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
    elif isinstance(column_type, BlindIndexType):
        if column_type._attached is not None and column_type._attached[0] != table.name:
            column_type = column_type.copy()
            column.type = column_type
        # The source column may be attached later (Alembic builds tables column by column): the
        # domain is resolved from it on first use.
        column_type._attach(table)
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
    touches = any(c in params for c, _ in plan.row_bound) or any(
        s in params for _, s in plan.indexes
    )
    if not touches and not (insert and plan.row_bound):
        return params
    out = dict(params)
    if insert:
        # Every parameter set of one executemany must name the same columns, so the row key is
        # filled in for rows whose row-bound values are NULL too.
        for row_key, key_column in plan.row_keys.items():
            if out.get(row_key) is None:
                row = _default_for(key_column)
                if row is not None:
                    out[row_key] = row
    for column_key, row_key in plan.row_bound:
        if column_key not in out:
            continue
        value = out[column_key]
        if value is None or type(value) is RowBound:
            continue
        row = out.get(row_key)
        if row is None and row_key in where_binds:
            bind = where_binds[row_key]
            row = params.get(bind.key, bind.effective_value)
        if row is not None:
            out[column_key] = RowBound(value, row)
    for index_key, source_key in plan.indexes:
        # The index is always derived from its source; a value given for it directly is ignored.
        if source_key in params:
            out[index_key] = params[source_key]
    return out


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
        plan = _plan(statement.table)
        if plan is None:
            return statement, multiparams, params
        insert = isinstance(statement, Insert)
        if getattr(statement, "_multi_values", None) and (plan.row_bound or plan.indexes):
            raise ConfigurationError(
                f"multi-row VALUES on {_table_name(statement)}, which has row-bound or blind-indexed "
                "columns: pass the rows as a list of parameter dicts instead"
            )
        where_binds = (
            _where_binds(statement, plan.row_keys)
            if isinstance(statement, Update) and plan.row_bound
            else {}
        )
        embedded = _statement_values(statement)
        if embedded is not None:
            rewritten = _rewrite(embedded, plan, insert=insert, where_binds=where_binds)
            if rewritten is not embedded:
                changed = {k: v for k, v in rewritten.items() if embedded.get(k, _MISSING) is not v}
                statement = statement.values(**changed)
        if multiparams:
            multiparams = [
                _rewrite(p, plan, insert=insert, where_binds=where_binds) for p in multiparams
            ]
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


_MISSING = object()


def _table_name(statement: Insert | Update) -> str:
    return str(getattr(statement.table, "name", statement.table))


# -- errors -------------------------------------------------------------------------------------


@event.listens_for(Engine, "handle_error", retval=True)
def _handle_error(context: Any) -> BaseException | None:
    # SQLAlchemy's StatementError quotes the statement's parameters, which for vaultkit columns
    # are plaintexts. When the failure is vaultkit's own (a missing row key, a wrong value type in
    # an encrypted column), raise it as it is, without the parameters.
    original = context.original_exception
    if isinstance(original, VaultkitError):
        return original
    if isinstance(original, TypeError | ValueError):
        tb = original.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("vaultkit."):
            return (TypeError if isinstance(original, TypeError) else ValueError)(str(original))
    return None


# -- ORM loads ----------------------------------------------------------------------------------


def _decrypt_loaded(target: Any, pairs: tuple[tuple[str, str], ...], only: Any = None) -> None:
    state_dict = attributes.instance_dict(target)
    for attr, row_attr in pairs:
        if only is not None and attr not in only:
            continue
        value = state_dict.get(attr)
        if isinstance(value, EncryptedCell):
            attributes.set_committed_value(
                target, attr, value.decrypt(row=getattr(target, row_attr))
            )


@event.listens_for(Mapper, "mapper_configured")
def _mapper_configured(mapper: Mapper[Any], class_: type) -> None:
    pairs = []
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if (
            isinstance(column, sa.Column)
            and isinstance(column.type, Encrypted)
            and column.type.row_key
        ):
            table = column.table
            key_column = _row_key_column(table, column)
            pairs.append((prop.key, mapper.get_property_by_column(key_column).key))
    if not pairs:
        return
    frozen = tuple(pairs)

    def on_load(target: Any, context: Any) -> None:
        _decrypt_loaded(target, frozen)

    def on_refresh(target: Any, context: Any, attrs: Any) -> None:
        _decrypt_loaded(target, frozen, attrs)

    event.listen(mapper, "load", on_load, raw=False)
    event.listen(mapper, "refresh", on_refresh, raw=False)
    event.listen(mapper, "refresh_flush", on_refresh, raw=False)
