"""Data-key stores: where wrapped DEKs live."""

from vaultkit.store._base import (
    SCHEMA_VERSION,
    DataKeyRecord,
    DekState,
    KeyStore,
    MemoryKeyStore,
    SupportsStates,
)
from vaultkit.store.sql import SQLKeyStore, open_store

__all__ = [
    "SCHEMA_VERSION",
    "DataKeyRecord",
    "DekState",
    "KeyStore",
    "MemoryKeyStore",
    "SQLKeyStore",
    "SupportsStates",
    "open_store",
]
