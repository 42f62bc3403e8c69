"""Tests for the re-keying engine (vaultkit.rekey) on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import vaultkit.sqla
from vaultkit import KeyDomain, Vault
from vaultkit.errors import ConfigurationError
from vaultkit.rekey import rekey_table, verify_table
from vaultkit.sqla import BlindIndexType, Encrypted, count_plaintext
from vaultkit.store import DekState, MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

META = sa.MetaData()
MEMBERS = sa.Table(
    "rk_members",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("uid", sa.Uuid, nullable=False),
    sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
    sa.Column("email_ix", BlindIndexType("email", normalize=str.lower)),
    sa.Column("note", Encrypted(sa.Text, domain="medical", row_key="uid")),
)


pytestmark = pytest.mark.configured  # the vault fixture is the column types' vault


@pytest.fixture
def vault_kwargs() -> dict[str, Any]:
    return {
        "provider": InMemoryKeyProvider(),
        "store": MemoryKeyStore(),
        "domains": [KeyDomain("identity"), KeyDomain("medical", restricted=True)],
        "dek_max_encryptions": 50,
    }


@pytest.fixture
def engine(database_url: str, vault: Vault) -> Iterator[sa.Engine]:
    eng = sa.create_engine(database_url)
    META.create_all(eng)
    yield eng
    META.drop_all(eng)
    for name in ("vaultkit_rekey_checkpoints", "vaultkit_rekey_ranges"):
        sa.Table(name, sa.MetaData()).drop(eng, checkfirst=True)
    eng.dispose()


def load_legacy(engine: sa.Engine, vault: Vault, n: int) -> list[uuid.UUID]:
    """n rows: e-mail as legacy plaintext bytes, note encrypted and row-bound."""
    uids = [uuid.UUID(int=i + 1) for i in range(n)]
    with engine.begin() as conn:
        conn.execute(
            sa.text("insert into rk_members (id, uid, email) values (:id, :uid, :email)"),
            [
                {
                    "id": i + 1,
                    "uid": u if engine.dialect.name == "postgresql" else u.hex,
                    "email": f"M{i}@X.be".encode(),
                }
                for i, u in enumerate(uids)
            ],
        )
    with (
        vault.acting_as(vaultkit.Principal("loader", grants={"medical"}), purpose="load"),
        engine.begin() as conn,
    ):
        for i, u in enumerate(uids):
            conn.execute(
                MEMBERS.update().where(MEMBERS.c.id == i + 1).values(note=f"note {i}", uid=u)
            )
    return uids


def read_all(engine: sa.Engine, vault: Vault) -> dict[int, tuple[Any, Any]]:
    with (
        vault.acting_as(vaultkit.Principal("reader", grants={"medical"}), purpose="check"),
        engine.connect() as conn,
    ):
        rows = conn.execute(
            sa.select(MEMBERS.c.id, MEMBERS.c.uid, MEMBERS.c.email, MEMBERS.c.note)
        ).all()
        return {r.id: (r.email, r.note.decrypt(row=r.uid)) for r in rows}


def test_legacy_plaintext_is_encrypted_and_indexed(engine: sa.Engine, vault: Vault) -> None:
    """Plaintext values are encrypted in place and their blind index backfilled in the same pass."""
    load_legacy(engine, vault, 120)
    with engine.connect() as conn:
        assert count_plaintext(conn, MEMBERS.c.email) == 120
    report = rekey_table(engine, MEMBERS, vault=vault, batch_size=25)
    assert (report.rows_scanned, report.plaintext_encrypted, report.retired_reencrypted) == (
        120,
        120,
        0,
    )
    assert report.finished and report.batches == 5 and report.changed_meanwhile == 0
    with engine.connect() as conn:
        assert count_plaintext(conn, MEMBERS.c.email) == 0
        found = (
            conn.execute(sa.select(MEMBERS.c.id).where(MEMBERS.c.email_ix == "m7@x.be"))
            .scalars()
            .all()
        )
    assert found == [8]
    assert read_all(engine, vault)[8] == ("M7@X.be", "note 7")
    again = rekey_table(engine, MEMBERS, vault=vault, job="second", batch_size=25)
    assert again.values_rewritten == 0  # idempotent


def test_retired_deks_are_reencrypted_then_destroyable(engine: sa.Engine, vault: Vault) -> None:
    """Values under retired DEKs move to a current DEK; afterwards nothing references them."""
    load_legacy(engine, vault, 80)
    rekey_table(engine, MEMBERS, vault=vault, job="encrypt")
    before = verify_table(engine, MEMBERS, vault=vault)
    old_deks = [bytes.fromhex(d) for d in before.by_dek]
    for dek in old_deks:
        vault.retire_dek(dek)
    report = rekey_table(engine, MEMBERS, vault=vault, job="retire", batch_size=30)
    assert report.retired_reencrypted == 160 and report.plaintext_encrypted == 0
    after = verify_table(engine, MEMBERS, vault=vault)
    assert after.values == 160 and after.plaintext == 0 and after.undecryptable == 0
    assert not set(after.by_dek) & {d.hex() for d in old_deks}
    with engine.connect() as conn:
        for dek in old_deks:
            assert vaultkit.sqla.count_dek_references(conn, "rk_members", "email", dek) == 0
            assert vaultkit.sqla.count_dek_references(conn, "rk_members", "note", dek) == 0
    for dek in old_deks:
        vault.destroy_dek(dek, references=0)
    assert all(r.state is DekState.DESTROYED for r in vault.store.records() if r.dek_id in old_deks)
    assert read_all(engine, vault)[80] == ("M79@X.be", "note 79")


def test_dry_run_counts_and_writes_nothing(engine: sa.Engine, vault: Vault) -> None:
    """A dry run counts what would change and leaves the table and checkpoints alone."""
    load_legacy(engine, vault, 40)
    report = rekey_table(engine, MEMBERS, vault=vault, dry_run=True, batch_size=15)
    assert report.dry_run and report.plaintext_encrypted == 40
    with engine.connect() as conn:
        assert count_plaintext(conn, MEMBERS.c.email) == 40


def test_resumes_from_its_checkpoint(engine: sa.Engine, vault: Vault) -> None:
    """A run stopped after two batches resumes after the last committed batch."""
    load_legacy(engine, vault, 100)
    first = rekey_table(engine, MEMBERS, vault=vault, job="resumable", batch_size=20, max_batches=2)
    assert (first.rows_scanned, first.finished) == (40, False)
    second = rekey_table(engine, MEMBERS, vault=vault, job="resumable", batch_size=20)
    assert second.resumed_after == 40 and second.rows_scanned == 60 and second.finished
    with engine.connect() as conn:
        assert count_plaintext(conn, MEMBERS.c.email) == 0


def test_rows_changed_meanwhile_are_not_overwritten(
    engine: sa.Engine, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row the application updates after the batch was read keeps the application's value."""
    load_legacy(engine, vault, 10)

    def application_writes(rows: Any) -> None:
        # Another connection updates row 3 between the engine's read and its UPDATE.
        with engine.begin() as other:
            other.execute(MEMBERS.update().where(MEMBERS.c.id == 3).values(email="new@x.be"))

    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite allows one writer at a time; covered on PostgreSQL and MariaDB")
    monkeypatch.setattr("vaultkit.rekey._run.after_read", application_writes)
    report = rekey_table(engine, MEMBERS, vault=vault, batch_size=100)
    assert report.changed_meanwhile == 1 and report.plaintext_encrypted == 9
    assert read_all(engine, vault)[3][0] == "new@x.be"


