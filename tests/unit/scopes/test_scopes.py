"""Subject- and bucket-scoped keys: the seeds' retention with an injected clock, fail-closed reads,
erased values, fences, database writers tampering with key rows, and provider-call counts."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._support import FakeClock, dek_of
from tests.unit.scopes._scoped_support import START, Wall, seed_domains
from vaultkit import KeyDomain, Retention, Vault, _keyring, _scoped
from vaultkit.errors import (
    ConfigurationError,
    DecryptionError,
    RetentionExpiredError,
    SubjectErasedError,
    ValueErasedError,
)
from vaultkit.store import (
    WRAPPING_KEK_ID,
    DataKeyRecord,
    DekState,
    KeyStore,
    MemoryKeyStore,
    SQLKeyStore,
    SubjectRecord,
)
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

MakeVault = Callable[..., Vault]
CTX = {"table": "chats", "column": "body"}


def row(store: KeyStore, blob: bytes) -> DataKeyRecord:
    record = store.get(dek_of(blob))
    assert record is not None
    return record


class TestChatsKeptSeventyTwoHours:
    """Chats: ``Retention("PT72H", after="capture")`` with one-hour buckets."""

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25)
    @given(offset=st.integers(0, 3599))
    def test_readable_before_72h_unreadable_by_73h(
        self, make_vault: MakeVault, wall: Wall, offset: int
    ) -> None:
        """Whatever the capture time in its bucket, a chat reads until capture + 72 h and never
        from capture + 73 h: in a fresh vault and in one that had the key cached."""
        wall.set(max(wall.now, START) + dt.timedelta(days=10))
        base = wall.now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        wall.set(base + dt.timedelta(seconds=offset))
        captured = wall.now
        writer = make_vault()
        blob = writer.encrypt("see you at 3", domain="chat", context=CTX)
        cached = make_vault()
        assert cached.decrypt(blob, context=CTX) == "see you at 3"
        wall.set(captured + dt.timedelta(hours=72) - dt.timedelta(seconds=1))
        assert make_vault().decrypt(blob, context=CTX) == "see you at 3"
        assert cached.decrypt(blob, context=CTX) == "see you at 3"
        wall.set(captured + dt.timedelta(hours=73))
        with pytest.raises(RetentionExpiredError) as caught:
            make_vault().decrypt(blob, context=CTX)
        assert caught.value.reason == "retention"
        with pytest.raises(RetentionExpiredError):
            cached.decrypt(blob, context=CTX)

    def test_the_deadline_is_the_bucket_end_plus_72h(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        vault = make_vault()
        blob = vault.encrypt("hi", domain="chat")
        record = row(vault.store, blob)
        assert record.scope == "bucket"
        assert record.not_after == dt.datetime(2026, 3, 2, 11, 0, tzinfo=dt.UTC)
        assert record.destroy_at == dt.datetime(2026, 3, 5, 11, 0, tzinfo=dt.UTC)
        assert record.kek_id == WRAPPING_KEK_ID
        assert record.subject is None

    def test_a_bucket_never_holds_values_of_another_window(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        """One DEK per bucket: a value written after the bucket end goes under the next key."""
        vault = make_vault()
        wall.set(dt.datetime(2026, 3, 2, 10, 59, 59, tzinfo=dt.UTC))
        first = [vault.encrypt(i, domain="chat") for i in range(3)]
        wall.advance(seconds=2)
        second = vault.encrypt(3, domain="chat")
        assert len({dek_of(b) for b in first}) == 1
        assert dek_of(second) != dek_of(first[0])
        assert row(vault.store, second).not_after == dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)

    def test_the_sealer_of_a_bucket_column_changes_key_with_the_bucket(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        vault = make_vault()
        seal = vault.field("chat", table="chats", column="body").sealer()
        first = seal(b"\x01hi")
        wall.advance(hours=1)
        second = seal(b"\x01hi")
        assert dek_of(first) != dek_of(second)
        opener = vault.field("chat", table="chats", column="body").opener()
        assert opener(first) == opener(second) == "hi"

    @pytest.mark.parametrize("path", ["encrypt", "sealer", "row"])
    def test_a_bucket_key_never_encrypts_after_its_end_when_only_the_wall_clock_moves(
        self, make_vault: MakeVault, wall: Wall, path: str
    ) -> None:
        """The wall clock moves (a clock step, a resume from suspend) and the monotonic one does
        not: each hour's values still go under that hour's key, by every write path."""
        vault = make_vault()
        field = vault.field("chat", table="chats", column="body", row_bound=path == "row")
        seal = field.sealer() if path == "sealer" else None

        def write() -> bytes:
            if path == "encrypt":
                return vault.encrypt("hi", domain="chat", context=CTX)
            if seal is not None:
                return seal(b"\x01hi")
            return field.encrypt("hi", row="r-1")

        blobs = []
        for hour in range(3):
            wall.now = START.replace(minute=10) + dt.timedelta(hours=hour)  # monotonic: still
            blobs.append(write())
            blobs.append(write())
        ids = [dek_of(b) for b in blobs]
        assert ids[0::2] == ids[1::2] and len(set(ids)) == 3
        ends = [row(vault.store, b).not_after for b in blobs[0::2]]
        assert ends == [START.replace(minute=0) + dt.timedelta(hours=h) for h in (1, 2, 3)]

    def test_process_scoped_writes_do_not_read_the_wall_clock(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        """The bucket check costs process-scoped domains nothing: once their key is active, a
        write reads no wall clock."""
        reads = [0]

        def counted() -> dt.datetime:
            reads[0] += 1
            return wall()

        vault = make_vault(clock=counted)
        vault.encrypt("x", domain="identity")
        seal = vault.field("identity", table="t", column="c").sealer()
        before = reads[0]
        for _ in range(50):
            vault.encrypt("x", domain="identity")
            seal(b"\x01x")
        assert reads[0] == before

    def test_expired_keys_are_refused_with_no_sweep_and_never_unwrapped(
        self, make_vault: MakeVault, wall: Wall, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Fail closed: the key row is still active (nobody swept), yet the read is refused
        before any unwrap."""
        blob = make_vault().encrypt("hi", domain="chat")
        unwraps: Counter[bytes] = Counter()
        real = _scoped.unwrap

        def counted(key: object, wrapped: bytes, context: bytes) -> bytes | None:
            unwraps[context] += 1
            return real(key, wrapped, context)  # type: ignore[arg-type]

        monkeypatch.setattr(_scoped, "unwrap", counted)
        wall.advance(hours=74)
        reader = make_vault()
        for _ in range(3):
            with pytest.raises(RetentionExpiredError):
                reader.decrypt(blob)
        assert reader.store.get(dek_of(blob)).state is DekState.ACTIVE  # type: ignore[union-attr]
        assert not unwraps

    def test_a_key_cached_while_readable_stops_at_its_deadline(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        """The deadline caps the cached key, whatever the cache ttl (600 s here)."""
        vault = make_vault()
        blob = vault.encrypt("hi", domain="chat")
        record = row(vault.store, blob)
        assert record.destroy_at is not None
        wall.set(record.destroy_at - dt.timedelta(seconds=1))
        assert vault.decrypt(blob) == "hi"
        wall.advance(seconds=1)
        with pytest.raises(RetentionExpiredError):
            vault.decrypt(blob)


class TestContractsKeptFiveYearsAfterTheEnd:
    """Contracts: ``Retention("P5Y", after="relationship_end", kind="no_less_than")``."""

    def test_end_relationship_sets_the_deadline(self, make_vault: MakeVault, wall: Wall) -> None:
        vault = make_vault()
        blobs = [vault.encrypt(f"claim {i}", domain="contract", subject="m-17") for i in range(3)]
        other = vault.encrypt("claim", domain="contract", subject="m-18")
        ended = dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.UTC)
        assert vault.end_relationship("m-17", at=ended) == 1
        record = row(vault.store, blobs[0])
        assert record.destroy_at == dt.datetime(2029, 2, 28, 12, 0, tzinfo=dt.UTC)
        assert row(vault.store, other).destroy_at is None
        ref = vault.subject_ref("contract", "m-17")
        subject = vault.store.get_subject("contract", ref)  # type: ignore[attr-defined]
        assert subject == SubjectRecord("contract", ref, relationship_end=ended)

        wall.set(dt.datetime(2029, 2, 28, 11, 59, 59, tzinfo=dt.UTC))
        reader = make_vault()
        assert [reader.decrypt(b) for b in blobs] == ["claim 0", "claim 1", "claim 2"]
        wall.advance(seconds=1)
        for blob in blobs:
            with pytest.raises(RetentionExpiredError):
                make_vault().decrypt(blob)
            with pytest.raises(RetentionExpiredError):
                reader.decrypt(blob)  # the cached key stops at the deadline too
        assert make_vault().decrypt(other) == "claim"

    def test_keys_made_after_the_end_get_its_deadline(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        vault = make_vault()
        vault.end_relationship("m-17", at=START)
        blob = make_vault().encrypt("late claim", domain="contract", subject="m-17")
        assert row(vault.store, blob).destroy_at == START.replace(year=2031)

    def test_writes_past_the_deadline_are_refused(self, make_vault: MakeVault, wall: Wall) -> None:
        vault = make_vault()
        vault.end_relationship("m-17", at=START - dt.timedelta(days=6 * 366))
        with pytest.raises(RetentionExpiredError, match="retention period is over"):
            vault.encrypt("claim", domain="contract", subject="m-17")

    def test_a_cached_key_in_another_vault_stops_within_the_check_interval(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        """Vault B cached the key; A records an end 5 years ago: B refuses within 5 s."""
        a, b = make_vault(), make_vault()
        blob = a.encrypt("claim", domain="contract", subject="m-17")
        assert b.decrypt(blob) == "claim"
        a.end_relationship("m-17", at=START - dt.timedelta(days=5 * 366))
        assert b.decrypt(blob) == "claim"  # within the interval: still cached
        wall.advance(seconds=6)
        with pytest.raises(RetentionExpiredError):
            b.decrypt(blob)

    def test_end_relationship_needs_an_aware_time(self, make_vault: MakeVault) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            make_vault().end_relationship("m-1", at=dt.datetime(2024, 1, 1))


class TestSubjectKeys:
    def test_each_subject_has_its_own_key_reused_across_vaults(self, make_vault: MakeVault) -> None:
        a, b = make_vault(), make_vault()
        one = a.encrypt("x", domain="medical", subject="m-1")
        two = a.encrypt("y", domain="medical", subject="m-1")
        other = a.encrypt("z", domain="medical", subject="m-2")
        again = b.encrypt("w", domain="medical", subject="m-1")
        assert dek_of(one) == dek_of(two) == dek_of(again)
        assert dek_of(other) != dek_of(one)
        assert row(a.store, one).subject == a.subject_ref("medical", "m-1")
        assert row(a.store, one).scope == "subject"

    def test_subject_is_required_and_refused_where_it_does_not_belong(
        self, make_vault: MakeVault
    ) -> None:
        vault = make_vault()
        with pytest.raises(ConfigurationError, match="needs its subject"):
            vault.encrypt("x", domain="medical")
        with pytest.raises(ConfigurationError, match="pass no subject"):
            vault.encrypt("x", domain="identity", subject="m-1")
        with pytest.raises(ConfigurationError, match="pass no subject"):
            vault.encrypt("x", domain="chat", subject="m-1")
        column = vault.field("medical", table="notes", column="body")
        with pytest.raises(ConfigurationError, match="no sealer"):
            column.sealer()
        blob = column.encrypt("note", subject=uuid.UUID(int=7))
        assert column.decrypt(blob) == "note"
        assert column.opener()(blob) == "note"
        with pytest.raises(ConfigurationError, match="needs its subject"):
            column.encrypt("note")

    def test_row_bound_columns_take_a_subject(self, make_vault: MakeVault) -> None:
        vault = make_vault()
        column = vault.field("medical", table="notes", column="body", row_bound=True)
        blob = column.encrypt("note", row=5, subject=17)
        assert column.decrypt(blob, row=5) == "note"
        with pytest.raises(DecryptionError):
            column.decrypt(blob, row=6)

    def test_subject_refs(self, make_vault: MakeVault) -> None:
        vault = make_vault()
        ref = vault.subject_ref("medical", "jan@example.be")
        assert len(ref) == 32 and int(ref, 16) >= 0
        assert ref == make_vault().subject_ref("medical", "jan@example.be")  # same store
        assert ref != vault.subject_ref("contract", "jan@example.be")  # not linkable by ref
        assert vault.subject_ref("medical", 17) == vault.subject_ref("medical", "17")
        u = uuid.uuid4()
        assert vault.subject_ref("medical", u) == vault.subject_ref("medical", str(u))
        for bad in (True, 1.5, b"17", None, ("a",)):
            with pytest.raises(TypeError):
                vault.subject_ref("medical", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="empty"):
            vault.subject_ref("medical", "")

    def test_the_subject_key_cache_is_bounded(self, make_vault: MakeVault) -> None:
        vault = make_vault()
        keyring = vault._keyring
        keyring.subject_cache_size = 5
        blobs = [vault.encrypt(i, domain="medical", subject=f"m-{i}") for i in range(20)]
        assert len(keyring.subject_actives) == 5
        assert [vault.decrypt(b) for b in blobs] == list(range(20))
        # Evicted subjects find their key in the store again: no second key per subject.
        again = vault.encrypt("x", domain="medical", subject="m-0")
        assert dek_of(again) == dek_of(blobs[0])

    def test_a_vault_with_scoped_domains_needs_a_store_that_has_them(
        self, provider: InMemoryKeyProvider
    ) -> None:
        class PlainStore:
            def __init__(self) -> None:
                self._inner = MemoryKeyStore()

            insert = property(lambda self: self._inner.insert)
            get = property(lambda self: self._inner.get)
            records = property(lambda self: self._inner.records)
            add_encryptions = property(lambda self: self._inner.add_encryptions)
            set_state = property(lambda self: self._inner.set_state)
            rewrap = property(lambda self: self._inner.rewrap)
            destroy = property(lambda self: self._inner.destroy)
            close = property(lambda self: self._inner.close)

        with pytest.raises(ConfigurationError, match="SupportsScopedKeys"):
            Vault(provider=provider, store=PlainStore(), domains=seed_domains())  # type: ignore[arg-type]


class TestErasedValues:
    @pytest.mark.parametrize(
        ("reason", "error"),
        [
            ("erasure", SubjectErasedError),
            ("retention", RetentionExpiredError),
            ("destroyed", ValueErasedError),
            ("something-else", ValueErasedError),
        ],
    )
    def test_a_destroyed_key_reads_as_erased_with_its_reason(
        self, make_vault: MakeVault, reason: str, error: type[ValueErasedError]
    ) -> None:
        vault = make_vault()
        blob = vault.encrypt("x", domain="medical", subject="m-1")
        assert vault.decrypt(blob) == "x"
        assert vault.store.destroy_key(dek_of(blob), reason=reason, at=START)  # type: ignore[attr-defined]
        vault._keyring.forget(dek_of(blob))
        with pytest.raises(error) as caught:
            make_vault().decrypt(blob)
        assert isinstance(caught.value, DecryptionError)
        assert caught.value.reason == (reason if reason != "something-else" else "destroyed")
        assert caught.value.domain == "medical" and caught.value.dek_id == dek_of(blob)
        assert "m-1" not in str(caught.value)

    def test_a_process_dek_destroyed_reads_as_destroyed(self, make_vault: MakeVault) -> None:
        vault = make_vault()
        blob = vault.encrypt("x", domain="identity")
        vault.retire_dek(dek_of(blob))
        vault.destroy_dek(dek_of(blob), references=0)
        with pytest.raises(ValueErasedError) as caught:
            vault.decrypt(blob)
        assert caught.value.reason == "destroyed"

    def test_an_unknown_dek_stays_the_opaque_error(self, make_vault: MakeVault) -> None:
        vault = make_vault()
        blob = vault.encrypt("x", domain="medical", subject="m-1")
        forged = blob[:4] + bytes(16) + blob[20:]
        with pytest.raises(DecryptionError) as caught:
            make_vault().decrypt(forged)
        assert type(caught.value) is DecryptionError

    def test_erased_reads_do_not_hit_the_store_each_time(
        self, provider: InMemoryKeyProvider, wall: Wall
    ) -> None:
        class Counting(MemoryKeyStore):
            def __init__(self) -> None:
                super().__init__()
                self.gets = 0

            def get(self, dek_id: bytes) -> DataKeyRecord | None:
                self.gets += 1
                return super().get(dek_id)

        store = Counting()
        with Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as vault:
            blobs = [vault.encrypt("x", domain="medical", subject=f"m-{i}") for i in range(10)]
            for blob in blobs:
                store.destroy_key(dek_of(blob), reason="erasure", at=START)
        with Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as reader:
            store.gets = 0
            for _ in range(50):
                for blob in blobs:
                    with pytest.raises(SubjectErasedError):
                        reader.decrypt(blob)
            assert store.gets == 10  # one lookup per DEK, then answered from memory

    def test_the_erased_cache_is_bounded(
        self, make_vault: MakeVault, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_keyring, "ERASED_CACHE_SIZE", 4)
        vault = make_vault()
        blobs = [vault.encrypt("x", domain="medical", subject=f"m-{i}") for i in range(10)]
        reader = make_vault()
        for blob in blobs:
            vault.store.destroy_key(dek_of(blob), reason="erasure", at=START)  # type: ignore[attr-defined]
            with pytest.raises(SubjectErasedError):
                reader.decrypt(blob)
        assert len(reader._keyring.cache.erased) == 4
        with pytest.raises(SubjectErasedError):
            reader.decrypt(blobs[0])  # forgotten, looked up again: still erased

    def test_a_reader_without_the_grant_gets_a_sealed_value_not_the_erasure(
        self, make_vault: MakeVault
    ) -> None:
        """Whether a restricted value was erased is not told to a reader without the grant."""
        vault = make_vault()
        blob = vault.encrypt("x", domain="health", subject="m-1")
        vault.store.destroy_key(dek_of(blob), reason="erasure", at=START)  # type: ignore[attr-defined]
        reader = make_vault()
        for _ in range(2):
            sealed = reader.decrypt(blob, domain="health")
            assert type(sealed).__name__ == "SealedValue"
        from vaultkit import Principal

        with reader.acting_as(Principal("dr", grants={"health"}), purpose="care"):
            with pytest.raises(SubjectErasedError):
                reader.decrypt(blob)

    def test_an_erased_value_of_another_domain_is_the_opaque_error(
        self, make_vault: MakeVault
    ) -> None:
        vault = make_vault()
        blob = vault.encrypt("x", domain="contract", subject="m-1")
        vault.store.destroy_key(dek_of(blob), reason="erasure", at=START)  # type: ignore[attr-defined]
        reader = make_vault()
        with pytest.raises(SubjectErasedError):
            reader.decrypt(blob)
        with pytest.raises(DecryptionError) as caught:
            reader.decrypt(blob, domain="identity")
        assert type(caught.value) is DecryptionError

    def test_a_key_destroyed_elsewhere_stops_within_the_check_interval(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        a, b = make_vault(), make_vault()
        blob = a.encrypt("x", domain="contract", subject="m-1")
        assert b.decrypt(blob) == "x"
        a.store.destroy_key(dek_of(blob), reason="erasure", at=START)  # type: ignore[attr-defined]
        wall.advance(seconds=4)
        assert b.decrypt(blob) == "x"
        wall.advance(seconds=2)
        with pytest.raises(SubjectErasedError):
            b.decrypt(blob)


class TestFences:
    def fence(self, vault: Vault, subject: str, domain: str = "medical") -> None:
        ref = vault.subject_ref(domain, subject)
        vault.store.put_subject(  # type: ignore[attr-defined]
            SubjectRecord(domain, ref, fenced_at=START, erased_at=START, request_id="r-1")
        )

    def test_a_fenced_subject_is_refused_at_write_until_allowed(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        vault = make_vault()
        before = vault.encrypt("x", domain="medical", subject="m-1")
        self.fence(vault, "m-1")
        for ref in {r.dek_id for r in vault.store.records() if r.subject}:  # erase, as ops does
            vault.store.destroy_key(ref, reason="erasure", at=START)  # type: ignore[attr-defined]
        vault._keyring.forget_subject("medical", vault.subject_ref("medical", "m-1"))
        with pytest.raises(SubjectErasedError, match="allow_subject"):
            vault.encrypt("y", domain="medical", subject="m-1")
        with pytest.raises(SubjectErasedError):
            make_vault().encrypt("y", domain="medical", subject="m-1")
        vault.encrypt("z", domain="medical", subject="m-2")  # others unaffected
        vault.allow_subject("m-1")
        after = vault.encrypt("y", domain="medical", subject="m-1")
        assert dek_of(after) != dek_of(before)
        assert vault.decrypt(after) == "y"
        with pytest.raises(SubjectErasedError):
            vault.decrypt(before)  # the fresh key decrypts nothing written before
        record = vault.store.get_subject("medical", vault.subject_ref("medical", "m-1"))  # type: ignore[attr-defined]
        assert record.fenced_at is None and record.erased_at == START

    def test_another_vault_stops_writing_within_the_check_interval(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        a, b = make_vault(), make_vault()
        first = b.encrypt("x", domain="medical", subject="m-1")
        self.fence(a, "m-1")
        a.store.destroy_key(dek_of(first), reason="erasure", at=START)  # type: ignore[attr-defined]
        b.encrypt("x", domain="medical", subject="m-1")  # within the interval
        wall.advance(seconds=6)
        with pytest.raises(SubjectErasedError):
            b.encrypt("x", domain="medical", subject="m-1")

    def test_a_fence_set_during_key_creation_destroys_the_new_key(
        self, provider: InMemoryKeyProvider, wall: Wall
    ) -> None:
        """The erase race: the fence lands between the writer's check and its insert. The
        writer sees it after the insert, destroys its own key, and refuses the write."""

        class FencedMeanwhile(MemoryKeyStore):
            armed: str | None = None

            def insert(self, record: DataKeyRecord) -> None:
                super().insert(record)
                if record.subject is not None and record.subject == self.armed:
                    self.put_subject(SubjectRecord(record.domain, record.subject, fenced_at=START))

        store = FencedMeanwhile()
        with Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as vault:
            store.armed = vault.subject_ref("medical", "m-1")
            with pytest.raises(SubjectErasedError):
                vault.encrypt("x", domain="medical", subject="m-1")
            keys = store.subject_keys("medical", store.armed)
            assert len(keys) == 1
            assert keys[0].state is DekState.DESTROYED and keys[0].destroy_reason == "erasure"
            assert keys[0].wrapped == b""


class TestProviderCalls:
    def test_reading_n_subjects_costs_one_unwrap_per_domain(
        self, provider: InMemoryKeyProvider, wall: Wall
    ) -> None:
        store = MemoryKeyStore()
        n = 300
        writing = CountingKeyProvider(provider)
        with Vault(provider=writing, store=store, domains=seed_domains(), clock=wall) as writer:
            blobs = [writer.encrypt(i, domain="contract", subject=f"m-{i}") for i in range(n)]
            blobs += [writer.encrypt(i, domain="medical", subject=f"m-{i}") for i in range(n)]
        # Writing: per domain one wrap for the wrapping key and one for the subject-ref key.
        assert writing.calls["wrap"] == 4
        assert writing.calls["unwrap"] == 4
        reading = CountingKeyProvider(provider)
        with Vault(provider=reading, store=store, domains=seed_domains(), clock=wall) as reader:
            got = [reader.decrypt(b) for b in blobs]
        assert got == list(range(n)) * 2
        assert reading.calls["unwrap"] == 2  # one unwrap per domain, not per member
        assert reading.calls["wrap"] == 0
        assert len({dek_of(b) for b in blobs}) == 2 * n

    def test_preload_unwraps_scoped_keys_without_provider_calls(
        self, provider: InMemoryKeyProvider, wall: Wall
    ) -> None:
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as writer:
            blobs = [writer.encrypt(i, domain="contract", subject=f"m-{i}") for i in range(50)]
        reading = CountingKeyProvider(provider)
        with Vault(provider=reading, store=store, domains=seed_domains(), clock=wall) as reader:
            assert reader.preload(dek_of(b) for b in blobs) == 50
            assert reading.calls["unwrap"] == 1
            assert [reader.decrypt(b) for b in blobs] == list(range(50))
            assert reading.calls["unwrap"] == 1


class TestDatabaseWriters:
    """A writer of the key store's tables (not of the KEK) tampers with scoped key rows."""

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'keys.db'}"

    def sql(self, url: str, statement: str, **params: object) -> int:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            count = conn.execute(sa.text(statement), params).rowcount
        engine.dispose()
        return int(count)

    def test_moving_a_bucket_deadline_does_not_extend_its_life(
        self, make_vault: MakeVault, wall: Wall, url: str
    ) -> None:
        vault = make_vault(url)
        blob = vault.encrypt("hi", domain="chat")
        dek = dek_of(blob).hex()
        wall.advance(hours=74)
        # destroy_at pushed out (or cleared): the code's retention from the bound bucket end holds.
        for value in ("2099-01-01 00:00:00.000000", None):
            self.sql(
                url,
                "update vaultkit_data_keys set destroy_at = :v where dek_id = :d",
                v=value,
                d=dek,
            )
            with pytest.raises(RetentionExpiredError):
                make_vault(url).decrypt(blob)
        # The bucket end moved too: the wrap no longer authenticates, nothing is decrypted.
        self.sql(
            url,
            "update vaultkit_data_keys set not_after = '2099-01-01 00:00:00.000000' "
            "where dek_id = :d",
            d=dek,
        )
        with pytest.raises(DecryptionError) as caught:
            make_vault(url).decrypt(blob)
        assert not isinstance(caught.value, ValueErasedError)
        # Cleared: a bucket key with no end is refused.
        self.sql(url, "update vaultkit_data_keys set not_after = NULL where dek_id = :d", d=dek)
        with pytest.raises(DecryptionError):
            make_vault(url).decrypt(blob)

    @pytest.mark.parametrize(
        ("column", "value"),
        [
            ("subject", "00000000000000000000000000000000"),
            ("subject", None),
            ("scope", "bucket"),
            ("scope", None),
            ("kek_version", 2),
            ("domain", "contract"),
        ],
    )
    def test_changing_a_rows_subject_or_scope_makes_it_unreadable(
        self, make_vault: MakeVault, url: str, column: str, value: object
    ) -> None:
        vault = make_vault(url)
        blob = vault.encrypt("note", domain="medical", subject="m-1")
        from vaultkit import Principal

        grant = Principal("dr", grants={"medical"})
        self.sql(
            url,
            f"update vaultkit_data_keys set {column} = :v where dek_id = :d",
            v=value,
            d=dek_of(blob).hex(),
        )
        reader = make_vault(url)
        with reader.acting_as(grant, purpose="care"), pytest.raises(DecryptionError) as caught:
            reader.decrypt(blob)
        assert not isinstance(caught.value, ValueErasedError) or column == "kek_version"

    def test_no_member_id_in_the_key_store(
        self, make_vault: MakeVault, tmp_path: Path, url: str
    ) -> None:
        """Every cell of every key-store table is scanned for the member ids: none is there."""
        vault = make_vault(url)
        members = ["jan.peeters@example.be", "85.01.01-123.45", "m-000017", str(uuid.UUID(int=99))]
        for member in members:
            vault.encrypt("x", domain="contract", subject=member)
            vault.encrypt("x", domain="medical", subject=member)
            vault.end_relationship(member, at=START)
        vault.close()
        db = sqlite3.connect(tmp_path / "keys.db")
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
        assert "vaultkit_subjects" in tables
        cells = [
            value
            for table in tables
            for row_ in db.execute(f"select * from {table}")
            for value in row_
        ]
        db.close()
        assert len(cells) > 50
        for member in members:
            for cell in cells:
                text = (
                    cell
                    if isinstance(cell, str)
                    else bytes(cell or b"").hex()
                    if isinstance(cell, bytes)
                    else str(cell)
                )
                assert member not in text
                assert member.encode().hex() not in text


class TestRotation:
    def test_rotate_kek_rewraps_the_wrapping_key_not_each_subject_key(
        self, make_vault: MakeVault, provider: InMemoryKeyProvider, wall: Wall
    ) -> None:
        vault = make_vault()
        blobs = [vault.encrypt(i, domain="contract", subject=f"m-{i}") for i in range(30)]
        report = vault.rotate_kek("contract")
        assert report.rewrapped == 2  # the wrapping key and the subject-ref key
        wrapping = [r for r in vault.store.records(domain="contract") if r.purpose == "wrapping"]
        assert [r.kek_version for r in wrapping] == [report.kek_version]
        assert [make_vault().decrypt(b) for b in blobs] == list(range(30))
        assert vault.subject_ref("contract", "m-1") == make_vault().subject_ref("contract", "m-1")


def test_the_clock_must_be_aware(provider: InMemoryKeyProvider) -> None:
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        Vault(
            provider=provider,
            store=MemoryKeyStore(),
            domains=seed_domains(),
            clock=lambda: dt.datetime(2026, 1, 1),
        )
    with pytest.raises(TypeError):
        Vault(provider=provider, store=MemoryKeyStore(), domains=["identity"], clock=5)  # type: ignore[arg-type]


def test_process_scoped_domains_do_not_touch_scoped_machinery(
    provider: InMemoryKeyProvider, clock: FakeClock
) -> None:
    """A vault with only process-scoped domains makes no wrapping key or subject row."""
    store = MemoryKeyStore()
    with Vault(provider=provider, store=store, domains=["identity"]) as vault:
        blobs = [vault.encrypt(i, domain="identity") for i in range(10)]
        assert [vault.decrypt(b) for b in blobs] == list(range(10))
    assert {r.purpose for r in store.records()} == {"data"}
    assert all(r.scope is None and r.destroy_at is None for r in store.records())


@pytest.mark.parametrize(
    "error",
    [
        ValueErasedError("destroyed", domain="medical", dek_id=b"\x01" * 16),
        SubjectErasedError(domain="medical", dek_id=b"\x02" * 16),
        RetentionExpiredError(domain="chat"),
        SubjectErasedError("writes for this subject are refused", domain="medical"),
    ],
)
def test_erased_errors_survive_pickling(error: ValueErasedError) -> None:
    """Errors cross process boundaries (worker pools) with their class, reason and ids."""
    import pickle

    back = pickle.loads(pickle.dumps(error))  # noqa: S301
    assert type(back) is type(error)
    assert (back.reason, back.domain, back.dek_id, str(back)) == (
        error.reason,
        error.domain,
        error.dek_id,
        str(error),
    )


class TestSubjectDeadlinesAreBound:
    """A subject key's deadline (set by end_relationship) is bound into its wrapping."""

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'keys.db'}"

    @pytest.mark.parametrize("value", [None, "2099-01-01 00:00:00.000000"])
    def test_a_writer_clearing_or_moving_the_deadline_makes_the_key_unreadable(
        self, make_vault: MakeVault, url: str, value: str | None
    ) -> None:
        vault = make_vault(url)
        blob = vault.encrypt("claim", domain="contract", subject="m-1")
        vault.end_relationship("m-1", at=START)
        assert make_vault(url).decrypt(blob) == "claim"
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("update vaultkit_data_keys set destroy_at = :v where dek_id = :d"),
                {"v": value, "d": dek_of(blob).hex()},
            )
        engine.dispose()
        with pytest.raises(DecryptionError) as caught:
            make_vault(url).decrypt(blob)
        assert not isinstance(caught.value, ValueErasedError)

    def test_deadlines_are_whole_seconds_rounded_to_keep_the_promise(
        self, make_vault: MakeVault
    ) -> None:
        domains = [
            *seed_domains(),
            KeyDomain(
                "chats-by-member",
                dek_scope="subject",
                retention=Retention("P1D", after="relationship_end"),
            ),
        ]
        vault = make_vault(domains=domains)
        kept = vault.encrypt("x", domain="contract", subject="m-1")  # no_less_than: up
        short = vault.encrypt("x", domain="chats-by-member", subject="m-1")  # no_longer_than: down
        end = START + dt.timedelta(microseconds=250_000)
        assert vault.end_relationship("m-1", at=end) == 2
        assert row(vault.store, kept).destroy_at == START.replace(year=2031) + dt.timedelta(
            seconds=1
        )
        assert row(vault.store, short).destroy_at == START + dt.timedelta(days=1)
        reader = make_vault(domains=domains)
        assert reader.decrypt(kept) == reader.decrypt(short) == "x"

    def test_a_key_made_while_the_end_is_recorded_gets_the_deadline(
        self, provider: InMemoryKeyProvider, wall: Wall
    ) -> None:
        """The end lands between a writer's read of the subject row and its insert: the writer
        sees it after the insert and binds the deadline into its own new key."""

        class EndedMeanwhile(MemoryKeyStore):
            armed: str | None = None

            def insert(self, record: DataKeyRecord) -> None:
                super().insert(record)
                if record.subject is not None and record.subject == self.armed:
                    self.put_subject(SubjectRecord(record.domain, record.subject, START))

        store = EndedMeanwhile()
        with Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as vault:
            store.armed = vault.subject_ref("contract", "m-1")
            blob = vault.encrypt("claim", domain="contract", subject="m-1")
            assert row(store, blob).destroy_at == START.replace(year=2031)
        with Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as reader:
            assert reader.decrypt(blob) == "claim"
            wall.set(START.replace(year=2031))
            with pytest.raises(RetentionExpiredError):
                reader.decrypt(blob)


def test_subject_deadlines_survive_every_database(
    database_url: str, provider: InMemoryKeyProvider, wall: Wall
) -> None:
    """A deadline with a fraction of a second (MySQL rounds, MariaDB cuts) reads back bound."""
    with Vault(provider=provider, store=database_url, domains=seed_domains(), clock=wall) as v:
        blob = v.encrypt("claim", domain="contract", subject="m-1")
        v.end_relationship("m-1", at=START + dt.timedelta(microseconds=999_999))
        later = v.encrypt("claim 2", domain="contract", subject="m-2")
        v.end_relationship("m-2", at=START + dt.timedelta(microseconds=1))
        bucket = v.encrypt("hi", domain="chat")
    with Vault(provider=provider, store=database_url, domains=seed_domains(), clock=wall) as r:
        assert [r.decrypt(blob), r.decrypt(later), r.decrypt(bucket)] == ["claim", "claim 2", "hi"]


def test_one_key_check_covers_every_subject_key_in_use(
    provider: InMemoryKeyProvider, wall: Wall
) -> None:
    """Writers of many members read the key store once per check interval, not once per member."""

    class Counting(MemoryKeyStore):
        checks = 0

        def key_deadlines(
            self, dek_ids: object
        ) -> dict[bytes, tuple[DekState, dt.datetime | None]]:
            self.checks += 1
            return super().key_deadlines(dek_ids)  # type: ignore[arg-type]

    store = Counting()
    with Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as vault:
        first = [vault.encrypt(i, domain="medical", subject=f"m-{i}") for i in range(50)]
        wall.advance(seconds=6)
        again = [vault.encrypt(i, domain="medical", subject=f"m-{i}") for i in range(50)]
        assert store.checks == 1
        assert [dek_of(b) for b in again] == [dek_of(b) for b in first]


def test_preload_reads_many_scoped_keys_in_few_queries(
    provider: InMemoryKeyProvider, wall: Wall, tmp_path: Path
) -> None:
    """A cold read of N members' values after preload: a few queries, one provider call."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with Vault(provider=provider, store=url, domains=seed_domains(), clock=wall) as writer:
        blobs = [writer.encrypt(i, domain="contract", subject=f"m-{i}") for i in range(1200)]
    reading = CountingKeyProvider(provider)
    store = SQLKeyStore(url)
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with Vault(
        provider=reading, store=store, domains=seed_domains(), clock=wall, cache_size=2000
    ) as reader:
        assert reader.preload(dek_of(b) for b in blobs) == 1200
        assert [reader.decrypt(b) for b in blobs] == list(range(1200))
    store.close()
    assert reading.calls["unwrap"] == 1
    # 3 chunks of 500 ids, 3 of their subjects' rows (erasure, end) and the wrapping key's row
    assert len(statements) <= 7
