"""The six-table model of the subject-rights tests (and of the import, the CLI and the benchmark).

- ``members``: the root (``subject_link(column="id")``); name, e-mail and birth date encrypted
  in ``identity`` (process-scoped keys, so the e-mail has a blind index), a health note in the
  restricted ``medical`` domain (per-member keys), plain annotated columns (joined, a derived
  churn score), one unannotated plain column (``risk_score``) and one unannotated plain text
  (``internal_note``), and an encrypted column marked not personal (``ops_tag``);
- ``policies``: by foreign key to members (``via="member_id"``), premium in ``financial``
  (per-member keys);
- ``claims``: following its one foreign key to policies (``subject_link()``); amount in
  ``financial``, diagnosis in ``medical`` (both under the member's key through the plain
  ``member_id`` column, which is no foreign key);
- ``coaching_chats``: member id column with a foreign key (``column="member_id"``); messages in
  ``chats`` (per-member keys, bound to the row), a derived sentiment;
- ``call_recordings``: by foreign key (``via``); audio bytes in ``chats``;
- ``newsletter_subscriptions``: linked only by e-mail, through its blind index matched against
  ``members.email``;
- ``ops_counters``: encrypted but not personal (``not_personal`` on the table).

:data:`UNANNOTATED` holds the values stored in columns that must never reach an export.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vaultkit import KeyDomain
from vaultkit.sqla import BlindIndex, Encrypted
from vaultkit.subjects import not_personal, personal, subject_link

DOMAINS = [
    KeyDomain("identity"),
    KeyDomain("financial", dek_scope="subject"),
    KeyDomain("chats", dek_scope="subject"),
    KeyDomain("medical", restricted=True, audited=True, dek_scope="subject"),
]

#: Values stored in unannotated or not-personal columns: no export may contain any of them.
UNANNOTATED = ("987654321", "UNANNOTATED-INTERNAL-7Q", "OPS-NOT-PERSONAL-3Z", "OPS-TAG-QX81")

HOSTILE_NAME = '<script>alert("x")</script> & <b>Jan</b>'


class Base(DeclarativeBase):
    pass


class ClaimStatus(enum.Enum):
    OPEN = "open"
    PAID = "paid"
    REFUSED = "refused"


_CONTRACT = {"legal_basis": "contract", "purpose": "membership administration"}
_HEALTH = {
    "category": "health",
    "legal_basis": "art. 9(2)(h) medical assessment by the medical adviser",
    "purpose": "assessing claims",
    "retention": "P10Y after relationship_end",
    "recipients": ("medical adviser",),
}


class Member(Base):
    __tablename__ = "members"
    __table_args__: ClassVar[dict[str, Any]] = {
        "info": subject_link(column="id", title="Your membership")
    }

    id: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    name: Mapped[str | None] = mapped_column(
        Encrypted(sa.String(200), domain="identity"),
        info=personal(
            category="identity",
            retention="P5Y after relationship_end",
            recipients=("claims team",),
            label="Full name",
            **_CONTRACT,
        ),
    )
    email: Mapped[str | None] = mapped_column(
        Encrypted(sa.String(320), domain="identity"),
        info=personal(category="contact", retention="P5Y after relationship_end", **_CONTRACT),
    )
    email_index = BlindIndex("email", normalize=str.lower)
    birth_date: Mapped[dt.date | None] = mapped_column(
        Encrypted(sa.Date, domain="identity"),
        info=personal(category="identity", **_CONTRACT),
    )
    joined_on: Mapped[dt.date] = mapped_column(
        sa.Date, info=personal(category="membership", provenance="observed", **_CONTRACT)
    )
    churn_score: Mapped[decimal.Decimal | None] = mapped_column(
        sa.Numeric(5, 3),
        info=personal(
            category="profiling",
            provenance="derived",
            legal_basis="legitimate interest",
            purpose="retention offers",
            automated_decision=True,
        ),
    )
    health_note: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="medical", subject="id"), info=personal(**_HEALTH)
    )
    ops_tag: Mapped[str | None] = mapped_column(
        Encrypted(sa.String(50), domain="identity"), info=not_personal("routing tag of the CRM")
    )
    risk_score: Mapped[int | None] = mapped_column(sa.Integer)  # unannotated: never exported
    internal_note: Mapped[str | None] = mapped_column(sa.String(100))  # unannotated


class Policy(Base):
    __tablename__ = "policies"
    __table_args__: ClassVar[dict[str, Any]] = {"info": subject_link(via="member_id")}

    id: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    member_id: Mapped[str] = mapped_column(sa.ForeignKey("members.id"), index=True)
    product: Mapped[str] = mapped_column(
        sa.String(50), info=personal(category="contract", **_CONTRACT)
    )
    premium: Mapped[decimal.Decimal | None] = mapped_column(
        Encrypted(sa.Numeric(10, 2), domain="financial", subject="member_id"),
        info=personal(category="financial", retention="P7Y", **_CONTRACT),
    )
    started_on: Mapped[dt.date] = mapped_column(
        sa.Date, info=personal(category="contract", **_CONTRACT)
    )


class Claim(Base):
    __tablename__ = "claims"
    __table_args__: ClassVar[dict[str, Any]] = {
        "info": subject_link()
    }  # its one foreign key: policies

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    policy_id: Mapped[str] = mapped_column(sa.ForeignKey("policies.id"), index=True)
    member_id: Mapped[str] = mapped_column(sa.String(20))  # the subject key's column, no FK
    status: Mapped[ClaimStatus] = mapped_column(
        sa.Enum(ClaimStatus), info=personal(category="claims", **_CONTRACT)
    )
    filed_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True),
        info=personal(category="claims", provenance="observed", **_CONTRACT),
    )
    amount: Mapped[decimal.Decimal | None] = mapped_column(
        Encrypted(sa.Numeric(12, 2), domain="financial", subject="member_id"),
        info=personal(category="financial", retention="P7Y", **_CONTRACT),
    )
    diagnosis: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="medical", subject="member_id"), info=personal(**_HEALTH)
    )


class CoachingChat(Base):
    __tablename__ = "coaching_chats"
    __table_args__: ClassVar[dict[str, Any]] = {
        "info": subject_link(column="member_id", title="Coaching conversations")
    }

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_id: Mapped[str] = mapped_column(sa.ForeignKey("members.id"), index=True)
    sent_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True),
        info=personal(
            category="coaching", provenance="observed", legal_basis="consent", purpose="coaching"
        ),
    )
    message: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="chats", row_key="id", subject="member_id"),
        info=personal(
            category="coaching",
            provenance="observed",
            legal_basis="consent",
            purpose="coaching",
            retention="P2Y",
            recipients=("coaches",),
        ),
    )
    sentiment: Mapped[float | None] = mapped_column(
        sa.Float,
        info=personal(
            category="coaching", provenance="derived", legal_basis="consent", purpose="coaching"
        ),
    )


class CallRecording(Base):
    __tablename__ = "call_recordings"
    __table_args__: ClassVar[dict[str, Any]] = {"info": subject_link(via="member_id")}

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    member_id: Mapped[str] = mapped_column(sa.ForeignKey("members.id"), index=True)
    recorded_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True),
        info=personal(category="calls", provenance="observed", **_CONTRACT),
    )
    audio: Mapped[bytes | None] = mapped_column(
        Encrypted(sa.LargeBinary, domain="chats", subject="member_id"),
        info=personal(
            category="calls",
            provenance="observed",
            legal_basis="legitimate interest",
            purpose="quality of service",
            retention="P90D",
            source="telephony platform",
        ),
    )


class NewsletterSubscription(Base):
    __tablename__ = "newsletter_subscriptions"
    __table_args__: ClassVar[dict[str, Any]] = {
        "info": subject_link(match="email_index", identity="members.email", title="Newsletters")
    }

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    email: Mapped[str | None] = mapped_column(
        Encrypted(sa.String(320), domain="identity"),
        info=personal(category="contact", legal_basis="consent", purpose="newsletter"),
    )
    email_index = BlindIndex("email", normalize=str.lower)
    topics: Mapped[Any] = mapped_column(
        sa.JSON, info=personal(category="preferences", legal_basis="consent", purpose="newsletter")
    )
    subscribed_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True),
        info=personal(
            category="preferences",
            provenance="observed",
            legal_basis="consent",
            purpose="newsletter",
        ),
    )


class OpsCounter(Base):
    __tablename__ = "ops_counters"
    __table_args__: ClassVar[dict[str, Any]] = {"info": not_personal("operational counters")}

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    payload: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), domain="identity"))


MODELS = (Member, Policy, Claim, CoachingChat, CallRecording, NewsletterSubscription)

_T0 = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)


def populate(
    session: Session,
    member_id: str,
    *,
    name: str = "Jan Peeters",
    email: str | None = None,
    policies: int = 2,
    claims_per_policy: int = 2,
    chats: int = 3,
    recordings: int = 1,
    newsletters: int = 1,
    first_id: int = 1,
) -> dict[str, int]:
    """Add one member and their rows to ``session`` (flushed, not committed); return the row
    count per table. ``first_id`` spaces the integer keys of several members apart."""
    email = email or f"{member_id}@example.be"
    session.add(
        Member(
            id=member_id,
            name=name,
            email=email,
            birth_date=dt.date(1980, 5, 17),
            joined_on=dt.date(2019, 1, 2),
            churn_score=decimal.Decimal("0.125"),
            health_note=f"diabetes type 2 ({member_id})",
            ops_tag=UNANNOTATED[3],
            risk_score=int(UNANNOTATED[0]),
            internal_note=UNANNOTATED[1],
        )
    )
    counts = {"members": 1}
    next_id = first_id
    session.flush()
    for p in range(policies):
        policy_id = f"{member_id}-p{p}"
        session.add(
            Policy(
                id=policy_id,
                member_id=member_id,
                product="hospital cover" if p == 0 else "dental",
                premium=decimal.Decimal("12.50") + p,
                started_on=dt.date(2020, 1, 1) + dt.timedelta(days=p),
            )
        )
        session.flush()
        for c in range(claims_per_policy):
            session.add(
                Claim(
                    id=next_id,
                    policy_id=policy_id,
                    member_id=member_id,
                    status=ClaimStatus.PAID if c % 2 else ClaimStatus.OPEN,
                    filed_at=_T0 + dt.timedelta(days=c),
                    amount=decimal.Decimal("100.10") + c,
                    diagnosis=f"fracture {c} ({member_id})",
                )
            )
            next_id += 1
    counts["policies"] = policies
    counts["claims"] = policies * claims_per_policy
    for c in range(chats):
        session.add(
            CoachingChat(
                member_id=member_id,
                sent_at=_T0 + dt.timedelta(hours=c),
                message=f"coaching message {c}",
                sentiment=0.5,
            )
        )
    counts["coaching_chats"] = chats
    for r in range(recordings):
        session.add(
            CallRecording(
                id=next_id,
                member_id=member_id,
                recorded_at=_T0 + dt.timedelta(minutes=r),
                audio=b"RIFF\x00\x01" + bytes([r % 256]) * 8,
            )
        )
        next_id += 1
    counts["call_recordings"] = recordings
    for n in range(newsletters):
        session.add(
            NewsletterSubscription(
                id=next_id,
                email=email.upper() if n % 2 else email,
                topics={"topics": ["health", "sport"], "weekly": True},
                subscribed_at=_T0,
            )
        )
        next_id += 1
    counts["newsletter_subscriptions"] = newsletters
    session.add(OpsCounter(id=next_id, payload=UNANNOTATED[2]))
    session.flush()
    return counts


def tables() -> Iterable[sa.Table]:
    return Base.metadata.sorted_tables