def test_bad_tables_are_refused(vault: Vault) -> None:
    """Tables without encrypted columns or with a composite key are refused clearly."""
    plain = sa.Table(
        "p", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("x", sa.String)
    )
    with pytest.raises(ConfigurationError, match="no encrypted column"):
        rekey_table(sa.create_engine("sqlite://"), plain, vault=vault)
    with pytest.raises(ConfigurationError, match="not encrypted"):
        rekey_table(sa.create_engine("sqlite://"), MEMBERS, vault=vault, columns=["uid"])


def test_strict_column_with_plaintext_is_left_and_counted(engine: sa.Engine, vault: Vault) -> None:
    """Plaintext in a column not in migration mode is never guessed at: counted, left as it is."""
    load_legacy(engine, vault, 10)
    strict = sa.Table(
        "rk_members",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(200), domain="identity")),
    )
    report = rekey_table(engine, strict, vault=vault, job="strict")
    assert report.undecryptable == 10 and report.values_rewritten == 0 and not report.complete
    with engine.connect() as conn:
        assert count_plaintext(conn, MEMBERS.c.email) == 10


def moved_table(previous: Encrypted, current: Encrypted) -> tuple[sa.Table, sa.Table]:
    """The same table declared twice: as it was, and with the column's new type."""
    return tuple(  # type: ignore[return-value]
        sa.Table(
            "rk_moves",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("uid", sa.Uuid, nullable=False),
            sa.Column("diagnosis", column_type),
        )
        for column_type in (previous, current)
    )


