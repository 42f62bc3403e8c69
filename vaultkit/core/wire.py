"""Wire format of an encrypted vaultkit value, version 1.

Every value vaultkit writes is self-describing binary. Layout of version 1 (all integers big-endian):

======  =====  ==========================================================================
offset  size   field
======  =====  ==========================================================================
0       2      magic ``F6 56``; ``F6`` never occurs in UTF-8, so no text value starts so
2       1      format version, ``01``
3       1      suite id, ``01`` = AES-256-GCM with HKDF-SHA256 key derivation,
               96-bit random nonce, 128-bit tag, 256-bit key commitment
4       16     DEK id: random, names the data key's row in the key store
20      32     key commitment of the DEK (see :mod:`vaultkit.core.aead`)
52      12     nonce, fresh from the OS CSPRNG for every value
64      n      ciphertext of the typed plaintext (:mod:`vaultkit._codec`, at least 1 byte)
64+n    16     GCM authentication tag
======  =====  ==========================================================================

Bytes 0 to 51 are the *header*. The associated data of the GCM call is the header followed by
the context block, so each value is bound to its format, suite, DEK, domain and cell::

    aad = header
        || u16 len(domain) || domain                      (UTF-8)
        || u16 number of context entries
        || for each entry, sorted by key:
               u16 len(key) || key || u16 len(value) || value   (UTF-8)

A value copied to another column, row or domain therefore fails to authenticate. ``docs/wire-format.md``
repeats this byte by byte with worked vectors.

The column types bind a value to its cell with these context entries (:func:`cell_context`), each
its own length-prefixed entry, so that no name can run into another::

    column   the column name                       always
    row      the row key, as context value text     row-bound columns only
    schema   the table's schema                    only when the table has one
    table    the table name                        always

A table without a schema binds exactly as before the ``schema`` entry existed (no entry, not an
empty one), so its values are unchanged byte for byte.

Old versions stay decodable here forever; a new version adds a decoder and a vector file and
never changes this one.
"""

from __future__ import annotations

import enum
import struct
import uuid
from collections.abc import Mapping
from typing import Final, NamedTuple

from vaultkit.errors import DecryptionError, UnsupportedFormatError

__all__ = [
    "COMMITMENT_SIZE",
    "COMMITMENT_SLICE",
    "CONTEXT_COLUMN",
    "CONTEXT_ROW",
    "CONTEXT_SCHEMA",
    "CONTEXT_TABLE",
    "DEK_ID_SIZE",
    "DEK_ID_SLICE",
    "DEK_ID_SQL_START",
    "EMPTY_CONTEXT",
    "HEADER_SIZE",
    "MAGIC",
    "MAGIC_SQL_START",
    "MAX_CONTEXT_FIELD_BYTES",
    "MIN_VALUE_SIZE",
    "NONCE_SIZE",
    "NONCE_SLICE",
    "PREFIX_SIZE",
    "SUITE_OFFSET",
    "TAG_SIZE",
    "VERSION_1",
    "VERSION_OFFSET",
    "ContextTemplate",
    "ContextValue",
    "Suite",
    "ValueHeader",
    "build_header",
    "cell_context",
    "context_block",
    "context_fields",
    "context_template",
    "context_value_text",
    "encode_field",
    "is_vaultkit_value",
    "parse_header",
    "parse_value",
    "u16",
]

MAGIC: Final = b"\xf6\x56"  # 2 bytes: 0xF6 is invalid as any UTF-8 byte
VERSION_1: Final = 1  # 1 byte: format version this module writes
DEK_ID_SIZE: Final = 16  # bytes, random
COMMITMENT_SIZE: Final = 32  # bytes, HKDF-SHA256 output
NONCE_SIZE: Final = 12  # bytes, 96-bit GCM nonce (NIST SP 800-38D, 8.2.2 random construction)
TAG_SIZE: Final = 16  # bytes, full 128-bit GCM tag
HEADER_SIZE: Final = 2 + 1 + 1 + DEK_ID_SIZE + COMMITMENT_SIZE  # 52 bytes
PREFIX_SIZE: Final = HEADER_SIZE + NONCE_SIZE  # 64 bytes before the ciphertext
MIN_VALUE_SIZE: Final = PREFIX_SIZE + 1 + TAG_SIZE  # 81 bytes: the typed plaintext is never empty
MAX_CONTEXT_FIELD_BYTES: Final = 0xFFFF  # each length in the context block is a u16

