"""vaultkit: field-level envelope encryption for personal data in SQL databases.

The safe API: a :class:`Vault` over key domains (:class:`KeyDomain`) whose KEKs live in a key
provider. Raw primitives live in :mod:`vaultkit.core`, documented as hazardous.
"""

from vaultkit._access import ANONYMOUS, Principal, SealedValue, acting_as, current_scope
from vaultkit._vault import BlindIndexKey, CacheInfo, FieldCipher, RotationReport, Subject, Vault
from vaultkit.core.wire import ContextValue
from vaultkit.errors import RetentionExpiredError, SubjectErasedError, ValueErasedError
from vaultkit.keys.domains import KeyDomain, Retention
from vaultkit.keys.provider import KeyProvider, KeyRef
from vaultkit.lifecycle import (
    DomainErasure,
    DomainRetention,
    EnforcementReport,
    ErasureReceipt,
    RetentionReport,
    ShredReport,
)

__all__ = [
    "ANONYMOUS",
    "BlindIndexKey",
    "CacheInfo",
    "ContextValue",
    "DomainErasure",
    "DomainRetention",
    "EnforcementReport",
    "ErasureReceipt",
    "FieldCipher",
    "KeyDomain",
    "KeyProvider",
    "KeyRef",
    "Principal",
    "Retention",
    "RetentionExpiredError",
    "RetentionReport",
    "RotationReport",
    "SealedValue",
    "ShredReport",
    "Subject",
    "SubjectErasedError",
    "ValueErasedError",
    "Vault",
    "acting_as",
    "current_scope",
]
__version__ = "0.1.0.dev0"
