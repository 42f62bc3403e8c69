"""SQLModel: blind-index and encrypted fields work on SQLModel models; BlindIndex is refused there."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Field, Session, SQLModel, create_engine, select

import vaultkit.sqla
from vaultkit import Vault
from vaultkit.errors import ConfigurationError
from vaultkit.integrations.sqlmodel import BlindIndexField, EncryptedField
from vaultkit.sqla import BlindIndex


class Member(SQLModel, table=True):
    __tablename__ = "sqlmodel_members"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = EncryptedField(sa.String(320), domain="identity")
    email_index: bytes | None = BlindIndexField("email", normalize=str.lower)
    note: str | None = EncryptedField(sa.Text, domain="medical", row_key="id")


@pytest.fixture
def engine(configured_vault: Vault, database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(database_url)
    SQLModel.metadata.create_all(engine, tables=[Member.__table__])  # type: ignore[list-item]
    yield engine
    SQLModel.metadata.drop_all(engine, tables=[Member.__table__])  # type: ignore[list-item]
    engine.dispose()


class TestFields:
    def test_lookup_through_the_blind_index_finds_the_member(self, engine: sa.Engine) -> None:
        """A member written through SQLModel is found by its e-mail through the indexed column."""
        with Session(engine) as session:
            session.add(Member(email="Jan@Example.be", note="asthma"))
            session.add(Member(email="marie@example.be"))
            session.commit()
        with Session(engine) as session:
            found = session.exec(select(Member).where(Member.email_index == "jan@example.be")).one()
            assert (found.email, found.note) == ("Jan@Example.be", "asthma")
        with engine.connect() as conn:
            raw = conn.execute(sa.text("select email, email_index from sqlmodel_members")).all()
        assert all(r[0][:2] == b"\xf6V" and r[1] is not None for r in raw)  # ciphertext, index set

    def test_index_column_is_indexed_binary(self, engine: sa.Engine) -> None:
        """The blind-index column is created indexed, with the blind-index type."""
        indexes = sa.inspect(engine).get_indexes("sqlmodel_members")
        assert any(ix["column_names"] == ["email_index"] for ix in indexes)
        assert isinstance(Member.__table__.c.email_index.type, vaultkit.sqla.BlindIndexType)  # type: ignore[attr-defined]

    def test_repr_leaves_encrypted_fields_out(self) -> None:
        """The model's repr shows neither the plaintext nor the index digest."""
        member = Member(email="jan@example.be", note="asthma")
        assert "jan@example.be" not in repr(member) and "asthma" not in repr(member)


class TestBlindIndexRefused:
    def test_blind_index_on_sqlmodel_is_refused_at_class_creation(self) -> None:
        """``BlindIndex`` on an SQLModel model fails when the class is made, naming the alternative."""
        with pytest.raises((ConfigurationError, RuntimeError)) as info:

            class Wrong(SQLModel, table=True):
                __tablename__ = "sqlmodel_wrong"
                id: int = Field(primary_key=True)
                email: str = EncryptedField(sa.String(320), domain="identity")
                email_index: bytes | None = BlindIndex("email")  # type: ignore[assignment]

        # Python 3.11 wraps errors raised in __set_name__ in a RuntimeError; 3.12 does not.
        error = info.value if isinstance(info.value, ConfigurationError) else info.value.__cause__
        assert isinstance(error, ConfigurationError)
        assert "Wrong.email_index" in str(error) and "BlindIndexField" in str(error)


class Chat(SQLModel, table=True):
    __tablename__ = "sqlmodel_chats"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    member_id: int
    body: str | None = EncryptedField(
        sa.Text, domain="chats", subject="member_id", on_erased="null"
    )


def test_subject_scoped_field(
    configure_vault: Callable[[Vault | None], None], tmp_path: Path
) -> None:
    """EncryptedField(subject=, on_erased=) passes both on: each member's body under its own key."""
    from vaultkit import KeyDomain
    from vaultkit.store import MemoryKeyStore
    from vaultkit.testing import InMemoryKeyProvider

    column_type = Chat.__table__.c.body.type  # type: ignore[attr-defined]
    assert (column_type.subject, column_type.on_erased) == ("member_id", "null")
    with Vault(
        provider=InMemoryKeyProvider(),
        store=MemoryKeyStore(),
        domains=[KeyDomain("chats", dek_scope="subject")],
    ) as vault:
        configure_vault(vault)
        engine = create_engine(f"sqlite:///{tmp_path / 'chats.db'}")
        SQLModel.metadata.create_all(engine, tables=[Chat.__table__])  # type: ignore[list-item]
        with Session(engine) as session:
            session.add_all([Chat(member_id=1, body="one"), Chat(member_id=2, body="two")])
            session.commit()
        with engine.connect() as conn:
            raw = conn.execute(sa.text("select body from sqlmodel_chats")).scalars().all()
        assert raw[0][4:20] != raw[1][4:20]  # the DEK ids of the two members' values
        with Session(engine) as session:
            assert sorted(c.body or "" for c in session.exec(select(Chat))) == ["one", "two"]
        engine.dispose()
