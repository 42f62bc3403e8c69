"""Tests for restricted domains: principals, grants, sealed values and encrypt-only services."""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import flag_modified

import vaultkit.sqla
from vaultkit import ANONYMOUS, KeyDomain, Principal, SealedValue, Vault, acting_as, current_scope
from vaultkit.core.envelope import wrap_context
from vaultkit.errors import AccessDeniedError, DomainError, KeyProviderError
from vaultkit.keys import X25519KeyProvider
from vaultkit.sqla import Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

COACH = Principal("coach-17", grants={"medical"})
CLAIMS = Principal("claims-handler-3")
DOMAINS = [KeyDomain("identity"), KeyDomain("medical", restricted=True)]


@pytest.fixture
def vault_kwargs() -> dict[str, Any]:
    return {"provider": InMemoryKeyProvider(), "store": MemoryKeyStore(), "domains": DOMAINS}


class TestScopes:
    def test_outside_any_scope_the_caller_is_anonymous(self) -> None:
        """Without acting_as the principal is the anonymous service with no grants."""
        assert current_scope().principal is ANONYMOUS and ANONYMOUS.grants == frozenset()

    def test_scopes_nest_and_restore(self, vault: Vault) -> None:
        """An inner scope replaces the outer one and the outer one comes back on exit."""
        with vault.acting_as(COACH, purpose="coaching-chat"):
            with acting_as(CLAIMS, purpose="claim-1234"):
                assert current_scope().principal is CLAIMS
            assert current_scope().principal is COACH and current_scope().purpose == "coaching-chat"
        assert current_scope().principal is ANONYMOUS

    def test_threads_do_not_share_scopes(self) -> None:
        """A scope in one thread is not seen by another thread."""
        seen: list[str] = []
        inside = threading.Event()
        done = threading.Event()

        def other() -> None:
            inside.wait(5)
            seen.append(current_scope().principal.name)
            done.set()

        thread = threading.Thread(target=other)
        thread.start()
        with acting_as(COACH, purpose="p"):
            inside.set()
            done.wait(5)
        thread.join()
        assert seen == ["anonymous"]

    def test_asyncio_tasks_keep_their_own_scope(self) -> None:
        """Concurrent asyncio tasks each see their own principal across awaits."""

        async def task(principal: Principal) -> list[str]:
            names = []
            with acting_as(principal, purpose="p"):
                for _ in range(5):
                    await asyncio.sleep(0)
                    names.append(current_scope().principal.name)
            return names

        async def main() -> tuple[list[str], list[str]]:
            return await asyncio.gather(task(COACH), task(CLAIMS))  # type: ignore[return-value]

        coach, claims = asyncio.run(main())
        assert set(coach) == {"coach-17"} and set(claims) == {"claims-handler-3"}

    def test_bad_arguments(self) -> None:
        """Principals and scopes check their arguments."""
        with pytest.raises(TypeError):
            Principal("x", grants="medical")
        with pytest.raises(TypeError):
            with acting_as(COACH, purpose=""):
                pass
        with pytest.raises(DomainError):
            KeyDomain("medical", on_denied="ignore")  # type: ignore[arg-type]


