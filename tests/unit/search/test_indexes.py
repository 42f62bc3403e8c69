"""In-row search indexes (compound, prefix, bucket, partitioned blind index) and exact lookups.

The widths are tiny on purpose (4 to 6 bits): most candidates are false positives, so every test
that compares with a plaintext filter also shows that the exact check drops them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, Vault, acting_as
from vaultkit.errors import AccessDeniedError, ConfigurationError, QueryError
from vaultkit.rekey import rekey_table
from vaultkit.search import digits, first_char, fold_name, month, name_tokens, year
from vaultkit.sqla import (
    BlindIndex,
    BucketIndex,
    CompoundIndex,
    Encrypted,
    Part,
    PrefixIndex,
    erasure_cells,
)
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "search_members"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    postal_code: Mapped[str | None] = mapped_column(Encrypted(sa.String(8), domain="identity"))
    birth_date: Mapped[dt.date | None] = mapped_column(Encrypted(sa.Date, domain="identity"))
    last_name: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    locator = CompoundIndex(
        Part("postal_code", digits(4)),
        Part("birth_date", year),
        Part("last_name", first_char),
        bits=6,
    )
    last_name_p3 = PrefixIndex("last_name", length=3, normalize=fold_name, bits=5)
    birth_year = BucketIndex("birth_date", unit="year", bits=4)
    surname = BlindIndex("last_name", normalize=fold_name, partitions=4, bits=5)


SURNAMES = [
    "Janssens",
    "Jansen",
    "Peeters",
    "Maes",
    "Jacobs",
    "Van der Berg",
    "van  der berg",
    "Smith-Jones",
    "Janvier",
    "Li",
    "Ødegaard",
    "Müller",
]


def _population(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "postal_code": rng.choice(["1000", "1000 AB", "2000", "3500", "9000", "1012"]),
            "birth_date": dt.date(rng.randint(1970, 1981), rng.randint(1, 12), rng.randint(1, 28)),
            "last_name": rng.choice(SURNAMES),
        }
        for i in range(n)
    ]


def _vault(**kwargs: Any) -> Vault:
    return Vault(
        provider=InMemoryKeyProvider(["identity", "medical"]),
        store=MemoryKeyStore(),
        domains=kwargs.pop("domains", ["identity", "medical"]),
        **kwargs,
    )


@pytest.fixture
def vault() -> Iterator[Vault]:
    with _vault() as v:
        vaultkit.sqla.configure(v)
        try:
            yield v
        finally:
            vaultkit.sqla.configure(None)


@pytest.fixture
def engine(vault: Vault, database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


@pytest.fixture
def sqlite(vault: Vault, tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _fill(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    with Session(engine) as session:
        session.add_all(Member(**row) for row in rows)
        session.commit()


def _ids(session: Session, where: Any) -> list[int]:
    return sorted(m.id for m in session.scalars(sa.select(Member).where(where)))


def _candidates(session: Session, where: Any) -> list[int]:
    query = sa.select(Member.id).where(where).execution_options(vaultkit_exact=False)
    return sorted(session.scalars(query))


# -- transforms -----------------------------------------------------------------------------------


def test_transforms() -> None:
    assert fold_name("Van der Berg") == fold_name("van  der berg") == "vanderberg"
    assert fold_name("Müller-Lüdenscheidt") == "mullerludenscheidt"
    assert fold_name("O'Brien") == "obrien"
    assert fold_name("Straße") == "strasse"
    assert fold_name(None) is None
    assert name_tokens("Smith-Jones") == ("smith", "jones")
    assert name_tokens("van der Berg") == ("van", "der", "berg")
    assert name_tokens("edwards  jones jones") == ("edwards", "jones")
    assert name_tokens("O\u2019Brien") == ("o", "brien")
    assert name_tokens(None) == ()
    assert digits(4)("1000 AB") == digits(4)("B-1000") == "1000"
    assert digits(4)("AB") is None
    assert digits(4) == digits(4) and hash(digits(4)) == hash(digits(4)) and digits(4) != digits(3)
    assert repr(digits(4)) == "digits(4)"
    assert year(dt.date(1980, 5, 1)) == 1980
    assert month(dt.datetime(1980, 5, 1, 12, 0)) == "1980-05"
    assert first_char("Émile") == "e"
    assert first_char("") is None
    with pytest.raises(ValueError, match="positive"):
        digits(0)


# -- the three lookups, on SQLite, PostgreSQL and MariaDB ---------------------------------------------


def test_identity_check_and_surname_prefix_are_exact(engine: sa.Engine) -> None:
    """The call-centre lookups give what a plaintext filter gives, though most candidates are
    false positives (6 and 5 bits)."""
    rows = _population(300)
    _fill(engine, rows)
    with Session(engine) as session:
        false_positives = 0
        for postal, born, name in [
            ("1000", 1975, "jansen"),
            ("2000", 1980, "Maes"),
            ("9000", 1971, "Li"),
        ]:
            asked = {"postal_code": postal, "birth_date": dt.date(born, 3, 9), "last_name": name}
            found = _ids(session, Member.locator.match(**asked))
            expected = sorted(
                r["id"]
                for r in rows
                if digits(4)(r["postal_code"]) == postal
                and r["birth_date"].year == born
                and first_char(r["last_name"]) == first_char(name)
            )
            assert found == expected
            candidates = _candidates(session, Member.locator.match(asked))
            assert set(found) <= set(candidates)
            false_positives += len(candidates) - len(found)
        assert false_positives > 0  # 6 bits over 300 rows: the check had work to do

        found = _ids(session, Member.last_name_p3.startswith("JANS"))
        expected = sorted(
            r["id"]
            for r in rows
            if fold_name(r["last_name"]).startswith("jans")  # type: ignore[union-attr]
        )
        assert found == expected and found
        candidates = _candidates(session, Member.last_name_p3.startswith("jans"))
        assert set(found) < set(candidates)

        low, high = dt.date(1974, 6, 15), dt.date(1976, 2, 1)
        found = _ids(session, Member.birth_year.between(low, high))
        assert found == sorted(r["id"] for r in rows if low <= r["birth_date"] <= high)

        found = _ids(session, Member.surname == "VAN DER BERG")
        assert found == sorted(r["id"] for r in rows if fold_name(r["last_name"]) == "vanderberg")
        found = _ids(session, Member.surname.in_(["maes", "li"]))
        assert found == sorted(r["id"] for r in rows if r["last_name"] in ("Maes", "Li"))


def test_partitions_spread_one_value_over_several_digests(engine: sa.Engine) -> None:
    _fill(engine, [{"id": i, "last_name": "Peeters"} for i in range(64)])
    with engine.connect() as conn:
        stored = {bytes(v) for v in conn.scalars(sa.text("SELECT surname FROM search_members"))}
    assert 2 <= len(stored) <= 4  # 64 writes over 4 partitions: all of them, almost surely
    with Session(engine) as session:
        assert _ids(session, Member.surname == "peeters") == list(range(64))


def test_core_writes_keep_every_index_in_sync(engine: sa.Engine) -> None:
    """Core executemany INSERT, a Core UPDATE of all parts, INSERT ... RETURNING where the
    database has it, and the ORM's bulk INSERT all keep the indexes in sync."""
    table = Member.__table__
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "id": 1,
                    "postal_code": "1000",
                    "birth_date": dt.date(1980, 1, 2),
                    "last_name": "Maes",
                },
                {
                    "id": 2,
                    "postal_code": "2000",
                    "birth_date": dt.date(1981, 1, 2),
                    "last_name": "Li",
                },
            ],
        )
        conn.execute(
            table.update()
            .where(table.c.id == 2)
            .values(postal_code="1000", birth_date=dt.date(1980, 7, 7), last_name="Mertens")
        )
        if engine.dialect.insert_returning:  # MariaDB 10.5+, PostgreSQL, SQLite 3.35+
            returned = conn.execute(
                table.insert().returning(table.c.id),
                {
                    "id": 3,
                    "postal_code": "1000",
                    "birth_date": dt.date(1980, 3, 3),
                    "last_name": "Mol",
                },
            ).scalar_one()
            assert returned == 3
    with Session(engine) as session:
        session.execute(
            sa.insert(Member),
            [
                {
                    "id": 4,
                    "postal_code": "1000",
                    "birth_date": dt.date(1980, 9, 9),
                    "last_name": "Moens",
                }
            ],
        )
        session.commit()
        found = _ids(
            session,
            Member.locator.match(postal_code="1000", birth_date=dt.date(1980, 1, 1), last_name="M"),
        )
        assert found[:2] == [1, 2] and found[-1] == 4
        assert _ids(session, Member.last_name_p3.startswith("mer")) == [2]


