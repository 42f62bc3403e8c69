"""Review of issue 16: the subject a column-type write picks its key by, against the subject the
row holds once the database has stored it (and that the erasure looks for)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Vault
from vaultkit.errors import ConfigurationError
from vaultkit.sqla import BlindIndex, Encrypted, erasure_cells
from vaultkit.testing import InMemoryKeyProvider


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "review_subject_notes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    text: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="medical", subject="member_id", on_erased="null")
    )
    text_index = BlindIndex("text")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Vault, sa.Engine]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    vault = Vault(
        provider=InMemoryKeyProvider(["medical"]),
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        domains=[KeyDomain("medical", dek_scope="subject")],
    )
    vaultkit.sqla.configure(vault)
    Base.metadata.create_all(engine)
    try:
        yield vault, engine
    finally:
        vaultkit.sqla.configure(None)
        vault.close()
        engine.dispose()


def test_a_subject_given_as_text_to_an_integer_column_is_erased_with_the_row(
    setup: tuple[Vault, sa.Engine],
) -> None:
    vault, engine = setup
    with Session(engine) as session:
        session.add(Note(member_id="017", text="diagnosis"))  # e.g. from a CSV import
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.select(Note.__table__.c.member_id)).scalar_one() == 17
    vault.erase_subject(
        17, reason="art17", request_id="DSR-5", cells=erasure_cells(Base.metadata, engine, 17)
    )
    with Session(engine) as session:
        note = session.execute(sa.select(Note)).scalar_one()
        assert note.text is None  # erased (on_erased="null")


@pytest.mark.parametrize("member_id", [" 17", "1_7", "\u0661\u0667", "17.0", "seventeen"])
def test_a_subject_text_that_is_not_a_decimal_integer_is_refused(
    setup: tuple[Vault, sa.Engine], member_id: str
) -> None:
    """int() would take some of these (spaces, '_', other scripts' digits): the key would follow
    one member id and the row store another, or none; refused before anything is written."""
    _vault, engine = setup
    with Session(engine) as session:
        session.add(Note(member_id=member_id, text="diagnosis"))
        with pytest.raises(ConfigurationError) as raised:
            session.commit()
        assert member_id not in str(raised.value)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Note.__table__)).scalar() == 0
