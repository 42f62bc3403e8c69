"""DEK wrapping under a KEK with AES-256-GCM and the wrap context as AAD.

Layout of a wrapped DEK: ``01 || nonce (12) || encrypted DEK (32) || tag (16)``, 61 bytes. The
local and in-memory providers seal with a KEK held in process (:func:`wrap`, :func:`unwrap`); the
PKCS#11 provider seals inside the token and frames the result the same way (:func:`frame`,
:func:`split`).
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit.errors import KeyProviderError
from vaultkit.keys.provider import KeyRef

WRAP_VERSION: Final = b"\x01"
NONCE_SIZE: Final = 12  # bytes, 96-bit GCM nonce
WRAPPED_SIZE: Final = 1 + NONCE_SIZE + 32 + 16


def check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, bytes) or len(data_key) != 32:
        raise TypeError("a data key is 32 bytes")


def frame(nonce: bytes, sealed: bytes) -> bytes:
    """The wrapped DEK of a GCM ``nonce`` and ``sealed`` (encrypted DEK || tag)."""
    return WRAP_VERSION + nonce + sealed


def split(wrapped: bytes, *, what: str) -> tuple[bytes, bytes]:
    """``(nonce, sealed)`` of a wrapped DEK; KeyProviderError if it is not of this layout."""
    if len(wrapped) != WRAPPED_SIZE or wrapped[:1] != WRAP_VERSION:
        raise KeyProviderError(f"wrapped data key for {what} is malformed ({len(wrapped)} bytes)")
    return wrapped[1 : 1 + NONCE_SIZE], wrapped[1 + NONCE_SIZE :]


def wrap(kek: AESGCM, data_key: bytes, context: bytes) -> bytes:
    check_data_key(data_key)
    nonce = os.urandom(NONCE_SIZE)
    return frame(nonce, kek.encrypt(nonce, data_key, context))


def unwrap(kek: AESGCM, wrapped: bytes, context: bytes, *, what: str) -> bytes:
    nonce, sealed = split(wrapped, what=what)
    try:
        return kek.decrypt(nonce, sealed, context)
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
