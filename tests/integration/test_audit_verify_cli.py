"""``vaultkit audit verify`` / ``head`` check the log the application's vault writes, and write
nothing (issue 13, item 1), on SQLite, PostgreSQL and MariaDB.

The application keeps its audit log in a database of its own (``Vault(audit=URL)``): the key
store is an SQLite file, the audit log on the backend under test.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration._dbdump import dump_database
from vaultkit import KeyDomain, Principal, Vault
from vaultkit.cli.main import main
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV

MASTER = os.urandom(32)
MEDICAL_MASTER = os.urandom(32)
COACH = Principal("coach-17", grants={"medical"})
DOMAINS = [KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)]

CONFIG = """
key_store = "{store}"
audit = "{audit}"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "{keyring}"

[providers.medical-unit]
type = "local"
path = "{medical_keyring}"
master_key_env = "MEDICAL_MASTER_KEY"

[domains.identity]

[domains.medical]
provider = "medical-unit"
restricted = true
audited = true
"""


class App:
    """The application: identity under the keyring, medical under the unit's own provider (as
    an HSM, transit or KMS key would be: not reachable through --keyring), audit=URL."""

    def __init__(self, tmp_path: Path, audit_url: str, *, medical_apart: bool = True) -> None:
        self.dir = tmp_path
        self.store = f"sqlite:///{tmp_path / 'keys.db'}"
        self.audit = audit_url
        self.keyring = tmp_path / "keyring.json"
        self.medical_keyring = tmp_path / "medical-keyring.json"
        self.config = tmp_path / "vaultkit.toml"
        self.config.write_text(
            CONFIG.format(
                store=self.store,
                audit=audit_url,
                keyring=self.keyring,
                medical_keyring=self.medical_keyring,
            )
        )
        medical = LocalKeyProvider(self.medical_keyring, master_key=MEDICAL_MASTER)
        with Vault(
            provider=LocalKeyProvider(self.keyring, master_key=MASTER),
            providers={"medical": medical} if medical_apart else None,
            store=self.store,
            domains=DOMAINS,
            audit=audit_url,
            audit_batch_size=1,
        ) as vault:
            blob = vault.encrypt("note", domain="medical")
            for i in range(5):
                with vault.acting_as(COACH, purpose=f"p{i}"):
                    vault.decrypt(blob)

    def dump(self) -> tuple[object, ...]:
        """Every table of both databases, and every file of the directory, byte for byte."""
        files = {p.name: p.read_bytes() for p in sorted(self.dir.iterdir()) if p.is_file()}
        return dump_database(self.store), dump_database(self.audit), files

    def sql(self, statement: str) -> None:
        engine = sa.create_engine(self.audit)
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
        engine.dispose()


@pytest.fixture
def audit_url(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
    monkeypatch.setenv("MEDICAL_MASTER_KEY", base64.b64encode(MEDICAL_MASTER).decode())
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return database_url


@pytest.fixture
def app(tmp_path: Path, audit_url: str) -> App:
    return App(tmp_path, audit_url)


def keyring_args(app: App, *extra: str) -> list[str]:
    return ["--store", app.store, "--keyring", str(app.keyring), "--domain", "medical", *extra]


def test_the_key_store_alone_is_no_audit_log_and_says_so(
    tmp_path: Path, audit_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the log in its own database, the runbook's --store --keyring command exits 9 "no
    audit log here" (before: "intact: 0 events", exit 0, and audit tables created in the key
    store) even after events were deleted from the real log; --audit URL catches the deletion."""
    app = App(tmp_path, audit_url, medical_apart=False)
    app.sql("delete from vaultkit_audit_events where seq = 3")
    before = app.dump()
    assert main(["audit", "verify", *keyring_args(app)]) == 9
    captured = capsys.readouterr()
    assert "no audit log here" in captured.err and "--audit" in captured.err
    assert "intact" not in captured.out
    assert app.dump() == before
    assert main(["audit", "verify", *keyring_args(app, "--audit", app.audit)]) == 7
    assert "BROKEN at event 3" in capsys.readouterr().out


