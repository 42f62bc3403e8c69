"""A re-keying job's shared state: its ranges, the claims on them, and the checkpoints."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from vaultkit._ddl import create_tables
from vaultkit.rekey._table import key_text, plan_table
from vaultkit.sqla.keyset import boundaries

__all__ = [
    "CHECKPOINTS",
    "RANGES",
    "Claims",
    "Range",
    "create_job_tables",
    "cut_ranges",
    "default_job",
    "default_worker_name",
    "drop_job",
    "job_done",
    "job_tables",
    "load_checkpoint",
    "plan_job",
    "save_checkpoint",
]

RANGES: Final = "vaultkit_rekey_ranges"
CHECKPOINTS: Final = "vaultkit_rekey_checkpoints"


def default_job(table: sa.Table) -> str:
    """The job name a run takes by default: ``<table>:rekey``, ``<schema>.<table>:rekey`` for a
    table of a named schema (so tables of one name in two schemas are two jobs)."""
    return f"{table.name}:rekey" if table.schema is None else f"{table.schema}.{table.name}:rekey"


def default_worker_name() -> str:
    """A worker's name in the checkpoints by default: ``host:pid``.

    .. versionadded:: 0.1.0
    """
    return f"{socket.gethostname()}:{os.getpid()}"


def job_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The ranges and checkpoints tables of every job, in ``metadata``."""
    ranges = sa.Table(
        RANGES,
        metadata,
        sa.Column("job", sa.String(255), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("lo", sa.Text, nullable=True),  # exclusive; NULL: from the first key
        sa.Column("hi", sa.Text, nullable=True),  # inclusive; NULL: to the last key, and beyond
        sa.Column("done", sa.Boolean, nullable=False, default=False),
    )
    checkpoints = sa.Table(
        CHECKPOINTS,
        metadata,
        sa.Column("job", sa.String(255), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_key", sa.Text, nullable=True),
        sa.Column("done", sa.Boolean, nullable=False, default=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    return ranges, checkpoints


def create_job_tables(engine: sa.Engine) -> None:
    """Create the engine's tables if missing; workers starting together may race to do it."""
    meta = sa.MetaData()
    job_tables(meta)
    create_tables(engine, meta)


@dataclass
class Range:
    """One range of a job's key space: keys after ``lo`` up to ``hi`` (key text; None: open)."""

    seq: int
    lo: str | None
    hi: str | None
    finished: bool = False


class Claims:
    """Which range this worker works on; with row locks where the database has them."""

    def __init__(self, engine: sa.Engine, ranges: sa.Table, job: str) -> None:
        self._engine = engine
        self._ranges = ranges
        self._job = job
        self.locking = engine.dialect.name in ("postgresql", "mysql", "mariadb")
        self._seen: set[int] = set()

    @contextmanager
    def claim(self) -> Iterator[Range | None]:
        """Yield an unclaimed, unfinished range (or None); mark it done if the caller finished it."""
        ranges = self._ranges
        query = (
            sa.select(ranges.c.seq, ranges.c.lo, ranges.c.hi)
            .where(ranges.c.job == self._job, ranges.c.done.is_(False))
            .order_by(ranges.c.seq)
            .limit(1)
        )
        if not self.locking:
            with self._engine.connect() as conn:
                if self._seen:
                    query = query.where(ranges.c.seq.not_in(self._seen))
                found = conn.execute(query).first()
            if found is None:
                yield None
                return
            self._seen.add(found.seq)
            claimed = Range(found.seq, found.lo, found.hi)
            yield claimed
            if claimed.finished:
                with self._engine.begin() as conn:
                    conn.execute(self._mark_done(found.seq))
            return
        # The lock lives as long as this connection's transaction: a worker that dies (kill -9,
        # lost machine) loses its connection, and with it its claim.
        claimer = self._engine.connect().execution_options(isolation_level="READ COMMITTED")
        try:
            with claimer.begin():
                found = claimer.execute(query.with_for_update(skip_locked=True)).first()
                if found is None:
                    yield None
                    return
                claimed = Range(found.seq, found.lo, found.hi)
                yield claimed
                if claimed.finished:
                    claimer.execute(self._mark_done(found.seq))
        finally:
            claimer.close()

    def _mark_done(self, seq: int) -> sa.Update:
        ranges = self._ranges
        return (
            ranges.update().where(ranges.c.job == self._job, ranges.c.seq == seq).values(done=True)
        )


def cut_ranges(
    engine: sa.Engine, pk: sa.Column[Any], ranges: sa.Table, job: str, range_size: int
) -> int:
    """Cut the key space into ranges once per job (the first worker does it); return how many."""
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(ranges).where(ranges.c.job == job)
        ).scalar_one()
    if count:
        return int(count)
    with engine.connect() as conn:
        bounds = list(boundaries(conn, pk, range_size))
    edges = [None, *bounds, None]
    rows = [
        {"job": job, "seq": i, "lo": key_text(edges[i]), "hi": key_text(edges[i + 1])}
        for i in range(len(edges) - 1)
    ]
    try:
        with engine.begin() as conn:
            # Multi-row INSERTs, not an executemany: a driver pipeline that fails on a concurrent
            # worker's rows would complain again when it is torn down.
            for start in range(0, len(rows), 1000):
                chunk = [{**r, "done": False} for r in rows[start : start + 1000]]
                conn.execute(ranges.insert().values(chunk))
    except sa.exc.IntegrityError:
        pass  # another worker cut them at the same moment; use its ranges
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(ranges).where(ranges.c.job == job)
            ).scalar_one()
        )


def job_done(engine: sa.Engine, ranges: sa.Table, job: str) -> bool:
    """Whether every range of ``job`` is done."""
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(ranges)
            .where(ranges.c.job == job, ranges.c.done.is_(False))
        ).scalar_one()
    return int(left) == 0


