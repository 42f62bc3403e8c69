"""TokenIndex: words of an encrypted name in a side table, kept in sync, exact lookups, on all engines."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vaultkit import Vault
from vaultkit.errors import ConfigurationError, QueryError
from vaultkit.sqla import Encrypted, TokenIndex, rewrite_terms

pytestmark = pytest.mark.configured


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "tok_members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    last_name: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    name_tokens = TokenIndex("last_name", bits=20)


class Narrow(Base):
    """A 4-bit token index: almost every lookup brings false candidates."""

    __tablename__ = "tok_narrow"
    id: Mapped[int] = mapped_column(primary_key=True)
    last_name: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    words = TokenIndex("last_name", bits=4)


class Auto(Base):
    """A primary key the database makes (autoincrement)."""

    __tablename__ = "tok_auto"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    last_name: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    words = TokenIndex("last_name", bits=20)


NAMES = ["Smith-Jones", "edwards jones", "Jones", "Jonesy", "Johnson", "van der Berg", "Bergman"]


@pytest.fixture
def engine(database_url: str, vault: Vault) -> Iterator[sa.Engine]:
    """The test database with the tables (and side tables) created."""
    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def _names(session: Session, criterion: Any, model: Any = Member) -> set[str]:
    return {m.last_name for m in session.scalars(sa.select(model).where(criterion))}


def _terms(engine: sa.Engine, index: TokenIndex) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(index.table)).scalar_one())


class TestDeclaration:
    def test_side_table_in_the_same_metadata(self) -> None:
        """The side table sits in the model's MetaData, keyed by the row and the term."""
        side = Member.name_tokens.table
        assert side.name == "tok_members__name_tokens"
        assert side.metadata is Base.metadata
        assert [c.name for c in side.primary_key.columns] == ["id", "term"]
        (fk,) = side.c.id.foreign_keys
        assert fk.column is Member.__table__.c.id and fk.ondelete == "CASCADE"
        assert any(list(i.columns) == [side.c.term] for i in side.indexes)

    @pytest.mark.parametrize("bits", [3, 257, True])
    def test_width_out_of_range(self, bits: Any) -> None:
        """Widths outside 4..256 bits are refused when declared."""
        with pytest.raises(ConfigurationError):
            TokenIndex("last_name", bits=bits)

    def test_source_must_be_encrypted(self) -> None:
        """A token index of a plaintext column is refused when the class is mapped."""
        with pytest.raises(ConfigurationError):

            class Plain(Base):
                __tablename__ = "tok_plain"
                id: Mapped[int] = mapped_column(primary_key=True)
                name: Mapped[str] = mapped_column(sa.String(10))
                name_tokens = TokenIndex("name")

    def test_alembic_autogenerate_renders_the_side_table(self) -> None:
        """Autogenerate sees the side table and renders its columns in plain SQLAlchemy types."""
        from alembic.autogenerate import produce_migrations, render_python_code
        from alembic.migration import MigrationContext

        import vaultkit.sqla

        engine = sa.create_engine("sqlite://")
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"render_item": vaultkit.sqla.alembic_render_item}
            )
            ops = produce_migrations(context, Base.metadata).upgrade_ops
            assert ops is not None
            code = render_python_code(
                ops, render_item=vaultkit.sqla.alembic_render_item, migration_context=context
            )
        engine.dispose()
        assert "'tok_members__name_tokens'" in code
        assert "sa.LargeBinary(length=4).with_variant(sa.VARBINARY(length=4)" in code
        assert "ondelete='CASCADE'" in code


