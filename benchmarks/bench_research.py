"""Research export (issue 18): rows per second and peak memory of ``vaultkit.research.export``.

``python benchmarks/bench_research.py [--rows N] [--batch B] [--repeat R]``

Builds a SQLite table of N synthetic members (member id, postal code, birth date, sex, two
dates, an amount and an encrypted e-mail), then runs, each in a fresh child process so that its
peak RSS (``ru_maxrss``) is its own:

``baseline``
    the same rows read from the same database in the same Arrow batches (SQLAlchemy, streamed)
    and written to Parquet with pyarrow: one pass, no transform, no decrypt, no k check.
``export``
    ``vaultkit.research.export`` of a cohort spec over those rows: a pseudonym of the member id,
    a pseudonym of the decrypted e-mail (through ``vaultkit.arrow.decrypt_array``), postal code
    and birth-year generalisation, an age band, two keyed date shifts, two kept columns, and a
    k-anonymity check over (region, birth year, sex); two passes over the source.

Both print rows/s and peak RSS; the export is run at N/5 rows as well, so that one can see that
its memory does not grow with the rows (it grows with the batch size and the number of classes).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
MASTER_KEY = base64.b64encode(b"\x11" * 32).decode()
CONFIG = """\
key_store = "sqlite:///{dir}/keys.db"

[providers.keyring]
type = "local"
path = "{dir}/keyring.json"

[domains.identity]
provider = "keyring"

[domains.research]
provider = "keyring"
audited = true
"""
SPEC = """\
[export]
project = "bench"
recipient = "uni-a"
source = "members"
member = "member_id"
k = 10
on_small_class = "suppress"
quasi_identifiers = ["region", "birth_year", "age", "sex"]
batch_size = {batch}

[columns.pid]
source = "member_id"
transform = "pseudonym"

[columns.email_pid]
source = "email_ct"
transform = "pseudonym"
decrypt = {{ domain = "identity", table = "members", column = "email" }}

[columns.region]
source = "postal_code"
transform = "generalise"
method = "postal"
digits = 1

[columns.birth_year]
source = "birth_date"
transform = "generalise"
method = "year"

[columns.age]
source = "birth_date"
transform = "generalise"
method = "age_band"
years = 10
at = 2026-01-01

[columns.sex]
transform = "keep"

[columns.admitted]
source = "admitted_on"
transform = "date_shift"

[columns.discharged]
source = "discharged_on"
transform = "date_shift"

