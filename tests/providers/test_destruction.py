"""SupportsVersionDestruction against every real provider: a destroyed KEK version unwraps nothing,
not even a copy of the wrapped bytes taken before (a database backup), and nothing else is lost.

in-memory and local run in-process; PKCS#11 against a SoftHSM2 token; transit against a real
OpenBao dev server; AWS KMS against moto's server mode.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._servers import Server, SoftHSM
from vaultkit import Principal, Vault
from vaultkit.errors import KeyNotFoundError, KeyProviderError
from vaultkit.keys import (
    KeyRef,
    LocalKeyProvider,
    SupportsVersionDestruction,
    VersionDestruction,
)
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

CONTEXT = b"\x00\x08identity\x00\x10" + b"d" * 16 + b"\x00\x04data"


@dataclass
class Case:
    name: str
    provider: Any
    #: a second provider on the same keys (another process's view), or None
    other: Any = None
    #: the provider schedules rather than destroys: final_at is this far ahead
    delay: dt.timedelta = dt.timedelta(0)
    #: the server refuses a destroyed version. moto 5 does not: it decrypts under a key pending
    #: deletion, which real KMS refuses (KMSInvalidStateException, "the key is unusable at once",
    #: docs.aws.amazon.com/kms/latest/cryptographic-details/key-deletion.html); for it the tests
    #: check the key's state instead.
    refuses: bool = True


@pytest.fixture(
    params=[
        "in-memory",
        "local",
        pytest.param("pkcs11-softhsm2", marks=pytest.mark.pkcs11),
        pytest.param("transit-openbao", marks=pytest.mark.openbao),
        pytest.param("aws-kms-emulator", marks=pytest.mark.aws),
    ]
)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    prefix = f"vk{secrets.token_hex(4)}-"  # each test has its own keys on the shared servers
    if request.param == "in-memory":
        yield Case("in-memory", InMemoryKeyProvider())
    elif request.param == "local":
        master = os.urandom(32)
        path = tmp_path / "keyring.json"
        provider = LocalKeyProvider(path, master_key=master)
        provider.primary("identity")
        yield Case("local", provider, LocalKeyProvider(path, master_key=master))
    elif request.param == "pkcs11-softhsm2":
        from vaultkit.keys.pkcs11 import PKCS11KeyProvider

        hsm: SoftHSM = request.getfixturevalue("softhsm")
        provider = PKCS11KeyProvider(
            hsm.library, token_label=hsm.token_label, pin=hsm.pin, label_prefix=prefix
        )
        other = PKCS11KeyProvider(
            hsm.library, token_label=hsm.token_label, pin=hsm.pin, label_prefix=prefix
        )
        yield Case("pkcs11", provider, other)
        provider.close()
    elif request.param == "transit-openbao":
        from vaultkit.keys.transit import VaultTransitKeyProvider

        server: Server = request.getfixturevalue("openbao")
        provider = VaultTransitKeyProvider(
            server.url, token=server.token, key_prefix=prefix, create_keys=True
        )
        other = VaultTransitKeyProvider(server.url, token=server.token, key_prefix=prefix)
        yield Case("transit", provider, other)
    else:
        from vaultkit.keys.aws import AWSKMSKeyProvider

        server = request.getfixturevalue("aws_emulator")

        def kms() -> AWSKMSKeyProvider:
            return AWSKMSKeyProvider(
                region="eu-west-1",
                endpoint_url=server.url,
                alias_prefix=f"alias/{prefix}",
                create_keys=True,
            )

        yield Case("aws", kms(), kms(), dt.timedelta(days=7), refuses=False)


def _pending_deletion(case: Case, ref: KeyRef) -> None:
    """The KMS key of ``ref`` is PendingDeletion (what real KMS refuses every call on)."""
    import boto3

    kms = boto3.client("kms", region_name="eu-west-1", endpoint_url=str(case.provider.endpoint))
    assert kms.describe_key(KeyId=ref.key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"


def test_every_provider_and_its_counted_wrapper_can_destroy_a_version(case: Case) -> None:
    """Each real provider offers the capability, and CountingKeyProvider forwards and counts it."""
    assert isinstance(case.provider, SupportsVersionDestruction)
    counting = CountingKeyProvider(case.provider)
    assert isinstance(counting, SupportsVersionDestruction)
    old = counting.primary("identity")
    counting.rotate("identity")
    counting.destroy_version(old)
    assert counting.calls["destroy_version"] == 1
    assert case.provider.destruction_delay == counting.destruction_delay == case.delay


def test_a_destroyed_version_unwraps_nothing_not_even_a_backup_copy(case: Case) -> None:
    """A DEK wrapped under v1, its bytes copied (a backup), then v1 destroyed: neither the row nor
    the copy unwraps, through this provider or another one on the same keys; v2's DEKs still do."""
    v1 = case.provider.primary("identity")
    dek, kept = os.urandom(32), os.urandom(32)
    wrapped = case.provider.wrap(v1, dek, context=CONTEXT)
    backup = bytes(wrapped)  # the copy a database backup holds
    if case.other is not None:  # another process already used v1: it is in its caches
        assert case.other.unwrap(v1, backup, context=CONTEXT) == dek
    v2 = case.provider.rotate("identity")
    under_v2 = case.provider.wrap(v2, kept, context=CONTEXT)
    before = dt.datetime.now(dt.UTC)
    done = case.provider.destroy_version(v1)
    after = dt.datetime.now(dt.UTC)
    assert isinstance(done, VersionDestruction)
    assert done.ref == v1 and v1.version in done.versions and v2.version not in done.versions
    assert before - dt.timedelta(seconds=1) <= done.requested_at <= after
    # final: at once, or at the end of the provider's pending window (KMS: 7 days at least)
    expected = done.requested_at + case.delay
    assert abs(done.final_at - expected) < dt.timedelta(minutes=5)
    assert done.final_at.tzinfo is not None
    if not case.refuses:
        _pending_deletion(case, v1)
    for provider in (case.provider, case.other):
        if provider is None:
            continue
        for blob in (wrapped, backup) if case.refuses else ():
            with pytest.raises(KeyProviderError) as failure:
                provider.unwrap(v1, blob, context=CONTEXT)
            assert dek.hex() not in str(failure.value)
        assert provider.unwrap(v2, under_v2, context=CONTEXT) == kept
    if case.delay == dt.timedelta(0):  # KMS lists a key pending deletion until it is deleted
        assert v1.version not in [r.version for r in case.provider.versions("identity")]
    assert case.provider.primary("identity") == v2


