"""Data-subject exports (issue 17): what ``vault.export_subject`` costs, beside the same SELECTs.

Both commands build the six-table model of the tests (tests/unit/subjects/_models.py: members,
policies, claims, coaching chats, call recordings, newsletter subscriptions linked by e-mail) in a
PostgreSQL schema of their own (data, key store and audit log; dropped afterwards), then measure,
``--repeat`` times, in the same run:

* the export: ``vault.export_subject(engine, member, "access")`` as a DPO with the medical grant
  (so every domain is read, and the medical reads audited), by a fresh vault each time (a cold
  key cache, as a ``vaultkit subject export`` process has), with the provider calls counted
  (``CountingKeyProvider``) and the key-store and data queries counted;
* the baseline: the very SELECT statements that export sent to the data database (recorded with
  their parameters), sent again on a plain connection, fetching every row: the same reads
  without decryption, JSON or the key store.

``one [--rows 10000]``
    one member with that many rows across the six tables (1 member, 50 policies, claims,
    chats, recordings and newsletters in about 50 / 40 / 9 / 0.5 %).
``batch [--members 1000]``
    that many members of 12 rows each, exported one after the other by one vault (a batch run
    answering many requests): total time and per member, provider calls for the whole batch.

``--database`` defaults to ``VAULTKIT_TEST_POSTGRES_DSN`` (``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
Run from the repository root: ``PYTHONPATH=. python benchmarks/bench_subjects.py one``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

DSN = os.environ.get(
    "VAULTKIT_TEST_POSTGRES_DSN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def _schema(dsn: str) -> Iterator[str]:
    """A URL whose connections live in a fresh schema, dropped afterwards."""
    admin = sa.create_engine(dsn)
    name = f"bench_subjects_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield admin.url.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


_INNER: list[Any] = []


def _vault(url: str) -> tuple[Any, Any]:
    """A vault over the schema's key store and audit log, and its call-counting provider."""
    from tests.unit.subjects import _models as m
    from vaultkit import Vault
    from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

    if not _INNER:
        _INNER.append(InMemoryKeyProvider([d.name for d in m.DOMAINS]))
    provider = CountingKeyProvider(_INNER[0])
    vault = Vault(provider=provider, store=url, domains=m.DOMAINS, audit=url)
    return vault, provider


class _Queries:
    """Counts the statements sent on an engine and keeps the data SELECTs with their parameters."""

    def __init__(self, engine: sa.Engine, *, keep: bool) -> None:
        self.engine = engine
        self.keep = keep
        self.count = 0
        self.selects: list[tuple[str, Any]] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.count += 1
        if self.keep and statement.lstrip().upper().startswith("SELECT"):
            self.selects.append((statement, parameters))

    def __enter__(self) -> _Queries:
        sa.event.listen(self.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self)


def _export(url: str, data: sa.Engine, members: list[str]) -> dict[str, Any]:
    """Export ``members`` with one fresh vault; time, counts and the data SELECTs it sent."""
    import vaultkit.sqla
    from tests.unit.subjects import _models as m
    from vaultkit import Principal
    from vaultkit.subjects import collect

    subjects = collect(m.Base.metadata)
    vault, provider = _vault(url)
    vaultkit.sqla.configure(vault)
    store_engine = vault.store.engine  # type: ignore[attr-defined]
    rows = 0
    try:
        with (
            _Queries(data, keep=True) as data_queries,
            _Queries(store_engine, keep=False) as store_queries,
        ):
            start = time.perf_counter()
            with vault.acting_as(
                Principal("dpo", grants={"medical"}), purpose="DataSubjectRequest"
            ):
                for member in members:
                    export = vault.export_subject(data, member, "access", subjects=subjects)
                    if export.status != "complete":
                        raise SystemExit(f"export incomplete: {export.incomplete_sources}")
                    rows += export.row_count
            seconds = time.perf_counter() - start
    finally:
        vaultkit.sqla.configure(None)
        vault.close()
    # The data SELECTs only (the store shares the database: its statements are on its own engine).
    return {
        "seconds": seconds,
        "rows": rows,
        "provider_calls": dict(provider.calls),
        "data_queries": data_queries.count,
        "store_queries": store_queries.count,
        "selects": data_queries.selects,
    }


def _baseline(data: sa.Engine, selects: list[tuple[str, Any]]) -> tuple[float, int]:
    """The recorded SELECTs again on a plain connection, every row fetched: no decryption."""
    fetched = 0
    start = time.perf_counter()
    with data.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        for statement, parameters in selects:
            cursor.execute(statement, parameters)
            fetched += len(cursor.fetchall())
        cursor.close()
    return time.perf_counter() - start, fetched


