"""Search indexes on PostgreSQL: lookup latency at 1 million rows against plaintext indexes in the same
run, the query plans, and the write overhead of each index kind.

Run: ``python benchmarks/bench_search.py`` (about 15 minutes on two cores; ``--rows 20000
--lookups 20 --repeat 1`` for a smoke run). Needs the PostgreSQL server of
``VAULTKIT_TEST_POSTGRES_DSN`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``); works in
a schema of its own, dropped at the end. Prints Markdown tables for docs/benchmarks.md (``--json
FILE`` also writes the figures).

Data: the synthetic Belgian/Dutch population of ``tests/_population.py`` (fixed seed), in two tables
of the same rows:

* ``vaultkit``: postal code, birth date and surname ``Encrypted``, with the indexes of docs/search.md:
  ``locator = CompoundIndex(digits(4) of the postal code, year of birth, first letter, bits=16)``,
  ``last_name_p5 = PrefixIndex(length=5, fold_name, bits=20)``, ``surname = BlindIndex(fold_name,
  partitions=4)``, ``birth_year = BucketIndex(unit="year", bits=12)`` and ``name_tokens =
  TokenIndex(bits=20)`` (a side table);
* ``plain``: the same columns in plaintext, with the B-tree expression indexes a plaintext
  application would use for the same questions (``substr(postal_code, 1, 4), extract(year ...),
  lower(substr(last_name, 1, 1))``; ``lower(last_name) text_pattern_ops``; ``lower(last_name)``;
  ``birth_date``) and a plaintext words table for the token lookups.

Lookups, the same random values for both tables (drawn from the population, fixed seed), each
through an ORM ``Session`` (``select(Model).where(...)``), so both sides build entities: identity
check (postal code + birth year + initial), surname prefix (5 letters), surname equality, a word
of the surname, one birth year. Per lookup kind: the median and 95th percentile over the lookups,
the best and worst median over ``--repeat`` rounds (the spread), rows returned, and ``EXPLAIN`` of
one lookup on each side.

Write overhead: Core executemany of ``--write-rows`` rows into fresh tables: plaintext, encrypted
columns without indexes, then the encrypted columns with one index of each kind; best of
``--repeat``, per row and as a ratio to the plaintext insert.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vaultkit.sqla
from tests._population import population
from vaultkit import Vault
from vaultkit.search import digits, first_char, fold_name, name_tokens, year
from vaultkit.sqla import (
    BlindIndex,
    BucketIndex,
    CompoundIndex,
    Encrypted,
    Part,
    PrefixIndex,
    TokenIndex,
)
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

DSN = os.environ.get(
    "VAULTKIT_TEST_POSTGRES_DSN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "search_members"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    postal_code: Mapped[str] = mapped_column(Encrypted(sa.String(8), domain="identity"))
    birth_date: Mapped[dt.date] = mapped_column(Encrypted(sa.Date, domain="identity"))
    last_name: Mapped[str] = mapped_column(Encrypted(sa.String(100), domain="identity"))
    locator = CompoundIndex(
        Part("postal_code", digits(4)),
        Part("birth_date", year),
        Part("last_name", first_char),
        bits=16,
    )
    last_name_p5 = PrefixIndex("last_name", length=5, normalize=fold_name, bits=20)
    surname = BlindIndex("last_name", normalize=fold_name, partitions=4)
    birth_year = BucketIndex("birth_date", unit="year", bits=12)
    name_tokens = TokenIndex("last_name", bits=20)


class Plain(Base):
    __tablename__ = "search_plain"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    postal_code: Mapped[str] = mapped_column(sa.String(8))
    birth_date: Mapped[dt.date] = mapped_column(sa.Date, index=True)
    last_name: Mapped[str] = mapped_column(sa.String(100))


PLAIN_LOCATOR = (
    sa.func.substr(Plain.__table__.c.postal_code, 1, 4),
    sa.extract("year", Plain.__table__.c.birth_date),
    sa.func.lower(sa.func.substr(Plain.__table__.c.last_name, 1, 1)),
)
sa.Index("ix_search_plain_locator", *PLAIN_LOCATOR)
# The prefix index of the plaintext table: lower(last_name) text_pattern_ops (created in _load; an
# expression index's operator class is not spelled through sa.Index portably).
PLAIN_PREFIX_DDL = (
    "CREATE INDEX ix_search_plain_prefix ON search_plain (lower(last_name) text_pattern_ops)"
)
PLAIN_WORDS = sa.Table(
    "search_plain_words",
    Base.metadata,
    sa.Column("id", sa.Integer, sa.ForeignKey("search_plain.id"), primary_key=True),
    sa.Column("word", sa.String(100), primary_key=True),
    sa.Index("ix_search_plain_words_word", "word"),
)


# -- the lookups --------------------------------------------------------------------------------

#: name, vaultkit predicate, plaintext predicate, which members can be looked up this way.
Lookup = tuple[str, Callable[[Any], Any], Callable[[Any], Any], Callable[[Any], bool]]


def _lookups() -> list[Lookup]:
    plain = Plain.__table__.c

    def locator_vk(m: Any) -> Any:
        return Member.locator.match(
            {"postal_code": m.postal_code, "birth_date": m.birth_date, "last_name": m.last_name}
        )

    def locator_plain(m: Any) -> Any:
        return sa.and_(
            PLAIN_LOCATOR[0] == m.postal_code[:4],
            PLAIN_LOCATOR[1] == m.birth_date.year,
            PLAIN_LOCATOR[2] == m.last_name[:1].lower(),
        )

    def prefix(m: Any) -> str:
        return (fold_name(m.last_name) or "")[:5]

    def word(m: Any) -> str:
        words = name_tokens(m.last_name)
        return words[-1]

    def birth_year(m: Any) -> tuple[dt.date, dt.date]:
        return dt.date(m.birth_date.year, 1, 1), dt.date(m.birth_date.year, 12, 31)

    def anyone(m: Any) -> bool:
        return True

    return [
        ("identity check (postal code + birth year + initial)", locator_vk, locator_plain, anyone),
        (
            "surname prefix (5 letters)",
            lambda m: Member.last_name_p5.startswith(prefix(m)),
            lambda m: sa.func.lower(plain.last_name).like(m.last_name[:5].lower() + "%"),
            lambda m: len(prefix(m)) == 5,
        ),
        (
            "surname equality (partitions=4)",
            lambda m: Member.surname == m.last_name,
            lambda m: sa.func.lower(plain.last_name) == m.last_name.lower(),
            anyone,
        ),
        (
            "word of the surname (token index)",
            lambda m: Member.name_tokens.contains(word(m)),
            lambda m: plain.id.in_(
                sa.select(PLAIN_WORDS.c.id).where(PLAIN_WORDS.c.word == word(m))
            ),
            anyone,
        ),
        (
            "one birth year (bucket index)",
            lambda m: Member.birth_year.between(*birth_year(m)),
            lambda m: plain.birth_date.between(*birth_year(m)),
            anyone,
        ),
    ]


# -- helpers ------------------------------------------------------------------------------------


@contextmanager
def _schema(dsn: str) -> Iterator[sa.Engine]:
    admin = sa.create_engine(dsn)
    name = f"vk_bench_search_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    url = admin.url.update_query_dict({"options": f"-csearch_path={name}"})
    engine = sa.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def _rows(members: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "postal_code": m.postal_code,
            "birth_date": m.birth_date,
            "last_name": m.last_name,
        }
        for i, m in enumerate(members, start=1)
    ]


def _load(engine: sa.Engine, members: list[Any], *, chunk: int = 10_000) -> dict[str, float]:
    rows = _rows(members)
    timings = {}
    started = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, len(rows), chunk):
            conn.execute(sa.insert(Plain.__table__), rows[start : start + chunk])
        words = [{"id": r["id"], "word": w} for r in rows for w in name_tokens(r["last_name"])]
        for start in range(0, len(words), chunk):
            conn.execute(sa.insert(PLAIN_WORDS), words[start : start + chunk])
        conn.exec_driver_sql(PLAIN_PREFIX_DDL)
    timings["plain"] = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(rows), chunk):
        with engine.begin() as conn:
            conn.execute(sa.insert(Member.__table__), rows[start : start + chunk])
        if start and start % 200_000 == 0:
            print(f"  loaded {start} rows", file=sys.stderr)
    timings["vaultkit"] = time.perf_counter() - started
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    return timings


class _Capture:
    """The last SQL statement and parameters sent to the server (to EXPLAIN them)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statement = ""
        self.parameters: Any = None
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.statement, self.parameters = statement, parameters


