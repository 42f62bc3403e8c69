"""An asymmetric key provider: DEKs wrapped to an X25519 public key.

A service that holds only the public key can encrypt into the domain (wrap new DEKs) but never
unwrap one, so it cannot read back what it wrote or anything else in the domain: the claims back
end stores a medical document a member uploads; only the medical unit, holding the private key,
reads it. Wrapping follows the ECIES pattern of HPKE (RFC 9180) with fixed choices::

    ephemeral key pair (e, E); shared = X25519(e, recipient public key R)
    key = HKDF-SHA256(shared, salt = E || R, info = "vaultkit x25519 wrap v1", 32 bytes)
    wrapped = 02 || E (32) || nonce (12) || AES-256-GCM(key, nonce, DEK, aad = wrap context)

Key versions: each domain has a list of key pairs; rotation adds one. Private keys stay in this
object (export with :meth:`X25519KeyProvider.private_pem`, deliberately named).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultkit._redact import NoPickle
from vaultkit.errors import ConfigurationError, DomainError, KeyNotFoundError, KeyProviderError
from vaultkit.keys.domains import check_domain_name
from vaultkit.keys.provider import KeyRef

__all__ = ["X25519KeyProvider"]

_VERSION: Final = b"\x02"
_INFO: Final = b"vaultkit x25519 wrap v1"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(*_RAW)


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO).derive(
        shared
    )
    return AESGCM(key)


class X25519KeyProvider(NoPickle):
    """Key provider whose KEKs are X25519 key pairs; it may hold only the public halves.

    Build the unit's provider with :meth:`generate` (or :meth:`from_private_pem`), give other
    services :meth:`public_only` (or :meth:`from_public_pem`). A public-only provider wraps and
    refuses to unwrap with :class:`KeyProviderError`.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        public: dict[str, list[X25519PublicKey]],
        private: dict[str, list[X25519PrivateKey]] | None = None,
    ) -> None:
        self._public = {check_domain_name(d): list(keys) for d, keys in public.items()}
        self._private = {d: list(keys) for d, keys in (private or {}).items()}
        for domain, keys in self._private.items():
            if [_raw(k.public_key()) for k in keys] != [
                _raw(k) for k in self._public.get(domain, [])
            ]:
                raise ConfigurationError(
                    f"private and public keys of domain {domain!r} do not match"
                )
        self._lock = threading.Lock()

    @classmethod
    def generate(cls, domains: Sequence[str]) -> X25519KeyProvider:
        """A provider with a new key pair for each domain (private keys included)."""
        private = {d: [X25519PrivateKey.generate()] for d in domains}
        return cls({d: [k.public_key() for k in keys] for d, keys in private.items()}, private)

    def public_only(self) -> X25519KeyProvider:
        """The same keys without their private halves: can wrap, cannot unwrap."""
        return X25519KeyProvider({d: list(keys) for d, keys in self._public.items()})

    @classmethod
    def from_public_pem(cls, keys: dict[str, Sequence[bytes]]) -> X25519KeyProvider:
        """A public-only provider from PEM public keys, oldest version first, per domain."""
        public: dict[str, list[X25519PublicKey]] = {}
        for domain, pems in keys.items():
            loaded = [serialization.load_pem_public_key(pem) for pem in pems]
            if not all(isinstance(k, X25519PublicKey) for k in loaded):
                raise ConfigurationError(f"domain {domain!r}: not X25519 public keys")
            public[domain] = loaded  # type: ignore[assignment]
        return cls(public)

    @classmethod
    def from_private_pem(cls, keys: dict[str, Sequence[bytes]]) -> X25519KeyProvider:
        """A full provider from unencrypted PKCS#8 PEM private keys, oldest first, per domain."""
        private: dict[str, list[X25519PrivateKey]] = {}
        for domain, pems in keys.items():
            loaded = [serialization.load_pem_private_key(pem, password=None) for pem in pems]
            if not all(isinstance(k, X25519PrivateKey) for k in loaded):
                raise ConfigurationError(f"domain {domain!r}: not X25519 private keys")
            private[domain] = loaded  # type: ignore[assignment]
        return cls({d: [k.public_key() for k in keys] for d, keys in private.items()}, private)

    def public_pem(self, domain: str) -> list[bytes]:
        """The domain's public keys in PEM, oldest version first (safe to hand out)."""
        return [
            k.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for k in self._keys(domain)
        ]

    def private_pem(self, domain: str, *, unsafe_allow_export: bool = False) -> list[bytes]:
        """Export the domain's private keys (PKCS#8 PEM, unencrypted). A deliberate act."""
        if not unsafe_allow_export:
            raise KeyProviderError("exporting private keys needs unsafe_allow_export=True")
        if domain not in self._private:
            raise KeyProviderError(f"this provider holds no private key for domain {domain!r}")
        return [
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            for k in self._private[domain]
        ]

    # -- KeyProvider --------------------------------------------------------------------------

    def _keys(self, domain: str) -> list[X25519PublicKey]:
        keys = self._public.get(domain)
        if not keys:
            raise DomainError(f"X25519 provider holds no key for domain {domain!r}")
        return keys

    def _key_id(self, domain: str, version: int) -> str:
        fingerprint = hashlib.sha256(_raw(self._keys(domain)[version - 1])).hexdigest()[:16]
        return f"x25519:{domain}:{fingerprint}"

    def primary(self, domain: str) -> KeyRef:
        version = len(self._keys(domain))
        return KeyRef(domain, self._key_id(domain, version), version)

    def versions(self, domain: str) -> Sequence[KeyRef]:
        return [
            KeyRef(domain, self._key_id(domain, v), v)
            for v in range(1, len(self._keys(domain)) + 1)
        ]

    def rotate(self, domain: str) -> KeyRef:
        if domain not in self._private:
            raise KeyProviderError("only a provider holding the private keys can rotate")
        with self._lock:
            new = X25519PrivateKey.generate()
            self._private[domain].append(new)
            self._public[domain].append(new.public_key())
        return self.primary(domain)

    def _check(self, ref: KeyRef) -> X25519PublicKey:
        keys = self._keys(ref.domain)
        if not 1 <= ref.version <= len(keys) or ref.key_id != self._key_id(ref.domain, ref.version):
            raise KeyNotFoundError(
                f"KEK {ref.key_id} version {ref.version} is unknown to this provider"
            )
        return keys[ref.version - 1]

    def wrap(self, ref: KeyRef, data_key: bytes, *, context: bytes) -> bytes:
        recipient = _raw(self._check(ref))
        ephemeral = X25519PrivateKey.generate()
        ephemeral_raw = _raw(ephemeral.public_key())
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
        nonce = os.urandom(12)
        sealed = _derive(shared, ephemeral_raw, recipient).encrypt(nonce, data_key, context)
        return _VERSION + ephemeral_raw + nonce + sealed

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        public = self._check(ref)
        private = self._private.get(ref.domain)
        if private is None:
            raise KeyProviderError(
                f"this provider holds only the public key of domain {ref.domain!r}: it can encrypt "
                "into the domain but not decrypt"
            )
        if len(wrapped) != 1 + 32 + 12 + 32 + 16 or wrapped[:1] != _VERSION:
            raise KeyProviderError(f"wrapped data key for {ref.key_id} is malformed")
        ephemeral_raw, nonce, sealed = wrapped[1:33], wrapped[33:45], wrapped[45:]
        shared = private[ref.version - 1].exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
        try:
            return _derive(shared, ephemeral_raw, _raw(public)).decrypt(nonce, sealed, context)
        except InvalidTag:
            raise KeyProviderError(f"wrapped data key did not unwrap under {ref.key_id}") from None

    def __repr__(self) -> str:
        kind = "private" if self._private else "public-only"
        return f"X25519KeyProvider(domains={sorted(self._public)!r}, {kind})"
