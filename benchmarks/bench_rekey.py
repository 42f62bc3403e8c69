"""KEK rotation and re-keying costs.

Run: ``python benchmarks/bench_rekey.py [--postgres URL]`` (a minute or two). Prints Markdown tables:

* KEK rotation time against the number of DEKs at a fixed row count, and against the row count at
  a fixed number of DEKs (rotation touches key rows only, so the second must be flat);
* re-keying throughput (rows/s, one worker) of a 3-encrypted-column table whose values are under
  retired DEKs, on PostgreSQL when a URL is given, else SQLite.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

import vaultkit.sqla
from vaultkit import Vault
from vaultkit.rekey import rekey_table
from vaultkit.sqla import Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider


def rotation(deks: int, rows: int) -> float:
    provider = InMemoryKeyProvider(["medical"])
    store = MemoryKeyStore()
    per_dek = max(1, rows // deks)
    with Vault(
        provider=provider, store=store, domains=["medical"], dek_max_encryptions=per_dek
    ) as v:
        for i in range(rows):
            v.encrypt(i, domain="medical")
        assert len(list(store.records())) >= deks
        start = time.perf_counter()
        report = v.rotate_kek("medical")
        elapsed = time.perf_counter() - start
    assert report.rewrapped >= deks
    return elapsed


def rekey_throughput(url: str, rows: int) -> tuple[float, str]:
    meta = sa.MetaData()
    table = sa.Table(
        f"bench_rekey_{uuid.uuid4().hex[:8]}",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(320), domain="identity")),
        sa.Column("phone", Encrypted(sa.String(32), domain="identity")),
        sa.Column("note", Encrypted(sa.Text, domain="identity")),
    )
    vault = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"])
    vaultkit.sqla.configure(vault)
    engine = sa.create_engine(url)
    meta.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {
                        "id": i,
                        "email": f"m{i}@example.be",
                        "phone": "+32470123456",
                        "note": "x" * 200,
                    }
                    for i in range(rows)
                ],
            )
        for record in list(vault.store.records()):
            vault.retire_dek(record.dek_id)
        vault._active.clear()  # take a fresh DEK now rather than at the cache time limit
        start = time.perf_counter()
        report = rekey_table(engine, table, vault=vault, batch_size=1000)
        elapsed = time.perf_counter() - start
        assert report.retired_reencrypted == 3 * rows
        return rows / elapsed, engine.dialect.name
    finally:
        meta.drop_all(engine)
        sa.Table("vaultkit_rekey_checkpoints", sa.MetaData()).drop(engine, checkfirst=True)
        engine.dispose()
        vaultkit.sqla.configure(None)
        vault.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="PostgreSQL URL for the throughput measurement")
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    print("| DEKs | rows | rotation time | per DEK |")
    print("|---:|---:|---:|---:|")
    for deks, rows in (
        (100, 10_000),
        (1_000, 10_000),
        (10_000, 10_000),
        (100, 1_000),
        (100, 100_000),
    ):
        seconds = rotation(deks, rows)
        print(f"| {deks:,} | {rows:,} | {seconds * 1000:.0f} ms | {seconds / deks * 1e6:.0f} µs |")
    url = args.postgres or f"sqlite:///{Path(tempfile.mkdtemp()) / 'rekey.db'}"
    rate, dialect = rekey_throughput(url, args.rows)
    print()
    print(
        f"Re-keying {args.rows:,} rows x 3 encrypted columns under retired DEKs, 1 worker, {dialect}: {rate:,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
