"""The research export reads its source from SQLite, PostgreSQL and MariaDB alike (streamed, real
DATE columns, an encrypted BLOB/BYTEA column), and gives the same file on each."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from vaultkit import KeyDomain, Vault
from vaultkit.errors import ExportRefusedError, KeyProviderError
from vaultkit.research import dataset_key_name, export, parse_spec
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

SPEC = """
[export]
project = "p"
recipient = "r"
source = "rx_members"
member = "member_id"
k = 5
quasi_identifiers = ["birth_year", "sex"]
batch_size = 7

[columns.pid]
source = "member_id"
transform = "pseudonym"

[columns.birth_year]
source = "birth_date"
transform = "generalise"
method = "year"

[columns.sex]
transform = "keep"

[columns.seen]
source = "seen_on"
transform = "date_shift"
max_days = 10

[columns.email_pid]
source = "email_ct"
transform = "pseudonym"
decrypt = { domain = "identity", table = "members", column = "email" }
"""


def test_export_from_each_database(database_url: str, tmp_path: Path) -> None:
    """30 rows in batches of 7 over a real server: all rows out, dates shifted within 10 days."""
    provider = InMemoryKeyProvider(["identity", "research"])
    with Vault(
        provider=provider,
        store=MemoryKeyStore(),
        domains=["identity", KeyDomain("research", audited=True)],
        audit=f"sqlite:///{tmp_path / 'audit.db'}",
    ) as vault:
        email = vault.field("identity", table="members", column="email")
        engine = sa.create_engine(database_url)
        meta = sa.MetaData()
        table = sa.Table(
            "rx_members",
            meta,
            sa.Column("member_id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("birth_date", sa.Date),
            sa.Column("sex", sa.String(1)),
            sa.Column("seen_on", sa.Date),
            sa.Column("email_ct", sa.LargeBinary),
        )
        meta.create_all(engine)
        try:
            with engine.begin() as conn:
                conn.execute(
                    table.insert(),
                    [
                        {
                            "member_id": i,
                            "birth_date": dt.date(1970 + i % 2, 5, 1),
                            "sex": "FM"[i % 2],
                            "seen_on": dt.date(2026, 3, 1),
                            "email_ct": email.encrypt(f"m{i}@example.be"),
                        }
                        for i in range(30)
                    ],
                )
            report = export(vault, parse_spec(SPEC), tmp_path / "o.parquet", database=engine)
            out = pq.read_table(report.path)
            assert (report.rows_in, report.rows_out, report.achieved_k) == (30, 30, 15)
            assert sorted(set(out.column("birth_year").to_pylist())) == [1970, 1971]
            for seen in out.column("seen").to_pylist():
                assert abs((seen - dt.date(2026, 3, 1)).days) <= 10
            assert len(set(out.column("email_pid").to_pylist())) == 30
        finally:
            meta.drop_all(engine)
            engine.dispose()


BOUND_SPEC = """
[export]
project = "p"
recipient = "r"
source = "rx_people"
member = "member_id"
k = 2
quasi_identifiers = ["sex"]

[columns.pid]
source = "member_id"
transform = "pseudonym"

[columns.sex]
transform = "keep"

[columns.seen]
source = "seen_on"
transform = "date_shift"
max_days = {}
"""


def test_bound_and_erasures_with_the_key_store_on_each_database(
    database_url: str, tmp_path: Path
) -> None:
    """The key store on the server too: an erased member is left out though no column is
    decrypted (subjects read per batch), the dataset key's bound is recorded and another
    refused, and a bound edited in the server's key-store row makes the key unreadable."""
    provider = InMemoryKeyProvider(["identity", "research"])
    domains = [KeyDomain("identity", dek_scope="subject"), KeyDomain("research", audited=True)]
    engine = sa.create_engine(database_url)
    meta = sa.MetaData()
    table = sa.Table(
        "rx_people",
        meta,
        sa.Column("member_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sex", sa.String(1)),
        sa.Column("seen_on", sa.Date),
    )
    meta.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {"member_id": i, "sex": "FM"[i % 2], "seen_on": dt.date(2026, 3, 1)}
                    for i in range(10)
                ],
            )
        audit = f"sqlite:///{tmp_path / 'audit.db'}"
        with Vault(provider=provider, store=database_url, domains=domains, audit=audit) as vault:
            vault.field("identity", table="people", column="email").encrypt(
                "x@example.be", subject=3
            )
            vault.erase_subject(3, reason="art17", request_id="DSR-1")
            report = export(
                vault, parse_spec(BOUND_SPEC.format(10)), tmp_path / "a.parquet", database=engine
            )
            assert (report.rows_in, report.rows_out) == (9, 9)
            with pytest.raises(ExportRefusedError, match="max_days = 10"):
                export(
                    vault,
                    parse_spec(BOUND_SPEC.format(20)),
                    tmp_path / "b.parquet",
                    database=engine,
                )
        name = dataset_key_name("p", "r")
        with engine.begin() as conn:
            assert (
                conn.execute(
                    sa.text("UPDATE vaultkit_data_keys SET name = :new WHERE name = :old"),
                    {"new": f"{name};max_days=20", "old": f"{name};max_days=10"},
                ).rowcount
                == 1
            )
        with Vault(provider=provider, store=database_url, domains=domains, audit=audit) as vault:
            with pytest.raises(KeyProviderError, match="did not unwrap"):
                export(
                    vault,
                    parse_spec(BOUND_SPEC.format(20)),
                    tmp_path / "b.parquet",
                    database=engine,
                )
    finally:
        meta.drop_all(engine)
        engine.dispose()
