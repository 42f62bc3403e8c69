"""The subject keys of many members at once (``Vault.prepare_subjects``) and the known-member fast
path: keys made once per member, fences and deadlines honoured as by the single-key path (also
against an erasure racing in another thread and a database writer), key-store statement counts,
and the bounded subject-reference cache."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests._support import dek_of
from tests.unit.scopes._scoped_support import START, Wall, seed_domains
from vaultkit import Vault, _scoped, sqla
from vaultkit.errors import (
    ConfigurationError,
    DecryptionError,
    DomainError,
    KeyStoreError,
    SubjectErasedError,
)
from vaultkit.sqla import Encrypted
from vaultkit.store import (
    DataKeyRecord,
    DekState,
    KeyStore,
    MemoryKeyStore,
    SQLKeyStore,
    SubjectRecord,
    SupportsBulkScopedKeys,
)
from vaultkit.testing import InMemoryKeyProvider

MakeVault = Callable[..., Vault]


def _live(store: Any, domain: str, ref: str) -> list[DataKeyRecord]:
    return [r for r in store.subject_keys(domain, ref) if r.state is DekState.ACTIVE]


def _data_rows(store: Any, domain: str) -> int:
    return sum(1 for r in store.records(domain=domain) if r.purpose == "data")


@pytest.fixture
def sql_store(tmp_path: Path) -> Iterator[SQLKeyStore]:
    store = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    yield store
    store.close()


def _statements(engine: sa.Engine) -> list[str]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    sa.event.listen(engine, "before_cursor_execute", count)
    return seen


class TestPrepareSubjects:
    def test_keys_are_made_once_per_member_and_reused(
        self, make_vault: MakeVault, sql_store: SQLKeyStore
    ) -> None:
        """One key per member, found again by a second call and by another vault (process)."""
        members = [f"m-{i}" for i in range(1200)]
        a = make_vault(sql_store)
        assert a.prepare_subjects("medical", [*members, *members[:10]]) == 1200
        refs = [a.subject_ref("medical", m) for m in members]
        assert all(len(_live(sql_store, "medical", r)) == 1 for r in refs[:50])
        assert _data_rows(sql_store, "medical") == 1200
        blobs = [a.encrypt(f"v{m}", domain="medical", subject=m) for m in members]
        assert _data_rows(sql_store, "medical") == 1200  # none made on write
        assert a.prepare_subjects("medical", members) == 0  # all ready
        b = make_vault(sql_store)
        assert b.prepare_subjects("medical", members) == 1200  # found, not made
        assert _data_rows(sql_store, "medical") == 1200
        assert b.encrypt("w", domain="medical", subject="m-7")[:20] == blobs[7][:20]  # same key
        assert b.decrypt(blobs[1199], domain="medical") == "vm-1199"

    def test_key_store_statements_are_per_500_members(
        self, make_vault: MakeVault, sql_store: SQLKeyStore
    ) -> None:
        """N new members: O(N/500) statements, not ~4 per member as one by one."""
        vault = make_vault(sql_store)
        vault.prepare_subjects("medical", ["warm-up"])  # wrapping and subject-ref keys
        seen = _statements(sql_store.engine)
        vault.prepare_subjects("medical", [f"m-{i}" for i in range(1500)])
        # 3 reads of existing keys + 3 of fences + 3 inserts + 1 wrapping row + 3 re-checks.
        assert len(seen) <= 14, seen
        assert seen.count("INSERT") <= 3
        seen.clear()
        for i in range(1500):
            vault.encrypt("x", domain="medical", subject=f"m-{i}")
        assert [s for s in seen if s != "UPDATE"] == []  # the writes make no key-store query

    def test_a_fenced_member_gets_no_key_and_its_write_is_refused(
        self, make_vault: MakeVault
    ) -> None:
        vault = make_vault()
        store = vault.store
        ref = vault.subject_ref("medical", "gone")
        store.put_subject(SubjectRecord("medical", ref, fenced_at=START, erased_at=START))  # type: ignore[attr-defined]
        assert vault.prepare_subjects("medical", ["gone", "kept"]) == 1
        assert store.subject_keys("medical", ref) == []  # type: ignore[attr-defined]
        with pytest.raises(SubjectErasedError):
            vault.encrypt("x", domain="medical", subject="gone")
        vault.encrypt("x", domain="medical", subject="kept")

    def test_an_erasure_racing_in_another_thread_destroys_the_new_key(
        self, provider: InMemoryKeyProvider, wall: Wall, tmp_path: Path
    ) -> None:
        """The erase lands between the batch's fence read and its insert, from another vault in
        another thread: its sweep finds no key; the batch's re-check after the insert destroys
        the member's new key, and the member's writes are refused."""
        url = f"sqlite:///{tmp_path / 'keys.db'}"

        class EraseMeanwhile(SQLKeyStore):
            eraser: Vault | None = None

            def insert_many(self, records: Collection[DataKeyRecord]) -> None:
                eraser = self.eraser
                if eraser is not None:
                    self.eraser = None
                    errors: list[BaseException] = []

                    def erase() -> None:
                        try:
                            eraser.erase_subject("m-3", reason="art. 17", request_id="r-1")
                        except BaseException as exc:  # pragma: no cover - reported below
                            errors.append(exc)

                    thread = threading.Thread(target=erase)
                    thread.start()
                    thread.join(30)
                    assert not errors and not thread.is_alive()
                super().insert_many(records)

        store = EraseMeanwhile(url)
        other = SQLKeyStore(url)
        try:
            with (
                Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as writer,
                Vault(provider=provider, store=other, domains=seed_domains(), clock=wall) as eraser,
            ):
                store.eraser = eraser
                members = [f"m-{i}" for i in range(6)]
                assert writer.prepare_subjects("medical", members) == 5
                ref = writer.subject_ref("medical", "m-3")
                keys = store.subject_keys("medical", ref)
                assert len(keys) == 1
                assert keys[0].state is DekState.DESTROYED and keys[0].destroy_reason == "erasure"
                assert keys[0].wrapped == b""
                with pytest.raises(SubjectErasedError):
                    writer.encrypt("x", domain="medical", subject="m-3")
                for m in ("m-0", "m-5"):
                    blob = writer.encrypt("y", domain="medical", subject=m)
                    assert eraser.decrypt(blob, domain="medical") == "y"
        finally:
            store.close()
            other.close()

    def test_a_recorded_relationship_end_is_bound_into_the_new_keys(
        self, make_vault: MakeVault, wall: Wall
    ) -> None:
        """The deadline of a recorded end is the key's destroy_at and is bound into its wrap: a
        database writer who moves it makes the key unreadable, not longer-lived."""
        vault = make_vault()
        store = vault.store
        ended = START - dt.timedelta(days=30)
        vault.end_relationship("c-1", at=ended)
        vault.prepare_subjects("contract", ["c-1", "c-2"])
        ref1, ref2 = (vault.subject_ref("contract", s) for s in ("c-1", "c-2"))
        retention = vault.key_domain("contract").retention  # type: ignore[union-attr]
        assert retention is not None
        (k1,) = store.subject_keys("contract", ref1)  # type: ignore[attr-defined]
        (k2,) = store.subject_keys("contract", ref2)  # type: ignore[attr-defined]
        assert k1.destroy_at == _scoped.subject_deadline(retention, ended)
        assert k2.destroy_at is None
        blob = vault.encrypt("contract text", domain="contract", subject="c-1")
        assert dek_of(blob) == k1.dek_id
        # The attacker moves the deadline 50 years on: another vault refuses the key.
        assert k1.destroy_at is not None
        moved = k1.destroy_at + dt.timedelta(days=365 * 50)
        store._rows[k1.dek_id] = dataclasses.replace(k1, destroy_at=moved)  # type: ignore[attr-defined]
        with pytest.raises(DecryptionError):
            make_vault().decrypt(blob, domain="contract")

    def test_an_end_recorded_while_the_batch_inserts_is_bound_too(
        self, make_vault: MakeVault
    ) -> None:
        """end_relationship lands right after the batch's insert (another vault): the new key
        ends up with the deadline bound, whoever rebinds it, and stays readable."""
        ended = START - dt.timedelta(days=3)

        class EndMeanwhile(MemoryKeyStore):
            other: Vault | None = None

            def insert_many(self, records: Collection[DataKeyRecord]) -> None:
                super().insert_many(records)
                if self.other is not None:
                    other, self.other = self.other, None
                    other.end_relationship("c-9", at=ended)

        store = EndMeanwhile()
        writer = make_vault(store)
        store.other = make_vault(store)
        assert writer.prepare_subjects("contract", ["c-8", "c-9"]) == 2
        retention = writer.key_domain("contract").retention  # type: ignore[union-attr]
        assert retention is not None
        (key,) = store.subject_keys("contract", writer.subject_ref("contract", "c-9"))
        assert key.destroy_at == _scoped.subject_deadline(retention, ended)
        # The writer knows the deadline too: it stops encrypting under the key at it.
        active = writer._keyring.subject_actives[("contract", key.subject or "")]
        assert active.record is not None and active.record.destroy_at == key.destroy_at
        blob = writer.encrypt("terms", domain="contract", subject="c-9")
        assert dek_of(blob) == key.dek_id
        assert make_vault(store).decrypt(blob, domain="contract") == "terms"

    def test_a_key_moved_to_another_member_does_not_unwrap(self, make_vault: MakeVault) -> None:
        vault = make_vault()
        store = vault.store
        vault.prepare_subjects("medical", ["a", "b"])
        blob = vault.encrypt("secret of a", domain="medical", subject="a")
        ref_b = vault.subject_ref("medical", "b")
        row = store.get(dek_of(blob))
        assert row is not None
        store._rows[row.dek_id] = dataclasses.replace(row, subject=ref_b)  # type: ignore[attr-defined]
        with pytest.raises(DecryptionError):
            make_vault().decrypt(blob, domain="medical")

    def test_a_shred_between_check_and_insert_discards_the_new_keys(
        self, make_vault: MakeVault
    ) -> None:
        """The wrapping epoch is destroyed (shred) while the batch inserts: its keys would be
        unreadable, so they are destroyed and the writes make keys of the current epoch."""

        class ShredMeanwhile(MemoryKeyStore):
            vault: Vault | None = None

            def insert_many(self, records: Collection[DataKeyRecord]) -> None:
                super().insert_many(records)
                if self.vault is not None:
                    vault, self.vault = self.vault, None
                    vault.shred_epoch("medical")

        store = ShredMeanwhile()
        writer = make_vault(store)
        writer.prepare_subjects("medical", ["warm"])  # epoch 1 known to the writer
        store.vault = make_vault(store)
        assert writer.prepare_subjects("medical", ["s-1", "s-2"]) == 0
        for s in ("s-1", "s-2"):
            ref = writer.subject_ref("medical", s)
            assert [k.state for k in store.subject_keys("medical", ref)] == [DekState.DESTROYED]
            blob = writer.encrypt("v", domain="medical", subject=s)
            assert make_vault(store).decrypt(blob, domain="medical") == "v"

    def test_store_without_the_bulk_methods_gets_keys_one_by_one(
        self, make_vault: MakeVault
    ) -> None:
        class Plain(MemoryKeyStore):
            active_subject_keys = None  # type: ignore[assignment]

        store = Plain()
        as_any: Any = store
        assert not isinstance(as_any, SupportsBulkScopedKeys)
        vault = make_vault(store)
        ref = vault.subject_ref("medical", "gone")
        store.put_subject(SubjectRecord("medical", ref, fenced_at=START))
        assert vault.prepare_subjects("medical", ["a", "b", "a", "gone"]) == 2
        assert _data_rows(store, "medical") == 2

    def test_refusals(self, make_vault: MakeVault) -> None:
        vault = make_vault()
        with pytest.raises(DomainError):
            vault.prepare_subjects("nope", ["a"])
        with pytest.raises(ConfigurationError, match="no subject keys"):
            vault.prepare_subjects("identity", ["a"])
        with pytest.raises(TypeError):
            vault.prepare_subjects("medical", [True])
        with pytest.raises(ValueError, match="empty"):
            vault.prepare_subjects("medical", ["a", ""])
        vault.close()
        with pytest.raises(ConfigurationError, match="closed"):
            vault.prepare_subjects("medical", ["b"])


_subjects = st.lists(
    st.one_of(st.integers(0, 30), st.sampled_from(["a", "b", "c", "d"])), max_size=25
)


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30, deadline=None
)
@given(members=_subjects, fenced=st.sets(st.integers(0, 30)), ended=st.sets(st.integers(0, 30)))
def test_the_batch_path_gives_what_the_single_path_gives(
    provider: InMemoryKeyProvider,
    wall: Wall,
    members: list[int | str],
    fenced: set[int],
    ended: set[int],
) -> None:
    """Same members, fences and recorded ends: the same keys (one live per member, same
    deadlines, none for fenced ones) and the same write outcomes, batch or one by one."""
    outcomes = []
    for batch in (True, False):
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=seed_domains(), clock=wall) as vault:
            for gone in fenced:
                ref = vault.subject_ref("contract", gone)
                store.put_subject(SubjectRecord("contract", ref, fenced_at=START))
            for end in ended - fenced:
                vault.end_relationship(end, at=START - dt.timedelta(days=end))
            if batch:
                vault.prepare_subjects("contract", members)
            written: dict[int | str, str] = {}
            for m in members:
                try:
                    blob = vault.encrypt(f"v{m}", domain="contract", subject=m)
                except SubjectErasedError:
                    written[m] = "fenced"
                else:
                    assert vault.decrypt(blob, domain="contract") == f"v{m}"
                    written[m] = "ok"
            keys = {}
            for m in set(members):
                ref = vault.subject_ref("contract", m)
                live = _live(store, "contract", ref)
                assert len(live) <= 1
                keys[m] = [(k.scope, k.destroy_at, k.kek_version) for k in live]
            outcomes.append((written, keys))
    assert outcomes[0] == outcomes[1]


class TestKnownMembers:
    def test_the_reference_cache_is_bounded_and_exact_in_type(self, make_vault: MakeVault) -> None:
        vault = make_vault()
        keyring = vault._keyring
        keyring.subject_cache_size = 8
        for i in range(50):
            vault.encrypt("x", domain="medical", subject=i)
            assert len(keyring._refs) <= 8
        # 1 (int) is cached; True (== 1, same hash) must still be refused, and "1" maps to the
        # same reference as 1 (str(subject)).
        with pytest.raises(TypeError):
            vault.encrypt("x", domain="medical", subject=True)
        assert vault.subject_ref("medical", "49") == vault.subject_ref("medical", 49)
        # A reference known in a process-scoped domain opens no shortcut around its checks.
        vault.subject_ref("identity", "x")
        with pytest.raises(ConfigurationError, match="no subject keys"):
            vault.encrypt("x", domain="identity", subject="x")

    def test_an_erased_member_is_dropped_from_the_reference_cache(
        self, make_vault: MakeVault
    ) -> None:
        vault = make_vault()
        vault.encrypt("x", domain="medical", subject="m-secret")
        assert any(s == "m-secret" for _, s in vault._keyring._refs)
        vault.erase_subject("m-secret", reason="art. 17", request_id="r-2")
        assert not any(s == "m-secret" for _, s in vault._keyring._refs)
        assert "m-secret" not in repr(vault) and "m-secret" not in repr(vault._keyring)
        with pytest.raises(SubjectErasedError):
            vault.encrypt("x", domain="medical", subject="m-secret")


class TestSqlaBatches:
    def test_one_orm_flush_of_new_members_costs_few_key_store_statements(
        self, make_vault: MakeVault, sql_store: SQLKeyStore, tmp_path: Path
    ) -> None:
        class Base(DeclarativeBase):
            pass

        class Note(Base):
            __tablename__ = "bulk_notes"
            id: Mapped[int] = mapped_column(primary_key=True)
            member_id: Mapped[str] = mapped_column(sa.String(20))
            note: Mapped[str] = mapped_column(
                Encrypted(sa.Text, domain="medical", subject="member_id")
            )

        vault = make_vault(sql_store, cache_size=4000)
        vault.prepare_subjects("medical", ["warm-up"])
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
        Base.metadata.create_all(engine)
        sqla.configure(vault)
        try:
            seen = _statements(sql_store.engine)
            with Session(engine) as session:
                session.add_all(
                    Note(id=i, member_id=f"m-{i % 1000}", note=f"n{i}") for i in range(1100)
                )
                session.commit()
            assert len(seen) <= 10, seen
            assert _data_rows(sql_store, "medical") == 1001
            seen.clear()
            with Session(engine) as session:
                notes = session.scalars(sa.select(Note).order_by(Note.id)).all()
                assert [n.note for n in notes] == [f"n{i}" for i in range(1100)]
            assert seen == []  # the keys made for the flush read back from the cache
            # pandas-style Core executemany takes the same path.
            seen.clear()
            with engine.begin() as conn:
                conn.execute(
                    sa.insert(cast(sa.Table, Note.__table__)),
                    [{"id": 5000 + i, "member_id": f"x-{i}", "note": "c"} for i in range(600)],
                )
            assert len(seen) <= 10, seen
            assert _data_rows(sql_store, "medical") == 1601
            # pandas through vaultkit.sqla.pandas.to_sql: one batch per chunk.
            pd = pytest.importorskip("pandas")
            from vaultkit.sqla.pandas import to_sql

            seen.clear()
            frame = pd.DataFrame(
                {
                    "id": range(9000, 9700),
                    "member_id": [f"p-{i}" for i in range(700)],
                    "note": ["d"] * 700,
                }
            )
            assert to_sql(frame, Note, engine, chunksize=350) == 700
            assert len(seen) <= 12, seen
            assert _data_rows(sql_store, "medical") == 2301
        finally:
            sqla.configure(None)
            engine.dispose()


def test_store_protocol_is_met_by_both_stores(sql_store: KeyStore) -> None:
    assert isinstance(sql_store, SupportsBulkScopedKeys)
    assert isinstance(MemoryKeyStore(), SupportsBulkScopedKeys)


def test_the_sql_batch_methods_on_every_database(make_vault: MakeVault, database_url: str) -> None:
    """Chunks of 500 refs, all-or-nothing inserts, and the same choices on each database."""
    store = SQLKeyStore(database_url)
    try:
        vault = make_vault(store)
        members = [f"m-{i}" for i in range(1100)]
        assert vault.prepare_subjects("medical", members) == 1100
        refs = [vault.subject_ref("medical", m) for m in members]
        found = store.active_subject_keys("medical", refs)
        assert len(found) == 1100 and all(len(rows) == 1 for rows in found.values())
        assert store.subject_records("medical", refs) == {}
        store.put_subject(SubjectRecord("medical", refs[777], fenced_at=START))
        assert list(store.subject_records("medical", refs)) == [refs[777]]
        # All or none: a batch holding an existing id inserts nothing.
        (taken,) = found[refs[0]]
        fresh = dataclasses.replace(taken, dek_id=b"\x01" * 16)
        with pytest.raises(KeyStoreError):
            store.insert_many([fresh, taken])
        assert store.get(fresh.dek_id) is None
        blob = vault.encrypt("v", domain="medical", subject="m-1099")
        assert make_vault(store).decrypt(blob, domain="medical") == "v"
    finally:
        store.close()
