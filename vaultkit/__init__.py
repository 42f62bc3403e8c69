"""vaultkit: field-level envelope encryption for personal data in SQL databases.

The safe API: a :class:`Vault` over key domains (:class:`KeyDomain`) whose KEKs live in a key
provider. Raw primitives live in :mod:`vaultkit.core`, documented as hazardous.
"""

from vaultkit._access import ANONYMOUS, Principal, SealedValue, acting_as, current_scope
from vaultkit._vault import BlindIndexKey, CacheInfo, FieldCipher, RotationReport, Subject, Vault
from vaultkit.core.wire import ContextValue
from vaultkit.keys.domains import KeyDomain, Retention
from vaultkit.keys.provider import KeyProvider, KeyRef

__all__ = [
    "ANONYMOUS",
    "BlindIndexKey",
    "CacheInfo",
    "ContextValue",
    "FieldCipher",
    "KeyDomain",
    "KeyProvider",
    "KeyRef",
    "Principal",
    "Retention",
    "RotationReport",
    "SealedValue",
    "Subject",
    "Vault",
    "acting_as",
    "current_scope",
]
__version__ = "0.1.0.dev0"