def test_destruction_is_idempotent_and_refuses_the_primary_and_unknown_versions(
    case: Case,
) -> None:
    """The primary is refused (rotate first); a version never made is KeyNotFoundError; a second
    destruction of the same version answers again without error (a resumed shred epoch)."""
    v1 = case.provider.primary("identity")
    with pytest.raises(KeyProviderError, match="rotate first"):
        case.provider.destroy_version(v1)
    assert case.provider.unwrap(
        v1, case.provider.wrap(v1, b"k" * 32, context=CONTEXT), context=CONTEXT
    ) == (b"k" * 32)
    v2 = case.provider.rotate("identity")
    ahead = KeyRef("identity", v2.key_id, v2.version + 5)
    with pytest.raises(KeyNotFoundError):
        case.provider.destroy_version(ahead)
    first = case.provider.destroy_version(v1)
    again = case.provider.destroy_version(v1)
    assert again.ref == v1 and again.versions == first.versions
    if case.delay:  # a scheduled deletion keeps its date
        assert abs(again.final_at - first.final_at) < dt.timedelta(seconds=2)
    with pytest.raises(KeyProviderError, match="rotate first"):
        case.provider.destroy_version(v2)


def test_a_vault_backup_taken_before_rotation_is_unreadable_once_the_old_version_is_destroyed(
    case: Case, tmp_path: Path
) -> None:
    """A real SQLite key store, copied (a backup), then the KEK rotated (rows rewrapped) and the
    old version destroyed: the live store reads everything, the restored copy reads nothing."""
    coach = Principal("coach", grants={"medical"})
    live = tmp_path / "keys.db"
    url = f"sqlite:///{live}"
    with (
        Vault(provider=case.provider, store=url, domains=["medical"], dek_max_encryptions=4) as v,
        v.acting_as(coach, purpose="test"),
    ):
        blobs = [v.encrypt(f"note {i}", domain="medical") for i in range(10)]
        old = case.provider.primary("medical")
        copy = tmp_path / "keys-backup.db"
        with sqlite3.connect(live) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)  # a consistent online backup, as an operator would take it
        assert v.rotate_kek("medical").rewrapped == 3
    case.provider.destroy_version(old)
    with (
        Vault(provider=case.provider, store=url, domains=["medical"]) as fresh,
        fresh.acting_as(coach, purpose="test"),
    ):
        assert [fresh.decrypt(b, domain="medical") for b in blobs] == [
            f"note {i}" for i in range(10)
        ]
    if not case.refuses:
        _pending_deletion(case, old)
        return
    restored = tmp_path / "restored.db"
    shutil.copyfile(copy, restored)
    with (
        Vault(provider=case.provider, store=f"sqlite:///{restored}", domains=["medical"]) as back,
        back.acting_as(coach, purpose="test"),
    ):
        for blob in blobs:
            with pytest.raises(KeyProviderError):
                back.decrypt(blob, domain="medical")