def test_an_orm_update_of_one_part_rewrites_the_compound_index(engine: sa.Engine) -> None:
    _fill(
        engine,
        [{"id": 1, "postal_code": "1000", "birth_date": dt.date(1980, 1, 2), "last_name": "Maes"}],
    )
    asked = {"postal_code": "1000", "birth_date": dt.date(1980, 5, 5)}
    with Session(engine) as session:
        member = session.get(Member, 1)
        assert member is not None
        member.last_name = "Janssens"  # the UPDATE names last_name only
        session.commit()
        assert _ids(session, Member.locator.match(**asked, last_name="J")) == [1]
        assert _ids(session, Member.locator.match(**asked, last_name="M")) == []
        assert _ids(session, Member.last_name_p3.startswith("jan")) == [1]


def test_a_core_update_of_some_parts_is_refused(sqlite: sa.Engine) -> None:
    _fill(
        sqlite,
        [{"id": 1, "postal_code": "1000", "birth_date": dt.date(1980, 1, 2), "last_name": "Maes"}],
    )
    table = Member.__table__
    with sqlite.begin() as conn, pytest.raises(QueryError, match="compound index 'locator'"):
        conn.execute(table.update().where(table.c.id == 1).values(last_name="Peeters"))


def test_pandas_to_sql_fills_the_indexes(sqlite: sa.Engine) -> None:
    pandas = pytest.importorskip("pandas")
    from vaultkit.sqla.pandas import to_sql

    frame = pandas.DataFrame(
        {
            "id": [1, 2],
            "postal_code": ["1000", "2000"],
            "birth_date": [dt.date(1980, 1, 2), dt.date(1980, 1, 2)],
            "last_name": ["Jacobs", "Janssens"],
        }
    )
    to_sql(frame, Member.__table__, sqlite)
    with Session(sqlite) as session:
        assert _ids(session, Member.last_name_p3.startswith("jan")) == [2]
        found = _ids(
            session,
            Member.locator.match(postal_code="1000", birth_date=dt.date(1980, 1, 1), last_name="J"),
        )
        assert found == [1]


