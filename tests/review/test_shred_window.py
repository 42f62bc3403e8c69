"""Review of issue 16: a backup taken while a shred epoch runs, combined with a pre-erasure
backup, after the epoch (the receipt's finality date): the erased member must stay unreadable."""

from __future__ import annotations

from typing import Any

import pytest

import vaultkit._lifecycle
from vaultkit import KeyDomain, Vault
from vaultkit._keyring import index_key_id
from vaultkit._scoped import wrapping_name
from vaultkit.errors import DecryptionError, KeyProviderError
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

MEDICAL = KeyDomain("medical", dek_scope="subject")


def copy_store(store: MemoryKeyStore, *, replace: dict[bytes, Any] | None = None) -> MemoryKeyStore:
    """A backup of a memory store (rows and subjects), with some rows taken from elsewhere."""
    copy = MemoryKeyStore()
    for record in store.records():
        copy.insert((replace or {}).get(record.dek_id, record))
    for subject in list(store._subjects.values()):
        copy.put_subject(subject)
    return copy


def test_a_backup_taken_during_the_epoch_does_not_revive_an_erased_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = InMemoryKeyProvider()
    store = MemoryKeyStore()
    with Vault(provider=provider, store=store, domains=[MEDICAL]) as vault:
        blob = vault.encrypt("diagnosis of m-1", domain="medical", subject="m-1")
        vault.encrypt("diagnosis of m-2", domain="medical", subject="m-2")
        before = copy_store(store)  # the nightly backup before the erasure
        vault.erase_subject("m-1", reason="art17", request_id="DSR-9")
        during: list[MemoryKeyStore] = []
        rotate = vaultkit._lifecycle.rotate_kek

        def rotate_then_back_up(*args: Any, **kwargs: Any) -> Any:
            report = rotate(*args, **kwargs)
            if not during:
                during.append(copy_store(store))  # a backup that overlaps the epoch's run
            return report

        monkeypatch.setattr(vaultkit._lifecycle, "rotate_kek", rotate_then_back_up)
        shred = vault.shred_epoch("medical")
    assert shred.kek_versions_destroyed  # the epoch completed: old KEK version gone
    wrapping_id = index_key_id("medical", wrapping_name(1))
    combined = copy_store(before, replace={wrapping_id: during[0].get(wrapping_id)})
    with Vault(provider=provider, store=combined, domains=[MEDICAL]) as restored:
        with pytest.raises((DecryptionError, KeyProviderError)):
            restored.decrypt(blob, domain="medical")
