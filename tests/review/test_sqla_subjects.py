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


@pytest.mark.xfail(
    strict=True,
    reason="CRITICAL: the write's key is picked by the subject as the application gave it "
    "('017', text), the row holds what the database made of it (17, INTEGER affinity); "
    "erase_subject(17) + erasure_cells find neither the key nor (by DEK) the cell: the note "
    "stays readable and searchable (sqla/_hooks.py:302 _as_stored converts only Uuid)",
)
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