#: Where each header field sits in a stored value (the table above). Readers outside ``core`` use
#: these names or :func:`parse_value`, never literal offsets.
VERSION_OFFSET: Final = 2
SUITE_OFFSET: Final = 3
DEK_ID_SLICE: Final = slice(4, 4 + DEK_ID_SIZE)
COMMITMENT_SLICE: Final = slice(4 + DEK_ID_SIZE, HEADER_SIZE)
NONCE_SLICE: Final = slice(HEADER_SIZE, PREFIX_SIZE)
#: The magic's first byte for SQL ``substr(value, MAGIC_SQL_START, len(MAGIC))`` (1-based).
MAGIC_SQL_START: Final = 1
#: The DEK id's first byte for SQL ``substr(value, DEK_ID_SQL_START, DEK_ID_SIZE)`` (1-based).
DEK_ID_SQL_START: Final = DEK_ID_SLICE.start + 1

#: Context keys of a column's cell (see the module docstring). Sorted: column, row, schema, table.
CONTEXT_COLUMN: Final = "column"
CONTEXT_ROW: Final = "row"
CONTEXT_SCHEMA: Final = "schema"
CONTEXT_TABLE: Final = "table"

_HEADER_STRUCT: Final = struct.Struct(">2sBB16s32s")  # magic, version, suite, DEK id, commitment
_U16: Final = struct.Struct(">H")

ContextValue = str | int | uuid.UUID


class Suite(enum.IntEnum):
    """Cipher suites a value can name in byte 3."""

    #: AES-256-GCM under a key derived from the DEK with HKDF-SHA256, 96-bit random nonce,
    #: 128-bit tag and a 256-bit key commitment in the header.
    AES256_GCM_HKDF_SHA256_COMMIT = 1


def build_header(
    dek_id: bytes, commitment: bytes, *, suite: Suite = Suite.AES256_GCM_HKDF_SHA256_COMMIT
) -> bytes:
    """Return the 52-byte version 1 header for a DEK."""
    if len(dek_id) != DEK_ID_SIZE or len(commitment) != COMMITMENT_SIZE:
        raise ValueError("DEK id must be 16 bytes and commitment 32 bytes")
    return _HEADER_STRUCT.pack(MAGIC, VERSION_1, suite, dek_id, commitment)


def is_vaultkit_value(data: bytes) -> bool:
    """Tell whether ``data`` starts like a vaultkit value (magic only; authenticity is not checked)."""
    return data[:2] == MAGIC


def parse_header(data: bytes) -> tuple[Suite, bytes, bytes]:
    """Split and check the header of a stored value.

    Returns:
        The suite, the DEK id and the commitment.

    Raises:
        UnsupportedFormatError: the value names a format version or suite this release cannot read.
        DecryptionError: anything else about the layout is wrong (too short, no magic).
    """
    if len(data) < MIN_VALUE_SIZE or data[:2] != MAGIC:
        raise DecryptionError
    _magic, version, suite_id, dek_id, commitment = _HEADER_STRUCT.unpack_from(data)
    if version != VERSION_1:
        raise UnsupportedFormatError(
            f"wire-format version {version} is not supported by this release"
        )
    try:
        suite = Suite(suite_id)
    except ValueError:
        raise UnsupportedFormatError(
            f"cipher suite {suite_id} is not supported by this release"
        ) from None
    return suite, dek_id, commitment


class ValueHeader(NamedTuple):
    """The header fields of a stored value, as read by :func:`parse_value` (not authenticated)."""

    version: int
    suite: int
    dek_id: bytes
    commitment: bytes


def parse_value(data: bytes) -> ValueHeader | None:
    """Read the header fields of a stored value without checking them against a key.

    This is what tools read to sort values by DEK or format (the re-keying engine, reports); the
    fields are *not authenticated* until the value decrypts. Unlike :func:`parse_header`, an
    unknown version or suite is returned as read, not refused.

    Returns:
        The header fields, or ``None`` when ``data`` does not start with the magic (legacy
        plaintext, in a migrating column).

    Raises:
        DecryptionError: ``data`` starts with the magic but is shorter than the smallest value
            (a truncated or hostile value is never mistaken for plaintext).
    """
    if data[:2] != MAGIC:
        return None
    if len(data) < MIN_VALUE_SIZE:
        raise DecryptionError
    _magic, version, suite, dek_id, commitment = _HEADER_STRUCT.unpack_from(data)
    return ValueHeader(version, suite, dek_id, commitment)


