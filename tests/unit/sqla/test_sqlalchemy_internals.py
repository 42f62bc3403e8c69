"""SQLAlchemy's private attributes that vaultkit.sqla relies on are still there and still mean the same.

``vaultkit/sqla/_hooks.py``, ``types.py``, ``_storage.py`` and ``alembic.py`` read a few
underscored attributes of SQLAlchemy objects (there is no public way to get them). pyproject.toml
bounds SQLAlchemy to the versions tested; when a new release drops or changes one of these, this
module fails first, naming the attribute and the vaultkit code that needs it, instead of the
statement hook silently doing nothing (a blind index left empty, a row key not bound, ORDER BY on
ciphertext allowed).

Every private access is listed in ``RELIED_ON``; ``test_every_private_access_is_listed`` greps the
modules so that a new one cannot be added without a check here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.mutable import Mutable, MutableDict
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    attributes,
    joinedload,
    mapped_column,
    relationship,
)
from sqlalchemy.orm.attributes import InstrumentedAttribute

from vaultkit.errors import QueryError
from vaultkit.sqla import _hooks
from vaultkit.sqla._storage import RawBinary, RawLongBlob, RawVarbinary, index_storage_for
from vaultkit.sqla.types import Encrypted

SQLA = Path(__file__).parents[3] / "vaultkit" / "sqla"

TABLE = sa.Table(
    "internals",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20)),
)


class _Base(DeclarativeBase):
    pass


class _Doc(_Base):
    __tablename__ = "internals_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(MutableDict.as_mutable(sa.JSON()))


class _EncryptedDoc(_Base):
    """Mutable JSON in an encrypted column (a TypeDecorator, so ext.mutable memos the type)."""

    __tablename__ = "internals_encrypted_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(
        MutableDict.as_mutable(Encrypted(sa.JSON, domain="identity"))
    )


def _insert_values() -> None:
    values = sa.insert(TABLE).values(name="x")._values
    assert isinstance(values, dict)
    assert {getattr(k, "key", k): v.effective_value for k, v in values.items()} == {"name": "x"}
    assert sa.insert(TABLE)._values is None or not sa.insert(TABLE)._values


def _update_values() -> None:
    values = sa.update(TABLE).values(name="y")._values
    assert {getattr(k, "key", k) for k in values} == {"name"}


def _multi_values() -> None:
    assert sa.insert(TABLE).values([{"name": "a"}, {"name": "b"}])._multi_values
    assert not sa.insert(TABLE).values(name="a")._multi_values


def _limit_offset_clauses() -> None:
    assert sa.select(TABLE)._limit_clause is None
    assert sa.select(TABLE)._offset_clause is None
    assert sa.select(TABLE).limit(3)._limit_clause is not None
    assert sa.select(TABLE).offset(3)._offset_clause is not None
    assert (sa.select(TABLE).limit(3).offset(2)._limit, sa.select(TABLE).offset(2)._offset) == (
        3,
        2,
    )
    assert sa.select(TABLE).limit(3).limit(None)._limit_clause is None
    # FETCH FIRST: its clause, options, integer value, and limit(None) clearing it.
    fetched = sa.select(TABLE).fetch(4)
    assert sa.select(TABLE)._fetch_clause is None
    assert fetched._fetch_clause_options == {"with_ties": False, "percent": False}
    assert fetched._offset_or_limit_clause_asint(fetched._fetch_clause, "fetch") == 4
    assert fetched.limit(None)._fetch_clause is None


def _order_by_clauses() -> None:
    clauses = sa.select(TABLE).order_by(TABLE.c.name.desc())._order_by_clauses
    assert len(clauses) == 1 and clauses[0].element is TABLE.c.name


def _returning() -> None:
    returning = sa.insert(TABLE).returning(TABLE.c.id)._returning
    assert list(returning) == [TABLE.c.id]
    assert not sa.update(TABLE)._returning


def _annotations() -> None:
    statement = sa.insert(_Doc).returning(_Doc)
    found = [r._annotations.get("parentmapper") for r in statement._returning]
    assert sa.inspect(_Doc) in found


def _result_columns() -> None:
    compiled: Any = sa.select(TABLE.c.name).compile(dialect=sa.create_engine("sqlite://").dialect)
    entries = list(compiled._result_columns)
    assert len(entries) == 1 and isinstance(entries[0][3], sa.String)


def _mutable_parents() -> None:
    with Session(sa.create_engine("sqlite://")) as session:
        doc = _Doc(id=1, body={"a": 1})
        session.add(doc)
        state = attributes.instance_state(doc)
        assert state in doc.body._parents
        assert doc.body._parents[state] == "body"


def _mutable_info_key() -> None:
    assert _EncryptedDoc.__table__.c.body.info.get("_ext_mutable_orig_type") is not None


def _mutable_listener() -> None:
    sa.orm.configure_mappers()
    found = _hooks._mutable_class(attributes.manager_of_class(_Doc)["body"])
    assert found is not None and issubclass(found, Mutable) and issubclass(found, dict)


def _expire_attributes() -> None:
    engine = sa.create_engine("sqlite://")
    _Doc.__table__.create(engine)
    with Session(engine) as session:
        session.add(_Doc(id=1, body={"a": 1}))
        session.commit()
        doc = session.get(_Doc, 1)
        assert doc is not None
        state = attributes.instance_state(doc)
        state._expire_attributes(state.dict, ["body"])
        assert "body" not in state.dict
        assert doc.body == {"a": 1}  # loaded again


def _instrumented_impl() -> None:
    attribute = attributes.manager_of_class(_Doc)["body"]
    assert isinstance(attribute, InstrumentedAttribute) and callable(attribute.impl.get)


def _compiler_dispatch() -> None:
    # types._RefusedColumnPair overrides _compiler_dispatch to refuse "encrypted == column" in SQL.
    table = sa.Table(
        "internals_enc",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("a", Encrypted(sa.String, domain="identity")),
        sa.Column("b", sa.String),
    )
    clause = table.c.a == table.c.b
    with pytest.raises(QueryError):
        str(sa.select(table.c.id).where(clause))


def _binary_base() -> None:
    # alembic.py tells binary storage from text by sa.types._Binary (LargeBinary, BLOB, BYTEA...).
    assert issubclass(sa.LargeBinary, sa.types._Binary)
    assert issubclass(mysql.LONGBLOB, sa.types._Binary)
    assert issubclass(postgresql.BYTEA, sa.types._Binary)


def _row_mapping() -> None:
    # Documented as public (underscored only to stay clear of column names); listed for the grep.
    with sa.create_engine("sqlite://").connect() as conn:
        row = conn.execute(sa.select(sa.literal(1).label("x"))).one()
        assert row._mapping["x"] == 1


def _storage_survives_type_descriptor() -> None:
    # _storage.py drops the DBAPI processors by subclassing; SQLAlchemy's dialects must keep the
    # subclass (no dialect-specific replacement) for the drivers vaultkit is tested with.
    for url in ("sqlite://", "postgresql+psycopg://", "mysql+pymysql://"):
        dialect = sa.create_engine(url).dialect
        impl = Encrypted(sa.String, domain="identity").dialect_impl(dialect).impl_instance
        assert isinstance(impl, RawBinary | RawLongBlob), (url, type(impl))
        assert impl.bind_processor(dialect) is None, url
        assert impl.result_processor(dialect, None) is None, url
        index = dialect.type_descriptor(index_storage_for(dialect, 33))
        assert isinstance(index, RawBinary | RawVarbinary), (url, type(index))
        assert index.bind_processor(dialect) is None, url


def _unique_filter_state() -> None:
    # A result of joined eager loads against collections carries the strategy that refuses to
    # be read without .unique(); sqla/_exact.py frozen_rows hands it to the re-made result.
    class Base(DeclarativeBase):
        pass

    class Parent(Base):
        __tablename__ = "internals_parent"
        id: Mapped[int] = mapped_column(primary_key=True)
        children: Mapped[list[Child]] = relationship()

    class Child(Base):
        __tablename__ = "internals_child"
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id: Mapped[int] = mapped_column(sa.ForeignKey("internals_parent.id"))

    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Parent(id=1, children=[Child(id=1), Child(id=2)]))
        session.commit()
        result = session.execute(sa.select(Parent).options(joinedload(Parent.children)))
        state = result._unique_filter_state
        assert state is not None and callable(state[1])
        remade = result.freeze()()
        remade._unique_filter_state = (set(), state[1])
        with pytest.raises(sa.exc.InvalidRequestError, match="unique"):
            remade.scalars().all()
    engine.dispose()


#: (attribute, the vaultkit code that uses it and why, the check).
RELIED_ON: list[tuple[str, str, Callable[[], None]]] = [
    (
        "Insert._values",
        "sqla/_hooks.py _statement_values: values given with .values() get their row key and blind index",
        _insert_values,
    ),
    ("Update._values", "sqla/_hooks.py _statement_values (UPDATE ... SET)", _update_values),
    (
        "Insert._multi_values",
        "sqla/_hooks.py _before_execute: refuses multi-row VALUES it cannot rewrite",
        _multi_values,
    ),
    (
        "Select._order_by_clauses",
        "sqla/_hooks.py _before_execute: refuses ORDER BY on an encrypted column",
        _order_by_clauses,
    ),
    (
        "Select._limit_clause / _offset_clause / _limit / _offset / _fetch_clause(_options)",
        "sqla/_search.py _exact_results: LIMIT/OFFSET/FETCH of a lookup made exact apply in Python",
        _limit_offset_clauses,
    ),
    (
        "Insert._returning",
        "sqla/_hooks.py _do_orm_execute / _loads_guarded_entities: INSERT/UPDATE ... RETURNING entities",
        _returning,
    ),
    (
        "ClauseElement._annotations",
        "sqla/_hooks.py _loads_guarded_entities: the mapper of a RETURNING(entity)",
        _annotations,
    ),
    (
        "SQLCompiler._result_columns",
        "sqla/_hooks.py _result_columns: refuses DEBUG row logging of decrypted columns",
        _result_columns,
    ),
    (
        "MutableBase._parents",
        "sqla/_hooks.py _Guard.read / _cells_after_flush: decrypted Mutable values track their parent",
        _mutable_parents,
    ),
    (
        'Column.info["_ext_mutable_orig_type"]',
        "sqla/_hooks.py _guard_attributes: tells a Mutable-tracked encrypted column",
        _mutable_info_key,
    ),
    (
        "sqlalchemy.ext.mutable set-listener closure (cls, fn)",
        "sqla/_hooks.py _mutable_class: the Mutable class of an attribute",
        _mutable_listener,
    ),
    (
        "InstanceState._expire_attributes",
        "sqla/_hooks.py _cells_after_load / _listen_index_sources: drops stale plaintext and digests",
        _expire_attributes,
    ),
    (
        "InstrumentedAttribute.impl",
        "sqla/_hooks.py _GuardedAttribute.__get__: loads an attribute not yet in the instance dict",
        _instrumented_impl,
    ),
    (
        "ClauseElement._compiler_dispatch",
        "sqla/types.py _RefusedColumnPair: refuses encrypted == column when compiled into SQL",
        _compiler_dispatch,
    ),
    (
        "sqlalchemy.types._Binary",
        "sqla/alembic.py _is_binary / _holds_plaintext: binary columns are not plaintext",
        _binary_base,
    ),
    ("Row._mapping", "rekey verify_table; audit.py (documented public)", _row_mapping),
    (
        "Result._unique_filter_state",
        "sqla/_exact.py frozen_rows: a re-made result of joined collection loads requires unique()",
        _unique_filter_state,
    ),
    (
        "TypeEngine.bind_processor/result_processor of a subclass kept by type_descriptor",
        "sqla/_storage.py RawBinary, RawLongBlob, RawVarbinary: no DBAPI Binary wrapping",
        _storage_survives_type_descriptor,
    ),
]


@pytest.mark.parametrize(("name", "where", "check"), RELIED_ON, ids=[r[0] for r in RELIED_ON])
def test_private_sqlalchemy_attribute_is_still_there(
    name: str, where: str, check: Callable[[], None]
) -> None:
    """Each private SQLAlchemy attribute vaultkit uses still exists and behaves as relied on."""
    try:
        check()
    except (AttributeError, KeyError, TypeError, AssertionError, pytest.fail.Exception) as exc:
        pytest.fail(
            f"SQLAlchemy {sa.__version__}: {name} is gone or changed ({type(exc).__name__}: {exc}). "
            f"vaultkit relies on it in {where}. Bound SQLAlchemy below this release in "
            "pyproject.toml, or adapt that code and this check.",
            pytrace=False,
        )


#: SQLAlchemy objects' private attributes as they appear in vaultkit/sqla (name -> listed as).
_ACCESS = re.compile(r"\b(?:statement|returned|compiled|state|tracked|holder|element)\._[a-z]\w*")
_KNOWN = {
    "statement._order_by_clauses",
    "statement._returning",
    "statement._limit_clause",
    "statement._offset_clause",
    "statement._limit",
    "statement._offset",
    "statement._fetch_clause",
    "statement._fetch_clause_options",
    "statement._offset_or_limit_clause_asint",
    "returned._annotations",
    "state._expire_attributes",
    "tracked._parents",
    "holder._parents",
}
_GETATTR = re.compile(r'getattr\(\w+, "(_[a-z]\w*)"')
_KNOWN_GETATTR = {
    "_values",
    "_multi_values",
    "_result_columns",
    "_returning",
    "_unique_filter_state",
}


def test_every_private_access_is_listed() -> None:
    """No private SQLAlchemy attribute is read in vaultkit/sqla without a check in this module."""
    found: set[str] = set()
    found_getattr: set[str] = set()
    for path in SQLA.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        found |= set(_ACCESS.findall(text))
        found_getattr |= set(_GETATTR.findall(text))
    assert found <= _KNOWN, f"add a check to RELIED_ON for {sorted(found - _KNOWN)}"
    assert found_getattr <= _KNOWN_GETATTR, (
        f"add a check to RELIED_ON for {sorted(found_getattr - _KNOWN_GETATTR)}"
    )


def test_installed_sqlalchemy_is_a_supported_version() -> None:
    """The SQLAlchemy under test is one pyproject.toml allows, so the checks above speak for it."""
    import tomllib

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((SQLA.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = [
        Requirement(d)
        for d in pyproject["project"]["dependencies"]
        if Requirement(d).name.lower() == "sqlalchemy"
    ]
    assert len(wanted) == 1 and wanted[0].specifier, "pyproject.toml bounds SQLAlchemy"
    assert wanted[0].specifier.contains(sa.__version__), (
        f"SQLAlchemy {sa.__version__} is outside the supported {wanted[0].specifier}: run "
        "this module against it, then widen the bound in pyproject.toml"
    )