class TestLookups:
    def test_jones_and_berg(self, engine: sa.Engine) -> None:
        """ "jones" finds Smith-Jones and edwards jones; "berg" finds van der Berg, not Bergman."""
        with Session(engine) as session:
            session.add_all([Member(last_name=n) for n in NAMES])
            session.commit()
        with Session(engine) as session:
            assert _names(session, Member.name_tokens.contains("jones")) == {
                "Smith-Jones",
                "edwards jones",
                "Jones",
            }
            assert _names(session, Member.name_tokens.contains("berg")) == {"van der Berg"}
            assert _names(session, Member.name_tokens.contains("Van Der")) == {"van der Berg"}
            assert _names(session, Member.name_tokens.contains("SMITH")) == {"Smith-Jones"}
            assert _names(session, Member.name_tokens.contains("nobody")) == set()

    def test_one_round_trip(self, engine: sa.Engine) -> None:
        """A lookup is one SQL statement (the terms' subquery inside it)."""
        with Session(engine) as session:
            session.add_all([Member(last_name=n) for n in NAMES])
            session.commit()
        statements: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            with Session(engine) as session:
                found = _names(session, Member.name_tokens.contains("jones"))
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert len(found) == 3
        assert len(statements) == 1
        assert "tok_members__name_tokens" in statements[0]

    def test_exact_with_a_narrow_index(self, engine: sa.Engine) -> None:
        """With 4 bits most rows are candidates; the results are still exactly the true matches."""
        names = [f"name{i}-x{i % 7}" for i in range(60)]
        with Session(engine) as session:
            session.add_all([Narrow(id=i, last_name=n) for i, n in enumerate(names, start=1)])
            session.commit()
        with Session(engine) as session:
            exact = _names(session, Narrow.words.contains("x3"), Narrow)
            loose = _names(session, Narrow.words.contains("x3", exact=False), Narrow)
        assert exact == {n for n in names if n.endswith("-x3")}
        assert loose > exact  # false candidates were there, and were dropped

    def test_no_word(self) -> None:
        """A text without a word cannot be looked up."""
        with pytest.raises(QueryError):
            Member.name_tokens.contains(" - ")

    def test_ids_only_is_refused(self, engine: sa.Engine) -> None:
        """Selecting ids only cannot be checked: QueryError, never unchecked candidates."""
        with Session(engine) as session, pytest.raises(QueryError):
            session.scalars(sa.select(Member.id).where(Member.name_tokens.contains("jones"))).all()


