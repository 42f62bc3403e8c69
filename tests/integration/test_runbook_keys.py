"""docs/operations.md's key commands, run as written: rotating the medical KEK (list, rotate-kek,
list) and retiring, re-keying and destroying a medical DEK, on PostgreSQL and MariaDB; and every
``sh`` block of the runbook is run by one of the runbook tests."""

from __future__ import annotations

import base64
import os
import pty
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import vaultkit.sqla
from tests.integration import test_runbook_audit, test_runbook_rekey
from tests.integration._runbook import app_package, commands, run, sh_blocks
from vaultkit import Principal, SealedValue, Vault
from vaultkit.cli.main import main
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV
from vaultkit.store import DekState

SECTIONS = ("## Rotating a KEK", "## Retiring and destroying a DEK")
COACH = Principal("coach-17", grants={"medical"})
ROWS = 50
CONFIG = """
key_store = "{url}"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "keyring.json"

[domains.identity]

[domains.medical]
restricted = true
audited = true
"""
MODELS = """
import sqlalchemy as sa
from vaultkit.sqla import Encrypted

Member = sa.Table(
    "members",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", Encrypted(sa.String(320), domain="identity")),
    sa.Column("health_note", Encrypted(sa.Text, domain="medical")),
)
"""
BACKENDS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


def test_every_sh_block_of_the_runbook_is_run_by_a_test() -> None:
    """Each ``sh`` block of docs/operations.md is under a heading one of the runbook tests runs,
    and each such heading holds one block."""
    run_here = {
        *SECTIONS,
        *test_runbook_rekey.SECTIONS,
        *test_runbook_audit.SECTIONS,
    }
    headings = [f"## {heading}" for heading, _lines in sh_blocks()]
    assert len(headings) == len(set(headings))
    assert {h for h in headings if not any(h.startswith(s) for s in run_here)} == set()
    assert all(any(h.startswith(s) for h in headings) for s in run_here)


