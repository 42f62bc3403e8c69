"""docs/operations.md's `vaultkit rekey` commands, run as written: the re-key section's block (a
dry run that writes nothing, then two workers with --verify) against an insurer's set-up with the
medical domain restricted and audited."""

from __future__ import annotations

import base64
import os
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration._dbdump import dump_database
from tests.integration._runbook import app_package, commands, run
from vaultkit import Principal, Vault
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV

SECTIONS = ("## Re-encrypting values",)  # the sh blocks this module runs
MODELS = textwrap.dedent(
    """
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from vaultkit.sqla import BlindIndex, Encrypted


    class Base(DeclarativeBase):
        pass


    class Member(Base):
        __tablename__ = "members"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        email = mapped_column(Encrypted(sa.String(320), domain="identity", migrating=True))
        email_index = BlindIndex("email", normalize=str.lower)
        health_note = mapped_column(Encrypted(sa.Text, domain="medical"))
    """
)
CONFIG = """
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


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_the_rekey_section_runs_as_written(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The dry run leaves every table as it was; the run with two workers and --verify exits 0,
    re-encrypts 300 plaintext e-mails and 300 medical notes under a retired DEK, and the audit
    log holds a decrypt and a write for each medical value."""
    url = str(request.getfixturevalue(f"{backend}_url"))
    monkeypatch.chdir(tmp_path)
    master = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(MASTER_KEY_ENV, master)
    monkeypatch.setenv("APP_DB_URL", url)
    app_package(tmp_path, MODELS, monkeypatch)
    keyring = tmp_path / "keyring.json"
    provider = LocalKeyProvider(keyring, create_keys=True)
    for domain in ("identity", "medical"):
        provider.primary(domain)
    (tmp_path / "vaultkit.toml").write_text(CONFIG.format(url=url, keyring=keyring))
    import vaultkit.sqla

    engine = sa.create_engine(url)
    binary = "bytea" if engine.dialect.name == "postgresql" else "blob"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"create table members (id integer primary key, email {binary}, "
                f"email_index {binary}, health_note {binary})"
            )
        )
    notes = sa.Table(
        "members",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.LargeBinary),
        sa.Column("health_note", vaultkit.sqla.Encrypted(sa.Text, domain="medical")),
    )
    with Vault.from_config(tmp_path / "vaultkit.toml") as app:
        vaultkit.sqla.configure(app)
        try:
            with app.acting_as(Principal("coach", grants={"medical"}), purpose="load"):
                with engine.begin() as conn:
                    conn.execute(
                        notes.insert(),
                        [
                            {"id": i, "email": f"M{i}@X.be".encode(), "health_note": f"n{i}"}
                            for i in range(300)
                        ],
                    )
        finally:
            vaultkit.sqla.configure(None)
        for record in app.store.records(domain="medical"):
            if record.purpose == "data":
                app.retire_dek(record.dek_id)
    engine.dispose()

    lines = commands(SECTIONS[0])
    assert lines[0].startswith("export VAULTKIT_MASTER_KEY=")
    dry_run, rekey = lines[1:]
    assert dry_run.endswith("--dry-run") and "--verify" in rekey
    before = dump_database(url)
    assert run(dry_run) == 0
    assert "would re-encrypt 600 values" in capsys.readouterr().out
    assert dump_database(url) == before
    assert run(rekey) == 0
    out = capsys.readouterr().out
    assert "2 worker(s)" in out and "re-encrypted 600 values" in out and "clean" in out
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.text(
                    "select action, sum(count) from vaultkit_audit_events "
                    "where principal = 'vaultkit-rekey' group by action"
                )
            ).all()
        )
    engine.dispose()
    assert {k: int(v) for k, v in counts.items()} == {"decrypt": 300, "write": 300}
