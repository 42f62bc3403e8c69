"""Tests for vaultkit.Vault: envelope keys, budgets, cache, routing and failures."""

from __future__ import annotations

import copy
import datetime as dt
import json
import multiprocessing
import os
import pickle
import threading
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import vaultkit._keyring as keyring_module
from tests._support import FakeClock, dek_of
from vaultkit import FieldCipher, KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit.core import wire
from vaultkit.errors import (
    AccessDeniedError,
    AuditError,
    ConfigurationError,
    DecryptionError,
    DomainError,
    EncodingError,
    KeyProviderError,
    VaultkitError,
)
from vaultkit.store import DekState, MemoryKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

CTX = {"table": "members", "column": "name", "row": "m-17"}
DOMAINS = ["identity", "financial", "medical"]


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
        key = vault._keyring.cache.by_header[blob[:52]]
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
        key = vault._keyring.cache.by_header[blob[:52]]
        forged_header = blob[:20] + bytes(32)
        nonce = os.urandom(12)
        aad = key.aad_prefix + wire.EMPTY_CONTEXT
        forged = forged_header + nonce + key.cipher.encrypt(nonce, b"\x01forged", aad)
        with pytest.raises(DecryptionError):
            vault.decrypt(forged)


# -- issue 12: the decryption path against hostile values ------------------------------------------

POLICIES = [
    KeyDomain("identity"),
    KeyDomain("medical", restricted=True),
    KeyDomain("claims", restricted=True, on_denied="raise"),
]
COACH = Principal("coach-17")
ADVISER = Principal("adviser-2", grants={"medical", "claims"})


class QueryCounter:
    """Counts the statements a real engine sends to its database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def store_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A real SQLite engine for a key store (one file per test)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    yield engine
    engine.dispose()


def _header_for(dek_id: bytes) -> bytes:
    return wire.build_header(dek_id, os.urandom(32))


class TestForeignDek:
    @pytest.mark.parametrize("warm", [False, True])
    @pytest.mark.parametrize("reader", [COACH, ADVISER], ids=["no-grant", "grant"])
    def test_medical_dek_in_identity_column_is_a_decryption_error(
        self, provider: InMemoryKeyProvider, warm: bool, reader: Principal
    ) -> None:
        """Bytes naming a medical DEK in an identity column fail to authenticate for any reader."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=POLICIES) as writer:
            medical = writer.field("medical", table="members", column="note").encrypt("flu")
        forged_body = medical[:52] + os.urandom(40)
        random_header = _header_for(dek_of(medical)) + os.urandom(40)
        with Vault(provider=provider, store=store, domains=POLICIES) as reader_vault:
            if warm:  # the reader already knows the DEK's domain (and, with the grant, its key)
                with acting_as(ADVISER, purpose="p"):
                    note = reader_vault.field("medical", table="members", column="note")
                    assert note.decrypt(medical) == "flu"
            column = reader_vault.field("identity", table="members", column="note")
            with acting_as(reader, purpose="p"):
                for blob in (medical, forged_body, random_header):
                    with pytest.raises(DecryptionError):
                        column.decrypt(blob)
                    with pytest.raises(DecryptionError):
                        reader_vault.decrypt(blob, domain="identity")

    def test_claims_dek_in_identity_column_does_not_raise_access_denied(
        self, provider: InMemoryKeyProvider
    ) -> None:
        """A DEK of a raise-on-denial domain named by an identity value is DecryptionError."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=POLICIES) as writer:
            with acting_as(ADVISER, purpose="p"):
                claim = writer.field("claims", table="c", column="x").encrypt("claim 17")
        with Vault(provider=provider, store=store, domains=POLICIES) as reader:
            with acting_as(COACH, purpose="p"), pytest.raises(DecryptionError):
                reader.field("identity", table="c", column="x").decrypt(claim)

    def test_foreign_dek_costs_no_provider_call(self, provider: InMemoryKeyProvider) -> None:
        """A reader with every grant refuses a DEK of another domain before unwrapping it."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=POLICIES) as writer:
            medical = writer.encrypt("flu", domain="medical")
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=POLICIES) as reader:
            with acting_as(ADVISER, purpose="p"), pytest.raises(DecryptionError):
                reader.decrypt(medical, domain="identity")
        assert counting.calls["unwrap"] == 0

    @pytest.mark.parametrize(("domain", "denial"), [("medical", "seal"), ("claims", "raise")])
    def test_genuine_restricted_value_is_denied_without_touching_keys(
        self, provider: InMemoryKeyProvider, store_engine: sa.Engine, domain: str, denial: str
    ) -> None:
        """A cold reader without the grant is denied from the column's domain: no query, no unwrap."""
        with Vault(provider=provider, store=store_engine, domains=POLICIES) as writer:
            with acting_as(ADVISER, purpose="p"):
                blob = writer.field(domain, table="t", column="c").encrypt("diagnosis")
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store_engine, domains=POLICIES) as reader:
            column = reader.field(domain, table="t", column="c")
            queries = QueryCounter(store_engine)
            with acting_as(COACH, purpose="p"):
                if denial == "seal":
                    sealed = column.decrypt(blob)
                    assert isinstance(sealed, SealedValue)
                    assert sealed.domain == domain
                else:
                    with pytest.raises(AccessDeniedError):
                        column.decrypt(blob)
            assert queries.count == 0
            with acting_as(ADVISER, purpose="p"):
                assert column.decrypt(blob) == "diagnosis"
        assert counting.calls["unwrap"] == 1

    def test_context_api_without_a_domain_still_denies_by_the_deks_domain(
        self, provider: InMemoryKeyProvider
    ) -> None:
        """Vault.decrypt without domain= denies a restricted value by the domain of its DEK."""
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=POLICIES) as writer:
            blob = writer.encrypt("flu", domain="medical")
        with Vault(provider=provider, store=store, domains=POLICIES) as reader:
            with acting_as(COACH, purpose="p"):
                assert isinstance(reader.decrypt(blob), SealedValue)
                assert isinstance(reader.decrypt(blob, domain="medical"), SealedValue)


