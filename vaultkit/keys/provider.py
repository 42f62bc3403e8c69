"""The key-provider interface: where KEKs live and how DEKs are wrapped under them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "KeyProvider",
    "KeyRef",
    "SupportsAuditSigner",
    "SupportsBatchUnwrap",
    "SupportsDataKeyGeneration",
    "SupportsRewrap",
    "SupportsVersionDestruction",
    "SupportsWriterPins",
    "VersionDestruction",
]


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


# -- optional capabilities ----------------------------------------------------------------------
# A provider may offer more than the five methods above. The vault checks each capability with
# ``isinstance(provider, SupportsX)`` (these are runtime-checkable Protocols: the check looks for
# the method's name only, so its signature is what mypy checks), and wrappers such as
# ``vaultkit.testing.CountingKeyProvider`` forward exactly the capabilities their inner provider has.


@runtime_checkable
class SupportsRewrap(Protocol):
    """Re-wraps a wrapped DEK under another KEK version without the DEK leaving the key server."""

    def rewrap(self, old: KeyRef, new: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """Return ``wrapped`` (made under ``old``) wrapped under ``new``, bound to ``context``."""
        ...


@runtime_checkable
class SupportsBatchUnwrap(Protocol):
    """Unwraps several DEKs in one round trip (a transit ``batch_input``)."""

    def unwrap_many(self, items: Sequence[tuple[KeyRef, bytes, bytes]]) -> list[bytes]:
        """Unwrap ``(ref, wrapped, context)`` items, in order; fails as a whole like ``unwrap``."""
        ...


@runtime_checkable
class SupportsDataKeyGeneration(Protocol):
    """Makes a new DEK on the key server and returns it with its wrapped form (KMS ``GenerateDataKey``)."""

    def generate_data_key(self, ref: KeyRef, *, context: bytes) -> tuple[bytes, bytes]:
        """Return ``(data_key, wrapped)`` under ``ref``, bound to ``context``."""
        ...


@runtime_checkable
class SupportsAuditSigner(Protocol):
    """An encrypt-only writer's signing key for its own audit chain (:mod:`vaultkit.keys.x25519`)."""

    def audit_signer(self, domain: str) -> tuple[Ed25519PublicKey, Callable[[bytes], bytes]] | None:
        """The writer's public key and signing function, or ``None`` in the unit itself."""
        ...


@runtime_checkable
class SupportsWriterPins(Protocol):
    """A unit that pins the writers whose audit chains it verifies (:mod:`vaultkit.keys.x25519`)."""

    def pinned_writers(self) -> dict[str, Ed25519PublicKey]:
        """Writer name -> Ed25519 public key."""
        ...


@dataclass(frozen=True, slots=True)
class VersionDestruction:
    """What :meth:`SupportsVersionDestruction.destroy_version` did to a KEK version.

    Args:
        ref: the version asked for.
        versions: every version of the domain whose material this call destroyed or scheduled
            for destruction (OpenBao trims a key ring from below, so destroying v3 there also
            destroys v1 and v2; the other providers destroy ``ref`` alone).
        requested_at: when the provider was asked (UTC).
        final_at: from when the material is gone for good (UTC): ``requested_at`` where the
            provider destroys at once (a keyring file, a PKCS#11 token, an OpenBao trim), the
            end of the pending window where it schedules (AWS KMS ``ScheduleKeyDeletion``, 7 to
            30 days). The version unwraps nothing from ``requested_at`` on in either case.
        mechanism: the provider's mechanism, for reports (``"keyring rewrite"``,
            ``"C_DestroyObject"``, ``"transit trim"``, ``"ScheduleKeyDeletion"``, ...).

    .. versionadded:: 0.3.0
    """

    ref: KeyRef
    versions: tuple[int, ...]
    requested_at: dt.datetime
    final_at: dt.datetime
    mechanism: str


@runtime_checkable
class SupportsVersionDestruction(Protocol):
    """Destroys the material of one old KEK version for good (shred epochs, erasure in backups).

    Every DEK wrapped under a destroyed version is unreadable from then on, also a copy of the
    wrapped bytes in a database backup: that is the point. The primary version is refused, and
    so is a version that does not exist; destroying a version that is already destroyed again
    returns its destruction (idempotent, so an interrupted shred epoch can be run again).

    .. versionadded:: 0.3.0
    """

    @property
    def destruction_delay(self) -> dt.timedelta:
        """How long after ``destroy_version`` the material is gone for good (0: at once)."""
        ...

    def destroy_version(self, ref: KeyRef) -> VersionDestruction:
        """Destroy KEK version ``ref``; see :class:`VersionDestruction` for when it is final.

        Raises:
            KeyProviderError: ``ref`` is the primary version of its domain (rotate first), or the
                provider refused.
            KeyNotFoundError: ``ref`` names no version this provider ever had.
        """
        ...
