"""Tests for ORM-enabled INSERT and UPDATE statements on encrypted columns.

SQLAlchemy compares columns with ``==`` itself while it runs these statements (dict and list
lookups keyed by column); vaultkit's refusal of ``==`` on an encrypted column must apply to the
application's expressions only. The statements must round-trip: values encrypted and bound to their
row, blind indexes in sync, and the objects in the identity map holding the new values, sealed for a
principal without the grant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from vaultkit import KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit.errors import DecryptionError, QueryError
from vaultkit.sqla import BlindIndex, Encrypted
from vaultkit.testing import InMemoryKeyProvider

COACH = Principal("coach-17", grants={"medical"})
CLAIMS = Principal("claims-handler-3")


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "orm_stmt_members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    email_index = BlindIndex("email", normalize=str.lower)
    note: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="medical", row_key="id"))


SYNC = ["auto", "evaluate", "fetch", False]


pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


@pytest.fixture
def vault_kwargs(tmp_path: Path) -> dict[str, Any]:
    """A vault with a plain identity domain and a restricted, audited medical domain."""
    return {
        "provider": InMemoryKeyProvider(),
        "store": f"sqlite:///{tmp_path / 'keys.db'}",
        "domains": [KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)],
    }


@pytest.fixture
def engine(database_url: str, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(database_url)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


def stored_note(engine: sa.Engine, member_id: uuid.UUID) -> bytes:
    with engine.connect() as conn:
        table = Member.__table__
        raw = conn.execute(
            sa.text(f"SELECT note FROM {table.name} WHERE id = :id"),  # type: ignore[attr-defined]
            {"id": member_id.hex if engine.dialect.name != "postgresql" else member_id},
        ).scalar_one()
    return bytes(raw)


def assert_round_trip(engine: sa.Engine, member_id: uuid.UUID, email: str, note: str) -> None:
    """A fresh session finds the member by its blind index and reads the values bound to its row."""
    note_type = Member.__table__.c.note.type  # type: ignore[attr-defined]
    stored = stored_note(engine, member_id)
    assert note.encode() not in stored
    with acting_as(COACH, purpose="check"), Session(engine) as s:
        found = s.scalars(sa.select(Member).where(Member.email_index == email.upper())).one()
        assert (found.id, found.email, found.note) == (member_id, email, note)
        assert note_type.decrypt_value(stored, row=member_id) == note
        with pytest.raises(DecryptionError):
            note_type.decrypt_value(stored, row=uuid.uuid4())


class TestOrmUpdate:
    @pytest.mark.parametrize("sync", SYNC)
    def test_update_values_round_trips(self, engine: sa.Engine, sync: object) -> None:
        """An ORM update().values() of encrypted columns runs under every synchronize_session."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            m = Member(email="old@example.org", note="old note")
            s.add(m)
            s.commit()
            member_id = m.id
            assert m.note == "old note"
            s.execute(
                sa.update(Member)
                .where(Member.id == member_id)
                .values(note="insulin since 2019", email="new@example.org"),
                execution_options={"synchronize_session": sync},
            )
            s.commit()
        assert_round_trip(engine, member_id, "new@example.org", "insulin since 2019")

    @pytest.mark.parametrize("sync", ["auto", "evaluate", "fetch"])
    def test_identity_map_after_update(self, engine: sa.Engine, sync: str) -> None:
        """After a synchronised update the object reads the new values, sealed without the grant."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            m = Member(email="old@example.org", note="old note")
            s.add(m)
            s.commit()
            assert (m.email, m.note) == ("old@example.org", "old note")
            s.execute(
                sa.update(Member).where(Member.id == m.id).values(note="new note", email="n@x.org"),
                execution_options={"synchronize_session": sync},
            )
            assert "new note" not in repr(vars(m))
            with acting_as(CLAIMS, purpose="claim"):
                assert isinstance(m.note, SealedValue)
                assert m.email == "n@x.org"
            assert m.note == "new note"
            with acting_as(CLAIMS, purpose="claim"):
                assert isinstance(m.note, SealedValue)

    def test_update_of_index_source_only(self, engine: sa.Engine) -> None:
        """An ORM update of the index source alone re-indexes it and leaves the row-bound note readable."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            m = Member(email="a@example.org", note="old")
            s.add(m)
            s.commit()
            member_id = m.id
            s.execute(sa.update(Member).where(Member.id == member_id).values(email="b@example.org"))
            s.commit()
        assert_round_trip(engine, member_id, "b@example.org", "old")

    def test_bulk_update_by_primary_key(self, engine: sa.Engine) -> None:
        """update(Member) with a list of dicts by primary key binds each value to its own row."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            members = [Member(email=f"m{i}@example.org", note=f"n{i}") for i in range(3)]
            s.add_all(members)
            s.commit()
            ids = [m.id for m in members]
            s.execute(
                sa.update(Member),
                [
                    {"id": i, "note": f"new {n}", "email": f"x{n}@example.org"}
                    for n, i in enumerate(ids)
                ],
            )
            s.commit()
        for n, member_id in enumerate(ids):
            assert_round_trip(engine, member_id, f"x{n}@example.org", f"new {n}")

    @pytest.mark.parametrize("sync", ["auto", "evaluate", "fetch"])
    def test_update_where_blind_index_synchronises(self, engine: sa.Engine, sync: str) -> None:
        """An update WHERE blind index == value updates the matching object in the identity map."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            m = Member(email="a@example.org", note="n")
            other = Member(email="b@example.org", note="n")
            s.add_all([m, other])
            s.commit()
            assert (m.email, other.email) == ("a@example.org", "b@example.org")
            s.execute(
                sa.update(Member)
                .where(Member.email_index == "A@example.org")
                .values(email="c@example.org"),
                execution_options={"synchronize_session": sync},
            )
            assert (m.email, other.email) == ("c@example.org", "b@example.org")
            s.commit()
        with acting_as(COACH, purpose="check"), Session(engine) as s:
            assert sorted(s.scalars(sa.select(Member.email))) == ["b@example.org", "c@example.org"]

    @pytest.mark.parametrize("sync", ["auto", "evaluate", "fetch"])
    def test_identity_map_index_follows_source(self, engine: sa.Engine, sync: str) -> None:
        """After a synchronised update of the source, the object's blind index is the stored one."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            m = Member(email="a@example.org", note="n")
            s.add(m)
            s.commit()
            old_digest = m.email_index
            s.execute(
                sa.update(Member).where(Member.id == m.id).values(email="b@example.org"),
                execution_options={"synchronize_session": sync},
            )
            stored = s.scalar(sa.select(Member.email_index).where(Member.id == m.id))
            assert stored != old_digest
            assert m.email_index == stored


class TestOrmInsertReturning:
    def test_bulk_insert_returning_entities(self, engine: sa.Engine) -> None:
        """insert().returning(Member) with a list of dicts encrypts, binds and indexes every row."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            if not engine.dialect.insert_executemany_returning:
                pytest.skip(f"{engine.dialect.name} has no executemany RETURNING")
            rows = [
                {"id": uuid.uuid4(), "email": "c@example.org", "note": "n1"},
                {"id": uuid.uuid4(), "email": "d@example.org", "note": "n2"},
            ]
            got = s.scalars(sa.insert(Member).returning(Member), rows).all()
            assert [(m.id, m.email, m.note) for m in got] == [
                (r["id"], r["email"], r["note"]) for r in rows
            ]
            with acting_as(CLAIMS, purpose="claim"):
                assert all(isinstance(m.note, SealedValue) for m in got)
            s.commit()
        for r in rows:
            assert_round_trip(engine, r["id"], r["email"], r["note"])  # type: ignore[arg-type]

    def test_insert_values_returning_entity(self, engine: sa.Engine) -> None:
        """insert().values(...).returning(Member) fills the row key from its default and binds to it."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            if not engine.dialect.insert_returning:
                pytest.skip(f"{engine.dialect.name} has no INSERT RETURNING")
            m = s.scalars(
                sa.insert(Member).values(email="e@example.org", note="n3").returning(Member)
            ).one()
            assert (m.email, m.note) == ("e@example.org", "n3")
            with acting_as(CLAIMS, purpose="claim"):
                assert isinstance(m.note, SealedValue)
            member_id = m.id
            s.commit()
        assert_round_trip(engine, member_id, "e@example.org", "n3")

    def test_insert_returning_columns(self, engine: sa.Engine) -> None:
        """insert().returning(Member.note) returns the row-bound value as a cell that opens with its key."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            if not engine.dialect.insert_returning:
                pytest.skip(f"{engine.dialect.name} has no INSERT RETURNING")
            member_id = uuid.uuid4()
            row = s.execute(
                sa.insert(Member)
                .values(id=member_id, email="f@example.org", note="n4")
                .returning(Member.id, Member.note)
            ).one()
            # A row-bound column returned alone comes as a cell, opened with the row key.
            assert row.id == member_id and row.note.decrypt(row=row.id) == "n4"
            s.commit()
        assert_round_trip(engine, member_id, "f@example.org", "n4")