@pytest.mark.parametrize(
    "what",
    ["domain", "binding"],
)
def test_move_to_another_domain_or_binding(database_url: str, vault: Vault, what: str) -> None:
    """A column moved to another domain (identity -> medical) or bound to its rows: readable
    throughout through previous=, then every value moved, and then readable without previous=."""
    if what == "domain":
        old = Encrypted(sa.Text, domain="identity")
        new = Encrypted(sa.Text, domain="medical", previous=Encrypted(sa.Text, domain="identity"))
        final = Encrypted(sa.Text, domain="medical")
    else:
        old = Encrypted(sa.Text, domain="medical")
        new = Encrypted(
            sa.Text, domain="medical", row_key="uid", previous=Encrypted(sa.Text, domain="medical")
        )
        final = Encrypted(sa.Text, domain="medical", row_key="uid")
    before, during = moved_table(old, new)
    after = moved_table(final, final)[1]
    engine = sa.create_engine(database_url)
    before.create(engine)
    reader = vaultkit.Principal("medical-adviser", grants={"medical"})
    try:
        with vault.acting_as(reader, purpose="load"), engine.begin() as conn:
            conn.execute(
                before.insert(),
                [{"id": i, "uid": uuid.UUID(int=i), "diagnosis": f"d{i}"} for i in range(1, 41)],
            )

        def read(table: sa.Table) -> dict[int, Any]:
            with vault.acting_as(reader, purpose="read"), engine.connect() as conn:
                rows = conn.execute(sa.select(table)).all()
                return {
                    r.id: r.diagnosis.decrypt(row=r.uid)
                    if isinstance(r.diagnosis, vaultkit.sqla.EncryptedCell)
                    else r.diagnosis
                    for r in rows
                }

        expected = {i: f"d{i}" for i in range(1, 41)}
        assert read(during) == expected  # old values open through previous=
        with vault.acting_as(reader, purpose="write"), engine.begin() as conn:
            conn.execute(
                during.update()
                .where(during.c.id == 5)
                .values(diagnosis="new five", uid=uuid.UUID(int=5))
            )
        expected[5] = "new five"
        assert read(during) == expected  # a mix of old and new values
        with pytest.raises(vaultkit.errors.DecryptionError):
            read(after)  # without previous= the old values do not open
        report = rekey_table(engine, during, vault=vault, batch_size=15, job=f"move-{what}")
        assert report.moved == 39 and report.complete  # row 5 was already written the new way
        assert read(after) == expected
        assert verify_table(engine, after, vault=vault).clean
    finally:
        before.drop(engine)
        for name in ("vaultkit_rekey_checkpoints", "vaultkit_rekey_ranges"):
            sa.Table(name, sa.MetaData()).drop(engine, checkfirst=True)
        engine.dispose()


