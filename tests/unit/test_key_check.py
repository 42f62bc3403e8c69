"""The periodic key-store check of cached DEKs (``key_check_interval``).

A DEK destroyed (or retired) by another process stops decrypting (or encrypting) here within the
interval, through a cheap state read of the key store, never through another provider unwrap.
Two vaults on one store stand in for two processes; the clock is injected.
"""

from __future__ import annotations

import base64
import math
import os
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from tests._support import FakeClock, dek_of
from vaultkit import KeyDomain, Principal, Vault, acting_as
from vaultkit.config import vault_options
from vaultkit.errors import ConfigurationError, DecryptionError
from vaultkit.store import DataKeyRecord, DekState, KeyStore, MemoryKeyStore, SQLKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

DOMAINS = ["identity", "financial", "medical"]


@pytest.fixture
def provider() -> InMemoryKeyProvider:
    return InMemoryKeyProvider()


class CountingStore(MemoryKeyStore):
    """A memory key store that counts its reads by method name."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def get(self, dek_id: bytes) -> DataKeyRecord | None:
        self.reads["get"] += 1
        return super().get(dek_id)

    def states(self, dek_ids: Collection[bytes]) -> dict[bytes, DekState]:
        self.reads["states"] += 1
        return super().states(dek_ids)


class RowByRowStore:
    """A key store without the batched ``states`` read (a user's own store)."""

    def __init__(self) -> None:
        self._inner = MemoryKeyStore()
        self.gets = 0

    def insert(self, record: DataKeyRecord) -> None:
        self._inner.insert(record)

    def get(self, dek_id: bytes) -> DataKeyRecord | None:
        self.gets += 1
        return self._inner.get(dek_id)

    def records(
        self, *, domain: str | None = None, state: DekState | None = None
    ) -> Iterator[DataKeyRecord]:
        return self._inner.records(domain=domain, state=state)

    def add_encryptions(self, dek_id: bytes, count: int) -> None:
        self._inner.add_encryptions(dek_id, count)

    def set_state(self, dek_id: bytes, state: DekState) -> None:
        self._inner.set_state(dek_id, state)

    def rewrap(self, old: DataKeyRecord, *, kek_id: str, kek_version: int, wrapped: bytes) -> bool:
        return self._inner.rewrap(old, kek_id=kek_id, kek_version=kek_version, wrapped=wrapped)

    def destroy(self, dek_id: bytes) -> None:
        self._inner.destroy(dek_id)

    def close(self) -> None:
        self._inner.close()


def written(provider: InMemoryKeyProvider, store: KeyStore, count: int) -> list[bytes]:
    """``count`` values in the identity domain, 100 per DEK, written by another vault."""
    with Vault(provider=provider, store=store, domains=DOMAINS, dek_max_encryptions=100) as writer:
        return [writer.encrypt(i, domain="identity") for i in range(count)]


def destroy_elsewhere(provider: InMemoryKeyProvider, store: KeyStore, dek: bytes) -> None:
    """Retire and destroy ``dek`` through another vault (another process, in effect)."""
    with Vault(provider=provider, store=store, domains=DOMAINS) as other:
        other.retire_dek(dek)
        other.destroy_dek(dek, references=0)


class TestDecrypting:
    def test_a_check_reads_the_store_once_and_unwraps_nothing(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """After the interval all cached DEKs are checked in one store read, without an unwrap."""
        store = CountingStore()
        blobs = written(provider, store, 500)  # 5 DEKs
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS) as reader:
            assert [reader.decrypt(b) for b in blobs] == list(range(500))
            assert counting.calls["unwrap"] == 5
            store.reads.clear()
            for _ in range(3):
                clock.now += 6  # past the default interval of 5 s
                assert [reader.decrypt(b) for b in blobs] == list(range(500))
            assert counting.calls["unwrap"] == 5  # no provider call for a check
            assert store.reads == {"states": 3}  # one read per interval, not per value or DEK
            clock.now += 2
            assert [reader.decrypt(b) for b in blobs] == list(range(500))
            assert store.reads == {"states": 3}  # within the interval: no read at all

    def test_a_dek_destroyed_elsewhere_fails_after_the_interval(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """A DEK destroyed by another vault raises DecryptionError here once the interval passed."""
        store = MemoryKeyStore()
        blobs = written(provider, store, 200)
        gone, kept = blobs[0], blobs[150]
        with Vault(provider=provider, store=store, domains=DOMAINS) as reader:
            assert reader.decrypt(gone) == 0 and reader.decrypt(kept) == 150
            destroy_elsewhere(provider, store, dek_of(gone))
            clock.now += 4  # within the interval the cached DEK still serves (the documented bound)
            assert reader.decrypt(gone) == 0
            clock.now += 2
            with pytest.raises(DecryptionError):
                reader.decrypt(gone)
            with pytest.raises(DecryptionError):
                reader.decrypt(blobs[1])  # every value under it
            assert reader.decrypt(kept) == 150  # the other DEK is untouched
            clock.now += 600  # and it never comes back, not even after a full re-read
            with pytest.raises(DecryptionError):
                reader.decrypt(gone)

    def test_a_dek_retired_elsewhere_still_decrypts(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """A retired DEK passes the check: its values still decrypt, without another unwrap."""
        store = MemoryKeyStore()
        blobs = written(provider, store, 100)
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS) as reader:
            assert reader.decrypt(blobs[0]) == 0
            with Vault(provider=provider, store=store, domains=DOMAINS) as other:
                other.retire_dek(dek_of(blobs[0]))
            clock.now += 6
            assert reader.decrypt(blobs[7]) == 7
            assert counting.calls["unwrap"] == 1

    def test_the_interval_is_configurable(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """key_check_interval sets the bound; the full re-unwrap after cache_ttl stays."""
        store = CountingStore()
        blobs = written(provider, store, 100)
        counting = CountingKeyProvider(provider)
        with Vault(
            provider=counting, store=store, domains=DOMAINS, key_check_interval=30, cache_ttl=100
        ) as reader:
            assert reader.cache_info().check_interval == 30
            reader.decrypt(blobs[0])
            store.reads.clear()
            clock.now += 20
            reader.decrypt(blobs[0])
            assert store.reads == {}
            clock.now += 11
            reader.decrypt(blobs[0])
            assert store.reads == {"states": 1}
            assert counting.calls["unwrap"] == 1
            clock.now += 70  # past cache_ttl: read and unwrapped again, as before
            reader.decrypt(blobs[0])
            assert counting.calls["unwrap"] == 2

    def test_a_store_without_batched_states_is_read_row_by_row(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """A key store of the user's own (no ``states``) is checked with ``get`` per due DEK."""
        store = RowByRowStore()
        blobs = written(provider, store, 200)
        with Vault(provider=provider, store=store, domains=DOMAINS) as reader:
            assert reader.decrypt(blobs[0]) == 0 and reader.decrypt(blobs[150]) == 150
            destroy_elsewhere(provider, store, dek_of(blobs[0]))
            store.gets = 0
            clock.now += 6
            assert reader.decrypt(blobs[150]) == 150
            assert store.gets == 2  # both cached DEKs were due: one get each
            with pytest.raises(DecryptionError):
                reader.decrypt(blobs[0])
            assert reader.decrypt(blobs[150]) == 150

    def test_a_reader_without_the_grant_causes_no_store_read(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """The grant check stays before the check's key-store read."""
        store = CountingStore()
        domains = ["identity", "medical"]
        with Vault(provider=provider, store=store, domains=domains) as writer:
            blob = writer.encrypt("note", domain="medical")

        with Vault(
            provider=provider,
            store=store,
            domains=["identity", KeyDomain("medical", restricted=True, on_denied="raise")],
        ) as reader:
            with acting_as(Principal("coach", grants={"medical"}), purpose="care"):
                assert reader.decrypt(blob) == "note"
            store.reads.clear()
            clock.now += 6
            with pytest.raises(Exception, match="medical"):
                reader.decrypt(blob)
            assert store.reads == {}


class TestEncrypting:
    def test_a_dek_retired_elsewhere_stops_encrypting_within_the_interval(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """The DEK a vault encrypts under, retired by another process, is left after the interval."""
        store = CountingStore()
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS) as v:
            first = dek_of(v.encrypt("a", domain="identity"))
            with Vault(provider=provider, store=store, domains=DOMAINS) as other:
                other.retire_dek(first)
            clock.now += 4
            assert dek_of(v.encrypt("b", domain="identity")) == first  # within the bound
            clock.now += 2
            assert dek_of(v.encrypt("c", domain="identity")) != first
            assert counting.calls["unwrap"] == 0

    def test_a_still_active_dek_is_checked_without_an_unwrap(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """An active DEK passes its check with one state read and keeps encrypting."""
        store = CountingStore()
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS) as v:
            first = dek_of(v.encrypt("a", domain="identity"))
            store.reads.clear()
            for _ in range(3):
                clock.now += 6
                for _ in range(100):
                    assert dek_of(v.encrypt("b", domain="identity")) == first
            assert store.reads == {"states": 3}
            assert counting.calls["unwrap"] == 0


class TestConfiguration:
    @pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "5", None])
    def test_bad_intervals_are_refused(self, provider: InMemoryKeyProvider, bad: object) -> None:
        """key_check_interval must be a positive finite number of seconds."""
        with pytest.raises(ConfigurationError, match="key_check_interval"):
            Vault(
                provider=provider,
                store=MemoryKeyStore(),
                domains=DOMAINS,
                key_check_interval=bad,  # type: ignore[arg-type]
            )

    def test_the_interval_is_capped_at_the_cache_time_limit(
        self, provider: InMemoryKeyProvider
    ) -> None:
        """An interval longer than cache_ttl is cache_ttl (the full re-read comes first anyway)."""
        with Vault(provider=provider, store=MemoryKeyStore(), domains=DOMAINS) as v:
            assert v.cache_info().check_interval == 5.0
        with Vault(provider=provider, store=MemoryKeyStore(), domains=DOMAINS, cache_ttl=2) as v:
            assert v.cache_info().check_interval == 2.0

    def test_the_configuration_file_sets_it(self, tmp_path: Path) -> None:
        """``key_check_interval`` is a top-level key of vaultkit.toml."""
        (tmp_path / "vaultkit.toml").write_text(
            f'key_store = "sqlite:///{tmp_path}/keys.db"\n'
            'default_provider = "keyring"\nkey_check_interval = 2.5\n\n'
            f'[providers.keyring]\ntype = "local"\npath = "{tmp_path}/keyring.json"\n'
            "create_keys = true\n\n[domains.identity]\n"
        )
        env = {"VAULTKIT_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
        options = vault_options(tmp_path / "vaultkit.toml", env=env)
        assert options["key_check_interval"] == 2.5
        with Vault(**options) as vault:
            assert vault.cache_info().check_interval == 2.5


def test_sql_store_reads_many_states_in_one_go(tmp_path: Path) -> None:
    """SQLKeyStore.states answers for the ids it has, leaves out the others, in chunks."""
    provider = InMemoryKeyProvider()
    store = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        with Vault(provider=provider, store=store, domains=DOMAINS, dek_max_encryptions=1) as v:
            deks = [dek_of(v.encrypt(i, domain="identity")) for i in range(3)]
            v.retire_dek(deks[1])
            v.retire_dek(deks[2])
            v.destroy_dek(deks[2], references=0)
        missing = os.urandom(16)
        assert store.states([*deks, missing]) == {
            deks[0]: DekState.ACTIVE,
            deks[1]: DekState.RETIRED,
            deks[2]: DekState.DESTROYED,
        }
        assert store.states([]) == {}
        many = [os.urandom(16) for _ in range(1200)] + [deks[0]]
        assert store.states(many) == {deks[0]: DekState.ACTIVE}
    finally:
        store.close()


def test_in_the_asyncio_greenlet_the_check_reads_in_a_worker_thread(
    provider: InMemoryKeyProvider, clock: FakeClock
) -> None:
    """Inside SQLAlchemy's greenlet (an AsyncSession) the check's store read leaves the loop."""
    import asyncio
    import threading

    from sqlalchemy.util.concurrency import greenlet_spawn

    class ThreadStore(MemoryKeyStore):
        def __init__(self) -> None:
            super().__init__()
            self.threads: list[int] = []

        def states(self, dek_ids: Collection[bytes]) -> dict[bytes, DekState]:
            self.threads.append(threading.get_ident())
            return super().states(dek_ids)

    store = ThreadStore()
    blobs = written(provider, store, 100)

    async def main() -> int:
        with Vault(provider=provider, store=store, domains=DOMAINS) as reader:
            assert await greenlet_spawn(reader.decrypt, blobs[0]) == 0
            clock.now += 6
            assert await greenlet_spawn(reader.decrypt, blobs[1]) == 1
            destroy_elsewhere(provider, store, dek_of(blobs[0]))
            clock.now += 6
            with pytest.raises(DecryptionError):
                await greenlet_spawn(reader.decrypt, blobs[2])
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(store.threads) == 2
    assert loop_thread not in store.threads
