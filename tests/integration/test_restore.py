"""Restoring a real pre-erasure copy of the key store (an SQLite file copied, PostgreSQL table rows
copied) over a live one: what each backup mode does about an erased subject.

(a) no ledger, no epoch: the erased subject reads again. That is the limit the modes exist for.
(b) an erasure ledger: the vault replays it when it opens; the subject is unreadable and fenced.
(c) a shred epoch after the erasure: the pre-epoch copy unwraps nothing, without any ledger.

The erasure itself is done here at the key-store level, in the order of the design (ledger,
fence, destroy, forget), through the vault's hooks; ``Vault.erase_subject`` does the same.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from vaultkit import KeyDomain, Vault
from vaultkit.errors import KeyProviderError, SubjectErasedError
from vaultkit.keys import KeyProvider, LocalKeyProvider
from vaultkit.store import DekState, SubjectRecord

DOMAINS = [KeyDomain("medical", dek_scope="subject"), KeyDomain("identity")]
ALICE, BOB = "member-alice-17", "member-bob-42"


def erase(vault: Vault, subject: str, request_id: str = "req-1") -> int:
    """Erase ``subject`` in the subject-scoped domains: ledger, fence, destroy, forget."""
    store = vault._scoped_store()
    now = vault._now()
    refs = {d: vault.subject_ref(d, subject) for d in ("medical",)}
    for domain, ref in refs.items():
        vault._ledger_append(domain, ref, request_id, now)
    for domain, ref in refs.items():
        old = store.get_subject(domain, ref)
        store.put_subject(
            SubjectRecord(
                domain,
                ref,
                relationship_end=old.relationship_end if old else None,
                fenced_at=now,
                erased_at=now,
                request_id=request_id,
            )
        )
    destroyed = 0
    for domain, ref in refs.items():
        for record in store.subject_keys(domain, ref):
            if record.state is not DekState.DESTROYED:
                destroyed += store.destroy_key(record.dek_id, reason="erasure", at=now)
        vault._keyring.forget_subject(domain, ref)
    return destroyed


@dataclass
class KeyStoreCopy:
    """A live key store and the means to back it up and restore it, as an operator does."""

    url: str
    backup: Callable[[], None]
    restore: Callable[[], None]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def key_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStoreCopy]:
    if request.param == "sqlite":
        live = tmp_path / "keys.db"
        saved = tmp_path / "keys-backup.db"

        def backup() -> None:
            with sqlite3.connect(live) as src, sqlite3.connect(saved) as dst:
                src.backup(dst)  # an online backup of the whole database file

        def restore() -> None:
            shutil.copyfile(saved, live)

        yield KeyStoreCopy(f"sqlite:///{live}", backup, restore)
        return
    url: str = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    tables = ("vaultkit_data_keys", "vaultkit_subjects")

    def pg_backup() -> None:
        with engine.begin() as conn:
            for table in tables:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS backup_{table}"))
                conn.execute(sa.text(f"CREATE TABLE backup_{table} AS TABLE {table}"))

    def pg_restore() -> None:
        with engine.begin() as conn:
            for table in tables:
                conn.execute(sa.text(f"DELETE FROM {table}"))
                conn.execute(sa.text(f"INSERT INTO {table} SELECT * FROM backup_{table}"))

    yield KeyStoreCopy(url, pg_backup, pg_restore)
    engine.dispose()


@pytest.fixture
def provider(tmp_path: Path) -> KeyProvider:
    return LocalKeyProvider(tmp_path / "keyring.json", master_key=os.urandom(32))


def _write(vault: Vault) -> dict[str, bytes]:
    return {
        "alice": vault.encrypt("alice's diagnosis", domain="medical", subject=ALICE),
        "bob": vault.encrypt("bob's diagnosis", domain="medical", subject=BOB),
        "id": vault.encrypt("a process-scoped value", domain="identity"),
    }


def test_a_restore_without_ledger_or_epoch_brings_the_erased_subject_back(
    key_store: KeyStoreCopy, provider: KeyProvider
) -> None:
    """(a) The limit: the pre-erasure copy, restored over the store, makes the erased subject
    readable again. Nothing in the key store alone can prevent it."""
    with Vault(provider=provider, store=key_store.url, domains=DOMAINS) as vault:
        blobs = _write(vault)
        key_store.backup()
        assert erase(vault, ALICE) == 1
        with pytest.raises(SubjectErasedError):
            vault.decrypt(blobs["alice"], domain="medical")
    key_store.restore()
    with Vault(provider=provider, store=key_store.url, domains=DOMAINS) as restored:
        assert restored.decrypt(blobs["alice"], domain="medical") == "alice's diagnosis"


def test_the_ledger_replayed_at_start_up_erases_again_what_a_restore_brought_back(
    key_store: KeyStoreCopy, provider: KeyProvider, tmp_path: Path
) -> None:
    """(b) With an erasure ledger outside the database, the vault that opens the restored store
    destroys the subject's keys again and fences it again; everyone else is untouched."""
    ledger = tmp_path / "ledger-disk" / "erasures.jsonl"
    ledger.parent.mkdir()
    options = {"provider": provider, "domains": DOMAINS, "erasure_ledger": ledger}
    with Vault(store=key_store.url, **options) as vault:  # type: ignore[arg-type]
        blobs = _write(vault)
        key_store.backup()
        erase(vault, ALICE)
    assert ledger.read_bytes().count(b"\n") == 1
    assert ALICE.encode() not in ledger.read_bytes()
    key_store.restore()
    with Vault(store=key_store.url, **options) as restored:  # type: ignore[arg-type]
        with pytest.raises(SubjectErasedError):
            restored.decrypt(blobs["alice"], domain="medical")
        with pytest.raises(SubjectErasedError):
            restored.encrypt("new", domain="medical", subject=ALICE)  # fenced again
        assert restored.decrypt(blobs["bob"], domain="medical") == "bob's diagnosis"
        assert restored.decrypt(blobs["id"], domain="identity") == "a process-scoped value"