def encode_field(text: str) -> bytes:
    """Encode one string of the context block as ``u16 length || UTF-8 bytes``."""
    raw = text.encode("utf-8")
    if len(raw) > MAX_CONTEXT_FIELD_BYTES:
        raise ValueError(
            f"context field is {len(raw)} bytes; at most {MAX_CONTEXT_FIELD_BYTES} allowed"
        )
    return _U16.pack(len(raw)) + raw


def context_value_text(value: ContextValue) -> str:
    """Canonical text of a context value: str as is, int in decimal, UUID in lowercase hyphenated form."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError("context values must be str, int or uuid.UUID, not bool")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"context values must be str, int or uuid.UUID, not {type(value).__name__}")


EMPTY_CONTEXT: Final = b"\x00\x00"  # u16 zero: no context entries


def context_fields(context: Mapping[str, ContextValue] | None) -> bytes:
    """Return the context entries of the associated data: a u16 count, then sorted entries."""
    if not context:
        return EMPTY_CONTEXT
    pack = _U16.pack
    parts = [pack(len(context))]
    try:
        keys = sorted(context)
    except TypeError:
        raise TypeError("context keys must be str") from None
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"context keys must be str, not {type(key).__name__}")
        value = context[key]
        raw_key = key.encode("utf-8")
        raw_value = (value if type(value) is str else context_value_text(value)).encode("utf-8")
        if len(raw_key) > MAX_CONTEXT_FIELD_BYTES or len(raw_value) > MAX_CONTEXT_FIELD_BYTES:
            raise ValueError(f"context field {key[:32]!r} exceeds {MAX_CONTEXT_FIELD_BYTES} bytes")
        parts += (pack(len(raw_key)), raw_key, pack(len(raw_value)), raw_value)
    return b"".join(parts)


class ContextTemplate:
    """The context entries of a cell with one entry left open: made once, filled per value.

    ``template.fill(value)`` equals ``context_fields({**fixed, slot: value})`` byte for byte: the
    entries before and after ``slot`` in sorted order are encoded once, so each value encodes
    only its own entry (a row key).
    """

    __slots__ = ("_after", "_prefix", "slot")

    def __init__(self, fixed: Mapping[str, str], slot: str) -> None:
        if slot in fixed:
            raise ValueError(f"context entry {slot!r} is both fixed and the open slot")
        keys = sorted(fixed)
        before = b"".join(encode_field(k) + encode_field(fixed[k]) for k in keys if k < slot)
        self._after = b"".join(encode_field(k) + encode_field(fixed[k]) for k in keys if k > slot)
        self._prefix = u16(len(fixed) + 1) + before + encode_field(slot)
        self.slot = slot

    def fill(self, value: ContextValue) -> bytes:
        """The context entries with ``value`` in the open slot."""
        return self._prefix + encode_field(context_value_text(value)) + self._after


def context_template(fixed: Mapping[str, str], slot: str = CONTEXT_ROW) -> ContextTemplate:
    """Return the context entries ``fixed`` plus an open ``slot`` (by default the row key)."""
    return ContextTemplate(fixed, slot)


def _cell_name(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a {kind} name must be str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"a {kind} name must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"a {kind} name must be valid Unicode (no lone surrogates)") from None
    if size > MAX_CONTEXT_FIELD_BYTES:
        raise ValueError(f"a {kind} name is at most {MAX_CONTEXT_FIELD_BYTES} bytes")
    return str(name)


def cell_context(*, table: str, column: str, schema: str | None = None) -> dict[str, str]:
    """Return the context entries that bind a value to a column: table, column, and the schema.

    Each name is its own entry, so ``table "a.b", column "c"`` and ``table "a", column "b.c"``
    bind differently, and a table in schema ``tenant_a`` differently from the same table in
    ``tenant_b`` or in no schema. ``schema=None`` adds no entry (the binding of a table without a
    schema is unchanged from before the entry existed); an empty name is refused.

    Raises:
        TypeError: a name is not a str.
        ValueError: a name is empty or longer than a context field can hold.
    """
    context = {
        CONTEXT_COLUMN: _cell_name("column", column),
        CONTEXT_TABLE: _cell_name("table", table),
    }
    if schema is not None:
        context[CONTEXT_SCHEMA] = _cell_name("schema", schema)
    return context


def context_block(domain: str, context: Mapping[str, ContextValue] | None) -> bytes:
    """Return the part of the associated data that follows the header."""
    return encode_field(domain) + context_fields(context)


def u16(number: int) -> bytes:
    """Encode a count as the u16 the context block uses."""
    return _U16.pack(number)