def test_previous_must_be_compatible() -> None:
    """previous= takes one Encrypted type of the same inner type, bound to the same row key or none."""
    with pytest.raises(ConfigurationError, match="same inner type"):
        Encrypted(sa.Text, domain="medical", previous=Encrypted(sa.Integer, domain="identity"))
    with pytest.raises(ConfigurationError, match="another column"):
        Encrypted(
            sa.Text, domain="medical", previous=Encrypted(sa.Text, domain="medical", row_key="x")
        )
    inner = Encrypted(sa.Text, domain="identity")
    with pytest.raises(ConfigurationError, match="not a chain"):
        Encrypted(
            sa.Text,
            domain="medical",
            previous=Encrypted(sa.Text, domain="identity", previous=inner),
        )
    assert "previous=Encrypted(sa.Text(), domain='identity')" in repr(
        Encrypted(sa.Text, domain="medical", previous=inner)
    )


@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_hundred_thousand_rows(db: str, request: pytest.FixtureRequest, tmp_path: Any) -> None:
    """100,000 legacy rows encrypted in place and indexed, half of them then re-keyed again after
    their DEKs are retired; verify counts everything as current."""
    url = (
        f"sqlite:///{tmp_path / 'big.db'}"
        if db == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    v = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"])
    vaultkit.sqla.configure(v)
    table = sa.Table(
        "rk_big",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
        sa.Column("email_ix", BlindIndexType("email", normalize=str.lower)),
    )
    engine = sa.create_engine(url)
    table.create(engine)
    n = 100_000
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("insert into rk_big (id, email) values (:id, :email)"),
                [{"id": i, "email": f"M{i}@X.be".encode()} for i in range(n)],
            )
        first = rekey_table(engine, table, vault=v, job="big-1")
        assert first.plaintext_encrypted == n and first.complete
        assert first.ranges_total == 6  # five ranges of 20,000 and the open-ended last one
        for record in list(v.store.records()):
            if record.purpose == "data":
                v.retire_dek(record.dek_id)
        second = rekey_table(engine, table, vault=v, job="big-2")
        assert second.retired_reencrypted == n and second.complete
        report = verify_table(engine, table, vault=v)
        assert report.values == n and report.clean and report.by_version == {1: n}
        with engine.connect() as conn:
            hits = conn.execute(
                sa.select(table.c.id).where(table.c.email_ix.in_(["m0@x.be", "m99999@x.be"]))
            ).scalars()
            assert sorted(hits) == [0, 99_999]
    finally:
        table.drop(engine)
        for name in ("vaultkit_rekey_checkpoints", "vaultkit_rekey_ranges"):
            sa.Table(name, sa.MetaData()).drop(engine, checkfirst=True)
        engine.dispose()
        vaultkit.sqla.configure(None)
        v.close()


def test_blind_index_key_rotation(engine: sa.Engine, vault: Vault) -> None:
    """Version 2 of a blind index: the engine rewrites every index value under the new key without
    re-encrypting the values; afterwards lookups need only version 2."""
    load_legacy(engine, vault, 60)
    rekey_table(engine, MEMBERS, vault=vault, job="encrypt")

    def members(version: int, query_versions: tuple[int, ...]) -> sa.Table:
        return sa.Table(
            "rk_members",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
            sa.Column(
                "email_ix",
                BlindIndexType(
                    "email", normalize=str.lower, version=version, query_versions=query_versions
                ),
            ),
        )

    def lookup(table: sa.Table, email: str) -> list[int]:
        with engine.connect() as conn:
            return list(
                conn.execute(sa.select(table.c.id).where(table.c.email_ix == email)).scalars()
            )

    with engine.connect() as conn:
        before = dict(
            conn.execute(
                sa.select(MEMBERS.c.id, sa.type_coerce(MEMBERS.c.email, sa.LargeBinary))
            ).all()
        )
    rotating = members(2, (1, 2))
    assert lookup(rotating, "m7@x.be") == [8]  # old digests still match during the rotation
    assert not verify_table(engine, rotating, vault=vault).clean  # 60 index values under v1
    report = rekey_table(engine, rotating, vault=vault, job="index-v2", batch_size=25)
    assert report.indexes_rebuilt == 60 and report.values_rewritten == 0 and report.complete
    with engine.connect() as conn:
        after = dict(
            conn.execute(
                sa.select(MEMBERS.c.id, sa.type_coerce(MEMBERS.c.email, sa.LargeBinary))
            ).all()
        )
    assert {k: bytes(v) for k, v in after.items()} == {k: bytes(v) for k, v in before.items()}
    final = members(2, (2,))
    assert lookup(final, "m7@x.be") == [8] and lookup(final, "M59@X.be") == [60]
    assert verify_table(engine, final, vault=vault).clean


