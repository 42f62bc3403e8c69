"""Fixtures of the subject-rights tests: a vault over the six-table model's domains (counted
provider, SQLite key store, audit log) and a database holding two members, m-17 and m-18."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests._support import FakeClock
from tests.unit.subjects import _models as m
from vaultkit import Principal, Vault, acting_as
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

#: Writes the test data (the medical domain needs the grant to be read back, not to be written).
ADVISER = Principal("medical-adviser", grants={"medical"})
CHECK = 5  # seconds: the vault's key_check_interval


@pytest.fixture
def provider() -> CountingKeyProvider:
    return CountingKeyProvider(InMemoryKeyProvider())


@pytest.fixture
def vault_kwargs(tmp_path: Path, provider: CountingKeyProvider, clock: FakeClock) -> dict[str, Any]:
    return {
        "provider": provider,
        "store": f"sqlite:///{tmp_path / 'keys.db'}",
        "domains": m.DOMAINS,
        "audit": f"sqlite:///{tmp_path / 'audit.db'}",
        "key_check_interval": CHECK,
    }


@pytest.fixture
def engine(database_url: str, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(database_url)
    m.Base.metadata.create_all(eng)
    with acting_as(ADVISER, purpose="test data"), Session(eng) as session:
        m.populate(session, "m-17", name=m.HOSTILE_NAME)
        m.populate(session, "m-18", name="Other Member", first_id=1000)
        session.commit()
    yield eng
    m.Base.metadata.drop_all(eng)
    eng.dispose()
