"""Tests for the audit log: what is logged, batching, failure, and tamper detection."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from vaultkit import KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit.audit import AuditEvent, AuditLog
from vaultkit.cli.main import main
from vaultkit.errors import AuditError
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV

MASTER = bytes(range(32))
COACH = Principal("coach-17", grants={"medical"})
CLAIMS = Principal("claims-handler-3")
DOMAINS = [KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Vault, str, Path]]:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    keyring = tmp_path / "keyring.json"
    vault = Vault(
        provider=LocalKeyProvider(keyring, master_key=MASTER),
        store=url,
        domains=DOMAINS,
        audit_batch_size=100,
    )
    yield vault, url, keyring
    vault.close()


def events(url: str) -> list[sa.Row[tuple[object, ...]]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select * from vaultkit_audit_events order by seq")).all()
    engine.dispose()
    return rows


def events_of(url: str, table: str) -> list[sa.Row[tuple[object, ...]]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"select * from {table} order by seq")).all()
    engine.dispose()
    return rows


def sql(url: str, statement: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(statement))
    engine.dispose()


def test_reads_are_logged_with_who_why_where_and_never_the_value(
    setup: tuple[Vault, str, Path],
) -> None:
    """Each read names principal, purpose, domain, table, column, row keys and DEK, not the value."""
    vault, url, _ = setup
    notes = vault.field("medical", table="members", column="health_note", row_bound=True)
    blobs = {f"m-{i}": notes.encrypt(f"diagnosis number {i}", row=f"m-{i}") for i in range(3)}
    with vault.acting_as(COACH, purpose="coaching-chat"):
        for row, blob in blobs.items():
            assert notes.decrypt(blob, row=row) == f"diagnosis number {row[2:]}"
    logged = [e for e in events(url) if e.action == "decrypt"]
    assert [(e.principal, e.purpose, e.domain, e.table_name, e.column_name) for e in logged] == [
        ("coach-17", "coaching-chat", "medical", "members", "health_note")
    ] * 2
    assert [e.row_keys for e in logged] == ['["m-0"]', '["m-1","m-2"]']
    assert sum(e.count for e in logged) == 3 and logged[0].dek_id
    dump = "".join(str(tuple(e)) for e in events(url))
    assert "diagnosis" not in dump
    assert vault.audit_log is not None and vault.audit_log.verify().ok


def test_bulk_reads_are_batched(setup: tuple[Vault, str, Path]) -> None:
    """Reading 1,000 rows writes a handful of events, not 1,000."""
    vault, url, _ = setup
    notes = vault.field("medical", table="members", column="note", row_bound=True)
    blobs = [(i, notes.encrypt("x", row=i)) for i in range(1000)]
    before = len(events(url))
    with vault.acting_as(COACH, purpose="review"):
        for i, blob in blobs:
            notes.decrypt(blob, row=i)
    added = [e for e in events(url)[before:] if e.action == "decrypt"]
    assert len(added) <= 12 and sum(e.count for e in added) == 1000


def test_denied_attempts_and_writes_are_logged(setup: tuple[Vault, str, Path]) -> None:
    """A read without the grant logs 'denied'; encrypting into the domain logs 'write'."""
    vault, url, _ = setup
    with acting_as(CLAIMS, purpose="claim-77"):
        blob = vault.encrypt(
            "uploaded certificate", domain="medical", context={"table": "docs", "column": "body"}
        )
        assert isinstance(
            vault.decrypt(blob, context={"table": "docs", "column": "body"}), SealedValue
        )
    vault.flush_audit()
    actions = {(e.action, e.principal, e.purpose) for e in events(url)}
    assert ("write", "claims-handler-3", "claim-77") in actions
    assert ("denied", "claims-handler-3", "claim-77") in actions


def test_decrypt_fails_when_the_event_cannot_be_written(setup: tuple[Vault, str, Path]) -> None:
    """If the audit event cannot be written, the decrypt raises and returns no plaintext."""
    vault, url, _ = setup
    blob = vault.encrypt("secret note", domain="medical")
    vault.flush_audit()
    sql(url, "drop table vaultkit_audit_events")
    with vault.acting_as(COACH, purpose="review"), pytest.raises(AuditError):
        vault.decrypt(blob)


class TestTamperDetection:
    @pytest.fixture
    def logged(self, setup: tuple[Vault, str, Path]) -> tuple[Vault, str]:
        vault, url, _ = setup
        for i in range(6):
            with vault.acting_as(COACH, purpose=f"p{i}"):
                vault.decrypt(vault.encrypt(f"v{i}", domain="medical"))
        assert vault.audit_log is not None and vault.audit_log.verify().ok
        return vault, url

    def check(self, vault: Vault, broken: int, reason: str) -> None:
        assert vault.audit_log is not None
        result = vault.audit_log.verify()
        assert not result.ok and result.first_broken == broken and reason in result.reason

    def test_deleted_event(self, logged: tuple[Vault, str]) -> None:
        """A deleted event is named as missing."""
        vault, url = logged
        sql(url, "delete from vaultkit_audit_events where seq = 4")
        self.check(vault, 4, "missing")

    def test_edited_event(self, logged: tuple[Vault, str]) -> None:
        """An edited event no longer matches its mac."""
        vault, url = logged
        sql(url, "update vaultkit_audit_events set principal = 'someone-else' where seq = 3")
        self.check(vault, 3, "altered")

    def test_reordered_events(self, logged: tuple[Vault, str]) -> None:
        """Swapping two events' positions breaks the chain at the first of them."""
        vault, url = logged
        sql(url, "update vaultkit_audit_events set seq = 100 where seq = 2")
        sql(url, "update vaultkit_audit_events set seq = 2 where seq = 5")
        sql(url, "update vaultkit_audit_events set seq = 5 where seq = 100")
        self.check(vault, 2, "does not follow")

    def test_inserted_event(self, logged: tuple[Vault, str]) -> None:
        """A forged event appended at the end, without the key, is caught."""
        vault, url = logged
        last = events(url)[-1]
        sql(
            url,
            "insert into vaultkit_audit_events (seq, at, principal, purpose, action, domain, table_name,"
            " column_name, row_keys, count, dek_id, prev_mac, mac) values"
            f" ({last.seq + 1}, '2026-01-01 00:00:00', 'x', 'y', 'decrypt', 'medical', null, null, '[]', 1,"
            f" null, '{last.mac}', '{'0' * 64}')",
        )
        sql(url, f"update vaultkit_audit_head set seq = {last.seq + 1}, mac = '{'0' * 64}'")
        self.check(vault, last.seq + 1, "altered or forged")

    def test_truncated_tail(self, logged: tuple[Vault, str]) -> None:
        """Deleting the last events is caught by the head."""
        vault, url = logged
        last = events(url)[-1].seq
        sql(url, f"delete from vaultkit_audit_events where seq = {last}")
        self.check(vault, last, "ends at event")

    def test_cli_names_the_first_broken_link(
        self,
        logged: tuple[Vault, str],
        setup: tuple[Vault, str, Path],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """vaultkit audit verify prints OK, or the first broken link with exit code 7."""
        _, url, keyring = setup
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
        args = ["audit", "verify", "--store", url, "--keyring", str(keyring), "--domain", "medical"]
        assert main(args) == 0
        assert "audit log intact" in capsys.readouterr().out
        sql(url, "update vaultkit_audit_events set purpose = 'edited' where seq = 2")
        assert main(args) == 7
        assert "BROKEN at event 2" in capsys.readouterr().out


@pytest.mark.postgres
def test_concurrent_writers_keep_one_chain_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """Eight threads logging at once on PostgreSQL leave one unbroken chain (the head row lock)."""
    import threading

    vault = Vault(
        provider=LocalKeyProvider(tmp_path / "k.json", master_key=MASTER),
        store=postgres_url,
        domains=DOMAINS,
        audit_batch_size=1,
    )
    try:
        blob = vault.encrypt("note", domain="medical")
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(15):
                    with vault.acting_as(
                        Principal(f"coach-{n}", grants={"medical"}), purpose=f"p{i}"
                    ):
                        vault.decrypt(blob)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert vault.audit_log is not None
        result = vault.audit_log.verify()
        assert result.ok and result.events >= 8 * 15
    finally:
        vault.close()


def test_forked_child_does_not_inherit_pending_audit_rows(setup: tuple[Vault, str, Path]) -> None:
    """A forked child starts with no open audit batches and a free audit lock."""
    import multiprocessing

    vault, _url, _ = setup
    blob = vault.encrypt("note", domain="medical")
    with acting_as(COACH, purpose="review"):
        vault.decrypt(blob)
        vault.decrypt(blob)  # one batch open, one row pending
        assert vault._recorder._batches
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()

        def child() -> None:
            queue.put((len(vault._recorder._batches), vault._recorder._lock.acquire(timeout=5)))

        proc = ctx.Process(target=child)
        proc.start()
        proc.join(30)
    assert proc.exitcode == 0
    assert queue.get(timeout=5) == (0, True)
    vault.flush_audit()


class TestHeadAndCheckpoints:
    """A truncated or rolled-back log is caught: by the head's own MAC, and against a checkpoint."""

    @pytest.fixture
    def cli(
        self, setup: tuple[Vault, str, Path], monkeypatch: pytest.MonkeyPatch
    ) -> Callable[..., int]:
        _, url, keyring = setup
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
        base = ["--store", url, "--keyring", str(keyring), "--domain", "medical"]

        def run(action: str, *extra: str) -> int:
            return main(["audit", action, *base, *extra])

        return run

    @staticmethod
    def read(vault: Vault, n: int, prefix: str = "p") -> None:
        blob = vault.encrypt("note", domain="medical")
        for i in range(n):
            with vault.acting_as(COACH, purpose=f"{prefix}{i}"):
                vault.decrypt(blob)

    @staticmethod
    def head_row(url: str) -> dict[str, object]:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            row = conn.execute(sa.text("select * from vaultkit_audit_head")).one()
        engine.dispose()
        return dict(row._mapping)

    @staticmethod
    def put_head(url: str, head: dict[str, object]) -> None:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "update vaultkit_audit_head set seq = :seq, mac = :mac, log_id = :log_id,"
                    " auth = :auth"
                ),
                head,
            )
        engine.dispose()

    def test_a_rewound_head_fails_verify_without_a_checkpoint(
        self, setup: tuple[Vault, str, Path], cli: Callable[..., int]
    ) -> None:
        """Deleting the tail and rewinding the head's seq and mac breaks the head's own MAC."""
        vault, url, _ = setup
        self.read(vault, 6)
        keep = events(url)[2]
        sql(url, f"delete from vaultkit_audit_events where seq > {keep.seq}")
        sql(url, f"update vaultkit_audit_head set seq = {keep.seq}, mac = '{keep.mac}'")
        assert vault.audit_log is not None
        result = vault.audit_log.verify()
        assert not result.ok and "head row was altered" in result.reason
        assert cli("verify") == 7
        with vault.acting_as(COACH, purpose="after"), pytest.raises(AuditError, match="head"):
            vault.decrypt(vault.encrypt("x", domain="medical"))

    def test_an_emptied_head_mac_is_refused_not_adopted(
        self, setup: tuple[Vault, str, Path], cli: Callable[..., int]
    ) -> None:
        """A head whose MAC was set to NULL is not re-authenticated when the log is reopened."""
        vault, url, keyring = setup
        self.read(vault, 3)
        sql(url, "update vaultkit_audit_head set auth = null")
        assert cli("verify") == 7
        with Vault(
            provider=LocalKeyProvider(keyring, master_key=MASTER), store=url, domains=DOMAINS
        ) as again:
            assert again.audit_log is not None and not again.audit_log.verify().ok

    def test_an_untouched_log_passes_against_its_checkpoint(
        self,
        setup: tuple[Vault, str, Path],
        cli: Callable[..., int],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """audit head writes a 0600 checkpoint; verify --expect passes, also after more events."""
        vault, _, _ = setup
        self.read(vault, 4)
        checkpoint = tmp_path / "audit-head.json"
        assert cli("head", "--out", str(checkpoint)) == 0
        assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o600
        saved = json.loads(checkpoint.read_text())
        assert set(saved) == {"v", "log_id", "seq", "chain", "at", "mac"} and saved["seq"] >= 4
        assert cli("verify", "--expect", str(checkpoint)) == 0
        self.read(vault, 3, prefix="later")
        assert cli("verify", "--expect", str(checkpoint)) == 0
        assert "checkpoint" in capsys.readouterr().out
        assert cli("head") == 0  # to stdout
        printed = json.loads(capsys.readouterr().out)
        assert printed["seq"] > saved["seq"] and printed["log_id"] == saved["log_id"]

    def test_a_truncation_with_a_replayed_head_fails_against_the_checkpoint(
        self,
        setup: tuple[Vault, str, Path],
        cli: Callable[..., int],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Deleting the tail and putting back an older head row is caught only by a checkpoint."""
        vault, url, _ = setup
        self.read(vault, 3)
        old_head = self.head_row(url)  # a database writer keeps a copy of the head row
        self.read(vault, 4, prefix="hidden")
        checkpoint = tmp_path / "audit-head.json"
        assert cli("head", "--out", str(checkpoint)) == 0
        sql(url, f"delete from vaultkit_audit_events where seq > {old_head['seq']}")
        self.put_head(url, old_head)
        assert vault.audit_log is not None and vault.audit_log.verify().ok  # the limit, documented
        capsys.readouterr()
        assert cli("verify", "--expect", str(checkpoint)) == 7
        assert "truncated or rolled back" in capsys.readouterr().out
        assert cli("head", "--expect", str(checkpoint)) == 7

    def test_a_recreated_log_fails_against_the_checkpoint(
        self,
        setup: tuple[Vault, str, Path],
        cli: Callable[..., int],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Dropping both audit tables is "no audit log here" (exit 9); the new, empty log the
        application's next vault creates is intact but fails against the old checkpoint."""
        vault, url, keyring = setup
        self.read(vault, 3)
        checkpoint = tmp_path / "audit-head.json"
        assert cli("head", "--out", str(checkpoint)) == 0
        sql(url, "drop table vaultkit_audit_events")
        sql(url, "drop table vaultkit_audit_head")
        assert cli("verify") == 9  # verify creates nothing: there is no log
        assert "no audit log here" in capsys.readouterr().err
        Vault(
            provider=LocalKeyProvider(keyring, master_key=MASTER), store=url, domains=DOMAINS
        ).close()  # the application starts again: a new, empty log
        assert cli("verify") == 0  # a fresh log is intact
        capsys.readouterr()
        assert cli("verify", "--expect", str(checkpoint)) == 7
        assert "replaced or recreated" in capsys.readouterr().out

    def test_a_tampered_checkpoint_is_refused(
        self,
        setup: tuple[Vault, str, Path],
        cli: Callable[..., int],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """An edited checkpoint, or one that is not JSON, is refused with exit code 1."""
        vault, _, _ = setup
        self.read(vault, 3)
        checkpoint = tmp_path / "audit-head.json"
        assert cli("head", "--out", str(checkpoint)) == 0
        saved = json.loads(checkpoint.read_text())
        edited = tmp_path / "edited.json"
        edited.write_text(json.dumps({**saved, "seq": 1}))
        capsys.readouterr()
        assert cli("verify", "--expect", str(edited)) == 1
        assert "checkpoint is not authentic" in capsys.readouterr().err
        edited.write_text("not json")
        assert cli("verify", "--expect", str(edited)) == 1
        assert "not a vaultkit audit checkpoint" in capsys.readouterr().err

    def test_a_log_of_the_first_layout_opens_and_verifies(
        self, setup: tuple[Vault, str, Path], cli: Callable[..., int], tmp_path: Path
    ) -> None:
        """A head table without log_id and auth (the first layout) is upgraded on open."""
        vault, url, keyring = setup
        self.read(vault, 3)
        vault.close()
        sql(url, "alter table vaultkit_audit_head drop column auth")
        sql(url, "alter table vaultkit_audit_head drop column log_id")
        with Vault(
            provider=LocalKeyProvider(keyring, master_key=MASTER), store=url, domains=DOMAINS
        ) as again:
            assert again.audit_log is not None and again.audit_log.verify().ok
            self.read(again, 2)
        assert cli("verify") == 0
        assert cli("head", "--out", str(tmp_path / "cp.json")) == 0
        assert cli("verify", "--expect", str(tmp_path / "cp.json")) == 0


@pytest.mark.postgres
def test_a_forked_child_writes_events_on_its_own_connections(
    postgres_url: str, tmp_path: Path
) -> None:
    """With Vault(audit=URL), a forked child and its parent log at once; the chain stays whole."""
    import multiprocessing

    vault = Vault(
        provider=LocalKeyProvider(tmp_path / "k.json", master_key=MASTER),
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        domains=DOMAINS,
        audit=postgres_url,
        audit_batch_size=1,
    )
    try:
        blob = vault.encrypt("note", domain="medical")
        with vault.acting_as(COACH, purpose="parent-0"):
            vault.decrypt(blob)  # the parent's pool now holds a PostgreSQL connection
        ctx = multiprocessing.get_context("fork")
        go = ctx.Event()

        def child() -> None:
            go.wait(10)
            for i in range(40):
                with vault.acting_as(Principal("coach-child", grants={"medical"}), purpose=f"c{i}"):
                    vault.decrypt(blob)
            vault.close()

        proc = ctx.Process(target=child)
        proc.start()
        go.set()
        for i in range(40):
            with vault.acting_as(COACH, purpose=f"parent-{i + 1}"):
                vault.decrypt(blob)
        proc.join(60)
        assert proc.exitcode == 0
        with vault.acting_as(COACH, purpose="parent-after"):
            vault.decrypt(blob)  # the parent's connection is still valid
        assert vault.audit_log is not None
        result = vault.audit_log.verify()
        assert result.ok and result.events >= 2 * 40 + 2
    finally:
        vault.close()


def test_a_head_table_of_the_first_layout_is_upgraded_on_every_backend(database_url: str) -> None:
    """On SQLite, PostgreSQL and MariaDB a head without log_id and auth gains both on open."""
    import hashlib
    import hmac
    import os

    key = os.urandom(32)

    def mac(data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    engine = sa.create_engine(database_url)
    try:
        first = AuditLog(engine, mac=mac)
        event = AuditEvent(
            "coach-17", "review", "decrypt", "medical", "t", "c", ("r1",), 1, None,
            dt.datetime.now(dt.UTC),
        )  # fmt: skip
        first.append([event, event])
        with engine.begin() as conn:
            conn.execute(sa.text("alter table vaultkit_audit_head drop column auth"))
            conn.execute(sa.text("alter table vaultkit_audit_head drop column log_id"))
        again = AuditLog(engine, mac=mac)
        assert again.verify().ok
        checkpoint = again.checkpoint()
        again.append([event])
        assert checkpoint.seq == 2 and again.verify(expect=checkpoint).ok
        assert AuditLog(engine, mac=mac).verify(expect=checkpoint).events == 3
    finally:
        engine.dispose()


def test_a_short_write_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    """With a file-size limit below a checkpoint's size, writing fails and the old file stays."""
    import subprocess
    import sys
    import textwrap

    target = tmp_path / "latest.json"
    target.write_text("previous checkpoint\n")
    script = textwrap.dedent(
        f"""
        import datetime as dt, resource, signal
        from vaultkit.audit import Checkpoint, write_checkpoint
        from vaultkit.errors import AuditError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a short write instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        cp = Checkpoint("0" * 32, 7, "1" * 64, dt.datetime.now(dt.UTC), "2" * 64)
        try:
            write_checkpoint({str(target)!r}, cp)
        except AuditError as exc:
            print("refused:", exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert "refused: could not write the checkpoint" in result.stdout, result.stderr
    assert target.read_text() == "previous checkpoint\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.json"]  # no temporary file left


class TestNoEventIsLost:
    """Every access reaches the log or fails; a failed write keeps its events (issue 13, item 3).

    The log is made unwritable for real: its events table renamed away (SQLite), INSERT revoked
    from the application's role (PostgreSQL).
    """

    @staticmethod
    def counted(url: str) -> int:
        return sum(int(e.count) for e in events(url) if e.action == "decrypt")

    def test_a_full_batch_that_cannot_be_written_fails_the_read_and_keeps_its_rows(
        self, setup: tuple[Vault, str, Path]
    ) -> None:
        """With the events table gone, the read that fills the batch fails and so does every
        later one; once the table is back the kept rows are written first, and the log counts
        exactly the reads that returned plaintext."""
        vault, url, _ = setup  # audit_batch_size=100
        blob = vault.encrypt("note", domain="medical")
        returned = 0
        with acting_as(COACH, purpose="review"):
            assert vault.decrypt(blob) == "note"  # the batch's first event, written
            returned += 1
            sql(url, "alter table vaultkit_audit_events rename to hidden_events")
            with pytest.raises(AuditError):
                for _ in range(1000):
                    assert vault.decrypt(blob) == "note"
                    returned += 1
            assert returned == 100  # the batch never outgrows audit_batch_size
            with pytest.raises(AuditError):
                vault.decrypt(blob)  # the kept rows go first, and cannot
            sql(url, "alter table hidden_events rename to vaultkit_audit_events")
            assert vault.decrypt(blob) == "note"
            returned += 1
        vault.flush_audit()
        assert self.counted(url) == returned
        assert vault.audit_log is not None and vault.audit_log.verify().ok

    def test_a_failed_flush_keeps_its_rows_and_fails_the_next_read(
        self, setup: tuple[Vault, str, Path]
    ) -> None:
        """A flush that fails (the acting_as block ends with the log gone) keeps the batch's row
        keys; the next read fails until the log is back, then they are written first."""
        vault, url, _ = setup
        notes = vault.field("medical", table="members", column="note", row_bound=True)
        blobs = [(f"m-{i}", notes.encrypt("x", row=f"m-{i}")) for i in range(5)]
        with pytest.raises(AuditError), vault.acting_as(COACH, purpose="review"):
            for row, blob in blobs:
                notes.decrypt(blob, row=row)
            sql(url, "alter table vaultkit_audit_events rename to hidden_events")
        with pytest.raises(AuditError), vault.acting_as(COACH, purpose="again"):
            notes.decrypt(blobs[0][1], row="m-0")
        sql(url, "alter table hidden_events rename to vaultkit_audit_events")
        with vault.acting_as(COACH, purpose="again"):
            assert notes.decrypt(blobs[0][1], row="m-0") == "x"
        logged = [(e.purpose, e.row_keys) for e in events(url) if e.action == "decrypt"]
        assert logged == [
            ("review", '["m-0"]'),
            ("review", '["m-1","m-2","m-3","m-4"]'),
            ("again", '["m-0"]'),
        ]
        assert vault.audit_log is not None and vault.audit_log.verify().ok

    def test_close_keeps_the_events_when_the_log_is_down(
        self, setup: tuple[Vault, str, Path]
    ) -> None:
        """close() with the log down raises and stays open; a second close() writes them."""
        vault, url, _ = setup
        blob = vault.encrypt("note", domain="medical")
        with acting_as(COACH, purpose="review"):
            vault.decrypt(blob)
            vault.decrypt(blob)
        sql(url, "alter table vaultkit_audit_events rename to hidden_events")
        with pytest.raises(AuditError):
            vault.close()
        sql(url, "alter table hidden_events rename to vaultkit_audit_events")
        vault.close()
        assert self.counted(url) == 2

    def test_a_crash_loses_only_row_keys_never_the_fact_of_access(self, tmp_path: Path) -> None:
        """A process killed in the middle of a batch leaves the batch's first event: who read
        which column for what purpose, with which DEK."""
        import subprocess
        import sys
        import textwrap

        url = f"sqlite:///{tmp_path / 'app.db'}"
        script = textwrap.dedent(
            f"""
            import os
            from vaultkit import KeyDomain, Principal, Vault, acting_as
            from vaultkit.keys import LocalKeyProvider
            vault = Vault(
                provider=LocalKeyProvider({str(tmp_path / "k.json")!r}, master_key=bytes(32)),
                store={url!r},
                domains=[KeyDomain("medical", restricted=True, audited=True)],
            )
            notes = vault.field("medical", table="members", column="note", row_bound=True)
            blobs = [notes.encrypt("x", row=i) for i in range(50)]
            with acting_as(Principal("coach-17", grants={{"medical"}}), purpose="review"):
                for i, blob in enumerate(blobs):
                    notes.decrypt(blob, row=i)
                os._exit(0)  # a crash: no flush, no close
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        reads = [e for e in events(url) if e.action == "decrypt"]
        assert [
            (e.principal, e.purpose, e.table_name, e.column_name, e.row_keys) for e in reads
        ] == [("coach-17", "review", "members", "note", '["0"]')]


@pytest.mark.postgres
def test_revoked_insert_on_postgres_fails_reads_until_granted_again(
    postgres_engine: sa.Engine, postgres_url: str, postgres_schema: str, tmp_path: Path
) -> None:
    """With INSERT on the events table revoked from the application's role, the flush fails and
    keeps its rows, reads fail; granted again, the rows are written first and the chain holds."""
    import uuid

    role = f"vk_app_{uuid.uuid4().hex[:8]}"
    with postgres_engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f'GRANT ALL ON SCHEMA "{postgres_schema}" TO {role}'))
    app_url = sa.make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
    vault = Vault(
        provider=LocalKeyProvider(tmp_path / "k.json", master_key=MASTER),
        store=app_url,
        domains=DOMAINS,
    )
    try:
        blob = vault.encrypt("note", domain="medical")
        with pytest.raises(AuditError), vault.acting_as(COACH, purpose="review"):
            for _ in range(3):
                assert vault.decrypt(blob) == "note"
            sql(postgres_url, f"REVOKE INSERT ON vaultkit_audit_events FROM {role}")
        with pytest.raises(AuditError), vault.acting_as(COACH, purpose="later"):
            vault.decrypt(blob)
        sql(postgres_url, f"GRANT INSERT ON vaultkit_audit_events TO {role}")
        with vault.acting_as(COACH, purpose="later"):
            assert vault.decrypt(blob) == "note"
        counts = [(e.purpose, e.count) for e in events(postgres_url) if e.action == "decrypt"]
        assert counts == [("review", 1), ("review", 2), ("later", 1)]
        assert vault.audit_log is not None and vault.audit_log.verify().ok
    finally:
        vault.close()
        with postgres_engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


class TestEncryptOnlyWriters:
    """An encrypt-only writer logs its accesses in a chain of its own, signed with its writer key;
    the unit verifies it with the key it pins (issue 13, item 7)."""

    @pytest.fixture
    def services(self, tmp_path: Path) -> Iterator[tuple[Vault, Vault, str]]:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from vaultkit.keys import X25519KeyProvider

        url = f"sqlite:///{tmp_path / 'app.db'}"
        general = LocalKeyProvider(tmp_path / "keyring.json", master_key=MASTER)
        writer_key = Ed25519PrivateKey.generate()
        unit_provider = X25519KeyProvider.generate(
            ["medical"], writers={"claims-backend": writer_key.public_key()}
        )
        claims = Vault(
            provider=general,
            providers={"medical": unit_provider.public_only(signer=writer_key)},
            store=url,
            domains=DOMAINS,
        )
        unit = Vault(
            provider=general, providers={"medical": unit_provider}, store=url, domains=DOMAINS
        )
        yield claims, unit, url
        claims.close()
        unit.close()

    @staticmethod
    def writer_table(unit: Vault) -> str:
        return unit.writer_audit_logs["claims-backend"].events.name

    def test_the_writer_starts_and_both_chains_verify(
        self, services: tuple[Vault, Vault, str]
    ) -> None:
        """A vault whose audited medical domain is encrypt-only starts; its write events and the
        unit's reads are in two chains, and the unit verifies both."""
        claims, unit, _ = services
        with claims.acting_as(CLAIMS, purpose="claim-77"):
            blobs = [claims.encrypt(f"certificate {i}", domain="medical") for i in range(3)]
        claims.flush_audit()
        with unit.acting_as(COACH, purpose="coaching-chat"):
            assert [unit.decrypt(b) for b in blobs] == [f"certificate {i}" for i in range(3)]
        unit.flush_audit()
        assert unit.audit_log is not None and unit.audit_log.verify().ok
        chain = unit.writer_audit_logs["claims-backend"]
        result = chain.verify()
        assert result.ok and result.events == 2
        assert [(e.principal, e.action, e.count) for _, e, _, _ in chain.read()] == [
            ("claims-handler-3", "write", 1),
            ("claims-handler-3", "write", 2),
        ]
        assert claims.audit_log is not None and claims.audit_log.verify().ok
        assert unit.audit_log.events.name == "vaultkit_audit_events" != chain.events.name

    def test_a_database_writer_cannot_edit_or_extend_the_writer_chain(
        self, services: tuple[Vault, Vault, str]
    ) -> None:
        """An edited writer event, or one appended with a made-up signature, fails the unit's
        verification of that chain; the unit's own chain is untouched."""
        claims, unit, url = services
        for i in range(3):
            with claims.acting_as(CLAIMS, purpose=f"claim-{i}"):
                claims.encrypt("certificate", domain="medical")
        table = self.writer_table(unit)
        sql(url, f"update {table} set principal = 'someone-else' where seq = 2")
        result = unit.writer_audit_logs["claims-backend"].verify()
        assert not result.ok and result.first_broken == 2 and "altered" in result.reason
        sql(url, f"update {table} set principal = 'claims-handler-3' where seq = 2")
        last = events_of(url, table)[-1]
        sql(
            url,
            f"insert into {table} (seq, at, principal, purpose, action, domain, table_name,"
            " column_name, row_keys, count, dek_id, prev_mac, mac) values"
            f" ({last.seq + 1}, '2026-01-01 00:00:00', 'x', 'y', 'write', 'medical', null, null,"
            f" '[]', 1, null, '{last.mac}', '{'0' * 128}')",
        )
        forged = unit.writer_audit_logs["claims-backend"].verify()
        assert not forged.ok and forged.first_broken == last.seq + 1
        assert unit.audit_log is not None and unit.audit_log.verify().ok

    def test_a_chain_planted_under_the_writers_name_with_another_key_fails(
        self, services: tuple[Vault, Vault, str]
    ) -> None:
        """Someone with another Ed25519 key who creates the pinned writer's tables and signs
        events there does not pass the unit's verification."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        _claims, unit, url = services
        pinned = unit.provider_for("medical").pinned_writers()["claims-backend"]  # type: ignore[attr-defined]
        engine = sa.create_engine(url)
        try:
            planted = AuditLog.of_writer(engine, pinned, sign=Ed25519PrivateKey.generate().sign)
            planted.append(
                [
                    AuditEvent(
                        "claims-handler-3",
                        "x",
                        "write",
                        "medical",
                        None,
                        None,
                        (),
                        1,
                        None,
                        dt.datetime.now(dt.UTC),
                    )
                ]
            )
        finally:
            engine.dispose()
        result = unit.writer_audit_logs["claims-backend"].verify()
        assert not result.ok and result.first_broken == 1

    def test_the_writer_signer_signs_audit_links_only(
        self, services: tuple[Vault, Vault, str]
    ) -> None:
        """The signing function the provider gives the audit log refuses a key-row message."""
        from vaultkit.errors import KeyProviderError

        claims, _unit, _ = services
        signer = claims.provider_for("medical").audit_signer("medical")  # type: ignore[attr-defined]
        assert signer is not None
        with pytest.raises(KeyProviderError):
            signer[1](b"vaultkit x25519 writer v1" + bytes(40))


def test_the_encrypt_only_example_in_domains_md_runs_as_written(tmp_path: Path) -> None:
    """docs/domains.md's encrypt-only example (unit, claims writer, both chains verified) runs."""
    import re

    text = (Path(__file__).parents[2] / "docs" / "domains.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(
        b for b in blocks if "public_only(signer=writer_key)" in b and "writer_audit_logs" in b
    )
    import subprocess
    import sys

    script = tmp_path / "example.py"
    script.write_text(example)
    env = {**os.environ, MASTER_KEY_ENV: base64.b64encode(MASTER).decode()}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert (tmp_path / "insurer.db").exists()
