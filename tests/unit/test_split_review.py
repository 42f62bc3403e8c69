"""Review of the Vault split (issue 15): secrets, grant order, fail-closed audit, fork, pickling.

Each test pins a property the single ``Vault`` class had before the split (ca40752) on the new
collaborators (keyring, cipher, recorder, policy).
"""

from __future__ import annotations

import copy
import pickle
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vaultkit import KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit.core import wire
from vaultkit.errors import AuditError, DecryptionError
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

COACH = Principal("coach-17", grants={"medical"})
ANON = Principal("clerk")


class CountingStore(MemoryKeyStore):
    """A memory key store that counts its reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def get(self, dek_id: bytes) -> Any:
        self.reads["get"] += 1
        return super().get(dek_id)

    def records(self, **kwargs: Any) -> Any:
        self.reads["records"] += 1
        return super().records(**kwargs)


def _domains() -> list[Any]:
    return ["identity", KeyDomain("medical", restricted=True)]


@pytest.fixture
def pair() -> Iterator[tuple[Vault, Vault, CountingStore, CountingKeyProvider]]:
    """A writer vault and a cold reader vault over one counting store and counting provider."""
    store = CountingStore()
    inner = InMemoryKeyProvider(["identity", "medical"])
    counting = CountingKeyProvider(inner)
    with Vault(provider=inner, store=store, domains=_domains()) as writer:
        with Vault(provider=counting, store=store, domains=_domains()) as reader:
            yield writer, reader, store, counting


class TestGrantBeforeAnyKeyRead:
    def _blob(self, writer: Vault) -> bytes:
        with acting_as(COACH, purpose="care"):
            return writer.field("medical", table="m", column="notes").encrypt("knee")

    def test_field_read_without_grant_reads_no_key(self, pair: Any) -> None:
        writer, reader, store, counting = pair
        blob = self._blob(writer)
        store.reads.clear()
        field = reader.field("medical", table="m", column="notes")
        with acting_as(ANON, purpose="x"):
            for _ in range(3):
                assert isinstance(field.decrypt(blob), SealedValue)
                assert isinstance(field.opener()(blob), SealedValue)
                assert isinstance(reader.decrypt(blob, domain="medical"), SealedValue)
        assert store.reads == Counter()
        assert counting.calls["unwrap"] == 0

    def test_read_without_a_domain_never_unwraps(self, pair: Any) -> None:
        """Without a column domain the DEK's domain comes from its row, but no unwrap."""
        writer, reader, _store, counting = pair
        blob = self._blob(writer)
        with acting_as(ANON, purpose="x"):
            assert isinstance(reader.decrypt(blob), SealedValue)
        assert counting.calls["unwrap"] == 0

    def test_cache_hit_without_grant_is_denied(self, pair: Any) -> None:
        """A DEK unwrapped for the coach stays cached; another principal still gets sealed."""
        writer, reader, _store, counting = pair
        blob = self._blob(writer)
        field = reader.field("medical", table="m", column="notes")
        with acting_as(COACH, purpose="care"):
            assert field.decrypt(blob) == "knee"
        with acting_as(ANON, purpose="x"):
            assert isinstance(field.decrypt(blob), SealedValue)
            assert isinstance(field.opener()(blob), SealedValue)
            assert isinstance(reader.decrypt(blob), SealedValue)
        assert counting.calls["unwrap"] == 1

    def test_commitment_checked_on_hit_and_miss(self, pair: Any) -> None:
        writer, reader, _store, _counting = pair
        blob = self._blob(writer)
        bad = blob[: wire.COMMITMENT_SLICE.start] + bytes(32) + blob[wire.COMMITMENT_SLICE.stop :]
        field = reader.field("medical", table="m", column="notes")
        with acting_as(COACH, purpose="care"):
            with pytest.raises(DecryptionError):
                field.decrypt(bad)  # miss
            assert field.decrypt(blob) == "knee"
            with pytest.raises(DecryptionError):
                field.decrypt(bad)  # hit by id, not by header
            with pytest.raises(DecryptionError):
                field.opener()(bad)
            with pytest.raises(DecryptionError):
                reader.decrypt(bad)

    def test_unknown_ids_spend_the_miss_budget(self, pair: Any) -> None:
        """Hostile values naming random DEK ids cost a bounded number of key-store reads."""
        import os

        from vaultkit import _keyring

        writer, reader, store, _counting = pair
        blob = writer.encrypt("x", domain="identity")
        store.reads.clear()
        n = _keyring.UNKNOWN_LOOKUP_BUDGET * 3
        for _ in range(n):
            forged = (
                blob[: wire.DEK_ID_SLICE.start] + os.urandom(16) + blob[wire.DEK_ID_SLICE.stop :]
            )
            with pytest.raises(DecryptionError):
                reader.decrypt(forged)
        assert store.reads["get"] + store.reads["records"] <= _keyring.UNKNOWN_LOOKUP_BUDGET + 1


class _BatchProvider(InMemoryKeyProvider):
    """An in-memory provider with the batch-unwrap capability."""

    def unwrap_many(self, items: Any) -> list[bytes]:
        return [self.unwrap(ref, wrapped, context=context) for ref, wrapped, context in items]


