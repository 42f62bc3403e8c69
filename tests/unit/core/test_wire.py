"""Tests for vaultkit.core.wire: header layout and the associated-data encoding."""

from __future__ import annotations

import uuid

import pytest

from vaultkit.core import wire
from vaultkit.errors import DecryptionError, UnsupportedFormatError

DEK_ID = bytes(range(16))
COMMIT = bytes(range(32, 64))


class TestHeader:
    def test_layout_matches_the_documented_offsets(self) -> None:
        """The header is magic, version, suite, DEK id and commitment at the documented offsets."""
        header = wire.build_header(DEK_ID, COMMIT)
        assert len(header) == wire.HEADER_SIZE == 52
        assert header[0:2] == b"\xf6\x56"
        assert header[2] == 1
        assert header[3] == wire.Suite.AES256_GCM_HKDF_SHA256_COMMIT == 1
        assert header[4:20] == DEK_ID
        assert header[20:52] == COMMIT

    def test_parse_returns_the_fields(self) -> None:
        """parse_header gives back suite, DEK id and commitment."""
        value = wire.build_header(DEK_ID, COMMIT) + bytes(40)
        assert wire.parse_header(value) == (wire.Suite(1), DEK_ID, COMMIT)

    def test_short_values_are_rejected(self) -> None:
        """Anything shorter than the smallest possible value is an authentication failure."""
        value = wire.build_header(DEK_ID, COMMIT) + bytes(wire.MIN_VALUE_SIZE - 53)
        with pytest.raises(DecryptionError):
            wire.parse_header(value)

    def test_unknown_version_and_suite_are_named(self) -> None:
        """A newer version or unknown suite raises UnsupportedFormatError naming the number."""
        body = DEK_ID + COMMIT + bytes(40)
        with pytest.raises(UnsupportedFormatError, match="version 2"):
            wire.parse_header(wire.MAGIC + b"\x02\x01" + body)
        with pytest.raises(UnsupportedFormatError, match="suite 7"):
            wire.parse_header(wire.MAGIC + b"\x01\x07" + body)

    def test_magic_marks_no_utf8_text(self) -> None:
        """No UTF-8 text can start with the magic, so legacy plaintext is never mistaken for it."""
        with pytest.raises(UnicodeDecodeError):
            wire.MAGIC.decode("utf-8")
        assert not wire.is_vaultkit_value(b"Jan")
        assert wire.is_vaultkit_value(wire.build_header(DEK_ID, COMMIT))

    def test_bad_sizes_are_refused(self) -> None:
        """build_header refuses ids and commitments of the wrong size."""
        with pytest.raises(ValueError, match="16 bytes"):
            wire.build_header(b"short", COMMIT)


class TestContext:
    def test_order_of_entries_does_not_matter(self) -> None:
        """Entries are sorted, so dict order never changes the associated data."""
        a = wire.context_fields({"table": "t", "column": "c", "row": "r"})
        b = wire.context_fields({"row": "r", "column": "c", "table": "t"})
        assert a == b

    def test_documented_encoding(self) -> None:
        """The block is u16-length-prefixed UTF-8 in sorted key order, after the domain."""
        block = wire.context_block("identity", {"table": "t", "column": "c"})
        assert block == (
            b"\x00\x08identity"
            + b"\x00\x02"
            + b"\x00\x06column\x00\x01c"
            + b"\x00\x05table\x00\x01t"
        )

    def test_empty_and_missing_context_are_equal(self) -> None:
        """None and {} give the same zero-entry block."""
        assert wire.context_fields(None) == wire.context_fields({}) == b"\x00\x00"

    def test_values_are_canonical_text(self) -> None:
        """int and UUID values are encoded as their canonical text."""
        u = uuid.UUID(int=5)
        assert wire.context_fields({"row": u}) == wire.context_fields({"row": str(u)})
        assert wire.context_fields({"row": 42}) == wire.context_fields({"row": "42"})

    def test_lengths_are_prefixed_so_fields_cannot_shift(self) -> None:
        """Moving a character from key to value changes the encoding (no ambiguity)."""
        assert wire.context_fields({"ab": "c"}) != wire.context_fields({"a": "bc"})

    @pytest.mark.parametrize("bad", [b"bytes", 1.5, True, None, object()])
    def test_bad_value_types_raise_type_error(self, bad: object) -> None:
        """Context values other than str, int and UUID are refused."""
        with pytest.raises(TypeError):
            wire.context_fields({"row": bad})  # type: ignore[dict-item]

    def test_non_str_keys_raise_type_error(self) -> None:
        """Context keys must be str."""
        with pytest.raises(TypeError):
            wire.context_fields({1: "x"})  # type: ignore[dict-item]

    def test_oversized_fields_are_refused(self) -> None:
        """A field longer than a u16 can count is refused, counted in bytes not characters."""
        with pytest.raises(ValueError, match="65535"):
            wire.context_fields({"row": "é" * 40000})