class TestSync:
    def test_orm_update_and_delete(self, engine: sa.Engine) -> None:
        """An ORM update replaces the row's terms, a delete removes them, in the flush."""
        with Session(engine) as session:
            member = Member(last_name="Smith-Jones")
            session.add(member)
            session.commit()
            assert _terms(engine, Member.name_tokens) == 2
            member.last_name = "Peeters"
            session.commit()
            assert _names(session, Member.name_tokens.contains("jones")) == set()
            assert _names(session, Member.name_tokens.contains("peeters")) == {"Peeters"}
            assert _terms(engine, Member.name_tokens) == 1
            member.last_name = None
            session.commit()
            assert _terms(engine, Member.name_tokens) == 0
            member.last_name = "de Wit"
            session.commit()
            session.delete(member)
            session.commit()
        assert _terms(engine, Member.name_tokens) == 0

    def test_core_writes(self, engine: sa.Engine) -> None:
        """Core executemany, UPDATE ... WHERE and DELETE keep the side table in step."""
        table = Member.__table__
        with engine.begin() as conn:
            conn.execute(sa.insert(table), [{"last_name": n} for n in NAMES])
        assert _terms(engine, Member.name_tokens) == 11
        with engine.begin() as conn:
            ids = {
                r.id: r.last_name for r in conn.execute(sa.select(table.c.id, table.c.last_name))
            }
            smith = next(i for i, n in ids.items() if n == "Smith-Jones")
            conn.execute(sa.update(table).where(table.c.id == smith).values(last_name="Maes"))
        with Session(engine) as session:
            assert _names(session, Member.name_tokens.contains("jones")) == {
                "edwards jones",
                "Jones",
            }
            assert _names(session, Member.name_tokens.contains("maes")) == {"Maes"}
        with engine.begin() as conn:
            conn.execute(sa.delete(table).where(table.c.id == smith))
            # An UPDATE whose WHERE clause is not the primary key: the rows are read first.
            conn.execute(sa.update(table).where(table.c.id != smith).values(last_name="De Smet"))
        with Session(engine) as session:
            assert _names(session, Member.name_tokens.contains("smet")) == {"De Smet"}
            assert _names(session, Member.name_tokens.contains("jones")) == set()
        assert _terms(engine, Member.name_tokens) == 2 * (len(NAMES) - 1)

    def test_rollback_leaves_no_terms(self, engine: sa.Engine) -> None:
        """Terms are written in the statement's transaction: a rollback takes them back."""
        with Session(engine) as session:
            session.add(Member(last_name="Smith-Jones"))
            session.flush()
            assert (
                session.execute(
                    sa.select(sa.func.count()).select_from(Member.name_tokens.table)
                ).scalar_one()
                == 2
            )
            session.rollback()
        assert _terms(engine, Member.name_tokens) == 0

    def test_orm_bulk_insert(self, engine: sa.Engine) -> None:
        """session.execute(insert(Member), [...]) fills the terms too."""
        with Session(engine) as session:
            session.execute(sa.insert(Member), [{"last_name": n} for n in NAMES])
            session.commit()
            assert _names(session, Member.name_tokens.contains("jones")) == {
                "Smith-Jones",
                "edwards jones",
                "Jones",
            }

    def test_database_made_keys(self, engine: sa.Engine) -> None:
        """ORM inserts get the keys the database made; a Core executemany that does not return
        them is refused, and its transaction rolled back (no row without its terms)."""
        with Session(engine) as session:
            session.add_all([Auto(last_name=n) for n in NAMES])
            session.commit()
            assert _names(session, Auto.words.contains("jones"), Auto) == {
                "Smith-Jones",
                "edwards jones",
                "Jones",
            }
        with engine.begin() as conn:
            conn.execute(sa.insert(Auto.__table__), {"last_name": "Maes"})  # one row: its key
        with pytest.raises(QueryError, match="primary keys"):
            with engine.begin() as conn:
                conn.execute(sa.insert(Auto.__table__), [{"last_name": "De Wit"}] * 3)
        with Session(engine) as session:
            assert _names(session, Auto.words.contains("maes"), Auto) == {"Maes"}
            assert session.scalar(sa.select(sa.func.count()).select_from(Auto)) == len(NAMES) + 1

    def test_orm_enabled_update_and_delete(self, engine: sa.Engine) -> None:
        """session.execute(update(Member).where(...)) and delete(Member) follow the side table,
        and the ORM's bulk update by primary key too."""
        with Session(engine) as session:
            session.add_all([Member(last_name=n) for n in NAMES])
            session.commit()
            ids = {m.last_name: m.id for m in session.scalars(sa.select(Member))}
            session.execute(
                sa.update(Member).where(Member.id == ids["Smith-Jones"]).values(last_name="Maes")
            )
            session.execute(sa.update(Member), [{"id": ids["Jones"], "last_name": "Claes"}])
            session.execute(sa.delete(Member).where(Member.id == ids["edwards jones"]))
            session.commit()
            assert _names(session, Member.name_tokens.contains("jones")) == set()
            assert _names(session, Member.name_tokens.contains("maes")) == {"Maes"}
            assert _names(session, Member.name_tokens.contains("claes")) == {"Claes"}
        # 11 terms, less Smith-Jones's 2 for Maes's 1, Jones's 1 for Claes's 1, edwards jones's 2.
        assert _terms(engine, Member.name_tokens) == 11 - 2 + 1 - 1 + 1 - 2

    def test_pandas_to_sql(self, engine: sa.Engine) -> None:
        """vaultkit.sqla.pandas.to_sql writes through the model's table: the terms follow."""
        pandas = pytest.importorskip("pandas")
        import vaultkit.sqla.pandas

        frame = pandas.DataFrame({"last_name": NAMES})
        vaultkit.sqla.pandas.to_sql(frame, Member, engine, chunksize=3)
        with Session(engine) as session:
            assert _names(session, Member.name_tokens.contains("berg")) == {"van der Berg"}
        assert _terms(engine, Member.name_tokens) == 11

    def test_insert_select_refused(self, engine: sa.Engine) -> None:
        """INSERT ... SELECT cannot be followed: refused before anything is written."""
        table = Member.__table__
        with engine.begin() as conn, pytest.raises(QueryError):
            conn.execute(
                sa.insert(table).from_select(
                    ["id", "last_name"], sa.select(table.c.id, table.c.last_name)
                )
            )

    def test_expression_update_refused(self, engine: sa.Engine) -> None:
        """An UPDATE setting the source to an SQL expression is refused."""
        table = Member.__table__
        with engine.begin() as conn, pytest.raises(QueryError):
            conn.execute(sa.update(table).values(last_name=table.c.last_name))


