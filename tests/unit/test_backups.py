"""Backup modes of a vault (vaultkit/_backups.py): the finality date of an erasure, the schedule of
shred epochs, and the erasure ledger replayed when a vault opens."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultkit import Vault
from vaultkit._backups import BackupModes, finality, next_epoch
from vaultkit._ledger import ErasureLedger, LedgerEntry
from vaultkit.errors import ConfigurationError
from vaultkit.store import DataKeyRecord, DekState, MemoryKeyStore, SQLKeyStore
from vaultkit.testing import InMemoryKeyProvider

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)
REF = "0123456789abcdef0123456789abcdef"


class KMSLikeDelay(InMemoryKeyProvider):
    """An in-memory provider whose destruction, like KMS's, is final only after 7 days."""

    @property
    def destruction_delay(self) -> dt.timedelta:
        return WEEK


class NoDestruction:
    """A provider with the five KeyProvider methods only (it cannot destroy versions)."""

    def __init__(self) -> None:
        self._inner = InMemoryKeyProvider()
        self.primary = self._inner.primary
        self.versions = self._inner.versions
        self.rotate = self._inner.rotate
        self.wrap = self._inner.wrap
        self.unwrap = self._inner.unwrap


def wrapping_row(domain: str, epoch: int, created: dt.datetime) -> DataKeyRecord:
    return DataKeyRecord(
        dek_id=os.urandom(16),
        domain=domain,
        purpose="wrapping",
        kek_id="memory:x",
        kek_version=1,
        wrapped=os.urandom(61),
        state=DekState.ACTIVE,
        created_at=created,
        name=f"wrapping@{epoch}",
    )


def modes(
    retention: dt.timedelta | None = None, interval: dt.timedelta | None = None
) -> BackupModes:
    return BackupModes(None, retention, interval)


class TestFinality:
    def test_no_mode_no_date(self) -> None:
        """Neither a key-store backup retention nor shred epochs: None (backups may hold keys)."""
        store = MemoryKeyStore()
        assert finality(modes(), store, {"medical": InMemoryKeyProvider()}, T0, ["medical"]) is None

    def test_separate_key_store_retention(self) -> None:
        """Key-store backups kept 30 days: erased_at + 30 days."""
        store = MemoryKeyStore()
        got = finality(modes(dt.timedelta(days=30)), store, {}, T0, ["medical"])
        assert got == T0 + dt.timedelta(days=30)

    def test_epoch_mode_is_the_next_epoch_plus_the_provider_delay(self) -> None:
        """Epochs weekly from T0, erased at T0 + 10 days: next epoch T0 + 14 days, + 7 days for a
        KMS-like provider, + 0 for one that destroys at once; the later domain decides."""
        store = MemoryKeyStore()
        store.insert(wrapping_row("medical", 1, T0))
        store.insert(wrapping_row("chat", 1, T0 + dt.timedelta(days=3)))
        erased = T0 + dt.timedelta(days=10)
        providers: dict[str, object] = {"medical": KMSLikeDelay(), "chat": InMemoryKeyProvider()}
        assert finality(modes(None, WEEK), store, providers, erased, ["chat"]) == (
            T0 + dt.timedelta(days=17)
        )
        assert finality(modes(None, WEEK), store, providers, erased, ["medical"]) == (
            T0 + dt.timedelta(days=21)
        )
        assert finality(modes(None, WEEK), store, providers, erased, ["medical", "chat"]) == (
            T0 + dt.timedelta(days=21)
        )

    def test_the_earlier_of_two_modes_wins(self) -> None:
        """Both modes: the earlier date (either one alone makes the backups harmless)."""
        store = MemoryKeyStore()
        store.insert(wrapping_row("medical", 1, T0))
        providers: dict[str, object] = {"medical": InMemoryKeyProvider()}
        got = finality(modes(dt.timedelta(days=3), WEEK), store, providers, T0, ["medical"])
        assert got == T0 + dt.timedelta(days=3)
        got = finality(modes(dt.timedelta(days=30), WEEK), store, providers, T0, ["medical"])
        assert got == T0 + WEEK

    def test_a_provider_that_cannot_destroy_versions_gives_no_epoch_date(self) -> None:
        """Epochs cannot destroy a KEK version there: no date from that mode."""
        store = MemoryKeyStore()
        store.insert(wrapping_row("medical", 1, T0))
        got = finality(modes(None, WEEK), store, {"medical": NoDestruction()}, T0, ["medical"])
        assert got is None

    @settings(max_examples=200, deadline=None)
    @given(
        last=st.integers(0, 10**8),
        after=st.integers(0, 10**8),
        interval=st.integers(1, 10**7),
    )
    def test_next_epoch_is_the_first_scheduled_one_after_the_erasure(
        self, last: int, after: int, interval: int
    ) -> None:
        """Property: strictly after the erasure (or the last epoch if that is later), on the
        schedule (last + k * interval), and the first such."""
        store = MemoryKeyStore()
        start = T0 + dt.timedelta(seconds=last)
        store.insert(wrapping_row("medical", 1, start))
        at = T0 + dt.timedelta(seconds=after)
        step = dt.timedelta(seconds=interval)
        got = next_epoch(store, "medical", step, at)
        if start > at:
            assert got == start
        else:
            assert got > at and got - step <= at
            assert (got - start) % step == dt.timedelta(0)

    def test_a_domain_without_epochs_is_due_one_interval_after(self) -> None:
        """No wrapping key yet: the first epoch is one interval after the erasure."""
        assert next_epoch(MemoryKeyStore(), "medical", WEEK, T0) == T0 + WEEK


