"""Tests for ``vaultkit rekey``: counts, dry run, verify, exit codes, workers, no plaintext shown."""

from __future__ import annotations

import base64
import os
import re
import textwrap
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
