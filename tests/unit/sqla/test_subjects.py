"""Subject-scoped columns (``Encrypted(..., subject=...)``), erased values (``on_erased=``) and the
database side of an erasure (:func:`vaultkit.sqla.erasure_cells`).

Each member's values in a subject-scoped domain are under a key of that member's own; the tests
check which key each write picked (the DEK id in the stored header), that every write path finds
the subject without a query, that a write without one is refused, and what reads give once the
member's keys are destroyed. Erasure is done here with the key store's own calls (fence, then
destroy each key of the member's reference), as :meth:`vaultkit.Vault.erase_subject` does.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

import vaultkit.sqla
from tests._support import FakeClock, dek_of
from vaultkit import KeyDomain, Principal, Retention, SealedValue, Vault, acting_as
from vaultkit.errors import (
    AccessDeniedError,
    ConfigurationError,
    DecryptionError,
    RetentionExpiredError,
    SubjectErasedError,
    ValueErasedError,
)
from vaultkit.sqla import (
    BlindIndex,
    BlindIndexType,
    Encrypted,
    EncryptedCell,
    RowBound,
    erasure_cells,
)
from vaultkit.store import SubjectRecord
from vaultkit.testing import InMemoryKeyProvider

COACH = Principal("coach-7", grants={"medical", "chats"})
CLAIMS = Principal("claims-2", grants={"chats"})
CHECK = 5  # seconds: the vault's key_check_interval


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "subj_members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    email: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    email_index = BlindIndex("email", normalize=str.lower)
    # Restricted and audited: the ORM keeps it as a cell, opened on access.
    note: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="medical", subject="member_id", on_erased="null")
    )
    # Neither: decrypted on load; bound to its row too; erased values raise.
    chat: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="chats", row_key="id", subject="member_id")
    )
    chat_index = BlindIndex("chat")
    visits: Mapped[list[Visit]] = relationship(back_populates="member")


class Visit(Base):
    __tablename__ = "subj_visits"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_pk: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("subj_members.id"))
    member_id: Mapped[int | None] = mapped_column(sa.Integer)
    summary: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="chats", subject="member_id", on_erased="null")
    )
    member: Mapped[Member] = relationship(back_populates="visits")


MEMBERS = Member.__table__
VISITS = Visit.__table__
RAW = sa.table(
    "subj_members",
    sa.column("id", sa.Uuid),
    sa.column("member_id", sa.Integer),
    sa.column("note", sa.LargeBinary),
    sa.column("chat", sa.LargeBinary),
    sa.column("chat_index", sa.LargeBinary),
    sa.column("email_index", sa.LargeBinary),
)

DOMAINS = [
    KeyDomain("identity"),
    KeyDomain("medical", restricted=True, audited=True, dek_scope="subject"),
    KeyDomain("chats", dek_scope="subject"),
]


pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


@pytest.fixture
def vault_kwargs(tmp_path: Path, clock: FakeClock) -> dict[str, Any]:
    """A vault with a plain identity domain and two subject-scoped ones, over an SQLite key store."""
    return {
        "provider": InMemoryKeyProvider(),
        "store": f"sqlite:///{tmp_path / 'keys.db'}",
        "domains": DOMAINS,
        "key_check_interval": CHECK,
    }


@pytest.fixture
def engine(tmp_path: Path, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


def erase(
    vault: Vault, clock: FakeClock, subject: int, domains: tuple[str, ...] = ("medical", "chats")
) -> int:
    """Fence the subject and destroy its keys in ``domains`` through the key store, then let the
    key check interval pass so that this process's cached keys are checked again."""
    now = datetime.now(UTC)
    destroyed = 0
    for domain in domains:
        ref = vault.subject_ref(domain, subject)
        vault.store.put_subject(SubjectRecord(domain, ref, fenced_at=now, erased_at=now))  # type: ignore[attr-defined]
        for key in vault.store.subject_keys(domain, ref):  # type: ignore[attr-defined]
            destroyed += vault.store.destroy_key(key.dek_id, reason="erasure", at=now)  # type: ignore[attr-defined]
    clock.now += CHECK + 1
    return destroyed


def raw_row(engine: sa.Engine, pk: uuid.UUID) -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.select(RAW).where(RAW.c.id == pk)).one()


def add_member(engine: sa.Engine, member_id: int | None, **values: Any) -> uuid.UUID:
    with acting_as(COACH, purpose="intake"), Session(engine) as s:
        m = Member(member_id=member_id, **values)
        s.add(m)
        s.commit()
        return m.id


# -- configuration ------------------------------------------------------------------------------


