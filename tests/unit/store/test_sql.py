"""Tests for the key stores: SQL (SQLite file and PostgreSQL) and memory, one behaviour."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from vaultkit import Vault
from vaultkit.errors import ConfigurationError, KeyStoreError
from vaultkit.store import (
    SCHEMA_VERSION,
    DataKeyRecord,
    DekState,
    KeyStore,
    MemoryKeyStore,
    SQLKeyStore,
)
from vaultkit.testing import InMemoryKeyProvider


def record(domain: str = "identity", **changes: object) -> DataKeyRecord:
    values: dict[str, object] = {
        "dek_id": os.urandom(16),
        "domain": domain,
        "purpose": "data",
        "kek_id": "memory:x:identity",
        "kek_version": 1,
        "wrapped": os.urandom(61),
        "state": DekState.ACTIVE,
        "created_at": dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC),
    }
    values.update(changes)
    return DataKeyRecord(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(url: str) -> Iterator[KeyStore]:
    s: KeyStore = MemoryKeyStore() if url == "memory" else SQLKeyStore(url)
    yield s
    s.close()


class TestKeyStore:
    def test_insert_and_get(self, store: KeyStore) -> None:
        """A stored row comes back equal, with its time in UTC."""
        r = record()
        store.insert(r)
        got = store.get(r.dek_id)
        assert got == r
        assert got is not None and got.created_at.tzinfo is not None

    def test_missing_row(self, store: KeyStore) -> None:
        """An unknown id gives None."""
        assert store.get(os.urandom(16)) is None

    def test_duplicate_id_is_refused(self, store: KeyStore) -> None:
        """Ids never repeat: a second insert of one id fails."""
        r = record()
        store.insert(r)
        with pytest.raises(KeyStoreError):
            store.insert(r)
        assert store.get(r.dek_id) == r

    def test_listing_filters(self, store: KeyStore) -> None:
        """records() filters by domain and state."""
        a, b, c = record("identity"), record("medical"), record("medical", state=DekState.RETIRED)
        for r in (a, b, c):
            store.insert(r)
        assert {r.dek_id for r in store.records(domain="medical")} == {b.dek_id, c.dek_id}
        assert [r.dek_id for r in store.records(state=DekState.RETIRED)] == [c.dek_id]
        assert len(list(store.records())) == 3

    def test_counters_and_state(self, store: KeyStore) -> None:
        """Encryption counts add up and state changes persist."""
        r = record()
        store.insert(r)
        store.add_encryptions(r.dek_id, 5)
        store.add_encryptions(r.dek_id, 7)
        store.set_state(r.dek_id, DekState.RETIRED)
        got = store.get(r.dek_id)
        assert got is not None and got.encryptions == 12 and got.state is DekState.RETIRED

    def test_updates_to_missing_rows_fail(self, store: KeyStore) -> None:
        """Updating an unknown id is an error, not a silent no-op."""
        with pytest.raises(KeyStoreError, match="not in the key store"):
            store.set_state(os.urandom(16), DekState.RETIRED)

    def test_vault_round_trip_over_the_store(self, store: KeyStore) -> None:
        """A vault writes its DEKs here and a second vault reads values through them."""
        provider = InMemoryKeyProvider()
        with Vault(provider=provider, store=store, domains=["identity"]) as a:
            blob = a.encrypt("Jan", domain="identity")
        with Vault(provider=provider, store=store, domains=["identity"]) as b:
            assert b.decrypt(blob) == "Jan"
        (row,) = store.records()
        assert row.encryptions == 1 and row.wrapped != b""


class TestSQLSchema:
    @pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
    def sql_url(self, request: pytest.FixtureRequest, tmp_path: Path) -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / 'keys.db'}"
        return str(request.getfixturevalue("postgres_url"))

    def test_tables_and_version_are_created(self, sql_url: str) -> None:
        """Opening an empty database creates both tables and records the schema version."""
        store = SQLKeyStore(sql_url)
        with store.engine.connect() as conn:
            version = conn.execute(
                sa.text("select value from vaultkit_meta where name = 'key_store_schema'")
            ).scalar()
        assert version == str(SCHEMA_VERSION)
        store.close()

    def test_newer_schema_is_refused_and_left_alone(self, sql_url: str) -> None:
        """A key store written by a newer release is refused and not modified."""
        store = SQLKeyStore(sql_url)
        r = record()
        store.insert(r)
        with store.engine.begin() as conn:
            conn.execute(
                sa.text("update vaultkit_meta set value = '3' where name = 'key_store_schema'")
            )
        store.close()
        with pytest.raises(KeyStoreError, match="schema version 3, newer"):
            SQLKeyStore(sql_url)
        engine = sa.create_engine(sql_url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from vaultkit_data_keys")).scalar() == 1
            assert conn.execute(sa.text("select value from vaultkit_meta")).scalar() == "3"
        engine.dispose()

    def test_create_false_on_empty_database(self, sql_url: str) -> None:
        """With create=False missing tables are an error, and nothing is created."""
        with pytest.raises(KeyStoreError, match="missing"):
            SQLKeyStore(sql_url, create=False)
        engine = sa.create_engine(sql_url)
        assert not sa.inspect(engine).has_table("vaultkit_data_keys")
        engine.dispose()

    def test_reopening_keeps_rows(self, sql_url: str) -> None:
        """Reopening a store finds its rows and does not recreate anything."""
        r = record()
        first = SQLKeyStore(sql_url)
        first.insert(r)
        first.close()
        second = SQLKeyStore(sql_url)
        assert second.get(r.dek_id) == r
        second.close()

    def test_table_prefix(self, tmp_path: Path) -> None:
        """A prefix renames every table."""
        store = SQLKeyStore(f"sqlite:///{tmp_path / 'k.db'}", table_prefix="kms_")
        assert sorted(sa.inspect(store.engine).get_table_names()) == [
            "kms_data_keys",
            "kms_meta",
            "kms_subjects",
        ]
        store.close()

    def test_unreachable_database_names_no_password(self) -> None:
        """A store that cannot connect says so, without the URL's password."""
        with pytest.raises(KeyStoreError) as info:
            SQLKeyStore("postgresql+psycopg://user:hunter2-secret@127.0.0.1:1/none")
        assert "hunter2-secret" not in str(info.value)
        assert "***" in str(info.value)

    def test_bad_url(self) -> None:
        """A malformed URL is a configuration error."""
        with pytest.raises(ConfigurationError):
            SQLKeyStore("not a url")

    def test_repr_hides_password(self) -> None:
        """repr() of a store never shows the database password."""
        engine = sa.create_engine("sqlite://")
        store = SQLKeyStore(engine)
        assert "sqlite" in repr(store)
        store.close()
        engine.dispose()