DEEP = 100_000


class TestHostilePlaintext:
    @pytest.mark.parametrize(
        "payload",
        [
            b"[" * DEEP + b"]" * DEEP,
            b'{"a":' * DEEP + b"1" + b"}" * DEEP,
            b"[" * DEEP,
        ],
        ids=["list", "dict", "unterminated"],
    )
    def test_deep_json_under_a_valid_key_is_a_decryption_error(
        self, vault: Vault, payload: bytes
    ) -> None:
        """JSON a key holder nested 100,000 deep raises DecryptionError, never RecursionError."""
        fields = wire.context_fields(CTX)
        blob = vault._cipher.seal("identity", b"\x0b" + payload, fields)
        with pytest.raises(DecryptionError):
            vault.decrypt(blob, context=CTX)
        padded = vault._cipher.seal("identity", b"\x8b" + payload + b"\x80\x00", fields)
        with pytest.raises(DecryptionError):
            vault.decrypt(padded, context=CTX)

    def test_deep_json_is_refused_on_encrypt(self, vault: Vault) -> None:
        """Encrypting JSON nested 100,000 deep raises a ValueError-derived vaultkit error."""
        value: list[Any] = []
        for _ in range(DEEP):
            value = [value]
        with pytest.raises(EncodingError, match="nested too deeply") as info:
            vault.encrypt(value, domain="identity")
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, VaultkitError)