def test_audit_url_and_config_verify_the_log_the_vault_writes(
    app: App, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--config (audit URL, audit domain and the medical provider from the application's
    configuration) verifies the real log, and catches the deleted event; so does --audit with
    a keyring that holds the audit domain's key."""
    assert main(["audit", "verify", "--config", str(app.config)]) == 0
    assert "audit log intact: 6 events" in capsys.readouterr().out
    assert main(["audit", "head", "--config", str(app.config), "--out", str(tmp_path / "cp")]) == 0
    app.sql("delete from vaultkit_audit_events where seq = 3")
    capsys.readouterr()
    assert main(["audit", "verify", "--config", str(app.config)]) == 7
    assert "BROKEN at event 3" in capsys.readouterr().out
    # The keyring does not hold the medical KEK: the audit key cannot be read through it.
    assert main(["audit", "verify", *keyring_args(app, "--audit", app.audit)]) == 4
    assert "Traceback" not in capsys.readouterr().err


def test_verify_and_head_write_nothing(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    """verify and head (to stdout), with --config, --audit and --store, found or not, leave every
    table of the key store and the audit database and every file byte for byte as they were."""
    before = app.dump()
    runs = [
        ["audit", "verify", "--config", str(app.config)],
        ["audit", "head", "--config", str(app.config)],
        ["audit", "verify", *keyring_args(app)],
        ["audit", "head", *keyring_args(app)],
        ["audit", "verify", "--config", str(app.config), "--domain", "identity"],
    ]
    codes = [main(run) for run in runs]
    assert codes == [0, 0, 9, 9, 9]
    assert app.dump() == before


def test_no_key_store_and_no_audit_tables_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointed at a database file that does not exist, verify exits 9 and creates no file."""
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(MASTER).decode())
    keyring = tmp_path / "keyring.json"
    LocalKeyProvider(keyring, master_key=MASTER).primary("medical")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["--store", f"sqlite:///{tmp_path / 'none.db'}", "--keyring", str(keyring)]
    assert main(["audit", "verify", *args, "--domain", "medical"]) == 9
    assert main(["audit", "head", *args, "--domain", "medical"]) == 9
    assert "no audit log here" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_log_of_the_first_layout_verifies_read_only_and_says_what_it_cannot_check(
    app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head without its own MAC (the first layout) is verified as it is, not upgraded: exit 0,
    a note that a rewound head cannot be told, and the tables unchanged."""
    app.sql("alter table vaultkit_audit_head drop column auth")
    app.sql("alter table vaultkit_audit_head drop column log_id")
    before = app.dump()
    assert main(["audit", "verify", "--config", str(app.config)]) == 0
    out = capsys.readouterr().out
    assert "audit log intact: 6 events" in out and "note: the head row is of the first" in out
    assert app.dump() == before
    assert main(["audit", "head", "--config", str(app.config)]) == 1  # upgrade first
    assert "first layout" in capsys.readouterr().err
    assert app.dump() == before


def test_a_writer_chain_is_verified_with_its_pinned_key(
    app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    """--writer NAME=PEM verifies an encrypt-only writer's own chain: exit 0 intact, 7 after an
    edit, 9 for a writer that has no chain here."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vaultkit.audit import AuditEvent, AuditLog

    def pem(key: Ed25519PrivateKey, name: str) -> str:
        path = app.dir / f"{name}.pub.pem"
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return f"{name}={path}"

    writer, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    engine = sa.create_engine(app.audit)
    try:
        chain = AuditLog.of_writer(engine, writer.public_key(), sign=writer.sign)
        event = AuditEvent(
            "claims-handler-3", "c", "write", "medical", None, None, (), 1, None,
            dt.datetime.now(dt.UTC),
        )  # fmt: skip
        chain.append([event, event])
    finally:
        engine.dispose()
    verify = ["audit", "verify", "--config", str(app.config)]
    assert main([*verify, "--writer", pem(writer, "claims")]) == 0
    assert "writer claims: audit chain intact: 2 events" in capsys.readouterr().out
    assert main([*verify, "--writer", pem(stranger, "other")]) == 9
    assert "no audit log here for writer other" in capsys.readouterr().err
    app.sql(f"update {chain.events.name} set purpose = 'edited' where seq = 2")
    assert main([*verify, "--writer", pem(writer, "claims")]) == 7
    assert "writer claims: audit chain BROKEN at event 2" in capsys.readouterr().out
