"""Tests for vaultkit._codec: canonical typed encoding inside the ciphertext."""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any

import pytest

from vaultkit._codec import decode_value, encode_value
from vaultkit.errors import DecryptionError

CASES: list[Any] = [
    "Jan Peeters",
    "",
    "Ωμέγα 😀",
    b"",
    b"\x00\xff",
    0,
    -1,
    255,
    -(2**200),
    True,
    False,
    1.5,
    -0.0,
    math.inf,
    Decimal("42.50"),
    Decimal("-0E-7"),
    Decimal("NaN"),
    dt.date(1, 1, 1),
    dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
    dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    dt.datetime(2026, 1, 2, 3, 4, 5),
    uuid.UUID(int=7),
    {"a": [1, "x", None, True], "b": {"c": 1.5}},
    [1, 2, 3],
]


class TestRoundTrip:
    @pytest.mark.parametrize("value", CASES, ids=repr)
    def test_value_and_type_survive(self, value: Any) -> None:
        """decode(encode(x)) is x, with the same type."""
        out = decode_value(encode_value(value))
        assert type(out) is type(value)
        if isinstance(value, Decimal) and value.is_nan():
            assert out.is_nan()  # type: ignore[union-attr]
        else:
            assert out == value
            assert str(out) == str(value)  # keeps -0.0, Decimal exponents, offsets

    def test_named_zone_becomes_its_fixed_offset(self) -> None:
        """An aware datetime in a named zone comes back at the same instant, as a fixed offset."""
        brussels = dt.datetime(2026, 7, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Brussels"))
        out = decode_value(encode_value(brussels))
        assert isinstance(out, dt.datetime)
        assert out == brussels
        assert out.utcoffset() == dt.timedelta(hours=2)

    def test_naive_datetime_stays_naive(self) -> None:
        """A naive datetime is neither converted nor given a zone."""
        out = decode_value(encode_value(dt.datetime(2026, 1, 1, 8, 0)))
        assert isinstance(out, dt.datetime) and out.tzinfo is None

    def test_enum_subclasses_take_their_base_codec(self) -> None:
        """An IntEnum or str Enum member is stored as its int or str value."""

        class Level(enum.IntEnum):
            HIGH = 3

        class Colour(str, enum.Enum):  # noqa: UP042 - the pre-3.11 idiom users still write
            RED = "red"

        assert decode_value(encode_value(Level.HIGH)) == 3
        assert decode_value(encode_value(Colour.RED)) == "red"

    def test_json_encoding_is_canonical(self) -> None:
        """Dicts encode with sorted keys and no spaces, whatever their insertion order."""
        assert (
            encode_value({"b": 1, "a": 2}) == encode_value({"a": 2, "b": 1}) == b'\x0b{"a":2,"b":1}'
        )


class TestPadding:
    @pytest.mark.parametrize("value", ["", "M", "F", "X" * 14, b"abc", 7])
    def test_padded_values_round_trip(self, value: Any) -> None:
        """Padding is removed on decoding."""
        assert decode_value(encode_value(value, pad_to=16)) == value

    def test_padding_hides_short_lengths(self) -> None:
        """Values of different lengths under one block give one padded length."""
        lengths = {len(encode_value(v, pad_to=16)) for v in ("M", "F", "X", "unknown")}
        assert lengths == {16}

    @pytest.mark.parametrize("pad_to", [0, -1, 4097])
    def test_bad_block_sizes_are_refused(self, pad_to: int) -> None:
        """pad_to must be between 1 and 4096."""
        with pytest.raises(ValueError, match="pad_to"):
            encode_value("x", pad_to=pad_to)


class TestRefusals:
    @pytest.mark.parametrize("value", [None, object(), {1, 2}, (1, 2), 1j, dt.time(1, 2)])
    def test_unsupported_types_raise_type_error(self, value: Any) -> None:
        """Types without a canonical codec are refused; repr() is never used."""
        with pytest.raises(TypeError, match="cannot encrypt"):
            encode_value(value)

    def test_lone_surrogates_are_refused(self) -> None:
        """A str that is not valid Unicode is refused without echoing it."""
        with pytest.raises(ValueError, match="surrogate") as info:
            encode_value("ab\ud800")
        assert "ab" not in str(info.value)

    def test_json_with_nan_is_refused(self) -> None:
        """JSON has no NaN; such dicts are refused rather than written non-canonically."""
        with pytest.raises(ValueError, match="cannot be encoded"):
            encode_value({"x": math.nan})

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\x00",
            b"\x7f",
            b"\x01\xff",
            b"\x04\x02",
            b"\x05\x00",
            b"\x06xyz",
            b"\x07bad",
            b"\x08x",
            b"\x082026-01-01T00:00:00",
            b"\x092026-01-01T00:00:00+00:00",
            b"\x0a\x00",
            b"\x0b{",
            b"\x0b1",
            b"\x81abc",
        ],
    )
    def test_invalid_encodings_raise_decryption_error(self, data: bytes) -> None:
        """Anything that is not a canonical encoding fails as DecryptionError, never another error."""
        with pytest.raises(DecryptionError):
            decode_value(data)
