"""Tests for KEK rotation: key rows rewrapped, data rows untouched, old versions disabled."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from vaultkit import Vault
from vaultkit.cli.main import main
from vaultkit.errors import KeyNotFoundError, KeyProviderError
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV
from vaultkit.store import DataKeyRecord, DekState, MemoryKeyStore, SQLKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

MASTER = bytes(range(32))


def test_rotation_over_10000_deks_touches_no_data_row(tmp_path: Path) -> None:
    """Rotating a KEK over 10,000 DEKs rewraps 10,000 key rows and leaves every data row as it was."""
    provider = CountingKeyProvider(InMemoryKeyProvider(["medical"]))
    store = MemoryKeyStore()
    data = sa.create_engine(f"sqlite:///{tmp_path / 'data.db'}")
    notes = sa.Table(
        "notes",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", sa.LargeBinary),
    )
    notes.metadata.create_all(data)
    with Vault(
        provider=provider, store=store, domains=["medical"], dek_max_encryptions=1
    ) as writer:
        rows = [
            {"id": i, "v": writer.encrypt(f"note {i}", domain="medical")} for i in range(10_000)
        ]
    with data.begin() as conn:
        conn.execute(notes.insert(), rows)
    before = (tmp_path / "data.db").read_bytes()
    with Vault(provider=provider, store=store, domains=["medical"]) as admin:
        calls_before = dict(provider.calls)
        report = admin.rotate_kek("medical")
    assert (
        report.kek_version,
        report.rewrapped,
        report.already_current,
        report.changed_meanwhile,
    ) == (2, 10_000, 0, 0)
    assert (
        provider.calls["unwrap"] - calls_before.get("unwrap", 0) == 10_000
    )  # one per DEK, none per value
    assert (tmp_path / "data.db").read_bytes() == before
    assert {r.kek_version for r in store.records()} == {2}
    with (
        Vault(provider=provider, store=store, domains=["medical"]) as reader,
        data.connect() as conn,
    ):
        for row in conn.execute(sa.select(notes).where(notes.c.id % 997 == 0)):
            assert reader.decrypt(row.v) == f"note {row.id}"
    data.dispose()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[LocalKeyProvider, str]]:
    yield (
        LocalKeyProvider(tmp_path / "keyring.json", master_key=MASTER),
        f"sqlite:///{tmp_path / 'keys.db'}",
    )


def test_old_version_can_be_disabled_after_rotation(local: tuple[LocalKeyProvider, str]) -> None:
    """After rotation the old KEK version is disabled and every value still decrypts."""
    provider, url = local
    with Vault(
        provider=provider, store=url, domains=["identity", "medical"], dek_max_encryptions=3
    ) as v:
        blobs = [v.encrypt(f"value {i}", domain="medical") for i in range(30)]
        index_key = v.blind_index_key("medical", table="t", column="c")
        digest = index_key.digest(b"x")
        report = v.rotate_kek("medical")
    assert report.rewrapped == 10 + 1  # ten DEKs and the blind-index key
    with pytest.raises(KeyProviderError, match="primary"):
        provider.disable("medical", 2)
    provider.disable("medical", 1)
    with Vault(
        provider=LocalKeyProvider(provider.path, master_key=MASTER),
        store=url,
        domains=["identity", "medical"],
    ) as fresh:
        assert [fresh.decrypt(b) for b in blobs] == [f"value {i}" for i in range(30)]
        assert fresh.blind_index_key("medical", table="t", column="c").digest(b"x") == digest


def test_without_rotation_a_disabled_version_breaks_reads(
    local: tuple[LocalKeyProvider, str],
) -> None:
    """Disabling a version still in use makes its DEKs unreadable: rotation is what makes it safe."""
    provider, url = local
    with Vault(provider=provider, store=url, domains=["medical"]) as v:
        blob = v.encrypt("value", domain="medical")
    provider.rotate("medical")
    provider.disable("medical", 1)
    with Vault(
        provider=LocalKeyProvider(provider.path, master_key=MASTER), store=url, domains=["medical"]
    ) as fresh:
        with pytest.raises(KeyNotFoundError):
            fresh.decrypt(blob)


def test_rows_changed_meanwhile_are_left_alone() -> None:
    """A key row rewrapped by someone else during a rotation is not overwritten (compare-and-set)."""

    class Racing(MemoryKeyStore):
        raced = False

        def rewrap(
            self, old: DataKeyRecord, *, kek_id: str, kek_version: int, wrapped: bytes
        ) -> bool:
            if not self.raced:  # someone else rewraps this row between our read and our write
                self.raced = True
                self._rows[old.dek_id] = dataclasses.replace(old, kek_version=99)
            return super().rewrap(old, kek_id=kek_id, kek_version=kek_version, wrapped=wrapped)

    store = Racing()
    provider = InMemoryKeyProvider(["medical"])
    with Vault(provider=provider, store=store, domains=["medical"], dek_max_encryptions=1) as v:
        for i in range(5):
            v.encrypt(i, domain="medical")
        report = v.rotate_kek("medical")
    assert (report.rewrapped, report.changed_meanwhile) == (4, 1)


def test_resume_finishes_onto_the_current_version(local: tuple[LocalKeyProvider, str]) -> None:
    """rotate_kek(new_version=False) rewraps what an interrupted rotation left behind."""
    provider, url = local
    with Vault(provider=provider, store=url, domains=["medical"], dek_max_encryptions=1) as v:
        for i in range(4):
            v.encrypt(i, domain="medical")
        provider.rotate("medical")  # as if a rotation died right after creating the version
        report = v.rotate_kek("medical", new_version=False)
        assert (report.kek_version, report.rewrapped) == (2, 4)
        again = v.rotate_kek("medical", new_version=False)
        assert (again.rewrapped, again.already_current) == (0, 4)


def test_keys_list_and_rotate_commands(
    local: tuple[LocalKeyProvider, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """keys list shows versions and counts without key material; rotate-kek rewraps."""
    provider, url = local
    with Vault(
        provider=provider, store=url, domains=["identity", "medical"], dek_max_encryptions=2
    ) as v:
        for i in range(5):
            v.encrypt(i, domain="medical")
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
    keyring = str(provider.path)
    assert (
        main(["keys", "rotate-kek", "--store", url, "--keyring", keyring, "--domain", "medical"])
        == 0
    )
    assert "3 key rows rewrapped" in capsys.readouterr().out
    assert main(["keys", "list", "--store", url, "--keyring", keyring]) == 0
    out = capsys.readouterr().out
    assert "domain medical: KEK versions v1, v2 (primary v2)" in out
    assert "data  active    3" in out and "key rows wrapped under v2: 3" in out
    store = SQLKeyStore(url)
    for record in store.records():
        assert record.wrapped.hex()[:16] not in out
        assert record.state is DekState.ACTIVE
    store.close()


def test_retire_then_destroy_only_without_references(
    local: tuple[LocalKeyProvider, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A DEK is destroyed only once retired and unreferenced; its values are then unreadable."""
    from vaultkit.errors import DecryptionError, KeyStoreError

    provider, url = local
    data_url = f"sqlite:///{tmp_path / 'data.db'}"
    data = sa.create_engine(data_url)
    notes = sa.Table(
        "notes",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", sa.LargeBinary),
    )
    notes.metadata.create_all(data)
    with Vault(provider=provider, store=url, domains=["medical"]) as v:
        blob = v.encrypt("old value", domain="medical")
        dek = blob[4:20]
        with data.begin() as conn:
            conn.execute(notes.insert().values(id=1, v=blob))
        with pytest.raises(KeyStoreError, match="retire it"):
            v.destroy_dek(dek, references=0)
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
    common = ["--store", url, "--keyring", str(provider.path)]
    assert main(["keys", "retire-dek", *common, "--dek", dek.hex()]) == 0
    destroy = [
        "keys",
        "destroy",
        *common,
        "--dek",
        dek.hex(),
        "--data",
        data_url,
        "--column",
        "notes.v",
        "--yes",
    ]
    assert main(destroy) == 3  # still referenced by the row
    assert "notes.v: 1 values" in capsys.readouterr().out
    with data.begin() as conn:
        conn.execute(sa.delete(notes))
    assert main(destroy) == 0
    assert "destroyed DEK" in capsys.readouterr().out
    with Vault(provider=provider, store=url, domains=["medical"]) as fresh:
        with pytest.raises(DecryptionError):
            fresh.decrypt(blob)
        (record,) = [r for r in fresh.store.records() if r.dek_id == dek]
        assert record.state is DekState.DESTROYED and record.wrapped == b""
    data.dispose()