def _explain(engine: sa.Engine, capture: _Capture) -> list[str]:
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + capture.statement,
            capture.parameters,
        )
        return [row[0] for row in plan]


def _time_lookups(
    engine: sa.Engine, model: Any, build: Callable[[Any], Any], sample: list[Any]
) -> tuple[list[float], int]:
    times = []
    returned = 0
    with Session(engine) as session:
        for member in sample:
            query = sa.select(model).where(build(member))
            started = time.perf_counter()
            found = session.scalars(query).all()
            times.append(time.perf_counter() - started)
            returned += len(found)
            session.expunge_all()
    return times, returned


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- write overhead -----------------------------------------------------------------------------


def _write_variants() -> dict[str, sa.Table]:
    meta = sa.MetaData()

    def encrypted(name: str, *extra: Any) -> sa.Table:
        class_base = type("WBase", (DeclarativeBase,), {"metadata": meta})
        attrs: dict[str, Any] = {
            "__tablename__": name,
            "__annotations__": {"id": Mapped[int]},
            "id": mapped_column(primary_key=True, autoincrement=False),
            "postal_code": mapped_column(Encrypted(sa.String(8), domain="identity")),
            "birth_date": mapped_column(Encrypted(sa.Date, domain="identity")),
            "last_name": mapped_column(Encrypted(sa.String(100), domain="identity")),
        }
        for key, value in extra:
            attrs[key] = value
        return type(name, (class_base,), attrs).__table__  # type: ignore[no-any-return]

    plain = sa.Table(
        "w_plain",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("postal_code", sa.String(8)),
        sa.Column("birth_date", sa.Date),
        sa.Column("last_name", sa.String(100)),
    )
    return {
        "plaintext": plain,
        "encrypted, no index": encrypted("w_encrypted"),
        "+ BlindIndex (256 bits)": encrypted(
            "w_blind", ("surname", BlindIndex("last_name", normalize=fold_name))
        ),
        "+ BlindIndex (partitions=4)": encrypted(
            "w_parts", ("surname", BlindIndex("last_name", normalize=fold_name, partitions=4))
        ),
        "+ CompoundIndex (3 parts)": encrypted(
            "w_compound",
            (
                "locator",
                CompoundIndex(
                    Part("postal_code", digits(4)),
                    Part("birth_date", year),
                    Part("last_name", first_char),
                    bits=16,
                ),
            ),
        ),
        "+ PrefixIndex": encrypted(
            "w_prefix",
            ("p5", PrefixIndex("last_name", length=5, normalize=fold_name, bits=20)),
        ),
        "+ BucketIndex": encrypted(
            "w_bucket", ("birth_year", BucketIndex("birth_date", unit="year", bits=12))
        ),
        "+ TokenIndex (side table)": encrypted(
            "w_tokens", ("name_tokens", TokenIndex("last_name", bits=20))
        ),
    }


