"""An erasure deletes the subject's token terms (side tables), on all three engines."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vaultkit import KeyDomain, Vault
from vaultkit.sqla import Encrypted, TokenIndex, erasure_cells
from vaultkit.testing import InMemoryKeyProvider

pytestmark = pytest.mark.configured


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "tokerase_members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    # Under the member's own keys: erased with the member.
    last_name: Mapped[str | None] = mapped_column(
        Encrypted(sa.String(100), domain="people", subject="member_id")
    )
    name_tokens = TokenIndex("last_name", bits=20)
    # A process-wide domain in the same row: its words go with the row's erased values.
    employer: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    employer_tokens = TokenIndex("employer", bits=20)


@pytest.fixture
def vault_kwargs(tmp_path: Path) -> dict[str, Any]:
    """A vault with a subject-scoped domain over an SQLite key store."""
    return {
        "provider": InMemoryKeyProvider(),
        "store": f"sqlite:///{tmp_path / 'keys.db'}",
        "domains": [KeyDomain("identity"), KeyDomain("people", dek_scope="subject")],
    }


@pytest.fixture
def engine(database_url: str, vault: Vault) -> Iterator[sa.Engine]:
    """The test database with the tables and side tables."""
    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def _terms(engine: sa.Engine, index: TokenIndex) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(index.table)).scalar_one())


def test_erasure_deletes_the_subjects_terms(engine: sa.Engine, vault: Vault) -> None:
    """After erase_subject with erasure_cells, the erased member's terms are gone from both
    side tables; the other member's stay and still find them."""
    with Session(engine) as session:
        session.add_all(
            [
                Member(member_id=1, last_name="Smith-Jones", employer="Acme Works"),
                Member(member_id=2, last_name="edwards jones", employer="Acme Works"),
            ]
        )
        session.commit()
    assert _terms(engine, Member.name_tokens) == 4
    receipt = vault.erase_subject(
        1,
        reason="art. 17 request",
        request_id="req-1",
        cells=erasure_cells(Base.metadata, engine, 1),
    )
    assert receipt is not None
    assert _terms(engine, Member.name_tokens) == 2
    assert _terms(engine, Member.employer_tokens) == 2
    with Session(engine) as session:
        found = session.scalars(sa.select(Member).where(Member.name_tokens.contains("jones"))).all()
        assert [m.member_id for m in found] == [2]
        found = session.scalars(
            sa.select(Member).where(Member.employer_tokens.contains("acme"))
        ).all()
        assert [m.member_id for m in found] == [2]
