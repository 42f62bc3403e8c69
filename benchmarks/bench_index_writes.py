"""Write overhead of each search index: Core executemany INSERT, against the same insert without it.

Run: ``python benchmarks/bench_index_writes.py [--rows 20000] [--repeat 5] [--database URL]``
(default: an SQLite file; PostgreSQL e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
Prints a Markdown table for docs/benchmarks.md (search indexes, write overhead).

Every variant writes the same rows (postal code, birth date, surname: three encrypted columns of
one domain) into its own table, in the same run, interleaved, ``--repeat`` times; the baseline is
the same three encrypted columns without any index, and a plaintext table gives the floor. The
figure per index is the median extra time per row over the baseline, and the ratio of medians;
the range is over the repeats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import vaultkit.sqla
from vaultkit import Vault
from vaultkit.search import digits, first_char, fold_name, year
from vaultkit.sqla import Encrypted, Part
from vaultkit.sqla.types import BlindIndexType
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

_Index = Callable[[], list[sa.Column[Any]]]

VARIANTS: dict[str, _Index] = {
    "no index (baseline)": lambda: [],
    "BlindIndex (256 bits)": lambda: [
        sa.Column("ix", BlindIndexType("last_name", normalize=fold_name))
    ],
    "BlindIndex (16 bits, 4 partitions)": lambda: [
        sa.Column("ix", BlindIndexType("last_name", normalize=fold_name, bits=16, partitions=4))
    ],
    "PrefixIndex (3 chars, 16 bits)": lambda: [
        sa.Column(
            "ix", vaultkit.sqla.PrefixIndexType("last_name", length=3, normalize=fold_name, bits=16)
        )
    ],
    "BucketIndex (year, 12 bits)": lambda: [
        sa.Column("ix", vaultkit.sqla.BucketIndexType("birth_date", unit="year", bits=12))
    ],
    "CompoundIndex (3 parts, 16 bits)": lambda: [
        sa.Column(
            "ix",
            vaultkit.sqla.CompoundIndexType(
                [
                    Part("postal_code", digits(4)),
                    Part("birth_date", year),
                    Part("last_name", first_char),
                ],
                bits=16,
            ),
        )
    ],
}


def _table(meta: sa.MetaData, name: str, extra: list[sa.Column[Any]]) -> sa.Table:
    return sa.Table(
        name,
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("postal_code", Encrypted(sa.String(8), domain="identity")),
        sa.Column("birth_date", Encrypted(sa.Date, domain="identity")),
        sa.Column("last_name", Encrypted(sa.String(100), domain="identity")),
        *extra,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database", default=None)
    args = parser.parse_args()
    rng = random.Random(1)
    names = ["Janssens", "Peeters", "Maes", "Jacobs", "Van der Berg", "Smith-Jones", "Müller"]
    rows = [
        {
            "id": i,
            "postal_code": str(rng.randint(1000, 9999)),
            "birth_date": dt.date(rng.randint(1930, 2005), rng.randint(1, 12), rng.randint(1, 28)),
            "last_name": rng.choice(names) + str(i % 97),
        }
        for i in range(args.rows)
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        Vault(
            provider=InMemoryKeyProvider(["identity"]), store=MemoryKeyStore(), domains=["identity"]
        ) as vault,
    ):
        vaultkit.sqla.configure(vault)
        url = args.database or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = sa.create_engine(url)
        meta = sa.MetaData()
        plain = sa.Table(
            "bench_ix_plain",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("postal_code", sa.String(8)),
            sa.Column("birth_date", sa.Date),
            sa.Column("last_name", sa.String(100)),
        )
        tables = {"plaintext columns (floor)": plain}
        for n, (label, make) in enumerate(VARIANTS.items()):
            tables[label] = _table(meta, f"bench_ix_{n}", make())
        meta.drop_all(engine)
        meta.create_all(engine)
        times: dict[str, list[float]] = {label: [] for label in tables}
        try:
            for _ in range(args.repeat):
                for label, table in tables.items():
                    with engine.begin() as conn:
                        conn.execute(table.delete())
                    start = time.perf_counter()
                    with engine.begin() as conn:
                        conn.execute(table.insert(), rows)
                    times[label].append((time.perf_counter() - start) / args.rows * 1e6)
        finally:
            meta.drop_all(engine)
            engine.dispose()
            vaultkit.sqla.configure(None)
    base = statistics.median(times["no index (baseline)"])
    print(f"{engine.dialect.name}, {args.rows} rows per insert, {args.repeat} repeats\n")
    print("| table | us/row (median, range) | extra us/row vs baseline | ratio |")
    print("|---|---|---|---|")
    for label, samples in times.items():
        med = statistics.median(samples)
        print(
            f"| {label} | {med:.1f} ({min(samples):.1f}-{max(samples):.1f}) | "
            f"{med - base:+.1f} | {med / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
