"""A retention policy and an erasure: 72-hour chats, contracts kept 5 years after they end.

Run it from any directory; it needs no server (KEKs in memory, key store and data in SQLite
memory). The clock is injected so that three days pass in a second. docs/tutorials/retention.md
walks through it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, Text, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Retention, Vault
from vaultkit.sqla import BlindIndex, Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

START = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


class Clock:
    """The vault's wall clock, moved by hand (production vaults use the system's)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


class Base(DeclarativeBase): ...


class Chat(Base):
    """A teleconsultation chat line: kept no longer than 72 hours after it was written."""

    __tablename__ = "chats"
    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(Integer)
    text: Mapped[str | None] = mapped_column(Encrypted(Text, domain="chat", on_erased="null"))


class Member(Base):
    """A member's identity: under the member's own key, erased when the member asks."""

    __tablename__ = "members"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(
        Encrypted(Text, domain="identity", subject="id", on_erased="null")
    )
    email_index = BlindIndex("email", normalize=str.lower)


def main() -> None:
    clock = Clock()
    vault = Vault(
        provider=InMemoryKeyProvider(),  # tests and tutorials only: KEKs in memory
        store=MemoryKeyStore(),
        domains=[
            # Each hour's chats under one key, destroyed 72 hours after the hour ends.
            KeyDomain(
                "chat",
                dek_scope="bucket",
                bucket=dt.timedelta(hours=1),
                retention=Retention("PT72H", after="capture"),
            ),
            # Each member's identity under keys of their own.
            KeyDomain("identity", dek_scope="subject"),
        ],
        clock=clock,
    )
    vaultkit.sqla.configure(vault)
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add_all(
                [
                    Member(id=17, email="jan@example.be"),
                    Member(id=18, email="marie@example.be"),
                    Chat(id=1, member_id=17, text="I have had a fever since Sunday."),
                ]
            )
            session.commit()

        # 73 hours later (72 h retention + the 1 h bucket): the chat's key is past its deadline.
        # Reads refuse it at once, before any sweep; the sweep then destroys the key for good.
        clock.now = START + dt.timedelta(hours=73)
        with Session(engine) as session:
            assert session.get(Chat, 1).text is None  # on_erased="null": read as erased
        swept = vault.enforce_retention()
        print(f"retention sweep: {swept.to_json()}")

        # Member 17 asks to be erased (GDPR art. 17): fence, destroy keys, null index cells.
        receipt = vault.erase_subject(
            17,
            reason="art17",
            request_id="DSR-2026-0412",
            cells=vaultkit.sqla.erasure_cells(Base.metadata, engine, 17),
        )
        print(f"erasure receipt: {receipt.to_json()}")  # names no person, holds no hash
        assert receipt.status == "granted"

        with Session(engine) as session:
            assert session.get(Member, 17).email is None  # erased
            assert session.get(Member, 18).email == "marie@example.be"  # others still read
            found = session.scalars(select(Member).where(Member.email_index == "jan@example.be"))
            assert found.all() == []  # the blind index no longer finds the erased member

        report = vault.retention_report()
        print(f"retention report: {report.to_json()}")
    finally:
        vault.close()
        vaultkit.sqla.configure(None)


if __name__ == "__main__":
    main()
