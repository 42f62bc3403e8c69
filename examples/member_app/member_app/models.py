"""The tables: members, their claims, and the coaching chat, each column in its key domain.

Every value is bound to its row (``row_key="id"``): a ciphertext copied into another row does not
decrypt. The ids are UUIDs made in Python, so they are known before the values are encrypted.
"""

import datetime as dt
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vaultkit.sqla import BlindIndex, Encrypted


def normalize_email(address: str) -> str:
    """How e-mail addresses are compared: the blind index is taken of this form."""
    return address.strip().lower()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(sa.String(200), domain="identity", row_key="id"))
    email: Mapped[str] = mapped_column(Encrypted(sa.String(320), domain="identity", row_key="id"))
    # A keyed HMAC of the normalised address, kept in sync on every write: lookups by e-mail
    # compare digests in an ordinary index, without decrypting anything.
    email_index = BlindIndex("email", normalize=normalize_email)


class Claim(Base):
    __tablename__ = "claims"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("members.id"), index=True)
    filed_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
    amount: Mapped[Decimal] = mapped_column(
        Encrypted(sa.Numeric(10, 2), domain="financial", row_key="id")
    )
    description: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="financial", row_key="id"))


class ChatMessage(Base):
    """One message of the coaching chat. The text is in the restricted, audited medical domain:
    only a principal with the ``medical`` grant reads it, and every read is logged."""

    __tablename__ = "chat_messages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("members.id"), index=True)
    author: Mapped[str] = mapped_column(sa.String(100))
    sent_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
    text: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="medical", row_key="id"))