def save_checkpoint(
    conn: sa.Connection,
    checkpoints: sa.Table,
    job: str,
    seq: int,
    last: Any,
    *,
    done: bool,
    worker: str,
) -> None:
    """Record the last key of range ``seq`` written (in the batch's own transaction)."""
    values = {
        "last_key": key_text(last),
        "done": done,
        "worker": worker[:255],
        "updated_at": dt.datetime.now(dt.UTC),
    }
    where = (checkpoints.c.job == job, checkpoints.c.seq == seq)
    if conn.execute(checkpoints.update().where(*where).values(**values)).rowcount == 0:
        conn.execute(checkpoints.insert().values(job=job, seq=seq, **values))


def load_checkpoint(engine: sa.Engine, checkpoints: sa.Table, job: str, seq: int) -> Any:
    """The saved checkpoint of range ``seq`` (``last_key`` and ``done``), or None."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(checkpoints.c.last_key, checkpoints.c.done).where(
                checkpoints.c.job == job, checkpoints.c.seq == seq
            )
        ).first()


def plan_job(
    engine: sa.Engine, table: sa.Table, *, job: str | None = None, range_size: int = 20_000
) -> tuple[int, int]:
    """Cut the job's ranges if no worker has yet; return how many there are and how many are open.

    :func:`rekey_table` does this itself; call it first to size a progress display or to cut the
    ranges before starting workers on several machines.
    """
    pk, _ = plan_table(table, None)
    job = job or default_job(table)
    ranges, _checkpoints = job_tables(sa.MetaData())
    create_job_tables(engine)
    total = cut_ranges(engine, pk, ranges, job, range_size)
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(ranges)
            .where(ranges.c.job == job, ranges.c.done.is_(False))
        ).scalar_one()
    return total, int(left)


def drop_job(engine: sa.Engine, job: str) -> None:
    """Forget a job's ranges and checkpoints (to run a finished job's name again from the start)."""
    ranges, checkpoints = job_tables(sa.MetaData())
    with engine.begin() as conn:
        for table in (checkpoints, ranges):
            if sa.inspect(conn).has_table(table.name):
                conn.execute(table.delete().where(table.c.job == job))
