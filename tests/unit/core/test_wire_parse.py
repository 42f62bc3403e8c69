"""Tests for vaultkit.core.wire's header reader: parse_value and the named offsets, against the vectors.

The expected fields come from the vector files (``dek_id``, ``nonce``, the documented version and
suite) and from the commitment computed here with HKDF as docs/wire-format.md describes it, not
from vaultkit's own encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultkit.core import wire
from vaultkit.errors import DecryptionError

VECTORS = Path(__file__).parents[2] / "vectors"


def _load(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / name).read_text(encoding="utf-8"))[
        "vectors"
    ]
    return vectors


VALID = _load("wire_v1_valid.json") + _load("wire_v1_schema_valid.json")
INVALID = {v["description"]: v for v in _load("wire_v1_invalid.json")}


def _commitment(vector: dict[str, Any]) -> bytes:
    dek_id = bytes.fromhex(vector["dek_id"])
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=dek_id, info=b"vaultkit v1 key commitment"
    )
    return hkdf.derive(bytes.fromhex(vector["dek"]))


@pytest.mark.parametrize("vector", VALID, ids=[v["description"] for v in VALID])
class TestValidVectors:
    def test_parse_value_gives_the_documented_fields(self, vector: dict[str, Any]) -> None:
        """Each valid vector parses to version 1, suite 1, its DEK id and its DEK's commitment."""
        blob = bytes.fromhex(vector["ciphertext"])
        header = wire.parse_value(blob)
        assert header == wire.ValueHeader(
            version=1,
            suite=1,
            dek_id=bytes.fromhex(vector["dek_id"]),
            commitment=_commitment(vector),
        )
        assert wire.parse_header(blob) == (
            wire.Suite(header.suite),
            header.dek_id,
            header.commitment,
        )

    def test_named_offsets_pick_the_documented_fields(self, vector: dict[str, Any]) -> None:
        """VERSION_OFFSET, SUITE_OFFSET and the slices select version, suite, DEK id, commitment
        and nonce of a stored value, and DEK_ID_SQL_START is the DEK id's 1-based position."""
        blob = bytes.fromhex(vector["ciphertext"])
        assert blob[wire.VERSION_OFFSET] == wire.VERSION_1 == 1
        assert blob[wire.SUITE_OFFSET] == wire.Suite.AES256_GCM_HKDF_SHA256_COMMIT
        assert blob[wire.DEK_ID_SLICE] == bytes.fromhex(vector["dek_id"])
        assert blob[wire.COMMITMENT_SLICE] == _commitment(vector)
        assert blob[wire.NONCE_SLICE] == bytes.fromhex(vector["nonce"])
        start = wire.DEK_ID_SQL_START
        assert blob[start - 1 : start - 1 + wire.DEK_ID_SIZE] == bytes.fromhex(vector["dek_id"])


class TestLayout:
    def test_offsets_tile_the_header(self) -> None:
        """Magic, version, suite, DEK id, commitment and nonce follow each other without a gap."""
        assert wire.VERSION_OFFSET == len(wire.MAGIC)
        assert wire.SUITE_OFFSET == wire.VERSION_OFFSET + 1
        assert wire.DEK_ID_SLICE.start == wire.SUITE_OFFSET + 1
        assert wire.DEK_ID_SLICE.stop - wire.DEK_ID_SLICE.start == wire.DEK_ID_SIZE
        assert wire.COMMITMENT_SLICE.start == wire.DEK_ID_SLICE.stop
        assert wire.COMMITMENT_SLICE.stop == wire.HEADER_SIZE
        assert wire.COMMITMENT_SLICE.stop - wire.COMMITMENT_SLICE.start == wire.COMMITMENT_SIZE
        assert wire.NONCE_SLICE == slice(wire.HEADER_SIZE, wire.PREFIX_SIZE)
        assert wire.NONCE_SLICE.stop - wire.NONCE_SLICE.start == wire.NONCE_SIZE


class TestParseValue:
    @pytest.mark.parametrize(
        "data", [b"", b"J", b"Jan Peeters", "Jan".encode("utf-16"), b"\xf6", b"\x56\xf6" * 50]
    )
    def test_no_magic_is_none(self, data: bytes) -> None:
        """A value that does not start with the magic (legacy plaintext) gives None."""
        assert wire.parse_value(data) is None

    def test_plain_text_vector_is_none(self) -> None:
        """The invalid vector "plain UTF-8 text, no header" is not taken for a value."""
        assert (
            wire.parse_value(bytes.fromhex(INVALID["plain UTF-8 text, no header"]["ciphertext"]))
            is None
        )

    def test_truncated_to_the_header_raises(self) -> None:
        """A value with the magic but shorter than the smallest value raises DecryptionError."""
        with pytest.raises(DecryptionError):
            wire.parse_value(bytes.fromhex(INVALID["truncated to the header"]["ciphertext"]))

    def test_truncated_body_still_parses(self) -> None:
        """A value cut short in its body keeps a readable header (the tag check refuses it later)."""
        vector = INVALID["truncated by one byte"]
        header = wire.parse_value(bytes.fromhex(vector["ciphertext"]))
        assert header is not None and header.dek_id == bytes.fromhex(vector["dek_id"])

    @pytest.mark.parametrize("size", [2, 3, 4, 20, wire.HEADER_SIZE, wire.MIN_VALUE_SIZE - 1])
    def test_magic_and_too_short_raises(self, size: int) -> None:
        """Every length from the magic alone to one byte short of a value raises, never slices."""
        with pytest.raises(DecryptionError):
            wire.parse_value(bytes.fromhex(VALID[0]["ciphertext"])[:size])

    @pytest.mark.parametrize(
        ("description", "version", "suite"),
        [("format version 2", 2, 1), ("unknown suite 9", 1, 9)],
    )
    def test_unknown_version_or_suite_is_returned_as_read(
        self, description: str, version: int, suite: int
    ) -> None:
        """parse_value reports an unknown version or suite as read (parse_header refuses them)."""
        header = wire.parse_value(bytes.fromhex(INVALID[description]["ciphertext"]))
        assert header is not None
        assert (header.version, header.suite) == (version, suite)
        assert header.dek_id == bytes.fromhex(INVALID[description]["dek_id"])

    def test_unauthenticated(self) -> None:
        """A value whose body was tampered with still parses: the header is not authenticated here."""
        header = wire.parse_value(bytes.fromhex(INVALID["tag bit flipped"]["ciphertext"]))
        assert header is not None and header.version == 1
