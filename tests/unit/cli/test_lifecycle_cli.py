"""``vaultkit retention enforce|report`` and ``vaultkit subject erase|end|allow``: through main()
and as a subprocess, on a real SQLite key store opened from a vaultkit.toml; the subject never
appears in the output."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from vaultkit import Vault
from vaultkit.cli.main import main
from vaultkit.errors import SubjectErasedError, ValueErasedError
from vaultkit.keys import LocalKeyProvider
from vaultkit.keys.local import MASTER_KEY_ENV, MASTER_PASSPHRASE_ENV
from vaultkit.store import DekState

GROUND = "art. 60 Insurance Act"
SUBJECT = "jan.peeters@example.be"
CONFIG = """\
key_store = "sqlite:///keys.db"

[providers.keyring]
type = "local"
path = "keyring.json"

[domains.identity]
provider = "keyring"
audited = true

[domains.medical]
provider = "keyring"
dek_scope = "subject"

[domains.claims]
provider = "keyring"
dek_scope = "subject"
retention = { duration = "P5Y", after = "relationship_end", kind = "no_less_than", ground = "art. 60 Insurance Act" }

[domains.chat]
provider = "keyring"
dek_scope = "bucket"
bucket = "PT1H"
retention = { duration = "PT72H", after = "capture" }
"""
NOTE = {"table": "notes", "column": "body", "row": 1}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A keyring, a vaultkit.toml with subject, bucket and process domains, in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MASTER_PASSPHRASE_ENV, raising=False)
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    provider = LocalKeyProvider("keyring.json", create_keys=True)
    for domain in ("identity", "medical", "claims", "chat"):
        provider.primary(domain)
    (tmp_path / "vaultkit.toml").write_text(CONFIG)
    yield tmp_path


def vault() -> Vault:
    return Vault.from_config("vaultkit.toml")


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([*args, "--config", "vaultkit.toml"])
    out, err = capsys.readouterr()
    return code, out, err


def test_subject_erase_prints_a_receipt_without_the_subject(
    app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with vault() as v:
        blob = v.encrypt("asthma", domain="medical", subject=SUBJECT, context=NOTE)
        claim = v.encrypt("claim 1", domain="claims", subject=SUBJECT, context=NOTE)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{SUBJECT}\n".encode())))
    code, out, err = run(
        [
            "subject",
            "erase",
            "--subject-file",
            "-",
            "--reason",
            "art17",
            "--request-id",
            "DSR-2026-1",
            "--json",
        ],
        capsys,
    )
    assert code == 7, err  # claims is retained: partially granted
    receipt = json.loads(out)
    assert receipt["status"] == "partially_granted"
    domains = {d["domain"]: d for d in receipt["domains"]}
    assert domains["medical"]["keys_destroyed"] == 1
    assert domains["claims"] == {
        "domain": "claims",
        "status": "retained",
        "keys_destroyed": 0,
        "keys_already_destroyed": 0,
        "ground": GROUND,
        "retained_until": None,
    }
    assert SUBJECT not in out + err and "jan" not in (out + err).lower()
    with vault() as v:
        with pytest.raises(SubjectErasedError):
            v.decrypt(blob, context=NOTE)
        assert v.decrypt(claim, context=NOTE) == "claim 1"
        with pytest.raises(SubjectErasedError):
            v.encrypt("again", domain="medical", subject=SUBJECT, context=NOTE)


def test_subject_erase_text_output_and_idempotence(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with vault() as v:
        v.encrypt("asthma", domain="medical", subject="m-17", context=NOTE)
    args = ["subject", "erase", "m-17", "--reason", "art17", "--request-id", "DSR-2"]
    args += ["--domain", "medical"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "erasure DSR-2 (art17): granted" in out
    assert "domain medical: 1 keys destroyed now, 0 before" in out
    assert "m-17" not in out + err
    code, out, _ = run(args, capsys)
    assert code == 0 and "domain medical: 0 keys destroyed now, 1 before" in out
    # The erasure events are in the audit chain, and `vaultkit audit verify` verifies it.
    code, out, err = run(["audit", "verify"], capsys)
    assert code == 0, out + err
    with vault() as v:
        log_ = v.audit_log
        assert log_ is not None
        assert [e.action for _s, e, _p, _m in log_.read()].count("erase") == 2


def test_subject_erase_from_a_config_with_backup_modes_writes_the_ledger(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """vaultkit.toml's erasure_ledger, key_store_backup_retention and shred_epoch_interval reach
    the vault: the erasure is in the ledger (by reference, never the subject) and the receipt
    states its finality, the earlier of backup retention and the next shred epoch."""
    from vaultkit._ledger import ErasureLedger

    (app / "ledger").mkdir()
    toml = app / "vaultkit.toml"
    toml.write_text(
        'erasure_ledger = "ledger/erasures.jsonl"\n'
        'key_store_backup_retention = "P35D"\n'
        "shred_epoch_interval = 604800\n" + CONFIG
    )
    with vault() as v:
        v.encrypt("asthma", domain="medical", subject="m-17", context=NOTE)
        ref = v.subject_ref("medical", "m-17")
    args = ["subject", "erase", "m-17", "--reason", "art17", "--request-id", "DSR-9"]
    code, out, err = run([*args, "--domain", "medical", "--json"], capsys)
    assert code == 0, err
    receipt = json.loads(out)
    erased_at = dt.datetime.fromisoformat(receipt["erased_at"])
    finality = dt.datetime.fromisoformat(receipt["finality"])
    # The local keyring destroys versions at once: the next weekly epoch comes first.
    assert erased_at < finality <= erased_at + dt.timedelta(days=7)
    entries = ErasureLedger(app / "ledger" / "erasures.jsonl").entries()
    assert [(e.domain, e.subject_ref, e.request_id) for e in entries] == [("medical", ref, "DSR-9")]
    ledger_text = (app / "ledger" / "erasures.jsonl").read_text()
    assert "m-17" not in ledger_text + out + err
    # Backup retention alone (no shred schedule): erased_at + 35 days.
    toml.write_text(
        'erasure_ledger = "ledger/erasures.jsonl"\nkey_store_backup_retention = "P35D"\n' + CONFIG
    )
    with vault() as v:
        v.encrypt("asthma", domain="medical", subject="m-18", context=NOTE)
    code, out, err = run(
        ["subject", "erase", "m-18", "--reason", "art17", "--request-id", "DSR-10", "--json"],
        capsys,
    )
    receipt = json.loads(out)
    erased_at = dt.datetime.fromisoformat(receipt["erased_at"])
    assert dt.datetime.fromisoformat(receipt["finality"]) == erased_at + dt.timedelta(days=35)
    # m-18 has no claims key: nothing retained there, so claims is fenced and logged too.
    entries = ErasureLedger(app / "ledger" / "erasures.jsonl").entries()
    assert [(e.domain, e.request_id) for e in entries[1:]] == [
        ("medical", "DSR-10"),
        ("claims", "DSR-10"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('key_store_backup_retention = "P1M"', "not years or months"),
        ('shred_epoch_interval = "weekly"', "not an ISO 8601 duration"),
        ("shred_epoch_interval = true", "is a duration"),
        ("erasure_ledger = 3", "path of a file"),
        ('erasure_ledger = "nowhere/erasures.jsonl"', "is its disk mounted"),
        ('key_store_backup_retention = "PT0S"', "positive"),
    ],
)
def test_backup_modes_in_the_config_are_checked(
    app: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    (app / "vaultkit.toml").write_text(line + "\n" + CONFIG)
    code, _out, err = run(
        ["subject", "erase", "m-1", "--reason", "art17", "--request-id", "DSR-1"], capsys
    )
    assert code == 3 and message in err, err


def test_subject_erase_refuses_a_personal_request_id_without_echoing_it(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["subject", "erase", "m-17", "--reason", "art17", "--request-id", SUBJECT], capsys
    )
    assert code == 3
    assert "e-mail" in err and SUBJECT not in out + err


def test_subject_is_given_once(
    app: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["subject", "erase", "--reason", "art17", "--request-id", "DSR-3"]
    assert run(base, capsys)[0] == 3
    (tmp_path / "who").write_text("m-1\n")
    assert run([*base, "m-1", "--subject-file", "who"], capsys)[0] == 3
    (tmp_path / "two").write_text("m-1\nm-2\n")
    code, out, err = run([*base, "--subject-file", "two"], capsys)
    assert code == 3 and "m-1" not in out + err
    assert run([*base, "--subject-file", "who"], capsys)[0] == 0


def test_subject_type(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with vault() as v:
        blob = v.encrypt("asthma", domain="medical", subject=17, context=NOTE)
    base = ["subject", "erase", "--reason", "art17", "--request-id", "DSR-6"]
    code, out, err = run([*base, "x17", "--subject-type", "int"], capsys)
    assert code == 3 and "x17" not in out + err
    assert run([*base, "17", "--subject-type", "int", "--domain", "medical"], capsys)[0] == 0
    with vault() as v, pytest.raises(SubjectErasedError):
        v.decrypt(blob, context=NOTE)
    # Another member: another request (the log refuses a request id of another member's).
    base[-1] = "DSR-7"
    assert run([*base, str(uuid.uuid4()), "--subject-type", "uuid"], capsys)[0] == 0


def test_subject_end_then_erase_after_the_minimum(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with vault() as v:
        v.encrypt("claim", domain="claims", subject="m-9", context=NOTE)
    code, out, err = run(["subject", "end", "m-9", "--at", "2020-01-31T00:00:00Z"], capsys)
    assert code == 0, err
    assert "1 keys now carry their destroy_at" in out and "m-9" not in out
    assert run(["subject", "end", "m-9", "--at", "2020-01-31T00:00:00"], capsys)[0] == 3
    # The minimum (5 years after 2020-01-31) is over: the claims domain can be erased.
    code, out, err = run(
        ["subject", "erase", "m-9", "--reason", "art17", "--request-id", "DSR-4", "--json"],
        capsys,
    )
    assert code == 0, err
    domains = {d["domain"]: d for d in json.loads(out)["domains"]}
    assert domains["claims"]["status"] == "erased"


def test_subject_allow_lifts_the_fence(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(["subject", "erase", "m-3", "--reason", "art17", "--request-id", "DSR-5"], capsys)
    with vault() as v, pytest.raises(SubjectErasedError):
        v.encrypt("x", domain="medical", subject="m-3", context=NOTE)
    code, out, err = run(["subject", "allow", "m-3", "--domain", "medical"], capsys)
    assert code == 0, err and "m-3" not in out
    with vault() as v:
        blob = v.encrypt("x", domain="medical", subject="m-3", context=NOTE)
        assert v.decrypt(blob, context=NOTE) == "x"


def chat_keys() -> list[DekState]:
    with vault() as v:
        return [r.state for r in v.data_keys(domain="chat")]


def test_retention_enforce_and_report(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Vault.from_config("vaultkit.toml") as v:
        ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=80)
        v._keyring.clock = lambda: ago  # a writer whose wall clock said 80 h ago
        old = v.encrypt("hi", domain="chat", context=NOTE)
    with vault() as v:
        new = v.encrypt("hello", domain="chat", context=NOTE)
    code, out, err = run(["retention", "report", "--json"], capsys)
    assert code == 0, err
    body = json.loads(out)
    chat = next(d for d in body["domains"] if d["domain"] == "chat")
    assert (chat["live"], chat["due"], chat["destroyed"]) == (2, 1, 0)
    assert chat["policy"] == {
        "duration": "PT72H",
        "after": "capture",
        "kind": "no_longer_than",
        "ground": None,
    }
    assert chat["bucket"] == "PT1H" and body["violations"] == 0
    code, out, err = run(["retention", "enforce", "--batch", "1"], capsys)
    assert code == 0, err
    assert "1 keys destroyed in 1 batches (chat: 1)" in out
    assert sorted(chat_keys()) == sorted([DekState.ACTIVE, DekState.DESTROYED])
    code, out, _ = run(["retention", "enforce", "--json"], capsys)
    assert json.loads(out)["keys_destroyed"] == 0
    with vault() as v:
        with pytest.raises(ValueErasedError):
            v.decrypt(old, context=NOTE)
        assert v.decrypt(new, context=NOTE) == "hello"
    code, out, _ = run(["retention", "report"], capsys)
    assert code == 0 and "violations: 0" in out
    assert "domain chat (bucket keys, buckets of PT1H): no_longer_than PT72H after capture" in out


def test_retention_report_exits_7_on_a_violation(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Vault.from_config("vaultkit.toml") as v:
        ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        v._keyring.clock = lambda: ago
        v.encrypt("hi", domain="chat", context=NOTE)
    # A database writer pushes the bucket key's destroy_at a year on.
    engine = sa.create_engine("sqlite:///keys.db")
    keys = sa.Table("vaultkit_data_keys", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(
            keys.update()
            .where(keys.c.domain == "chat")
            .values(destroy_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
        )
    engine.dispose()
    code, out, err = run(["retention", "report"], capsys)
    assert code == 7, err
    assert "VIOLATION" in out and "violations: 1" in out
    code, out, _ = run(["retention", "report", "--json"], capsys)
    assert code == 7 and json.loads(out)["violations"] == 1


def test_retention_times_need_a_zone(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["retention", "report", "--at", "2026-12-01T10:00"], capsys)[0] == 3
    assert run(["retention", "enforce", "--at", "yesterday"], capsys)[0] == 3
    assert run(["retention", "enforce", "--batch", "0"], capsys)[0] == 3
    assert run(["retention", "report", "--at", "2026-12-01T10:00Z"], capsys)[0] == 0


def test_subject_erase_as_a_subprocess_reads_stdin(app: Path) -> None:
    with vault() as v:
        blob = v.encrypt("asthma", domain="medical", subject=SUBJECT, context=NOTE)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaultkit",
            "subject",
            "erase",
            "--config",
            "vaultkit.toml",
            "--subject-file",
            "-",
            "--reason",
            "art17",
            "--request-id",
            "DSR-9",
            "--domain",
            "medical",
        ],
        input=SUBJECT.encode(),
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"granted" in done.stdout
    assert SUBJECT.encode() not in done.stdout + done.stderr
    with vault() as v, pytest.raises(SubjectErasedError):
        v.decrypt(blob, context=NOTE)


MODELS = """\
import sqlalchemy as sa
from vaultkit.sqla import BlindIndexType, Encrypted

