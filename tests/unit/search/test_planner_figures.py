"""The planner's predictions against measured lookups on a synthetic Belgian/Dutch population.

20,000 invented members (tests/_population.py, fixed seed) in SQLite with one index of each kind,
deliberately narrow so that every lookup brings many false candidates. For each index, lookups of
distinct values drawn uniformly (fixed seed) count their SQL candidates (``exact=False``) against
the true matches computed in Python from the population: the mean false positives per lookup must
be within 20% of the planner's ``P * (R - R/X) / 2^L`` (counts read from the database by
``plan_column``), no true match may be missing from the candidates, and the exact ORM lookups
must return the true matches, no more and no fewer.

The index keys are random per run; the widths are chosen so that each figure averages well over a
thousand value collisions (its spread across runs is a few percent, the tolerance 20%).
"""

from __future__ import annotations

import collections
import datetime as dt
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests._population import population
from vaultkit import Vault
from vaultkit.search import digits, first_char, fold_name, name_tokens, year
from vaultkit.sqla import (
    BlindIndex,
    BucketIndex,
    CompoundIndex,
    Encrypted,
    Part,
    PrefixIndex,
    TokenIndex,
    plan_column,
)
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

pytestmark = pytest.mark.slow

ROWS = 20_000
LOOKUPS = 600
CHECKED = 25  # exact ORM lookups per index (each decrypts its candidates)
TOLERANCE = 0.20


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "fig_members"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    postal_code: Mapped[str] = mapped_column(Encrypted(sa.String(8), domain="identity"))
    birth_date: Mapped[dt.date] = mapped_column(Encrypted(sa.Date, domain="identity"))
    last_name: Mapped[str] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    locator = CompoundIndex(
        Part("postal_code", digits(4)),
        Part("birth_date", year),
        Part("last_name", first_char),
        bits=10,
    )
    last_name_p3 = PrefixIndex("last_name", length=3, normalize=fold_name, bits=6)
    surname = BlindIndex("last_name", normalize=fold_name, bits=8)
    surname_parts = BlindIndex("last_name", normalize=fold_name, bits=10, partitions=4)
    birth_month = BucketIndex("birth_date", unit="month", bits=4)
    name_tokens = TokenIndex("last_name", bits=6)


@pytest.fixture(scope="module")
def members() -> list[Any]:
    """The population, the same on every run."""
    return population(ROWS, seed=2026)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, members: list[Any]) -> Iterator[sa.Engine]:
    """An SQLite database holding the population, written through Core executemany, with its
    own vault (configured for the module)."""
    import vaultkit.sqla

    sa.orm.configure_mappers()
    vault = Vault(
        provider=InMemoryKeyProvider(["identity"]), store=MemoryKeyStore(), domains=["identity"]
    )
    vaultkit.sqla.configure(vault)
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('figures') / 'figures.db'}")
    Base.metadata.create_all(engine)
    rows = [
        {
            "id": i,
            "postal_code": m.postal_code,
            "birth_date": m.birth_date,
            "last_name": m.last_name,
        }
        for i, m in enumerate(members, start=1)
    ]
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(Member.__table__), rows[start : start + 5000])
    try:
        yield engine
    finally:
        engine.dispose()
        vaultkit.sqla.configure(None)
        vault.close()


def _lookups(
    members: list[Any], key: Callable[[Any], Any]
) -> tuple[list[Any], dict[Any, set[int]]]:
    """Distinct index inputs drawn uniformly (fixed seed), and the true rows of every input."""
    truth: dict[Any, set[int]] = collections.defaultdict(set)
    for number, member in enumerate(members, start=1):
        for found in key(member):
            truth[found].add(number)
    values = sorted(truth, key=repr)
    random.Random(19).shuffle(values)
    return values[:LOOKUPS], truth


def _candidates(conn: sa.Connection, criterion: Any) -> set[int]:
    query = sa.select(Member.__table__.c.id).where(criterion)
    return {r for (r,) in conn.execute(query.execution_options(vaultkit_exact=False))}


def _predicted(engine: sa.Engine, column: str, index: str) -> float:
    with engine.connect() as conn:
        plan = plan_column(Member, column, bind=conn, sample=ROWS)
    (found,) = [i for i in plan.indexes if i.index.name == index]
    return found.false_positives


def _month_end(year: int, month: int) -> dt.date:
    following = dt.date(year + month // 12, month % 12 + 1, 1)
    return following - dt.timedelta(days=1)


CASES: dict[str, tuple[str, Callable[[Any], list[Any]], Callable[[Any, bool], Any]]] = {
    "locator": (
        "postal_code",
        lambda m: [(m.postal_code[:4], m.birth_date.year, fold_name(m.last_name)[:1])],
        lambda v, exact: Member.locator.match(
            {"postal_code": v[0], "birth_date": dt.date(v[1], 1, 1), "last_name": v[2]},
            exact=exact,
        ),
    ),
    "last_name_p3": (
        "last_name",
        lambda m: [fold_name(m.last_name)[:3]] if len(fold_name(m.last_name) or "") >= 3 else [],
        lambda v, exact: Member.last_name_p3.startswith(v, exact=exact),
    ),
    "surname": (
        "last_name",
        lambda m: [fold_name(m.last_name)],
        lambda v, exact: Member.surname == v,
    ),
    "surname_parts": (
        "last_name",
        lambda m: [fold_name(m.last_name)],
        lambda v, exact: Member.surname_parts == v,
    ),
    "birth_month": (
        "birth_date",
        lambda m: [(m.birth_date.year, m.birth_date.month)],
        lambda v, exact: Member.birth_month.between(
            dt.date(v[0], v[1], 1), _month_end(*v), exact=exact
        ),
    ),
    "name_tokens": (
        "last_name",
        lambda m: list(name_tokens(m.last_name)),
        lambda v, exact: Member.name_tokens.contains(v, exact=exact),
    ),
}


@pytest.mark.parametrize("index", list(CASES))
def test_false_positives_match_the_plan(engine: sa.Engine, members: list[Any], index: str) -> None:
    """Measured false positives per lookup are within 20% of the planner's; none is missing."""
    column, key, lookup = CASES[index]
    values, truth = _lookups(members, key)
    false_positives = 0
    with engine.connect() as conn:
        for value in values:
            candidates = _candidates(conn, lookup(value, False))
            assert truth[value] <= candidates  # zero false negatives in SQL
            false_positives += len(candidates - truth[value])
    measured = false_positives / len(values)
    predicted = _predicted(engine, column, index)
    print(f"{index}: {measured:.2f} false positives per lookup, planner {predicted:.2f}")
    assert measured == pytest.approx(predicted, rel=TOLERANCE), (measured, predicted)


@pytest.mark.parametrize("index", list(CASES))
def test_exact_lookups_return_the_true_matches(
    engine: sa.Engine, members: list[Any], index: str
) -> None:
    """Through the ORM every lookup returns exactly the true matches (no false negative)."""
    _column, key, lookup = CASES[index]
    values, truth = _lookups(members, key)
    with Session(engine) as session:
        for value in values[:CHECKED]:
            found = {m.id for m in session.scalars(sa.select(Member).where(lookup(value, True)))}
            assert found == truth[value]