# -- what is refused ----------------------------------------------------------------------------------


def test_lookups_that_cannot_be_made_exact_are_refused(sqlite: sa.Engine) -> None:
    _fill(sqlite, _population(20))
    table = Member.__table__
    lookup = Member.surname == "maes"
    with Session(sqlite) as session:
        with pytest.raises(QueryError, match="entity"):
            session.execute(sa.select(Member.id).where(lookup)).all()
        with pytest.raises(QueryError, match="top-level AND"):
            session.execute(sa.select(Member).where(sa.or_(lookup, Member.id == 1))).all()
        with pytest.raises(QueryError, match="top-level AND"):
            session.execute(sa.select(Member).where(sa.not_(lookup))).all()
        with pytest.raises(QueryError, match="UPDATE or DELETE"):
            session.execute(sa.delete(Member).where(lookup))
        with pytest.raises(QueryError, match="at least 3"):
            Member.last_name_p3.startswith("ja")
        with pytest.raises(QueryError, match="one value per part"):
            Member.locator.match(postal_code="1000")
        with pytest.raises(QueryError, match="startswith"):
            _ = Member.last_name_p3 == "jan"
    with sqlite.connect() as conn:
        query = sa.select(table).where(table.c.surname == "maes")
        for _ in range(2):  # also from the compiled cache
            with pytest.raises(QueryError, match="vaultkit_exact=False"):
                conn.execute(query).all()
        raw = conn.execute(query.execution_options(vaultkit_exact=False)).all()
        assert raw  # the candidates, asked for knowingly


