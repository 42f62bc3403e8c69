"""Every exception vaultkit raises.

Messages may name a domain, a key id, a wire version, a column, lengths and counts. They never
carry plaintext, ciphertext, key bytes, master keys, passwords or a provider's raw response.
Wrong argument *types* raise the built-in :class:`TypeError`, as in pyca/cryptography.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "AudienceError",
    "AuditError",
    "ConfigurationError",
    "ConflictError",
    "DecryptionError",
    "DomainError",
    "EncodingError",
    "ExportRefusedError",
    "KeyAuthenticationError",
    "KeyNotFoundError",
    "KeyProviderError",
    "KeyStoreError",
    "PasswordError",
    "PasswordMismatchError",
    "QueryError",
    "RetentionExpiredError",
    "SubjectErasedError",
    "UnsupportedFormatError",
    "ValueErasedError",
    "VaultkitDeprecationWarning",
    "VaultkitError",
    "WeakPasswordError",
]

#: The one message every authentication failure carries, whatever went wrong.
DECRYPTION_FAILED = "ciphertext could not be authenticated"


class VaultkitError(Exception):
    """Base of every vaultkit error; never raised directly."""


class ConfigurationError(VaultkitError):
    """The vault, a provider or a key store is wired wrongly; raised at construction time."""


class ConflictError(VaultkitError):
    """The database kept aborting a transaction on a conflict with another one (deadlock,
    serialization failure, lock timeout) through bounded retries; nothing of it was written."""


class KeyProviderError(VaultkitError):
    """A key provider is unreachable, refused the request, or its key material is unusable."""


class KeyNotFoundError(KeyProviderError):
    """A key id or key version is unknown to the provider."""


class KeyAuthenticationError(KeyProviderError):
    """A wrapped key's origin is not authenticated: neither the key holder nor a pinned writer made it.

    Raised by providers that tell their own wrapped keys from planted ones (the X25519 provider).
    A vault turns it into :class:`DecryptionError` for values, and refuses named keys with it.
    """


class KeyStoreError(VaultkitError):
    """The data-key store cannot be read or written, or holds rows this release cannot read."""


class DomainError(VaultkitError):
    """A key domain is unknown, badly named, or not served by the configured provider."""


class DecryptionError(VaultkitError):
    """A value could not be authenticated.

    Bad tag, truncation, wrong context, wrong domain, unknown or destroyed data key: all raise this
    one error with one fixed message, so that the error itself tells an attacker nothing.
    """

    def __init__(self, message: str = DECRYPTION_FAILED) -> None:
        super().__init__(message)


class UnsupportedFormatError(DecryptionError):
    """The value carries a wire-format version or suite this release cannot read."""


#: The message of each :class:`ValueErasedError` reason (fixed: no subject, no value, no key).
_ERASED_MESSAGES = {
    "erasure": "the value's key was destroyed: its subject was erased",
    "retention": "the value's key was destroyed: its retention period is over",
    "destroyed": "the value's key was destroyed",
}


class ValueErasedError(DecryptionError):
    """The value's DEK was destroyed, or its retention deadline has passed: a key-store fact.

    Raised only when the key store holds the DEK's row as destroyed (or past its deadline); a
    DEK id the key store does not know stays the opaque :class:`DecryptionError`. The value is
    unreadable for good. The message is fixed per reason and names no subject.

    Attributes:
        reason: ``"erasure"`` (the subject was erased), ``"retention"`` (the retention period
            is over, whether or not a sweep has destroyed the key yet) or ``"destroyed"`` (the
            key was destroyed otherwise, such as ``vaultkit keys destroy``).
        domain: the key domain of the DEK, or ``None``.
        dek_id: the id of the DEK (it is also in the value's header), or ``None``.

    .. versionadded:: 0.3.0
    """

    def __init__(
        self,
        reason: str = "destroyed",
        *,
        domain: str | None = None,
        dek_id: bytes | None = None,
        message: str | None = None,
    ) -> None:
        if reason not in _ERASED_MESSAGES:
            reason = "destroyed"
        super().__init__(message or _ERASED_MESSAGES[reason])
        self.reason = reason
        self.domain = domain
        self.dek_id = dek_id

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled (to another process) with its reason, domain and DEK id, whatever the class.
        return (
            _rebuild_erased,
            (type(self), self.reason, self.domain, self.dek_id, str(self)),
        )


def _rebuild_erased(
    cls: type[ValueErasedError],
    reason: str,
    domain: str | None,
    dek_id: bytes | None,
    message: str,
) -> ValueErasedError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.reason, error.domain, error.dek_id = reason, domain, dek_id
    return error


class SubjectErasedError(ValueErasedError):
    """The value's subject was erased (reason ``"erasure"``).

    Also raised by a write for a subject whose writes are fenced (an erasure was requested);
    :meth:`Vault.allow_subject` lifts the fence, with a fresh key that decrypts nothing
    written before.

    .. versionadded:: 0.3.0
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        domain: str | None = None,
        dek_id: bytes | None = None,
    ) -> None:
        super().__init__("erasure", domain=domain, dek_id=dek_id, message=message)


class RetentionExpiredError(ValueErasedError):
    """The retention period of the value's DEK is over (reason ``"retention"``); its key is never
    unwrapped again, whether or not a sweep has destroyed it yet.

    .. versionadded:: 0.3.0
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        domain: str | None = None,
        dek_id: bytes | None = None,
    ) -> None:
        super().__init__("retention", domain=domain, dek_id=dek_id, message=message)


class AccessDeniedError(VaultkitError):
    """The acting principal lacks the grant for a restricted domain."""


class AuditError(VaultkitError):
    """An audit event could not be written or read; the access it was for does not happen."""


class ExportRefusedError(VaultkitError):
    """A research export was refused before anything was written: a class of the declared
    quasi-identifiers is smaller than the spec's k, or a dataset key is destroyed. The message
    names counts and column names, never a value."""


class QueryError(VaultkitError):
    """An SQL operator was used that has no meaning on randomised ciphertext."""


class EncodingError(VaultkitError, TypeError, ValueError):
    """A value cannot be encoded for encryption: a wrong type, a lone surrogate, NaN in JSON, JSON
    nested too deep, or a value its column's codec refuses.

    The message names the column (where there is one) and the kind of failure, never the value. It
    is also a ``TypeError`` and a ``ValueError``, the built-in errors such input raised before.
    """


class AudienceError(VaultkitError):
    """An identifier cannot be normalised for an audience upload."""


class PasswordError(VaultkitError):
    """Base of password policy and password hashing errors."""


class WeakPasswordError(PasswordError):
    """The password policy rejected a password; carries feedback only, never the password.

    Attributes:
        result: the policy's verdict (a ``PolicyResult``): score, reasons, warning, suggestions.
    """

    def __init__(self, result: object) -> None:
        reasons = ", ".join(getattr(result, "reasons", ())) or "rejected"
        super().__init__(f"password rejected by the policy: {reasons}")
        self.result = result


class PasswordMismatchError(PasswordError):
    """A password did not match the stored hash."""


class VaultkitDeprecationWarning(UserWarning):
    """A vaultkit name or default that goes away in the release its message names.

    A ``UserWarning``, not a ``DeprecationWarning``, so that it is shown by default (as pyca's
    ``CryptographyDeprecationWarning``).
    """
