"""Data keys and their wrapping context.

A DEK is 32 bytes from ``os.urandom``; its id is 16 more random bytes, never derived from key
material. When a DEK is wrapped by a provider it is bound to this context::

    wrap_context = u16 len || "vaultkit dek v1"
                || u16 len || domain
                || u16 len || purpose
                || DEK id (16 bytes)

so a wrapped key copied to another key-store row, domain or purpose does not unwrap (for providers
that bind associated data; the value-level key commitment covers those that cannot).
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit._redact import NoPickle
from vaultkit.core import aead, wire

__all__ = ["DataKey", "key_row_context", "new_data_key", "new_dek_id", "wrap_context"]

_LABEL: Final = wire.encode_field("vaultkit dek v1")


def new_data_key() -> bytes:
    """Return a fresh 256-bit DEK."""
    return os.urandom(aead.KEY_SIZE)


def new_dek_id() -> bytes:
    """Return a fresh random 16-byte DEK id."""
    return os.urandom(wire.DEK_ID_SIZE)


def wrap_context(domain: str, dek_id: bytes, purpose: str = "data") -> bytes:
    """Return the context a DEK is wrapped with."""
    return _LABEL + wire.encode_field(domain) + wire.encode_field(purpose) + dek_id


def key_row_context(domain: str, dek_id: bytes, purpose: str, name: str | None) -> bytes:
    """The context a key row is wrapped with: :func:`wrap_context`, and the row's name when it
    carries attributes (``name;attr=value``, research dataset keys' date-shift bound), so that
    a key-store writer who edits them makes the key unreadable rather than changes them.

    .. versionadded:: 0.4.0
    """
    context = wrap_context(domain, dek_id, purpose)
    if name is not None and ";" in name:
        context += wire.encode_field(name)
    return context


class DataKey(NoPickle):
    """An unwrapped DEK, ready to use: derived cipher, header and AAD prefix, computed once.

    Key material only: what the vault caches about it (time limit, the domain's policy) lives in
    the vault's own cache entry. Refuses pickling and copying, and its ``repr`` names only id and
    domain.

    .. versionchanged:: 0.2.0
       Key material only: ``wrapped``, ``ttl``, ``expires_at``, ``referenced``, ``restricted``
       and ``audited`` moved to the vault's cache entry.
    """

    __slots__ = ("aad_prefix", "cipher", "commitment", "dek_id", "domain", "header")

    def __init__(self, dek: bytes, dek_id: bytes, domain: str) -> None:
        cipher, commitment = aead.derive_suite1(dek, dek_id)
        self.cipher: AESGCM = cipher
        self.commitment = commitment
        self.dek_id = dek_id
        self.domain = domain
        self.header = wire.build_header(dek_id, commitment)
        self.aad_prefix = self.header + wire.encode_field(domain)

    def __repr__(self) -> str:
        return f"DataKey(dek_id={self.dek_id.hex()!r}, domain={self.domain!r})"
