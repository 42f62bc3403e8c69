"""Review of issue 16: an erasure that stops after destroying keys (the application's database
fails in the blind-index step) still leaves an event of that destruction in the audit chain.

Failed before the fix (the events were written after the cells callback only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests._support import dek_of
from vaultkit import KeyDomain, Vault
from vaultkit.errors import SubjectErasedError
from vaultkit.testing import InMemoryKeyProvider


def test_keys_destroyed_by_an_erasure_that_then_fails_are_audited(tmp_path: Path) -> None:
    with Vault(
        provider=InMemoryKeyProvider(["medical"]),
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        domains=[KeyDomain("medical", audited=True, dek_scope="subject")],
        audit=f"sqlite:///{tmp_path / 'audit.db'}",
    ) as vault:
        blob = vault.encrypt("diagnosis", domain="medical", subject=17)

        def cells() -> dict[str, int]:
            raise sa.exc.OperationalError("UPDATE members ...", {}, Exception("server gone"))

        with pytest.raises(sa.exc.OperationalError):
            vault.erase_subject(17, reason="art17", request_id="DSR-7", cells=cells)
        with pytest.raises(SubjectErasedError):  # the keys are gone
            vault.decrypt(blob)
        assert vault.store.get(dek_of(blob)) is not None
        log = vault.audit_log
        assert log is not None
        actions = [event.action for _s, event, _p, _m in log.read()]
        assert "erase" in actions