def test_limit_and_offset_apply_to_the_exact_matches(sqlite: sa.Engine) -> None:
    """LIMIT/OFFSET are applied after the check (the candidates are read without them), so the
    false positives never take a place; Query.first() (LIMIT 1) finds a true match."""
    rows = _population(200)
    _fill(sqlite, rows)
    expected = sorted(r["id"] for r in rows if r["last_name"] == "Maes")
    lookup = Member.surname == "maes"
    with Session(sqlite) as session:
        query = sa.select(Member).where(lookup).order_by(Member.id)
        assert [m.id for m in session.scalars(query.limit(3))] == expected[:3]
        assert [m.id for m in session.scalars(query.offset(2).limit(2))] == expected[2:4]
        first = session.query(Member).filter(lookup).order_by(Member.id).first()
        assert first is not None and first.id == expected[0]
        candidates = _candidates(session, lookup)
        assert candidates[0] != expected[0] or len(candidates) > len(expected)


def test_exact_false_gives_the_candidates(sqlite: sa.Engine) -> None:
    rows = _population(200)
    _fill(sqlite, rows)
    with Session(sqlite) as session:
        exact = _ids(session, Member.last_name_p3.startswith("jans"))
        loose = _ids(session, Member.last_name_p3.startswith("jans", exact=False))
        assert set(exact) < set(loose)


def test_index_labels_and_widths() -> None:
    """Each index has its own key label; digests keep ceil(bits/8) bytes, unused bits zero."""
    table = Member.__table__
    assert table.c.locator.type.key_column() == "compound:locator"
    assert table.c.last_name_p3.type.key_column() == "prefix:last_name_p3"
    assert table.c.surname.type.key_column() == "last_name"
    assert table.c.locator.type.stored_length == 2
    with _vault() as vault:
        vaultkit.sqla.configure(vault)
        try:
            for _ in range(50):
                digest = table.c.last_name_p3.type.digest(str(random.random()))
                assert len(digest) == 2 and digest[1] & 0b111 == 0
        finally:
            vaultkit.sqla.configure(None)
    with pytest.raises(ConfigurationError, match="4 to 256"):
        PrefixIndex("x", length=3, bits=3)
    with pytest.raises(ConfigurationError, match="distinct names"):
        CompoundIndex(Part("a"), Part("a"))


def test_compound_encoding_is_unambiguous() -> None:
    """("ab", "c") and ("a", "bc") have different inputs (a naive join would not)."""
    meta = sa.MetaData()
    index = vaultkit.sqla.CompoundIndexType([Part("x"), Part("y")], domain="identity")
    sa.Table(
        "t", meta, sa.Column("x", sa.String), sa.Column("y", sa.String), sa.Column("ix", index)
    )
    assert index.encode(("ab", "c")) != index.encode(("a", "bc"))


def test_a_column_named_like_a_label_is_refused(vault: Vault) -> None:
    meta = sa.MetaData()
    table = sa.Table(
        "clash",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("x", Encrypted(sa.String(10), domain="identity")),
        sa.Column("prefix:p", Encrypted(sa.String(10), domain="identity")),
        sa.Column("p", vaultkit.sqla.PrefixIndexType("x", length=2)),
    )
    with pytest.raises(ConfigurationError, match="share this index's key label"):
        table.c.p.type.digest("abc")


# -- attackers ------------------------------------------------------------------------------------------


def test_index_cells_copied_between_rows_do_not_return_a_wrong_row(engine: sa.Engine) -> None:
    """A database writer copies Janssens' index cells onto Peeters' row: the digests match, the
    decrypted values do not, and Peeters never comes back for Janssens."""
    _fill(
        engine,
        [
            {
                "id": 1,
                "postal_code": "1000",
                "birth_date": dt.date(1980, 1, 1),
                "last_name": "Janssens",
            },
            {
                "id": 2,
                "postal_code": "9000",
                "birth_date": dt.date(1960, 1, 1),
                "last_name": "Peeters",
            },
        ],
    )
    columns = ["locator", "last_name_p3", "birth_year", "surname"]
    with engine.begin() as conn:
        source = conn.execute(
            sa.text(f"SELECT {', '.join(columns)} FROM search_members WHERE id = 1")
        ).one()
        conn.execute(
            sa.text(
                f"UPDATE search_members SET {', '.join(f'{c} = :{c}' for c in columns)} "
                "WHERE id = 2"
            ),
            dict(zip(columns, source, strict=True)),
        )
    with Session(engine) as session:
        asked = {"postal_code": "1000", "birth_date": dt.date(1980, 6, 6), "last_name": "Janssens"}
        lookups = [
            Member.locator.match(**asked),
            Member.last_name_p3.startswith("jan"),
            Member.birth_year.between(dt.date(1980, 1, 1), dt.date(1980, 12, 31)),
            Member.surname == "janssens",
        ]
        for lookup in lookups:
            assert 2 in _candidates(session, lookup)  # the forged cells do match in SQL
            assert _ids(session, lookup) == [1]


