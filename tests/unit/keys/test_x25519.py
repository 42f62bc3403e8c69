"""Tests for the X25519 provider: encrypt-only writers, and a database writer who holds the public key.

The attacker here holds the unit's public key (it is handed out) and can write to the database
with plain SQL; they do not hold the unit's private key or a pinned writer's signing key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultkit import KeyDomain, Principal, Vault
from vaultkit._codec import encode_value
from vaultkit._keyring import index_key_id as _index_key_id
from vaultkit.audit import AuditLog
from vaultkit.core import wire
from vaultkit.core.envelope import DataKey, wrap_context
from vaultkit.errors import (
    ConfigurationError,
    DecryptionError,
    KeyAuthenticationError,
    KeyProviderError,
    KeyStoreError,
)
from vaultkit.keys import X25519KeyProvider
from vaultkit.keys.provider import KeyRef
from vaultkit.keys.x25519 import _SIG_LABEL, _binding, _writer_id
from vaultkit.store import SQLKeyStore
from vaultkit.testing import InMemoryKeyProvider

COACH = Principal("coach-17", grants={"medical"})
DOMAINS = [KeyDomain("identity"), KeyDomain("medical", restricted=True)]
AUDITED = [KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)]
CONTEXT = {"table": "claims", "column": "certificate"}
RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
_IDENTITY = InMemoryKeyProvider(["identity"])


# -- what the attacker can do with the public key alone -------------------------------------------


def public_raw(public_pem: bytes) -> bytes:
    key = serialization.load_pem_public_key(public_pem)
    assert isinstance(key, X25519PublicKey)
    return key.public_bytes(*RAW)


def kek_id(public_pem: bytes) -> str:
    return f"x25519:medical:{hashlib.sha256(public_raw(public_pem)).hexdigest()[:16]}"


def sealed_to(public_pem: bytes, dek: bytes, context: bytes, ephemeral: bytes | None) -> bytes:
    """E || nonce || AES-GCM(DEK) to the public key, as the documented ECIES wrap does."""
    recipient = public_raw(public_pem)
    e = X25519PrivateKey.generate()
    e_raw = ephemeral if ephemeral is not None else e.public_key().public_bytes(*RAW)
    shared = e.exchange(X25519PublicKey.from_public_bytes(recipient)) if ephemeral is None else b""
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=e_raw + recipient,
        info=b"vaultkit x25519 wrap v1",
    ).derive(shared or bytes(32))
    nonce = os.urandom(12)
    return e_raw + nonce + AESGCM(key).encrypt(nonce, dek, context)


def legacy_wrap(
    public_pem: bytes, dek: bytes, context: bytes, ephemeral: bytes | None = None
) -> bytes:
    """The unauthenticated 02 form: what anyone holding the public key can make."""
    return b"\x02" + sealed_to(public_pem, dek, context, ephemeral)


def writer_wrap(
    signer: Ed25519PrivateKey,
    public_pem: bytes,
    dek: bytes,
    context: bytes,
    ephemeral: bytes | None = None,
) -> bytes:
    """A 04 form signed by ``signer``, built by hand (a hostile or unpinned writer)."""
    ref = KeyRef("medical", kek_id(public_pem), 1)
    body = (
        b"\x04" + _writer_id(signer.public_key()) + sealed_to(public_pem, dek, context, ephemeral)
    )
    return body + signer.sign(_SIG_LABEL + _binding(ref, context) + body)


def plant_row(
    url: str,
    dek_id: bytes,
    wrapped: bytes,
    kek: str,
    *,
    purpose: str = "data",
    name: str | None = None,
) -> None:
    """INSERT a key row with plain SQL, as a database writer would."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into vaultkit_data_keys (dek_id, domain, purpose, kek_id, kek_version,"
                " wrapped, state, created_at, subject, encryptions, name) values (:id, 'medical',"
                " :purpose, :kek, 1, :wrapped, 'active', :at, null, 0, :name)"
            ),
            {
                "id": dek_id.hex(),
                "purpose": purpose,
                "kek": kek,
                "wrapped": wrapped,
                "at": dt.datetime.now(dt.UTC),
                "name": name,
            },
        )
    engine.dispose()


def forged_value(dek: bytes, dek_id: bytes, plaintext: str) -> bytes:
    """A wire-format v1 value under a DEK the attacker chose, for the context of CONTEXT."""
    key = DataKey(dek, dek_id, "medical")
    nonce = os.urandom(12)
    aad = key.aad_prefix + wire.context_fields(CONTEXT)
    return key.header + nonce + key.cipher.encrypt(nonce, encode_value(plaintext), aad)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture
