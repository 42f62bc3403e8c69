"""An asymmetric key provider: DEKs wrapped to an X25519 public key.

A service that holds only the public key can encrypt into the domain (wrap new DEKs) but never
unwrap one, so it cannot read back what it wrote or anything else in the domain: the claims back
end stores a medical document a member uploads; only the medical unit, holding the private key,
reads it.

A public key is public: anyone who can write to the database could wrap a DEK of their own to it
and plant the row. So the unit (the holder of the private key) accepts only wrapped keys whose
origin it can authenticate, in one of two forms, and refuses the rest with
:class:`~vaultkit.errors.KeyAuthenticationError`:

``03``: made by the unit itself (its own DEKs, blind-index keys, the audit key)::

    key = HKDF-SHA256(private key, salt = R, info = "vaultkit x25519 unit wrap v1", 32 bytes)
    wrapped = 03 || nonce (12) || AES-256-GCM(key, nonce, DEK, aad = binding)

``04``: made by an encrypt-only writer holding a signing key the unit pins (data keys only)::

    ephemeral key pair (e, E); shared = X25519(e, recipient public key R)
    key = HKDF-SHA256(shared, salt = E || R, info = "vaultkit x25519 wrap v1", 32 bytes)
    body = 04 || writer id (8) || E (32) || nonce (12) || AES-256-GCM(key, nonce, DEK, aad = context)
    wrapped = body || Ed25519(writer key, "vaultkit x25519 writer v1" || binding || body) (64)

where ``binding = u16 len || KEK id || u32 KEK version || u16 len || wrap context`` (the wrap
context names domain, purpose and DEK id) and the writer id is the first 8 bytes of SHA-256 of the
writer's raw Ed25519 public key. Only the private-key holder can derive the ``03`` key, and only a
pinned writer can sign a ``04`` body; a writer's signature is accepted for data keys only, never
for named keys (the audit key, blind-index keys), which the unit alone makes.

``02`` is the unauthenticated form written before wrapped keys were authenticated
(``02 || E || nonce || sealed``, the ``04`` body without writer id and signature). The unit refuses it; after review an operator
re-authenticates such rows with :meth:`X25519KeyProvider.reauthenticate_legacy`.

Key versions: each domain has a list of key pairs; rotation adds one. Private keys stay in this
object (export with :meth:`X25519KeyProvider.private_pem`, deliberately named).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultkit._redact import NoPickle
from vaultkit.core.envelope import key_row_context, wrap_context
from vaultkit.errors import (
    ConfigurationError,
    DomainError,
    KeyAuthenticationError,
    KeyNotFoundError,
    KeyProviderError,
)
from vaultkit.keys.domains import check_domain_name
from vaultkit.keys.provider import KeyRef

if TYPE_CHECKING:
    from vaultkit.store import DataKeyRecord, KeyStore

__all__ = ["X25519KeyProvider"]

log = logging.getLogger("vaultkit")

_LEGACY: Final = b"\x02"
_UNIT: Final = b"\x03"
_WRITER: Final = b"\x04"
_INFO: Final = b"vaultkit x25519 wrap v1"
_UNIT_INFO: Final = b"vaultkit x25519 unit wrap v1"
_SIG_LABEL: Final = b"vaultkit x25519 writer v1"
# What a writer signs for its own audit chain starts with this (vaultkit.audit's labels), never
# with _SIG_LABEL: the signing function handed to the audit log signs nothing else.
_AUDIT_SIG_PREFIX: Final = b"vaultkit audit writer "
_DEK_SIZE: Final = 32
_SEALED: Final = _DEK_SIZE + 16
_WRITER_ID: Final = 8
_LEGACY_SIZE: Final = 1 + 32 + 12 + _SEALED  # 93
_UNIT_SIZE: Final = 1 + 12 + _SEALED  # 61
_WRITER_BODY: Final = 1 + _WRITER_ID + 32 + 12 + _SEALED  # 101
_WRITER_SIZE: Final = _WRITER_BODY + 64  # 165
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
_DATA_PURPOSE: Final = "data"


def _raw(public: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return public.public_bytes(*_RAW)


def _writer_id(public: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(_raw(public)).digest()[:_WRITER_ID]


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO).derive(
        shared
    )
    return AESGCM(key)


def _unit_cipher(private: X25519PrivateKey) -> AESGCM:
    # The raw private scalar is 32 uniformly random bytes: a sound HKDF input. The key exists only
    # in this frame and inside the returned AESGCM object.
    secret = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=_raw(private.public_key()),
        info=_UNIT_INFO,
    ).derive(secret)
    return AESGCM(key)


def _binding(ref: KeyRef, context: bytes) -> bytes:
    key_id = ref.key_id.encode("utf-8")
    return (
        struct.pack(">H", len(key_id))
        + key_id
        + struct.pack(">I", ref.version)
        + struct.pack(">H", len(context))
        + context
    )


def _exchange(private: X25519PrivateKey, public_raw: bytes) -> bytes:
    # A public key of small order makes the shared secret all zeros; cryptography refuses it with
    # ValueError (RFC 7748, section 6.1: implementations may check for the all-zero value).
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public_raw))
    except ValueError:
        raise KeyAuthenticationError(
            "X25519 exchange refused: the public key is of small order"
        ) from None


def _is_data_context(domain: str, context: bytes) -> bool:
    size = len(wrap_context(domain, bytes(16), _DATA_PURPOSE))
    return len(context) == size and wrap_context(domain, context[-16:], _DATA_PURPOSE) == context


def _check_public(domain: str, version: int, public: X25519PublicKey) -> None:
    try:
        X25519PrivateKey.generate().exchange(public)
    except ValueError:
        raise ConfigurationError(
            f"domain {domain!r}: X25519 public key version {version} is of small order "
            "(no shared secret can come from it)"
        ) from None


class X25519KeyProvider(NoPickle):
    """Key provider whose KEKs are X25519 key pairs; it may hold only the public halves.

    Build the unit's provider with :meth:`generate` (or :meth:`from_private_pem`) and pin the
    encrypt-only writers' Ed25519 public keys with ``writers=``; give each writer service
    :meth:`public_only` (or :meth:`from_public_pem`) with its own Ed25519 signing key. A
    public-only provider wraps and refuses to unwrap with :class:`KeyProviderError`.

    Args:
        public: per domain, the X25519 public keys, oldest version first.
        private: per domain, the matching private keys (the unit's provider).
        writers: the unit's pinned writers: name -> Ed25519 public key. Their signed data keys
            unwrap; nothing else made by a public-key holder does.
        signer: an encrypt-only writer's Ed25519 signing key; required for every domain whose
            private key this provider does not hold.

    Raises:
        ConfigurationError: keys do not match, a public key is of small order, a writer key is
            not Ed25519, or a public-only domain has no ``signer``.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        public: dict[str, list[X25519PublicKey]],
        private: dict[str, list[X25519PrivateKey]] | None = None,
        *,
        writers: Mapping[str, Ed25519PublicKey] | None = None,
        signer: Ed25519PrivateKey | None = None,
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
        for domain, versions in self._public.items():
            for version, public_key in enumerate(versions, 1):
                loaded: object = public_key
                if not isinstance(loaded, X25519PublicKey):
                    raise ConfigurationError(f"domain {domain!r}: not an X25519 public key")
                if domain not in self._private:
                    _check_public(domain, version, public_key)
        given: object = signer
        if given is not None and not isinstance(given, Ed25519PrivateKey):
            raise ConfigurationError("signer must be an Ed25519 private key")
        unsigned = sorted(d for d in self._public if d not in self._private)
        if unsigned and signer is None:
            raise ConfigurationError(
                f"an encrypt-only provider (domains {unsigned}) needs signer=, the writer's "
                "Ed25519 key that the unit pins: the unit refuses unsigned data keys"
            )
        self._signer = signer
        self._writers: dict[bytes, tuple[str, Ed25519PublicKey]] = {}
        for name, pinned in (writers or {}).items():
            checked: object = pinned
            if not isinstance(checked, Ed25519PublicKey):
                raise ConfigurationError(f"writer {name!r}: not an Ed25519 public key")
            self._writers[_writer_id(pinned)] = (str(name), pinned)
        self._lock = threading.Lock()

    @classmethod
    def generate(
        cls, domains: Sequence[str], *, writers: Mapping[str, Ed25519PublicKey] | None = None
    ) -> X25519KeyProvider:
        """A provider with a new key pair for each domain (private keys included)."""
        private = {d: [X25519PrivateKey.generate()] for d in domains}
        return cls(
            {d: [k.public_key() for k in keys] for d, keys in private.items()},
            private,
            writers=writers,
        )

    def public_only(self, *, signer: Ed25519PrivateKey) -> X25519KeyProvider:
        """The same keys without their private halves, for a writer signing with ``signer``.

        It can wrap data keys (signed, so the unit can tell them from planted ones) and cannot
        unwrap. Give the unit ``signer.public_key()`` in its ``writers=``.
        """
        return X25519KeyProvider({d: list(keys) for d, keys in self._public.items()}, signer=signer)

    def with_writers(self, writers: Mapping[str, Ed25519PublicKey]) -> X25519KeyProvider:
        """The same keys with ``writers`` pinned (replacing those pinned before)."""
        return X25519KeyProvider(
            {d: list(k) for d, k in self._public.items()},
            {d: list(k) for d, k in self._private.items()},
            writers=writers,
            signer=self._signer,
        )

    @classmethod
    def from_public_pem(
        cls, keys: dict[str, Sequence[bytes]], *, signer: Ed25519PrivateKey
    ) -> X25519KeyProvider:
        """A public-only provider from PEM public keys, oldest version first, per domain."""
        public: dict[str, list[X25519PublicKey]] = {}
        for domain, pems in keys.items():
            try:
                loaded = [serialization.load_pem_public_key(pem) for pem in pems]
            except (ValueError, TypeError):
                raise ConfigurationError(f"domain {domain!r}: unreadable PEM public key") from None
            if not all(isinstance(k, X25519PublicKey) for k in loaded):
                raise ConfigurationError(f"domain {domain!r}: not X25519 public keys")
            public[domain] = loaded  # type: ignore[assignment]
        return cls(public, signer=signer)

    @classmethod
    def from_private_pem(
        cls,
        keys: dict[str, Sequence[bytes]],
        *,
        writers: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> X25519KeyProvider:
        """A full provider from unencrypted PKCS#8 PEM private keys, oldest first, per domain."""
        private: dict[str, list[X25519PrivateKey]] = {}
        for domain, pems in keys.items():
            try:
                loaded = [serialization.load_pem_private_key(pem, password=None) for pem in pems]
            except (ValueError, TypeError):
                raise ConfigurationError(f"domain {domain!r}: unreadable PEM private key") from None
            if not all(isinstance(k, X25519PrivateKey) for k in loaded):
                raise ConfigurationError(f"domain {domain!r}: not X25519 private keys")
            private[domain] = loaded  # type: ignore[assignment]
        return cls(
            {d: [k.public_key() for k in keys] for d, keys in private.items()},
            private,
            writers=writers,
        )

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

    # -- audit --------------------------------------------------------------------------------

    def audit_signer(self, domain: str) -> tuple[Ed25519PublicKey, Callable[[bytes], bytes]] | None:
        """An encrypt-only writer's key for its own audit chain: public key and signing function.

        ``None`` when this provider holds ``domain``'s private key (the unit, which keeps its
        chain under the audit key). A :class:`~vaultkit.Vault` whose audit domain is
        encrypt-only here logs into the writer's own chain (:meth:`AuditLog.of_writer
        <vaultkit.audit.AuditLog.of_writer>`), signed with ``signer``, which the unit verifies
        with the key it pins in ``writers=``. The function signs audit-chain messages only.
        """
        self._keys(domain)
        signer = self._signer
        if domain in self._private or signer is None:
            return None

        def sign(data: bytes) -> bytes:
            if not data.startswith(_AUDIT_SIG_PREFIX):
                raise KeyProviderError("the audit signer signs audit-chain links only")
            return signer.sign(data)

        return signer.public_key(), sign

    def pinned_writers(self) -> dict[str, Ed25519PublicKey]:
        """The writers this unit pins (name -> Ed25519 public key), whose audit chains it checks."""
        return {name: key for name, key in self._writers.values()}

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
        """Wrap a DEK: as the unit's own (``03``) with the private key, else writer-signed (``04``).

        Raises:
            KeyProviderError: a writer asked to wrap anything but a data key of this domain.
        """
        public = self._check(ref)
        if len(data_key) != _DEK_SIZE:
            raise KeyProviderError("the X25519 provider wraps 32-byte data keys only")
        private = self._private.get(ref.domain)
        if private is not None:
            nonce = os.urandom(12)
            cipher = _unit_cipher(private[ref.version - 1])
            return _UNIT + nonce + cipher.encrypt(nonce, data_key, _binding(ref, context))
        signer = self._signer
        if signer is None:  # pragma: no cover - refused by the constructor
            raise KeyProviderError("an encrypt-only provider needs a signer")
        if not _is_data_context(ref.domain, context):
            raise KeyProviderError(
                "an encrypt-only provider wraps data keys only; blind-index and audit keys are "
                f"made by the holder of the private key of domain {ref.domain!r}"
            )
        recipient = _raw(public)
        ephemeral = X25519PrivateKey.generate()
        ephemeral_raw = _raw(ephemeral.public_key())
        shared = _exchange(ephemeral, recipient)
        nonce = os.urandom(12)
        sealed = _derive(shared, ephemeral_raw, recipient).encrypt(nonce, data_key, context)
        body = _WRITER + _writer_id(signer.public_key()) + ephemeral_raw + nonce + sealed
        return body + signer.sign(_SIG_LABEL + _binding(ref, context) + body)

    def unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        """Unwrap a DEK made by this unit or signed by a pinned writer.

        Raises:
            KeyProviderError: this provider holds only the public key.
            KeyAuthenticationError: the wrapped key was made by neither (planted, altered, signed
                by an unknown writer, a writer's named key, or the unauthenticated ``02`` form).
        """
        return self._unwrap(ref, wrapped, context=context, legacy=False)

    def _unwrap(self, ref: KeyRef, wrapped: bytes, *, context: bytes, legacy: bool) -> bytes:
        public = self._check(ref)
        keys = self._private.get(ref.domain)
        if keys is None:
            raise KeyProviderError(
                f"this provider holds only the public key of domain {ref.domain!r}: it can encrypt "
                "into the domain but not decrypt"
            )
        private = keys[ref.version - 1]
        kind = wrapped[:1]
        if kind == _UNIT and len(wrapped) == _UNIT_SIZE:
            try:
                return _unit_cipher(private).decrypt(
                    wrapped[1:13], wrapped[13:], _binding(ref, context)
                )
            except InvalidTag:
                raise KeyAuthenticationError(
                    f"wrapped data key under {ref.key_id} was not made by this unit"
                ) from None
        if kind == _WRITER and len(wrapped) == _WRITER_SIZE:
            body, signature = wrapped[:_WRITER_BODY], wrapped[_WRITER_BODY:]
            writer = self._writers.get(body[1 : 1 + _WRITER_ID])
            if writer is None:
                raise KeyAuthenticationError(
                    f"wrapped data key under {ref.key_id} is signed by a writer this unit does "
                    "not pin"
                )
            name, writer_key = writer
            try:
                writer_key.verify(signature, _SIG_LABEL + _binding(ref, context) + body)
            except InvalidSignature:
                raise KeyAuthenticationError(
                    f"wrapped data key under {ref.key_id} does not carry a valid signature of "
                    f"writer {name!r}"
                ) from None
            if not _is_data_context(ref.domain, context):
                raise KeyAuthenticationError(
                    f"writer {name!r} signed a key that is not a data key of domain "
                    f"{ref.domain!r}; only the unit makes named keys"
                )
            return self._open_sealed(ref, public, private, body[1 + _WRITER_ID :], context)
        if kind == _LEGACY and len(wrapped) == _LEGACY_SIZE:
            if not legacy:
                raise KeyAuthenticationError(
                    f"wrapped data key under {ref.key_id} is in the unauthenticated form of "
                    "earlier vaultkit versions (02); review the row and re-authenticate it "
                    "(X25519KeyProvider.reauthenticate_legacy)"
                )
            return self._open_sealed(ref, public, private, wrapped[1:], context)
        raise KeyAuthenticationError(f"wrapped data key for {ref.key_id} is malformed")

    @staticmethod
    def _open_sealed(
        ref: KeyRef,
        public: X25519PublicKey,
        private: X25519PrivateKey,
        rest: bytes,
        context: bytes,
    ) -> bytes:
        ephemeral_raw, nonce, sealed = rest[:32], rest[32:44], rest[44:]
        shared = _exchange(private, ephemeral_raw)
        try:
            return _derive(shared, ephemeral_raw, _raw(public)).decrypt(nonce, sealed, context)
        except InvalidTag:
            raise KeyAuthenticationError(
                f"wrapped data key did not unwrap under {ref.key_id}"
            ) from None

    # -- migration ----------------------------------------------------------------------------

    def legacy_rows(self, store: KeyStore, domain: str) -> list[DataKeyRecord]:
        """The domain's key rows still in the unauthenticated ``02`` form, for review.

        Any holder of the public key could have written such a row. Compare them with what the
        unit and its writers are known to have made (a backup of the key table, the creation
        times, the list taken before the upgrade) before :meth:`reauthenticate_legacy`.
        """
        from vaultkit.store import DekState

        self._keys(domain)
        return [
            r
            for r in store.records(domain=domain)
            if r.state is not DekState.DESTROYED
            and r.wrapped[:1] == _LEGACY
            and len(r.wrapped) == _LEGACY_SIZE
        ]

    def reauthenticate_legacy(
        self,
        store: KeyStore,
        records: Iterable[DataKeyRecord],
        *,
        unsafe_trust_legacy: bool = False,
    ) -> int:
        """Re-wrap reviewed ``02`` rows as this unit's own (``03``); return how many changed.

        Each row is replaced with a compare-and-set against the reviewed record, so a row that
        changed after the review is left alone (and not counted).

        Warning:
            Whatever these rows hold becomes the unit's own key: a planted data key makes the
            values under it genuine, a planted audit key lets its maker rewrite the audit log.
            Pass only rows you have reviewed, with ``unsafe_trust_legacy=True``.

        Raises:
            KeyProviderError: ``unsafe_trust_legacy`` is not set, or a row does not unwrap.
            KeyStoreError: the store could not be written.
        """
        if not unsafe_trust_legacy:
            raise KeyProviderError(
                "re-authenticating unauthenticated key rows needs unsafe_trust_legacy=True, "
                "after reviewing them"
            )
        done = 0
        for record in records:
            if record.wrapped[:1] != _LEGACY:
                continue
            ref = KeyRef(record.domain, record.kek_id, record.kek_version)
            context = key_row_context(record.domain, record.dek_id, record.purpose, record.name)
            wrapped = self.wrap(
                ref,
                self._unwrap(ref, record.wrapped, context=context, legacy=True),
                context=context,
            )
            if store.rewrap(
                record, kek_id=record.kek_id, kek_version=record.kek_version, wrapped=wrapped
            ):
                done += 1
                log.warning(
                    "re-authenticated legacy %s key row %s of domain %s as the unit's own",
                    record.purpose,
                    record.dek_id.hex(),
                    record.domain,
                )
        return done

    def __repr__(self) -> str:
        kind = "private" if self._private else "public-only"
        return (
            f"X25519KeyProvider(domains={sorted(self._public)!r}, {kind}, "
            f"writers={sorted(n for n, _ in self._writers.values())!r})"
        )
