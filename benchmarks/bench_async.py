"""A burst of concurrent AsyncSession reads on asyncpg: burst time and event-loop lag, audit on/off.

Run: ``python benchmarks/bench_async.py`` (PostgreSQL from ``VAULTKIT_TEST_POSTGRES_DSN`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/test``; a fresh database is created and dropped).
Prints a Markdown table for docs/benchmarks.md ("asyncio").

Each burst is ``--tasks`` tasks at once, each under its own principal (with the medical grant),
each loading ``--rows`` entities of one encrypted column through its own ``AsyncSession`` and
then writing the vault's audit batches with ``await vault.aflush_audit()``, as a request would.
Two tables in the same run, alternating: one in an audited, restricted domain (``medical``: each
task's first read of a batch writes an audit event before the value is handed out), one in a
domain without audit (``identity``). A ticker task sleeps 1 ms at a time during the burst; its
worst oversleep is the loop's maximum lag. The key store and audit log are given as the
``AsyncEngine``; vaultkit opens its own psycopg engine for them. The first burst of each kind
starts with an empty DEK cache (key-store read and unwrap in a worker thread) and is reported
apart; the others are warm. Median and range over ``--repeat`` warm bursts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, Vault, acting_as
from vaultkit.sqla import Encrypted
from vaultkit.testing import InMemoryKeyProvider

DSN = os.environ.get(
    "VAULTKIT_TEST_POSTGRES_DSN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


class Base(DeclarativeBase):
    pass


class AuditedNote(Base):
    __tablename__ = "audited_notes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    text: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="medical"))


class PlainNote(Base):
    __tablename__ = "plain_notes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    text: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="identity"))


async def flush(vault: Vault) -> None:
    """The request's audit flush: ``aflush_audit``, or inline on releases without it."""
    aflush = getattr(vault, "aflush_audit", None)
    if aflush is None:
        vault.flush_audit()
    else:
        await aflush()


async def burst(engine: AsyncEngine, vault: Vault, model: Any, tasks: int, burst_no: int) -> Any:
    """One burst; returns (seconds, max loop lag in seconds)."""

    async def task(i: int) -> int:
        with acting_as(Principal(f"b{burst_no}-t{i}", grants={"medical"}), purpose="care"):
            async with AsyncSession(engine) as session:
                rows = (await session.scalars(sa.select(model))).all()
            # The request reads its values in the coroutine, as an endpoint would.
            texts = [row.text for row in rows]
            await flush(vault)
            return len(texts)

    stop = asyncio.Event()
    lags: list[float] = []

    async def tick() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - start - 0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.005)
    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(task(i) for i in range(tasks))), timeout=120)
    elapsed = time.perf_counter() - start
    stop.set()
    await ticker
    return elapsed, max(lags)


async def main(args: argparse.Namespace) -> None:
    if args.access_inline:
        from vaultkit.sqla import _hooks

        _hooks._open_ahead = lambda rows: None  # type: ignore[assignment]
    admin = sa.create_engine(DSN, isolation_level="AUTOCOMMIT")
    name = f"vk_bench_async_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(drivername="postgresql+asyncpg", database=name)
    engine = create_async_engine(url)
    # --store sync-url: the set-up that worked before async engines were accepted.
    store: Any = engine
    if args.store == "sync-url":
        store = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        provider = InMemoryKeyProvider(["identity", "medical"])
        domains = ["identity", KeyDomain("medical", restricted=True, audited=True)]
        vault = await asyncio.to_thread(Vault, provider=provider, store=store, domains=domains)
        vaultkit.sqla.configure(vault)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        with acting_as(Principal("writer", grants={"medical"}), purpose="intake"):
            async with AsyncSession(engine) as session:
                for model in (AuditedNote, PlainNote):
                    session.add_all(model(text=f"note {n} " + "x" * 150) for n in range(args.rows))
                await session.commit()
            await flush(vault)
        await asyncio.to_thread(vault.close)
        # A fresh vault: its first bursts start with an empty DEK cache.
        vault = await asyncio.to_thread(Vault, provider=provider, store=store, domains=domains)
        vaultkit.sqla.configure(vault)
        results: dict[str, list[tuple[float, float]]] = {"audited": [], "plain": []}
        cold: dict[str, tuple[float, float]] = {}
        for n in range(args.repeat + 1):
            for kind, model in (("audited", AuditedNote), ("plain", PlainNote)):
                figures = await burst(engine, vault, model, args.tasks, 2 * n + (kind == "plain"))
                if n == 0:
                    cold[kind] = figures
                else:
                    results[kind].append(figures)
        await asyncio.to_thread(vault.close)
    finally:
        await engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

    print(
        f"{args.tasks} tasks x {args.rows} entities, asyncpg, PostgreSQL on 127.0.0.1, "
        f"store={args.store}{', access inline' if args.access_inline else ''}, "
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}; "
        f"median (min-max) of {args.repeat} warm bursts\n"
    )
    print("| domain | burst (ms) | max loop lag (ms) | cold burst (ms) | cold max lag (ms) |")
    print("|---|---:|---:|---:|---:|")
    for kind, label in (("plain", "identity, not audited"), ("audited", "medical, audited")):
        times = [t * 1000 for t, _ in results[kind]]
        lags = [lag * 1000 for _, lag in results[kind]]
        print(
            f"| {label} | {statistics.median(times):.1f} ({min(times):.1f}-{max(times):.1f}) "
            f"| {statistics.median(lags):.1f} ({min(lags):.1f}-{max(lags):.1f}) "
            f"| {cold[kind][0] * 1000:.1f} | {cold[kind][1] * 1000:.1f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument(
        "--access-inline",
        action="store_true",
        help="baseline: don't open audited values when the statement runs (the attribute read "
        "in the coroutine then decrypts, and writes the audit, on the loop's thread)",
    )
    parser.add_argument(
        "--store",
        choices=["async-engine", "sync-url"],
        default="async-engine",
        help="key store and audit log: the AsyncEngine, or a psycopg URL of the same database",
    )
    asyncio.run(main(parser.parse_args()))
