"""Token indexes: the words of an encrypted value, each as a keyed digest, in a side table.

``TokenIndex("last_name")`` on a mapped class declares, in the same ``MetaData`` (so that
``create_all`` and Alembic's autogenerate see it), a table ``<table>__<index>`` with the parent's
primary-key columns (a foreign key, ``ON DELETE CASCADE``) and a ``term`` column holding
``version || truncated HMAC`` of each token of the value (``name_tokens`` by default: "Smith-Jones"
gives "smith" and "jones"). A lookup is one query::

    select(Member).where(Member.name_tokens.contains("jones"))
    -- members.id IN (SELECT row FROM members__name_tokens WHERE term IN (:digests))

and exact: the candidates' source values are decrypted and the ones without the word dropped
(:mod:`vaultkit.sqla._exact`).

The side table follows its source on every write the engine sees, in the same transaction: INSERT
(ORM flushes, Core single rows and executemany, ORM bulk inserts), UPDATE (the rows the WHERE clause
selects, read before the update) and DELETE. Writes that cannot be followed are refused with
:class:`~vaultkit.errors.QueryError`: ``INSERT ... SELECT``, multi-row ``VALUES``, an UPDATE that
sets the source to an SQL expression, an INSERT whose primary key the database makes and does not
return. Erasure (:func:`vaultkit.sqla.erasure_cells`) deletes the subject's rows' terms; a key
rotation (``version=2, query_versions=(1, 2)``) is finished by :func:`rewrite_terms`.

What it leaks: which rows share a word (up to truncation), how many words each value has, and
each word's frequency across the table (a common surname particle, "van", stands out).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import BooleanClauseList, Grouping
from sqlalchemy.sql.operators import and_ as and_op
from sqlalchemy.types import TypeEngine

from vaultkit._codec import encode_value
from vaultkit._vault import BlindIndexKey
from vaultkit.errors import ConfigurationError, QueryError
from vaultkit.keys.domains import check_domain_name
from vaultkit.search import name_tokens
from vaultkit.sqla import _registry
from vaultkit.sqla._exact import ExactCheck, checked
from vaultkit.sqla.types import Encrypted, Pending, RowBound

__all__ = ["TokenIndex", "erase_terms", "rewrite_terms", "token_indexes"]

#: The side table's column of digests.
TERM: Final = "term"
#: Rows per statement when the side table is written in bulk.
_CHUNK: Final = 500


def _term_type(length: int) -> TypeEngine[bytes]:
    """The ``term`` column's type: a short binary (VARBINARY on MariaDB/MySQL, so that it can be
    indexed and be part of the primary key), spelt in plain SQLAlchemy types so that Alembic's
    autogenerate renders it as it is."""
    return sa.LargeBinary(length).with_variant(mysql.VARBINARY(length), "mysql", "mariadb")


class _ContainsCheck(ExactCheck):
    """Keeps the rows whose decrypted source has every word looked up."""

    __slots__ = ("_tokenizer", "_wanted")

    def __init__(
        self, table: sa.FromClause, source: str, label: str, tokenizer: Any, wanted: frozenset[str]
    ) -> None:
        super().__init__(table, [source], label)
        self._tokenizer = tokenizer
        self._wanted = wanted

    def matches(self, values: Mapping[str, Any]) -> bool:
        value = values.get(self.sources[0])
        if value is None:
            return False
        return self._wanted <= set(self._tokenizer(value))


class TokenIndex:
    """Declare a token index of the encrypted column ``source`` of a mapped class (a side table).

    Args:
        source: the encrypted column whose words are indexed.
        tokenizer: value -> its words (strings), applied to values written and looked up alike
            (default :func:`vaultkit.search.name_tokens`: split on spaces, hyphens and
            apostrophes, each word folded).
        bits: digest bits kept per word (4 to 256; stored in ``ceil(bits / 8)`` bytes after a
            version byte). Fewer bits, more false candidates to decrypt and drop; choose with
            ``vaultkit index plan``.
        version: key version written now (1 to 255).
        query_versions: versions a lookup matches during a key rotation (default ``version``).
        domain: key domain of the index key (default: the source column's).
        vault: name of the configured vault.

    Query with ``Member.name_tokens.contains("jones")`` (every word of the text must be in the
    value); results are exact. ``contains(..., exact=False)`` returns the candidates unchecked.

    Warning:
        The side table shows which rows share a word and how common each word is; a particle
        such as "van" or "de" is a very common word. Truncation blurs both (see docs/search.md).

    .. versionadded:: 0.4.0
    """

    def __init__(
        self,
        source: str,
        *,
        tokenizer: Callable[[Any], Iterable[str]] = name_tokens,
        bits: int = 20,
        version: int = 1,
        query_versions: Sequence[int] | None = None,
        domain: str | None = None,
        vault: str = _registry.DEFAULT,
    ) -> None:
        if not isinstance(source, str) or not source:
            raise ConfigurationError("TokenIndex takes the name of its source column")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 4 <= bits <= 256:
            raise ConfigurationError("bits must be an integer from 4 to 256")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 255:
            raise ConfigurationError("a token-index version is an integer from 1 to 255")
        versions = tuple(query_versions) if query_versions is not None else (version,)
        if version not in versions or not all(
            isinstance(v, int) and 1 <= v <= 255 for v in versions
        ):
            raise ConfigurationError("query_versions must be versions 1 to 255 and include version")
        if not callable(tokenizer):
            raise ConfigurationError("tokenizer must be a callable: value -> words")
        self.source = source
        self.tokenizer = tokenizer
        self.bits = bits
        self.version = version
        self.query_versions = versions
        self.domain = check_domain_name(domain) if domain is not None else None
        self.vault = vault
        self.name = ""
        self.size = math.ceil(bits / 8)
        self._mask = (0xFF << (8 * self.size - bits)) & 0xFF
        self._slot = _registry.slot(vault)
        self._keys: dict[int, BlindIndexKey] = {}
        self._generation = -1
        self._parent: sa.Table | None = None
        self._side: sa.Table | None = None
        self._owner: type | None = None

    # -- declaration ---------------------------------------------------------------------------

    def __set_name__(self, owner: type, name: str) -> None:
        if any(
            base.__name__ == "SQLModel" and base.__module__.startswith("sqlmodel")
            for base in owner.__mro__
        ):
            # A pydantic model takes the declaration for a field default; nothing would map it.
            raise ConfigurationError(
                f"{owner.__name__}.{name}: TokenIndex is declared on SQLAlchemy models; SQLModel "
                "would ignore it (the side table would never exist)"
            )
        self.name = name
        self._owner = owner

    def __get__(self, instance: Any, owner: type | None = None) -> TokenIndex:
        return self

    @property
    def table(self) -> sa.Table:
        """The side table (``<table>__<index>``); exists once the class is mapped."""
        if self._side is None:
            raise ConfigurationError(
                f"token index {self.name or self.source!r} is not attached: declare it in the "
                "body of a mapped class"
            )
        return self._side

    @property
    def parent(self) -> sa.Table:
        """The table of the indexed rows."""
        self.table  # noqa: B018 - raises the explanation when not attached
        assert self._parent is not None  # noqa: S101 - set together with _side
        return self._parent

    def _attach(self, parent: sa.Table) -> None:
        source = parent.columns.get(self.source)
        if source is None or not isinstance(source.type, Encrypted):
            if self.domain is None:
                raise ConfigurationError(
                    f"token index {parent.name}.{self.name}: its source {self.source!r} must be an "
                    "Encrypted column of the same table, or give domain="
                )
        keys = list(parent.primary_key.columns)
        if not keys:
            raise ConfigurationError(f"token index {self.name}: {parent.name} has no primary key")
        if any(c.name == TERM for c in keys):
            raise ConfigurationError(
                f"token index {self.name}: a primary-key column may not be named {TERM!r}"
            )
        columns: list[Any] = [
            sa.Column(
                c.name,
                c.type.copy() if hasattr(c.type, "copy") else c.type,
                sa.ForeignKey(c, ondelete="CASCADE"),
                primary_key=True,
                autoincrement=False,
            )
            for c in keys
        ]
        columns.append(sa.Column(TERM, _term_type(1 + self.size), primary_key=True))
        name = f"{parent.name}__{self.name}"
        side = sa.Table(
            name,
            parent.metadata,
            *columns,
            sa.Index(f"ix_{name}_{TERM}", TERM),
            schema=parent.schema,
            info={"vaultkit_token_index": self.name},
        )
        self._parent = parent
        self._side = side
        _by_table.setdefault(parent, []).append(self)

    # -- digests -------------------------------------------------------------------------------

    def _domain(self) -> str:
        if self.domain is not None:
            return self.domain
        source = self.parent.columns[self.source]
        assert isinstance(source.type, Encrypted)  # noqa: S101 - checked in _attach
        return source.type.domain

    def _key(self, version: int) -> BlindIndexKey:
        slot = self._slot
        if self._generation != slot.generation:
            self._keys = {}
            self._generation = slot.generation
        key = self._keys.get(version)
        if key is None:
            # A label no column's own blind index can have ("token:" is not in a column name
            # vaultkit declares), so the token index never shares a key with a blind index.
            key = slot.get().blind_index_key(
                self._domain(),
                table=self.parent.name,
                column=f"token:{self.name}",
                version=version,
            )
            self._keys[version] = key
        return key

    def digest(self, word: str, version: int | None = None) -> bytes:
        """The stored form of one word (already tokenized) under ``version`` (default current)."""
        version = self.version if version is None else version
        mac = self._key(version).digest(encode_value(word))
        kept = bytearray(mac[: self.size])
        kept[-1] &= self._mask
        return bytes((version,)) + bytes(kept)

    def words(self, value: Any) -> tuple[str, ...]:
        """The words of ``value`` as the index sees them (``()`` for ``None``)."""
        value = _plain(value)
        if value is None:
            return ()
        return tuple(dict.fromkeys(w for w in self.tokenizer(value) if w))

    def terms(self, value: Any, version: int | None = None) -> list[bytes]:
        """The distinct digests stored for ``value``."""
        return list(dict.fromkeys(self.digest(w, version) for w in self.words(value)))

    # -- queries -------------------------------------------------------------------------------

    def contains(self, text: Any, *, exact: bool = True) -> sa.ColumnElement[bool]:
        """Rows whose value has every word of ``text`` (``"jones"`` finds "Smith-Jones").

        One SQL query: ``pk IN (SELECT pk FROM side WHERE term IN (...))`` per word, the digests
        of every version in ``query_versions``. Exact by default: candidates are decrypted and
        those without the words dropped (select the entity; see docs/search.md).

        Raises:
            QueryError: ``text`` has no word.
        """
        wanted = self.words(text)
        if not wanted:
            raise QueryError(f"token index {self.name}: the text looked up has no word")
        side, parent = self.table, self.parent
        keys = list(parent.primary_key.columns)
        conditions = []
        for word in wanted:
            digests = [self.digest(word, v) for v in self.query_versions]
            rows = sa.select(*(side.c[c.name] for c in keys)).where(side.c[TERM].in_(digests))
            target = keys[0] if len(keys) == 1 else sa.tuple_(*keys)
            conditions.append(target.in_(rows))
        predicate = sa.and_(*conditions) if len(conditions) > 1 else conditions[0]
        if not exact:
            return predicate
        check = _ContainsCheck(
            parent, self.source, f"{parent.name}.{self.name}", self.words, frozenset(wanted)
        )
        return checked(predicate, check)

    def __repr__(self) -> str:
        return f"TokenIndex({self.source!r}, name={self.name!r}, bits={self.bits})"


def _plain(value: Any) -> Any:
    if type(value) is RowBound:
        value = value.value
    if type(value) is Pending:
        value = value.value
    return value


#: Parent table -> its token indexes.
_by_table: weakref.WeakKeyDictionary[sa.Table, list[TokenIndex]] = weakref.WeakKeyDictionary()


def token_indexes(table: Any) -> list[TokenIndex]:
    """The token indexes of a table or mapped class."""
    table = getattr(table, "__table__", table)
    return list(_by_table.get(table, ())) if isinstance(table, sa.Table) else []


@event.listens_for(Mapper, "after_mapper_constructed")
def _mapper_constructed(mapper: Mapper[Any], class_: type) -> None:
    table = mapper.local_table
    for value in list(vars(class_).values()):
        if isinstance(value, TokenIndex) and value._side is None:
            if not isinstance(table, sa.Table):
                raise ConfigurationError(f"token index {value.name}: the class maps no table")
            value._attach(table)


# -- keeping the side table in sync -------------------------------------------------------------


def _conjuncts(clause: Any) -> Iterator[Any]:
    while type(clause) is Grouping:
        clause = clause.element
    if isinstance(clause, BooleanClauseList) and clause.operator is and_op:
        for item in clause.clauses:
            yield from _conjuncts(item)
    else:
        yield clause


def _key_binds(where: Any, keys: Sequence[sa.Column[Any]]) -> list[sa.BindParameter[Any]] | None:
    """The bind parameters a WHERE clause compares each primary-key column with, when it is
    nothing but ``pk = :b`` conjuncts; ``None`` when it is not that simple. Any other condition
    (``pk = :b AND version = :v``) may select no row, so the rows are then read from the
    database: the side table must not change for a row the statement leaves alone."""
    found: dict[str, sa.BindParameter[Any]] = {}
    for clause in _conjuncts(where):
        matched = False
        if isinstance(clause, sa.BinaryExpression) and clause.operator is sa.sql.operators.eq:
            for col, other in ((clause.left, clause.right), (clause.right, clause.left)):
                if isinstance(col, sa.Column) and isinstance(other, sa.BindParameter):
                    for key in keys:
                        if col.shares_lineage(key):
                            found[key.name] = other
                            matched = True
        if not matched:
            return None
    if len(found) != len(keys):
        return None
    return [found[k.name] for k in keys]


def _embedded(statement: Insert | Update, key: str) -> tuple[bool, Any]:
    """Whether ``statement.values(...)`` sets column ``key``, and to what (a literal value)."""
    values = getattr(statement, "_values", None) or {}
    for name, value in values.items():
        column = name if isinstance(name, str) else getattr(name, "key", None)
        if column != key:
            continue
        if isinstance(value, sa.BindParameter):
            if value.required:
                # bindparam("new_name"), filled per parameter set: not the column's key.
                raise QueryError(
                    f"{getattr(statement.table, 'name', 'the table')}.{key} is set to a named "
                    "bind parameter, whose values its token index cannot follow: pass the "
                    f"values under the column's own key ({key!r}) in the parameter sets"
                )
            return True, value.effective_value
        if isinstance(value, sa.ClauseElement):
            table = getattr(statement.table, "name", "the table")
            raise QueryError(
                f"{table}.{key} is set to an SQL expression, which its token index cannot "
                "follow: give the value"
            )
        return True, value
    return False, None


def _param_sets(multiparams: Any, params: Any) -> list[dict[str, Any]]:
    if multiparams:
        return list(multiparams)
    return [params or {}]


class _Work:
    """What to do to the side tables once a statement on their parent has run."""

    __slots__ = ("indexes", "rows")

    def __init__(self) -> None:
        self.indexes: list[TokenIndex] = []
        #: (primary keys of the rows, new value or _KEEP for a delete) per parameter set.
        self.rows: list[tuple[list[tuple[Any, ...]], Any]] = []


_DELETED: Final = object()
_PENDING_KEY: Final = "vaultkit_token_work"


def _rows_of(
    conn: sa.Connection, table: sa.Table, where: Any, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """The primary keys of the rows ``where`` selects now, under one parameter set."""
    keys = list(table.primary_key.columns)
    if where is None:
        query = sa.select(*keys)
    else:
        binds = _key_binds(where, keys)
        if binds is not None:
            return [tuple(params.get(b.key, b.effective_value) for b in binds)]
        query = sa.select(*keys).where(where)
    wanted = {b.key for b in query.compile().binds.values()} if params else set()
    found = conn.execute(query, {k: v for k, v in params.items() if k in wanted})
    return [tuple(row) for row in found]


@event.listens_for(Engine, "before_execute")
def _before_execute(
    conn: sa.Connection, statement: Any, multiparams: Any, params: Any, execution_options: Any
) -> None:
    info = conn.info
    info.pop(_PENDING_KEY, None)
    if not isinstance(statement, Insert | Update | Delete) or not _by_table:
        return
    table = statement.table
    if not isinstance(table, sa.Table):
        return
    indexes = _by_table.get(table)
    if not indexes:
        return
    if execution_options.get("vaultkit_raw"):
        return
    name = table.name
    if isinstance(statement, Insert):
        if statement.select is not None:
            raise QueryError(
                f"INSERT ... SELECT into {name}, which has a token index: the words of the "  # noqa: S608 - an error message, not SQL
                "values cannot be read; insert the rows with their values"
            )
        if getattr(statement, "_multi_values", None):
            raise QueryError(
                f"multi-row VALUES on {name}, which has a token index: pass the rows as a list "
                "of parameter dicts instead"
            )
        for index in indexes:
            _embedded(statement, index.source)  # refuses values(source=bindparam("name"))
        work = _Work()
        work.indexes = list(indexes)
        info[_PENDING_KEY] = work
        return
    work = _Work()
    sets = _param_sets(multiparams, params)
    if isinstance(statement, Update):
        touched = []
        for index in indexes:
            embedded, value = _embedded(statement, index.source)
            if embedded or any(index.source in p for p in sets):
                touched.append(index)
        if not touched:
            return
        sources = {i.source for i in touched}
        if len(sources) > 1:
            raise QueryError(
                f"an UPDATE of {name} writes the sources of several token indexes: write them "
                "one statement each"
            )
        (source,) = sources
        embedded, value = _embedded(statement, source)
        work.indexes = touched
        for p in sets:
            new = p[source] if source in p else value
            work.rows.append((_rows_of(conn, table, statement.whereclause, p), new))
    else:
        work.indexes = list(indexes)
        for p in sets:
            work.rows.append((_rows_of(conn, table, statement.whereclause, p), _DELETED))
    info[_PENDING_KEY] = work


def _key_filter(side: sa.Table, parent: sa.Table, rows: list[tuple[Any, ...]]) -> Any:
    keys = [side.c[c.name] for c in parent.primary_key.columns]
    if len(keys) == 1:
        return keys[0].in_([r[0] for r in rows])
    return sa.tuple_(*keys).in_(rows)


def _write_terms(
    conn: sa.Connection,
    index: TokenIndex,
    rows: Iterable[tuple[tuple[Any, ...], Any]],
    *,
    version: int | None = None,
) -> int:
    side, parent = index.table, index.parent
    names = [c.name for c in parent.primary_key.columns]
    out = []
    for key, value in rows:
        for term in index.terms(value, version):
            entry = dict(zip(names, key, strict=True))
            entry[TERM] = term
            out.append(entry)
    for start in range(0, len(out), _CHUNK):
        conn.execute(side.insert(), out[start : start + _CHUNK])
    return len(out)


def _delete_terms(conn: sa.Connection, index: TokenIndex, keys: list[tuple[Any, ...]]) -> None:
    side, parent = index.table, index.parent
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        conn.execute(side.delete().where(_key_filter(side, parent, chunk)))


@event.listens_for(Engine, "after_execute")
def _after_execute(
    conn: sa.Connection,
    statement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
    result: Any,
) -> None:
    work = conn.info.pop(_PENDING_KEY, None)
    if work is None:
        return
    if isinstance(statement, Insert):
        _after_insert(conn, statement, work, result)
        return
    for index in work.indexes:
        keys = [k for rows, _ in work.rows for k in rows]
        if keys:
            _delete_terms(conn, index, keys)
        writes = [(k, new) for rows, new in work.rows if new is not _DELETED for k in rows]
        if writes:
            _write_terms(conn, index, writes)


def _after_insert(conn: sa.Connection, statement: Insert, work: _Work, result: Any) -> None:
    table = statement.table
    assert isinstance(table, sa.Table)  # noqa: S101 - checked before the statement ran
    keys = list(table.primary_key.columns)
    context = result.context
    compiled = context.compiled
    parameters: list[Mapping[str, Any]] = context.compiled_parameters
    bind_names = {c.key: c.key for c in table.columns}
    if compiled is not None:
        for bind in compiled.binds.values():
            # In an INSERT, a column's bind parameter is named after its key.
            bind_names.setdefault(bind.key, bind.key)
    pk_rows: list[Any] | None = None
    rows: dict[int, list[tuple[tuple[Any, ...], Any]]] = {id(i): [] for i in work.indexes}
    for number, values in enumerate(parameters):
        key = tuple(values.get(k.key) for k in keys)
        if any(part is None for part in key):
            if pk_rows is None:
                try:
                    pk_rows = list(result.inserted_primary_key_rows)
                except Exception:
                    pk_rows = []
            found = pk_rows[number] if number < len(pk_rows) else None
            key = tuple(found) if found is not None else key
        if any(part is None for part in key):
            raise QueryError(
                f"an INSERT into {table.name}, which has a token index, did not return the "
                "new rows' primary keys: give them, insert one row at a time, or use a "
                "database that returns them (RETURNING)"
            )
        for index in work.indexes:
            value = values.get(index.source)
            if value is not None:
                rows[id(index)].append((key, value))
    for index in work.indexes:
        if rows[id(index)]:
            _write_terms(conn, index, rows[id(index)])


# -- erasure and rotation -----------------------------------------------------------------------


def erase_terms(
    conn: sa.Connection, table: sa.Table, where: Any, *, keep: Iterable[str] = ()
) -> int:
    """Delete the terms of the rows of ``table`` that ``where`` selects, in every token index
    (except the indexes of the source columns in ``keep``).

    Returns the number of terms deleted. Used by :func:`vaultkit.sqla.erasure_cells`.
    """
    total = 0
    kept = set(keep)
    for index in _by_table.get(table, ()):
        if index.source in kept:
            continue
        side = index.table
        keys = [side.c[c.name] for c in table.primary_key.columns]
        rows = sa.select(*table.primary_key.columns).where(where)
        target = keys[0] if len(keys) == 1 else sa.tuple_(*keys)
        done = conn.execute(side.delete().where(target.in_(rows)))
        total += int(done.rowcount or 0)
    return total


def rewrite_terms(
    bind: sa.Engine | sa.Connection, index: TokenIndex, *, batch: int = 1000
) -> dict[str, int]:
    """Rewrite every row's terms under ``index.version`` (the end of a key rotation).

    Reads the source values through the vault batch by batch (primary-key order), deletes each
    batch's old terms and writes the new ones in one transaction per batch, then returns
    ``{"rows": ..., "terms": ...}``. Run it after deploying ``version=N, query_versions=(..., N)``;
    then drop the old versions from ``query_versions``. Idempotent. A value whose key was
    destroyed (an erased member) gets no terms.

    .. versionadded:: 0.4.0
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError("batch= is a number of rows, at least 1")
    parent = index.parent
    keys = list(parent.primary_key.columns)
    source: Any = parent.columns[index.source]
    if isinstance(source.type, Encrypted) and source.type.on_erased != "null":
        # A value whose key was destroyed (an erased member, an expired retention) has no
        # words: it reads as None here, so that one erasure does not stop the rotation.
        reading = source.type.copy()
        reading.on_erased = "null"
        source = sa.type_coerce(source, reading)
    counts = {"rows": 0, "terms": 0}
    last: tuple[Any, ...] | None = None
    while True:
        query = sa.select(*keys, source).order_by(*keys).limit(batch)
        if last is not None:
            query = query.where(sa.tuple_(*keys) > sa.tuple_(*last))
        with _transaction(bind) as conn:
            found = conn.execute(query).all()
            if not found:
                return counts
            pairs = [(tuple(row[: len(keys)]), row[len(keys)]) for row in found]
            _delete_terms(conn, index, [k for k, _ in pairs])
            counts["terms"] += _write_terms(conn, index, pairs)
            counts["rows"] += len(pairs)
            last = pairs[-1][0]


class _transaction:  # noqa: N801 - used like contextlib's helpers
    """A transaction on the engine (committed), or the caller's connection (left to it)."""

    def __init__(self, bind: sa.Engine | sa.Connection) -> None:
        self._bind = bind
        self._context: Any = None

    def __enter__(self) -> sa.Connection:
        if isinstance(self._bind, sa.Connection):
            return self._bind
        self._context = self._bind.begin()
        return self._context.__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *exc: Any) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)
