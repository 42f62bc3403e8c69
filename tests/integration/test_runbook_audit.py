"""docs/operations.md's audit section, run as written (the checkpoint directory /srv/... moved to
a temporary one): every command exits 0 against an application whose audit log is kept apart
(``audit = URL``), with an encrypt-only writer's chain next to it."""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration._dbdump import dump_database
from tests.integration._runbook import commands, run
from vaultkit import Principal, Vault
from vaultkit.audit import AuditEvent, AuditLog
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV

SECTIONS = ("## The audit log: verify and checkpoint",)  # the sh blocks this module runs
CONFIG = """
key_store = "{store}"
audit = "{audit}"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "keyring.json"

[domains.identity]

[domains.medical]
restricted = true
audited = true
"""


def test_the_audit_section_runs_as_written(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `vaultkit audit` command of the runbook exits 0, and together they write nothing to
    the key store or the audit database."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    audit = database_url
    if audit.startswith("sqlite"):
        audit = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("KEY_STORE_URL", store)
    monkeypatch.setenv("AUDIT_URL", audit)
    keyring = LocalKeyProvider("keyring.json", create_keys=True)
    keyring.primary("identity")
    keyring.primary("medical")
    (tmp_path / "vaultkit.toml").write_text(CONFIG.format(store=store, audit=audit))
    with Vault.from_config("vaultkit.toml") as app:
        blob = app.encrypt("note", domain="medical")
        for i in range(3):
            with app.acting_as(Principal("coach-17", grants={"medical"}), purpose=f"p{i}"):
                app.decrypt(blob)
        assert app.audit_log is not None
        writer = Ed25519PrivateKey.generate()  # the claims back end's chain, in the audit DB
        chain = AuditLog.of_writer(app.audit_log.engine, writer.public_key(), sign=writer.sign)
        chain.append(
            [
                AuditEvent(
                    "claims-handler-3", "claim-1", "write", "medical", None, None, (), 1, None,
                    dt.datetime.now(dt.UTC),
                )
            ]
        )  # fmt: skip
    (tmp_path / "claims-backend.pub.pem").write_bytes(
        writer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    checkpoints = tmp_path / "audit-checkpoints"
    checkpoints.mkdir()
    before = dump_database(store), dump_database(audit)
    ran = 0
    for line in commands(SECTIONS[0]):
        code = run(line, {"/srv/audit-checkpoints": str(checkpoints)})
        if code is not None:
            assert code == 0, line
            ran += 1
    assert ran == 6
    assert (checkpoints / "latest.json").exists() and (checkpoints / "new.json").exists()
    assert (dump_database(store), dump_database(audit)) == before