def test_a_reader_without_the_grant_gets_an_error_not_fewer_rows(tmp_path: Path) -> None:
    """Checking candidates decrypts them: without the grant of a restricted domain that raises,
    it never silently drops true matches."""

    class Base2(DeclarativeBase):
        pass

    class Patient(Base2):
        __tablename__ = "search_patients"
        id: Mapped[int] = mapped_column(primary_key=True)
        last_name: Mapped[str] = mapped_column(Encrypted(sa.String(50), domain="medical"))
        last_name_p3 = PrefixIndex("last_name", length=3, normalize=fold_name, bits=8)

    domains = [KeyDomain("identity"), KeyDomain("medical", restricted=True, on_denied="seal")]
    with _vault(domains=domains) as vault:
        vaultkit.sqla.configure(vault)
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}")
        try:
            Base2.metadata.create_all(engine)
            nurse = Principal("nurse", grants={"medical"})
            with acting_as(nurse, purpose="intake"), Session(engine) as session:
                session.add_all(
                    [Patient(id=1, last_name="Janssens"), Patient(id=2, last_name="Maes")]
                )
                session.commit()
            query = sa.select(Patient).where(Patient.last_name_p3.startswith("jan"))
            with acting_as(nurse, purpose="care"), Session(engine) as session:
                assert [p.id for p in session.scalars(query)] == [1]
            with acting_as(Principal("clerk"), purpose="billing"), Session(engine) as session:
                with pytest.raises(AccessDeniedError, match="never dropped unread"):
                    session.scalars(query).all()
        finally:
            vaultkit.sqla.configure(None)
            engine.dispose()


# -- rotation, re-keying, erasure, asyncio --------------------------------------------------------


def test_rotation_and_rekey_of_every_index(database_url: str) -> None:
    """Version 2 with query_versions=(1, 2) finds rows under either key; the re-key job rewrites
    every index (compound ones too) under version 2; a missing compound cell is filled."""
    url = database_url

    def model(version: int, versions: tuple[int, ...]) -> sa.Table:
        return sa.Table(
            "rot_members",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("postal_code", Encrypted(sa.String(8), domain="identity")),
            sa.Column("last_name", Encrypted(sa.String(50), domain="identity")),
            sa.Column(
                "locator",
                vaultkit.sqla.CompoundIndexType(
                    [Part("postal_code", digits(4)), Part("last_name", first_char)],
                    bits=8,
                    version=version,
                    query_versions=versions,
                ),
            ),
            sa.Column(
                "p3",
                vaultkit.sqla.PrefixIndexType(
                    "last_name",
                    length=3,
                    normalize=fold_name,
                    bits=8,
                    version=version,
                    query_versions=versions,
                ),
            ),
            sa.Column(
                "ix",
                vaultkit.sqla.BlindIndexType("last_name", version=version, query_versions=versions),
            ),
        )

    with _vault() as vault:
        vaultkit.sqla.configure(vault)
        engine = sa.create_engine(url)
        try:
            v1 = model(1, (1,))
            v1.metadata.create_all(engine)
            with engine.begin() as conn:
                conn.execute(
                    v1.insert(), [{"id": 1, "postal_code": "1000", "last_name": "Janssens"}]
                )
            v2 = model(2, (1, 2))
            with engine.begin() as conn:
                conn.execute(v2.insert(), [{"id": 2, "postal_code": "1000", "last_name": "Jacobs"}])
                conn.execute(sa.text("UPDATE rot_members SET locator = NULL WHERE id = 2"))
            raw = {"vaultkit_exact": False}
            with engine.connect() as conn:
                found = conn.scalars(
                    sa.select(v2.c.id).where(v2.c.p3.startswith("jan")).execution_options(**raw)
                ).all()
                assert 1 in found
            report = rekey_table(engine, v2, vault=vault, job="rotate")
            assert report.indexes_rebuilt >= 1
            with engine.connect() as conn:
                stored = conn.execute(sa.text("SELECT locator, p3, ix FROM rot_members")).all()
                assert all(
                    cell is not None and bytes(cell)[0] == 2 for row in stored for cell in row
                )
            v3 = model(2, (2,))
            with engine.connect() as conn:
                match = v3.c.locator.match({"postal_code": "1000", "last_name": "J"})
                found = conn.scalars(sa.select(v3.c.id).where(match).execution_options(**raw)).all()
                assert sorted(found) == [1, 2]
        finally:
            vaultkit.sqla.configure(None)
            sa.Table("rot_members", sa.MetaData()).drop(engine, checkfirst=True)
            engine.dispose()