def test_local_destruction_also_leaves_the_keyring_backup_without_the_version(
    tmp_path: Path,
) -> None:
    """The local keyring's own backup file (KEYRING.bak) no longer holds a destroyed version."""
    master = os.urandom(32)
    path = tmp_path / "keyring.json"
    provider = LocalKeyProvider(path, master_key=master)
    v1 = provider.primary("identity")
    wrapped = provider.wrap(v1, b"x" * 32, context=CONTEXT)
    provider.rotate("identity")
    provider.destroy_version(v1)
    bak = tmp_path / "restored-from-bak.json"
    shutil.copyfile(path.with_name(path.name + ".bak"), bak)
    restored = LocalKeyProvider(bak, master_key=master, create_keys=False)
    assert [r.version for r in restored.versions("identity")] == [2]
    with pytest.raises(KeyNotFoundError):
        restored.unwrap(
            KeyRef("identity", restored.primary("identity").key_id, 1), wrapped, context=CONTEXT
        )


def test_another_local_provider_sees_the_rotation_and_the_destruction(tmp_path: Path) -> None:
    """Two providers on one keyring file (two processes): after one rotates and destroys v1, the
    other's primary is v2 at once, so it never wraps a new DEK under the destroyed version."""
    master = os.urandom(32)
    path = tmp_path / "keyring.json"
    first = LocalKeyProvider(path, master_key=master)
    second = LocalKeyProvider(path, master_key=master)
    v1 = first.primary("identity")
    assert second.primary("identity") == v1
    v2 = first.rotate("identity")
    first.destroy_version(v1)
    assert second.primary("identity") == v2
    assert [r.version for r in second.versions("identity")] == [2]
    wrapped = second.wrap(second.primary("identity"), b"n" * 32, context=CONTEXT)
    assert first.unwrap(v2, wrapped, context=CONTEXT) == b"n" * 32