def _deks(data: sa.Engine, members: list[str]) -> int:
    """Distinct DEKs under the members' encrypted values (what bounds the provider calls)."""
    from tests.unit.subjects import _models as m
    from vaultkit.core import wire
    from vaultkit.sqla import Encrypted

    found: set[bytes] = set()
    with data.connect() as conn:
        for table in m.Base.metadata.sorted_tables:
            for column in table.columns:
                if isinstance(column.type, Encrypted):
                    query = sa.select(sa.type_coerce(column, sa.LargeBinary))
                    for blob in conn.execute(query).scalars():
                        if blob is not None:
                            found.add(wire.parse_value(bytes(blob)).dek_id)
    return len(found)


def _populate(url: str, data: sa.Engine, plans: list[dict[str, Any]]) -> int:
    import vaultkit.sqla
    from tests.unit.subjects import _models as m

    m.Base.metadata.create_all(data)
    vault, _ = _vault(url)
    vaultkit.sqla.configure(vault)
    total = 0
    try:
        with Session(data) as session:
            for plan in plans:
                total += sum(m.populate(session, **plan).values())
                session.commit()
    finally:
        vaultkit.sqla.configure(None)
        vault.close()
    return total


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


def _report(title: str, runs: list[dict[str, Any]], bases: list[float], per: int) -> None:
    seconds = [r["seconds"] for r in runs]
    ratio = [r["seconds"] / b for r, b in zip(runs, bases, strict=True)]
    calls = runs[-1]["provider_calls"]
    print(title)
    print("| | median (min-max) | per member |")
    print("|---|---:|---:|")
    print(
        f"| export_subject (access, medical grant, cold vault) | {_spread(seconds)} | "
        f"{statistics.median(seconds) / per * 1000:.1f} ms |"
    )
    print(
        f"| the same SELECTs, no decryption | {_spread(bases)} | "
        f"{statistics.median(bases) / per * 1000:.1f} ms |"
    )
    print(
        f"export / SELECTs: median {statistics.median(ratio):.1f}x "
        f"({min(ratio):.1f}-{max(ratio):.1f}) over {len(runs)} runs"
    )
    print(
        f"per run: {runs[-1]['rows']} rows exported, {len(runs[-1]['selects'])} data SELECTs, "
        f"{runs[-1]['store_queries']} key-store and audit statements, provider calls "
        f"{sum(calls.values())} ({', '.join(f'{k} {v}' for k, v in sorted(calls.items()))})"
    )


def one(dsn: str, rows: int, repeat: int) -> None:
    policies = 50
    rest = rows - 1 - policies
    claims = round(rest * 0.5 / policies)
    chats = round(rest * 0.4)
    recordings = round(rest * 0.09)
    newsletters = max(1, rest - claims * policies - chats - recordings)
    plan = {
        "member_id": "m-100017",
        "policies": policies,
        "claims_per_policy": claims,
        "chats": chats,
        "recordings": recordings,
        "newsletters": newsletters,
    }
    with _schema(dsn) as url:
        data = sa.create_engine(url)
        try:
            start = time.perf_counter()
            total = _populate(url, data, [plan])
            print(f"populated {total} rows of one member in {time.perf_counter() - start:.1f} s")
            print(f"distinct DEKs under the member's values: {_deks(data, ['m-100017'])}")
            runs, bases = [], []
            for _ in range(repeat):
                run = _export(url, data, ["m-100017"])
                base, fetched = _baseline(data, run["selects"])
                runs.append(run)
                bases.append(base)
            print(f"baseline rows fetched per run: {fetched}")
            _report(
                f"one member, {total} rows across 6 tables, PostgreSQL "
                f"({data.dialect.server_version_info})",
                runs,
                bases,
                1,
            )
        finally:
            data.dispose()


def batch(dsn: str, members: int, repeat: int) -> None:
    ids = [f"m-{i:06d}" for i in range(members)]
    plans = [{"member_id": mid, "first_id": 1 + 100 * i} for i, mid in enumerate(ids)]
    with _schema(dsn) as url:
        data = sa.create_engine(url)
        try:
            start = time.perf_counter()
            total = _populate(url, data, plans)
            print(
                f"populated {total} rows of {members} members in "
                f"{time.perf_counter() - start:.1f} s"
            )
            print(f"distinct DEKs under the members' values: {_deks(data, ids)}")
            runs, bases = [], []
            for _ in range(repeat):
                run = _export(url, data, ids)
                base, _fetched = _baseline(data, run["selects"])
                runs.append(run)
                bases.append(base)
            _report(
                f"{members} members of {total // members} rows, one after the other by one "
                "vault, PostgreSQL",
                runs,
                bases,
                members,
            )
        finally:
            data.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("one", "batch"):
        sub = commands.add_parser(name)
        sub.add_argument("--database", default=DSN, help="PostgreSQL URL (a schema is made)")
        sub.add_argument("--repeat", type=int, default=5)
        if name == "one":
            sub.add_argument("--rows", type=int, default=10_000)
        else:
            sub.add_argument("--members", type=int, default=1000)
    args = parser.parse_args()
    if args.command == "one":
        one(args.database, args.rows, args.repeat)
    else:
        batch(args.database, args.members, args.repeat)


if __name__ == "__main__":
    main()