def test_erasure_nulls_every_index_of_the_subject(tmp_path: Path) -> None:
    class Base3(DeclarativeBase):
        pass

    class Client(Base3):
        __tablename__ = "search_clients"
        id: Mapped[int] = mapped_column(primary_key=True)
        member_id: Mapped[int] = mapped_column(sa.Integer)
        last_name: Mapped[str | None] = mapped_column(
            Encrypted(sa.String(50), domain="medical", subject="member_id", on_erased="null")
        )
        birth_date: Mapped[dt.date | None] = mapped_column(
            Encrypted(sa.Date, domain="medical", subject="member_id", on_erased="null")
        )
        p3 = PrefixIndex("last_name", length=3, normalize=fold_name, bits=8)
        born = BucketIndex("birth_date", bits=8)
        locator = CompoundIndex(Part("last_name", first_char), Part("birth_date", year), bits=8)

    with _vault(domains=[KeyDomain("medical", dek_scope="subject")]) as vault:
        vaultkit.sqla.configure(vault)
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.db'}")
        try:
            Base3.metadata.create_all(engine)
            with Session(engine) as session:
                for i, member in enumerate((17, 18)):
                    session.add(
                        Client(
                            id=i,
                            member_id=member,
                            last_name="Janssens",
                            birth_date=dt.date(1980, 1, 1),
                        )
                    )
                session.commit()
            vault.erase_subject(
                17,
                reason="art17",
                request_id="DSR-1",
                cells=erasure_cells(Base3.metadata, engine, 17),
            )
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT member_id, p3, born, locator FROM search_clients ORDER BY id")
                ).all()
            assert rows[0][1:] == (None, None, None)
            assert all(cell is not None for cell in rows[1][1:])
            with Session(engine) as session:
                query = sa.select(Client).where(Client.p3.startswith("jan"))
                assert [c.member_id for c in session.scalars(query)] == [18]
        finally:
            vaultkit.sqla.configure(None)
            engine.dispose()


def test_async_session_lookups_are_exact(vault: Vault, tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    rows = _population(120)

    async def main() -> tuple[list[int], list[int]]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine) as session:
                session.add_all(Member(**row) for row in rows)
                await session.commit()
                found = await session.scalars(
                    sa.select(Member).where(Member.last_name_p3.startswith("jans"))
                )
                prefix = sorted(m.id for m in found)
                with pytest.raises(QueryError, match="entity"):
                    await session.execute(sa.select(Member.id).where(Member.surname == "maes"))
                found = await session.scalars(sa.select(Member).where(Member.surname == "maes"))
                return prefix, sorted(m.id for m in found)
        finally:
            await engine.dispose()

    prefix, maes = asyncio.run(main())
    assert prefix == sorted(r["id"] for r in rows if fold_name(r["last_name"]).startswith("jans"))  # type: ignore[union-attr]
    assert maes == sorted(r["id"] for r in rows if r["last_name"] == "Maes")


