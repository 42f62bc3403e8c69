"""Tests for ``vaultkit rekey``: counts, dry run, verify, exit codes, workers, no plaintext shown."""

from __future__ import annotations

import base64
import os
import re
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from vaultkit.cli.main import main
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV

MODEL = textwrap.dedent(
    """
    import sqlalchemy as sa
    from vaultkit.sqla import BlindIndexType, Encrypted

    MEMBERS = sa.Table(
        "cli_members",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
        sa.Column("email_ix", BlindIndexType("email", normalize=str.lower)),
    )
    STRICT = sa.Table(
        "cli_members",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(200), domain="identity")),
    )
    """
)


@pytest.fixture
def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[list[str], str]]:
    """A keyring, a key store, a data database with 250 legacy rows, and a model module."""
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    keyring = tmp_path / "keyring.json"
    LocalKeyProvider(keyring).primary("identity")
    module = f"cli_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    data = (
        request.getfixturevalue("postgres_url")
        if "postgres" in request.keywords
        else f"sqlite:///{tmp_path / 'data.db'}"
    )
    engine = sa.create_engine(data)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "create table cli_members (id integer primary key, email "
                f"{'bytea' if engine.dialect.name == 'postgresql' else 'blob'}, email_ix "
                f"{'bytea' if engine.dialect.name == 'postgresql' else 'blob'})"
            )
        )
        conn.execute(
            sa.text("insert into cli_members (id, email) values (:id, :email)"),
            [{"id": i, "email": f"Secret{i}@X.be".encode()} for i in range(250)],
        )
    engine.dispose()
    common = ["--store", f"sqlite:///{tmp_path / 'keys.db'}", "--keyring", str(keyring)]
    yield [*common, "--data", data, "--no-progress"], module


