"""Helpers of subject- and bucket-scoped keys: subject bytes, bucket bounds, wrap contexts,
deadlines and the erased-value errors. No state, no lock, no key material kept.

A scoped DEK is wrapped in process (AES-256-GCM, the providers' wrapped-key layout) under its
domain's wrapping key, itself wrapped by the domain's KEK through the provider. The wrap's
associated data binds, after the ordinary wrap context, the scope, the subject reference and
the bucket end: a database writer who moves a bucket's end, or a key to another subject or
scope, makes the key unreadable rather than longer-lived.
"""

from __future__ import annotations

import datetime as dt
import os
import unicodedata
import uuid
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit.core import wire
from vaultkit.core.envelope import wrap_context
from vaultkit.errors import RetentionExpiredError, SubjectErasedError, ValueErasedError
from vaultkit.keys.domains import KeyDomain, Retention
from vaultkit.store import DataKeyRecord

__all__ = [
    "bucket_bounds",
    "canonical_subject",
    "deadline",
    "erased_error",
    "fixed_deadline",
    "record_context",
    "scoped_context",
    "subject_deadline",
    "unwrap",
    "whole_seconds",
    "wrap",
    "wrapping_name",
]

_LABEL: Final = wire.encode_field("vaultkit scoped dek v1")
#: Layout of a locally wrapped DEK, as the providers' (``keys/_kekwrap``):
#: ``01 || nonce (12) || encrypted DEK (32) || tag (16)``.
_WRAP_VERSION: Final = b"\x01"
_NONCE: Final = 12
WRAPPED_SIZE: Final = 1 + _NONCE + 32 + 16
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def canonical_subject(subject: object) -> bytes:
    """The bytes a subject reference is computed from: ``str(subject)`` for int and UUID, and
    text in Unicode normal form NFC (so ``"josé"`` typed either way is one member), UTF-8.

    No other normalisation: case, spaces and leading zeros of text are kept (``" 17"`` and
    ``"17"`` are two subjects; 17 and ``"17"`` one).
    """
    if isinstance(subject, bool) or not isinstance(subject, str | int | uuid.UUID):
        raise TypeError(f"a subject must be str, int or UUID, not {type(subject).__name__}")
    text = unicodedata.normalize("NFC", subject) if isinstance(subject, str) else str(subject)
    if not text:
        raise ValueError("a subject must not be the empty string")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a subject must be valid Unicode (no lone surrogates)") from None


def bucket_bounds(at: dt.datetime, width: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
    """The start and end of the bucket of width ``width`` (whole seconds) holding ``at``;
    buckets are aligned on the Unix epoch, ends are exclusive and whole seconds."""
    seconds = int(width.total_seconds())
    offset = int((at - _EPOCH) // dt.timedelta(seconds=1))
    start = offset - offset % seconds
    begin = _EPOCH + dt.timedelta(seconds=start)
    return begin, begin + dt.timedelta(seconds=seconds)


def _seconds(at: dt.datetime | None) -> str:
    return "" if at is None else str(int((at - _EPOCH) // dt.timedelta(seconds=1)))


def scoped_context(
    domain: str,
    dek_id: bytes,
    *,
    scope: str | None,
    subject_ref: str | None,
    not_after: dt.datetime | None,
    destroy_at: dt.datetime | None = None,
    created_at: dt.datetime | None = None,
) -> bytes:
    """The associated data of a scoped DEK's local wrap.

    Binds the scope, the subject reference, a bucket key's end and a subject key's deadline
    (``destroy_at``) and creation (``created_at``; whole seconds, so that a writer cannot move
    a key past its subject's erasure): a row whose columns are changed no longer unwraps.
    """
    return (
        wrap_context(domain, dek_id, "data")
        + _LABEL
        + wire.encode_field(scope or "")
        + wire.encode_field(subject_ref or "")
        + wire.encode_field(_seconds(not_after))
        + wire.encode_field(_seconds(destroy_at) if scope == "subject" else "")
        + wire.encode_field(_seconds(created_at) if scope == "subject" else "")
    )


def record_context(record: DataKeyRecord) -> bytes:
    """:func:`scoped_context` of a key-store row, from its own columns."""
    return scoped_context(
        record.domain,
        record.dek_id,
        scope=record.scope,
        subject_ref=record.subject,
        not_after=record.not_after,
        destroy_at=record.destroy_at,
        created_at=record.created_at,
    )


def whole_seconds(at: dt.datetime, *, up: bool) -> dt.datetime:
    """``at`` to a whole second (up, or down), as stored by every database alike (MySQL rounds
    fractions on a DATETIME(0), MariaDB cuts them) and as bound into the wrap."""
    down = at.replace(microsecond=0)
    return down + dt.timedelta(seconds=1) if up and down != at else down


def subject_deadline(retention: Retention, end: dt.datetime) -> dt.datetime:
    """A subject key's ``destroy_at`` for a relationship that ended at ``end``: the deadline to a
    whole second, rounded the way that keeps the promise (later for ``no_less_than``)."""
    return whole_seconds(retention.deadline(end), up=retention.kind == "no_less_than")


def wrapping_name(epoch: int) -> str:
    """The key-store name of a domain's wrapping key of ``epoch``."""
    return f"wrapping@{epoch}"


def fixed_deadline(domain: KeyDomain, record: DataKeyRecord) -> dt.datetime | None:
    """The deadline of a scoped row the database cannot move: bucket end + the code's retention.

    ``None`` for rows with no such deadline (subject keys: theirs is the ``destroy_at`` column).
    """
    retention = domain.retention
    if record.not_after is None or retention is None or retention.after != "capture":
        return None
    return retention.deadline(record.not_after)


def deadline(domain: KeyDomain, record: DataKeyRecord) -> dt.datetime | None:
    """The earliest of a row's fixed deadline and its ``destroy_at`` column."""
    fixed = fixed_deadline(domain, record)
    stored = record.destroy_at
    if fixed is None:
        return stored
    return fixed if stored is None else min(fixed, stored)


def wrap(key: AESGCM, dek: bytes, context: bytes) -> bytes:
    """A DEK wrapped under a wrapping key, bound to ``context``."""
    nonce = os.urandom(_NONCE)
    return _WRAP_VERSION + nonce + key.encrypt(nonce, dek, context)


def unwrap(key: AESGCM, wrapped: bytes, context: bytes) -> bytes | None:
    """The DEK of :func:`wrap`, or ``None`` when it does not authenticate (any damage)."""
    if len(wrapped) != WRAPPED_SIZE or wrapped[:1] != _WRAP_VERSION:
        return None
    try:
        return key.decrypt(wrapped[1 : 1 + _NONCE], wrapped[1 + _NONCE :], context)
    except InvalidTag:
        return None


def erased_error(
    reason: str | None, *, domain: str | None = None, dek_id: bytes | None = None
) -> ValueErasedError:
    """The :class:`ValueErasedError` of a key-store ``destroy_reason``."""
    if reason == "erasure":
        return SubjectErasedError(domain=domain, dek_id=dek_id)
    if reason == "retention":
        return RetentionExpiredError(domain=domain, dek_id=dek_id)
    return ValueErasedError("destroyed", domain=domain, dek_id=dek_id)