def test_alembic_encrypt_column_fills_prefix_and_bucket_indexes(database_url: str) -> None:
    """op.encrypt_column(indexes={...}) fills the column's search indexes as it encrypts; a
    compound index is refused there (vaultkit rekey fills it once its sources are encrypted)."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    import vaultkit.sqla.alembic

    legacy = sa.Table(
        "alembic_search",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_name", sa.String(50)),
    )
    prefix = vaultkit.sqla.PrefixIndexType("last_name", length=3, normalize=fold_name, bits=6)
    with _vault() as vault:
        vaultkit.sqla.configure(vault)
        engine = sa.create_engine(database_url)
        try:
            legacy.create(engine)
            names = ["Janssens", "Jansen", "Maes", None, "Janvier", "Peeters"] * 20
            with engine.begin() as conn:
                conn.execute(
                    legacy.insert(), [{"id": i, "last_name": n} for i, n in enumerate(names)]
                )
            with engine.begin() as conn:
                op: Any = Operations(MigrationContext.configure(conn))
                op.add_column("alembic_search", sa.Column("last_name_p3", sa.LargeBinary(2)))
                with pytest.raises(ConfigurationError, match="compound"):
                    op.encrypt_column(
                        "alembic_search",
                        "last_name",
                        sa.String(50),
                        domain="identity",
                        indexes={
                            "c": vaultkit.sqla.CompoundIndexType([Part("last_name"), Part("x")])
                        },
                    )
                op.encrypt_column(
                    "alembic_search",
                    "last_name",
                    sa.String(50),
                    domain="identity",
                    indexes={"last_name_p3": prefix},
                    batch_size=50,
                )

            class Base4(DeclarativeBase):
                pass

            class Row(Base4):
                __tablename__ = "alembic_search"
                id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
                last_name: Mapped[str | None] = mapped_column(
                    Encrypted(sa.String(50), domain="identity")
                )
                last_name_p3 = PrefixIndex("last_name", length=3, normalize=fold_name, bits=6)

            with Session(engine) as session:
                found = sorted(
                    r.id
                    for r in session.scalars(
                        sa.select(Row).where(Row.last_name_p3.startswith("jans"))
                    )
                )
            assert found == [i for i, n in enumerate(names) if n in ("Janssens", "Jansen")]
        finally:
            vaultkit.sqla.configure(None)
            legacy.drop(engine, checkfirst=True)
            engine.dispose()


def test_sqlmodel_classes_refuse_the_new_index_declarations() -> None:
    sqlmodel = pytest.importorskip("sqlmodel")
    with pytest.raises((ConfigurationError, RuntimeError)) as raised:

        class Person(sqlmodel.SQLModel, table=True):  # type: ignore[call-arg]
            __tablename__ = "search_sqlmodel_people"
            id: int | None = sqlmodel.Field(default=None, primary_key=True)
            p3: bytes | None = PrefixIndex("name", length=3)  # type: ignore[assignment]

    # Python 3.11 wraps an error of __set_name__ in a RuntimeError.
    error = raised.value if isinstance(raised.value, ConfigurationError) else raised.value.__cause__
    assert isinstance(error, ConfigurationError) and "SQLModel ignores" in str(error)


def test_alembic_renders_a_search_index_as_its_storage() -> None:
    """Autogenerate renders a compound index as a blind index of the same width (its transforms
    may have no import path; a migration needs the storage only)."""

    context = type("Context", (), {"imports": set()})()
    rendered = vaultkit.sqla.alembic_render_item("type", Member.__table__.c.locator.type, context)
    assert rendered == "vaultkit.sqla.types.BlindIndexType('postal_code', bits=6)"
    stand_in = vaultkit.sqla.BlindIndexType("postal_code", bits=6)
    assert stand_in.stored_length == Member.__table__.c.locator.type.stored_length
    # SQLAlchemy compares columns with == to find them in its lists: allowed, not a lookup.
    assert (Member.__table__.c.locator == Member.__table__.c.locator) is not None


def test_aliases_and_joined_entities_are_checked(sqlite: sa.Engine) -> None:
    """The check finds its entity in a row of several entities and through aliased(Member)."""
    rows = _population(150)
    _fill(sqlite, rows)
    expected = sorted(r["id"] for r in rows if fold_name(r["last_name"]).startswith("jans"))  # type: ignore[union-attr]
    with Session(sqlite) as session:
        alias = sa.orm.aliased(Member)
        found = session.scalars(sa.select(alias).where(alias.last_name_p3.startswith("jans")))
        assert sorted(m.id for m in found) == expected
        other = sa.orm.aliased(Member)
        pairs = session.execute(
            sa.select(other, Member)
            .join(Member, Member.id == other.id)
            .where(Member.last_name_p3.startswith("jans"))
        ).all()
        assert sorted(m.id for _o, m in pairs) == expected
