"""Key providers, key references and key domains."""

from vaultkit.keys.domains import KeyDomain
from vaultkit.keys.local import LocalKeyProvider, generate_master_key
from vaultkit.keys.provider import KeyProvider, KeyRef
from vaultkit.keys.x25519 import X25519KeyProvider

__all__ = [
    "KeyDomain",
    "KeyProvider",
    "KeyRef",
    "LocalKeyProvider",
    "X25519KeyProvider",
    "generate_master_key",
]
