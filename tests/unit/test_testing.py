"""vaultkit.testing: CountingKeyProvider forwards exactly the capabilities of its inner provider."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import pytest

from vaultkit import Principal, Vault
from vaultkit.keys import (
    KeyRef,
    SupportsAuditSigner,
    SupportsBatchUnwrap,
    SupportsDataKeyGeneration,
    SupportsRewrap,
    SupportsVersionDestruction,
    SupportsWriterPins,
    X25519KeyProvider,
)
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

CAPABILITIES: dict[type, str] = {
    SupportsRewrap: "rewrap",
    SupportsBatchUnwrap: "unwrap_many",
    SupportsDataKeyGeneration: "generate_data_key",
    SupportsAuditSigner: "audit_signer",
    SupportsWriterPins: "pinned_writers",
    SupportsVersionDestruction: "destroy_version",
}
COACH = Principal("coach", grants={"medical"})
REF = KeyRef("medical", "k", 1)
#: capability method name -> arguments of a call to it
CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "rewrap": ((REF, REF, b"wrapped"), {"context": b"ctx"}),
    "unwrap_many": (([(REF, b"wrapped", b"ctx")],), {}),
    "generate_data_key": ((REF,), {"context": b"ctx"}),
    "audit_signer": (("medical",), {}),
    "pinned_writers": ((), {}),
    "destroy_version": ((REF,), {}),
}


class Plain:
    """A provider with the five methods of KeyProvider and nothing else."""

    def __init__(self) -> None:
        self._inner = InMemoryKeyProvider()

    def primary(self, domain: str) -> KeyRef:
        return self._inner.primary(domain)

    def versions(self, domain: str) -> Sequence[KeyRef]:
        return self._inner.versions(domain)

    def rotate(self, domain: str) -> KeyRef:
        return self._inner.rotate(domain)

    def wrap(self, ref: KeyRef, data_key: bytes, *, context: bytes) -> bytes:
        return self._inner.wrap(ref, data_key, context=context)

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        return self._inner.unwrap(ref, wrapped, context=context)


class TransitLike(InMemoryKeyProvider):
    """An in-memory provider with a transit engine's extras: server-side rewrap, batch unwrap."""

    def rewrap(self, old: KeyRef, new: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        return self.wrap(new, self.unwrap(old, wrapped, context=context), context=context)

    def unwrap_many(self, items: Sequence[tuple[KeyRef, bytes, bytes]]) -> list[bytes]:
        return [self.unwrap(ref, wrapped, context=context) for ref, wrapped, context in items]


class KMSLike(InMemoryKeyProvider):
    """An in-memory provider with KMS's extras: GenerateDataKey and ReEncrypt."""

    def generate_data_key(self, ref: KeyRef, *, context: bytes) -> tuple[bytes, bytes]:
        key = os.urandom(32)
        return key, self.wrap(ref, key, context=context)

    def rewrap(self, old: KeyRef, new: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        return self.wrap(new, self.unwrap(old, wrapped, context=context), context=context)


def _provider_with(capabilities: Sequence[type]) -> Any:
    """An in-memory provider with the methods of ``capabilities`` (each returning a marker)."""
    methods = {
        CAPABILITIES[c]: (lambda name: lambda self, *a, **k: (name, a, k))(CAPABILITIES[c])
        for c in capabilities
    }
    return type("Fake", (InMemoryKeyProvider,), methods)(["medical"])


class TestCapabilities:
    @pytest.mark.parametrize(
        "subset",
        [s for n in range(len(CAPABILITIES) + 1) for s in itertools.combinations(CAPABILITIES, n)],
        ids=lambda s: "+".join(c.__name__.removeprefix("Supports") for c in s) or "none",
    )
    def test_isinstance_holds_exactly_when_it_holds_for_the_inner(
        self, subset: tuple[type, ...]
    ) -> None:
        """For every set of capabilities: the counted provider passes isinstance for those only."""
        inner = _provider_with(subset)
        counting = CountingKeyProvider(inner)
        assert isinstance(counting, CountingKeyProvider)
        for capability in CAPABILITIES:
            assert isinstance(counting, capability) == isinstance(inner, capability), capability
        for capability in subset:
            name = CAPABILITIES[capability]
            args, kwargs = CALLS[name]
            assert getattr(counting, name)(*args, **kwargs) == (name, args, kwargs)
            assert counting.calls[name] == 1

    def test_a_plain_provider_gains_nothing(self) -> None:
        """A provider with no extras has a counted wrapper with none either."""
        counting = CountingKeyProvider(Plain())
        assert type(counting) is CountingKeyProvider
        assert not any(isinstance(counting, c) for c in CAPABILITIES)
        assert not any(hasattr(counting, name) for name in CAPABILITIES.values())

    def test_the_in_memory_provider_only_destroys_versions(self) -> None:
        """The in-memory provider's one extra is version destruction; its wrapper forwards it."""
        counting = CountingKeyProvider(InMemoryKeyProvider())
        assert [c for c in CAPABILITIES if isinstance(counting, c)] == [SupportsVersionDestruction]

    def test_one_class_per_set_of_capabilities(self) -> None:
        """Wrapping two providers with the same extras makes instances of the same class."""
        first = CountingKeyProvider(TransitLike())
        second = CountingKeyProvider(TransitLike())
        assert type(first) is type(second)
        assert type(first) is not type(CountingKeyProvider(KMSLike()))
        assert repr(first).startswith("CountingKeyProvider(")

    def test_x25519_keeps_signer_and_pins(self) -> None:
        """An X25519 unit's counted wrapper still hands out the audit signer and the pins."""
        unit = X25519KeyProvider.generate(["medical"])
        counting = CountingKeyProvider(unit)
        assert isinstance(counting, SupportsAuditSigner)
        assert isinstance(counting, SupportsWriterPins)
        assert counting.audit_signer("medical") == unit.audit_signer("medical")
        assert counting.pinned_writers() == unit.pinned_writers()
        assert counting.calls["audit_signer"] == 1 and counting.calls["pinned_writers"] == 1


class TestForwardedThroughTheVault:
    def test_counted_transit_like_provider_rewraps_and_unwraps_in_batches(self) -> None:
        """rotate_kek rewraps through the counted provider (no unwrap, no wrap), and preload
        unwraps every key row in one unwrap_many call."""
        counting = CountingKeyProvider(TransitLike(["medical"]))
        assert isinstance(counting, SupportsRewrap) and isinstance(counting, SupportsBatchUnwrap)
        store = MemoryKeyStore()
        with (
            Vault(provider=counting, store=store, domains=["medical"], dek_max_encryptions=2) as v,
            v.acting_as(COACH, purpose="test"),
        ):
            blobs = [v.encrypt(f"note {i}", domain="medical") for i in range(6)]
            before = counting.calls.copy()
            report = v.rotate_kek("medical")
            assert report.rewrapped == 3
            assert counting.calls["rewrap"] - before["rewrap"] == 3
            assert counting.calls["unwrap"] == before["unwrap"]
            assert counting.calls["wrap"] == before["wrap"]
        with (
            Vault(provider=counting, store=store, domains=["medical"]) as fresh,
            fresh.acting_as(COACH, purpose="test"),
        ):
            before = counting.calls.copy()
            fresh.preload(r.dek_id for r in store.records(domain="medical"))
            assert counting.calls["unwrap_many"] - before["unwrap_many"] == 1
            assert counting.calls["unwrap"] == before["unwrap"]
            assert [fresh.decrypt(b, domain="medical") for b in blobs] == [
                f"note {i}" for i in range(6)
            ]

    def test_counted_kms_like_provider_generates_data_keys(self) -> None:
        """A counted KMS-like provider makes each new DEK with generate_data_key, not wrap."""
        counting = CountingKeyProvider(KMSLike(["medical"]))
        with (
            Vault(
                provider=counting,
                store=MemoryKeyStore(),
                domains=["medical"],
                dek_max_encryptions=2,
            ) as v,
            v.acting_as(COACH, purpose="test"),
        ):
            for i in range(4):
                v.encrypt(f"note {i}", domain="medical")
        assert counting.calls["generate_data_key"] == 2
        assert counting.calls["wrap"] == 0