def test_workers_starting_together_create_and_cut_once(engine: sa.Engine, vault: Vault) -> None:
    """Six workers starting at the same moment race to create the engine's tables and to cut the
    job's ranges: none fails, and they all see the same ranges."""
    import threading

    from vaultkit.rekey import plan_job

    load_legacy(engine, vault, 30)
    barrier = threading.Barrier(6)
    results: list[Any] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(plan_job(engine, MEMBERS, job="together", range_size=7))
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(5, 5)] * 6  # 30 rows in ranges of 7: 4 bounds, 5 ranges


DRY_META = sa.MetaData()
DRY = sa.Table(
    "rk_dry",
    DRY_META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("uid", sa.Uuid, nullable=False),
    sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
    sa.Column("email_ix", BlindIndexType("email", normalize=str.lower)),
    sa.Column("note", Encrypted(sa.Text, domain="medical", row_key="uid")),
)
AUDITED = [KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)]


class TestDryRunWritesNothing:
    """``dry_run=True`` classifies from headers and the key store: no key, event, row or checkpoint."""

    def test_key_store_audit_log_and_data_are_untouched(self, database_url: str) -> None:
        """Legacy plaintext (no identity DEK nor index key yet) and medical values under a retired
        DEK: a dry run counts them and every table of the one database stays byte for byte."""
        from tests.integration._dbdump import dump_database

        provider = InMemoryKeyProvider()
        engine = sa.create_engine(database_url)
        DRY_META.create_all(engine)
        with Vault(provider=provider, store=database_url, domains=AUDITED) as app:
            vaultkit.sqla.configure(app)
            try:
                with engine.begin() as conn:
                    conn.execute(
                        sa.text("insert into rk_dry (id, uid, email) values (:id, :uid, :email)"),
                        [
                            {
                                "id": i,
                                "uid": uuid.UUID(int=i)
                                if engine.dialect.name == "postgresql"
                                else uuid.UUID(int=i).hex,
                                "email": f"M{i}@X.be".encode(),
                            }
                            for i in range(1, 31)
                        ],
                    )
                coach = vaultkit.Principal("coach", grants={"medical"})
                with app.acting_as(coach, purpose="load"), engine.begin() as conn:
                    for i in range(1, 31):
                        conn.execute(
                            DRY.update()
                            .where(DRY.c.id == i)
                            .values(note=f"note {i}", uid=uuid.UUID(int=i))
                        )
                for record in app.store.records(domain="medical"):
                    if record.purpose == "data":
                        app.retire_dek(record.dek_id)
            finally:
                vaultkit.sqla.configure(None)
        before = dump_database(database_url)
        assert "vaultkit_audit_events" in before and "vaultkit_data_keys" in before
        with Vault(provider=provider, store=database_url, domains=AUDITED) as operator:
            vaultkit.sqla.configure(operator)
            try:
                report = rekey_table(engine, DRY, vault=operator, dry_run=True, batch_size=7)
            finally:
                vaultkit.sqla.configure(None)
        after = dump_database(database_url)
        DRY_META.drop_all(engine)
        engine.dispose()
        assert (report.plaintext_encrypted, report.retired_reencrypted) == (30, 30)
        assert report.rows_scanned == 30 and report.finished and report.dry_run
        assert after == before

    @pytest.mark.parametrize("what", ["domain", "binding", "binding, retired DEK"])
    def test_moves_are_classified_without_decrypting(self, tmp_path: Any, what: str) -> None:
        """A move to another domain is counted as moved from the DEK's domain alone; a move to a
        row binding in the same audited domain, which only decrypting could tell, is counted as
        unchecked, unless its DEK is retired (re-encrypted either way); no audit event is
        written."""
        if what == "domain":
            old = Encrypted(sa.Text, domain="identity")
            new = Encrypted(
                sa.Text, domain="medical", previous=Encrypted(sa.Text, domain="identity")
            )
        else:
            old = Encrypted(sa.Text, domain="medical")
            new = Encrypted(
                sa.Text,
                domain="medical",
                row_key="uid",
                previous=Encrypted(sa.Text, domain="medical"),
            )
        before, during = moved_table(old, new)
        url = f"sqlite:///{tmp_path / 'app.db'}"
        engine = sa.create_engine(url)
        before.create(engine)
        with Vault(provider=InMemoryKeyProvider(), store=url, domains=AUDITED) as vault:
            vaultkit.sqla.configure(vault)
            try:
                coach = vaultkit.Principal("coach", grants={"medical"})
                with vault.acting_as(coach, purpose="load"), engine.begin() as conn:
                    conn.execute(
                        before.insert(),
                        [
                            {"id": i, "uid": uuid.UUID(int=i), "diagnosis": f"d{i}"}
                            for i in range(40)
                        ],
                    )
                if what == "binding, retired DEK":
                    for record in vault.store.records(domain="medical"):
                        if record.purpose == "data":
                            vault.retire_dek(record.dek_id)
                log = vault.audit_log
                assert log is not None
                events = len(list(log.read()))
                report = rekey_table(engine, during, vault=vault, dry_run=True, batch_size=15)
                assert len(list(log.read())) == events
            finally:
                vaultkit.sqla.configure(None)
        engine.dispose()
        expected = {"domain": (40, 0, 0), "binding": (0, 40, 0), "binding, retired DEK": (0, 0, 40)}
        assert (report.moved, report.unchecked, report.retired_reencrypted) == expected[what]
        assert report.values_rewritten == 40 - report.unchecked and report.undecryptable == 0