def test_preload_without_grant_unwraps_nothing_even_in_batch() -> None:
    """preload skips restricted DEKs the principal may not read, single and batch unwrap alike.

    CountingKeyProvider now forwards ``unwrap_many`` and counts it under its own name: a check of
    ``calls["unwrap"]`` alone would miss a batch unwrap.
    """
    store = MemoryKeyStore()
    inner = _BatchProvider(["identity", "medical"])
    counting = CountingKeyProvider(inner)
    with Vault(provider=inner, store=store, domains=_domains()) as writer:
        with acting_as(COACH, purpose="care"):
            blob = writer.encrypt("knee", domain="medical")
    dek_id = blob[wire.DEK_ID_SLICE]
    with Vault(provider=counting, store=store, domains=_domains()) as reader:
        with acting_as(ANON, purpose="x"):
            assert reader.preload([dek_id]) == 0
            assert isinstance(reader.decrypt(blob), SealedValue)
        assert counting.calls["unwrap"] + counting.calls["unwrap_many"] == 0
        with acting_as(COACH, purpose="care"):
            assert reader.preload([dek_id]) == 1
        assert counting.calls["unwrap_many"] == 1


@pytest.fixture
def audited_vault(tmp_path: Path) -> Iterator[Vault]:
    with Vault(
        provider=InMemoryKeyProvider(["identity", "medical"]),
        store=f"sqlite:///{tmp_path / 'k.db'}",
        domains=["identity", KeyDomain("medical", restricted=True, audited=True)],
    ) as vault:
        vault.encrypt("p", domain="identity")
        yield vault


class TestNoKeyMaterialLeavesByPickleOrCopy:
    """The old Vault (NoPickle) refused pickling and copying; its parts hold the same keys."""

    @pytest.mark.parametrize("part", ["_keyring", "_cipher", "_recorder"])
    def test_parts_refuse_pickling(self, audited_vault: Vault, part: str) -> None:
        """Pickling fails (on a NoPickle leaf or an engine) before any byte is returned."""
        with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
            pickle.dumps(getattr(audited_vault, part))

    @pytest.mark.parametrize("part", ["_keyring", "_cipher"])
    def test_parts_refuse_copying_like_the_vault(self, audited_vault: Vault, part: str) -> None:
        with pytest.raises(TypeError, match="key material"):
            copy.copy(getattr(audited_vault, part))

    def test_counting_provider_refuses_pickling(self) -> None:
        counting = CountingKeyProvider(_BatchProvider(["identity"]))
        assert type(counting).__name__ != "CountingKeyProvider"  # a capability subclass
        # The made subclass cannot be found by name (PicklingError); the plain one reaches its
        # NoPickle provider (TypeError). Either way nothing is returned.
        with pytest.raises((TypeError, pickle.PicklingError)):
            pickle.dumps(counting)
        from tests.unit.test_testing import Plain  # no capability: the plain wrapper class

        with pytest.raises(TypeError, match="key material"):
            pickle.dumps(CountingKeyProvider(Plain()))
        assert "CountingKeyProvider(" in repr(counting)


class TestReprNamesNoSecret:
    def test_reprs(self, vault: Vault) -> None:
        blob = vault.encrypt("Jan Peeters", domain="identity")
        vault.decrypt(blob)
        keyring = vault._keyring
        active = keyring.active["identity"]
        cached = keyring.cache.by_header[blob[: wire.HEADER_SIZE]]
        dek_hex = active.key.cipher._key.hex() if hasattr(active.key.cipher, "_key") else None
        texts = [
            repr(x)
            for x in (
                keyring,
                vault._cipher,
                active,
                cached,
                active.key,
                CountingKeyProvider(InMemoryKeyProvider(["identity"])),
            )
        ] + [str(active), str(cached)]
        for text in texts:
            assert "Jan" not in text
            if dek_hex:
                assert dek_hex not in text


class TestAuditFailClosed:
    def test_failed_audit_write_gives_no_plaintext_and_keeps_events(self, tmp_path: Path) -> None:
        """An audit log that cannot be written fails the read and loses no earlier access."""
        with Vault(
            provider=InMemoryKeyProvider(["medical"]),
            store=f"sqlite:///{tmp_path / 'k.db'}",
            domains=[KeyDomain("medical", restricted=True, audited=True)],
        ) as vault:
            recorder = vault._recorder
            log = vault.audit_log
            assert recorder is not None and log is not None
            field = vault.field("medical", table="m", column="n", row_bound=True)
            with acting_as(COACH, purpose="care"):
                blob = field.encrypt("knee", row=1)
                vault.flush_audit()
                assert field.decrypt(blob, row=1) == "knee"  # first of a batch: written
                assert field.decrypt(blob, row=1) == "knee"  # batched, not yet written
                real = recorder._write

                def broken(events: Any) -> None:
                    raise AuditError("down")

                recorder._write = broken  # type: ignore[method-assign]
                with pytest.raises(AuditError):
                    vault.flush_audit()
                with pytest.raises(AuditError):
                    field.decrypt(blob, row=1)
                with pytest.raises(AuditError):
                    vault.decrypt(blob, context={"table": "m", "column": "n", "row": 1})
                recorder._write = real  # type: ignore[method-assign]
                vault.flush_audit()
            decrypts = [e for _, e, _, _ in log.read() if e.action == "decrypt"]
            assert sum(e.count for e in decrypts) >= 2
