"""Key-store layout version 2: the scoped-key columns and the subjects table, the in-place upgrade
of a version 1 store (a real one, and on PostgreSQL and MariaDB), upgrades racing each other, and
the SupportsScopedKeys methods of the memory and SQL stores, which must agree."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from vaultkit import KeyDomain, Vault
from vaultkit.errors import KeyStoreError
from vaultkit.keys import LocalKeyProvider
from vaultkit.store import (
    SCHEMA_VERSION,
    WRAPPING_KEK_ID,
    DataKeyRecord,
    DekState,
    KeySummary,
    MemoryKeyStore,
    SQLKeyStore,
    SubjectRecord,
    SupportsDestroyMany,
)

V1 = Path(__file__).parents[2] / "vectors" / "keystore_v1"
MASTER = bytes(range(32))
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
V2_COLUMNS = {"scope", "not_after", "destroy_at", "destroyed_at", "destroy_reason"}


def v1_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The layout version 1 tables, as vaultkit 0.2 created them."""
    keys = sa.Table(
        "vaultkit_data_keys",
        metadata,
        sa.Column("dek_id", sa.String(32), primary_key=True),
        sa.Column("domain", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("kek_id", sa.String(255), nullable=False),
        sa.Column("kek_version", sa.Integer, nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject", sa.String(255), nullable=True),
        sa.Column("encryptions", sa.BigInteger, nullable=False, default=0),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Index("ix_vaultkit_data_keys_domain_state", "domain", "state"),
    )
    meta = sa.Table(
        "vaultkit_meta",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    return keys, meta


def make_v1(url: str) -> None:
    """A version 1 store with one process DEK row, made with the version 1 DDL."""
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    keys, meta = v1_tables(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(meta.insert().values(name="key_store_schema", value="1"))
        conn.execute(
            keys.insert().values(
                dek_id="ab" * 16,
                domain="identity",
                purpose="data",
                kek_id="k",
                kek_version=1,
                wrapped=b"w" * 61,
                state="active",
                created_at=T0,
                subject=None,
                encryptions=3,
                name=None,
            )
        )
    engine.dispose()


def layout(url: str) -> tuple[str, set[str], set[str]]:
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    with engine.connect() as conn:
        version = conn.execute(
            sa.text("select value from vaultkit_meta where name = 'key_store_schema'")
        ).scalar_one()
    columns = {c["name"] for c in inspector.get_columns("vaultkit_data_keys")}
    tables = set(inspector.get_table_names())
    engine.dispose()
    return version, columns, tables


class TestUpgrade:
    def test_a_real_v1_store_file_is_upgraded_and_reads_as_before(self, tmp_path: Path) -> None:
        for name in ("keys_v1.db", "keyring.json"):
            shutil.copy(V1 / name, tmp_path / name)
        url = f"sqlite:///{tmp_path / 'keys_v1.db'}"
        assert layout(url)[0] == "1"
        values = json.loads((V1 / "values.json").read_text())
        provider = LocalKeyProvider(tmp_path / "keyring.json", master_key=MASTER)
        contract = KeyDomain("contract", dek_scope="subject")
        with Vault(
            provider=provider, store=url, domains=["identity", "medical", contract]
        ) as vault:
            for v in values[:-1]:
                context = {"table": "t", "column": "c", "row": v["row"]}
                blob = bytes.fromhex(v["blob"])
                assert vault.decrypt(blob, context=context, domain=v["domain"]) == v["plain"]
            key = vault.blind_index_key("identity", table="t", column="c")
            assert key.digest(b"jan").hex() == values[-1]["index"]
            # The upgraded store serves scoped keys too.
            blob = vault.encrypt("claim", domain="contract", subject="m-1")
            assert vault.decrypt(blob) == "claim"
            old = [r for r in vault.data_keys() if r.domain != "contract"]
            assert old and all(r.scope is None and r.destroy_at is None for r in old)
        version, columns, tables = layout(url)
        assert version == str(SCHEMA_VERSION) == "2"
        assert V2_COLUMNS <= columns
        assert "vaultkit_subjects" in tables
        db = sqlite3.connect(tmp_path / "keys_v1.db")
        indexes = {n for (n,) in db.execute("select name from sqlite_master where type='index'")}
        db.close()
        assert {
            "ix_vaultkit_data_keys_domain_subject",
            "ix_vaultkit_data_keys_destroy_at",
        } <= indexes

    def test_create_false_refuses_to_upgrade_and_changes_nothing(self, tmp_path: Path) -> None:
        shutil.copy(V1 / "keys_v1.db", tmp_path / "keys.db")
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        before = (tmp_path / "keys.db").read_bytes()
        with pytest.raises(KeyStoreError, match=r"layout version 1.*create=True to upgrade"):
            SQLKeyStore(url, create=False)
        assert (tmp_path / "keys.db").read_bytes() == before

    def test_v1_is_upgraded_on_every_database(self, database_url: str) -> None:
        make_v1(database_url)
        store = SQLKeyStore(database_url)
        try:
            record = store.get(bytes.fromhex("ab" * 16))
            assert record is not None and record.encryptions == 3
            assert record.scope is None and record.not_after is None
            assert store.subject_keys("identity", "x") == []
            store.put_subject(SubjectRecord("identity", "x" * 32, relationship_end=T0))
            assert store.get_subject("identity", "x" * 32) == SubjectRecord(
                "identity", "x" * 32, relationship_end=T0
            )
        finally:
            store.close()
        version, columns, tables = layout(database_url)
        assert version == "2" and V2_COLUMNS <= columns and "vaultkit_subjects" in tables
        SQLKeyStore(database_url).close()  # reopening an upgraded store changes nothing

    def test_upgrades_racing_each_other_all_succeed(self, database_url: str) -> None:
        make_v1(database_url)
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_store() -> None:
            try:
                barrier.wait(timeout=30)
                SQLKeyStore(database_url).close()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        version, columns, tables = layout(database_url)
        assert version == "2" and V2_COLUMNS <= columns and "vaultkit_subjects" in tables


# -- SupportsScopedKeys, memory and SQL alike ---------------------------------------------------


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        s: Any = MemoryKeyStore()
    elif request.param == "sqlite":
        s = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    else:
        s = SQLKeyStore(str(request.getfixturevalue(f"{request.param}_url")))
    yield s
    s.close()


def rec(**changes: Any) -> DataKeyRecord:
    values: dict[str, Any] = {
        "dek_id": os.urandom(16),
        "domain": "contract",
        "purpose": "data",
        "kek_id": WRAPPING_KEK_ID,
        "kek_version": 1,
        "wrapped": os.urandom(61),
        "state": DekState.ACTIVE,
        "created_at": T0,
    }
    values.update(changes)
    return DataKeyRecord(**values)


class TestScopedStore:
    def test_rows_keep_the_new_fields(self, store: Any) -> None:
        r = rec(
            scope="bucket",
            not_after=T0 + dt.timedelta(hours=1),
            destroy_at=T0 + dt.timedelta(hours=73),
            destroyed_at=None,
            destroy_reason=None,
        )
        store.insert(r)
        assert store.get(r.dek_id) == r

    def test_subject_keys_deadlines_and_destruction(self, store: Any) -> None:
        ref = "ab" * 16
        first = rec(subject=ref, scope="subject")
        second = rec(subject=ref, scope="subject", created_at=T0 + dt.timedelta(seconds=1))
        other = rec(subject="cd" * 16, scope="subject")
        for r in (second, first, other):
            store.insert(r)
        assert [r.dek_id for r in store.subject_keys("contract", ref)] == [
            first.dek_id,
            second.dek_id,
        ]
        assert store.subject_keys("medical", ref) == []
        assert store.destroy_key(first.dek_id, reason="erasure", at=T0) is True
        assert store.destroy_key(first.dek_id, reason="retention", at=T0) is False
        with pytest.raises(KeyStoreError):
            store.destroy_key(os.urandom(16), reason="erasure", at=T0)
        gone = store.get(first.dek_id)
        assert gone.state is DekState.DESTROYED and gone.wrapped == b""
        assert (gone.destroyed_at, gone.destroy_reason) == (T0, "erasure")
        deadline = T0 + dt.timedelta(days=5 * 365)
        assert store.set_destroy_at("contract", ref, deadline) == 1  # not the destroyed one
        assert store.get(second.dek_id).destroy_at == deadline
        assert store.get(first.dek_id).destroy_at is None
        assert store.key_deadlines([first.dek_id, second.dek_id, os.urandom(16)]) == {
            first.dek_id: (DekState.DESTROYED, None),
            second.dek_id: (DekState.ACTIVE, deadline),
        }

    def test_destroy_keys_destroys_a_batch_and_says_exactly_which(self, store: Any) -> None:
        """More ids than one statement's chunk, some destroyed already, one unknown, one
        repeated: the call returns exactly the rows it destroyed, each as destroy_key would."""
        assert isinstance(store, SupportsDestroyMany)
        rows = [rec(scope="bucket") for _ in range(1203)]
        for r in rows:
            store.insert(r)
        assert store.destroy_key(rows[7].dek_id, reason="erasure", at=T0) is True
        later = T0 + dt.timedelta(hours=1)
        ids = [r.dek_id for r in rows] + [os.urandom(16), rows[9].dek_id]
        done = store.destroy_keys(ids, reason="retention", at=later)
        assert sorted(done) == sorted(r.dek_id for i, r in enumerate(rows) if i != 7)
        assert len(done) == len(set(done))
        assert store.destroy_keys(ids, reason="retention", at=later) == []
        assert store.destroy_keys([], reason="retention", at=later) == []
        for i in (0, 7, 600, 1202):
            gone = store.get(rows[i].dek_id)
            assert gone.state is DekState.DESTROYED and gone.wrapped == b""
            expected = (T0, "erasure") if i == 7 else (later, "retention")
            assert (gone.destroyed_at, gone.destroy_reason) == expected
        assert store.due_keys(later + dt.timedelta(days=9999), limit=10) == []

    def test_destroy_keys_racing_each_other_report_each_key_once(self, store: Any) -> None:
        """Two callers destroying overlapping batches at once (two sweeps): every key is
        reported destroyed by exactly one of them."""
        rows = [rec(scope="bucket") for _ in range(600)]
        for r in rows:
            store.insert(r)
        ids = [r.dek_id for r in rows]
        results: list[list[bytes]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def sweep(batch: list[bytes]) -> None:
            start.wait()
            try:
                results.append(store.destroy_keys(batch, reason="retention", at=T0))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=sweep, args=(ids,)),
            threading.Thread(target=sweep, args=(ids[::-1],)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(results[0] + results[1]) == sorted(ids)

    def test_due_keys_are_the_earliest_live_ones(self, store: Any) -> None:
        rows = [rec(destroy_at=T0 + dt.timedelta(hours=h)) for h in (5, 1, 3, 9)]
        rows.append(rec(destroy_at=None))
        rows.append(rec(destroy_at=T0, state=DekState.DESTROYED, wrapped=b""))
        rows.append(rec(destroy_at=T0, purpose="index", name="x@v1"))
        for r in rows:
            store.insert(r)
        due = store.due_keys(T0 + dt.timedelta(hours=5), limit=2)
        assert [r.destroy_at for r in due] == [
            T0 + dt.timedelta(hours=1),
            T0 + dt.timedelta(hours=3),
        ]
        assert len(store.due_keys(T0 + dt.timedelta(hours=5), limit=10)) == 3
        assert store.due_keys(T0 + dt.timedelta(hours=5), limit=0) == []

    def test_subjects_are_upserted(self, store: Any) -> None:
        ref = "ab" * 16
        assert store.get_subject("contract", ref) is None
        store.put_subject(SubjectRecord("contract", ref, relationship_end=T0))
        fenced = SubjectRecord("contract", ref, T0, fenced_at=T0, erased_at=T0, request_id="r-1")
        store.put_subject(fenced)
        store.put_subject(fenced)  # unchanged: still fine on MariaDB
        assert store.get_subject("contract", ref) == fenced
        assert store.get_subject("medical", ref) is None

    def test_wrapping_keys_and_provider_wrapped(self, store: Any) -> None:
        w2 = rec(purpose="wrapping", name="wrapping@2", kek_id="kek")
        w1 = rec(purpose="wrapping", name="wrapping@1", kek_id="kek")
        scoped = rec(subject="ab" * 16, scope="subject")
        named = rec(purpose="index", name="t.c@v1", kek_id="kek")
        for r in (w2, w1, scoped, named):
            store.insert(r)
        assert [r.name for r in store.wrapping_keys("contract")] == ["wrapping@1", "wrapping@2"]
        assert {r.dek_id for r in store.provider_wrapped("contract")} == {
            w1.dek_id,
            w2.dek_id,
            named.dek_id,
        }

    def test_key_summary(self, store: Any) -> None:
        at = T0 + dt.timedelta(hours=10)
        bucket = dt.timedelta(hours=1)
        rows = [
            rec(
                scope="bucket",
                not_after=T0 + dt.timedelta(hours=h),
                destroy_at=T0 + dt.timedelta(hours=h + 8),
            )
            for h in (1, 2, 3, 4)
        ]  # due: h + 8 <= 10, i.e. h = 1, 2
        rows.append(rec(scope="bucket", state=DekState.DESTROYED, wrapped=b"", not_after=T0))
        rows += [
            rec(subject=f"{i:032x}", scope="subject", created_at=T0 + dt.timedelta(hours=i))
            for i in range(3)
        ]
        rows.append(rec(domain="medical"))
        for r in rows:
            store.insert(r)
        store.put_subject(SubjectRecord("contract", f"{1:032x}", relationship_end=T0))
        summary = store.key_summary("contract", at, bucket=bucket)
        assert summary == KeySummary(
            live=7,
            destroyed=1,
            due=2,
            oldest_readable_capture=T0,  # the subject key created at T0
            subjects=3,
            subjects_without_end=2,
            ended_without_deadline=1,  # subject 1's key: its end is recorded, no destroy_at
        )
        buckets_only = store.key_summary("medical", at)
        assert buckets_only.live == 1 and buckets_only.subjects == 0

    def test_the_sql_summary_is_two_aggregate_queries(self, tmp_path: Path) -> None:
        store = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
        with store.engine.begin() as conn:
            conn.execute(
                store.keys.insert(),
                [
                    {
                        "dek_id": os.urandom(16).hex(),
                        "domain": "contract",
                        "purpose": "data",
                        "kek_id": WRAPPING_KEK_ID,
                        "kek_version": 1,
                        "wrapped": b"w",
                        "state": "active",
                        "created_at": T0,
                        "subject": f"{i:032x}",
                        "encryptions": 0,
                        "scope": "subject",
                    }
                    for i in range(5000)
                ],
            )
        statements: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        summary = store.key_summary("contract", T0)
        store.close()
        assert summary.live == 5000 and summary.subjects == 5000
        assert len(statements) == 2
        assert all("count" in s.lower() or "sum" in s.lower() for s in statements)