def writer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def unit(writer: Ed25519PrivateKey) -> X25519KeyProvider:
    return X25519KeyProvider.generate(["medical"], writers={"claims": writer.public_key()})


@pytest.fixture
def unit_vault(unit: X25519KeyProvider, url: str) -> Iterator[Vault]:
    with Vault(
        provider=_IDENTITY, store=url, domains=DOMAINS, providers={"medical": unit}
    ) as vault:
        yield vault


# -- forged data keys ----------------------------------------------------------------------------


class TestForgedDataKeys:
    @pytest.mark.parametrize("form", ["legacy", "unpinned writer"])
    def test_a_planted_dek_row_and_value_raise_decryption_error(
        self, form: str, unit: X25519KeyProvider, unit_vault: Vault, url: str
    ) -> None:
        """A DEK row and value made with only the public key raise DecryptionError at the unit."""
        pem = unit.public_pem("medical")[0]
        dek, dek_id = os.urandom(32), os.urandom(16)
        context = wrap_context("medical", dek_id, "data")
        wrapped = (
            legacy_wrap(pem, dek, context)
            if form == "legacy"
            else writer_wrap(Ed25519PrivateKey.generate(), pem, dek, context)
        )
        plant_row(url, dek_id, wrapped, kek_id(pem))
        blob = forged_value(dek, dek_id, "forged: no objection to the claim")
        with unit_vault.acting_as(COACH, purpose="claim-review"), pytest.raises(DecryptionError):
            unit_vault.decrypt(blob, context=CONTEXT)

    def test_a_pinned_writers_values_and_the_units_own_read(
        self, unit: X25519KeyProvider, writer: Ed25519PrivateKey, url: str
    ) -> None:
        """Values of a pinned writer and of the unit itself decrypt in a fresh unit vault."""
        with Vault(
            provider=_IDENTITY,
            store=url,
            domains=DOMAINS,
            providers={"medical": unit.public_only(signer=writer)},
        ) as claims:
            uploaded = claims.encrypt("uploaded certificate", domain="medical", context=CONTEXT)
        with Vault(
            provider=_IDENTITY, store=url, domains=DOMAINS, providers={"medical": unit}
        ) as first:
            own = first.encrypt("adviser's note", domain="medical", context=CONTEXT)
        with (
            Vault(
                provider=_IDENTITY, store=url, domains=DOMAINS, providers={"medical": unit}
            ) as again,
            again.acting_as(COACH, purpose="claim-review"),
        ):
            assert again.decrypt(uploaded, context=CONTEXT) == "uploaded certificate"
            assert again.decrypt(own, context=CONTEXT) == "adviser's note"
        kinds = {r.wrapped[:1] for r in SQLKeyStore(url).records(domain="medical")}
        assert kinds == {b"\x03", b"\x04"}

    def test_a_writer_signature_does_not_cover_another_row(
        self, unit: X25519KeyProvider, writer: Ed25519PrivateKey, url: str
    ) -> None:
        """A writer's signed wrapped key copied to a row of another DEK id does not unwrap."""
        pem = unit.public_pem("medical")[0]
        ref = unit.primary("medical")
        signed = unit.public_only(signer=writer).wrap(
            ref, os.urandom(32), context=wrap_context("medical", b"a" * 16)
        )
        with pytest.raises(KeyAuthenticationError):
            unit.unwrap(ref, signed, context=wrap_context("medical", b"b" * 16))
        tampered = signed[:20] + bytes([signed[20] ^ 1]) + signed[21:]
        with pytest.raises(KeyAuthenticationError, match="signature"):
            unit.unwrap(ref, tampered, context=wrap_context("medical", b"a" * 16))
        assert kek_id(pem) == ref.key_id

    def test_an_encrypt_only_provider_needs_a_signer(self, unit: X25519KeyProvider) -> None:
        """A public-only provider without a writer key is refused when it is built."""
        with pytest.raises(ConfigurationError, match="signer"):
            X25519KeyProvider.from_public_pem(
                {"medical": unit.public_pem("medical")},
                signer=None,  # type: ignore[arg-type]
            )


# -- named keys ----------------------------------------------------------------------------------


