"""Tests for vaultkit.Vault: envelope keys, budgets, cache, routing and failures."""

from __future__ import annotations

import copy
import datetime as dt
import multiprocessing
import os
import pickle
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

import vaultkit._vault as vault_module
from vaultkit import FieldCipher, KeyDomain, Vault
from vaultkit.errors import ConfigurationError, DecryptionError, DomainError, KeyProviderError
from vaultkit.store import DekState, MemoryKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

CTX = {"table": "members", "column": "name", "row": "m-17"}
DOMAINS = ["identity", "financial", "medical"]


def dek_of(blob: bytes) -> bytes:
    return blob[4:20]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(vault_module, "_monotonic", fake)
    monkeypatch.setattr("vaultkit.core.envelope.time.monotonic", fake)
    return fake


class TestRoundTrip:
    @pytest.mark.parametrize(
        "value", ["Jan Peeters", b"\x00raw", 17, Decimal("1.10"), dt.date(1980, 1, 1), {"a": 1}]
    )
    def test_round_trip(self, vault: Vault, value: Any) -> None:
        """A value decrypts to itself under the context it was encrypted with."""
        blob = vault.encrypt(value, domain="identity", context=CTX)
        assert vault.decrypt(blob, context=CTX) == value

    def test_ciphertexts_differ_for_equal_plaintexts(self, vault: Vault) -> None:
        """Encryption is randomised: equal plaintexts give different ciphertexts."""
        a = vault.encrypt("x", domain="identity", context=CTX)
        assert a != vault.encrypt("x", domain="identity", context=CTX)

    def test_layout_overhead_is_80_bytes(self, vault: Vault) -> None:
        """A value is its encoded plaintext plus 80 bytes (header, nonce, tag)."""
        assert len(vault.encrypt("abc", domain="identity")) == 4 + 80

    def test_field_cipher_matches_context_api(self, vault: Vault) -> None:
        """FieldCipher values are those of encrypt() with the same table, column and row."""
        field = vault.field("identity", table="members", column="name", row_bound=True)
        assert isinstance(field, FieldCipher)
        assert vault.decrypt(field.encrypt("Jan", row="m-17"), context=CTX) == "Jan"
        assert (
            field.decrypt(vault.encrypt("Jan", domain="identity", context=CTX), row="m-17") == "Jan"
        )

    def test_unbound_field_cipher(self, vault: Vault) -> None:
        """A column without row binding uses table and column only."""
        field = vault.field("identity", table="members", column="email")
        blob = field.encrypt("a@b.be")
        assert vault.decrypt(blob, context={"table": "members", "column": "email"}) == "a@b.be"
        with pytest.raises(TypeError, match="not row-bound"):
            field.encrypt("x", row="m-1")

    def test_row_bound_field_needs_a_row(self, vault: Vault) -> None:
        """A row-bound column refuses to encrypt without a row key."""
        field = vault.field("medical", table="members", column="note", row_bound=True)
        with pytest.raises(ConfigurationError, match="row key is required"):
            field.encrypt("x")

    def test_buffer_types_are_accepted(self, vault: Vault) -> None:
        """bytearray and memoryview ciphertexts (as drivers return them) decrypt."""
        blob = vault.encrypt("x", domain="identity")
        assert vault.decrypt(bytearray(blob)) == "x"
        assert vault.decrypt(memoryview(blob)) == "x"


class TestBinding:
    def test_other_row_fails(self, vault: Vault) -> None:
        """A value copied to another row does not decrypt."""
        blob = vault.encrypt("x", domain="identity", context=CTX)
        with pytest.raises(DecryptionError):
            vault.decrypt(blob, context={**CTX, "row": "m-18"})

    def test_other_column_fails(self, vault: Vault) -> None:
        """A value copied to another column does not decrypt."""
        blob = vault.encrypt("x", domain="identity", context=CTX)
        with pytest.raises(DecryptionError):
            vault.decrypt(blob, context={**CTX, "column": "email"})

    def test_claimed_domain_must_match(self, vault: Vault) -> None:
        """Decrypting with another domain named fails opaquely."""
        blob = vault.encrypt("x", domain="identity", context=CTX)
        with pytest.raises(DecryptionError):
            vault.decrypt(blob, context=CTX, domain="medical")
        field = vault.field("medical", table="members", column="name", row_bound=True)
        with pytest.raises(DecryptionError):
            field.decrypt(blob, row="m-17")

    def test_vault_without_the_domain_cannot_decrypt(self, provider: InMemoryKeyProvider) -> None:
        """A vault not configured for a domain cannot read that domain's values."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=["medical"]) as unit:
            blob = unit.encrypt("diagnosis", domain="medical")
        with Vault(provider=provider, store=store, domains=["identity"]) as claims:
            with pytest.raises(DomainError, match="medical"):
                claims.decrypt(blob)

    def test_other_provider_cannot_unwrap(self, provider: InMemoryKeyProvider) -> None:
        """A vault whose provider lacks the KEK cannot unwrap the DEK, whatever it claims."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=DOMAINS) as owner:
            blob = owner.encrypt("x", domain="medical")
        with Vault(provider=InMemoryKeyProvider(), store=store, domains=DOMAINS) as intruder:
            with pytest.raises(KeyProviderError):
                intruder.decrypt(blob)