def _write_overhead(
    engine: sa.Engine, members: list[Any], repeat: int
) -> list[tuple[str, float, float, float]]:
    variants = _write_variants()
    meta = next(iter(variants.values())).metadata
    rows = _rows(members)
    results = []
    best: dict[str, list[float]] = {name: [] for name in variants}
    for number in range(repeat + 1):
        for name, table in variants.items():
            meta.drop_all(engine)
            meta.create_all(engine)
            started = time.perf_counter()
            with engine.begin() as conn:
                for start in range(0, len(rows), 5000):
                    conn.execute(sa.insert(table), rows[start : start + 5000])
            if number:  # the first round warms up (keys made, statements compiled)
                best[name].append(time.perf_counter() - started)
    meta.drop_all(engine)
    base = min(best["plaintext"])
    for name, times in best.items():
        results.append(
            (name, min(times) / len(rows) * 1e6, max(times) / len(rows) * 1e6, min(times) / base)
        )
    return results


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200, help="lookups per kind and round")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write-rows", type=int, default=20_000)
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--writes-only", action="store_true", help="measure the write overhead only"
    )
    args = parser.parse_args(argv)

    sa.orm.configure_mappers()
    print(f"# bench_search: {args.rows} rows, {args.lookups} lookups x {args.repeat} rounds")
    print(
        f"python {platform.python_version()}, SQLAlchemy {sa.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    started = time.perf_counter()
    members = population(args.rows, seed=2026)
    print(f"population: {time.perf_counter() - started:.1f} s")
    vault = Vault(
        provider=InMemoryKeyProvider(["identity"]), store=MemoryKeyStore(), domains=["identity"]
    )
    vaultkit.sqla.configure(vault)
    figures: dict[str, Any] = {"rows": args.rows, "lookups": args.lookups, "repeat": args.repeat}
    try:
        with _schema(args.dsn) as engine:
            with engine.connect() as conn:
                figures["server"] = conn.exec_driver_sql("show server_version").scalar()
            print(f"PostgreSQL {figures['server']}")
            write = _write_overhead(engine, members[: args.write_rows], args.repeat)
            figures["write"] = write
            print(
                f"\n## Write overhead ({args.write_rows} rows, Core executemany, best of {args.repeat})\n"
            )
            print("| table | us per row (best) | us per row (worst) | x plaintext |")
            print("|---|---:|---:|---:|")
            for name, best, worst, ratio in write:
                print(f"| {name} | {best:.1f} | {worst:.1f} | {ratio:.2f} |")
            sys.stdout.flush()
            if args.writes_only:
                return 0

            Base.metadata.create_all(engine)
            load = _load(engine, members)
            figures["load"] = load
            print(
                f"\nload {args.rows} rows: plaintext {load['plain']:.0f} s (with its words table), "
                f"vaultkit {load['vaultkit']:.0f} s (encrypting, 5 in-row indexes, the token table)"
            )
            with engine.connect() as conn:
                terms = conn.execute(
                    sa.select(sa.func.count()).select_from(Member.name_tokens.table)
                ).scalar_one()
            print(f"token table: {terms} terms")
            rng = random.Random(7)
            capture = _Capture(engine)
            results = []
            print(f"\n## Lookup latency ({args.rows} rows, ORM, ms)\n")
            print(
                "| lookup | vaultkit median | p95 | spread of medians | plaintext median | p95 "
                "| spread | ratio | rows per lookup (vaultkit / plain) |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            plans: list[tuple[str, list[str], list[str]]] = []
            for name, vk, plain, eligible in _lookups():
                lookups = 20 if "birth year" in name else args.lookups
                candidates = [m for m in members[:200_000] if eligible(m)]
                medians_vk, medians_plain, p95_vk, p95_plain = [], [], [], []
                rows_vk = rows_plain = 0
                for _ in range(args.repeat):
                    sample = rng.sample(candidates, lookups)
                    t_vk, rows_vk = _time_lookups(engine, Member, vk, sample)
                    t_plain, rows_plain = _time_lookups(engine, Plain, plain, sample)
                    medians_vk.append(statistics.median(t_vk) * 1e3)
                    medians_plain.append(statistics.median(t_plain) * 1e3)
                    p95_vk.append(_percentile(t_vk, 0.95) * 1e3)
                    p95_plain.append(_percentile(t_plain, 0.95) * 1e3)
                one = sample[0]
                _time_lookups(engine, Member, vk, [one])
                plan_vk = _explain(engine, capture)
                _time_lookups(engine, Plain, plain, [one])
                plan_plain = _explain(engine, capture)
                plans.append((name, plan_vk, plan_plain))
                m_vk, m_plain = statistics.median(medians_vk), statistics.median(medians_plain)
                result = {
                    "lookup": name,
                    "vaultkit_median_ms": m_vk,
                    "vaultkit_p95_ms": statistics.median(p95_vk),
                    "vaultkit_spread_ms": [min(medians_vk), max(medians_vk)],
                    "plain_median_ms": m_plain,
                    "plain_p95_ms": statistics.median(p95_plain),
                    "plain_spread_ms": [min(medians_plain), max(medians_plain)],
                    "rows_per_lookup": rows_vk / lookups,
                    "plain_rows_per_lookup": rows_plain / lookups,
                }
                results.append(result)
                print(
                    f"| {name} | {m_vk:.2f} | {result['vaultkit_p95_ms']:.2f} | "
                    f"{min(medians_vk):.2f}-{max(medians_vk):.2f} | {m_plain:.2f} | "
                    f"{result['plain_p95_ms']:.2f} | {min(medians_plain):.2f}-{max(medians_plain):.2f} "
                    f"| {m_vk / m_plain:.1f}x | {rows_vk / lookups:.1f} / {rows_plain / lookups:.1f} |"
                )
                sys.stdout.flush()
            figures["lookups_ms"] = results
            figures["plans"] = plans
            print("\n## Query plans (EXPLAIN ANALYZE, one lookup each)\n")
            for name, plan_vk, plan_plain in plans:
                print(f"{name}, vaultkit:\n")
                print("```\n" + "\n".join(plan_vk) + "\n```\n")
                print(f"{name}, plaintext:\n")
                print("```\n" + "\n".join(plan_plain) + "\n```\n")
    finally:
        vaultkit.sqla.configure(None)
        vault.close()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