class TestNamedKeys:
    def test_a_planted_index_key_row_is_refused(
        self, unit: X25519KeyProvider, unit_vault: Vault, url: str
    ) -> None:
        """An index key row planted before the unit made its own is refused, never used."""
        pem = unit.public_pem("medical")[0]
        name = "members.email@v1"
        dek_id = _index_key_id("medical", name)
        wrapped = legacy_wrap(pem, os.urandom(32), wrap_context("medical", dek_id, "index"))
        plant_row(url, dek_id, wrapped, kek_id(pem), purpose="index", name=name)
        with pytest.raises(KeyStoreError, match="not made by the holder"):
            unit_vault.blind_index_key("medical", table="members", column="email")

    def test_a_pinned_writer_cannot_make_a_named_key(
        self, unit: X25519KeyProvider, writer: Ed25519PrivateKey, unit_vault: Vault, url: str
    ) -> None:
        """A named key signed by a pinned writer is refused; the writer's provider will not make one."""
        pem = unit.public_pem("medical")[0]
        name = "members.email@v1"
        dek_id = _index_key_id("medical", name)
        context = wrap_context("medical", dek_id, "index")
        with pytest.raises(KeyProviderError, match="data keys only"):
            unit.public_only(signer=writer).wrap(
                unit.primary("medical"), b"k" * 32, context=context
            )
        plant_row(
            url,
            dek_id,
            writer_wrap(writer, pem, os.urandom(32), context),
            kek_id(pem),
            purpose="index",
            name=name,
        )
        with pytest.raises(KeyStoreError, match="not made by the holder"):
            unit_vault.blind_index_key("medical", table="members", column="email")

    def test_a_replaced_audit_key_and_a_remaced_chain_are_refused(
        self, unit: X25519KeyProvider, url: str
    ) -> None:
        """Replacing the audit key row, deleting events and re-MACing the chain is refused."""
        with Vault(
            provider=_IDENTITY, store=url, domains=AUDITED, providers={"medical": unit}
        ) as vault:
            blob = vault.encrypt("diagnosis", domain="medical", context=CONTEXT)
            for i in range(4):
                with vault.acting_as(Principal(f"coach-{i}", grants={"medical"}), purpose="p"):
                    vault.decrypt(blob, context=CONTEXT)
        # The attacker: their own audit key, wrapped to the public key into the audit key row,
        # then the events they want gone deleted and the rest re-chained under their key.
        pem = unit.public_pem("medical")[0]
        forged_key = os.urandom(32)
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            dek_hex = conn.execute(
                sa.text("select dek_id from vaultkit_data_keys where purpose = 'audit'")
            ).scalar_one()
            context = wrap_context("medical", bytes.fromhex(dek_hex), "audit")
            conn.execute(
                sa.text("update vaultkit_data_keys set wrapped = :w where dek_id = :id"),
                {"w": legacy_wrap(pem, forged_key, context), "id": dek_hex},
            )
        import hmac as hmac_

        def forged_mac(data: bytes) -> bytes:
            return hmac_.new(forged_key, data, hashlib.sha256).digest()

        kept = [e for _, e, _, _ in AuditLog(engine, mac=forged_mac).read()][:2]
        with engine.begin() as conn:
            conn.execute(sa.text("drop table vaultkit_audit_events"))
            conn.execute(sa.text("drop table vaultkit_audit_head"))
        rebuilt = AuditLog(engine, mac=forged_mac)
        rebuilt.append(kept)
        assert rebuilt.verify().ok  # the forgery is consistent under the attacker's key
        engine.dispose()
        with pytest.raises(KeyStoreError, match="audit key"):
            Vault(provider=_IDENTITY, store=url, domains=AUDITED, providers={"medical": unit})


# -- small-order keys ----------------------------------------------------------------------------


SMALL_ORDER = [bytes(32), b"\x01" + bytes(31)]  # the points of order 1 and 4 (RFC 7748)


class TestSmallOrderKeys:
    @pytest.mark.parametrize("point", SMALL_ORDER)
    def test_a_small_order_public_key_is_refused_on_loading(
        self, point: bytes, writer: Ed25519PrivateKey
    ) -> None:
        """A small-order public key raises ConfigurationError when loaded, not ValueError later."""
        pem = X25519PublicKey.from_public_bytes(point).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(ConfigurationError, match="small order"):
            X25519KeyProvider.from_public_pem({"medical": [pem]}, signer=writer)

    @pytest.mark.parametrize("point", SMALL_ORDER)
    def test_a_small_order_ephemeral_key_raises_a_vaultkit_error(
        self, point: bytes, unit: X25519KeyProvider, writer: Ed25519PrivateKey
    ) -> None:
        """Wrapped bytes naming a small-order ephemeral key raise KeyAuthenticationError."""
        pem = unit.public_pem("medical")[0]
        ref = unit.primary("medical")
        context = wrap_context("medical", b"c" * 16)
        hostile = [
            legacy_wrap(pem, b"k" * 32, context, ephemeral=point),
            writer_wrap(writer, pem, b"k" * 32, context, ephemeral=point),
        ]
        for wrapped in hostile:
            with pytest.raises(KeyAuthenticationError):
                unit.unwrap(ref, wrapped, context=context)
        with pytest.raises(KeyAuthenticationError, match="small order"):
            unit._unwrap(ref, hostile[0], context=context, legacy=True)