def test_after_a_shred_epoch_the_pre_epoch_copy_unwraps_nothing_even_without_ledger(
    key_store: KeyStoreCopy, provider: KeyProvider
) -> None:
    """(c) Erase, then a shred epoch: the copy from before reads nothing at all when restored
    (its wrapping key and KEK-wrapped keys are under the destroyed KEK version), without any
    ledger; the live store still reads everyone but the erased subject."""
    with Vault(provider=provider, store=key_store.url, domains=DOMAINS) as vault:
        blobs = _write(vault)
        key_store.backup()
        erase(vault, ALICE)
        for domain in ("medical", "identity"):
            report = vault.shred_epoch(domain)
            assert report.stranded == 0 and report.kek_versions_destroyed == (1,)
        assert vault.decrypt(blobs["bob"], domain="medical") == "bob's diagnosis"
    key_store.restore()
    with Vault(provider=provider, store=key_store.url, domains=DOMAINS) as restored:
        for name, domain in (("alice", "medical"), ("bob", "medical"), ("id", "identity")):
            with pytest.raises(KeyProviderError):
                restored.decrypt(blobs[name], domain=domain)


def test_the_receipt_date_of_each_mode(key_store: KeyStoreCopy, provider: KeyProvider) -> None:
    """finality for an erasure at T: T + key-store backup retention; next epoch + provider delay
    (0 for the local keyring); None with neither."""
    with Vault(
        provider=provider,
        store=key_store.url,
        domains=DOMAINS,
        shred_epoch_interval=dt.timedelta(days=7),
    ) as vault:
        _write(vault)
        made = next(r for r in vault._scoped_store().wrapping_keys("medical")).created_at
        at = made + dt.timedelta(days=2)
        assert vault._finality(["medical"], at) == made + dt.timedelta(days=7)
    with Vault(
        provider=provider,
        store=key_store.url,
        domains=DOMAINS,
        key_store_backup_retention=dt.timedelta(days=35),
    ) as vault:
        assert vault._finality(["medical"], at) == at + dt.timedelta(days=35)
    with Vault(provider=provider, store=key_store.url, domains=DOMAINS) as vault:
        assert vault._finality(["medical"], at) is None
