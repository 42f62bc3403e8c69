"""Writers are not punished for writing (issue 13, item 9).

A claims handler without the medical grant may insert a member with a medical note (an encrypt is
a ``write``, not a read). Reading the member's id or its unrestricted columns after
``session.commit()`` (the expired instance is refreshed from the database) must neither raise
``AccessDeniedError`` nor log a ``denied`` event: the code never read the medical note. Reading
the note itself is then refused, and audited as ``denied``, exactly as for any reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vaultkit import KeyDomain, Principal, SealedValue, Vault
from vaultkit.errors import AccessDeniedError
from vaultkit.sqla import Encrypted
from vaultkit.testing import InMemoryKeyProvider

WRITER = Principal("claims-handler-3", grants={"identity"})
NOTE = "asthma, inhaler prescribed"


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "writer_members"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    email = mapped_column(Encrypted(sa.String(320), domain="identity"))
    medical_note = mapped_column(Encrypted(sa.Text, domain="medical"))


@pytest.fixture(params=["raise", "seal"])
def mode(request: pytest.FixtureRequest) -> str:
    """The medical domain's on_denied mode."""
    return str(request.param)


pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


@pytest.fixture
def vault_kwargs(mode: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "provider": InMemoryKeyProvider(["identity", "medical"]),
        "store": f"sqlite:///{tmp_path / 'keys.db'}",
        "domains": [
            KeyDomain("identity"),
            KeyDomain("medical", restricted=True, audited=True, on_denied=mode),
        ],
    }


@pytest.fixture
def engine(tmp_path: Path, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


def audit_actions(vault: Vault) -> list[tuple[str, str]]:
    """(principal, action) of every audit event, the vault's own operator events left out."""
    vault.flush_audit()
    assert vault.audit_log is not None
    return [
        (e.principal, e.action)
        for _seq, e, _h, _p in vault.audit_log.read()
        if e.principal != "operator"
    ]


def test_a_writer_reads_back_what_it_may_read_after_commit(engine: sa.Engine, vault: Vault) -> None:
    """After commit, the writer reads the member's id, name and e-mail without an
    AccessDeniedError and without a denied event; only its write is audited."""
    with vault.acting_as(WRITER, purpose="claim-77"), Session(engine) as session:
        member = Member(name="Ann Peeters", email="ann@example.be", medical_note=NOTE)
        session.add(member)
        session.commit()
        assert member.id == 1
        assert member.name == "Ann Peeters"
        assert member.email == "ann@example.be"
    assert audit_actions(vault) == [("claims-handler-3", "write")]


def test_the_restricted_attribute_itself_is_still_refused_and_audited(
    engine: sa.Engine, vault: Vault, mode: str
) -> None:
    """After the same commit, reading medical_note raises (raise mode) or gives a SealedValue
    (seal mode), and that read, not the refresh, is audited as denied."""
    with vault.acting_as(WRITER, purpose="claim-77"), Session(engine) as session:
        member = Member(name="Ann Peeters", email="ann@example.be", medical_note=NOTE)
        session.add(member)
        session.commit()
        assert member.id == 1
        assert audit_actions(vault) == [("claims-handler-3", "write")]
        if mode == "raise":
            with pytest.raises(AccessDeniedError):
                _ = member.medical_note
        else:
            assert isinstance(member.medical_note, SealedValue)
    assert audit_actions(vault) == [("claims-handler-3", "write"), ("claims-handler-3", "denied")]