class TestRotation:
    def test_rotate_then_rewrite(self, engine: sa.Engine) -> None:
        """Version 2 with query_versions (1, 2) finds old rows; rewrite_terms moves them all."""
        index = Member.name_tokens
        with Session(engine) as session:
            session.add_all([Member(last_name=n) for n in NAMES])
            session.commit()
        saved = index.version, index.query_versions
        try:
            index.version, index.query_versions = 2, (1, 2)
            with Session(engine) as session:
                session.add(Member(last_name="Jones-Peeters"))
                session.commit()
                assert len(_names(session, index.contains("jones"))) == 4
            counts = rewrite_terms(engine, index, batch=3)
            assert counts["rows"] == len(NAMES) + 1
            with engine.connect() as conn:
                versions = {t[0] for (t,) in conn.execute(sa.select(index.table.c.term))}
            assert versions == {2}
            index.query_versions = (2,)
            with Session(engine) as session:
                assert len(_names(session, index.contains("jones"))) == 4
        finally:
            index.version, index.query_versions = saved


class TestAttacker:
    def test_side_table_holds_no_word(self, engine: sa.Engine) -> None:
        """A reader of the side table sees digests only, never a word of the name."""
        with Session(engine) as session:
            session.add(Member(last_name="Smith-Jones"))
            session.commit()
        with engine.connect() as conn:
            terms = [bytes(t) for (t,) in conn.execute(sa.select(Member.name_tokens.table.c.term))]
        assert len(terms) == 2
        for term in terms:
            assert b"smith" not in term.lower() and b"jones" not in term.lower()
            assert len(term) == 1 + 3  # version byte + ceil(20 / 8) bytes
            assert term[-1] & 0x0F == 0  # the bits past 20 are masked


class TestAsync:
    def test_async_session(self, tmp_path: Any, vault: Vault) -> None:
        """AsyncSession (aiosqlite) writes the terms in its flush and gets exact lookups."""
        import asyncio

        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        async def run() -> set[str]:
            engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                async with AsyncSession(engine) as session:
                    session.add_all([Member(last_name=n) for n in NAMES])
                    await session.commit()
                    found = await session.scalars(
                        sa.select(Member).where(Member.name_tokens.contains("jones"))
                    )
                    return {m.last_name for m in found}
            finally:
                await engine.dispose()

        assert asyncio.run(run()) == {"Smith-Jones", "edwards jones", "Jones"}


class TestLeaks:
    def test_no_word_in_sql_errors_or_repr(self, engine: sa.Engine) -> None:
        """The word looked up reaches the server only as digests, and no message or repr names
        it (a Core execution is refused without quoting it)."""
        with Session(engine) as session:
            session.add(Member(last_name="Smith-Jones"))
            session.commit()
        sent: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
            sent.append(f"{statement} {parameters!r}")

        event.listen(engine, "before_cursor_execute", record)
        try:
            with Session(engine) as session:
                assert len(_names(session, Member.name_tokens.contains("Jones"))) == 1
            with engine.connect() as conn, pytest.raises(QueryError) as refused:
                conn.execute(
                    sa.select(Member.__table__).where(Member.name_tokens.contains("Jones"))
                )
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert sent
        for text in [*sent, str(refused.value), repr(Member.name_tokens)]:
            assert "jones" not in text.lower()


def test_sqlmodel_refused() -> None:
    """On an SQLModel class a TokenIndex would be ignored: refused with a clear error."""
    sqlmodel = pytest.importorskip("sqlmodel")
    with pytest.raises((ConfigurationError, RuntimeError, TypeError)) as raised:

        class Tokens(sqlmodel.SQLModel, table=True):  # type: ignore[call-arg]
            __tablename__ = "tok_sqlmodel"
            id: int | None = sqlmodel.Field(default=None, primary_key=True)
            name_tokens = TokenIndex("name")

    found: BaseException | None = raised.value
    while found is not None and not isinstance(found, ConfigurationError):
        found = found.__cause__ or found.__context__
    assert isinstance(found, ConfigurationError)