class TestVaultOptions:
    def test_durations_must_be_positive_timedeltas(self) -> None:
        """Zero or negative durations are configuration errors; numbers are type errors."""
        for name in ("key_store_backup_retention", "shred_epoch_interval"):
            with pytest.raises(ConfigurationError, match=name):
                Vault(
                    provider=InMemoryKeyProvider(),
                    store=MemoryKeyStore(),
                    domains=["medical"],
                    **{name: dt.timedelta(0)},  # type: ignore[arg-type]
                )
            with pytest.raises(TypeError, match=name):
                Vault(
                    provider=InMemoryKeyProvider(),
                    store=MemoryKeyStore(),
                    domains=["medical"],
                    **{name: 7},  # type: ignore[arg-type]
                )

    def test_the_vault_gives_ops_its_finality(self) -> None:
        """Vault._finality (the receipt's hook) applies the vault's own modes."""
        with Vault(
            provider=InMemoryKeyProvider(),
            store=MemoryKeyStore(),
            domains=["medical"],
            key_store_backup_retention=dt.timedelta(days=14),
        ) as vault:
            assert vault._finality(["medical"], T0) == T0 + dt.timedelta(days=14)
        with Vault(
            provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["medical"]
        ) as vault:
            assert vault._finality(["medical"], T0) is None

    @pytest.mark.parametrize("kind", ["memory", "sqlite"])
    def test_opening_a_vault_replays_its_ledger(self, tmp_path: Path, kind: str) -> None:
        """A store holding live keys of a subject the ledger says was erased (a restored backup):
        the vault destroys them while it opens, and fences the subject; its hook appends."""
        store = (
            MemoryKeyStore() if kind == "memory" else SQLKeyStore(f"sqlite:///{tmp_path / 'k.db'}")
        )
        row = DataKeyRecord(
            dek_id=os.urandom(16),
            domain="medical",
            purpose="data",
            kek_id="vaultkit:wrapping",
            kek_version=1,
            wrapped=os.urandom(61),
            state=DekState.ACTIVE,
            created_at=T0 - dt.timedelta(days=1),
            subject=REF,
            scope="subject",
        )
        store.insert(row)
        path = tmp_path / "erasures.jsonl"
        ErasureLedger(path).append([LedgerEntry("medical", REF, T0, "req-9")])
        with Vault(
            provider=InMemoryKeyProvider(),
            store=store,
            domains=["medical"],
            erasure_ledger=path,
            clock=lambda: T0 + dt.timedelta(days=40),
        ) as vault:
            got = store.get(row.dek_id)
            assert got is not None and got.state is DekState.DESTROYED
            assert got.destroy_reason == "erasure"
            subject = store.get_subject("medical", REF)
            assert subject is not None and subject.fenced_at == T0
            vault._ledger_append("medical", "f" * 32, "req-10", T0 + dt.timedelta(days=40))
        assert [e.request_id for e in ErasureLedger(path).entries()] == ["req-9", "req-10"]
        if isinstance(store, SQLKeyStore):
            store.close()

    def test_a_ledger_on_a_missing_disk_is_refused_not_read_as_empty(self, tmp_path: Path) -> None:
        """A ledger whose directory does not exist (its disk not mounted) stops the vault's
        start instead of replaying nothing; an existing directory with no file yet is fine."""
        with pytest.raises(ConfigurationError, match="mounted"):
            Vault(
                provider=InMemoryKeyProvider(),
                store=MemoryKeyStore(),
                domains=["medical"],
                erasure_ledger=tmp_path / "not-mounted" / "erasures.jsonl",
            )
        with Vault(
            provider=InMemoryKeyProvider(),
            store=MemoryKeyStore(),
            domains=["medical"],
            erasure_ledger=tmp_path / "erasures.jsonl",
        ):
            pass

    def test_a_damaged_ledger_keeps_the_vault_closed(self, tmp_path: Path) -> None:
        """A ledger that cannot be read fails the vault's start (no partial replay)."""
        path = tmp_path / "erasures.jsonl"
        path.write_bytes(b"not json\n")
        from vaultkit.errors import KeyStoreError

        with pytest.raises(KeyStoreError, match="damaged at line 1"):
            Vault(
                provider=InMemoryKeyProvider(),
                store=MemoryKeyStore(),
                domains=["medical"],
                erasure_ledger=path,
            )