[columns.amount]
transform = "keep"
"""
COLUMNS = (
    "member_id",
    "postal_code",
    "birth_date",
    "sex",
    "admitted_on",
    "discharged_on",
    "amount",
    "email_ct",
)


def _vault(workdir: Path) -> Any:
    from vaultkit import Vault

    os.environ["VAULTKIT_MASTER_KEY"] = MASTER_KEY
    return Vault.from_config(workdir / "vaultkit.toml")


def setup(workdir: Path, rows: int) -> None:
    """The keyring, config, and a table of ``rows`` members (the e-mail encrypted)."""
    import random

    import sqlalchemy as sa

    from vaultkit.keys import LocalKeyProvider

    os.environ["VAULTKIT_MASTER_KEY"] = MASTER_KEY
    provider = LocalKeyProvider(workdir / "keyring.json", create_keys=True)
    provider.primary("identity")
    provider.primary("research")
    (workdir / "vaultkit.toml").write_text(CONFIG.format(dir=workdir))
    rng = random.Random(18)
    engine = sa.create_engine(f"sqlite:///{workdir / 'data.db'}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE members (member_id INTEGER PRIMARY KEY, postal_code TEXT, "
                "birth_date TEXT, sex TEXT, admitted_on TEXT, discharged_on TEXT, amount REAL, "
                "email_ct BLOB)"
            )
        )
    with _vault(workdir) as vault:
        email = vault.field("identity", table="members", column="email")
        insert = sa.text(
            "INSERT INTO members VALUES (:member_id, :postal_code, :birth_date, :sex, "
            ":admitted_on, :discharged_on, :amount, :email_ct)"
        )
        day0 = dt.date(2024, 1, 1)
        for start in range(0, rows, 50_000):
            chunk = []
            for i in range(start, min(rows, start + 50_000)):
                born = dt.date(
                    1940 + rng.randrange(60), 1 + rng.randrange(12), 1 + rng.randrange(28)
                )
                admitted = day0 + dt.timedelta(days=rng.randrange(700))
                chunk.append(
                    {
                        "member_id": 10_000_000 + i,
                        "postal_code": f"{1000 + rng.randrange(9000)}",
                        "birth_date": born.isoformat(),
                        "sex": "FM"[rng.randrange(2)],
                        "admitted_on": admitted.isoformat(),
                        "discharged_on": (
                            admitted + dt.timedelta(days=rng.randrange(30))
                        ).isoformat(),
                        "amount": round(rng.random() * 5000, 2),
                        "email_ct": email.encrypt(f"member{i}@example.be"),
                    }
                )
            with engine.begin() as conn:
                conn.execute(insert, chunk)
    engine.dispose()


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_baseline(workdir: Path, batch: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{workdir / 'data.db'}")
    started = time.perf_counter()
    rows = 0
    writer = None
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(
            sa.text(f"SELECT {', '.join(COLUMNS)} FROM members")  # noqa: S608 - constant names
        )
        for part in result.partitions(batch):
            cols = list(zip(*part, strict=True))
            table = pa.table({n: pa.array(v) for n, v in zip(COLUMNS, cols, strict=True)})
            if writer is None:
                writer = pq.ParquetWriter(workdir / "baseline.parquet", table.schema)
            writer.write_table(table)
            rows += table.num_rows
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "peak_mib": _peak_mib()}


def child_export(workdir: Path, batch: int, rows_limit: int | None) -> dict[str, Any]:
    from vaultkit.research import export, parse_spec

    spec_text = SPEC.format(batch=batch)
    if rows_limit is not None:
        spec_text = spec_text.replace(
            'source = "members"',
            f'query = "SELECT * FROM members WHERE member_id < {10_000_000 + rows_limit}"',  # noqa: S608 - an int
        )
    spec = parse_spec(spec_text)
    with _vault(workdir) as vault:
        started = time.perf_counter()
        report = export(
            vault, spec, workdir / "cohort.parquet", database=f"sqlite:///{workdir / 'data.db'}"
        )
        seconds = time.perf_counter() - started
    return {
        "rows": report.rows_in,
        "rows_out": report.rows_out,
        "suppressed": report.suppressed,
        "achieved_k": report.achieved_k,
        "classes": report.classes,
        "seconds": seconds,
        "peak_mib": _peak_mib(),
    }


def _child(workdir: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE), "--child", str(workdir), *args],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--what", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        if args.what == "baseline":
            result = child_baseline(args.child, args.batch)
        else:
            result = child_export(args.child, args.batch, args.limit)
        print(json.dumps(result))
        return

    import pyarrow as pa

    with tempfile.TemporaryDirectory(prefix="bench-research-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        setup(workdir, args.rows)
        print(
            f"setup: {args.rows:,} rows in {time.perf_counter() - started:.1f} s; "
            f"Python {sys.version.split()[0]}, pyarrow {pa.__version__}, {os.cpu_count()} CPUs, "
            f"batch {args.batch:,}, load average {os.getloadavg()[0]:.1f}"
        )
        runs: dict[str, list[dict[str, Any]]] = {}
        small = max(1, args.rows // 5)
        for _ in range(args.repeat):
            for name, extra in (
                ("baseline", ["--what", "baseline"]),
                ("export", ["--what", "export"]),
                (f"export {small:,} rows", ["--what", "export", "--limit", str(small)]),
            ):
                runs.setdefault(name, []).append(
                    _child(workdir, *extra, "--batch", str(args.batch))
                )
        print("\n| run | rows | seconds | rows/s | peak RSS MiB | vs baseline |")
        print("|---|---:|---:|---:|---:|---:|")
        base = statistics.median(r["rows"] / r["seconds"] for r in runs["baseline"])
        for name, results in runs.items():
            rate = statistics.median(r["rows"] / r["seconds"] for r in results)
            seconds = statistics.median(r["seconds"] for r in results)
            peak = max(r["peak_mib"] for r in results)
            print(
                f"| {name} | {results[0]['rows']:,} | {seconds:.1f} | {rate:,.0f} | {peak:.0f} "
                f"| {rate / base:.2f}x |"
            )
        last = runs["export"][-1]
        print(
            f"\nexport: {last['rows_out']:,} rows written, {last['suppressed']:,} suppressed, "
            f"{last['classes']:,} classes, achieved k {last['achieved_k']}"
        )


if __name__ == "__main__":
    main()