class TestConfiguration:
    def _table(self, column: sa.Column[Any]) -> sa.Table:
        return sa.Table(
            f"cfg_{uuid.uuid4().hex[:8]}",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("member_id", sa.Integer),
            column,
        )

    def test_subject_scoped_domain_needs_subject(self, engine: sa.Engine) -> None:
        """A column of a subject-scoped domain without subject= is refused at its first write."""
        table = self._table(sa.Column("note", Encrypted(sa.Text, domain="medical")))
        table.create(engine)
        with engine.begin() as conn, pytest.raises(ConfigurationError, match="subject="):
            conn.execute(table.insert(), {"id": 1, "member_id": 1, "note": "x"})

    def test_subject_naming_no_column_is_refused(self, engine: sa.Engine) -> None:
        """subject= naming a column the table lacks is refused, naming the column."""
        table = self._table(sa.Column("note", Encrypted(sa.Text, domain="chats", subject="nope")))
        with pytest.raises(ConfigurationError, match="'nope'"):
            with engine.begin() as conn:
                conn.execute(table.insert(), {"id": 1, "member_id": 1, "note": "x"})

    def test_subject_on_a_process_domain_is_refused(self, engine: sa.Engine) -> None:
        """subject= on a domain that is not subject-scoped is refused, not ignored."""
        table = self._table(
            sa.Column("email", Encrypted(sa.Text, domain="identity", subject="member_id"))
        )
        table.create(engine)
        with engine.begin() as conn, pytest.raises(ConfigurationError, match="not subject-scoped"):
            conn.execute(table.insert(), {"id": 1, "member_id": 1, "email": "x"})

    def test_encrypted_subject_column_is_refused(self, engine: sa.Engine) -> None:
        """The subject column must be plain: an encrypted one can neither pick keys nor be found."""
        table = sa.Table(
            f"cfg_{uuid.uuid4().hex[:8]}",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("member_id", Encrypted(sa.Integer, domain="identity")),
            sa.Column("note", Encrypted(sa.Text, domain="chats", subject="member_id")),
        )
        with pytest.raises(ConfigurationError, match="plain column"):
            with engine.begin() as conn:
                conn.execute(table.insert(), {"id": 1, "member_id": 1, "note": "x"})

    def test_on_erased_takes_raise_or_null(self) -> None:
        """on_erased= accepts "raise" and "null" only."""
        with pytest.raises(ConfigurationError, match="on_erased"):
            Encrypted(sa.Text, domain="chats", subject="member_id", on_erased="ignore")

    def test_moving_a_process_column_to_a_subject_domain(self, engine: sa.Engine) -> None:
        """A column moved to a subject-scoped domain reads its old values through previous=
        and writes new ones under each member's key."""
        name = f"moved_{uuid.uuid4().hex[:8]}"
        old = sa.Table(
            name,
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("member_id", sa.Integer),
            sa.Column("note", Encrypted(sa.Text, domain="identity")),
        )
        old.create(engine)
        with engine.begin() as conn:
            conn.execute(old.insert(), {"id": 1, "member_id": 1, "note": "old"})
        new = sa.Table(
            name,
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("member_id", sa.Integer),
            sa.Column(
                "note",
                Encrypted(
                    sa.Text,
                    domain="chats",
                    subject="member_id",
                    previous=Encrypted(sa.Text, domain="identity"),
                ),
            ),
        )
        with engine.begin() as conn:
            conn.execute(new.insert(), {"id": 2, "member_id": 2, "note": "new"})
            got = {r.id: r.note for r in conn.execute(sa.select(new.c.id, new.c.note))}
        assert got == {1: "old", 2: "new"}

    def test_subject_and_on_erased_are_in_the_cache_key(self) -> None:
        """Both are positional-or-keyword parameters, so SQLAlchemy's cache key tells them apart."""
        keys = {
            Encrypted(sa.Text, domain="chats", subject=s, on_erased=o)._static_cache_key
            for s in ("member_id", "owner_id")
            for o in ("raise", "null")
        }
        assert len(keys) == 4

    def test_copy_and_repr_keep_both(self) -> None:
        """A dialect copy keeps subject= and on_erased=; repr renders them for Alembic."""
        column_type = Encrypted(sa.Text, domain="chats", subject="member_id", on_erased="null")
        copied = column_type.copy()
        assert (copied.subject, copied.on_erased) == ("member_id", "null")
        assert "subject='member_id'" in repr(column_type)
        assert "on_erased='null'" in repr(column_type)
        assert "on_erased" not in repr(Encrypted(sa.Text, domain="chats", subject="m"))


# -- writes pick the subject's key ----------------------------------------------------------------


class TestOrmWrites:
    def test_each_member_gets_a_key_of_its_own(self, engine: sa.Engine) -> None:
        """Two rows of one member share its key; another member's rows are under another key."""
        a1 = add_member(engine, 1, note="a1", chat="hello a1")
        a2 = add_member(engine, 1, note="a2", chat="hello a2")
        b1 = add_member(engine, 2, note="b1", chat="hello b1")
        rows = {pk: raw_row(engine, pk) for pk in (a1, a2, b1)}
        assert dek_of(rows[a1].note) == dek_of(rows[a2].note) != dek_of(rows[b1].note)
        assert dek_of(rows[a1].chat) == dek_of(rows[a2].chat) != dek_of(rows[b1].chat)
        assert dek_of(rows[a1].note) != dek_of(rows[a1].chat)  # one key per member and domain
        with acting_as(COACH, purpose="check"), Session(engine) as s:
            assert {(m.member_id, m.note, m.chat) for m in s.scalars(sa.select(Member))} == {
                (1, "a1", "hello a1"),
                (1, "a2", "hello a2"),
                (2, "b1", "hello b1"),
            }
            found = s.scalars(sa.select(Member).where(Member.chat_index == "hello b1")).one()
            assert found.id == b1

    def test_null_subject_is_refused(self, engine: sa.Engine) -> None:
        """A value with a NULL subject is refused at flush; never plaintext nor someone's key."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            s.add(Member(member_id=None, note="orphan"))
            with pytest.raises(ConfigurationError, match="NULL"):
                s.flush()
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(RAW)).scalar_one() == 0

    def test_null_values_need_no_subject(self, engine: sa.Engine) -> None:
        """A row whose subject-scoped values are NULL needs no subject."""
        pk = add_member(engine, None, email="a@b.be")
        assert raw_row(engine, pk).note is None

    def test_update_of_the_value_alone_keeps_the_members_key(self, engine: sa.Engine) -> None:
        """An ORM update of a value (the UPDATE names neither subject nor row key) uses its key."""
        pk = add_member(engine, 3, note="first", chat="first chat")
        before = raw_row(engine, pk)
        with acting_as(COACH, purpose="edit"), Session(engine) as s:
            m = s.get_one(Member, pk)
            m.note = "second"
            m.chat = "second chat"
            s.flush()
            assert type(m.__dict__["note"]) is EncryptedCell  # no RowBound left behind
            assert m.__dict__["chat"] == "second chat"
            assert (m.note, m.chat) == ("second", "second chat")
            s.commit()
        after = raw_row(engine, pk)
        assert after.note != before.note
        assert dek_of(after.note) == dek_of(before.note)
        assert dek_of(after.chat) == dek_of(before.chat)

    def test_changing_the_subject_reencrypts_under_the_new_members_key(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """Moving a row to another member rewrites its values under that member's keys."""
        other = add_member(engine, 5, note="five", chat="five chat")
        pk = add_member(engine, 4, note="four", chat="four chat")
        with acting_as(COACH, purpose="fix"), Session(engine) as s:
            m = s.get_one(Member, pk)
            s.expire(m, ["note", "chat"])  # not loaded: read for the move
            m.member_id = 5
            s.commit()
        moved, five = raw_row(engine, pk), raw_row(engine, other)
        assert dek_of(moved.note) == dek_of(five.note)
        assert dek_of(moved.chat) == dek_of(five.chat)
        erase(vault, clock, 4)  # the old member's keys no longer matter
        with acting_as(COACH, purpose="check"), Session(engine) as s:
            m = s.get_one(Member, pk)
            assert (m.member_id, m.note, m.chat) == (5, "four", "four chat")

    def test_changing_the_subject_needs_the_grant_to_read(self, engine: sa.Engine) -> None:
        """A move by a principal who cannot read a restricted value is refused, not half done."""
        pk = add_member(engine, 6, note="six", chat="six chat")
        with acting_as(CLAIMS, purpose="fix"), Session(engine) as s:
            m = s.get_one(Member, pk)
            m.member_id = 7
            with pytest.raises(AccessDeniedError, match="new subject"):
                s.flush()
        assert raw_row(engine, pk).member_id == 6

    def test_failed_flush_leaves_no_wrapper_behind(self, engine: sa.Engine) -> None:
        """A flush that fails after the subject was attached leaves no wrapper in the object;
        after the rollback it reads the stored value."""
        pk = add_member(engine, 9, chat="stored")
        with acting_as(COACH, purpose="edit"), Session(engine) as s:
            m = s.get_one(Member, pk)
            m.chat = "assigned"
            s.add(Member(member_id=None, chat="orphan"))
            with pytest.raises(ConfigurationError, match="NULL"):
                s.flush()
            assert not any(type(v) is RowBound for v in vars(m).values())
            s.rollback()
            assert m.chat == "stored"

    def test_flush_without_a_scope(self, engine: sa.Engine) -> None:
        """Outside any acting_as block, writes of an unrestricted subject-scoped column work."""
        with Session(engine) as s:
            m = Member(member_id=8, chat="plain")
            s.add(m)
            s.commit()
            m.chat = "plain 2"
            s.commit()
            assert m.chat == "plain 2"


