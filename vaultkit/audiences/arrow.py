"""Audience hashing of whole Arrow arrays: :func:`hash_audience_array`, the kernel that
``vaultkit audience hash`` (Parquet input) and the engine adapters (:mod:`vaultkit.arrow`) run.

Each value is normalised and hashed exactly as :func:`vaultkit.audiences.render` does for a record
holding only that identifier (tested value for value). Needs ``pyarrow`` (extra
``vaultkit[arrow]``).

.. versionadded:: 0.4.0
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final

import pyarrow as pa

from vaultkit.audiences import normalize as _n
from vaultkit.audiences._render import _check as _check_audience
from vaultkit.audiences.normalize import Reason
from vaultkit.errors import AudienceError, ConfigurationError

__all__ = ["AUDIENCE_KINDS", "hash_audience_array"]

#: Identifier kinds :func:`hash_audience_array` hashes, one array per kind.
AUDIENCE_KINDS: Final = ("email", "phone")


def _hash_email(
    value: str, gmail: str | None, sha256: Callable[[bytes], Any] = hashlib.sha256
) -> str:
    text = value.strip()
    if _n.is_sha256_hex(text):
        return text.lower()
    if _n.is_md5_hex(text):
        raise AudienceError(Reason.MD5_REFUSED)
    return sha256(_n.normalize_email(value, gmail_rule=gmail).encode("utf-8")).hexdigest()  # type: ignore[no-any-return]


def hash_audience_array(
    array: Any,
    *,
    platform: str,
    kind: str = "email",
    rules: str | None = None,
    default_region: str | None = None,
) -> tuple[Any, Any]:
    """Normalise and SHA-256 one identifier per value, as :func:`vaultkit.audiences.render`
    does for a record holding only that identifier.

    Args:
        array: strings (e-mail addresses or phone numbers); already-hashed SHA-256 hex passes
            through, MD5 hex is refused.
        platform: ``"google"`` or ``"meta"``.
        kind: ``"email"`` or ``"phone"``.
        rules: the platform's rule version (default: the newest).
        default_region: the country of national phone numbers (``"BE"``).

    Returns:
        ``(hashes, reasons)``, two string arrays of the input's length: the 64-hex hash, null for
        a rejected value; and null for an accepted value, else the space-separated reason codes
        (:class:`~vaultkit.audiences.Reason`) ``render`` gives, such as ``"email_invalid
        no_identifier"``. A null or empty value is rejected as ``no_identifier``.
    """
    if kind not in AUDIENCE_KINDS:
        raise ConfigurationError(f"kind is one of {', '.join(AUDIENCE_KINDS)}, not {kind!r}")
    chosen, version = _check_audience(platform, rules, default_region)
    if isinstance(array, pa.ChunkedArray):
        parts = [
            hash_audience_array(
                c, platform=platform, kind=kind, rules=rules, default_region=default_region
            )
            for c in array.chunks
        ]
        return (
            pa.chunked_array([p[0] for p in parts], type=pa.string()),
            pa.chunked_array([p[1] for p in parts], type=pa.string()),
        )
    if not isinstance(array, pa.Array):
        raise TypeError(
            f"array must be a pyarrow Array or ChunkedArray, not {type(array).__name__}"
        )
    values = array.to_pylist()
    region = default_region.upper() if default_region else None
    gmail = version if chosen == "google" else None
    meta = chosen == "meta"
    hashes: list[str | None] = []
    reasons: list[str | None] = []
    no_identifier = str(Reason.NO_IDENTIFIER)
    for value in values:
        if value is None or value == "":
            hashes.append(None)
            reasons.append(no_identifier)
            continue
        if type(value) is not str:
            value = str(value)
        try:
            if kind == "email":
                digest = _hash_email(value, gmail)
            else:
                digest = _hash_phone(value, region, meta)
        except AudienceError as exc:
            hashes.append(None)
            reasons.append(f"{exc} {no_identifier}")
            continue
        hashes.append(digest)
        reasons.append(None)
    return pa.array(hashes, type=pa.string()), pa.array(reasons, type=pa.string())


def _hash_phone(value: str, region: str | None, meta: bool) -> str:
    text = value.strip()
    if _n.is_sha256_hex(text):
        return text.lower()
    if _n.is_md5_hex(text):
        raise AudienceError(Reason.MD5_REFUSED)
    e164 = _n.normalize_phone_e164(value, default_region=region)
    return hashlib.sha256((e164.lstrip("+") if meta else e164).encode("utf-8")).hexdigest()
