"""The model and the erasure steps shared by test_erasure_processes.py and _erase_worker.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vaultkit import KeyDomain, Vault
from vaultkit.keys import LocalKeyProvider
from vaultkit.sqla import BlindIndex, Encrypted
from vaultkit.store import SubjectRecord

DOMAINS = [KeyDomain("medical", dek_scope="subject")]


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "erasure_members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    note: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="medical", subject="member_id", on_erased="null")
    )
    note_index = BlindIndex("note")


def open_vault(keyring: Path, store: str, *, key_check_interval: float = 1.0) -> Vault:
    return Vault(
        provider=LocalKeyProvider(keyring),
        store=store,
        domains=DOMAINS,
        key_check_interval=key_check_interval,
    )


def destroy_subject_keys(vault: Vault, subject: int) -> int:
    """Fence the subject and destroy its keys through the key store (as erase_subject does)."""
    now = datetime.now(UTC)
    ref = vault.subject_ref("medical", subject)
    store = vault.store
    store.put_subject(SubjectRecord("medical", ref, fenced_at=now, erased_at=now))  # type: ignore[attr-defined]
    keys = store.subject_keys("medical", ref)  # type: ignore[attr-defined]
    return sum(store.destroy_key(k.dek_id, reason="erasure", at=now) for k in keys)  # type: ignore[attr-defined]
