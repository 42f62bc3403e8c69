"""Properties of exact lookups: whatever the rows and the query, the results are those of a
plaintext filter (no false negative, no false positive), with tiny widths (4 bits) so that most
candidates are false positives."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

import vaultkit.sqla
from vaultkit import Vault
from vaultkit.search import digits, first_char, fold_name, year
from vaultkit.sqla import BlindIndex, BucketIndex, CompoundIndex, Encrypted, Part, PrefixIndex
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "search_people"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    postal_code: Mapped[str | None] = mapped_column(Encrypted(sa.String(12), domain="identity"))
    birth_date: Mapped[dt.date | None] = mapped_column(Encrypted(sa.Date, domain="identity"))
    last_name: Mapped[str | None] = mapped_column(Encrypted(sa.String(40), domain="identity"))
    locator = CompoundIndex(
        Part("postal_code", digits(2)),
        Part("birth_date", year),
        Part("last_name", first_char),
        bits=4,
    )
    p2 = PrefixIndex("last_name", length=2, normalize=fold_name, bits=4)
    born = BucketIndex("birth_date", unit="month", bits=4)
    name_ix = BlindIndex("last_name", normalize=fold_name, bits=4, partitions=3)


_ids = itertools.count()
_names = st.text(alphabet="abcAB éÉ-'", min_size=0, max_size=6)
_dates = st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(1992, 12, 31))
_postal = st.text(alphabet="0123x ", max_size=4)
_rows = st.lists(
    st.tuples(st.none() | _postal, st.none() | _dates, st.none() | _names), min_size=1, max_size=25
)


@pytest.fixture(scope="module")
def engine() -> Iterator[sa.Engine]:
    with Vault(
        provider=InMemoryKeyProvider(["identity"]), store=MemoryKeyStore(), domains=["identity"]
    ) as vault:
        vaultkit.sqla.configure(vault)
        engine = sa.create_engine("sqlite://", poolclass=StaticPool)
        Base.metadata.create_all(engine)
        try:
            yield engine
        finally:
            vaultkit.sqla.configure(None)
            engine.dispose()


def _load(engine: sa.Engine, rows: list[tuple[Any, Any, Any]]) -> dict[int, tuple[Any, Any, Any]]:
    with engine.begin() as conn:
        conn.execute(sa.delete(Person.__table__))
    stored = {next(_ids): row for row in rows}
    with Session(engine) as session:
        session.add_all(
            Person(id=i, postal_code=p, birth_date=b, last_name=n)
            for i, (p, b, n) in stored.items()
        )
        session.commit()
    return stored


def _found(engine: sa.Engine, where: Any) -> set[int]:
    with Session(engine) as session:
        return {p.id for p in session.scalars(sa.select(Person).where(where))}


_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(rows=_rows, query=st.tuples(_postal, _dates, _names))
def test_compound_lookup_equals_the_plaintext_filter(
    engine: sa.Engine, rows: list[tuple[Any, Any, Any]], query: tuple[Any, Any, Any]
) -> None:
    stored = _load(engine, rows)
    postal, born, name = query
    wanted = (digits(2)(postal), born.year, first_char(name))
    expected = {
        i
        for i, (p, b, n) in stored.items()
        if None not in wanted
        and p is not None
        and b is not None
        and n is not None
        and (digits(2)(p), b.year, first_char(n)) == wanted
    }
    match = Person.locator.match(postal_code=postal, birth_date=born, last_name=name)
    assert _found(engine, match) == expected


@_SETTINGS
@given(rows=_rows, prefix=_names)
def test_prefix_lookup_equals_the_plaintext_filter(
    engine: sa.Engine, rows: list[tuple[Any, Any, Any]], prefix: str
) -> None:
    stored = _load(engine, rows)
    folded = fold_name(prefix) or ""
    if len(folded) < 2:
        return  # refused (QueryError), see test_indexes.py
    expected = {
        i for i, (_, _, n) in stored.items() if n and (fold_name(n) or "").startswith(folded)
    }
    assert _found(engine, Person.p2.startswith(prefix)) == expected


@_SETTINGS
@given(rows=_rows, bounds=st.tuples(_dates, _dates), name=_names)
def test_bucket_and_blind_lookups_equal_the_plaintext_filter(
    engine: sa.Engine, rows: list[tuple[Any, Any, Any]], bounds: tuple[dt.date, dt.date], name: str
) -> None:
    stored = _load(engine, rows)
    low, high = sorted(bounds)
    expected = {i for i, (_, b, _) in stored.items() if b is not None and low <= b <= high}
    assert _found(engine, Person.born.between(low, high)) == expected
    folded = fold_name(name)
    expected = {i for i, (_, _, n) in stored.items() if n is not None and fold_name(n) == folded}
    assert _found(engine, Person.name_ix == name) == expected