def test_dry_run_then_run_then_verify(
    setup: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Dry run counts and writes nothing; the run re-encrypts; --verify reports DEKs and versions."""
    options, module = setup
    assert main(["rekey", *options, "--model", f"{module}:MEMBERS", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would re-encrypt 250 values" in out and "legacy plaintext 250" in out
    assert main(["rekey", *options, "--model", f"{module}:MEMBERS", "--batch-size", "40"]) == 0
    out = capsys.readouterr().out
    assert "re-encrypted 250 values" in out and "job finished" in out
    code = main(["rekey", *options, "--model", f"{module}:MEMBERS", "--job", "second", "--verify"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "re-encrypted 0 values" in out
    assert "verify: 250 values" in out and "(active): 250" in out and "wire format v1: 250" in out
    assert "clean" in out and "Secret" not in out


def test_plaintext_in_a_strict_column_exits_7(
    setup: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Values the engine must leave (plaintext in a strict column) give exit code 7, not 0."""
    options, module = setup
    assert main(["rekey", *options, "--model", f"{module}:STRICT", "--verify"]) == 7
    captured = capsys.readouterr()
    assert "not decryptable 250" in captured.out and "NOT clean" in captured.out
    assert "Secret" not in captured.out + captured.err


def test_bad_model_is_a_configuration_error(
    setup: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    options, module = setup
    assert main(["rekey", *options, "--model", "nonexistent_module_xyz:T"]) == 3
    assert main(["rekey", *options, "--model", f"{module}"]) == 3
    assert main(["rekey", *options, "--model", f"{module}:sa"]) == 3
    err = capsys.readouterr().err
    assert "MODULE:NAME" in err and "neither a mapped class nor a Table" in err


@pytest.mark.postgres
def test_two_worker_processes(
    setup: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--workers 2 starts two processes that share the job; the summary adds up their counts."""
    options, module = setup
    args = ["rekey", *options, "--model", f"{module}:MEMBERS", "--workers", "2"]
    assert main([*args, "--range-size", "20", "--batch-size", "10", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "2 worker(s)" in out and "re-encrypted 250 values" in out and "clean" in out


def test_progress_line_shows_rate_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    """The progress line (shown on a terminal) has a bar, rows, rows/s and the time left."""
    from vaultkit.cli.rekey import _Progress

    bar = _Progress(1000, show=True)
    bar.started -= 1.0  # one second in
    bar.add(250)
    bar.close()
    err = capsys.readouterr().err
    assert "25.0%" in err and "250/1,000 rows" in err and "rows/s" in err
    assert re.search(r" 0:0[34] left", err)  # 750 rows left at about 250 rows/s


AUDITED_MODEL = textwrap.dedent(
    """
    import sqlalchemy as sa
    from vaultkit.sqla import BlindIndexType, Encrypted

    NOTES = sa.Table(
        "cli_notes",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
        sa.Column("email_ix", BlindIndexType("email", normalize=str.lower)),
        sa.Column("note", Encrypted(sa.Text, domain="medical")),
    )
    """
)
AUDITED_CONFIG = """
key_store = "{url}"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "{keyring}"

[domains.identity]

[domains.medical]
restricted = true
audited = true
"""


class Audited:
    """An insurer's set-up as the runbook has it: a key store with the audit log, the data (on a
    server, in the same schema or database; on SQLite, two files); a keyring; a vaultkit.toml
    declaring medical restricted and audited; 300 rows whose e-mail is legacy plaintext and whose
    medical note is under a retired DEK."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        from vaultkit import Principal, Vault

        self.url = url
        self.store = f"sqlite:///{tmp_path / 'keys.db'}" if url.startswith("sqlite") else url
        self.keyring = tmp_path / "keyring.json"
        provider = LocalKeyProvider(self.keyring, create_keys=True)
        provider.primary("identity")
        provider.primary("medical")
        self.config = tmp_path / "vaultkit.toml"
        self.config.write_text(AUDITED_CONFIG.format(url=self.store, keyring=self.keyring))
        self.module = f"cli_audited_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{self.module}.py").write_text(AUDITED_MODEL)
        engine = sa.create_engine(url)
        binary = "bytea" if engine.dialect.name == "postgresql" else "blob"
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"create table cli_notes (id integer primary key, email {binary}, "
                    f"email_ix {binary}, note {binary})"
                )
            )
        import vaultkit.sqla

        with Vault.from_config(self.config) as app:
            vaultkit.sqla.configure(app)
            try:
                notes = sa.Table(
                    "cli_notes",
                    sa.MetaData(),
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("email", sa.LargeBinary),
                    sa.Column("note", vaultkit.sqla.Encrypted(sa.Text, domain="medical")),
                )
                coach = Principal("coach", grants={"medical"})
                with app.acting_as(coach, purpose="load"), engine.begin() as conn:
                    conn.execute(
                        notes.insert(),
                        [
                            {"id": i, "email": f"Secret{i}@X.be".encode(), "note": f"Diag {i}"}
                            for i in range(300)
                        ],
                    )
            finally:
                vaultkit.sqla.configure(None)
            for record in app.store.records(domain="medical"):
                if record.purpose == "data":
                    app.retire_dek(record.dek_id)
        engine.dispose()
        self.data = ["--data", url, "--model", f"{self.module}:NOTES", "--no-progress"]
        self.runbook = ["rekey", "--store", self.store, "--keyring", str(self.keyring), *self.data]
        self.configured = ["rekey", "--config", str(self.config), *self.data]

    def dump(self) -> list[dict[str, list[str]]]:
        """Every table of the key store's and the data's databases, row by row."""
        from tests.integration._dbdump import dump_database

        return [dump_database(self.store), dump_database(self.url)]

    def events(self) -> list[tuple[str, str | None, str, str, int]]:
        """(principal, purpose, action, domain, count) of every audit event, in order."""
        engine = sa.create_engine(self.store)
        try:
            with engine.connect() as conn:
                return [
                    tuple(r)  # type: ignore[misc]
                    for r in conn.execute(
                        sa.text(
                            "select principal, purpose, action, domain, count "
                            "from vaultkit_audit_events order by seq"
                        )
                    )
                ]
        finally:
            engine.dispose()


@pytest.fixture
def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Audited:
    """The runbook's set-up on SQLite, PostgreSQL or MariaDB."""
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    monkeypatch.chdir(tmp_path)
    return Audited(tmp_path, database_url)


