"""Processes (here: threads with connections of their own) that start at the same moment and each
create vaultkit's tables: none may fail because another created a table first.

Seen in CI on MariaDB before the fix: ``vaultkit rekey --workers 2`` exited 10 with error 1050
("table already exists") from an audit log opened by both workers at once.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from vaultkit._ddl import create_tables
from vaultkit.audit import AuditLog
from vaultkit.rekey._jobs import create_job_tables

STARTERS = 6  # simultaneous starters per round
ROUNDS = 4  # fresh tables per round, so each round races again


def _race(url: str, start: Callable[[sa.Engine], Any]) -> list[BaseException]:
    """Run ``start`` in STARTERS threads released together, each with an engine of its own."""
    engines = [sa.create_engine(url) for _ in range(STARTERS)]
    for engine in engines:  # connect first, so that the threads race on DDL, not on connecting
        with engine.connect():
            pass
    barrier = threading.Barrier(STARTERS)
    errors: list[BaseException] = []

    def run(engine: sa.Engine) -> None:
        barrier.wait()
        try:
            start(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for engine in engines:
        engine.dispose()
    return errors


def _mac(data: bytes) -> bytes:
    return hmac.new(b"k" * 32, data, hashlib.sha256).digest()


def _tables(prefix: str) -> sa.MetaData:
    meta = sa.MetaData()
    for name in ("a", "b", "c"):
        sa.Table(
            f"{prefix}{name}",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("v", sa.String(20), index=True),
        )
    return meta


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL schema or MariaDB database (SQLite serialises DDL behind its file lock:
    the race is a server's)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.mark.parametrize("what", ["create_tables", "audit log", "rekey job tables"])
def test_starters_racing_to_create_tables_all_start(server_url: str, what: str) -> None:
    database_url = server_url
    for round_ in range(ROUNDS):
        prefix = f"race{round_}_"
        if what == "create_tables":
            meta = _tables(prefix)
            errors = _race(database_url, lambda engine, meta=meta: create_tables(engine, meta))
        elif what == "audit log":
            errors = _race(
                database_url,
                lambda engine, prefix=prefix: AuditLog(engine, mac=_mac, table_prefix=prefix),
            )
        else:
            errors = _race(database_url, create_job_tables)
            engine = sa.create_engine(database_url)
            meta = sa.MetaData()
            meta.reflect(engine)
            meta.drop_all(engine)  # the fresh database holds only these: the next round races again
            engine.dispose()
        assert errors == [], [type(e).__name__ + ": " + str(e)[:200] for e in errors]


def test_a_failure_that_is_not_a_race_is_raised(database_url: str) -> None:
    """A CREATE that fails for another reason (here: a schema that does not exist) still raises."""
    meta = sa.MetaData()
    sa.Table("t", meta, sa.Column("id", sa.Integer, primary_key=True), schema="no_such_schema")
    engine = sa.create_engine(database_url)
    try:
        with pytest.raises(sa.exc.SQLAlchemyError):
            create_tables(engine, meta)
    finally:
        engine.dispose()
