"""plan_column on a database: row-bound sources are opened, restricted ones need the grant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vaultkit import KeyDomain, Principal, Vault, acting_as
from vaultkit.errors import AccessDeniedError
from vaultkit.search import fold_name
from vaultkit.sqla import BlindIndex, Encrypted, TokenIndex, plan_column
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

pytestmark = pytest.mark.configured

NURSE = Principal("nurse-1", grants={"medical"})


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "plan_patients"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # Bound to its row: a Core select returns cells, opened with the row key.
    last_name: Mapped[str] = mapped_column(
        Encrypted(sa.String(100), domain="identity", row_key="id")
    )
    surname = BlindIndex("last_name", normalize=fold_name, bits=16)
    name_tokens = TokenIndex("last_name", bits=16)
    diagnosis: Mapped[str | None] = mapped_column(Encrypted(sa.String(40), domain="medical"))
    diagnosis_index = BlindIndex("diagnosis", bits=12)


@pytest.fixture
def vault_kwargs() -> dict[str, Any]:
    """Identity, and a restricted medical domain."""
    return {
        "provider": InMemoryKeyProvider(),
        "store": MemoryKeyStore(),
        "domains": [KeyDomain("identity"), KeyDomain("medical", restricted=True)],
    }


@pytest.fixture
def engine(tmp_path: Path, vault: Vault) -> Iterator[sa.Engine]:
    """400 patients over 100 surnames and 300 diagnoses."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(engine)
    rows = [{"last_name": f"van Name{i % 100}", "diagnosis": f"code {i % 300}"} for i in range(400)]
    with acting_as(NURSE, purpose="intake"), engine.begin() as conn:
        conn.execute(sa.insert(Patient.__table__), rows)
    yield engine
    engine.dispose()


def test_row_bound_source_is_sampled(engine: sa.Engine) -> None:
    """The row-bound surname is decrypted with its row key: exact distinct counts per index."""
    with engine.connect() as conn:
        plan = plan_column(Patient, "last_name", bind=conn, sample=1000)
    assert (plan.rows, plan.distinct) == (400, 100)
    indexes = {i.index.name: i.index for i in plan.indexes}
    assert indexes["surname"].distinct == 100
    assert indexes["name_tokens"].distinct == 101  # "van" and the 100 names
    assert indexes["name_tokens"].population == 800


def test_restricted_source_needs_the_grant(engine: sa.Engine) -> None:
    """Without the medical grant the sample cannot be read: AccessDeniedError, not wrong counts;
    with it, the plan is made."""
    with engine.connect() as conn, pytest.raises(AccessDeniedError):
        plan_column(Patient, "diagnosis", bind=conn)
    with acting_as(NURSE, purpose="planning"), engine.connect() as conn:
        plan = plan_column(Patient, "diagnosis", bind=conn)
    assert plan.distinct == 300
