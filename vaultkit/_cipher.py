"""The two hot paths, seal and open, and :class:`FieldCipher`, which binds them to one column.

Nothing else lives here. Sealing asks the keyring for the domain's active DEK only when its budget
is spent; opening finds the DEK by the value's whole header in the cache and asks the keyring
(:meth:`~vaultkit._keyring.Keyring.resolve`) only on a miss. The grant checks come from the
:class:`~vaultkit._access.Policy`, the audit events go to the recorder before plaintext leaves,
and every byte is framed by :mod:`vaultkit.core.aead` and :mod:`vaultkit.core.wire`.

The cipher holds no lock: it reads the keyring's maps (which the keyring changes in place) and
hands every change to the keyring or the recorder, each under its own lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from cryptography.exceptions import InvalidTag

from vaultkit._access import Denied, Policy, SealedValue, current_scope
from vaultkit._codec import STR, STR_TAG, PlainValue, decode_value, encode_value
from vaultkit._offload import call as _call
from vaultkit._redact import NoPickle
from vaultkit.core import aead, wire
from vaultkit.errors import AuditError, ConfigurationError, DecryptionError

if TYPE_CHECKING:
    from vaultkit._keyring import Keyring
    from vaultkit._recorder import AuditRecorder

__all__ = ["Decrypted", "FieldCipher", "as_bytes"]

_H: Final = wire.HEADER_SIZE
_P: Final = wire.PREFIX_SIZE
_NONCE: Final = wire.NONCE_SIZE
_MIN: Final = wire.MIN_VALUE_SIZE
#: What decryption returns: the value, or a SealedValue for a reader without the domain's grant.
Decrypted = PlainValue | SealedValue
#: ``seal(plaintext)`` and ``open(blob)`` of one column, as :meth:`FieldCipher.sealer` and
#: :meth:`FieldCipher.opener` return them.
Sealer = Callable[[bytes], bytes]
Opener = Callable[[bytes], Decrypted]
_monotonic = time.monotonic
_seal = aead.seal
_open = aead.open_
_urandom = os.urandom


def as_bytes(blob: object) -> bytes:
    """A ciphertext as ``bytes`` (from bytes, bytearray or memoryview)."""
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, bytearray | memoryview):
        return bytes(blob)
    raise TypeError(f"ciphertext must be bytes, not {type(blob).__name__}")


def _unaudited(action: str, domain: str, where: Any, dek_id: bytes | None) -> None:
    # Never reached: a vault with an audited domain always has a recorder. Fail closed anyway.
    raise AuditError(f"domain {domain!r} is audited but this vault has no audit log")


def _decode(plaintext: bytes) -> PlainValue:
    """The value of an authenticated plaintext; DecryptionError if it does not decode."""
    if plaintext[0] == STR:  # str, the common case, decoded here without a call
        try:
            return plaintext[1:].decode("utf-8")
        except UnicodeDecodeError:
            pass
    else:
        try:
            return decode_value(plaintext)
        except DecryptionError:
            pass
    # An authenticated plaintext that does not decode: raised here, after the except blocks,
    # so that neither this frame nor a chained error (UnicodeDecodeError keeps the bytes) holds
    # it.
    del plaintext
    raise DecryptionError


class Cipher(NoPickle):
    """Seals and opens values: the hot paths of a vault.

    Args:
        keyring: where active DEKs and cached keys come from.
        policy: the grant checks.
        recorder: the audit recorder, or ``None`` when no domain is audited.
    """

    __slots__ = ("_active", "_by_header", "_keyring", "_max_uses", "_policy", "_record")

    def __init__(self, keyring: Keyring, policy: Policy, recorder: AuditRecorder | None) -> None:
        self._keyring = keyring
        self._policy = policy
        # Direct references, so that each value costs the same lookups as a single class would:
        # the keyring changes these two maps in place, never replaces them.
        self._active = keyring.active
        self._by_header = keyring.cache.by_header
        self._max_uses = keyring.max_uses
        self._record: Callable[[str, str, Any, bytes | None], None] = (
            recorder.record if recorder is not None else _unaudited
        )

    def seal(self, domain: str, plaintext: bytes, fields: bytes, where: Any = None) -> bytes:
        """Encrypt an encoded plaintext in ``domain`` under the context entries ``fields``."""
        active = self._active.get(domain)
        if active is None or next(active.uses) > self._max_uses or active.deadline < _monotonic():
            # Bucket domains always come here (their keys are not in ``_active``).
            active = self._keyring.bucket_active(domain) or _call(self._keyring.next_active, domain)
        if active.gated:
            self._policy.check_encrypt(domain)
        if active.audited:
            self._record("write", domain, where, active.dek_id)
        return _seal(active.cipher, plaintext, active.aad_prefix + fields, active.header)

    def seal_subject(
        self, domain: str, subject: object, plaintext: bytes, fields: bytes, where: Any = None
    ) -> bytes:
        """Encrypt an encoded plaintext under the key of ``subject`` in a subject-scoped domain."""
        active = self._keyring.subject_active(domain, subject)
        if active.gated:
            self._policy.check_encrypt(domain)
        if active.audited:
            self._record("write", domain, where, active.dek_id)
        return _seal(active.cipher, plaintext, active.aad_prefix + fields, active.header)

    def open(self, blob: bytes, fields: bytes, domain: str | None, where: Any = None) -> Decrypted:
        """Decrypt a stored value (of ``domain``, if given) under the context entries ``fields``."""
        if len(blob) < _MIN:
            raise DecryptionError
        key = self._by_header.get(blob[:_H])
        if key is None or key.expires_at < _monotonic():
            try:
                key = self._keyring.resolve(blob, domain)
            except Denied as denied:
                return self.deny(denied.domain, where)
        else:
            key.referenced = True
        if domain is not None and domain != key.domain:
            raise DecryptionError
        if key.restricted and key.domain not in current_scope().principal.grants:
            return self.deny(key.domain, where)
        if key.audited:
            # Logged before decrypting, so that when the event cannot be written the error is
            # raised while no frame holds plaintext (reporters that capture locals would ship it).
            self._record("decrypt", key.domain, where, key.dek_id)
        return _decode(_open(key.cipher, blob, key.aad_prefix + fields, _H))

    def subject_scoped(self, domain: str) -> bool:
        """Whether ``domain`` has subject keys (each write names its subject)."""
        return self._keyring.scope_of(domain) == "subject"

    def deny(self, domain: str, where: Any = None) -> SealedValue:
        """A read of ``domain`` without its grant: audited, then sealed (or the domain's error)."""
        if domain in self._policy.audited:
            self._record("denied", domain, where, None)
        return self._policy.sealed(domain)

    def admit(self, domain: str, where: Any) -> SealedValue | None:
        """The rules of a decrypt for a legacy plaintext value (see FieldCipher.admit_plaintext)."""
        if self._policy.is_denied(domain):
            return self.deny(domain, where)
        if domain in self._policy.audited:
            self._record("decrypt", domain, where, None)
        return None

    def sealer(self, domain: str, fields: bytes, where: Any) -> Sealer:
        """:meth:`seal` with domain, context entries and audit location bound, as a closure."""
        active_of, max_uses, next_active, bucket_active = (
            self._active.get,
            self._max_uses,
            self._keyring.next_active,
            self._keyring.bucket_active,
        )
        check, record, aad_fields = self._policy.check_encrypt, self._record, fields

        def seal(plaintext: bytes) -> bytes:
            active = active_of(domain)
            if active is None or next(active.uses) > max_uses or active.deadline < _monotonic():
                active = bucket_active(domain) or _call(next_active, domain)
            if active.gated:
                check(domain)
            if active.audited:
                record("write", domain, where, active.dek_id)
            # core.aead.seal inlined (one call less per value, measured); tests/unit/test_split.py
            # checks that both give the same bytes for the same nonce.
            nonce = _urandom(_NONCE)
            aad = active.aad_prefix + aad_fields
            return active.header + nonce + active.cipher.encrypt(nonce, plaintext, aad)

        return seal

    def opener(self, domain: str, fields: bytes, where: Any) -> Opener:
        """:meth:`open` with domain, context entries and audit location bound, as a closure."""
        key_of, resolve, deny = self._by_header.get, self._keyring.resolve, self.deny
        record, aad_fields = self._record, fields

        def open_(blob: bytes) -> Decrypted:
            if len(blob) < _MIN:
                raise DecryptionError
            key = key_of(blob[:_H])
            if key is None or key.expires_at < _monotonic():
                try:
                    key = resolve(blob, domain)
                except Denied as denied:
                    return deny(denied.domain, where)
            else:
                key.referenced = True
            if domain != key.domain:
                raise DecryptionError
            if key.restricted and domain not in current_scope().principal.grants:
                return deny(domain, where)
            if key.audited:
                record("decrypt", domain, where, key.dek_id)
            # core.aead.open_ and _decode inlined (two calls less per value, measured; checked
            # against them in tests/unit/test_split.py). The length was checked above.
            try:
                plaintext = key.cipher.decrypt(blob[_H:_P], blob[_P:], key.aad_prefix + aad_fields)
            except InvalidTag:
                raise DecryptionError from None
            if plaintext[0] == STR:  # str, the common case
                try:
                    return plaintext[1:].decode("utf-8")
                except UnicodeDecodeError:
                    pass
            else:
                try:
                    return decode_value(plaintext)
                except DecryptionError:
                    pass
            # Raised after the except blocks, with the plaintext gone from this frame (see
            # _decode).
            del plaintext
            raise DecryptionError

        return open_


class FieldCipher:
    """Encrypts and decrypts the values of one column; made by :meth:`Vault.field`.

    Holds no key material of its own and is safe to share between threads. The schema, table and
    column names are bound as separate context entries (:func:`vaultkit.core.wire.cell_context`).
    """

    __slots__ = (
        "_cipher",
        "_domain",
        "_fixed",
        "_open_fixed",
        "_pad",
        "_row_bound",
        "_seal_fixed",
        "_template",
        "_where",
        "column",
        "schema",
        "table",
    )

    def __init__(
        self,
        cipher: Cipher,
        domain: str,
        *,
        table: str,
        column: str,
        row_bound: bool,
        pad_to: int | None = None,
        schema: str | None = None,
    ) -> None:
        try:
            fixed = wire.cell_context(table=table, column=column, schema=schema)
        except ValueError as exc:
            raise ConfigurationError(f"cannot bind a column to this name: {exc}") from None
        self._cipher = cipher
        self._domain = domain
        self._pad = pad_to
        self.schema = schema
        self.table = table
        self.column = column
        # For the audit log (built once, not per value): the table as ``schema.table`` when it has
        # a schema. Display only; the associated data keeps the names apart.
        self._where = (table if schema is None else f"{schema}.{table}", column, None)
        self._row_bound = row_bound
        self._fixed = wire.context_fields(fixed)
        # A row-bound value's entries are these plus "row": encoded once, filled per value.
        self._template = wire.context_template(fixed, wire.CONTEXT_ROW)
        self._seal_fixed = cipher.sealer(domain, self._fixed, self._where)
        self._open_fixed = cipher.opener(domain, self._fixed, self._where)

    def _fields(self, row: wire.ContextValue | None) -> bytes:
        if not self._row_bound:
            if row is not None:
                raise TypeError(f"{self._where[0]}.{self.column} is not row-bound; pass no row")
            return self._fixed
        if row is None:
            raise ConfigurationError(
                f"{self._where[0]}.{self.column} is row-bound: a row key is required"
            )
        return self._template.fill(row)

    def sealer(self) -> Sealer:
        """Return ``seal(encoded) -> bytes`` for values of this column without a row key.

        ``encoded`` is the value's typed encoding (:mod:`vaultkit._codec`; a str is
        ``b"\\x01" + text.encode("utf-8")``). The callable is what :meth:`encrypt` runs, with the
        column's domain and context bound once: the fast path of the SQLAlchemy column types.

        Raises:
            ConfigurationError: the column is row-bound (use :meth:`encrypt` with ``row=``), or
                its domain has subject keys (use :meth:`encrypt` with ``subject=``).

        .. versionadded:: 0.2.0
        """
        if self._row_bound:
            raise ConfigurationError(f"{self._where[0]}.{self.column} is row-bound: no sealer")
        if self._cipher.subject_scoped(self._domain):
            raise ConfigurationError(
                f"{self._where[0]}.{self.column} is in domain {self._domain!r}, which has subject "
                "keys: no sealer (use encrypt(value, subject=...))"
            )
        return self._seal_fixed

    def opener(self) -> Opener:
        """Return ``open(blob) -> value`` for values of this column without a row key.

        ``blob`` must be ``bytes``. The callable is what :meth:`decrypt` runs, with the column's
        domain and context bound once.

        Raises:
            ConfigurationError: the column is row-bound (use :meth:`decrypt` with ``row=``).

        .. versionadded:: 0.2.0
        """
        if self._row_bound:
            raise ConfigurationError(f"{self._where[0]}.{self.column} is row-bound: no opener")
        return self._open_fixed

    def encrypt(
        self,
        value: PlainValue,
        *,
        row: wire.ContextValue | None = None,
        subject: str | int | UUID | None = None,
    ) -> bytes:
        """Encrypt one value of this column (``row`` is required when the column is row-bound).

        Args:
            value: the value.
            row: the row key of a row-bound column.
            subject: the member the value belongs to; required when the column's domain has
                ``dek_scope="subject"``, refused otherwise.

        Raises:
            SubjectErasedError: the subject's writes are fenced (it was erased).

        .. versionchanged:: 0.3.0 ``subject=``.
        """
        if subject is not None:
            where = (self._where[0], self.column, row)
            return self._cipher.seal_subject(
                self._domain,
                subject,
                encode_value(value, pad_to=self._pad),
                self._fields(row),
                where,
            )
        if row is None and not self._row_bound:
            if type(value) is str and self._pad is None:
                try:  # the common case, encoded here without a call (see vaultkit._codec)
                    return self._seal_fixed(STR_TAG + value.encode("utf-8"))
                except UnicodeEncodeError:
                    pass  # a lone surrogate: encode_value raises a clean error below
            return self._seal_fixed(encode_value(value, pad_to=self._pad))
        fields = self._fields(row)
        return self._cipher.seal(
            self._domain,
            encode_value(value, pad_to=self._pad),
            fields,
            (self._where[0], self.column, row),
        )

    def decrypt(self, blob: bytes, *, row: wire.ContextValue | None = None) -> Decrypted:
        """Decrypt one value of this column."""
        if row is None and not self._row_bound:
            return self._open_fixed(blob if type(blob) is bytes else as_bytes(blob))
        fields = self._fields(row)
        return self._cipher.open(
            blob if type(blob) is bytes else as_bytes(blob),
            fields,
            self._domain,
            (self._where[0], self.column, row),
        )

    def admit_plaintext(self, *, row: wire.ContextValue | None = None) -> SealedValue | None:
        """Apply the rules of a decrypt to a legacy plaintext value of this column (migration mode).

        A principal without the grant of a restricted domain gets what a decrypt would give it
        (a :class:`SealedValue`, or :class:`AccessDeniedError` where the domain says so, audited
        as ``denied``); in an audited domain the read is logged as a ``decrypt`` event without a
        DEK id, written before the value is handed out.

        Returns:
            ``None`` when the value may be handed out, else the sealed value to return instead.

        Raises:
            AccessDeniedError: no grant, and the domain raises for readers without one.
            AuditError: the audit event could not be written.
        """
        where = self._where if row is None else (self._where[0], self.column, row)
        return self._cipher.admit(self._domain, where)

    def deny(self, *, row: wire.ContextValue | None = None) -> SealedValue:
        """Answer a reader of this column without the grant as a decrypt would: the refusal is
        audited (``denied``), then a :class:`SealedValue` is returned, or
        :class:`AccessDeniedError` raised where the domain says so."""
        return self._cipher.deny(self._domain, (self._where[0], self.column, row))

    @property
    def domain(self) -> str:
        """The key domain of this column."""
        return self._domain

    def __repr__(self) -> str:
        schema = f", schema={self.schema!r}" if self.schema is not None else ""
        return (
            f"FieldCipher(domain={self._domain!r}{schema}, table={self.table!r}, "
            f"column={self.column!r})"
        )