def test_retired_dek_is_no_longer_used_for_encryption(local: tuple[LocalKeyProvider, str]) -> None:
    """Retired by another vault (process): this one takes a fresh DEK once its cache entry
    expires; retired by this vault itself: at once."""
    import time

    provider, url = local
    with (
        Vault(provider=provider, store=url, domains=["medical"], cache_ttl=0.5) as v,
        Vault(provider=provider, store=url, domains=["medical"]) as operator,
    ):
        first = v.encrypt("a", domain="medical")[4:20]
        operator.retire_dek(first)
        assert v.encrypt("b", domain="medical")[4:20] == first  # not noticed yet
        time.sleep(0.6)
        second = v.encrypt("c", domain="medical")[4:20]
        assert second != first
        v.retire_dek(second)
        third = v.encrypt("d", domain="medical")[4:20]
        assert third not in (first, second)


def test_dek_references_are_counted_on_every_database(database_url: str) -> None:
    """count_dek_references reads DEK ids from value headers on SQLite, PostgreSQL and MariaDB."""
    from vaultkit.sqla import count_dek_references

    with Vault(
        provider=InMemoryKeyProvider(),
        store=MemoryKeyStore(),
        domains=["medical"],
        dek_max_encryptions=2,
    ) as v:
        blobs = [v.encrypt(f"value {i}", domain="medical") for i in range(5)]  # DEKs: 2 + 2 + 1
    engine = sa.create_engine(database_url)
    notes = sa.Table(
        "notes",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", sa.LargeBinary),
    )
    notes.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                notes.insert(),
                [{"id": i, "v": b} for i, b in enumerate(blobs, start=1)] + [{"id": 9, "v": None}],
            )
        with engine.connect() as conn:
            counts = [count_dek_references(conn, "notes", "v", blobs[i][4:20]) for i in (0, 2, 4)]
            assert counts == [2, 2, 1]
            assert count_dek_references(conn, "notes", "v", bytes(16)) == 0
    finally:
        notes.metadata.drop_all(engine)
        engine.dispose()