@pytest.mark.aws
def test_kms_destruction_schedules_deletion_with_the_configured_window(
    aws_emulator: Server,
) -> None:
    """AWS KMS: the old version's key is PendingDeletion at once, deleted after the window (7 to 30
    days; other windows refused at construction); the alias stays so a second call finds it."""
    import boto3

    from vaultkit.errors import ConfigurationError
    from vaultkit.keys.aws import AWSKMSKeyProvider

    with pytest.raises(ConfigurationError, match="7 to 30"):
        AWSKMSKeyProvider(region="eu-west-1", endpoint_url=aws_emulator.url, deletion_window_days=3)
    prefix = f"alias/vk{secrets.token_hex(4)}-"
    provider = AWSKMSKeyProvider(
        region="eu-west-1",
        endpoint_url=aws_emulator.url,
        alias_prefix=prefix,
        create_keys=True,
        deletion_window_days=30,
    )
    v1 = provider.primary("medical")
    provider.rotate("medical")
    done = provider.destroy_version(v1)
    assert done.mechanism == "ScheduleKeyDeletion"
    assert dt.timedelta(days=29) < done.final_at - done.requested_at <= dt.timedelta(days=31)
    kms = boto3.client("kms", region_name="eu-west-1", endpoint_url=aws_emulator.url)
    assert kms.describe_key(KeyId=v1.key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"


@pytest.mark.openbao
def test_transit_destruction_trims_the_key_ring_from_below(openbao: Server) -> None:
    """OpenBao: destroying v2 trims v1 and v2 (the ring is cut from below); v3 keeps working and
    the key's min_available_version says the material is gone from the server."""
    import hvac

    from vaultkit.keys.transit import VaultTransitKeyProvider

    prefix = f"vk{secrets.token_hex(4)}-"
    provider = VaultTransitKeyProvider(
        openbao.url, token=openbao.token, key_prefix=prefix, create_keys=True
    )
    v1 = provider.primary("medical")
    old = provider.wrap(v1, b"o" * 32, context=CONTEXT)
    v2 = provider.rotate("medical")
    v3 = provider.rotate("medical")
    done = provider.destroy_version(v2)
    assert done.versions == (1, 2) and done.mechanism == "transit trim"
    info = hvac.Client(url=openbao.url, token=openbao.token).secrets.transit.read_key(
        f"{prefix}medical"
    )["data"]
    assert int(info["min_available_version"]) == 3
    assert sorted(int(v) for v in info["keys"]) == [3]
    with pytest.raises(KeyProviderError):
        provider.unwrap(v1, old, context=CONTEXT)
    assert provider.unwrap(v3, provider.wrap(v3, b"n" * 32, context=CONTEXT), context=CONTEXT)
    assert provider.destroy_version(v1).versions == (1,)


def test_a_shred_epoch_on_this_provider_makes_a_pre_erasure_backup_unreadable(
    case: Case, tmp_path: Path
) -> None:
    """Subject keys on this provider: a backup of the SQLite key store, an erasure, a shred epoch.
    The live store reads the other subject; the restored backup reads nobody (the old KEK version
    is destroyed in the HSM / OpenBao / keyring; KMS: pending deletion)."""
    from tests.integration.test_restore import erase
    from vaultkit import KeyDomain
    from vaultkit.errors import SubjectErasedError

    domains = [KeyDomain("medical", dek_scope="subject")]
    live = tmp_path / "keys.db"
    with Vault(provider=case.provider, store=f"sqlite:///{live}", domains=domains) as vault:
        alice = vault.encrypt("a", domain="medical", subject="alice")
        bob = vault.encrypt("b", domain="medical", subject="bob")
        copy = tmp_path / "backup.db"
        with sqlite3.connect(live) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        old = case.provider.primary("medical")
        erase(vault, "alice")
        report = vault.shred_epoch("medical")
        assert report.stranded == 0 and old.version in report.kek_versions_destroyed
        assert report.final_at is not None
        assert report.final_at - dt.datetime.now(dt.UTC) <= case.delay + dt.timedelta(minutes=1)
        with pytest.raises(SubjectErasedError):
            vault.decrypt(alice, domain="medical")
    with Vault(provider=case.provider, store=f"sqlite:///{live}", domains=domains) as fresh:
        assert fresh.decrypt(bob, domain="medical") == "b"
    if not case.refuses:
        _pending_deletion(case, old)
        return
    with Vault(provider=case.provider, store=f"sqlite:///{copy}", domains=domains) as restored:
        for blob in (alice, bob):
            with pytest.raises(KeyProviderError):
                restored.decrypt(blob, domain="medical")