# -- migration of rows written before wrapped keys were authenticated ------------------------------


class TestLegacyRows:
    @pytest.fixture
    def legacy_store(self, unit: X25519KeyProvider, url: str) -> tuple[bytes, bytes]:
        """A store as earlier versions left it: every medical key row in the 02 form."""
        with Vault(
            provider=_IDENTITY, store=url, domains=AUDITED, providers={"medical": unit}
        ) as vault:
            blob = vault.encrypt("old note", domain="medical", context=CONTEXT)
            with vault.acting_as(COACH, purpose="review"):
                vault.decrypt(blob, context=CONTEXT)
            vault.blind_index_key("medical", table="members", column="email")
        pem = unit.public_pem("medical")[0]
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            rows = conn.execute(
                sa.text("select dek_id, purpose from vaultkit_data_keys where domain = 'medical'")
            ).all()
            for dek_hex, purpose in rows:
                ref = KeyRef("medical", kek_id(pem), 1)
                record = SQLKeyStore(engine).get(bytes.fromhex(dek_hex))
                assert record is not None
                context = wrap_context("medical", record.dek_id, purpose)
                dek = unit.unwrap(ref, record.wrapped, context=context)
                conn.execute(
                    sa.text("update vaultkit_data_keys set wrapped = :w where dek_id = :id"),
                    {"w": legacy_wrap(pem, dek, context), "id": dek_hex},
                )
        engine.dispose()
        return blob, pem

    def test_legacy_rows_are_refused_until_reviewed_and_reauthenticated(
        self, unit: X25519KeyProvider, url: str, legacy_store: tuple[bytes, bytes]
    ) -> None:
        """02 rows are refused; after review, reauthenticate_legacy makes them the unit's own."""
        blob, _ = legacy_store
        with pytest.raises(KeyStoreError, match="audit key"):
            Vault(provider=_IDENTITY, store=url, domains=AUDITED, providers={"medical": unit})
        store = SQLKeyStore(url)
        rows = unit.legacy_rows(store, "medical")
        assert sorted(r.purpose for r in rows) == ["audit", "data", "index"]
        with pytest.raises(KeyProviderError, match="unsafe_trust_legacy"):
            unit.reauthenticate_legacy(store, rows)
        assert unit.reauthenticate_legacy(store, rows, unsafe_trust_legacy=True) == 3
        assert unit.legacy_rows(store, "medical") == []
        store.close()
        with Vault(
            provider=_IDENTITY, store=url, domains=AUDITED, providers={"medical": unit}
        ) as vault:
            with vault.acting_as(COACH, purpose="review"):
                assert vault.decrypt(blob, context=CONTEXT) == "old note"
            assert vault.audit_log is not None and vault.audit_log.verify().ok

    def test_a_row_changed_after_review_is_left_alone(
        self, unit: X25519KeyProvider, url: str, legacy_store: tuple[bytes, bytes]
    ) -> None:
        """A row replaced between review and re-authentication is not adopted (compare-and-set)."""
        _, pem = legacy_store
        store = SQLKeyStore(url)
        rows = [r for r in unit.legacy_rows(store, "medical") if r.purpose == "data"]
        context = wrap_context("medical", rows[0].dek_id, "data")
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("update vaultkit_data_keys set wrapped = :w where dek_id = :id"),
                {"w": legacy_wrap(pem, os.urandom(32), context), "id": rows[0].dek_id.hex()},
            )
        engine.dispose()
        assert unit.reauthenticate_legacy(store, rows, unsafe_trust_legacy=True) == 0
        store.close()


def test_rotation_rewraps_writer_rows_as_the_units_own(
    unit: X25519KeyProvider, writer: Ed25519PrivateKey, url: str
) -> None:
    """rotate_kek on the unit rewraps writer-signed rows as 03 under the new version; all read."""
    with Vault(
        provider=_IDENTITY,
        store=url,
        domains=DOMAINS,
        providers={"medical": unit.public_only(signer=writer)},
    ) as claims:
        uploaded = claims.encrypt("uploaded", domain="medical", context=CONTEXT)
    with Vault(provider=_IDENTITY, store=url, domains=DOMAINS, providers={"medical": unit}) as v:
        report = v.rotate_kek("medical")
        assert report.kek_version == 2 and report.rewrapped == 1
        assert {r.wrapped[:1] for r in v.store.records(domain="medical")} == {b"\x03"}
        with v.acting_as(COACH, purpose="review"):
            assert v.decrypt(uploaded, context=CONTEXT) == "uploaded"