class TestKeyOrderLocks:
    """The rows a batch writes are locked first, in key order, for every kind of key."""

    @pytest.mark.parametrize("key", ["uuid", "string"])
    def test_uuid_and_string_keys(self, database_url: str, vault: Vault, key: str) -> None:
        """A table keyed by UUID or by string is re-keyed through the key-order lock."""
        key_type: Any = sa.Uuid if key == "uuid" else sa.String(40)
        table = sa.Table(
            f"rk_keys_{key}",
            sa.MetaData(),
            sa.Column("id", key_type, primary_key=True),
            sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
        )
        engine = sa.create_engine(database_url)
        table.create(engine)
        keys = [uuid.UUID(int=i) if key == "uuid" else f"member-{i:03d}" for i in range(30)]
        raw = sa.Table(
            table.name,
            sa.MetaData(),
            sa.Column("id", key_type, primary_key=True),
            sa.Column("email", sa.LargeBinary),
        )
        try:
            with engine.begin() as conn:
                conn.execute(
                    raw.insert(),
                    [{"id": k, "email": f"M{i}@X.be".encode()} for i, k in enumerate(keys)],
                )
            report = rekey_table(engine, table, vault=vault, batch_size=7)
            assert report.plaintext_encrypted == 30 and report.complete
            with engine.connect() as conn:
                assert count_plaintext(conn, table.c.email) == 0
                found = dict(conn.execute(sa.select(table.c.id, table.c.email)).all())
            assert found == {k: f"M{i}@X.be" for i, k in enumerate(keys)}
        finally:
            table.drop(engine)
            for name in ("vaultkit_rekey_checkpoints", "vaultkit_rekey_ranges"):
                sa.Table(name, sa.MetaData()).drop(engine, checkfirst=True)
            engine.dispose()


