"""Generate tests/vectors/wire_v1_valid.json, wire_v1_invalid.json and the schema-binding pair.

Run from the repository root: ``python tests/vectors/generate_wire_v1.py``. The vectors use fixed
test keys and fixed nonces (never do that outside a vector file) so that they are reproducible; the
test suite checks that this script still produces the committed files byte for byte, and decodes
every vector with an independent decoder written from docs/wire-format.md that imports only
``cryptography``. Released vector files are never edited: a new wire version gets new files.

``wire_v1_schema_valid.json`` and ``wire_v1_schema_invalid.json`` (added later, as their own files)
cover the column binding of docs/wire-format.md: schema, table and column as separate context
entries (``vaultkit.core.wire.cell_context``), the schema entry only where a table has a schema.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkit._codec import encode_value
from vaultkit.core import aead, wire

HERE = Path(__file__).parent
DEK = bytes(range(32))
DEK_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
MEMBER = {"table": "members", "column": "name", "row": "m-17"}

# (description, domain, context, value, pad_to, JSON form of the value for the file)
CASES: list[tuple[str, str, dict[str, Any] | None, Any, int | None]] = [
    ("str in a row-bound cell", "identity", MEMBER, "Jan Peeters", None),
    ("empty str", "identity", MEMBER, "", None),
    ("non-ASCII str", "identity", MEMBER, "Élodie Müller-Ñúñez 😀", None),
    ("str without context", "identity", None, "no context", None),
    ("str padded to 16", "identity", MEMBER, "M", 16),
    ("bytes", "financial", {"table": "claims", "column": "scan"}, b"\x00\x01\xfe\xff", None),
    ("int, negative and large", "financial", {"table": "t", "column": "c"}, -(2**70) + 5, None),
    ("int zero", "financial", {"table": "t", "column": "c"}, 0, None),
    ("bool", "medical", {"table": "t", "column": "c"}, True, None),
    ("float negative zero", "medical", {"table": "t", "column": "c"}, -0.0, None),
    (
        "Decimal keeps its exponent",
        "financial",
        {"table": "t", "column": "c"},
        Decimal("42.50"),
        None,
    ),
    ("date", "identity", {"table": "t", "column": "c"}, dt.date(1978, 3, 14), None),
    (
        "aware datetime keeps its offset",
        "medical",
        {"table": "t", "column": "c"},
        dt.datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        None,
    ),
    (
        "naive datetime stays naive",
        "medical",
        {"table": "t", "column": "c"},
        dt.datetime(2026, 3, 1, 9, 30),
        None,
    ),
    (
        "UUID",
        "identity",
        {"table": "t", "column": "c"},
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        None,
    ),
    ("JSON object", "medical", {"table": "chats", "column": "body"}, {"b": [1, 2], "a": "x"}, None),
    ("integer row key", "identity", {"table": "t", "column": "c", "row": 42}, "row 42", None),
]


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"type": "bytes", "hex": value.hex()}
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": repr(value)}
    if isinstance(value, Decimal):
        return {"type": "Decimal", "value": str(value)}
    if isinstance(value, dt.datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"type": "UUID", "value": str(value)}
    if isinstance(value, dict | list):
        return {"type": "json", "value": value}
    return {"type": "str", "value": value}


def _nonce(index: int) -> bytes:
    return hashlib.sha256(f"vaultkit wire v1 vector nonce {index}".encode()).digest()[:12]


def _seal(domain: str, context: dict[str, Any] | None, plaintext: bytes, nonce: bytes) -> bytes:
    cipher, commitment = aead.derive_suite1(DEK, DEK_ID)
    header = wire.build_header(DEK_ID, commitment)
    aad = header + wire.context_block(domain, context)
    return aead.seal_with_nonce(cipher, nonce, plaintext, aad, header)


def _ctx(context: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if context is None else {k: v for k, v in context.items()}


def build_valid() -> list[dict[str, Any]]:
    vectors = []
    for index, (description, domain, context, value, pad_to) in enumerate(CASES):
        plaintext = encode_value(value, pad_to=pad_to)
        vectors.append(
            {
                "description": description,
                "dek": DEK.hex(),
                "dek_id": DEK_ID.hex(),
                "domain": domain,
                "context": _ctx(context),
                "nonce": _nonce(index).hex(),
                "encoded_plaintext": plaintext.hex(),
                "value": _json_value(value),
                "ciphertext": _seal(domain, context, plaintext, _nonce(index)).hex(),
            }
        )
    return vectors


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes((data[index] ^ 0x01,)) + data[index + 1 :]


# The column binding (docs/wire-format.md, "Column binding"): contexts as the column types build
# them. (description, domain, context, value, pad_to)
TENANT_A = wire.cell_context(schema="tenant_a", table="members", column="name")
DOTTED_TABLE = wire.cell_context(table="a.b", column="c")
SCHEMA_CASES: list[tuple[str, str, dict[str, Any], Any, int | None]] = [
    ("str in a table of schema tenant_a", "identity", TENANT_A, "Jan Peeters", None),
    (
        "the same table in schema tenant_b",
        "identity",
        wire.cell_context(schema="tenant_b", table="members", column="name"),
        "Jan Peeters",
        None,
    ),
    (
        "row-bound cell in a schema",
        "medical",
        {**wire.cell_context(schema="tenant_a", table="notes", column="body"), "row": "m-17"},
        "diabetes type 2",
        None,
    ),
    (
        "integer row key in a schema",
        "medical",
        {**wire.cell_context(schema="tenant_a", table="chats", column="doc"), "row": 42},
        {"b": [1, 2], "a": "x"},
        None,
    ),
    ("dot in the table name, no schema", "identity", DOTTED_TABLE, "dotted table", None),
    (
        "dot in the column name, no schema",
        "identity",
        wire.cell_context(table="a", column="b.c"),
        "dotted column",
        None,
    ),
    (
        "non-ASCII schema name",
        "identity",
        wire.cell_context(schema="zörg", table="leden", column="naam"),
        "Élodie",
        None,
    ),
]


def _schema_nonce(index: int) -> bytes:
    return hashlib.sha256(f"vaultkit wire v1 schema vector nonce {index}".encode()).digest()[:12]


def build_schema_valid() -> list[dict[str, Any]]:
    vectors = []
    for index, (description, domain, context, value, pad_to) in enumerate(SCHEMA_CASES):
        plaintext = encode_value(value, pad_to=pad_to)
        nonce = _schema_nonce(index)
        vectors.append(
            {
                "description": description,
                "dek": DEK.hex(),
                "dek_id": DEK_ID.hex(),
                "domain": domain,
                "context": context,
                "nonce": nonce.hex(),
                "encoded_plaintext": plaintext.hex(),
                "value": _json_value(value),
                "ciphertext": _seal(domain, context, plaintext, nonce).hex(),
            }
        )
    return vectors


def build_schema_invalid() -> list[dict[str, Any]]:
    valid = build_schema_valid()
    tenant, row_bound, dotted = valid[0], valid[2], valid[4]

    def variant(description: str, base: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        entry = {k: base[k] for k in ("dek", "dek_id", "domain")}
        return {
            "description": description,
            **entry,
            "context": context,
            "ciphertext": base["ciphertext"],
            "error": "authentication",
        }

    return [
        variant(
            "copied into the same table of schema tenant_b",
            tenant,
            wire.cell_context(schema="tenant_b", table="members", column="name"),
        ),
        variant(
            "read without the schema (the binding before the schema entry)",
            tenant,
            wire.cell_context(table="members", column="name"),
        ),
        variant(
            "schema joined into the table name",
            tenant,
            wire.cell_context(table="tenant_a.members", column="name"),
        ),
        variant(
            "schema and table swapped",
            tenant,
            wire.cell_context(schema="members", table="tenant_a", column="name"),
        ),
        variant("empty schema entry", tenant, {**TENANT_A, "schema": ""}),
        variant(
            "another row of the same schema",
            row_bound,
            {**row_bound["context"], "row": "m-18"},
        ),
        variant(
            "row-bound cell copied to schema tenant_b",
            row_bound,
            {**row_bound["context"], "schema": "tenant_b"},
        ),
        variant(
            "dot moved from the table into the column",
            dotted,
            wire.cell_context(table="a", column="b.c"),
        ),
        variant(
            "dotted table read as schema a, table b",
            dotted,
            wire.cell_context(schema="a", table="b", column="c"),
        ),
    ]


def build_invalid() -> list[dict[str, Any]]:
    base = build_valid()[0]
    good = bytes.fromhex(base["ciphertext"])
    cipher, commitment = aead.derive_suite1(DEK, DEK_ID)
    nonce = _nonce(0)
    plaintext = bytes.fromhex(base["encoded_plaintext"])

    def variant(description: str, ciphertext: bytes, error: str, **changes: Any) -> dict[str, Any]:
        entry = {k: base[k] for k in ("dek", "dek_id", "domain", "context")}
        entry.update(changes)
        return {"description": description, **entry, "ciphertext": ciphertext.hex(), "error": error}

    # A well-formed GCM value whose header claims another version, authenticated under that header,
    # so that only the version check can reject it.
    def reheader(version: int, suite: int) -> bytes:
        header = wire.MAGIC + bytes((version, suite)) + DEK_ID + commitment
        aad = header + wire.context_block(base["domain"], base["context"])
        return aead.seal_with_nonce(cipher, nonce, plaintext, aad, header)

    other_cipher = AESGCM(bytes(32))
    commitment_at = wire.COMMITMENT_SLICE
    bad_commit = (
        good[: commitment_at.start] + bytes(wire.COMMITMENT_SIZE) + good[commitment_at.stop :]
    )
    return [
        variant("empty input", b"", "authentication"),
        variant("plain UTF-8 text, no header", b"Jan Peeters" * 10, "authentication"),
        variant("truncated by one byte", good[:-1], "authentication"),
        variant("truncated to the header", good[: wire.PREFIX_SIZE], "authentication"),
        variant("tag bit flipped", _flip(good, len(good) - 1), "authentication"),
        variant("ciphertext bit flipped", _flip(good, wire.PREFIX_SIZE), "authentication"),
        variant("nonce bit flipped", _flip(good, wire.HEADER_SIZE), "authentication"),
        variant("magic changed", _flip(good, 0), "authentication"),
        variant("commitment zeroed", bad_commit, "authentication"),
        variant("DEK id changed", _flip(good, wire.DEK_ID_SLICE.start), "authentication"),
        variant("another row", good, "authentication", context={**MEMBER, "row": "m-18"}),
        variant("another column", good, "authentication", context={**MEMBER, "column": "email"}),
        variant("another domain", good, "authentication", domain="medical"),
        variant("context dropped", good, "authentication", context=None),
        variant("extra context entry", good, "authentication", context={**MEMBER, "x": "1"}),
        variant(
            "same bytes under another key",
            good[: wire.HEADER_SIZE] + aead.seal_with_nonce(other_cipher, nonce, plaintext, b""),
            "authentication",
        ),
        variant("format version 2", reheader(2, 1), "unsupported"),
        variant("unknown suite 9", reheader(1, 9), "unsupported"),
    ]


def _document(
    kind: str,
    vectors: list[dict[str, Any]],
    source: str = "vaultkit wire format v1, docs/wire-format.md",
) -> dict[str, Any]:
    return {
        "source": source,
        "generated_by": "tests/vectors/generate_wire_v1.py (vaultkit's own encoder, fixed test keys and nonces)",
        "verified_by": "tests/unit/core/test_vectors.py: an independent decoder from docs/wire-format.md using only cryptography",
        "kind": kind,
        "vectors": vectors,
    }


def render() -> dict[str, str]:
    """Return file name -> JSON text of both vector files."""
    return {
        "wire_v1_valid.json": json.dumps(
            _document("valid", build_valid()), indent=2, ensure_ascii=False
        )
        + "\n",
        "wire_v1_invalid.json": json.dumps(
            _document("invalid", build_invalid()), indent=2, ensure_ascii=False
        )
        + "\n",
        "wire_v1_schema_valid.json": json.dumps(
            _document("valid", build_schema_valid(), _SCHEMA_SOURCE), indent=2, ensure_ascii=False
        )
        + "\n",
        "wire_v1_schema_invalid.json": json.dumps(
            _document("invalid", build_schema_invalid(), _SCHEMA_SOURCE),
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
    }


_SCHEMA_SOURCE = (
    'vaultkit wire format v1, docs/wire-format.md, "Column binding" (schema, table and column as '
    "separate context entries)"
)


if __name__ == "__main__":
    for name, text in render().items():
        target = HERE / name
        if (
            target.exists()
            and target.read_text(encoding="utf-8") != text
            and "--force" not in sys.argv
        ):
            sys.exit(f"{name} exists and differs; released vector files are never edited")
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}")