class TestFailures:
    def test_unknown_dek_is_opaque(self, provider: InMemoryKeyProvider) -> None:
        """A value whose DEK is not in the store fails with the one decryption error."""
        with Vault(provider=provider, store=MemoryKeyStore(), domains=DOMAINS) as a:
            blob = a.encrypt("x", domain="identity")
        with Vault(provider=provider, store=MemoryKeyStore(), domains=DOMAINS) as b:
            with pytest.raises(DecryptionError, match=r"^ciphertext could not be authenticated$"):
                b.decrypt(blob)

    def test_destroyed_dek_cannot_decrypt(self, provider: InMemoryKeyProvider) -> None:
        """Once its DEK is destroyed, a value is unreadable."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=DOMAINS) as a:
            blob = a.encrypt("x", domain="identity")
        store.set_state(dek_of(blob), DekState.DESTROYED)
        with Vault(provider=provider, store=store, domains=DOMAINS) as b:
            with pytest.raises(DecryptionError):
                b.decrypt(blob)

    @pytest.mark.parametrize("junk", [b"", b"x", b"\xf6\x56" * 50, os.urandom(200), b"\x00" * 81])
    def test_arbitrary_bytes_raise_decryption_error(self, vault: Vault, junk: bytes) -> None:
        """Random or empty input raises DecryptionError, never another exception."""
        with pytest.raises(DecryptionError):
            vault.decrypt(junk)

    @pytest.mark.parametrize("bad", ["text", None, 12, ["x"]])
    def test_non_bytes_ciphertext_is_a_type_error(self, vault: Vault, bad: Any) -> None:
        """A ciphertext of the wrong type is a TypeError naming the type."""
        with pytest.raises(TypeError, match="ciphertext must be bytes"):
            vault.decrypt(bad)

    def test_undeclared_domain(self, vault: Vault) -> None:
        """Encrypting in an undeclared domain raises DomainError."""
        with pytest.raises(DomainError, match="criminal"):
            vault.encrypt("x", domain="criminal")
        with pytest.raises(DomainError):
            vault.field("criminal", table="t", column="c")

    def test_none_is_not_encrypted(self, vault: Vault) -> None:
        """None is refused: it is stored as NULL, not encrypted."""
        with pytest.raises(TypeError):
            vault.encrypt(None, domain="identity")  # type: ignore[arg-type]

    def test_closed_vault_refuses_to_encrypt(self, provider: InMemoryKeyProvider) -> None:
        """After close() no new encryption happens."""
        v = Vault(provider=provider, store=MemoryKeyStore(), domains=DOMAINS)
        v.encrypt("x", domain="identity")
        v.close()
        with pytest.raises(ConfigurationError, match="closed"):
            v.encrypt("x", domain="identity")


class TestConstruction:
    def test_needs_a_domain(self, provider: InMemoryKeyProvider) -> None:
        """An empty domain list is a configuration error."""
        with pytest.raises(ConfigurationError, match="at least one"):
            Vault(provider=provider, store=MemoryKeyStore(), domains=[])

    def test_duplicate_domains(self, provider: InMemoryKeyProvider) -> None:
        """A domain declared twice is a configuration error."""
        with pytest.raises(ConfigurationError, match="twice"):
            Vault(
                provider=provider,
                store=MemoryKeyStore(),
                domains=["identity", KeyDomain("identity")],
            )

    @pytest.mark.parametrize("name", ["", "Medical", "1x", "a b", "x" * 65, "médical"])
    def test_bad_domain_names(self, provider: InMemoryKeyProvider, name: str) -> None:
        """Badly formed domain names are refused when declared."""
        with pytest.raises(DomainError, match="invalid domain name"):
            Vault(provider=provider, store=MemoryKeyStore(), domains=[name])

    def test_single_domain_instead_of_list(self, provider: InMemoryKeyProvider) -> None:
        """Passing one domain where a list belongs is caught."""
        with pytest.raises(TypeError, match="list"):
            Vault(provider=provider, store=MemoryKeyStore(), domains="identity")

    def test_provider_must_serve_each_domain(self) -> None:
        """A provider that does not serve a domain fails at construction, not on first use."""
        strict = InMemoryKeyProvider(["identity"], create=False)
        with pytest.raises(DomainError, match="medical"):
            Vault(provider=strict, store=MemoryKeyStore(), domains=["identity", "medical"])

    def test_wrong_argument_types(self, provider: InMemoryKeyProvider) -> None:
        """Provider and store of the wrong type are TypeErrors."""
        with pytest.raises(TypeError, match="KeyProvider"):
            Vault(provider=object(), store=MemoryKeyStore(), domains=DOMAINS)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="store"):
            Vault(provider=provider, store=42, domains=DOMAINS)  # type: ignore[arg-type]

    def test_override_for_undeclared_domain(self, provider: InMemoryKeyProvider) -> None:
        """A per-domain provider for an undeclared domain is a configuration error."""
        with pytest.raises(ConfigurationError, match="undeclared"):
            Vault(
                provider=provider,
                store=MemoryKeyStore(),
                domains=["identity"],
                providers={"medical": provider},
            )

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"cache_size": 0},
            {"cache_ttl": 0},
            {"dek_max_encryptions": 0},
            {"dek_max_encryptions": 2**33},
            {"dek_max_age": dt.timedelta(0)},
        ],
    )
    def test_bad_limits(self, provider: InMemoryKeyProvider, kwargs: dict[str, Any]) -> None:
        """Limits out of range are refused."""
        with pytest.raises(ConfigurationError):
            Vault(provider=provider, store=MemoryKeyStore(), domains=DOMAINS, **kwargs)

    def test_per_domain_provider_holds_that_domains_kek(self) -> None:
        """With a separate provider for medical, only it wraps medical DEKs."""
        general = CountingKeyProvider(InMemoryKeyProvider())
        medical = CountingKeyProvider(InMemoryKeyProvider())
        with Vault(
            provider=general,
            store=MemoryKeyStore(),
            domains=DOMAINS,
            providers={"medical": medical},
        ) as v:
            v.encrypt("x", domain="medical")
            v.encrypt("y", domain="identity")
        assert medical.calls["wrap"] == 1 and general.calls["wrap"] == 1

    def test_vault_refuses_pickling_and_copying(self, vault: Vault) -> None:
        """A vault and its unwrapped keys cannot be pickled or copied."""
        blob = vault.encrypt("x", domain="identity")
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(vault)
        vault.decrypt(blob)  # a writer reads through the provider, then caches
        key = vault._cache.by_header[blob[:52]]
        with pytest.raises(TypeError):
            copy.deepcopy(key)
        with pytest.raises(TypeError):
            pickle.dumps(key)


class TestBudget:
    def test_rollover_after_max_encryptions(self, provider: InMemoryKeyProvider) -> None:
        """After its budget a DEK is replaced without the caller noticing; counts are recorded."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=DOMAINS, dek_max_encryptions=10) as v:
            blobs = [v.encrypt(i, domain="identity") for i in range(25)]
            assert [v.decrypt(b) for b in blobs] == list(range(25))
        per_dek = Counter(dek_of(b) for b in blobs)
        assert sorted(per_dek.values()) == [5, 10, 10]
        assert sorted(r.encryptions for r in store.records()) == [5, 10, 10]

    def test_rollover_after_max_age(self, provider: InMemoryKeyProvider, clock: FakeClock) -> None:
        """A DEK older than its maximum age is replaced for encryption but still decrypts."""
        with Vault(
            provider=provider,
            store=MemoryKeyStore(),
            domains=DOMAINS,
            dek_max_age=dt.timedelta(hours=1),
        ) as v:
            a = v.encrypt("a", domain="identity")
            clock.now += 1800
            b = v.encrypt("b", domain="identity")
            clock.now += 3600
            c = v.encrypt("c", domain="identity")
            assert dek_of(a) == dek_of(b) != dek_of(c)
            assert v.decrypt(a) == "a"

    def test_budget_holds_under_threads(self, provider: InMemoryKeyProvider) -> None:
        """Eight threads encrypting at once never exceed a DEK's budget and all values decrypt."""
        limit = 200
        blobs: list[bytes] = []
        lock = threading.Lock()
        with Vault(
            provider=provider, store=MemoryKeyStore(), domains=DOMAINS, dek_max_encryptions=limit
        ) as v:

            def work(n: int) -> None:
                mine = [v.encrypt(f"{n}-{i}", domain="identity") for i in range(500)]
                with lock:
                    blobs.extend(mine)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len({v.decrypt(b) for b in blobs}) == 4000
        assert max(Counter(dek_of(b) for b in blobs).values()) <= limit

    def test_forked_child_takes_its_own_dek(self, vault: Vault) -> None:
        """A forked child never encrypts under its parent's DEK."""
        parent = dek_of(vault.encrypt("p", domain="identity"))
        ctx = multiprocessing.get_context("fork")
        queue: Any = ctx.Queue()

        def child() -> None:
            queue.put(vault.encrypt("c", domain="identity"))

        proc = ctx.Process(target=child)
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        assert dek_of(queue.get(timeout=5)) != parent


