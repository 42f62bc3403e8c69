"""The column transforms of a research export, on pyarrow arrays; nulls stay nulls.

``pseudonym`` and ``date_shift`` are keyed by the dataset key (an HMAC-SHA256 key held by the
vault, :meth:`vaultkit.Vault.dataset_key`); ``ff1`` takes an AES-256 key derived from it. The
other transforms hold no key.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vaultkit.errors import ConfigurationError, EncodingError

if TYPE_CHECKING:
    from vaultkit import BlindIndexKey
    from vaultkit.research._spec import ColumnSpec

__all__ = [
    "FF1_MIN_DOMAIN",
    "PSEUDONYM_BITS",
    "canonical",
    "date_shifts",
    "pseudonym",
    "pseudonyms",
    "transform",
]

PSEUDONYM_BITS: Final = 128  # the HMAC-SHA256 output is truncated to 16 bytes, base32 (26 chars)
#: The smallest domain FF1 is used on (NIST SP 800-38G Rev. 1 draft 2 asks for at least 10^6).
FF1_MIN_DOMAIN: Final = 1_000_000
_PSEUDONYM_LABEL: Final = b"vaultkit research pseudonym v1\x00"
_SHIFT_LABEL: Final = b"vaultkit research date shift v1\x00"
_FF1_LABEL: Final = b"vaultkit research ff1 key v1\x00"

_B32: Final = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8)  # RFC 4648


def canonical(value: object) -> bytes:
    """The bytes a member id or value is keyed by: UTF-8 of ``str(value)`` for str, int and UUID
    (so the id 17 and the text '17' give one pseudonym), the bytes themselves for bytes."""
    kind = type(value)
    if kind is str:
        return value.encode("utf-8")  # type: ignore[attr-defined, no-any-return]
    if kind is int:
        return str(value).encode("ascii")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool):
        raise EncodingError("a boolean cannot be pseudonymised")
    if isinstance(value, str | int | uuid.UUID):
        return str(value).encode("utf-8")
    if isinstance(value, dt.date):
        return value.isoformat().encode("ascii")
    raise EncodingError(f"a {type(value).__name__} cannot be pseudonymised")


def pseudonym(key: BlindIndexKey, value: object) -> str:
    """The pseudonym of one value: base32 of HMAC-SHA256(dataset key, label || value)[:16]."""
    digest = key.digest(_PSEUDONYM_LABEL + canonical(value))[: PSEUDONYM_BITS // 8]
    return base64.b32encode(digest).decode("ascii").rstrip("=")


def pseudonyms(key: BlindIndexKey, values: Sequence[object | None]) -> pa.Array:
    """:func:`pseudonym` of each value, as a string array (nulls stay nulls).

    The same result as :func:`pseudonym` value by value; base32 is done for the whole batch
    with numpy (the standard library's ``b32encode`` costs more than the HMAC).
    """
    size = PSEUDONYM_BITS // 8
    digest = key.digest
    present = [v for v in values if v is not None]
    raw = b"".join([digest(_PSEUDONYM_LABEL + canonical(v))[:size] for v in present])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)
    # 128 bits and 2 zero bits are 26 groups of 5 bits (RFC 4648 section 6, unpadded).
    bits = np.unpackbits(rows, axis=1)
    bits = np.concatenate([bits, np.zeros((len(rows), 2), dtype=np.uint8)], axis=1)
    groups = bits.reshape(len(rows), 26, 5) @ np.array([16, 8, 4, 2, 1], dtype=np.uint8)
    text = _B32[groups].tobytes().decode("ascii")
    encoded = [text[i : i + 26] for i in range(0, len(text), 26)]
    if len(present) == len(values):
        return pa.array(encoded, pa.string())
    it = iter(encoded)
    return pa.array([None if v is None else next(it) for v in values], pa.string())


def _shift(key: BlindIndexKey, member: object, max_days: int) -> int:
    digest = key.digest(_SHIFT_LABEL + canonical(member))
    return int.from_bytes(digest[:8], "big") % (2 * max_days + 1) - max_days


def date_shifts(key: BlindIndexKey, members: Sequence[object | None], max_days: int) -> list[int]:
    """Days each row is shifted by: keyed per member in [-max_days, max_days], one per member
    (so intervals between one member's dates are kept, as Google's DateShiftConfig with a
    context does). A row without a member id is not shifted: its dates become null."""
    cache: dict[object, int] = {}
    out: list[int] = []
    for m in members:
        if m is None:
            out.append(0)
            continue
        s = cache.get(m)
        if s is None:
            s = cache[m] = _shift(key, m, max_days)
        out.append(s)
    return out


def transform(
    column: ColumnSpec,
    values: pa.Array,
    *,
    key: BlindIndexKey | None,
    members: pa.Array,
    today: dt.date,
    shifts: dict[int, list[int]] | None = None,
) -> pa.Array:
    """Apply ``column``'s transform to ``values`` (the source column of one batch).

    ``shifts`` caches the date shifts of the batch's members per bound, for the next column.
    """
    t = column.transform
    if t == "keep":
        return values
    if t in ("pseudonym", "date_shift", "ff1"):
        if key is None:
            raise ConfigurationError(f"column {column.name}: {t} needs the dataset key")
        if t == "pseudonym":
            return pseudonyms(key, values.to_pylist())
        if t == "date_shift":
            return _date_shift(column, values, key, members, {} if shifts is None else shifts)
        return _ff1(column, values, key)
    if t == "generalise":
        if column.method == "postal":
            return _postal(values, column.digits or 0)
        if column.method == "year":
            return pc.year(_as_date(column, values)).cast(pa.int32())
        return _age_band(column, values, column.at or today)
    raise ConfigurationError(f"column {column.name}: transform {t} writes no column")


def _as_date(column: ColumnSpec, values: pa.Array) -> pa.Array:
    if pa.types.is_date(values.type) or pa.types.is_timestamp(values.type):
        return values
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            return pc.cast(values, pa.date32())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise EncodingError(
                f"column {column.name}: source {column.source} holds text that is not an ISO date"
            ) from None
    raise EncodingError(
        f"column {column.name}: source {column.source} is {values.type}, not a date"
    )


def _postal(values: pa.Array, digits: int) -> pa.Array:
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    compact = pc.replace_substring(pc.utf8_upper(text), " ", "")
    return pc.utf8_slice_codeunits(compact, 0, digits)


def _age_band(column: ColumnSpec, values: pa.Array, at: dt.date) -> pa.Array:
    born = _as_date(column, values)
    years = pc.subtract(pa.scalar(at.year, pa.int64()), pc.year(born))
    before = pc.or_(
        pc.greater(pc.month(born), at.month),
        pc.and_(pc.equal(pc.month(born), at.month), pc.greater(pc.day(born), at.day)),
    )
    age = pc.subtract(years, pc.cast(before, pa.int64()))
    width = column.years or 5
    low = pc.multiply(pc.floor(pc.divide(pc.cast(age, pa.float64()), width)), width)
    low_i = pc.cast(low, pa.int64())
    high_i = pc.add(low_i, width - 1)
    return pc.binary_join_element_wise(
        pc.cast(low_i, pa.string()), pc.cast(high_i, pa.string()), "-"
    )


def _date_shift(
    column: ColumnSpec,
    values: pa.Array,
    key: BlindIndexKey,
    members: pa.Array,
    cache: dict[int, list[int]],
) -> pa.Array:
    bound = column.max_days or 30
    shifts = cache.get(bound)
    if shifts is None:
        shifts = cache[bound] = date_shifts(key, members.to_pylist(), bound)
    valid = pc.is_valid(members)
    typ = values.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        values, typ = _as_date(column, values), pa.date32()
    if pa.types.is_date32(typ):
        days = pc.add(values.cast(pa.int32()), pa.array(shifts, pa.int32()))
        shifted = days.cast(pa.date32())
    elif pa.types.is_date64(typ):
        ms = pc.add(values.cast(pa.int64()), pa.array([s * 86_400_000 for s in shifts], pa.int64()))
        shifted = ms.cast(typ)
    elif pa.types.is_timestamp(typ):
        per_day = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
        step = per_day[typ.unit]
        raw = pc.add(values.cast(pa.int64()), pa.array([s * step for s in shifts], pa.int64()))
        shifted = raw.cast(typ)
    else:
        raise EncodingError(
            f"column {column.name}: source {column.source} is {values.type}, not a date"
        )
    return pc.if_else(valid, shifted, pa.nulls(len(shifted), shifted.type))


def _ff1(column: ColumnSpec, values: pa.Array, key: BlindIndexKey) -> pa.Array:
    try:
        from ffx import FF1
    except ImportError:
        raise ConfigurationError(
            "the ff1 transform needs the libffx package: pip install 'vaultkit[research]'"
        ) from None
    cipher = FF1(key.digest(_FF1_LABEL + column.name.encode()), radix=10)
    tweak = column.name.encode()
    out: list[str | None] = []
    for v in values.to_pylist():
        if v is None:
            out.append(None)
            continue
        text = str(v)
        if not text.isascii() or not text.isdigit():
            raise EncodingError(f"column {column.name}: ff1 takes decimal digits only")
        if 10 ** len(text) < FF1_MIN_DOMAIN:
            raise EncodingError(
                f"column {column.name}: ff1 refuses a value of {len(text)} digits: its domain "
                f"is below {FF1_MIN_DOMAIN:,} (use pseudonym)"
            )
        out.append(cipher.encrypt(text, tweak=tweak))
    return pa.array(out, pa.string())
