"""Wire-format v1 vectors: an independent decoder, vaultkit's own decrypt, and reproducibility.

``independent_decode`` is written from docs/wire-format.md alone and imports nothing from vaultkit,
so a disagreement between it and the library shows up here.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import struct
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultkit import Vault
from vaultkit.core.envelope import wrap_context
from vaultkit.errors import ConfigurationError, DecryptionError, UnsupportedFormatError
from vaultkit.store import DataKeyRecord, DekState, MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

VECTORS = Path(__file__).parents[2] / "vectors"
VALID = json.loads((VECTORS / "wire_v1_valid.json").read_text(encoding="utf-8"))
INVALID = json.loads((VECTORS / "wire_v1_invalid.json").read_text(encoding="utf-8"))
SCHEMA_VALID = json.loads((VECTORS / "wire_v1_schema_valid.json").read_text(encoding="utf-8"))
SCHEMA_INVALID = json.loads((VECTORS / "wire_v1_schema_invalid.json").read_text(encoding="utf-8"))
ALL_VALID = VALID["vectors"] + SCHEMA_VALID["vectors"]
ALL_INVALID = INVALID["vectors"] + SCHEMA_INVALID["vectors"]


class UnsupportedError(Exception):
    """The independent decoder met a version or suite it does not know."""


class RejectedError(Exception):
    """The independent decoder could not authenticate the value."""


def _u16(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def independent_decode(
    blob: bytes, dek: bytes, domain: str, context: dict[str, Any] | None
) -> bytes:
    """Return the typed plaintext of a v1 value, following docs/wire-format.md step by step."""
    if len(blob) < 81 or blob[:2] != b"\xf6\x56":
        raise RejectedError
    if blob[2] != 1 or blob[3] != 1:
        raise UnsupportedError
    dek_id, commitment, nonce, body = blob[4:20], blob[20:52], blob[52:64], blob[64:]

    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=dek_id, info=info).derive(dek)

    if commitment != hkdf(b"vaultkit v1 key commitment"):
        raise RejectedError
    entries = sorted((context or {}).items())
    aad = blob[:52] + _u16(domain.encode()) + struct.pack(">H", len(entries))
    for key, value in entries:
        aad += _u16(key.encode()) + _u16(str(value).encode())
    try:
        return AESGCM(hkdf(b"vaultkit v1 AES-256-GCM key")).decrypt(nonce, body, aad)
    except Exception:
        raise RejectedError from None


def typed(plaintext: bytes) -> Any:
    """Decode the typed plaintext per the table in docs/wire-format.md."""
    tag, body = plaintext[0], plaintext[1:]
    if tag & 0x80:
        tag &= 0x7F
        body = body[: body.rindex(b"\x80")]
    return {
        0x01: lambda b: b.decode(),
        0x02: bytes,
        0x03: lambda b: int.from_bytes(b, "big", signed=True),
        0x04: lambda b: b == b"\x01",
        0x05: lambda b: struct.unpack(">d", b)[0],
        0x06: lambda b: Decimal(b.decode()),
        0x07: lambda b: dt.date.fromisoformat(b.decode()),
        0x08: lambda b: dt.datetime.fromisoformat(b.decode()),
        0x09: lambda b: dt.datetime.fromisoformat(b.decode()),
        0x0A: lambda b: uuid.UUID(bytes=b),
        0x0B: lambda b: json.loads(b),
    }[tag](body)


def expected_value(spec: dict[str, Any]) -> Any:
    kind, value = spec["type"], spec.get("value")
    return {
        "str": lambda: value,
        "bytes": lambda: bytes.fromhex(spec["hex"]),
        "bool": lambda: value,
        "int": lambda: int(value),
        "float": lambda: float(value),
        "Decimal": lambda: Decimal(value),
        "date": lambda: dt.date.fromisoformat(value),
        "datetime": lambda: dt.datetime.fromisoformat(value),
        "UUID": lambda: uuid.UUID(value),
        "json": lambda: value,
    }[kind]()


def vault_holding_the_vector_dek(vector: dict[str, Any]) -> Vault:
    """A vault whose key store holds the vectors' fixed DEK, wrapped as usual."""
    provider = InMemoryKeyProvider(["identity", "financial", "medical"])
    store = MemoryKeyStore()
    dek_id = bytes.fromhex(vector["dek_id"])
    for domain in ("identity", "financial", "medical"):
        if domain != vector["domain"]:
            continue
        ref = provider.primary(domain)
        wrapped = provider.wrap(
            ref, bytes.fromhex(vector["dek"]), context=wrap_context(domain, dek_id)
        )
        store.insert(
            DataKeyRecord(
                dek_id=dek_id,
                domain=domain,
                purpose="data",
                kek_id=ref.key_id,
                kek_version=ref.version,
                wrapped=wrapped,
                state=DekState.ACTIVE,
                created_at=dt.datetime.now(dt.UTC),
            )
        )
    return Vault(provider=provider, store=store, domains=["identity", "financial", "medical"])


