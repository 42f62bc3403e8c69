"""The key-provider interface: where KEKs live and how DEKs are wrapped under them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["KeyProvider", "KeyRef"]


@dataclass(frozen=True, slots=True)
class KeyRef:
    """Names one version of one key-encryption key (KEK), never its material.

    Args:
        domain: the key domain the KEK serves.
        key_id: the provider's own name for the KEK (a keyring entry, an HSM label, a KMS key ARN).
        version: the KEK version; rotation adds a version and keeps the old ones for unwrapping.
    """

    domain: str
    key_id: str
    version: int


@runtime_checkable
class KeyProvider(Protocol):
    """Holds the KEKs of one or more key domains and wraps DEKs under them.

    Backends implement this structurally, without importing vaultkit. ``context`` is associated data
    that the provider must bind to the wrapped key (as AES-GCM AAD, a KMS encryption context, a
    transit derivation context): unwrapping with another context must fail. Every failure raises a
    :class:`vaultkit.errors.KeyProviderError` whose message names no key material.
    """

    def primary(self, domain: str) -> KeyRef:
        """Return the KEK version new DEKs of ``domain`` are wrapped under.

        Raises:
            DomainError: the provider does not serve ``domain``.
        """
        ...

    def versions(self, domain: str) -> Sequence[KeyRef]:
        """Return every KEK version of ``domain`` that can still unwrap, oldest first."""
        ...

    def wrap(self, ref: KeyRef, data_key: bytes, *, context: bytes) -> bytes:
        """Encrypt a DEK under the KEK ``ref``, bound to ``context``."""
        ...

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """Decrypt a wrapped DEK; fails unless ``ref`` and ``context`` are those it was wrapped with."""
        ...

    def rotate(self, domain: str) -> KeyRef:
        """Create a new KEK version for ``domain``, make it primary and return it."""
        ...