@pytest.fixture
def any_engine(database_url: str, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(database_url)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


class TestCoreStatements:
    """On SQLite, PostgreSQL and MariaDB."""

    @pytest.fixture
    def engine(self, any_engine: sa.Engine) -> sa.Engine:
        return any_engine

    def test_insert_executemany_and_returning(self, engine: sa.Engine) -> None:
        """Core insert (one row, many, RETURNING) takes each row's subject from its parameters."""
        ids = [uuid.uuid4() for _ in range(3)]
        with acting_as(COACH, purpose="import"), engine.begin() as conn:
            conn.execute(MEMBERS.insert(), {"id": ids[0], "member_id": 10, "chat": "x"})
            conn.execute(
                MEMBERS.insert(),
                [
                    {"id": ids[1], "member_id": 10, "chat": "y"},
                    {"id": ids[2], "member_id": 11, "chat": "z"},
                ],
            )
            returned = conn.execute(
                MEMBERS.insert().returning(MEMBERS.c.id, MEMBERS.c.note),
                {"id": uuid.uuid4(), "member_id": 11, "note": "n"},
            ).one()
            assert returned.note == "n"
        rows = [raw_row(engine, pk) for pk in ids]
        assert dek_of(rows[0].chat) == dek_of(rows[1].chat) != dek_of(rows[2].chat)

    def test_insert_without_the_subject_is_refused(self, engine: sa.Engine) -> None:
        """A Core insert that names no subject column cannot pick a key and is refused."""
        with engine.begin() as conn, pytest.raises(ConfigurationError, match="not known"):
            conn.execute(MEMBERS.insert(), {"id": uuid.uuid4(), "chat": "x"})

    def test_update_with_the_subject_in_the_where_clause(self, engine: sa.Engine) -> None:
        """update().where(subject == x) takes the subject from the WHERE clause."""
        pk = add_member(engine, 12, chat="old")
        before = raw_row(engine, pk)
        with engine.begin() as conn:
            conn.execute(
                MEMBERS.update()
                .where(MEMBERS.c.id == pk, MEMBERS.c.member_id == 12)
                .values(chat="new")
            )
        assert dek_of(raw_row(engine, pk).chat) == dek_of(before.chat)
        with Session(engine) as s:
            assert s.get_one(Member, pk).chat == "new"

    def test_update_by_primary_key_alone_is_refused(self, engine: sa.Engine) -> None:
        """update().where(id == x) of a subject-scoped value cannot know the subject: refused."""
        pk = add_member(engine, 13, chat="old")
        with engine.begin() as conn, pytest.raises(ConfigurationError, match="member_id"):
            conn.execute(MEMBERS.update().where(MEMBERS.c.id == pk).values(chat="new"))

    def test_changing_the_subject_alone_is_refused(self, engine: sa.Engine) -> None:
        """A Core UPDATE of the subject column that leaves the values behind is refused."""
        pk = add_member(engine, 14, chat="c", note="n")
        with engine.begin() as conn, pytest.raises(ConfigurationError, match="subject column"):
            conn.execute(MEMBERS.update().where(MEMBERS.c.id == pk).values(member_id=15))
        with engine.begin() as conn:
            conn.execute(
                MEMBERS.update()
                .where(MEMBERS.c.id == pk)
                .values(member_id=15, chat="c2", note=None)
            )
        assert raw_row(engine, pk).member_id == 15

    def test_orm_enabled_insert_and_update(self, engine: sa.Engine) -> None:
        """session.execute(insert(Member), [...]) and update(Member).where(subject) pick the keys."""
        ids = [uuid.uuid4(), uuid.uuid4()]
        with acting_as(COACH, purpose="import"), Session(engine) as s:
            s.execute(
                sa.insert(Member),
                [
                    {"id": ids[0], "member_id": 20, "note": "n20", "chat": "c20"},
                    {"id": ids[1], "member_id": 21, "note": "n21", "chat": "c21"},
                ],
            )
            s.execute(
                sa.update(Member)
                .where(Member.member_id == 21, Member.id == ids[1])
                .values(note="n21b"),
            )
            s.commit()
            assert [s.get_one(Member, pk).note for pk in ids] == ["n20", "n21b"]
        rows = [raw_row(engine, pk) for pk in ids]
        assert dek_of(rows[0].note) != dek_of(rows[1].note)

    def test_orm_bulk_update_by_primary_key(self, engine: sa.Engine) -> None:
        """A bulk update by primary key names no subject: refused, unless it writes the subject
        and every value under that subject's keys."""
        pk = add_member(engine, 22, note="n", chat="c")
        with acting_as(COACH, purpose="bulk"), Session(engine) as s:
            with pytest.raises(ConfigurationError, match="not known"):
                s.execute(sa.update(Member), [{"id": pk, "chat": "c2"}])
            s.rollback()
            with pytest.raises(ConfigurationError, match="subject column"):
                s.execute(sa.update(Member), [{"id": pk, "member_id": 22, "chat": "c2"}])
            s.rollback()
            s.execute(sa.update(Member), [{"id": pk, "member_id": 23, "chat": "c3", "note": "n3"}])
            s.commit()
            m = s.get_one(Member, pk)
            assert (m.member_id, m.chat, m.note) == (23, "c3", "n3")

    def test_row_bound_written_by_hand(self, engine: sa.Engine) -> None:
        """An application can give the subject itself, with RowBound(value, row, subject=...)."""
        column_type = MEMBERS.c.chat.type
        pk = uuid.uuid4()
        blob = column_type.encrypt_value(RowBound("by hand", pk, subject=30))
        with pytest.raises(ConfigurationError, match="not known"):
            column_type.encrypt_value(RowBound("by hand", pk))
        with engine.begin() as conn:
            conn.execute(sa.insert(RAW), {"id": pk, "member_id": 30, "chat": blob})
        with Session(engine) as s:
            assert s.get_one(Member, pk).chat == "by hand"


def test_pandas_to_sql_picks_each_rows_key(engine: sa.Engine) -> None:
    """vaultkit.sqla.pandas.to_sql encrypts each row under its member's key; a NULL member fails."""
    pd = pytest.importorskip("pandas")
    import vaultkit.sqla.pandas

    ids = [uuid.uuid4() for _ in range(4)]
    frame = pd.DataFrame({"id": ids, "member_id": [40, 40, 41, 41], "chat": ["a", "b", "c", None]})
    assert vaultkit.sqla.pandas.to_sql(frame, Member, engine) == 4
    rows = [raw_row(engine, pk) for pk in ids]
    assert dek_of(rows[0].chat) == dek_of(rows[1].chat) != dek_of(rows[2].chat)
    orphan = pd.DataFrame({"id": [uuid.uuid4()], "member_id": [None], "chat": ["x"]})
    with pytest.raises(ConfigurationError, match="NULL"):
        vaultkit.sqla.pandas.to_sql(orphan, Member, engine)


@pytest.fixture(
    params=["aiosqlite", pytest.param("asyncpg", marks=pytest.mark.postgres)],
)
def async_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for an async driver: an aiosqlite file, or a fresh PostgreSQL database
    (async drivers take no search-path option), dropped after."""
    if request.param == "aiosqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'async.db'}"
        return
    server: sa.Engine = request.getfixturevalue("postgres_engine")
    name = f"vk_subj_{uuid.uuid4().hex[:12]}"
    with server.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = server.url.set(database=name, drivername="postgresql+asyncpg")
    yield url.render_as_string(hide_password=False)
    with server.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


# -- erased values ------------------------------------------------------------------------------


class TestErased:
    def test_null_mode_loads_erased_cells_as_none(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """After an erasure, on_erased="null" columns read None; the rest of the row still loads."""
        erased = add_member(engine, 50, email="gone@x.be", note="secret")
        kept = add_member(engine, 51, email="kept@x.be", note="kept")
        assert erase(vault, clock, 50, ("medical",)) >= 1
        with acting_as(COACH, purpose="read"), Session(engine) as s:
            members = {m.id: m for m in s.scalars(sa.select(Member))}
            assert (members[erased].email, members[erased].note) == ("gone@x.be", None)
            assert members[kept].note == "kept"

    def test_raise_mode_raises_a_distinct_error(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """on_erased="raise" lets SubjectErasedError through, not the opaque DecryptionError."""
        add_member(engine, 52, chat="erased chat")
        erase(vault, clock, 52)
        with Session(engine) as s, pytest.raises(SubjectErasedError) as caught:
            s.scalars(sa.select(Member)).all()
        assert caught.value.reason == "erasure"
        assert "52" not in str(caught.value)

    def test_null_mode_still_raises_on_tampering(self, engine: sa.Engine) -> None:
        """A forged or damaged value is no erased one: DecryptionError in "null" mode too."""
        pk = add_member(engine, 53, note="note")
        blob = bytearray(raw_row(engine, pk).note)
        blob[-1] ^= 1
        with engine.begin() as conn:
            conn.execute(sa.update(RAW).where(RAW.c.id == pk).values(note=bytes(blob)))
        with acting_as(COACH, purpose="read"), Session(engine) as s:
            m = s.get_one(Member, pk)
            with pytest.raises(DecryptionError) as caught:
                _ = m.note
            assert not isinstance(caught.value, ValueErasedError)

    def test_decrypt_value_can_ask_for_the_error(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """decrypt_value(on_erased="raise") on a "null" column raises, for re-key and verify."""
        pk = add_member(engine, 54, note="n")
        stored = raw_row(engine, pk).note
        erase(vault, clock, 54, ("medical",))
        note_type = MEMBERS.c.note.type
        with acting_as(COACH, purpose="verify"):
            assert note_type.decrypt_value(stored) is None
            with pytest.raises(SubjectErasedError):
                note_type.decrypt_value(stored, on_erased="raise")

    @pytest.mark.parametrize("loader", [joinedload, selectinload])
    def test_eager_loads_of_erased_cells(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock, loader: Any
    ) -> None:
        """Joined and selectin loads of related rows with erased cells keep working in "null" mode."""
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            for member_id in (60, 61):
                m = Member(member_id=member_id, note=f"n{member_id}")
                m.visits = [Visit(member_id=member_id, summary=f"v{member_id}")]
                s.add(m)
            s.commit()
        erase(vault, clock, 60)
        with acting_as(COACH, purpose="read"), Session(engine) as s:
            members = s.scalars(sa.select(Member).options(loader(Member.visits))).unique().all()
            got = {m.member_id: (m.note, [v.summary for v in m.visits]) for m in members}
        assert got == {60: (None, [None]), 61: ("n61", ["v61"])}

    def test_erased_subject_cannot_be_written(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """A fenced subject's new values are refused (SubjectErasedError from the vault)."""
        erase(vault, clock, 62)
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            s.add(Member(member_id=62, chat="after erasure"))
            with pytest.raises(SubjectErasedError):
                s.flush()

    def test_async_session_loads_erased_cells_as_none(
        self, async_url: str, vault: Vault, clock: FakeClock
    ) -> None:
        """AsyncSession: inserts and updates pick the member's key; a load (values opened ahead
        in the greenlet) gives None for erased cells."""
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        url = async_url

        async def run() -> dict[int | None, tuple[str | None, str | None]]:
            eng = create_async_engine(url)
            try:
                async with eng.begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                with acting_as(COACH, purpose="intake"):
                    async with AsyncSession(eng) as s:
                        b = Member(member_id=71, note="b")
                        s.add_all([Member(member_id=70, note="a"), b])
                        await s.commit()
                        await s.refresh(b)
                        b.note = "b2"  # an update of the value alone, flushed in the greenlet
                        await s.commit()
                erase(vault, clock, 70, ("medical",))
                with acting_as(COACH, purpose="read"):
                    async with AsyncSession(eng) as s:
                        members = (await s.scalars(sa.select(Member))).all()
                        return {m.member_id: (m.note, m.chat) for m in members}
            finally:
                await eng.dispose()

        assert asyncio.run(run()) == {70: (None, None), 71: ("b2", None)}


# -- cold loads: the keys of a result fetched at once ------------------------------------------


def _cold(vault: Vault) -> list[str]:
    """Forget every key this process holds (as a new process would), and count the key-store
    reads of data-key rows from now on (audit writes aside)."""
    vault._keyring.cache.clear()
    vault._keyring.subject_actives.clear()
    statements: list[str] = []
    sa.event.listen(
        vault.store.engine,  # type: ignore[attr-defined]
        "before_cursor_execute",
        lambda *a: statements.append(a[2]) if "FROM vaultkit_data_keys" in a[2] else None,
    )
    return statements


class TestColdLoads:
    MEMBERS = 120

    def _fill(self, engine: sa.Engine) -> None:
        with acting_as(COACH, purpose="intake"), Session(engine) as s:
            s.add_all(
                [
                    Member(member_id=i, note=f"n{i}", chat=f"c{i}", email=f"{i}@x.be")
                    for i in range(self.MEMBERS)
                ]
            )
            s.commit()

    def test_an_orm_load_of_many_members_reads_their_keys_at_once(
        self, engine: sa.Engine, vault: Vault
    ) -> None:
        """Loading 120 members' rows (two subject-scoped columns each, one opened on load, one
        on access) costs a few key-store queries, not one or two per member."""
        self._fill(engine)
        statements = _cold(vault)
        with acting_as(COACH, purpose="read"), Session(engine) as s:
            members = s.scalars(sa.select(Member).order_by(Member.member_id)).all()
            assert [(m.note, m.chat) for m in members] == [
                (f"n{i}", f"c{i}") for i in range(self.MEMBERS)
            ]
        assert len(statements) <= 6, len(statements)

    def test_a_core_select_reads_its_keys_at_once_and_streams_are_left_alone(
        self, engine: sa.Engine, vault: Vault
    ) -> None:
        self._fill(engine)
        statements = _cold(vault)
        query = sa.select(MEMBERS.c.member_id, MEMBERS.c.id, MEMBERS.c.chat)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        # Row-bound: Core gives cells, opened with the row key (the keys are cached already).
        chats = sorted((m, cell.decrypt(row=pk)) for m, pk, cell in rows)
        assert chats == [(i, f"c{i}") for i in range(self.MEMBERS)]
        assert len(statements) <= 6, len(statements)
        statements = _cold(vault)
        with engine.connect() as conn:
            streamed = conn.execution_options(stream_results=True).execute(query)
            chats = sorted((m, cell.decrypt(row=pk)) for m, pk, cell in streamed)
        assert chats == [(i, f"c{i}") for i in range(self.MEMBERS)]
        assert len(statements) >= self.MEMBERS  # a stream opens each value as it comes

    def test_an_async_session_load_reads_its_keys_at_once(
        self, engine: sa.Engine, vault: Vault, tmp_path: Path
    ) -> None:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        self._fill(engine)
        statements = _cold(vault)

        async def run() -> list[tuple[str | None, str | None]]:
            eng = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
            try:
                with acting_as(COACH, purpose="read"):
                    async with AsyncSession(eng) as s:
                        members = (
                            await s.scalars(sa.select(Member).order_by(Member.member_id))
                        ).all()
                        return [(m.note, m.chat) for m in members]
            finally:
                await eng.dispose()

        assert asyncio.run(run()) == [(f"n{i}", f"c{i}") for i in range(self.MEMBERS)]
        assert len(statements) <= 6, len(statements)


# -- the database side of an erasure --------------------------------------------------------------


class TestErasureCells:
    def test_blind_index_cells_are_nulled_and_lookups_miss(
        self, any_engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """The erased member's blind-index cells are NULL and a lookup no longer finds it."""
        engine = any_engine
        gone = add_member(engine, 80, email="gone@x.be", chat="same words")
        kept = add_member(engine, 81, email="kept@x.be", chat="same words")
        with Session(engine) as s:
            s.add(Visit(member_pk=gone, member_id=80, summary="visit"))
            s.commit()
        cells = erasure_cells(Base.metadata, engine, 80)
        erase(vault, clock, 80)
        assert cells() == {"subj_members": 1, "subj_visits": 1}
        row = raw_row(engine, gone)
        assert (row.chat_index, row.email_index) == (None, None)
        assert raw_row(engine, kept).chat_index is not None
        with Session(engine) as s:
            assert s.scalars(
                sa.select(Member.id).where(Member.chat_index == "same words")
            ).all() == [kept]
            assert (
                s.scalars(sa.select(Member.id).where(Member.email_index == "gone@x.be")).all() == []
            )
        assert cells() == {"subj_members": 1, "subj_visits": 1}  # idempotent

    def test_a_database_writer_cannot_keep_index_cells_alive(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """A DB writer who moves the erased member's row to another member, or copies its
        ciphertext and digest into another member's row, still sees those index cells nulled."""
        moved = add_member(engine, 83, chat="moved words")
        source = add_member(engine, 84, chat="copied words")
        target = add_member(engine, 85, email="c@x.be", chat="own words")
        copied = raw_row(engine, source)
        with engine.begin() as conn:
            conn.execute(sa.update(RAW).where(RAW.c.id == moved).values(member_id=99))
            conn.execute(
                sa.update(RAW)
                .where(RAW.c.id == target)
                .values(chat=copied.chat, chat_index=copied.chat_index)
            )
        erase(vault, clock, 83)
        assert erasure_cells([Member], engine, 83)() == {"subj_members": 1}
        assert raw_row(engine, moved).chat_index is None
        erase(vault, clock, 84)
        assert erasure_cells([Member], engine, 84)() == {"subj_members": 2}
        assert raw_row(engine, source).chat_index is None
        row = raw_row(engine, target)
        assert row.chat_index is None and row.email_index is not None

    def test_inside_the_callers_transaction(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """With a connection or a session, the callback runs in the caller's transaction (rolled
        back here)."""
        pk = add_member(engine, 82, chat="words")
        erase(vault, clock, 82)
        with engine.connect() as conn:
            assert erasure_cells([Member], conn, 82)() == {"subj_members": 1}
            conn.rollback()
        assert raw_row(engine, pk).chat_index is not None
        with Session(engine) as s:
            assert erasure_cells([Member], s, 82)() == {"subj_members": 1}
            index = s.execute(sa.select(RAW.c.chat_index).where(RAW.c.id == pk)).scalar_one()
            assert index is None  # in the session's transaction
            s.rollback()
        assert raw_row(engine, pk).chat_index is not None

    def test_schema_qualified_names(
        self, vault: Vault, clock: FakeClock, postgres_url: str, postgres_schema: str
    ) -> None:
        """A table in a schema is reported as schema.table."""
        metadata = sa.MetaData(schema=postgres_schema)
        table = sa.Table(
            "events",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("member_id", sa.Integer),
            sa.Column("body", Encrypted(sa.Text, domain="chats", subject="member_id")),
        )
        eng = sa.create_engine(postgres_url)
        try:
            metadata.create_all(eng)
            with eng.begin() as conn:
                conn.execute(table.insert(), [{"id": 1, "member_id": 9, "body": "b"}])
            erase(vault, clock, 9)
            assert erasure_cells(metadata, eng, 9)() == {f"{postgres_schema}.events": 1}
        finally:
            eng.dispose()

    def test_table_with_two_subject_columns(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """Each subject-scoped index goes with its own subject; another index with either."""
        metadata = sa.MetaData()
        messages = sa.Table(
            "subj_messages",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("sender_id", sa.Integer),
            sa.Column("recipient_id", sa.Integer),
            sa.Column("sent", Encrypted(sa.Text, domain="chats", subject="sender_id")),
            sa.Column("sent_index", BlindIndexType("sent")),
            sa.Column("received", Encrypted(sa.Text, domain="chats", subject="recipient_id")),
            sa.Column("received_index", BlindIndexType("received")),
            sa.Column("topic", Encrypted(sa.Text, domain="identity")),
            sa.Column("topic_index", BlindIndexType("topic")),
        )
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                messages.insert(),
                [
                    {
                        "id": i,
                        "sender_id": s,
                        "recipient_id": r,
                        "sent": "s",
                        "received": "r",
                        "topic": "t",
                    }
                    for i, (s, r) in enumerate([(1, 2), (2, 1), (2, 3)])
                ],
            )
        erase(vault, clock, 1)
        assert erasure_cells(metadata, engine, 1)() == {"subj_messages": 2}
        indexes = sa.select(
            messages.c.id,
            messages.c.sent_index.is_(None),
            messages.c.received_index.is_(None),
            messages.c.topic_index.is_(None),
        ).order_by(messages.c.id)
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(indexes)] == [
                (0, True, False, True),  # sent by 1
                (1, False, True, True),  # received by 1
                (2, False, False, False),  # between 2 and 3
            ]

    def test_indexes_of_retained_domains_are_kept(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """An erasure that keeps a domain (retained, or left out with domains=) keeps the
        indexes of its values, and every index of a table whose subject-scoped columns are all
        in kept domains; a row-level index goes when one of the row's subject-scoped columns
        was erased."""
        metadata = sa.MetaData()
        claims = sa.Table(
            "subj_claims",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("member_id", sa.Integer),
            sa.Column("claim", Encrypted(sa.Text, domain="chats", subject="member_id")),
            sa.Column("claim_index", BlindIndexType("claim")),
            sa.Column("ref", Encrypted(sa.Text, domain="identity")),
            sa.Column("ref_index", BlindIndexType("ref")),
        )
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(claims.insert(), [{"id": 1, "member_id": 70, "claim": "c", "ref": "r"}])
        pk = add_member(engine, 70, email="m@x.be", note="asthma", chat="words")
        tables = [*Base.metadata.sorted_tables, claims]
        receipt = vault.erase_subject(
            70,
            reason="art17",
            request_id="DSR-70",
            domains=["medical"],
            cells=erasure_cells(tables, engine, 70),
        )
        assert dict(receipt.tables) == {"subj_members": 1, "subj_visits": 0, "subj_claims": 0}
        row = raw_row(engine, pk)
        assert row.chat_index is not None  # chats kept: its value still reads
        assert row.email_index is None  # the row's medical note was erased
        with engine.connect() as conn:
            kept = conn.execute(sa.select(claims.c.claim_index, claims.c.ref_index)).one()
        assert None not in tuple(kept)
        # Erasing chats too: now the claims table's indexes go.
        receipt = vault.erase_subject(
            70, reason="art17", request_id="DSR-71", cells=erasure_cells(tables, engine, 70)
        )
        assert dict(receipt.tables)["subj_claims"] == 1
        with engine.connect() as conn:
            gone = conn.execute(sa.select(claims.c.claim_index, claims.c.ref_index)).one()
        assert tuple(gone) == (None, None)
        assert raw_row(engine, pk).chat_index is None

    def test_misconfiguration_is_raised_when_built(self, engine: sa.Engine) -> None:
        """A subject column that names no column fails when the callback is built, before erasing."""
        table = sa.Table(
            "bad_events",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("body", Encrypted(sa.Text, domain="chats", subject="member_id")),
        )
        with pytest.raises(ConfigurationError, match="member_id"):
            erasure_cells([table], engine, 1)


# -- as an attacker -------------------------------------------------------------------------------


class TestAttacks:
    def test_row_bound_copy_into_another_members_row_fails(self, engine: sa.Engine) -> None:
        """A DB writer copying A's row-bound ciphertext into B's row gets a DecryptionError."""
        a = add_member(engine, 90, chat="a's chat")
        b = add_member(engine, 91, chat="b's chat")
        with engine.begin() as conn:
            conn.execute(sa.update(RAW).where(RAW.c.id == b).values(chat=raw_row(engine, a).chat))
        with Session(engine) as s, pytest.raises(DecryptionError):
            s.get_one(Member, b)

    def test_copy_without_row_key_stays_under_the_first_members_key(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """Without row_key a copied value reads in B's row, but it is A's: erasing B leaves it,
        erasing A erases it."""
        a = add_member(engine, 92, note="a's note")
        b = add_member(engine, 93, note="b's note")
        with engine.begin() as conn:
            conn.execute(sa.update(RAW).where(RAW.c.id == b).values(note=raw_row(engine, a).note))

        def note_of_b() -> str | None:
            with acting_as(COACH, purpose="read"), Session(engine) as s:
                return s.get_one(Member, b).note

        assert note_of_b() == "a's note"
        erase(vault, clock, 93, ("medical",))  # B's erasure covers no key that was never B's
        assert note_of_b() == "a's note"
        erase(vault, clock, 92, ("medical",))
        assert note_of_b() is None  # gone with A's key

    def test_misplaced_values_are_flagged(self, any_engine: sa.Engine) -> None:
        """misplaced_cells flags a value copied into another member's row, and a row whose
        subject column a writer changed; untouched rows and NULL values are not flagged."""
        engine = any_engine
        a = add_member(engine, 110, note="a's note", chat="a's chat")
        b = add_member(engine, 111, note="b's note")
        c = add_member(engine, 112, chat="c's chat")
        add_member(engine, 113, email="no subject-scoped value")
        assert vaultkit.sqla.misplaced_cells(Base.metadata, engine) == {}
        with engine.begin() as conn:
            conn.execute(sa.update(RAW).where(RAW.c.id == b).values(note=raw_row(engine, a).note))
            conn.execute(sa.update(RAW).where(RAW.c.id == c).values(member_id=110))
        found = vaultkit.sqla.misplaced_cells([Member, Visit], engine, batch=2)
        assert {k: sorted(v) for k, v in found.items()} == {"subj_members": sorted([b, c])}

    def test_another_principal_in_the_same_session(self, engine: sa.Engine) -> None:
        """An object loaded by the coach gives a principal without the grant no plaintext."""
        pk = add_member(engine, 94, note="private")
        with Session(engine) as s:
            with acting_as(COACH, purpose="care"):
                m = s.get_one(Member, pk)
                assert m.note == "private"
            with acting_as(CLAIMS, purpose="claim"):
                assert isinstance(m.note, SealedValue)
            assert "private" not in repr(vars(m))

    def test_identity_map_after_an_erasure_elsewhere(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """A loaded object keeps what it loaded until expired; then the erased cell reads None."""
        pk = add_member(engine, 95, note="n95", chat="c95")
        with acting_as(COACH, purpose="care"), Session(engine) as s:
            m = s.get_one(Member, pk)
            assert (m.note, m.chat) == ("n95", "c95")
            erase(vault, clock, 95, ("medical",))  # another session, another process
            assert m.note == "n95"  # opened by this scope before the erasure: cached in it
            s.expire(m)
            assert m.note is None
        with acting_as(COACH, purpose="care again"), Session(engine) as s:
            assert s.get_one(Member, pk).note is None

    def test_cell_opened_in_a_new_scope_after_erasure_is_none(
        self, engine: sa.Engine, vault: Vault, clock: FakeClock
    ) -> None:
        """A cell loaded before the erasure and first read after it reads None, not plaintext."""
        pk = add_member(engine, 96, note="n96")
        with Session(engine) as s:
            with acting_as(COACH, purpose="load"):
                m = s.get_one(Member, pk)
            erase(vault, clock, 96, ("medical",))
            with acting_as(COACH, purpose="later"):
                assert m.note is None


def test_unconfigured_vault_fails_clearly() -> None:
    """erasure_cells without a configured vault raises a ConfigurationError."""
    vaultkit.sqla.configure(None)
    with pytest.raises(ConfigurationError):
        erasure_cells(Base.metadata, sa.create_engine("sqlite://"), 1)


def _legacy_chats(engine: sa.Engine, name: str, rows: list[dict[str, Any]]) -> sa.Table:
    legacy = sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("member_id", sa.Integer),
        sa.Column("chat", sa.Text),
    )
    legacy.create(engine)
    with engine.begin() as conn:
        conn.execute(legacy.insert(), rows)
    return legacy


def _column_op(engine: sa.Engine, name: str, table: str, **kwargs: Any) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    import vaultkit.sqla.alembic  # noqa: F401 - registers the operations

    with engine.begin() as conn:
        getattr(Operations(MigrationContext.configure(conn)), name)(
            table, "chat", sa.Text, domain="chats", subject="member_id", **kwargs
        )


def test_alembic_encrypt_column_uses_each_rows_subject(engine: sa.Engine) -> None:
    """op.encrypt_column(..., subject=) encrypts each row under its member's key, readable
    through the model; decrypt_column reverses it."""
    rows = [{"id": i, "member_id": 100 + i % 2, "chat": f"chat {i}"} for i in range(6)]
    legacy = _legacy_chats(engine, "legacy_chats", rows)
    _column_op(engine, "encrypt_column", "legacy_chats")
    raw = sa.table("legacy_chats", sa.column("id"), sa.column("chat", sa.LargeBinary))
    with engine.connect() as conn:
        blobs = {r.id: r.chat for r in conn.execute(sa.select(raw.c.id, raw.c.chat))}
    assert dek_of(blobs[0]) == dek_of(blobs[2]) != dek_of(blobs[1])
    model = sa.Table(
        "legacy_chats",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("member_id", sa.Integer),
        sa.Column("chat", Encrypted(sa.Text, domain="chats", subject="member_id")),
    )
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(model.c.chat)).scalars()) == [r["chat"] for r in rows]
    _column_op(engine, "decrypt_column", "legacy_chats")
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(legacy.c.chat)).scalars()) == [r["chat"] for r in rows]


def test_alembic_encrypt_column_refuses_a_row_without_subject(engine: sa.Engine) -> None:
    """A row whose member is NULL stops op.encrypt_column(..., subject=) before it writes."""
    legacy = _legacy_chats(engine, "orphan_chats", [{"id": 1, "member_id": None, "chat": "x"}])
    with pytest.raises(ConfigurationError, match="NULL"):
        _column_op(engine, "encrypt_column", "orphan_chats")
    with engine.connect() as conn:
        assert conn.execute(sa.select(legacy.c.chat)).scalar_one() == "x"


# -- properties and leaks -------------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.tuples(st.integers(1, 6), _TEXT | st.none()), min_size=1, max_size=12))
def test_keys_follow_members_exactly(engine: sa.Engine, rows: list[tuple[int, str | None]]) -> None:
    """For any rows: two values share a DEK exactly when they share a member, and round-trip."""
    params = [
        {"id": uuid.uuid4(), "member_pk": uuid.uuid4(), "member_id": m, "summary": text}
        for m, text in rows
    ]
    with engine.begin() as conn:
        conn.execute(VISITS.insert(), params)
        got = {r.id: r.summary for r in conn.execute(sa.select(VISITS.c.id, VISITS.c.summary))}
        raw = sa.table(
            "subj_visits", sa.column("id", sa.Uuid), sa.column("summary", sa.LargeBinary)
        )
        blobs = {r.id: r.summary for r in conn.execute(sa.select(raw.c.id, raw.c.summary))}
    assert all(got[p["id"]] == p["summary"] for p in params)
    written = [(p["member_id"], dek_of(blobs[p["id"]])) for p in params if p["summary"] is not None]
    for member_a, dek_a in written:
        for member_b, dek_b in written:
            assert (member_a == member_b) == (dek_a == dek_b)


def test_errors_name_no_member_and_no_value(
    engine: sa.Engine, vault: Vault, clock: FakeClock
) -> None:
    """Refusals, erasure errors and reprs on the subject paths carry no member id, no value."""
    member, secret = 918273645, "very private words"
    messages = [repr(RowBound(secret, uuid.uuid4(), subject=member))]
    for attempt in (
        lambda: MEMBERS.c.chat.type.encrypt_value(RowBound(secret, uuid.uuid4())),
        lambda: MEMBERS.c.chat.type.encrypt_value(RowBound(secret, uuid.uuid4(), subject=None)),
        lambda: MEMBERS.c.chat.type.encrypt_value(RowBound(secret, uuid.uuid4(), subject=1.5)),
    ):
        with pytest.raises(ConfigurationError) as refused:
            attempt()
        messages.append(str(refused.value))
    pk = add_member(engine, member, chat=secret)
    erase(vault, clock, member)
    with Session(engine) as s, pytest.raises(SubjectErasedError) as erased:
        s.get_one(Member, pk)
    messages.append(str(erased.value))
    with Session(engine) as s:
        s.add(Member(member_id=member, chat=secret))
        with pytest.raises(SubjectErasedError) as fenced:
            s.flush()
    messages.append(str(fenced.value))
    for message in messages:
        assert str(member) not in message and secret not in message


class TestRetention:
    """A bucket-scoped domain with a 72-hour retention: past its deadline a value reads as
    expired (RetentionExpiredError) or, with on_erased="null", as None; no sweep needed."""

    @pytest.fixture
    def vault_kwargs(self, tmp_path: Path, clock: FakeClock) -> dict[str, Any]:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
        return {
            "provider": InMemoryKeyProvider(),
            "store": f"sqlite:///{tmp_path / 'keys.db'}",
            "domains": [
                KeyDomain(
                    "teleconsult",
                    dek_scope="bucket",
                    bucket=timedelta(hours=1),
                    retention=Retention("PT72H"),
                )
            ],
            "clock": lambda: self.now,
            "key_check_interval": CHECK,
        }

    def test_chats_are_unreadable_after_73_hours(
        self, vault: Vault, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Readable at 71 hours; at 73 hours "raise" raises RetentionExpiredError, "null" gives None."""
        table = sa.Table(
            "teleconsult_chats",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("strict", Encrypted(sa.Text, domain="teleconsult")),
            sa.Column("lenient", Encrypted(sa.Text, domain="teleconsult", on_erased="null")),
        )
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'chats.db'}")
        table.create(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), {"id": 1, "strict": "hello", "lenient": "hello"})
        start = self.now
        self.now = start + timedelta(hours=71)
        with engine.connect() as conn:
            assert tuple(conn.execute(sa.select(table.c.strict, table.c.lenient)).one()) == (
                "hello",
                "hello",
            )
        self.now = start + timedelta(hours=73)
        clock.now += CHECK + 1  # this process's cached key is checked again
        with engine.connect() as conn:
            assert conn.execute(sa.select(table.c.lenient)).scalar_one() is None
            with pytest.raises(RetentionExpiredError):
                conn.execute(sa.select(table.c.strict)).scalar_one()
        engine.dispose()


_EXAMPLES = itertools.count(1000)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    members=st.lists(st.integers(0, 9), min_size=1, max_size=10),
    erased=st.sets(st.integers(0, 9), max_size=4),
)
def test_erasure_takes_exactly_the_erased_members(
    engine: sa.Engine, vault: Vault, clock: FakeClock, members: list[int], erased: set[int]
) -> None:
    """For any members and any erased subset: exactly the erased members' cells read None and
    lose their index cells; everyone else's rows are untouched."""
    # Fresh member ids per example: the vault, and the fences of earlier examples, persist.
    base = next(_EXAMPLES) * 100
    members = [base + m for m in members]
    erased = {base + m for m in erased}
    with engine.begin() as conn:
        conn.execute(sa.delete(RAW))
    rows = {add_member(engine, m, note=f"n{m}", chat=f"c{m}"): m for m in members}
    reported = 0
    for member in erased:
        erase(vault, clock, member)
        reported += erasure_cells([Member], engine, member)()["subj_members"]
    assert reported == sum(1 for m in rows.values() if m in erased)
    with acting_as(COACH, purpose="check"), Session(engine) as s:
        for pk, member in rows.items():
            raw = raw_row(engine, pk)
            if member in erased:
                assert raw.chat_index is None
                note = s.scalars(sa.select(Member.note).where(Member.id == pk)).one()
                assert note is None  # on_erased="null"
                with pytest.raises(SubjectErasedError):  # on_erased="raise"
                    _ = Member.__table__.c.chat.type.decrypt_value(raw.chat, row=pk)
            else:
                assert raw.chat_index is not None
                m = s.get_one(Member, pk)
                assert (m.note, m.chat) == (f"n{member}", f"c{member}")
