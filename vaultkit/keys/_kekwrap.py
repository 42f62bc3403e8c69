"""DEK wrapping under a locally held KEK: AES-256-GCM with the wrap context as AAD.

Layout of a wrapped DEK: ``01 || nonce (12) || encrypted DEK (32) || tag (16)``, 61 bytes.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit.errors import KeyProviderError
from vaultkit.keys.provider import KeyRef

WRAP_VERSION: Final = b"\x01"
WRAPPED_SIZE: Final = 1 + 12 + 32 + 16


def wrap(kek: AESGCM, data_key: bytes, context: bytes) -> bytes:
    if not isinstance(data_key, bytes) or len(data_key) != 32:
        raise TypeError("a data key is 32 bytes")
    nonce = os.urandom(12)
    return WRAP_VERSION + nonce + kek.encrypt(nonce, data_key, context)


def unwrap(kek: AESGCM, wrapped: bytes, context: bytes, *, what: str) -> bytes:
    if len(wrapped) != WRAPPED_SIZE or wrapped[:1] != WRAP_VERSION:
        raise KeyProviderError(f"wrapped data key for {what} is malformed ({len(wrapped)} bytes)")
    try:
        return kek.decrypt(wrapped[1:13], wrapped[13:], context)
    except InvalidTag:
        raise KeyProviderError(
            f"wrapped data key did not unwrap under {what}: wrong KEK, wrong context or damaged key row"
        ) from None


class AESGCMWrapping:
    """``wrap``/``unwrap`` for providers that hold their KEKs as ``AESGCM`` objects in process."""

    __slots__ = ()

    def _cipher(self, ref: KeyRef) -> AESGCM:
        raise NotImplementedError

    def wrap(self, ref: KeyRef, data_key: bytes, *, context: bytes) -> bytes:
        """Encrypt a DEK under the KEK ``ref``, bound to ``context``."""
        return wrap(self._cipher(ref), data_key, context)

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """Decrypt a wrapped DEK; fails unless ``ref`` and ``context`` are those it was wrapped with."""
        return unwrap(self._cipher(ref), wrapped, context, what=f"{ref.key_id} v{ref.version}")
