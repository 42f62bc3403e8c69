"""A value whose key was erased reads as erased after a preload too, never as a forged value.

Found merging the SELECT preload with erased reads: a preload of one id (no batch read) took the
erased key for an unknown id, and the next read of the member's value raised the opaque
``DecryptionError`` instead of ``SubjectErasedError`` (``vaultkit demo`` failed with it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._support import dek_of
from vaultkit import KeyDomain, Vault
from vaultkit.errors import SubjectErasedError, ValueErasedError
from vaultkit.store import MemoryKeyStore, SQLKeyStore
from vaultkit.testing import InMemoryKeyProvider

CTX = {"table": "members", "column": "note"}


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@pytest.mark.parametrize("ids", [1, 3])
def test_a_preloaded_erased_key_reads_as_erased(store_kind: str, ids: int, tmp_path: Path) -> None:
    provider = InMemoryKeyProvider(["medical"])
    store = (
        MemoryKeyStore() if store_kind == "memory" else SQLKeyStore(f"sqlite:///{tmp_path}/k.db")
    )
    domains = [KeyDomain("medical", dek_scope="subject")]
    with Vault(provider=provider, store=store, domains=domains) as writer:
        blobs = [
            writer.encrypt("note", domain="medical", context=CTX, subject=f"m-{i}")
            for i in range(ids)
        ]
        writer.erase_subject("m-0", reason="art17", request_id="REQ-1")
    with Vault(provider=provider, store=store, domains=domains) as reader:
        reader.preload(dek_of(b) for b in blobs)
        with pytest.raises(SubjectErasedError) as raised:
            reader.decrypt(blobs[0], context=CTX)
        assert isinstance(raised.value, ValueErasedError)
        for blob in blobs[1:]:
            assert reader.decrypt(blob, context=CTX) == "note"