class TestUnknownDekCache:
    def _reader(self, store_engine: sa.Engine, provider: InMemoryKeyProvider) -> Vault:
        return Vault(provider=provider, store=store_engine, domains=POLICIES)

    @staticmethod
    def _hostile(dek_id: bytes) -> bytes:
        return _header_for(dek_id) + os.urandom(40)

    def test_repeated_unknown_ids_cost_one_query_each(
        self, provider: InMemoryKeyProvider, store_engine: sa.Engine, clock: FakeClock
    ) -> None:
        """10,000 values naming 20 unknown DEK ids cost 20 key-store queries, not 10,000."""
        pool = [os.urandom(16) for _ in range(20)]
        blobs = [self._hostile(pool[i % 20]) for i in range(10_000)]
        with self._reader(store_engine, provider) as reader:
            queries = QueryCounter(store_engine)
            for blob in blobs:
                with pytest.raises(DecryptionError):
                    reader.decrypt(blob)
            assert queries.count == 20
            assert len(reader._keyring.cache.unknown.ids) == 20

    def test_random_unknown_ids_share_one_budget(
        self, provider: InMemoryKeyProvider, store_engine: sa.Engine, clock: FakeClock
    ) -> None:
        """10,000 values with fresh random DEK ids cost the budget plus one listing per window."""
        with self._reader(store_engine, provider) as writer:
            genuine = [writer.encrypt(i, domain="identity") for i in range(3)]
            writer.retire_dek(dek_of(genuine[0]))
            later = writer.encrypt("after", domain="identity")
        blobs = [self._hostile(os.urandom(16)) for _ in range(10_000)]
        with self._reader(store_engine, provider) as reader:
            queries = QueryCounter(store_engine)
            for blob in blobs:
                with pytest.raises(DecryptionError):
                    reader.decrypt(blob)
            assert queries.count == keyring_module.UNKNOWN_LOOKUP_BUDGET + 1
            assert len(reader._keyring.cache.unknown.ids) <= keyring_module.NEGATIVE_CACHE_SIZE
            # DEKs the store has are never refused, cached or not, retired or active.
            assert [reader.decrypt(b) for b in genuine] == [0, 1, 2]
            assert reader.decrypt(later) == "after"
            # A new window renews the budget, and no more than that.
            clock.now += keyring_module.NEGATIVE_TTL
            before = queries.count
            for blob in blobs:
                with pytest.raises(DecryptionError):
                    reader.decrypt(blob)
            assert queries.count - before == keyring_module.UNKNOWN_LOOKUP_BUDGET + 1

    def test_negative_cache_is_bounded(
        self, provider: InMemoryKeyProvider, clock: FakeClock
    ) -> None:
        """However many unknown ids a vault meets, it remembers at most NEGATIVE_CACHE_SIZE."""
        with Vault(provider=provider, store=MemoryKeyStore(), domains=POLICIES) as reader:
            for _ in range(3):
                for _ in range(keyring_module.NEGATIVE_CACHE_SIZE):
                    with pytest.raises(DecryptionError):
                        reader.decrypt(self._hostile(os.urandom(16)))
                clock.now += keyring_module.NEGATIVE_TTL
            assert len(reader._keyring.cache.unknown.ids) <= keyring_module.NEGATIVE_CACHE_SIZE

    def test_a_dek_created_later_by_another_process_is_read_within_the_ttl(
        self, provider: InMemoryKeyProvider, store_engine: sa.Engine, clock: FakeClock
    ) -> None:
        """After the budget is spent, a DEK another vault creates is readable once the window ends."""
        with (
            self._reader(store_engine, provider) as reader,
            self._reader(store_engine, provider) as other,
        ):
            for _ in range(keyring_module.UNKNOWN_LOOKUP_BUDGET):
                with pytest.raises(DecryptionError):
                    reader.decrypt(self._hostile(os.urandom(16)))
            blob = other.encrypt("fresh", domain="identity")
            with pytest.raises(DecryptionError):
                reader.decrypt(blob)  # not in the listing taken when the budget ran out
            clock.now += keyring_module.NEGATIVE_TTL
            assert reader.decrypt(blob) == "fresh"

    def test_own_new_dek_is_readable_while_the_budget_is_spent(
        self, provider: InMemoryKeyProvider, store_engine: sa.Engine, clock: FakeClock
    ) -> None:
        """A vault reads back what it just wrote under a DEK it took after the listing."""
        with self._reader(store_engine, provider) as vault:
            for _ in range(keyring_module.UNKNOWN_LOOKUP_BUDGET):
                with pytest.raises(DecryptionError):
                    vault.decrypt(self._hostile(os.urandom(16)))
            assert vault._keyring.cache.unknown.snapshot is not None
            assert vault.decrypt(vault.encrypt("mine", domain="identity")) == "mine"

    def test_a_store_too_large_to_list_is_listed_once(
        self,
        provider: InMemoryKeyProvider,
        store_engine: sa.Engine,
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Past SNAPSHOT_MAX rows the vault lists the store once, then keeps to per-id lookups."""
        monkeypatch.setattr(keyring_module, "SNAPSHOT_MAX", 2)  # instead of 100,000 key rows
        with self._reader(store_engine, provider) as writer:
            for domain in ("identity", "medical", "claims"):
                with acting_as(ADVISER, purpose="p"):
                    writer.encrypt("x", domain=domain)
        with self._reader(store_engine, provider) as reader:
            queries = QueryCounter(store_engine)
            budget = keyring_module.UNKNOWN_LOOKUP_BUDGET
            for _ in range(budget + 10):
                with pytest.raises(DecryptionError):
                    reader.decrypt(self._hostile(os.urandom(16)))
            assert reader._keyring.cache.unknown.too_big
            assert reader._keyring.cache.unknown.snapshot is None
            assert queries.count == budget + 1 + 10
            clock.now += keyring_module.NEGATIVE_TTL
            for _ in range(budget + 10):
                with pytest.raises(DecryptionError):
                    reader.decrypt(self._hostile(os.urandom(16)))
            assert queries.count == 2 * (budget + 10) + 1

    def test_a_row_seen_late_is_read_within_the_ttl(
        self, provider: InMemoryKeyProvider, store_engine: sa.Engine, clock: FakeClock
    ) -> None:
        """A DEK row that reaches the store after its value did is read once its id's entry expires."""
        with self._reader(store_engine, provider) as other:
            blob = other.encrypt("late", domain="identity")
        with store_engine.begin() as conn:  # as a lagging replica would show it: not there yet
            row = conn.execute(sa.text("SELECT * FROM vaultkit_data_keys")).mappings().one()
            conn.execute(sa.text("DELETE FROM vaultkit_data_keys"))
        with self._reader(store_engine, provider) as reader:
            with pytest.raises(DecryptionError):
                reader.decrypt(blob)
            columns = ", ".join(row.keys())
            marks = ", ".join(f":{k}" for k in row.keys())
            with store_engine.begin() as conn:
                conn.execute(
                    sa.text(f"INSERT INTO vaultkit_data_keys ({columns}) VALUES ({marks})"),
                    dict(row),
                )
            queries = QueryCounter(store_engine)
            clock.now += keyring_module.NEGATIVE_TTL / 2
            with pytest.raises(DecryptionError):
                reader.decrypt(blob)
            assert queries.count == 0
            clock.now += keyring_module.NEGATIVE_TTL / 2
            assert reader.decrypt(blob) == "late"

    def test_preload_skips_remembered_unknown_ids(
        self, provider: InMemoryKeyProvider, store_engine: sa.Engine, clock: FakeClock
    ) -> None:
        """preload asks the store once for an unknown id, however often it is named."""
        unknown = os.urandom(16)
        with self._reader(store_engine, provider) as reader:
            queries = QueryCounter(store_engine)
            assert reader.preload([unknown]) == 0
            for _ in range(100):
                assert reader.preload([unknown]) == 0
                with pytest.raises(DecryptionError):
                    reader.decrypt(self._hostile(unknown))
            assert queries.count == 1


PLANTED = "planted-diagnosis-" + os.urandom(8).hex()


def _secret_in_frames(exc: BaseException, secret: str) -> list[str]:
    """Where ``secret`` appears in the locals of every frame of ``exc`` and its chained errors."""
    needle_bytes = secret.encode()
    found: list[str] = []
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > 5 or len(seen) > 200_000:
            return
        seen.add(id(obj))
        if isinstance(obj, str):
            if secret in obj:
                found.append(path)
            return
        if isinstance(obj, bytes | bytearray | memoryview):
            if needle_bytes in bytes(obj):
                found.append(path)
            return
        if isinstance(obj, dict):
            items = list(obj.items())
        elif isinstance(obj, list | tuple | set | frozenset):
            items = list(enumerate(obj))
        elif isinstance(obj, BaseException):
            items = [("args", obj.args), *vars(obj).items()]
            for attr in ("object",):  # UnicodeDecodeError keeps the bytes it failed on
                if hasattr(obj, attr):
                    items.append((attr, getattr(obj, attr)))
        else:
            # Plain attribute storage only (what a reporter's repr of locals can reach), read
            # without calling properties or __getattr__ hooks.
            try:
                items = list(object.__getattribute__(obj, "__dict__").items())
            except (AttributeError, TypeError):
                items = []
            for cls in type(obj).__mro__:
                for slot in cls.__dict__.get("__slots__", ()):
                    descriptor: Any = cls.__dict__.get(slot) if isinstance(slot, str) else None
                    if type(descriptor).__name__ == "member_descriptor":
                        try:
                            items.append((slot, descriptor.__get__(obj, cls)))
                        except AttributeError:
                            pass
        for key, value in items:
            walk(value, f"{path}.{key}", depth + 1)

    chain: BaseException | None = exc
    while chain is not None and id(chain) not in seen:
        walk(chain, type(chain).__name__, 0)
        tb = chain.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            for name, value in frame.f_locals.items():
                walk(value, f"{frame.f_code.co_name}:{name}", 1)
            tb = tb.tb_next
        chain = chain.__cause__ or chain.__context__
    return found


def _write_planted(url: str, provider: InMemoryKeyProvider, domains: list[KeyDomain]) -> bytes:
    with Vault(provider=provider, store=url, domains=domains) as writer:
        with acting_as(ADVISER, purpose="intake"):
            return writer.field("medical", table="notes", column="text").encrypt(PLANTED)


class TestNoPlaintextInFrames:
    @pytest.mark.parametrize("api", ["field", "context"])
    def test_failed_audit_write_leaves_no_plaintext_in_frames(
        self, provider: InMemoryKeyProvider, tmp_path: Path, api: str
    ) -> None:
        """When the audit table is gone the read fails, and no traceback frame holds the value."""
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        domains = [KeyDomain("medical", restricted=True, audited=True)]
        blob = _write_planted(url, provider, domains)
        with Vault(provider=provider, store=url, domains=domains) as reader:
            engine = sa.create_engine(url)
            with engine.begin() as conn:  # the audit table is really gone, not patched away
                conn.execute(sa.text("DROP TABLE vaultkit_audit_events"))
            engine.dispose()
            with acting_as(ADVISER, purpose="review"), pytest.raises(AuditError) as info:
                if api == "field":
                    reader.field("medical", table="notes", column="text").decrypt(blob)
                else:
                    reader.decrypt(blob, context={"table": "notes", "column": "text"})
            assert _secret_in_frames(info.value, PLANTED) == []
            reader._recorder = None  # let close() finish without the table

    @pytest.mark.parametrize(
        "plaintext",
        [
            b"\x01" + PLANTED.encode() + b"\xff",  # a str that is not UTF-8
            b"\x0b[" + json.dumps(PLANTED).encode(),  # JSON cut short
            b"\x8b" + json.dumps([PLANTED]).encode() + b"\x80\x01",  # bad padding
        ],
        ids=["utf8", "json", "padding"],
    )
    def test_undecodable_plaintext_leaves_no_trace_in_frames(
        self, vault: Vault, plaintext: bytes
    ) -> None:
        """An authenticated plaintext that does not decode is not kept by the error or its frames."""
        blob = vault._cipher.seal("medical", plaintext, wire.context_fields(CTX))
        del plaintext
        with pytest.raises(DecryptionError) as info:
            vault.decrypt(blob, context=CTX)
        assert _secret_in_frames(info.value, PLANTED) == []