class TestRestrictedDomain:
    def test_grant_reads_plaintext(self, vault: Vault) -> None:
        """A principal with the grant reads the value."""
        blob = vault.encrypt("diabetes type 2", domain="medical")
        with vault.acting_as(COACH, purpose="coaching-chat"):
            assert vault.decrypt(blob) == "diabetes type 2"

    def test_no_grant_yields_a_sealed_value(self, vault: Vault) -> None:
        """Without the grant the value is sealed: repr names the domain only, equals no string."""
        blob = vault.encrypt("diabetes type 2", domain="medical")
        for principal in (ANONYMOUS, CLAIMS):
            with acting_as(principal, purpose="claims"):
                sealed = vault.decrypt(blob)
            assert isinstance(sealed, SealedValue)
            assert repr(sealed) == str(sealed) == "SealedValue(domain='medical')"
            assert (
                sealed != "diabetes type 2"
                and sealed != SealedValue("medical")
                and sealed is not None
            )
            with pytest.raises(TypeError):
                json.dumps({"note": sealed})
            with pytest.raises(TypeError):
                pickle.dumps(sealed)
        assert vault.decrypt(vault.encrypt("Jan", domain="identity")) == "Jan"

    def test_denial_costs_no_provider_call(self) -> None:
        """A reader without the grant is turned away before any unwrap."""
        provider = InMemoryKeyProvider()
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=DOMAINS) as writer:
            blobs = [writer.encrypt(f"note {i}", domain="medical") for i in range(50)]
        counting = CountingKeyProvider(provider)
        with Vault(provider=counting, store=store, domains=DOMAINS) as reader:
            assert all(isinstance(reader.decrypt(b), SealedValue) for b in blobs)
            assert counting.calls["unwrap"] == 0
            with reader.acting_as(COACH, purpose="p"):
                assert reader.decrypt(blobs[0]) == "note 0"
            assert counting.calls["unwrap"] == 1

    def test_raise_mode(self) -> None:
        """With on_denied='raise' a read without the grant raises AccessDeniedError, no plaintext."""
        domains = [KeyDomain("medical", restricted=True, on_denied="raise")]
        with Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=domains) as v:
            blob = v.encrypt("secret diagnosis", domain="medical")
            with acting_as(CLAIMS, purpose="claim"), pytest.raises(AccessDeniedError) as info:
                v.decrypt(blob)
        assert "claims-handler-3" in str(info.value) and "medical" in str(info.value)
        assert "secret diagnosis" not in str(info.value)

    def test_encrypt_requires_grant(self) -> None:
        """A domain can refuse encryption without the grant too."""
        domains = [KeyDomain("criminal", restricted=True, encrypt_requires_grant=True)]
        with Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=domains) as v:
            with pytest.raises(AccessDeniedError, match="may not encrypt"):
                v.encrypt("conviction", domain="criminal")
            with acting_as(Principal("legal", grants={"criminal"}), purpose="intake"):
                v.encrypt("conviction", domain="criminal")


class _Base(DeclarativeBase):
    pass


class Member(_Base):
    __tablename__ = "access_members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    health_note: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="medical", row_key="id")
    )


class TestORM:
    def test_claims_staff_load_members_with_sealed_medical_data(
        self, vault: Vault, tmp_path: Path
    ) -> None:
        """Claims staff see the member's name; the medical note is sealed and cannot be written back."""
        vaultkit.sqla.configure(vault)
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}", hide_parameters=True)
        _Base.metadata.create_all(engine)
        try:
            with Session(engine) as s:
                s.add(Member(name="Jan Peeters", health_note="diabetes type 2"))
                s.commit()
            with acting_as(CLAIMS, purpose="claim-1234"), Session(engine) as s:
                m = s.scalars(sa.select(Member)).one()
                assert m.name == "Jan Peeters"
                assert isinstance(m.health_note, SealedValue)
                m.name = "Jan Peeters-Janssens"
                s.commit()  # other fields can be changed; the sealed one is not written
            with acting_as(COACH, purpose="coaching-chat"), Session(engine) as s:
                m = s.scalars(sa.select(Member)).one()
                assert (m.name, m.health_note) == ("Jan Peeters-Janssens", "diabetes type 2")
            with acting_as(CLAIMS, purpose="claim-1234"), Session(engine) as s:
                m = s.scalars(sa.select(Member)).one()
                flag_modified(m, "health_note")  # force writing the sealed value back
                with pytest.raises(TypeError):
                    s.commit()
        finally:
            vaultkit.sqla.configure(None)
            engine.dispose()


