"""pandas: DataFrames written into and read from tables with encrypted, indexed columns."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
import vaultkit.sqla.pandas
from vaultkit import KeyDomain, Principal, SealedValue, Vault
from vaultkit.errors import ConfigurationError, DecryptionError
from vaultkit.sqla import BlindIndex, Encrypted, EncryptedCell, count_plaintext
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

COACH = Principal("coach-1", grants={"medical"})


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "pandas_members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(Encrypted(sa.String(320), domain="identity"))
    email_index = BlindIndex("email", normalize=str.lower)
    age: Mapped[int | None] = mapped_column(Encrypted(sa.Integer, domain="identity"))
    note: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="medical", row_key="id"))


MEMBERS = Member.__table__


def frame(n: int = 50) -> pd.DataFrame:
    """Members with a gap in ``age`` (pandas then holds the column as float64) and in ``note``."""
    return pd.DataFrame(
        {
            "id": [uuid.UUID(int=i + 1) for i in range(n)],
            "email": [f"Member{i}@Example.be" for i in range(n)],
            "age": [None if i % 5 == 0 else 20 + i for i in range(n)],
            "note": [None if i % 3 == 0 else f"note {i}: asthma" for i in range(n)],
        }
    )


@pytest.fixture
def engine(
    database_url: str, configure_vault: Callable[[Vault | None], None]
) -> Iterator[sa.Engine]:
    vault = Vault(
        provider=InMemoryKeyProvider(["identity", "medical"]),
        store=MemoryKeyStore(),
        domains=[KeyDomain("identity"), KeyDomain("medical", restricted=True)],
    )
    configure_vault(vault)
    engine = sa.create_engine(database_url, hide_parameters=True)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()
    configure_vault(None)
    vault.close()


def find(engine: sa.Engine, email: str) -> list[tuple[Any, Any, Any]]:
    """(email, age, note) of the members found through the blind index, read as the coach (the
    medical note decrypts on access, under the scope that reads it)."""
    with Session(engine) as session, vaultkit.acting_as(COACH, purpose="test"):
        found = session.scalars(sa.select(Member).where(Member.email_index == email))
        return [(m.email, m.age, m.note) for m in found]


class TestPandasAlone:
    def test_to_sql_with_the_models_types_leaves_the_blind_index_empty(
        self, engine: sa.Engine
    ) -> None:
        """The hazard: ``to_sql(dtype=...)`` encrypts, but lookups through the index find nothing."""
        data = frame().drop(columns=["note", "age"])
        dtype = {"id": MEMBERS.c.id.type, "email": MEMBERS.c.email.type}
        data.to_sql(MEMBERS.name, engine, if_exists="append", index=False, dtype=dtype)
        assert find(engine, "member7@example.be") == []
        with engine.connect() as conn:
            indexed = conn.execute(
                sa.select(sa.func.count()).where(MEMBERS.c.email_index.is_not(None))
            ).scalar_one()
        assert indexed == 0

    def test_plaintext_written_by_pandas_reads_as_decryption_error(self, engine: sa.Engine) -> None:
        """``to_sql`` without types stores plaintext (SQLite, MariaDB); a strict read raises
        DecryptionError. PostgreSQL refuses the text for its uuid and bytea columns."""
        data = frame(3).drop(columns=["note", "age"])
        data["id"] = data["id"].astype(str).str.replace("-", "")
        if engine.dialect.name == "postgresql":
            with pytest.raises(pd.errors.DatabaseError):
                data.to_sql(MEMBERS.name, engine, if_exists="append", index=False)
            return
        data.to_sql(MEMBERS.name, engine, if_exists="append", index=False)
        with Session(engine) as session:
            assert count_plaintext(session, Member.email) == 3
            with pytest.raises(DecryptionError) as info:
                session.scalars(sa.select(Member)).all()
        assert "Member0" not in str(info.value)

    def test_row_bound_plaintext_reads_as_decryption_error(self, engine: sa.Engine) -> None:
        """Plaintext in a strict row-bound column also fails as DecryptionError, not TypeError."""
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"insert into {MEMBERS.name} (id, email, note) values (:id, :email, 'asthma')"
                ),
                {"id": uuid.UUID(int=1).hex, "email": MEMBERS.c.email.type.encrypt_value("a@x.be")},
            )
        # Text where a ciphertext belongs fails on load (the driver hands back a str) or, for a
        # restricted column whose value decrypts on access, on access.
        with Session(engine) as session, vaultkit.acting_as(COACH, purpose="test"):
            with pytest.raises(DecryptionError):
                (member,) = session.scalars(sa.select(Member)).all()
                member.note  # noqa: B018


class TestToSQL:
    def test_rows_are_encrypted_and_found_through_the_blind_index(self, engine: sa.Engine) -> None:
        """Every row is ciphertext at rest, its blind index filled, its values read back."""
        data = frame()
        written = vaultkit.sqla.pandas.to_sql(data, Member, engine, chunksize=16)
        assert written == len(data)
        assert find(engine, "member7@example.be") == [("Member7@Example.be", 27, "note 7: asthma")]
        assert find(engine, "member15@example.be") == [("Member15@Example.be", None, None)]
        with engine.connect() as conn:
            raw = conn.execute(
                sa.select(
                    sa.type_coerce(MEMBERS.c.email, sa.LargeBinary),
                    sa.type_coerce(MEMBERS.c.note, sa.LargeBinary),
                    MEMBERS.c.email_index,
                )
            ).all()
        assert len(raw) == len(data)
        for email, note, index in raw:
            assert bytes(email)[:2] == b"\xf6\x56" and index is not None
            assert note is None or bytes(note)[:2] == b"\xf6\x56"

    def test_row_bound_values_are_bound_to_their_rows(self, engine: sa.Engine) -> None:
        """A note copied from one row into another by SQL does not decrypt there."""
        vaultkit.sqla.pandas.to_sql(frame(3), MEMBERS, engine)
        one, two = uuid.UUID(int=2), uuid.UUID(int=3)
        with engine.begin() as conn:
            note = conn.execute(
                sa.select(sa.type_coerce(MEMBERS.c.note, sa.LargeBinary)).where(MEMBERS.c.id == one)
            ).scalar_one()
            raw = sa.table(
                MEMBERS.name, sa.column("id", sa.Uuid), sa.column("note", sa.LargeBinary)
            )
            conn.execute(raw.update().where(raw.c.id == two).values(note=note))
        with Session(engine) as session, vaultkit.acting_as(COACH, purpose="test"):
            assert session.get(Member, one).note == "note 1: asthma"  # type: ignore[union-attr]
            with pytest.raises(DecryptionError):
                session.get(Member, two).note  # type: ignore[union-attr]  # noqa: B018

    def test_works_inside_the_callers_transaction(self, engine: sa.Engine) -> None:
        """With a connection, the rows are part of the caller's transaction and roll back with it."""
        with engine.connect() as conn:
            vaultkit.sqla.pandas.to_sql(frame(5), Member, conn)
            conn.rollback()
        assert find(engine, "member1@example.be") == []

    def test_missing_table_is_never_created_from_the_frame(self, database_url: str) -> None:
        """Without the model's table, to_sql refuses rather than make one of plaintext columns."""
        engine = sa.create_engine(database_url)
        try:
            with pytest.raises(ConfigurationError, match="does not exist"):
                vaultkit.sqla.pandas.to_sql(frame(2), Member, engine)
            assert not sa.inspect(engine).has_table(MEMBERS.name)
        finally:
            engine.dispose()

    @pytest.mark.parametrize(
        ("column", "message"), [("email_index", "computed from"), ("phone", "no column phone")]
    )
    def test_frame_columns_must_be_writable_columns(
        self, engine: sa.Engine, column: str, message: str
    ) -> None:
        """A frame giving a blind index, or a column the table lacks, is refused, naming it."""
        data = frame(2)
        data[column] = ["x", "y"]
        with pytest.raises(ConfigurationError, match=message):
            vaultkit.sqla.pandas.to_sql(data, Member, engine)

    def test_fractional_float_in_an_integer_column_is_refused(self, engine: sa.Engine) -> None:
        """30.5 for an Integer column is a TypeError naming the types, never the value."""
        data = frame(2)
        data["age"] = [30.5, 31.0]
        with pytest.raises(TypeError, match="takes int, not float") as info:
            vaultkit.sqla.pandas.to_sql(data, Member, engine)
        assert "30.5" not in str(info.value)


class TestReadSQL:
    def test_read_sql_decrypts_through_the_column_types(self, engine: sa.Engine) -> None:
        """``pandas.read_sql`` of the model's table decrypts; without the grant, medical is sealed."""
        vaultkit.sqla.pandas.to_sql(frame(4), Member, engine)
        query = sa.select(MEMBERS.c.id, MEMBERS.c.email, MEMBERS.c.age, MEMBERS.c.note).order_by(
            MEMBERS.c.id
        )
        read: Any = pd.read_sql(query, engine)
        assert list(read["email"]) == [f"Member{i}@Example.be" for i in range(4)]
        assert [None if pd.isna(a) else int(a) for a in read["age"]] == [None, 21, 22, 23]
        # Row-bound values come back as cells: ciphertext only, opened with the row key.
        cells = list(read["note"])
        assert cells[0] is None and cells[3] is None
        assert all(isinstance(c, EncryptedCell) for c in cells[1:3])
        with vaultkit.acting_as(COACH, purpose="test"):
            assert cells[1].decrypt(row=read["id"][1]) == "note 1: asthma"
        assert isinstance(cells[1].decrypt(row=read["id"][1]), SealedValue)
        assert "asthma" not in read.to_string()
