"""Shred epochs (Vault.shred_epoch, ``vaultkit keys shred-epoch``): a new KEK version and wrapping
key, every live key rewrapped, the old ones destroyed; a key-store copy from before reads nothing."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_backups import NoDestruction
from vaultkit import KeyDomain, Vault
from vaultkit.cli.main import main
from vaultkit.errors import ConfigurationError, KeyProviderError
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV
from vaultkit.store import WRAPPING_KEK_ID, DekState, MemoryKeyStore, SQLKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

SUBJECTS = ["m-1", "m-2", 3, "m-4"]


def copy_store(store: MemoryKeyStore) -> MemoryKeyStore:
    """A copy of every row of a memory store, as a backup of it would hold them."""
    copy = MemoryKeyStore()
    for record in store.records():
        copy.insert(record)
    for subject in list(store._subjects.values()):  # the subjects table
        copy.put_subject(subject)
    return copy


def medical(scope: str) -> KeyDomain:
    if scope == "bucket":
        import datetime as dt

        from vaultkit import Retention

        return KeyDomain(
            "medical", dek_scope="bucket", bucket=dt.timedelta(hours=1), retention=Retention("P28D")
        )
    return KeyDomain("medical", dek_scope=scope)  # type: ignore[arg-type]


def write(vault: Vault, scope: str) -> list[bytes]:
    if scope == "subject":
        return [vault.encrypt(f"note {s}", domain="medical", subject=s) for s in SUBJECTS]
    return [vault.encrypt(f"note {s}", domain="medical") for s in SUBJECTS]


@pytest.mark.parametrize("scope", ["subject", "bucket", "process"])
def test_an_epoch_keeps_everything_readable_and_destroys_the_old_keys(scope: str) -> None:
    """After the epoch the vault and a fresh one read every value; the old wrapping row is
    destroyed, the old KEK version is gone from the provider, and no row is under it."""
    provider = InMemoryKeyProvider()
    store = MemoryKeyStore()
    with Vault(provider=provider, store=store, domains=[medical(scope)]) as vault:
        blobs = write(vault, scope)
        old = provider.primary("medical")
        report = vault.shred_epoch("medical")
        assert [vault.decrypt(b, domain="medical") for b in blobs] == [
            f"note {s}" for s in SUBJECTS
        ]
        more = write(vault, scope)
    assert report.kek_version == old.version + 1 and report.stranded == 0
    assert report.kek_versions_destroyed == (old.version,)
    assert [r.version for r in provider.versions("medical")] == [old.version + 1]
    if scope == "process":
        assert report.epoch is None and report.scoped_rewrapped == 0
    else:
        assert report.epoch == 2 and report.wrapping_destroyed == (1,)
        assert report.scoped_rewrapped == (len(SUBJECTS) if scope == "subject" else 1)
        scoped = [r for r in store.records(domain="medical") if r.kek_id == WRAPPING_KEK_ID]
        assert {r.kek_version for r in scoped} == {2}
    assert all(
        r.kek_version == old.version + 1
        for r in store.records(domain="medical")
        if r.kek_id != WRAPPING_KEK_ID and r.state is not DekState.DESTROYED
    )
    with Vault(provider=provider, store=store, domains=[medical(scope)]) as fresh:
        assert [fresh.decrypt(b, domain="medical") for b in blobs + more] == [
            f"note {s}" for s in SUBJECTS * 2
        ]
    assert json.loads(report.to_json())["kek_versions_destroyed"] == [old.version]
    assert json.loads(report.to_json()) == report.as_dict()


@pytest.mark.parametrize("scope", ["subject", "bucket", "process"])
def test_a_copy_of_the_key_store_from_before_the_epoch_reads_nothing(scope: str) -> None:
    """A backup of the key store taken before the epoch, restored: not one value unwraps (its
    wrapping key and process keys are under the destroyed KEK version)."""
    provider = InMemoryKeyProvider()
    store = MemoryKeyStore()
    with Vault(provider=provider, store=store, domains=[medical(scope)]) as vault:
        blobs = write(vault, scope)
        backup = copy_store(store)
        vault.shred_epoch("medical")
    with Vault(provider=provider, store=backup, domains=[medical(scope)]) as restored:
        for blob in blobs:
            with pytest.raises(KeyProviderError):
                restored.decrypt(blob, domain="medical")


def test_a_recorded_relationship_end_survives_the_epoch() -> None:
    """A subject key whose deadline is bound into its wrapping (end_relationship) is rewrapped
    with it: readable after the epoch, deadline unchanged."""
    import datetime as dt

    from vaultkit import Retention

    contract = KeyDomain(
        "contract",
        dek_scope="subject",
        retention=Retention("P5Y", after="relationship_end", kind="no_less_than", ground="tax"),
    )
    provider = InMemoryKeyProvider()
    store = MemoryKeyStore()
    with Vault(provider=provider, store=store, domains=[contract]) as vault:
        blob = vault.encrypt("policy 7", domain="contract", subject="m-1")
        vault.end_relationship("m-1", at=dt.datetime.now(dt.UTC))
        before = {r.dek_id: r.destroy_at for r in store.records() if r.scope == "subject"}
        assert vault.shred_epoch("contract").scoped_rewrapped == 1
    after = {r.dek_id: r.destroy_at for r in store.records() if r.scope == "subject"}
    assert after == before and None not in after.values()
    with Vault(provider=provider, store=store, domains=[contract]) as fresh:
        assert fresh.decrypt(blob, domain="contract") == "policy 7"


def test_epochs_run_again_and_again() -> None:
    """Three epochs in a row: epoch 4, KEK v4, only v4 left, everything readable."""
    provider = InMemoryKeyProvider()
    store = MemoryKeyStore()
    with Vault(provider=provider, store=store, domains=[medical("subject")]) as vault:
        blobs = write(vault, "subject")
        for _ in range(3):
            report = vault.shred_epoch("medical", batch=1)
        assert report.epoch == 4 and report.kek_version == 4
        assert [vault.decrypt(b, domain="medical") for b in blobs] == [
            f"note {s}" for s in SUBJECTS
        ]
    assert [r.version for r in provider.versions("medical")] == [4]


def test_a_provider_that_cannot_destroy_versions_is_refused_before_any_change() -> None:
    """No SupportsVersionDestruction: ConfigurationError, and the KEK was not even rotated."""
    provider = NoDestruction()
    with Vault(provider=provider, store=MemoryKeyStore(), domains=["medical"]) as vault:
        with pytest.raises(ConfigurationError, match="SupportsVersionDestruction"):
            vault.shred_epoch("medical")
        assert provider.primary("medical").version == 1
        with pytest.raises(ConfigurationError, match="batch"):
            vault.shred_epoch("medical", batch=0)


def test_the_provider_is_asked_once_per_epoch_not_per_key() -> None:
    """Rewrapping 40 subject keys costs no provider unwrap per key (the DEKs are rewrapped
    locally under the new wrapping key): a bounded number of calls, whatever the key count."""
    counting = CountingKeyProvider(InMemoryKeyProvider())
    store = MemoryKeyStore()
    with Vault(provider=counting, store=store, domains=[medical("subject")]) as vault:
        for i in range(40):
            vault.encrypt("x", domain="medical", subject=f"m-{i}")
        before = counting.calls.copy()
        vault.shred_epoch("medical")
    calls = counting.calls - before
    assert calls["destroy_version"] == 1 and calls["rotate"] == 1
    assert calls["unwrap"] + calls["wrap"] <= 8, calls


def test_another_process_writing_with_the_old_epoch_loses_nothing() -> None:
    """A second vault (another process) that knows epoch 1 writes for a new subject after the
    epoch ran elsewhere: its value is readable by a fresh vault (its key did not stay under the
    destroyed wrapping key)."""
    provider = InMemoryKeyProvider()
    store = MemoryKeyStore()
    domains = [medical("subject")]
    with (
        Vault(provider=provider, store=store, domains=domains) as other,
        Vault(provider=provider, store=store, domains=domains) as runner,
    ):
        other.encrypt("before", domain="medical", subject="m-1")  # caches epoch 1
        runner.shred_epoch("medical")
        late = other.encrypt("after", domain="medical", subject="m-new")
    with Vault(provider=provider, store=store, domains=domains) as fresh:
        assert fresh.decrypt(late, domain="medical") == "after"
    scoped = [r for r in store.records(domain="medical") if r.kek_id == WRAPPING_KEK_ID]
    assert {r.kek_version for r in scoped if r.state is not DekState.DESTROYED} == {2}


def test_a_new_bucket_key_under_the_old_epoch_moves_to_the_current_one(tmp_path: Path) -> None:
    """The same race for a bucket domain on an SQLite key store: a process that knows epoch 1
    opens the next hour's bucket after another process's shred epoch; its value stays readable
    by a fresh vault and a second shred epoch finds nothing stranded."""
    import datetime as dt

    now = [dt.datetime(2026, 12, 1, 10, 10, tzinfo=dt.UTC)]
    provider = InMemoryKeyProvider()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    domains = [medical("bucket")]
    with (
        Vault(provider=provider, store=url, domains=domains, clock=lambda: now[0]) as other,
        Vault(provider=provider, store=url, domains=domains, clock=lambda: now[0]) as runner,
    ):
        other.encrypt("before", domain="medical")  # caches epoch 1
        runner.shred_epoch("medical")
        now[0] += dt.timedelta(hours=1)
        late = other.encrypt("after", domain="medical")
        assert runner.shred_epoch("medical").stranded == 0
    with Vault(provider=provider, store=url, domains=domains, clock=lambda: now[0]) as fresh:
        assert fresh.decrypt(late, domain="medical") == "after"


class TestCommandLine:
    def test_shred_epoch_prints_a_json_report(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`vaultkit keys shred-epoch --domain D --json` on a local keyring and an SQLite store:
        the report, KEK v1 destroyed, values still readable; no key material in the output."""
        master = os.urandom(32)
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(master).decode())
        keyring = tmp_path / "keyring.json"
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        provider = LocalKeyProvider(keyring)
        with Vault(provider=provider, store=url, domains=["medical"]) as vault:
            blob = vault.encrypt("note", domain="medical")
        code = main(
            [
                "keys",
                "shred-epoch",
                "--domain",
                "medical",
                "--store",
                url,
                "--keyring",
                str(keyring),
                "--json",
            ]
        )
        out = capsys.readouterr().out
        assert code == 0
        report: dict[str, Any] = json.loads(out)
        assert report["kek_version"] == 2 and report["kek_versions_destroyed"] == [1]
        assert report["stranded"] == 0 and report["epoch"] is None
        assert base64.b64encode(master).decode() not in out
        code = main(
            [
                "keys",
                "shred-epoch",
                "--domain",
                "medical",
                "--store",
                url,
                "--keyring",
                str(keyring),
            ]
        )
        out = capsys.readouterr().out
        assert code == 0 and "KEK v3 is primary" in out and "destroyed: v2" in out
        reopened = LocalKeyProvider(keyring)
        assert [r.version for r in reopened.versions("medical")] == [3]
        store = SQLKeyStore(url)
        with Vault(provider=reopened, store=store, domains=["medical"]) as vault:
            assert vault.decrypt(blob, domain="medical") == "note"
        store.close()