@pytest.mark.parametrize("v", ALL_VALID, ids=[v["description"] for v in ALL_VALID])
class TestValidVectors:
    def test_independent_decoder_reads_it(self, v: dict[str, Any]) -> None:
        """The decoder written from the document alone recovers the encoded plaintext and value."""
        plain = independent_decode(
            bytes.fromhex(v["ciphertext"]), bytes.fromhex(v["dek"]), v["domain"], v["context"]
        )
        assert plain.hex() == v["encoded_plaintext"]
        got, want = typed(plain), expected_value(v["value"])
        assert got == want and type(got) is type(want)

    def test_vault_decrypts_it(self, v: dict[str, Any]) -> None:
        """vaultkit's own decrypt returns the same value, of the same type."""
        with vault_holding_the_vector_dek(v) as vault:
            got = vault.decrypt(
                bytes.fromhex(v["ciphertext"]), context=v["context"], domain=v["domain"]
            )
        want = expected_value(v["value"])
        assert got == want and type(got) is type(want)
        if isinstance(want, dt.datetime):
            assert got.utcoffset() == want.utcoffset()  # type: ignore[union-attr]
        if isinstance(want, float):
            assert str(got) == str(want)  # keeps -0.0


@pytest.mark.parametrize("v", ALL_INVALID, ids=[v["description"] for v in ALL_INVALID])
class TestInvalidVectors:
    def test_independent_decoder_rejects_it(self, v: dict[str, Any]) -> None:
        """The independent decoder refuses every damaged vector, in the documented way."""
        expected = UnsupportedError if v["error"] == "unsupported" else RejectedError
        with pytest.raises(expected):
            independent_decode(
                bytes.fromhex(v["ciphertext"]), bytes.fromhex(v["dek"]), v["domain"], v["context"]
            )

    def test_vault_rejects_it(self, v: dict[str, Any]) -> None:
        """Vault.decrypt refuses it with DecryptionError (UnsupportedFormatError for versions)."""
        expected = UnsupportedFormatError if v["error"] == "unsupported" else DecryptionError
        with vault_holding_the_vector_dek(v) as vault, pytest.raises(expected) as info:
            vault.decrypt(bytes.fromhex(v["ciphertext"]), context=v["context"], domain=v["domain"])
        if v["error"] == "authentication":
            assert type(info.value) is DecryptionError
            assert str(info.value) == "ciphertext could not be authenticated"


def _field_for(vault: Vault, v: dict[str, Any]) -> Any:
    context = v["context"]
    return vault.field(
        v["domain"],
        schema=context.get("schema"),
        table=context["table"],
        column=context["column"],
        row_bound="row" in context,
    )


@pytest.mark.parametrize(
    "v", SCHEMA_VALID["vectors"], ids=[v["description"] for v in SCHEMA_VALID["vectors"]]
)
def test_column_cipher_binds_like_the_schema_vectors(v: dict[str, Any]) -> None:
    """A FieldCipher given the vector's schema, table and column decrypts it: the column types
    bind names exactly as docs/wire-format.md's column binding says."""
    with vault_holding_the_vector_dek(v) as vault:
        got = _field_for(vault, v).decrypt(
            bytes.fromhex(v["ciphertext"]), row=v["context"].get("row")
        )
    want = expected_value(v["value"])
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "v",
    [v for v in SCHEMA_INVALID["vectors"] if v["context"].get("schema") != ""],
    ids=lambda v: v["description"],
)
def test_column_cipher_rejects_the_schema_invalid_vectors(v: dict[str, Any]) -> None:
    """A FieldCipher bound to the wrong schema, table/column split or row refuses the value."""
    with vault_holding_the_vector_dek(v) as vault, pytest.raises(DecryptionError):
        _field_for(vault, v).decrypt(bytes.fromhex(v["ciphertext"]), row=v["context"].get("row"))


def test_column_cipher_refuses_an_empty_schema_name() -> None:
    """An empty schema name is refused when the cipher is made, not bound as an empty entry."""
    with vault_holding_the_vector_dek(SCHEMA_VALID["vectors"][0]) as vault:
        with pytest.raises(ConfigurationError, match="schema name must not be empty"):
            vault.field("identity", schema="", table="members", column="name")


def test_generator_reproduces_the_committed_files() -> None:
    """The generator, run with today's encoder, writes the released files byte for byte."""
    spec = importlib.util.spec_from_file_location(
        "generate_wire_v1", VECTORS / "generate_wire_v1.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.render().items():
        assert (VECTORS / name).read_text(encoding="utf-8") == text, name


def test_vector_files_record_their_provenance() -> None:
    """Every vector file names its source, generator and verifier."""
    for path in VECTORS.glob("*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert {"source", "generated_by", "verified_by"} <= doc.keys(), path.name
