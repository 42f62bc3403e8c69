"""Tests for vaultkit._codec: canonical typed encoding inside the ciphertext."""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import vaultkit.sqla
from vaultkit import Vault
from vaultkit._codec import decode_value, encode_value
from vaultkit.errors import DecryptionError, EncodingError, VaultkitError
from vaultkit.sqla import Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

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


DEEP = 100_000


def _nested(depth: int, *, as_dict: bool = False) -> Any:
    value: Any = {} if as_dict else []
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


class TestDeepJSON:
    @pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
    def test_deep_json_is_refused_on_encode(self, as_dict: bool) -> None:
        """JSON nested 100,000 deep raises EncodingError (a ValueError), never RecursionError."""
        with pytest.raises(EncodingError, match="nested too deeply") as info:
            encode_value(_nested(DEEP, as_dict=as_dict))
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, VaultkitError)

    @pytest.mark.parametrize(
        "payload",
        [
            b"[" * DEEP + b"]" * DEEP,
            b'{"a":' * DEEP + b"0" + b"}" * DEEP,
            b"[" * DEEP,
            b'[{"a":' * (DEEP // 2) + b"0" + b"}]" * (DEEP // 2),
        ],
        ids=["list", "dict", "unterminated", "mixed"],
    )
    def test_deep_json_payload_is_a_decryption_error(self, payload: bytes) -> None:
        """An authenticated JSON payload nested 100,000 deep decodes to DecryptionError."""
        with pytest.raises(DecryptionError):
            decode_value(b"\x0b" + payload)

    def test_moderately_nested_json_round_trips(self) -> None:
        """Nesting well inside the recursion limit (200 levels) still round-trips."""
        value = _nested(200)
        assert decode_value(encode_value(value)) == value

    def test_encrypted_json_column_refuses_deep_values(self, tmp_path: Path) -> None:
        """An Encrypted(JSON) column raises vaultkit errors for deep JSON, written or read."""
        vault = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["medical"])
        metadata = sa.MetaData()
        docs = sa.Table(
            "docs",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("doc", Encrypted(sa.JSON, domain="medical")),
        )
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
        metadata.create_all(engine)
        vaultkit.sqla.configure(vault)
        try:
            with (
                engine.begin() as conn,
                pytest.raises((EncodingError, sa.exc.StatementError)) as info,
            ):
                conn.execute(docs.insert().values(id=1, doc=_nested(DEEP)))
            # SQLAlchemy may wrap an error raised by a bind processor; the cause is vaultkit's.
            error = getattr(info.value, "orig", None) or info.value
            assert isinstance(error, EncodingError), type(info.value)
            # A key holder writes a payload that deep with plain SQL: reading it fails cleanly.
            cipher = vault.field("medical", table="docs", column="doc")
            hostile = cipher.sealer()(b"\x0b" + b"[" * DEEP)
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO docs (id, doc) VALUES (2, :b)"), {"b": hostile})
            with engine.connect() as conn, pytest.raises(DecryptionError):
                conn.execute(sa.select(docs.c.doc).where(docs.c.id == 2)).all()
        finally:
            vaultkit.sqla.configure(None)
            engine.dispose()
            vault.close()
