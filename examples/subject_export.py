"""A member asks for a copy of their data (GDPR art. 15): the subject map, then the export.

Run it from any directory; it needs no server (KEKs in memory, key store and data in SQLite
memory)::

    python examples/subject_export.py [DIRECTORY]

It writes ``m-17.json``, ``m-17.zip`` (CSV) and ``m-17.html``, and the medical part separately
as ``m-17-medical.json``, into DIRECTORY (made if missing), or else into a new temporary
directory, never into the current one; it prints where. docs/subject-rights.md explains what a
DPO reads in them.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import Date, ForeignKey, Integer, String, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, Vault, acting_as
from vaultkit.sqla import BlindIndex, Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.subjects import collect, not_personal, personal, subject_link
from vaultkit.testing import InMemoryKeyProvider

CONTRACT = {"legal_basis": "contract", "purpose": "membership administration"}


class Base(DeclarativeBase): ...


class Member(Base):
    """The root of the map: each row is a member (``subject_link(column="id")``)."""

    __tablename__ = "members"
    __table_args__: ClassVar[dict[str, Any]] = {"info": subject_link(column="id")}
    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    email: Mapped[str | None] = mapped_column(
        Encrypted(String(320), domain="identity"),
        info=personal(category="contact", retention="P5Y after relationship_end", **CONTRACT),
    )
    email_index = BlindIndex("email", normalize=str.lower)  # a digest: never exported
    health_note: Mapped[str | None] = mapped_column(
        Encrypted(Text, domain="medical", subject="id"),
        info=personal(
            category="health",
            legal_basis="art. 9(2)(h)",
            purpose="assessing claims",
            recipients=("medical adviser",),
        ),
    )
    crm_tag: Mapped[str | None] = mapped_column(
        Encrypted(String(50), domain="identity"), info=not_personal("routing tag of the CRM")
    )
    risk_score: Mapped[int | None] = mapped_column(Integer)  # no annotation: never exported


class Claim(Base):
    """Reached through its foreign key to the member."""

    __tablename__ = "claims"
    __table_args__: ClassVar[dict[str, Any]] = {"info": subject_link(via="member_id")}
    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    filed_on: Mapped[dt.date] = mapped_column(
        Date, info=personal(category="claims", provenance="observed", **CONTRACT)
    )


class Subscription(Base):
    """Linked to the member only by e-mail address, through its blind index."""

    __tablename__ = "newsletter"
    __table_args__: ClassVar[dict[str, Any]] = {
        "info": subject_link(match="email_index", identity="members.email")
    }
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(
        Encrypted(String(320), domain="identity"),
        info=personal(category="contact", legal_basis="consent", purpose="newsletter"),
    )
    email_index = BlindIndex("email", normalize=str.lower)


def output_directory(argv: list[str]) -> Path:
    """The directory given as argument (made owner-only if missing), else a new temporary one:
    an export holds a member's data, and does not belong in a source checkout."""
    if argv:
        out = Path(argv[0])
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        return out
    return Path(tempfile.mkdtemp(prefix="vaultkit-subject-export-"))


def main(argv: list[str]) -> None:
    out = output_directory(argv)
    vault = Vault(
        provider=InMemoryKeyProvider(),  # tests and tutorials only: KEKs in memory
        store=MemoryKeyStore(),
        audit="sqlite://",  # where the medical reads (and refusals) are recorded
        domains=[
            KeyDomain("identity"),
            KeyDomain("medical", restricted=True, audited=True, dek_scope="subject"),
        ],
    )
    vaultkit.sqla.configure(vault)
    # At start-up: a gap (an encrypted column nobody annotated) fails here, not in a request.
    subjects = collect(Base.metadata)
    print(subjects.describe())

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    adviser = Principal("medical-adviser", grants={"medical"})
    with acting_as(adviser, purpose="intake"), Session(engine) as session:
        session.add(Member(id="m-17", email="Jan@example.be", health_note="asthma", risk_score=7))
        session.add(Claim(id=1, member_id="m-17", filed_on=dt.date(2026, 3, 1)))
        session.add(Subscription(id=1, email="jan@example.be"))
        session.commit()

    # The DPO's office has no medical grant: the medical column is not read, and is listed.
    with acting_as(Principal("dpo-office"), purpose="DataSubjectRequest"), Session(engine) as s:
        export = vault.export_subject(s, "m-17", "access", subjects=subjects, request_id="DSR-17")
    print(export)
    print("not read:", [(i["table"], i["column"], i["reason"]) for i in export.incomplete_sources])
    export.write_json(out / "m-17.json")
    export.write_csv_zip(out / "m-17.zip")
    export.write_html(out / "m-17.html")

    # The medical adviser makes the separate medical part, delivered through them.
    with acting_as(adviser, purpose="DataSubjectRequest"), Session(engine) as s:
        split = vault.export_subject(s, "m-17", subjects=subjects, split_restricted=True)
    assert split.restricted is not None
    split.restricted.write_json(out / "m-17-medical.json")
    print(split.restricted)
    vaultkit.sqla.configure(None)
    vault.close()
    print(f"written into {out}: m-17.json, m-17.zip, m-17.html, m-17-medical.json")
    print("(a member's data, even made up: delete the directory when you are done)")


if __name__ == "__main__":
    main(sys.argv[1:])