@pytest.fixture
def insurer(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, sa.Table]:
    """A keyring (identity, medical), the key store and the members table on one server database
    (``$KEY_STORE_URL`` and ``$APP_DB_URL``), ROWS members with a medical note, the application's
    vaultkit.toml and its model module ``myapp.models``; the current directory is ``tmp_path``."""
    url = str(request.getfixturevalue(f"{request.param}_url"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("KEY_STORE_URL", url)
    monkeypatch.setenv("APP_DB_URL", url)
    provider = LocalKeyProvider("keyring.json", create_keys=True)
    provider.primary("identity")
    provider.primary("medical")
    (tmp_path / "vaultkit.toml").write_text(CONFIG.format(url=url))
    app_package(tmp_path, MODELS, monkeypatch)  # the runbook's myapp.models:Member
    namespace: dict[str, object] = {}
    exec(MODELS, namespace)  # noqa: S102 - the same table, for the test's own reads and writes
    members = namespace["Member"]
    assert isinstance(members, sa.Table)
    engine = sa.create_engine(url)
    members.metadata.create_all(engine)
    with Vault.from_config("vaultkit.toml") as app:
        vaultkit.sqla.configure(app)
        try:
            with app.acting_as(COACH, purpose="load"), engine.begin() as conn:
                conn.execute(
                    members.insert(),
                    [
                        {"id": i, "email": f"m{i}@example.be", "health_note": f"note {i}"}
                        for i in range(ROWS)
                    ],
                )
        finally:
            vaultkit.sqla.configure(None)
    engine.dispose()
    return url, members


@pytest.mark.parametrize("insurer", BACKENDS, indirect=True)
def test_the_kek_rotation_runs_as_written(
    insurer: tuple[str, sa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    """list, rotate-kek --domain medical, list: each exits 0, and the last list shows every
    medical key row under KEK v2, identity's still under v1."""
    lines = commands(SECTIONS[0])
    assert [line.split()[:3] for line in lines[1:]] == [
        ["vaultkit", "keys", "list"],
        ["vaultkit", "keys", "rotate-kek"],
        ["vaultkit", "keys", "list"],
    ]
    for line in lines:
        assert run(line) in (0, None), line
    out = capsys.readouterr().out
    assert "domain medical: KEK v2 is primary" in out
    last = out[out.rindex("domain identity: KEK versions") :]
    identity, medical = last.split("domain medical: ")
    assert "key rows wrapped under v1:" in identity
    assert "KEK versions v1, v2 (primary v2)" in medical
    assert "key rows wrapped under v2:" in medical and "v1:" not in medical.split("wrapped")[1]
    # The section's inline commands: finishing a rotation, and rotating from the configuration.
    store = ["--store", os.environ["KEY_STORE_URL"], "--keyring", "keyring.json"]
    assert main(["keys", "rotate-kek", *store, "--domain", "medical", "--resume"]) == 0
    assert "KEK v2 is primary; 0 key rows rewrapped" in capsys.readouterr().out
    assert main(["keys", "rotate-kek", "--config", "vaultkit.toml", "--domain", "medical"]) == 0
    assert "KEK v3 is primary" in capsys.readouterr().out


@pytest.mark.parametrize("insurer", BACKENDS, indirect=True)
def test_retiring_and_destroying_a_dek_runs_as_written(
    insurer: tuple[str, sa.Table],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """retire-dek, rekey --config --verify, destroy (confirmed at a terminal by typing the DEK
    id): each exits 0; the medical DEK is destroyed, every note still reads under its new DEK,
    and the re-key's reads and writes of the notes are audited."""
    url, members = insurer
    with Vault.from_config("vaultkit.toml") as app:
        (dek,) = [
            r.dek_id.hex()
            for r in app.store.records(domain="medical")
            if r.purpose == "data" and r.state is DekState.ACTIVE
        ]
    lines = commands(SECTIONS[1])
    assert [line.split()[:3] for line in lines] == [
        ["vaultkit", "keys", "retire-dek"],
        ["vaultkit", "rekey", "--config"],
        ["vaultkit", "keys", "destroy"],
    ]
    retire, rekey, destroy = lines
    assert run(retire, {"3f2a...": dek}) == 0
    assert run(rekey) == 0
    out = capsys.readouterr().out
    assert f"re-encrypted {ROWS} values" in out and "clean" in out
    # destroy asks for the DEK id at a terminal: an operator types it.
    operator, terminal = pty.openpty()
    os.write(operator, f"{dek}\n".encode())
    with open(terminal, encoding="utf-8", closefd=True) as tty:
        monkeypatch.setattr(sys, "stdin", tty)
        assert run(destroy, {"3f2a...": dek}) == 0
    os.close(operator)
    out = capsys.readouterr().out
    assert "members.health_note: 0 values" in out and f"destroyed DEK {dek}" in out
    with Vault.from_config("vaultkit.toml") as app:
        states = {r.dek_id.hex(): r.state for r in app.store.records(domain="medical")}
        assert states[dek] is DekState.DESTROYED
        vaultkit.sqla.configure(app)
        engine = sa.create_engine(url)
        try:
            with app.acting_as(COACH, purpose="check"), engine.connect() as conn:
                notes = conn.execute(sa.select(members.c.health_note)).scalars().all()
            assert sorted(notes) == sorted(f"note {i}" for i in range(ROWS))
            assert not any(isinstance(n, SealedValue) for n in notes)
            with engine.connect() as conn:
                counts = dict(
                    conn.execute(
                        sa.text(
                            "select action, sum(count) from vaultkit_audit_events "
                            "where principal = 'vaultkit-rekey' group by action"
                        )
                    ).all()
                )
        finally:
            vaultkit.sqla.configure(None)
            engine.dispose()
    assert {k: int(v) for k, v in counts.items()} == {"decrypt": ROWS, "write": ROWS}
