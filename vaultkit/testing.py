"""Helpers for tests, vaultkit's own and its users'.

:class:`InMemoryKeyProvider` is a complete key provider whose KEKs live in process memory and
vanish with it, like tink-py's fake KMS. :class:`CountingKeyProvider` wraps any provider and counts
its calls, so that a test can show that reading many rows costs one unwrap per distinct DEK.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit._redact import NoPickle, Secret
from vaultkit.errors import DomainError, KeyNotFoundError
from vaultkit.keys import _kekwrap
from vaultkit.keys.domains import check_domain_name
from vaultkit.keys.provider import (
    KeyProvider,
    KeyRef,
    SupportsAuditSigner,
    SupportsBatchUnwrap,
    SupportsDataKeyGeneration,
    SupportsRewrap,
    SupportsWriterPins,
)
from vaultkit.store import MemoryKeyStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["CountingKeyProvider", "InMemoryKeyProvider", "MemoryKeyStore"]


class InMemoryKeyProvider(_kekwrap.AESGCMWrapping, NoPickle):
    """A key provider with KEKs in memory only. For tests; everything is lost with the process.

    Args:
        domains: domains to create KEKs for up front. With ``create=True`` (the default) a KEK is
            also created for any other domain on first use.
        create: whether unknown domains get a KEK on first use.

    .. versionadded:: 0.1.0
    """

    def __init__(self, domains: Sequence[str] = (), *, create: bool = True) -> None:
        self._id = os.urandom(8).hex()
        # In an opaque holder: vars() of the provider shows no KEK, also with a cryptography
        # release whose AESGCM keeps its key in a Python attribute.
        self._keks: Secret[dict[str, list[AESGCM]]] = Secret({})
        self._create = create
        self._lock = threading.Lock()
        for domain in domains:
            self.rotate(domain)

    def _key_id(self, domain: str) -> str:
        return f"memory:{self._id}:{domain}"

    def primary(self, domain: str) -> KeyRef:
        check_domain_name(domain)
        with self._lock:
            keks = self._keks.reveal()
            if domain not in keks:
                if not self._create:
                    raise DomainError(f"in-memory provider holds no KEK for domain {domain!r}")
                keks[domain] = [AESGCM(os.urandom(32))]
            return KeyRef(domain, self._key_id(domain), len(keks[domain]))

    def versions(self, domain: str) -> Sequence[KeyRef]:
        with self._lock:
            keks = self._keks.reveal()
            if domain not in keks:
                raise DomainError(f"in-memory provider holds no KEK for domain {domain!r}")
            return [KeyRef(domain, self._key_id(domain), v + 1) for v in range(len(keks[domain]))]

    def rotate(self, domain: str) -> KeyRef:
        check_domain_name(domain)
        with self._lock:
            versions = self._keks.reveal().setdefault(domain, [])
            versions.append(AESGCM(os.urandom(32)))
            return KeyRef(domain, self._key_id(domain), len(versions))

    def _cipher(self, ref: KeyRef) -> AESGCM:
        keks = self._keks.reveal().get(ref.domain)
        if ref.key_id != self._key_id(ref.domain) or not keks or not 1 <= ref.version <= len(keks):
            raise KeyNotFoundError(
                f"KEK {ref.key_id} version {ref.version} is unknown to this provider"
            )
        return keks[ref.version - 1]

    def __repr__(self) -> str:
        return f"InMemoryKeyProvider(domains={sorted(self._keks.reveal())!r})"


class CountingKeyProvider:
    """Pass every call through to ``inner`` and count it by method name in :attr:`calls`.

    The wrapper has exactly the optional capabilities of ``inner``
    (:class:`~vaultkit.keys.SupportsRewrap`, :class:`~vaultkit.keys.SupportsBatchUnwrap`,
    :class:`~vaultkit.keys.SupportsDataKeyGeneration`, :class:`~vaultkit.keys.SupportsAuditSigner`,
    :class:`~vaultkit.keys.SupportsWriterPins`): ``isinstance(counting, SupportsRewrap)`` holds
    when it holds for ``inner``, and those calls are forwarded and counted too. So a counted
    transit provider still rewraps server-side and unwraps in batches. (The instance is of a
    subclass made once per set of capabilities; it is still a ``CountingKeyProvider``.)

    .. versionchanged:: 0.1.0
       Forwards the inner provider's optional capabilities.
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
    inner: Any

    def rewrap(self, old: KeyRef, new: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        self._count("rewrap")
        return self.inner.rewrap(old, new, wrapped, context=context)  # type: ignore[no-any-return]


class _CountsBatchUnwrap(CountingKeyProvider):
    inner: Any

    def unwrap_many(self, items: Sequence[tuple[KeyRef, bytes, bytes]]) -> list[bytes]:
        self._count("unwrap_many")
        return self.inner.unwrap_many(items)  # type: ignore[no-any-return]


class _CountsDataKeyGeneration(CountingKeyProvider):
    inner: Any

    def generate_data_key(self, ref: KeyRef, *, context: bytes) -> tuple[bytes, bytes]:
        self._count("generate_data_key")
        return self.inner.generate_data_key(ref, context=context)  # type: ignore[no-any-return]


class _CountsAuditSigner(CountingKeyProvider):
    inner: Any

    def audit_signer(self, domain: str) -> tuple[Ed25519PublicKey, Callable[[bytes], bytes]] | None:
        self._count("audit_signer")
        return self.inner.audit_signer(domain)  # type: ignore[no-any-return]


class _CountsWriterPins(CountingKeyProvider):
    inner: Any

    def pinned_writers(self) -> dict[str, Ed25519PublicKey]:
        self._count("pinned_writers")
        return self.inner.pinned_writers()  # type: ignore[no-any-return]


#: capability Protocol -> the mixin that forwards it; the order fixes the MRO of the made classes.
_FORWARDERS: Final[dict[type, type[CountingKeyProvider]]] = {
    SupportsRewrap: _CountsRewrap,
    SupportsBatchUnwrap: _CountsBatchUnwrap,
    SupportsDataKeyGeneration: _CountsDataKeyGeneration,
    SupportsAuditSigner: _CountsAuditSigner,
    SupportsWriterPins: _CountsWriterPins,
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