metadata = sa.MetaData()
members = sa.Table(
    "members",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("member_id", sa.String(20), nullable=False),
    sa.Column("note", Encrypted(sa.Text, domain="medical", subject="member_id")),
    sa.Column("email", Encrypted(sa.String(200), domain="identity")),
    sa.Column("email_ix", BlindIndexType("email")),
)
"""


def test_subject_erase_nulls_the_blind_index_cells_of_the_data(
    app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    import vaultkit.sqla

    if not hasattr(vaultkit.sqla, "erasure_cells"):
        pytest.skip("vaultkit.sqla without erasure_cells (the i16-sqla branch adds it)")
    (app / "cli_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(app))
    monkeypatch.delitem(sys.modules, "cli_models", raising=False)
    models = importlib.import_module("cli_models")
    engine = sa.create_engine("sqlite:///data.db")
    models.metadata.create_all(engine)
    with vault() as v:
        vaultkit.sqla.configure(v)
        try:
            with engine.begin() as conn:
                for i, member in enumerate(("m-17", "m-18")):
                    conn.execute(
                        models.members.insert().values(
                            id=i, member_id=member, note="asthma", email=f"{member}@example.be"
                        )
                    )
        finally:
            vaultkit.sqla.configure(None)
    code, out, err = run(
        [
            "subject",
            "erase",
            "m-17",
            "--reason",
            "art17",
            "--request-id",
            "DSR-10",
            "--domain",
            "medical",
            "--data",
            "sqlite:///data.db",
            "--model",
            "cli_models:metadata",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["tables"] == {"members": 1}
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("select member_id, email_ix from members")).all())
    engine.dispose()
    assert rows["m-17"] is None and rows["m-18"] is not None
    assert (
        run(
            ["subject", "erase", "m-1", "--reason", "a", "--request-id", "D", "--data", "x"], capsys
        )[0]
        == 3
    )
