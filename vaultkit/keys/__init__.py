"""Key providers, key references, key domains and the providers' optional capabilities.

The providers of optional backends (:class:`PKCS11KeyProvider`, :class:`VaultTransitKeyProvider`,
:class:`AWSKMSKeyProvider`) are loaded on first use of their name (PEP 562), so that
``import vaultkit.keys`` imports neither PyKCS11, hvac nor boto3. Their modules
(``vaultkit.keys.pkcs11``, ``.transit``, ``.aws``) stay importable as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vaultkit.keys.domains import KeyDomain, Retention
from vaultkit.keys.local import LocalKeyProvider, generate_master_key
from vaultkit.keys.provider import (
    KeyProvider,
    KeyRef,
    SupportsAuditSigner,
    SupportsBatchUnwrap,
    SupportsDataKeyGeneration,
    SupportsRewrap,
    SupportsWriterPins,
)
from vaultkit.keys.x25519 import X25519KeyProvider

if TYPE_CHECKING:
    from vaultkit.keys.aws import AWSKMSKeyProvider
    from vaultkit.keys.pkcs11 import PKCS11KeyProvider
    from vaultkit.keys.transit import VaultTransitKeyProvider

__all__ = [
    "AWSKMSKeyProvider",
    "KeyDomain",
    "KeyProvider",
    "KeyRef",
    "LocalKeyProvider",
    "PKCS11KeyProvider",
    "Retention",
    "SupportsAuditSigner",
    "SupportsBatchUnwrap",
    "SupportsDataKeyGeneration",
    "SupportsRewrap",
    "SupportsWriterPins",
    "VaultTransitKeyProvider",
    "X25519KeyProvider",
    "generate_master_key",
]

#: name -> the submodule that defines it; imported when the name is first asked for.
_LAZY: dict[str, str] = {
    "AWSKMSKeyProvider": "vaultkit.keys.aws",
    "PKCS11KeyProvider": "vaultkit.keys.pkcs11",
    "VaultTransitKeyProvider": "vaultkit.keys.transit",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
