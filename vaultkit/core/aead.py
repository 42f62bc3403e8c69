"""AES-256-GCM with HKDF key derivation and key commitment (suite 1 of the wire format).

AES-GCM does not commit to its key: a ciphertext can be crafted that authenticates under two
different keys ("invisible salamanders", Dodis et al. 2018; Albertini et al., USENIX Security 2022).
Suite 1 closes that the way the AWS Encryption SDK's committing suites do: from each 256-bit DEK
two independent values are derived once, with HKDF-SHA256 (RFC 5869) salted by the DEK id::

    encryption key = HKDF-SHA256(ikm=DEK, salt=DEK id, info="vaultkit v1 AES-256-GCM key", L=32)
    commitment     = HKDF-SHA256(ikm=DEK, salt=DEK id, info="vaultkit v1 key commitment",  L=32)

The commitment sits in every value's header and is compared with the one derived from the DEK the
header names; finding two DEKs with the same commitment is an HMAC-SHA256 collision. The GCM key
is never the DEK itself, so the DEK is not used for two algorithms.

Warning:
    This module takes raw keys and nonces. Callers must never reuse a nonce under one key; the
    vault draws a fresh 96-bit nonce from ``os.urandom`` for every value and retires each DEK
    long before 2**32 encryptions (NIST SP 800-38D, section 8.3).
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultkit.core import wire
from vaultkit.errors import DecryptionError

__all__ = [
    "COMMITMENT_INFO",
    "ENCRYPTION_KEY_INFO",
    "KEY_SIZE",
    "derive_suite1",
    "open_",
    "seal",
    "seal_with_nonce",
]

KEY_SIZE: Final = 32  # bytes: AES-256 and every DEK
ENCRYPTION_KEY_INFO: Final = b"vaultkit v1 AES-256-GCM key"
COMMITMENT_INFO: Final = b"vaultkit v1 key commitment"
_urandom = os.urandom


def _hkdf(dek: bytes, dek_id: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=dek_id, info=info).derive(dek)


def derive_suite1(dek: bytes, dek_id: bytes) -> tuple[AESGCM, bytes]:
    """Derive the GCM cipher and the key commitment of a DEK, once per DEK.

    Returns:
        An ``AESGCM`` object under the derived encryption key, and the 32-byte commitment.
    """
    if len(dek) != KEY_SIZE:
        raise ValueError(f"a DEK is {KEY_SIZE} bytes, got {len(dek)}")
    if len(dek_id) != wire.DEK_ID_SIZE:
        raise ValueError(f"a DEK id is {wire.DEK_ID_SIZE} bytes, got {len(dek_id)}")
    return AESGCM(_hkdf(dek, dek_id, ENCRYPTION_KEY_INFO)), _hkdf(dek, dek_id, COMMITMENT_INFO)


def seal(cipher: AESGCM, plaintext: bytes, aad: bytes, header: bytes = b"") -> bytes:
    """Encrypt under a fresh random nonce; return ``header || nonce || ciphertext || tag``.

    The nonce is 96 bits from the OS CSPRNG (``os.urandom``), drawn for this call alone. With
    ``header`` (a wire-format header, which the caller also puts at the start of ``aad``) the
    result is a whole stored value; this is the call the vault makes for every value.
    """
    nonce = _urandom(wire.NONCE_SIZE)
    return header + nonce + cipher.encrypt(nonce, plaintext, aad)


def seal_with_nonce(
    cipher: AESGCM, nonce: bytes, plaintext: bytes, aad: bytes, header: bytes = b""
) -> bytes:
    """:func:`seal` with a nonce the caller chose: for reproducible test vectors only.

    Warning:
        Reusing a nonce under one key reveals the XOR of the plaintexts and lets anyone forge
        tags (NIST SP 800-38D, appendix A). Nothing in vaultkit calls this outside
        ``tests/vectors``.
    """
    if len(nonce) != wire.NONCE_SIZE:
        raise ValueError(f"a nonce is {wire.NONCE_SIZE} bytes, got {len(nonce)}")
    return header + nonce + cipher.encrypt(nonce, plaintext, aad)


def open_(cipher: AESGCM, sealed: bytes, aad: bytes, offset: int = 0) -> bytes:
    """Decrypt ``nonce || ciphertext || tag`` found at ``offset`` of ``sealed``.

    With ``offset=wire.HEADER_SIZE`` it opens a whole stored value (the header is authenticated
    through ``aad``). Any failure raises :class:`DecryptionError`.
    """
    if len(sealed) < offset + wire.NONCE_SIZE + wire.TAG_SIZE:
        raise DecryptionError
    start = offset + wire.NONCE_SIZE
    try:
        return cipher.decrypt(sealed[offset:start], sealed[start:], aad)
    except InvalidTag:
        raise DecryptionError from None
