"""KEK rotation and re-keying costs.

Run: ``python benchmarks/bench_rekey.py [--postgres URL] [--rows N] [--workers 1 2]`` (a few minutes). Prints Markdown tables:

* KEK rotation time against the number of DEKs at a fixed row count, and against the row count at
  a fixed number of DEKs (rotation touches key rows only, so the second must be flat);
* re-keying throughput (rows/s with 1 and 2 worker processes) of a 3-encrypted-column table whose values are under
  retired DEKs, on PostgreSQL when a URL is given, else SQLite.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

import vaultkit.sqla
from vaultkit import Vault
from vaultkit.keys.local import LocalKeyProvider
from vaultkit.rekey import drop_job, rekey_table
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


def _table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", Encrypted(sa.String(320), domain="identity")),
        sa.Column("phone", Encrypted(sa.String(32), domain="identity")),
        sa.Column("note", Encrypted(sa.Text, domain="identity")),
    )


def _vault(keyring: Path, store: str) -> Vault:
    provider = LocalKeyProvider(keyring, master_key=b"\x01" * 32)
    return Vault(provider=provider, store=store, domains=["identity"])


def _worker(
    keyring: str, store: str, url: str, name: str, job: str, prefetch: bool
) -> tuple[int, float]:
    """One re-keying worker process: its own vault, engine and claims."""
    with _vault(Path(keyring), store) as vault:
        vaultkit.sqla.configure(vault)
        engine = sa.create_engine(url)
        try:
            report = rekey_table(
                engine, _table(name), vault=vault, job=job, range_size=5_000, prefetch=prefetch
            )
        finally:
            engine.dispose()
        return report.values_rewritten, report.seconds


def rekey_throughput(
    url: str, rows: int, workers: int, *, prefetch: bool = True
) -> tuple[float, str]:
    """Rows/s of ``workers`` processes re-keying ``rows`` rows x 3 columns under retired DEKs."""
    folder = Path(tempfile.mkdtemp())
    keyring = folder / "keyring.json"
    store = url if url.startswith("postgresql") else f"sqlite:///{folder / 'keys.db'}"
    name = f"bench_rekey_{uuid.uuid4().hex[:8]}"
    table = _table(name)
    vault = _vault(keyring, store)
    vaultkit.sqla.configure(vault)
    engine = sa.create_engine(url)
    table.metadata.create_all(engine)
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
        job = f"{name}:rekey"
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            results = pool.starmap(
                _worker, [(str(keyring), store, url, name, job, prefetch)] * workers
            )
        assert sum(r[0] for r in results) == 3 * rows, results
        # Process start-up (imports, key loading) is excluded: rows over the slowest worker's run.
        return rows / max(r[1] for r in results), engine.dialect.name
    finally:
        table.metadata.drop_all(engine)
        drop_job(engine, f"{name}:rekey")
        engine.dispose()
        vaultkit.sqla.configure(None)
        vault.close()


def rotation_table() -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="PostgreSQL URL for the throughput measurement")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-rotation", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="run the throughput table N times")
    args = parser.parse_args()
    if not args.skip_rotation:
        rotation_table()
    url = args.postgres or f"sqlite:///{Path(tempfile.mkdtemp()) / 'rekey.db'}"
    print()
    print(f"Re-keying {args.rows:,} rows x 3 encrypted columns under retired DEKs:")
    print()
    print("| database | workers | prefetch | rows/s | per worker |")
    print("|---|---:|---|---:|---:|")
    runs = [(1, False), *((w, True) for w in args.workers)]
    for workers, prefetch in runs * args.repeat:
        rate, dialect = rekey_throughput(url, args.rows, workers, prefetch=prefetch)
        print(
            f"| {dialect} | {workers} | {'yes' if prefetch else 'no'} | {rate:,.0f} | "
            f"{rate / workers:,.0f} |"
        )


if __name__ == "__main__":
    main()