class TestUserComparisonsStillRefused:
    def test_equality_with_a_value(self, engine: sa.Engine) -> None:
        """The application's own Member.note == value is refused at once."""
        with pytest.raises(QueryError, match=r"orm_stmt_members\.note"):
            Member.note == "x"  # noqa: B015
        with pytest.raises(QueryError):
            sa.update(Member).where(Member.note == "x")
        with pytest.raises(QueryError):
            Member.note.in_(["x"])

    def test_equality_with_a_column_is_refused_as_sql(self, engine: sa.Engine) -> None:
        """Encrypted column == a column builds, but is refused when it would become SQL."""
        other = aliased(Member)
        statements = [
            sa.select(Member).where(Member.note == Member.email),
            sa.select(Member).where(Member.note == Member.note),
            sa.select(Member).join(other, Member.email == other.email),
        ]
        with acting_as(COACH, purpose="q"), Session(engine) as s:
            for statement in statements:
                with pytest.raises(
                    QueryError, match=r"orm_stmt_members\.(note|email) is encrypted"
                ):
                    s.scalars(statement).all()


class TestBlindIndexAgainstBlindIndex:
    def test_self_join_finds_duplicates(self, engine: sa.Engine) -> None:
        """A blind index compared with a blind index compares digests: a self-join finds duplicates."""
        with acting_as(COACH, purpose="dedupe"), Session(engine) as s:
            s.add_all(
                [
                    Member(email="Dup@example.org", note="1"),
                    Member(email="dup@example.org", note="2"),
                    Member(email="other@example.org", note="3"),
                ]
            )
            s.commit()
            other = aliased(Member)
            pairs = s.execute(
                sa.select(Member.email, other.email).join(
                    other, sa.and_(Member.email_index == other.email_index, Member.id != other.id)
                )
            ).all()
            assert sorted(a.lower() for a, _ in pairs) == ["dup@example.org"] * 2