class TestDryRunCommand:
    """``vaultkit rekey --dry-run``: "counts only, writes nothing", as the runbook says."""

    def test_every_table_is_untouched(
        self, audited: Audited, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The dry run with --config counts 300 plaintext and 300 retired values and leaves the key
        store, the audit log and the data byte for byte as they were."""
        before = audited.dump()
        assert main([*audited.configured, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "would re-encrypt 600 values" in out
        assert "legacy plaintext 300, retired DEK 300" in out
        assert audited.dump() == before


class TestAuditedDomains:
    """Re-keying an audited domain is audited, or refused: never silent."""

    def test_the_keyring_command_is_refused_for_an_audited_key_store(
        self, audited: Audited, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`--store --keyring` cannot know which domains are audited: with an audit log in the key
        store it exits 3 naming --config, and writes nothing."""
        before = audited.dump()
        assert main([*audited.runbook, "--verify"]) == 3
        err = capsys.readouterr().err
        assert "--config" in err and "audited" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert audited.dump() == before

    def test_the_config_command_audits_every_value_read_and_written(
        self, audited: Audited, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With --config the 300 medical values re-encrypted give decrypt and write events for 300
        values under the principal vaultkit-rekey, and --verify's reads are logged too."""
        from vaultkit import Vault

        already = len(audited.events())
        assert main([*audited.configured, "--batch-size", "64", "--verify"]) == 0
        out = capsys.readouterr().out
        assert "re-encrypted 600 values" in out and "clean" in out
        new = audited.events()[already:]
        by: dict[tuple[str, str | None, str, str], int] = {}
        for principal, purpose, action, domain, count in new:
            by[(principal, purpose, action, domain)] = (
                by.get((principal, purpose, action, domain), 0) + count
            )
        assert by == {
            ("vaultkit-rekey", "rekey cli_notes:rekey", "decrypt", "medical"): 300,
            ("vaultkit-rekey", "rekey cli_notes:rekey", "write", "medical"): 300,
            ("vaultkit-verify", "verify cli_notes", "decrypt", "medical"): 300,
        }
        with Vault.from_config(audited.config) as vault:
            assert vault.audit_log is not None and vault.audit_log.verify().ok


class TestExitCodes:
    """Each exit code docs/operations.md lists for `vaultkit rekey`, driven for real (0 and 7 above;
    8, a conflict outlasting the retries, in tests/integration/test_rekey_conflicts.py)."""

    def test_2_usage(self, setup: tuple[list[str], str]) -> None:
        """A missing --model is argparse's usage error, exit code 2."""
        options, _module = setup
        with pytest.raises(SystemExit) as stopped:
            main(["rekey", *options])
        assert stopped.value.code == 2

    def test_3_configuration(
        self, setup: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A column that is not encrypted is a configuration error, exit code 3, in one line."""
        options, module = setup
        assert main(["rekey", *options, "--model", f"{module}:MEMBERS", "--column", "id"]) == 3
        err = capsys.readouterr().err
        assert err.startswith("vaultkit: ConfigurationError: ") and err.count("\n") == 1

    def test_4_key_provider(
        self,
        setup: tuple[list[str], str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Another master key than the keyring's is a key-provider error, exit code 4."""
        options, module = setup
        monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
        assert main(["rekey", *options, "--model", f"{module}:MEMBERS"]) == 4
        assert "KeyProviderError" in capsys.readouterr().err

    def test_5_key_store(
        self, setup: tuple[list[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A key store that cannot be opened is a key-store error, exit code 5."""
        options, module = setup
        at = options.index("--store") + 1
        broken = [*options[:at], f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"]
        broken += options[at + 1 :]
        assert main(["rekey", *broken, "--model", f"{module}:MEMBERS"]) == 5
        assert "KeyStoreError" in capsys.readouterr().err

    @pytest.mark.slow
    def test_130_interrupted_then_resumed(
        self, setup: tuple[list[str], str], tmp_path: Path
    ) -> None:
        """SIGINT during a run exits 130 with one line; the same command then resumes and
        finishes (exit code 0)."""
        import signal
        import subprocess
        import sys

        options, module = setup
        data = options[options.index("--data") + 1]
        engine = sa.create_engine(data)
        with engine.begin() as conn:
            conn.execute(
                sa.text("insert into cli_members (id, email) values (:id, :email)"),
                [{"id": i, "email": f"More{i}@X.be".encode()} for i in range(250, 5_000)],
            )
        engine.dispose()
        command = [
            sys.executable,
            "-m",
            "vaultkit",
            "rekey",
            *options,
            "--model",
            f"{module}:MEMBERS",
            "--batch-size",
            "20",
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
        run = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        checkpoints = sa.create_engine(data)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # wait for the first committed batches
                with checkpoints.connect() as conn:
                    if (
                        sa.inspect(conn).has_table("vaultkit_rekey_checkpoints")
                        and conn.execute(
                            sa.text("select count(*) from vaultkit_rekey_checkpoints")
                        ).scalar_one()
                    ):
                        break
                time.sleep(0.05)
            run.send_signal(signal.SIGINT)
            _, err = run.communicate(timeout=60)
        finally:
            checkpoints.dispose()
            if run.poll() is None:
                run.kill()
        assert run.returncode == 130, err
        assert err.strip() == "vaultkit: interrupted"
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "job finished" in again.stdout


def test_a_downgraded_value_is_reported_as_tampered(
    setup: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A ciphertext a database writer replaced by plaintext after the first run is not
    re-encrypted by the next run; both the run and --verify report it as tampered (exit 7),
    without showing the value."""
    options, module = setup
    assert main(["rekey", *options, "--model", f"{module}:MEMBERS"]) == 0
    data = options[options.index("--data") + 1]
    engine = sa.create_engine(data)
    with engine.begin() as conn:
        conn.execute(
            sa.text("update cli_members set email = :v where id = 7"), {"v": b"Forged7@X.be"}
        )
    engine.dispose()
    capsys.readouterr()
    code = main(["rekey", *options, "--model", f"{module}:MEMBERS", "--job", "again", "--verify"])
    out = capsys.readouterr().out
    assert code == 7, out
    assert "re-encrypted 0 values" in out
    assert out.count("TAMPERED 1") == 2 and "NOT clean" in out
    assert "Forged" not in out
