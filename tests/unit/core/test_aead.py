"""Tests for vaultkit.core.aead: published vectors, key derivation and commitment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultkit.core import aead
from vaultkit.errors import DecryptionError

VECTORS = Path(__file__).parents[2] / "vectors"
GCM = json.loads((VECTORS / "gcm_aes256_mcgrew_viega.json").read_text())["vectors"]
HKDF_VECTORS = json.loads((VECTORS / "hkdf_sha256_rfc5869.json").read_text())["vectors"]


@pytest.mark.parametrize("v", GCM, ids=[v["name"] for v in GCM])
def test_gcm_known_answers(v: dict[str, str]) -> None:
    """aead.open_ authenticates and decrypts the published AES-256-GCM test cases."""
    cipher = AESGCM(bytes.fromhex(v["key"]))
    sealed = bytes.fromhex(v["iv"] + v["ciphertext"] + v["tag"])
    assert aead.open_(cipher, sealed, bytes.fromhex(v["aad"])) == bytes.fromhex(v["plaintext"])


@pytest.mark.parametrize("v", GCM, ids=[v["name"] for v in GCM])
def test_gcm_known_answers_reject_a_flipped_tag(v: dict[str, str]) -> None:
    """A published test case with one tag bit flipped fails as DecryptionError."""
    cipher = AESGCM(bytes.fromhex(v["key"]))
    tag = bytearray.fromhex(v["tag"])
    tag[0] ^= 1
    sealed = bytes.fromhex(v["iv"] + v["ciphertext"]) + bytes(tag)
    with pytest.raises(DecryptionError):
        aead.open_(cipher, sealed, bytes.fromhex(v["aad"]))


@pytest.mark.parametrize("v", HKDF_VECTORS, ids=[v["name"] for v in HKDF_VECTORS])
def test_hkdf_known_answers(v: dict[str, str | int]) -> None:
    """HKDF-SHA256 as vaultkit calls it reproduces RFC 5869."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=int(v["length"]),
        salt=bytes.fromhex(str(v["salt"])) or None,
        info=bytes.fromhex(str(v["info"])),
    ).derive(bytes.fromhex(str(v["ikm"])))
    assert okm.hex() == v["okm"]


class TestDerivation:
    def test_derivation_matches_the_documented_formula(self) -> None:
        """Commitment and encryption key are HKDF-SHA256 of the DEK, salted by the DEK id."""
        dek, dek_id = bytes(range(32)), bytes(16)
        cipher, commitment = aead.derive_suite1(dek, dek_id)
        expected = HKDF(hashes.SHA256(), 32, dek_id, b"vaultkit v1 key commitment").derive(dek)
        assert commitment == expected
        enc_key = HKDF(hashes.SHA256(), 32, dek_id, b"vaultkit v1 AES-256-GCM key").derive(dek)
        sealed = aead.seal(cipher, b"x", b"aad")
        assert AESGCM(enc_key).decrypt(sealed[:12], sealed[12:], b"aad") == b"x"

    def test_encryption_key_is_not_the_dek(self) -> None:
        """The DEK itself never keys AES-GCM."""
        dek, dek_id = bytes(range(32)), bytes(16)
        cipher, _ = aead.derive_suite1(dek, dek_id)
        sealed = aead.seal(cipher, b"x", b"")
        with pytest.raises(DecryptionError):
            aead.open_(AESGCM(dek), sealed, b"")

    def test_commitment_depends_on_key_and_id(self) -> None:
        """Different DEKs or ids give different commitments."""
        a = aead.derive_suite1(bytes(32), bytes(16))[1]
        b = aead.derive_suite1(bytes(31) + b"\x01", bytes(16))[1]
        c = aead.derive_suite1(bytes(32), bytes(15) + b"\x01")[1]
        assert len({a, b, c}) == 3

    def test_nonces_are_fresh(self) -> None:
        """Sealing the same plaintext twice uses two different nonces."""
        cipher, _ = aead.derive_suite1(bytes(32), bytes(16))
        assert aead.seal(cipher, b"x", b"")[:12] != aead.seal(cipher, b"x", b"")[:12]

    def test_wrong_sizes_are_refused(self) -> None:
        """derive_suite1 refuses keys and ids of the wrong size."""
        with pytest.raises(ValueError, match="32 bytes"):
            aead.derive_suite1(bytes(16), bytes(16))
        with pytest.raises(ValueError, match="16 bytes"):
            aead.derive_suite1(bytes(32), bytes(8))

    def test_short_sealed_input_is_a_decryption_error(self) -> None:
        """open_ on fewer bytes than nonce and tag raises DecryptionError, not ValueError."""
        cipher, _ = aead.derive_suite1(bytes(32), bytes(16))
        with pytest.raises(DecryptionError):
            aead.open_(cipher, bytes(20), b"")
