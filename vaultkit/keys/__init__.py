"""Key providers, key references and key domains."""

from vaultkit.keys.domains import KeyDomain
from vaultkit.keys.local import LocalKeyProvider, generate_master_key
from vaultkit.keys.provider import KeyProvider, KeyRef

__all__ = ["KeyDomain", "KeyProvider", "KeyRef", "LocalKeyProvider", "generate_master_key"]
