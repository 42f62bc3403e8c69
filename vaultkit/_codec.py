"""Canonical typed encoding of plaintext values, inside the ciphertext.

The first plaintext byte names the type; the rest is its canonical encoding. Nothing is ever
encoded with ``repr()``. The high bit of the type byte marks ISO/IEC 7816-4 padding (``80 00 ..``)
up to a multiple of the requested block, for short enumerations whose length would leak the value.

====  ===============  =====================================================================
tag   type             payload
====  ===============  =====================================================================
01    str              UTF-8 (surrogates rejected)
02    bytes            as is
03    int              two's-complement big-endian, minimal length (``int.to_bytes(signed=True)``)
04    bool             ``00`` or ``01``
05    float            IEEE 754 binary64 big-endian (``-0.0``, infinities and NaN kept)
06    Decimal          ``str(Decimal)``, ASCII: sign, digits and exponent survive exactly
07    date             ISO 8601 ``YYYY-MM-DD``
08    datetime, aware  ISO 8601 with the UTC offset ``utcoffset()`` gives (``fold`` included); a
                       named zone comes back as that fixed offset, the same instant
09    datetime, naive  ISO 8601 without offset; comes back naive, nothing assumed or converted
0A    UUID             16 bytes
0B    dict or list     JSON, sorted keys, no spaces, UTF-8, NaN refused
====  ===============  =====================================================================

JSON nested deeper than the interpreter's recursion limit lets :mod:`json` go (about 1,000 levels
by default, fewer when the call stack is already deep) is refused with :class:`EncodingError` on
encryption, and an authenticated payload nested that deep fails with :class:`DecryptionError`:
never a ``RecursionError``, whoever wrote the plaintext.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, TypeAlias

from vaultkit.errors import DecryptionError, EncodingError

__all__ = ["STR_TAG", "PlainValue", "decode_value", "encode_value"]

JSONValue: TypeAlias = dict[str, Any] | list[Any]
PlainValue: TypeAlias = (
    str | bytes | int | bool | float | Decimal | dt.date | dt.datetime | uuid.UUID | JSONValue
)

STR: Final = 0x01
BYTES: Final = 0x02
INT: Final = 0x03
BOOL: Final = 0x04
FLOAT: Final = 0x05
DECIMAL: Final = 0x06
DATE: Final = 0x07
DATETIME_AWARE: Final = 0x08
DATETIME_NAIVE: Final = 0x09
UUID: Final = 0x0A
JSON: Final = 0x0B
PADDED: Final = 0x80
#: The first byte of an unpadded encoded str: the common case, which the hot paths encode and
#: decode inline (``STR_TAG + text.encode("utf-8")``).
STR_TAG: Final = bytes((STR,))
MAX_PAD_BLOCK: Final = 4096  # bytes

_DOUBLE: Final = struct.Struct(">d")


def _int(value: int) -> bytes:
    return bytes((INT,)) + value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def _datetime(value: dt.datetime) -> bytes:
    if value.tzinfo is None or value.utcoffset() is None:
        return bytes((DATETIME_NAIVE,)) + value.isoformat().encode("ascii")
    # Fold a named zone to its fixed offset at that instant; the instant itself is unchanged.
    fixed = value.replace(tzinfo=dt.timezone(value.utcoffset()))  # type: ignore[arg-type]
    return bytes((DATETIME_AWARE,)) + fixed.isoformat().encode("ascii")


def _json(value: JSONValue) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except RecursionError:
        # The C encoder counts its nesting against the recursion limit; a value that deep (or a
        # self-referencing one the circular check misses) is refused, not half-encoded.
        raise EncodingError("JSON value is nested too deeply to encode") from None
    return bytes((JSON,)) + text.encode("utf-8")


_ENCODERS: Final[dict[type, Callable[[Any], bytes]]] = {
    str: lambda v: b"\x01" + v.encode("utf-8"),
    bytes: lambda v: b"\x02" + v,
    bytearray: lambda v: b"\x02" + bytes(v),
    memoryview: lambda v: b"\x02" + v.tobytes(),
    int: _int,
    bool: lambda v: b"\x04\x01" if v else b"\x04\x00",
    float: lambda v: b"\x05" + _DOUBLE.pack(v),
    Decimal: lambda v: b"\x06" + str(v).encode("ascii"),
    dt.date: lambda v: b"\x07" + v.isoformat().encode("ascii"),
    dt.datetime: _datetime,
    uuid.UUID: lambda v: b"\x0a" + v.bytes,
    dict: _json,
    list: _json,
}


def _encoder_for(value: object) -> Callable[[Any], bytes]:
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder
    # Subclasses (an IntEnum, a str Enum, a ZoneInfo-aware datetime subclass) take their base's
    # codec; bool before int and datetime before date, since each is a subclass of the other.
    for base in (
        bool,
        int,
        str,
        bytes,
        float,
        Decimal,
        dt.datetime,
        dt.date,
        uuid.UUID,
        dict,
        list,
    ):
        if isinstance(value, base):
            return _ENCODERS[base]
    raise TypeError(
        f"cannot encrypt a value of type {type(value).__name__}; vaultkit encodes str, bytes, int, "
        "bool, float, Decimal, date, datetime, UUID, dict and list"
    )


def encode_value(value: PlainValue, *, pad_to: int | None = None) -> bytes:
    """Return the canonical typed encoding of ``value``, padded to a multiple of ``pad_to`` bytes."""
    try:
        if type(value) is str and pad_to is None:  # the common case, without dispatch
            return STR_TAG + value.encode("utf-8")
        data = _encoder_for(value)(value)
    except UnicodeEncodeError:
        raise EncodingError("string is not valid Unicode (lone surrogate)") from None
    except EncodingError:
        raise
    except ValueError as exc:
        # json.dumps refuses NaN and infinities and circular references; its message quotes no
        # value.
        raise EncodingError(f"value cannot be encoded: {exc}") from None
    if pad_to is None:
        return data
    if not 1 <= pad_to <= MAX_PAD_BLOCK:
        raise ValueError(f"pad_to must be between 1 and {MAX_PAD_BLOCK} bytes")
    padded_len = (len(data) // pad_to + 1) * pad_to
    return bytes((data[0] | PADDED,)) + data[1:] + b"\x80" + b"\x00" * (padded_len - len(data) - 1)


def _unpad(body: bytes) -> bytes:
    end = body.rfind(b"\x80")
    if end < 0 or body[end + 1 :].strip(b"\x00"):
        raise DecryptionError
    return body[:end]


def _decode_datetime(text: bytes, *, aware: bool) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.decode("ascii"))
    if (value.tzinfo is not None) != aware:
        raise ValueError("offset does not match the type tag")
    return value


def _decode_json(body: bytes) -> JSONValue:
    value = json.loads(body.decode("utf-8"))
    if not isinstance(value, dict | list):
        raise TypeError("JSON payload is not an object or array")
    return value


_DECODERS: Final[dict[int, Callable[[bytes], PlainValue]]] = {
    STR: lambda b: b.decode("utf-8"),
    BYTES: bytes,
    INT: lambda b: int.from_bytes(b, "big", signed=True),
    BOOL: lambda b: {b"\x00": False, b"\x01": True}[b],
    FLOAT: lambda b: _DOUBLE.unpack(b)[0],
    DECIMAL: lambda b: Decimal(b.decode("ascii")),
    DATE: lambda b: dt.date.fromisoformat(b.decode("ascii")),
    DATETIME_AWARE: lambda b: _decode_datetime(b, aware=True),
    DATETIME_NAIVE: lambda b: _decode_datetime(b, aware=False),
    UUID: lambda b: uuid.UUID(bytes=b),
    JSON: _decode_json,
}


def decode_value(data: bytes) -> PlainValue:
    """Inverse of :func:`encode_value`.

    Raises:
        DecryptionError: the plaintext is not a valid encoding. It was authenticated, so this means
            a writer outside vaultkit; the error stays opaque all the same.
    """
    if data[:1] == b"\x01":  # the common case, without dispatch
        try:
            return data[1:].decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError from None
    if not data:
        raise DecryptionError
    tag = data[0]
    body = data[1:]
    if tag & PADDED:
        tag ^= PADDED
        body = _unpad(body)
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise DecryptionError
    try:
        return decoder(body)
    except (ValueError, TypeError, KeyError, struct.error, ArithmeticError, RecursionError):
        # RecursionError: JSON nested deeper than the recursion limit, authenticated or not, is
        # a damaged value like any other.
        raise DecryptionError from None
