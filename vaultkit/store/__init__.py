"""Data-key stores: where wrapped DEKs live."""

from vaultkit.store._base import (
    SCHEMA_VERSION,
    WRAPPING_KEK_ID,
    DataKeyRecord,
    DekState,
    KeyStore,
    KeySummary,
    MemoryKeyStore,
    SubjectRecord,
    SupportsBulkScopedKeys,
    SupportsDestroyMany,
    SupportsGetMany,
    SupportsScopedKeys,
    SupportsStates,
)
from vaultkit.store.sql import SQLKeyStore, open_store

__all__ = [
    "SCHEMA_VERSION",
    "WRAPPING_KEK_ID",
    "DataKeyRecord",
    "DekState",
    "KeyStore",
    "KeySummary",
    "MemoryKeyStore",
    "SQLKeyStore",
    "SubjectRecord",
    "SupportsBulkScopedKeys",
    "SupportsDestroyMany",
    "SupportsGetMany",
    "SupportsScopedKeys",
    "SupportsStates",
    "open_store",
]
