"""The medical functional unit: a restricted, audited domain read by a coach and by claims staff.

Run it from any directory; it needs no server (the KEKs are in memory, the audit log in an
in-memory SQLite database). docs/tutorials/medical-unit.md walks through it.
"""

from __future__ import annotations

import uuid

from sqlalchemy import String, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, SealedValue, Vault
from vaultkit.sqla import Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider


class Base(DeclarativeBase): ...


class Member(Base):
    __tablename__ = "members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(String(200), domain="identity"))
    health_note: Mapped[str] = mapped_column(Encrypted(Text, domain="medical", row_key="id"))


def main() -> None:
    vault = Vault(
        provider=InMemoryKeyProvider(),  # tests and tutorials only: KEKs in memory
        store=MemoryKeyStore(),
        domains=[KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)],
        audit="sqlite://",  # the hash-chained audit log; a database of its own in production
    )
    vaultkit.sqla.configure(vault)
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    coach = Principal("coach-17", grants={"medical"})
    claims = Principal("claims-handler-3")
    try:
        with Session(engine) as session:
            member = Member(name="Jan Peeters", health_note="Type 2 diabetes, coaching since May")
            session.add(member)
            session.commit()

            with vault.acting_as(coach, purpose="coaching-chat"):
                assert member.health_note.startswith("Type 2")  # audited: decrypt
            with vault.acting_as(claims, purpose="claim-2026-0042"):
                assert member.name == "Jan Peeters"  # identity is not restricted
                sealed = member.health_note  # audited: denied
                assert isinstance(sealed, SealedValue)
                print(repr(sealed))  # SealedValue(domain='medical'): no plaintext

        vault.flush_audit()  # events are written in batches
        log = vault.audit_log
        assert log is not None
        for _seq, event, _prev, _mac in log.read():
            print(event.principal, event.purpose, event.action, event.table, event.column)
        result = log.verify()  # the hash chain is intact
        assert result.ok, result
        print(f"audit log verified: {result.events} events")
    finally:
        vaultkit.sqla.configure(None)
        vault.close()
        engine.dispose()


if __name__ == "__main__":
    main()