@pytest.mark.postgres
def test_tables_of_one_name_in_two_schemas_are_two_jobs(
    postgres_url: str, postgres_schema: str, vault: Vault
) -> None:
    """By default tenant B's members table is its own job: a finished run on tenant A's table
    of the same name does not make the run on tenant B's skip its rows."""
    other = f"{postgres_schema}_b"
    eng = sa.create_engine(postgres_url)
    with eng.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{other}"'))
    try:
        meta = sa.MetaData()
        tables = [
            sa.Table(
                "tenant_members",
                meta,
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
                schema=schema,
            )
            for schema in (postgres_schema, other)
        ]
        meta.create_all(eng)
        for schema in (postgres_schema, other):
            with eng.begin() as conn:
                conn.execute(
                    sa.text(f'insert into "{schema}".tenant_members (id, email) values (:i, :e)'),
                    [{"i": i, "e": f"m{i}@x.be".encode()} for i in range(1, 11)],
                )
        reports = [rekey_table(eng, table, vault=vault) for table in tables]
        assert [r.plaintext_encrypted for r in reports] == [10, 10]
        assert reports[0].job != reports[1].job
        for table in tables:
            with eng.connect() as conn:
                assert count_plaintext(conn, table.c.email) == 0
    finally:
        with eng.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{other}" CASCADE'))
        eng.dispose()


@pytest.mark.postgres
def test_workers_beginning_a_migration_together_record_it_once(
    postgres_url: str, vault: Vault
) -> None:
    """Two workers beginning the same column's migration at once: one records its legacy rows,
    the other waits for it and finds the migration begun; the manifest holds each row once."""
    import threading

    from vaultkit.rekey import begin_migration

    eng = sa.create_engine(postgres_url)
    META.create_all(eng)
    try:
        load_legacy(eng, vault, 300)
        results: list[object] = []
        barrier = threading.Barrier(2)

        def worker() -> None:
            barrier.wait()
            try:
                results.append(begin_migration(eng, MEMBERS, vault=vault, batch_size=50))
            except Exception as exc:  # reported below
                results.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(map(str, results)) == ["{'email': 300}", "{}"]
        with eng.connect() as conn:
            assert (
                conn.execute(sa.text("select count(*) from vaultkit_legacy_rows")).scalar() == 300
            )
    finally:
        META.drop_all(eng)
        eng.dispose()


def test_values_too_short_to_be_ciphertext_are_counted_not_fatal(
    engine: sa.Engine, vault: Vault
) -> None:
    """A value that starts with the wire magic but is shorter than any ciphertext (the magic
    alone, or a ciphertext cut short) is counted as undecryptable and left, by both the re-key
    run and verify; it neither stops the run nor passes for a current value."""
    from vaultkit.core import wire

    load_legacy(engine, vault, 10)
    assert rekey_table(engine, MEMBERS, vault=vault, job="first").complete
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(sa.type_coerce(MEMBERS.c.email, sa.LargeBinary)).where(MEMBERS.c.id == 5)
        ).scalar_one()
    with engine.begin() as conn:
        update = sa.text("update rk_members set email = :email where id = :id")
        # Row 5 comes after rows of the same DEK, whose header the run has seen by then.
        conn.execute(update, [{"id": 1, "email": wire.MAGIC}, {"id": 5, "email": stored[:60]}])
    report = rekey_table(engine, MEMBERS, vault=vault, job="short")
    assert report.finished and report.undecryptable == 2 and not report.complete
    assert report.values_rewritten == 0
    verified = verify_table(engine, MEMBERS, vault=vault)
    assert verified.undecryptable == 2 and not verified.clean