class TestCache:
    def test_one_unwrap_per_dek_for_many_decrypts(self, provider: InMemoryKeyProvider) -> None:
        """1,000 decrypts under one DEK cost one unwrap in a fresh vault."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=DOMAINS) as writer:
            blobs = [writer.encrypt(i, domain="identity") for i in range(1000)]
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS) as reader:
            assert [reader.decrypt(b) for b in blobs] == list(range(1000))
        assert counting.calls["unwrap"] == 1

    def test_unwraps_grow_with_distinct_deks(self, provider: InMemoryKeyProvider) -> None:
        """Reading values spread over 10 DEKs twice costs exactly 10 unwraps."""
        store = MemoryKeyStore()
        with Vault(
            provider=provider, store=store, domains=DOMAINS, dek_max_encryptions=50
        ) as writer:
            blobs = [writer.encrypt(i, domain="identity") for i in range(500)]
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS) as reader:
            for _ in range(2):
                assert [reader.decrypt(b) for b in blobs] == list(range(500))
        assert counting.calls["unwrap"] == 10

    def test_cache_is_bounded(self, provider: InMemoryKeyProvider) -> None:
        """The cache never holds more DEKs than its size, and evicted DEKs still decrypt."""
        store = MemoryKeyStore()
        with Vault(
            provider=provider, store=store, domains=DOMAINS, dek_max_encryptions=1
        ) as writer:
            blobs = [writer.encrypt(i, domain="identity") for i in range(20)]
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS, cache_size=3) as reader:
            for i, blob in enumerate(blobs):
                assert reader.decrypt(blob) == i
                assert reader.cache_info().size <= 3
            assert reader.decrypt(blobs[0]) == 0
        assert counting.calls["unwrap"] == 21

    def test_cache_entries_expire(self, provider: InMemoryKeyProvider, clock: FakeClock) -> None:
        """After the time limit a cached DEK is re-read and unwrapped again."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=DOMAINS) as writer:
            blob = writer.encrypt("x", domain="identity")
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS, cache_ttl=60) as reader:
            reader.decrypt(blob)
            clock.now += 30
            reader.decrypt(blob)
            assert counting.calls["unwrap"] == 1
            clock.now += 31
            reader.decrypt(blob)
            assert counting.calls["unwrap"] == 2

    def test_expired_cache_sees_destruction(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """A DEK destroyed in the store stops decrypting once its cache entry expires."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=DOMAINS, cache_ttl=60) as v:
            blob = v.encrypt("x", domain="identity")
            assert v.decrypt(blob) == "x"
            store.set_state(dek_of(blob), DekState.DESTROYED)
            clock.now += 61
            with pytest.raises(DecryptionError):
                v.decrypt(blob)
            assert dek_of(v.encrypt("y", domain="identity")) != dek_of(blob)

    def test_active_dek_is_revalidated(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """The encrypting DEK is unwrapped again after the time limit, and dropped if retired."""
        store = MemoryKeyStore()
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS, cache_ttl=60) as v:
            first = dek_of(v.encrypt("a", domain="identity"))
            clock.now += 61
            assert dek_of(v.encrypt("b", domain="identity")) == first
            assert counting.calls["unwrap"] == 1
            store.set_state(first, DekState.RETIRED)
            clock.now += 61
            assert dek_of(v.encrypt("c", domain="identity")) != first


class TestCommitment:
    def test_wrong_commitment_with_valid_tag_is_rejected(self, vault: Vault) -> None:
        """A value whose tag is valid but whose commitment is not its DEK's is refused.

        The attacker here knows the DEK and makes a tag that is valid under the DEK's own header,
        then ships the value with a foreign commitment, so only the commitment check can stop it.
        """
        from vaultkit.core import wire

        blob = vault.encrypt("x", domain="identity")
        vault.decrypt(blob)  # a writer reads through the provider, then caches
        key = vault._cache.by_header[blob[:52]]
        forged_header = blob[:20] + bytes(32)
        nonce = os.urandom(12)
        aad = key.aad_prefix + wire.EMPTY_CONTEXT
        forged = forged_header + nonce + key.cipher.encrypt(nonce, b"\x01forged", aad)
        with pytest.raises(DecryptionError):
            vault.decrypt(forged)
