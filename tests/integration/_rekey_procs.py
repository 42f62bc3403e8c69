"""Processes for the re-keying tests: a re-keying worker, and an application that keeps writing.

Usage (the master key comes from VAULTKIT_MASTER_KEY; URL is the data and key-store database):

    python -m tests.integration._rekey_procs load URL KEYRING ROWS
    python -m tests.integration._rekey_procs rekey URL KEYRING JOB [RANGE_SIZE]
    python -m tests.integration._rekey_procs app URL KEYRING STOP_FILE

``app`` updates random rows until STOP_FILE exists; in the same transaction it records what it
wrote in ``crash_expected``, so the database itself holds the truth the test checks against.
``rekey`` prints a line after each batch and its report's counts as JSON on its last line.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import sqlalchemy as sa

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, Vault
from vaultkit.keys import LocalKeyProvider
from vaultkit.rekey import rekey_table
from vaultkit.sqla import BlindIndexType, Encrypted

META = sa.MetaData()
MEMBERS = sa.Table(
    "crash_members",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("uid", sa.Uuid, nullable=False),
    sa.Column("email", Encrypted(sa.String(200), domain="identity", migrating=True)),
    sa.Column("email_ix", BlindIndexType("email", normalize=str.lower)),
    sa.Column("note", Encrypted(sa.Text, domain="medical", row_key="uid")),
)
EXPECTED = sa.Table(
    "crash_expected",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(200), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("writes", sa.Integer, nullable=False, default=0),
)
APP = Principal("app", grants={"identity", "medical"})


def open_vault(url: str, keyring: str) -> Vault:
    vault = Vault(
        provider=LocalKeyProvider(keyring),
        store=url,
        domains=[KeyDomain("identity"), KeyDomain("medical", restricted=True)],
        dek_max_encryptions=2_000,  # several DEKs per run, so that DEK roll-over happens too
    )
    vaultkit.sqla.configure(vault)
    return vault


def load(url: str, keyring: str, rows: int) -> None:
    """Half the e-mails legacy plaintext, half encrypted; all notes encrypted; then retire all."""
    engine = sa.create_engine(url)
    META.create_all(engine)
    with open_vault(url, keyring) as vault, vault.acting_as(APP, purpose="load"):
        with engine.begin() as conn:
            conn.execute(
                sa.text("insert into crash_members (id, uid, email) values (:id, :uid, :email)"),
                [
                    {"id": i, "uid": uuid.UUID(int=i), "email": f"Legacy{i}@X.be".encode()}
                    for i in range(1, rows + 1)
                ],
            )
            # Parameters named after the columns: the row key (uid) is among them.
            conn.execute(
                MEMBERS.update().where(MEMBERS.c.id == sa.bindparam("k")),
                [
                    {"k": i, "email": f"Enc{i}@X.be", "note": f"note {i}", "uid": uuid.UUID(int=i)}
                    for i in range(1, rows + 1, 2)
                ],
            )
            conn.execute(
                MEMBERS.update().where(MEMBERS.c.id == sa.bindparam("k")),
                [
                    {"k": i, "note": f"note {i}", "uid": uuid.UUID(int=i)}
                    for i in range(2, rows + 1, 2)
                ],
            )
            conn.execute(
                EXPECTED.insert(),
                [
                    {
                        "id": i,
                        "email": f"Enc{i}@X.be" if i % 2 else f"Legacy{i}@X.be",
                        "note": f"note {i}",
                        "writes": 0,
                    }
                    for i in range(1, rows + 1)
                ],
            )
        for record in list(vault.store.records()):
            if record.purpose == "data":
                vault.retire_dek(record.dek_id)
    engine.dispose()


def rekey(url: str, keyring: str, job: str, range_size: int) -> None:
    engine = sa.create_engine(url)
    with open_vault(url, keyring) as vault:
        report = rekey_table(
            engine,
            MEMBERS,
            vault=vault,
            job=job,
            batch_size=200,
            range_size=range_size,
            progress=lambda r: print(f"batch {r.batches}", flush=True),
        )
    engine.dispose()
    print(json.dumps({k: v for k, v in asdict(report).items() if isinstance(v, int | bool)}))


def app(url: str, keyring: str, stop_file: str) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ids = list(conn.execute(sa.select(EXPECTED.c.id)).scalars())
    counter = 0
    with open_vault(url, keyring) as vault, vault.acting_as(APP, purpose="app"):
        while not Path(stop_file).exists():
            counter += 1
            i = random.choice(ids)
            email = f"App{counter}-{i}@X.be"
            note = f"app note {counter}"
            values: dict[str, object] = {"email": email}
            if counter % 3 == 0:  # sometimes the row-bound column too
                values.update(note=note, uid=uuid.UUID(int=i))
            with engine.begin() as conn:
                conn.execute(MEMBERS.update().where(MEMBERS.c.id == i).values(**values))
                expected = {"email": email, "writes": EXPECTED.c.writes + 1}
                if "note" in values:
                    expected["note"] = note
                conn.execute(EXPECTED.update().where(EXPECTED.c.id == i).values(**expected))
            time.sleep(0.001)
    engine.dispose()
    print(json.dumps({"writes": counter}))


if __name__ == "__main__":
    command, url, keyring, *rest = sys.argv[1:]
    if command == "load":
        load(url, keyring, int(rest[0]))
    elif command == "rekey":
        rekey(url, keyring, rest[0], int(rest[1]) if len(rest) > 1 else 1_000)
    else:
        app(url, keyring, rest[0])
