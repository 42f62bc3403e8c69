"""The subject map and export beside the search indexes of vaultkit.sqla (issues 17 and 19).

A TokenIndex keeps its terms in a side table with a foreign key to its parent: the map must take
it for what it is (index digests of the parent's rows, like a blind-index column), not for an
unlinked table that would hang off a member, and the export must hold no term or index digest.
"""

from __future__ import annotations

from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vaultkit import Principal, Vault
from vaultkit.sqla import Encrypted, PrefixIndex, TokenIndex
from vaultkit.subjects import collect, personal, subject_link

P = {
    "category": "identity",
    "provenance": "provided",
    "legal_basis": "contract",
    "purpose": "admin",
}


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "searchable_members"
    __table_args__: ClassVar[dict[str, Any]] = {"info": subject_link(column="id")}
    id: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    last_name: Mapped[str] = mapped_column(
        Encrypted(sa.String(100), domain="identity"), info=personal(**P)
    )
    name_tokens = TokenIndex("last_name", bits=20)
    name_p3 = PrefixIndex("last_name", length=3, bits=16)


def test_a_token_index_side_table_is_not_taken_for_an_unlinked_child() -> None:
    subjects = collect(Base.metadata)
    assert [t.name for t in subjects.tables] == ["searchable_members"]
    assert "searchable_members__name_tokens" in Base.metadata.tables
    assert subjects.unannotated == ()


def test_an_export_beside_token_and_prefix_indexes_holds_no_digest(configured_vault: Vault) -> None:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            [Member(id="m-17", last_name="Smith-Jones"), Member(id="m-18", last_name="Jones")]
        )
        session.commit()
        terms = session.execute(sa.text("select term from searchable_members__name_tokens")).all()
        digests = [bytes(t[0]) for t in terms]
        assert len(digests) == 3
        with configured_vault.acting_as(Principal("dpo"), purpose="DataSubjectRequest"):
            export = configured_vault.export_subject(
                session, "m-17", subjects=collect(Base.metadata)
            )
    data = export.to_dict()
    text = repr(data)
    assert "Smith-Jones" in text and "'Jones'" not in text
    assert [t["table"] for t in data["tables"]] == ["searchable_members"]
    for digest in digests:
        assert digest.hex() not in text and digest not in text.encode()


def test_an_import_fills_the_search_indexes_of_the_target(configured_vault: Vault) -> None:
    source = sa.create_engine("sqlite://")
    Base.metadata.create_all(source)
    with Session(source) as session:
        session.add(Member(id="m-17", last_name="Smith-Jones"))
        session.commit()
        with configured_vault.acting_as(Principal("dpo"), purpose="DataSubjectRequest"):
            data = configured_vault.export_subject(
                session, "m-17", "portability", subjects=collect(Base.metadata)
            ).to_dict()
    target = sa.create_engine("sqlite://")
    Base.metadata.create_all(target)
    with Session(target) as session:
        configured_vault.import_subject(session, data, subjects=collect(Base.metadata))
        session.commit()
    with Session(target) as session:
        found = session.scalars(sa.select(Member).where(Member.name_tokens.contains("jones")))
        assert [m.id for m in found] == ["m-17"]
        found = session.scalars(sa.select(Member).where(Member.name_p3.startswith("Smi")))
        assert [m.id for m in found] == ["m-17"]
