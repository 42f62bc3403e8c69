"""Helpers for tests, vaultkit's own and its users'.

:class:`InMemoryKeyProvider` is a complete key provider whose KEKs live in process memory and
vanish with it, like tink-py's fake KMS. :class:`CountingKeyProvider` wraps any provider and counts
its calls, so that a test can show that reading many rows costs one unwrap per distinct DEK.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, cast

from vaultkit.keys.memory import InMemoryKeyProvider
from vaultkit.keys.provider import (
    KeyProvider,
    KeyRef,
    SupportsAuditSigner,
    SupportsBatchUnwrap,
    SupportsDataKeyGeneration,
    SupportsRewrap,
    SupportsVersionDestruction,
    SupportsWriterPins,
    VersionDestruction,
)
from vaultkit.store import MemoryKeyStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["CountingKeyProvider", "InMemoryKeyProvider", "MemoryKeyStore"]


class CountingKeyProvider:
    """Pass every call through to ``inner`` and count it by method name in :attr:`calls`.

    The wrapper has exactly the optional capabilities of ``inner``
    (:class:`~vaultkit.keys.SupportsRewrap`, :class:`~vaultkit.keys.SupportsBatchUnwrap`,
    :class:`~vaultkit.keys.SupportsDataKeyGeneration`, :class:`~vaultkit.keys.SupportsAuditSigner`,
    :class:`~vaultkit.keys.SupportsWriterPins`,
    :class:`~vaultkit.keys.SupportsVersionDestruction`): ``isinstance(counting, SupportsRewrap)`` holds
    when it holds for ``inner``, and those calls are forwarded and counted too. So a counted
    transit provider still rewraps server-side and unwraps in batches. (The instance is of a
    subclass made once per set of capabilities; it is still a ``CountingKeyProvider``.)

    .. versionchanged:: 0.1.0
       Forwards the inner provider's optional capabilities.
    .. versionchanged:: 0.3.0
       Forwards :class:`~vaultkit.keys.SupportsVersionDestruction` too.
    """

    inner: KeyProvider
    calls: Counter[str]

    def __new__(cls, inner: KeyProvider) -> CountingKeyProvider:
        if cls is CountingKeyProvider:
            cls = _counting_class(frozenset(c for c in _FORWARDERS if isinstance(inner, c)))
        return super().__new__(cls)

    def __init__(self, inner: KeyProvider) -> None:
        self.inner = inner
        self.calls = Counter()
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def primary(self, domain: str) -> KeyRef:
        self._count("primary")
        return self.inner.primary(domain)

    def versions(self, domain: str) -> Sequence[KeyRef]:
        self._count("versions")
        return self.inner.versions(domain)

    def rotate(self, domain: str) -> KeyRef:
        self._count("rotate")
        return self.inner.rotate(domain)

    def wrap(self, ref: KeyRef, data_key: bytes, *, context: bytes) -> bytes:
        self._count("wrap")
        return self.inner.wrap(ref, data_key, context=context)

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        self._count("unwrap")
        return self.inner.unwrap(ref, wrapped, context=context)

    def __repr__(self) -> str:
        return f"CountingKeyProvider({self.inner!r})"


# -- forwarded capabilities: one mixin per Protocol of vaultkit.keys.provider ------------------------


class _CountsRewrap(CountingKeyProvider):
    def rewrap(self, old: KeyRef, new: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        self._count("rewrap")
        return cast(SupportsRewrap, self.inner).rewrap(old, new, wrapped, context=context)


class _CountsBatchUnwrap(CountingKeyProvider):
    def unwrap_many(self, items: Sequence[tuple[KeyRef, bytes, bytes]]) -> list[bytes]:
        self._count("unwrap_many")
        return cast(SupportsBatchUnwrap, self.inner).unwrap_many(items)


class _CountsDataKeyGeneration(CountingKeyProvider):
    def generate_data_key(self, ref: KeyRef, *, context: bytes) -> tuple[bytes, bytes]:
        self._count("generate_data_key")
        return cast(SupportsDataKeyGeneration, self.inner).generate_data_key(ref, context=context)


class _CountsAuditSigner(CountingKeyProvider):
    def audit_signer(self, domain: str) -> tuple[Ed25519PublicKey, Callable[[bytes], bytes]] | None:
        self._count("audit_signer")
        return cast(SupportsAuditSigner, self.inner).audit_signer(domain)


class _CountsWriterPins(CountingKeyProvider):
    def pinned_writers(self) -> dict[str, Ed25519PublicKey]:
        self._count("pinned_writers")
        return cast(SupportsWriterPins, self.inner).pinned_writers()


class _CountsVersionDestruction(CountingKeyProvider):
    @property
    def destruction_delay(self) -> dt.timedelta:
        return cast(SupportsVersionDestruction, self.inner).destruction_delay

    def destroy_version(self, ref: KeyRef) -> VersionDestruction:
        self._count("destroy_version")
        return cast(SupportsVersionDestruction, self.inner).destroy_version(ref)


#: capability Protocol -> the mixin that forwards it; the order fixes the MRO of the made classes.
_FORWARDERS: Final[dict[type, type[CountingKeyProvider]]] = {
    SupportsRewrap: _CountsRewrap,
    SupportsBatchUnwrap: _CountsBatchUnwrap,
    SupportsDataKeyGeneration: _CountsDataKeyGeneration,
    SupportsAuditSigner: _CountsAuditSigner,
    SupportsWriterPins: _CountsWriterPins,
    SupportsVersionDestruction: _CountsVersionDestruction,
}


@functools.cache
def _counting_class(capabilities: frozenset[type]) -> type[CountingKeyProvider]:
    """The ``CountingKeyProvider`` subclass with the forwarders of exactly ``capabilities``."""
    if not capabilities:
        return CountingKeyProvider
    mixins = tuple(m for c, m in _FORWARDERS.items() if c in capabilities)
    name = (
        "CountingKeyProvider["
        + ", ".join(c.__name__ for c in _FORWARDERS if c in capabilities)
        + "]"
    )
    return type(name, mixins, {"__module__": __name__, "__qualname__": name})
