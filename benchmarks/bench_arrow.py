"""Arrow kernels against the scalar API, per value, in the same run; audience hashing on Dask.

Run: ``python benchmarks/bench_arrow.py`` (about ten minutes on 2 CPUs; ``--quick`` for a look:
fewer values, 1 million e-mails on Dask, two repeats). Prints Markdown tables for
docs/benchmarks.md, with the median and the spread (min to max) of the repeats, and the machine's
load average before and after each part (the machine may be shared: the figures say how loaded it
was).

Part 1, one thread (so values/s is per core): for N distinct e-mail addresses,

- **decrypt**: ``FieldCipher.decrypt`` per value (the scalar API) against
  ``vaultkit.arrow.decrypt_array`` on a binary array of the same ciphertexts (the result an Arrow
  string array);
- **encrypt**: ``FieldCipher.encrypt`` per value against ``encrypt_array``;
- **blind index**: ``BlindIndexType.digest`` per value (what the column type stores) against
  ``blind_index_array``;
- **audience hash**: ``vaultkit.audiences.render(MemberRecord(email=...))`` per value against
  ``hash_audience_array`` (Google rules).

Each kernel's output is checked equal to the scalar results before any timing.

Part 2: 10 million synthetic e-mails hashed for Google on a ``dask.distributed`` LocalCluster of 1
and then 2 worker processes (one thread each), through ``vaultkit.integrations.dask
.map_partitions``. The e-mails are generated inside each partition (40 partitions of 250,000), and
only the number of accepted rows comes back; the same run times the generation alone (the same
graph without the hashing) as a baseline.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vaultkit.sqla
from vaultkit import Vault
from vaultkit.arrow import (
    ColumnSpec,
    VaultSpec,
    audience_hash,
    blind_index_array,
    close_vaults,
    decrypt_array,
    encrypt_array,
    hash_audience_array,
)
from vaultkit.audiences import MemberRecord, render
from vaultkit.sqla import BlindIndex, Encrypted

CONFIG = """
key_store = "sqlite:///TMP/keys.db"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "TMP/keyring.json"
create_keys = true