class TestCryptographicSegregation:
    def test_encrypt_only_service_cannot_read_back(self, tmp_path: Path) -> None:
        """Two vaults over one database: the claims back end stores a medical document with the
        unit's public key and cannot read it back, whatever principal it claims; the unit can."""
        url = f"sqlite:///{tmp_path / 'shared.db'}"
        writer = Ed25519PrivateKey.generate()
        unit_keys = X25519KeyProvider.generate(["medical"], writers={"claims": writer.public_key()})
        identity = InMemoryKeyProvider(["identity"])
        claims_vault = Vault(
            provider=identity,
            store=url,
            domains=DOMAINS,
            providers={"medical": unit_keys.public_only(signer=writer)},
        )
        unit_vault = Vault(
            provider=identity, store=url, domains=DOMAINS, providers={"medical": unit_keys}
        )
        try:
            document = claims_vault.encrypt(b"%PDF scan of a medical certificate", domain="medical")
            with claims_vault.acting_as(COACH, purpose="pretending"):
                with pytest.raises(KeyProviderError, match="only the public key"):
                    claims_vault.decrypt(document)
            assert isinstance(claims_vault.decrypt(document), SealedValue)
            with unit_vault.acting_as(COACH, purpose="medical-review"):
                assert unit_vault.decrypt(document) == b"%PDF scan of a medical certificate"
        finally:
            claims_vault.close()
            unit_vault.close()

    def test_public_keys_travel_as_pem(self) -> None:
        """The unit hands out PEM public keys; private keys leave only on a deliberate call."""
        writer = Ed25519PrivateKey.generate()
        unit = X25519KeyProvider.generate(["medical"], writers={"claims": writer.public_key()})
        service = X25519KeyProvider.from_public_pem(
            {"medical": unit.public_pem("medical")}, signer=writer
        )
        ref = service.primary("medical")
        ctx, other = wrap_context("medical", b"1" * 16), wrap_context("medical", b"2" * 16)
        wrapped = service.wrap(ref, b"k" * 32, context=ctx)
        assert unit.unwrap(ref, wrapped, context=ctx) == b"k" * 32
        with pytest.raises(KeyProviderError):
            unit.unwrap(ref, wrapped, context=other)
        with pytest.raises(KeyProviderError, match="unsafe_allow_export"):
            unit.private_pem("medical")
        again = X25519KeyProvider.from_private_pem(
            {"medical": unit.private_pem("medical", unsafe_allow_export=True)},
            writers={"claims": writer.public_key()},
        )
        assert again.unwrap(ref, wrapped, context=ctx) == b"k" * 32
        assert "public-only" in repr(service) and "PRIVATE" not in repr(unit)

    def test_rotation_keeps_old_versions(self) -> None:
        """After rotation new DEKs use the new key pair and old ones still unwrap."""
        unit = X25519KeyProvider.generate(["medical"])
        v1 = unit.primary("medical")
        old = unit.wrap(v1, b"a" * 32, context=b"c")
        v2 = unit.rotate("medical")
        assert v2.version == 2 and unit.unwrap(v1, old, context=b"c") == b"a" * 32
        with pytest.raises(KeyProviderError):
            unit.public_only(signer=Ed25519PrivateKey.generate()).rotate("medical")


def test_a_context_copied_inside_a_block_is_anonymous_after_it() -> None:
    """A thread given a copy of the context inside ``acting_as`` (as ``asyncio.to_thread`` and
    executors do) that runs on after the block ends acts anonymously from then on: it keeps no
    grant of a block that is over."""
    import contextvars
    import threading

    from vaultkit import ANONYMOUS, current_scope

    seen: list[tuple[str, str | None]] = []
    started, ended = threading.Event(), threading.Event()

    def work() -> None:
        seen.append((current_scope().principal.name, current_scope().purpose))
        started.set()
        ended.wait(5)
        scope = current_scope()
        seen.append((scope.principal.name, scope.purpose))
        assert "medical" not in scope.principal.grants

    with acting_as(Principal("coach", grants={"medical"}), purpose="care"):
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(work,))
        thread.start()
        started.wait(5)
    ended.set()
    thread.join(5)
    assert seen == [("coach", "care"), (ANONYMOUS.name, None)]