[domains.identity]
"""


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(Encrypted(sa.String(320), domain="identity"))
    email_index = BlindIndex("email", normalize=str.lower)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def emails(count: int, start: int = 0) -> list[str]:
    domains = ("gmail.com", "example.be", "telenet.be", "Skynet.BE")
    return [f"Member.{i}+news@{domains[i % 4]}" for i in range(start, start + count)]


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f} to {max(values):,.0f}"


def part_one(vault: Vault, count: int, repeats: int) -> None:
    vaultkit.sqla.configure(vault)
    plain = emails(count)
    field = ColumnSpec("identity", "members", "email").field(vault)
    column = ColumnSpec("identity", "members", "email")
    blobs = [field.encrypt(v) for v in plain]
    blob_array = pa.array(blobs, type=pa.binary())
    plain_array = pa.array(plain, type=pa.string())
    index_type = Member.__table__.c.email_index.type

    # Equal before timed.
    assert decrypt_array(vault, blob_array, column=column).to_pylist() == plain
    assert [
        field.decrypt(b) for b in encrypt_array(vault, plain_array, column=column).to_pylist()
    ] == plain
    assert blind_index_array(vault, plain_array, index=Member.email_index).to_pylist() == [
        index_type.digest(v) for v in plain
    ]
    hashes, _ = hash_audience_array(plain_array, platform="google")
    assert hashes.to_pylist() == [
        render(MemberRecord(email=v), platform="google").values[0]  # type: ignore[index]
        for v in plain
    ]

    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        (
            "decrypt",
            lambda: [field.decrypt(b) for b in blobs],
            lambda: decrypt_array(vault, blob_array, column=column),
        ),
        (
            "encrypt",
            lambda: [field.encrypt(v) for v in plain],
            lambda: encrypt_array(vault, plain_array, column=column),
        ),
        (
            "blind index",
            lambda: [index_type.digest(v) for v in plain],
            lambda: blind_index_array(vault, plain_array, index=Member.email_index),
        ),
        (
            "audience hash (Google)",
            lambda: [render(MemberRecord(email=v), platform="google") for v in plain],
            lambda: hash_audience_array(plain_array, platform="google"),
        ),
    ]
    print(
        f"\n<!-- part 1: {count:,} values x {repeats} repeats, one thread; load before {load()} -->"
    )
    print(
        "| operation | scalar API µs/value | kernel µs/value | kernel / scalar | "
        "kernel values/s per core (median) | spread of repeats (values/s) |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for name, scalar, kernel in cases:
        # Interleaved, so that a burst of load from elsewhere hits both alike.
        scalar_t: list[float] = []
        kernel_t: list[float] = []
        for _ in range(repeats):
            scalar_t += timed(scalar, 1)
            kernel_t += timed(kernel, 1)
        s = statistics.median(scalar_t) / count * 1e6
        k = statistics.median(kernel_t) / count * 1e6
        rates = [count / t for t in kernel_t]
        print(
            f"| {name} | {s:.2f} | {k:.2f} | {k / s:.2f}x | "
            f"{statistics.median(rates):,.0f} | {spread(rates)} |"
        )
    print(f"<!-- part 1 done; load after {load()} -->")
    vaultkit.sqla.configure(None)


def _generate(index: int, rows: int, run: int) -> Any:
    # ``run`` only makes each repeat's graph keys new: a cluster still holding a finished
    # repeat's results would otherwise hand them back without computing.
    import pandas as pd

    return pd.DataFrame({"email": pd.array(emails(rows, index * rows), dtype="string[pyarrow]")})


def _accepted(frame: Any) -> int:
    return int(frame["hash"].notna().sum())


def _count(frame: Any) -> int:
    return len(frame)


def _cpu_seconds() -> float:
    return time.process_time()


def _worker_cpu(client: Any) -> float:
    """CPU seconds the worker processes have used so far (user + system, all threads)."""
    return sum(client.run(_cpu_seconds).values())


def part_two(total: int, partitions: int, repeats: int) -> None:
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client, LocalCluster

    from vaultkit.integrations.dask import map_partitions

    rows = total // partitions
    meta = pd.DataFrame({"email": pd.array([], dtype="string[pyarrow]")})
    print(
        f"\n<!-- part 2: {rows * partitions:,} e-mails in {partitions} partitions x {repeats} "
        f"repeats; load before {load()} -->"
    )
    print(
        "| Dask workers | rows/s (median) | spread of repeats (rows/s) | vs 1 worker | "
        "rows per worker CPU-second | generation alone, rows/s | load (1/5/15 min) after |"
    )
    print("|---:|---:|---|---:|---:|---:|---|")
    single = None
    for workers in (1, 2):
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):

            def build(run: int, parts: int = partitions, size: int = rows) -> tuple[Any, Any]:
                frame = dd.from_map(_generate, range(parts), rows=size, run=run, meta=meta)
                ops = [audience_hash("email", platform="google", target="hash")]
                job = map_partitions(frame, None, ops).map_partitions(
                    _accepted, meta=(None, "int64")
                )
                return job.sum(), frame.map_partitions(_count, meta=(None, "int64")).sum()

            job, _ = build(0, workers, 10_000)  # warm-up: imports on every worker
            assert int(job.compute()) == workers * 10_000  # every address is valid
            gen: list[float] = []
            rates: list[float] = []
            cpu: list[float] = []
            for run in range(1, repeats + 1):
                job, baseline = build(run)
                gen += [rows * partitions / t for t in timed(baseline.compute, 1)]
                before = _worker_cpu(client)
                rates += [rows * partitions / t for t in timed(job.compute, 1)]
                cpu.append(rows * partitions / (_worker_cpu(client) - before))
            client.close()
        median = statistics.median(rates)
        single = single or median
        print(
            f"| {workers} | {median:,.0f} | {spread(rates)} | {median / single:.2f}x | "
            f"{statistics.median(cpu):,.0f} | {statistics.median(gen):,.0f} | {load()} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--values", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dask-rows", type=int, default=10_000_000)
    parser.add_argument("--partitions", type=int, default=40)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--skip-kernels", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.values, args.repeats, args.dask_rows = 20_000, 2, 1_000_000
    print(
        f"<!-- Python {sys.version.split()[0]}, pyarrow {pa.__version__}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->"
    )
    directory = Path(tempfile.mkdtemp(prefix="vaultkit-arrow-bench-"))
    (directory / "vaultkit.toml").write_text(CONFIG.replace("TMP", str(directory)))
    os.environ.setdefault("VAULTKIT_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    spec = VaultSpec(directory / "vaultkit.toml")
    if not args.skip_kernels:
        part_one(spec.open(), args.values, args.repeats)
        close_vaults()
    if not args.skip_dask:
        part_two(args.dask_rows, args.partitions, max(2, args.repeats // 2 + 1))


if __name__ == "__main__":
    main()
