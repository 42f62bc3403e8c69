"""ORM and Core throughput of encrypted columns against plain columns, the AES-GCM floor and a peer.

Run: ``python benchmarks/bench_orm.py`` (a few minutes; ``--rows 2000 --repeat 1`` for a smoke
run). Prints Markdown tables for docs/benchmarks.md.

A model of 5 columns, 3 of them encrypted (an e-mail of about 24 characters, a phone number of
about 15, a 200-byte note), in four variants measured in the same run:

* plain: the same columns as ``String``/``Text``: the baseline every ratio is against;
* floor: a minimal ``TypeDecorator`` that only calls ``AESGCM`` (random nonce prepended, no
  associated data, no key management) on a binary type without ``LargeBinary``'s bind processor;
* vaultkit: ``Encrypted(...)`` with every safety feature on (key commitment, cell-bound associated
  data, DEK budget, typed encoding);
* sqlalchemy-utils: ``StringEncryptedType(String, key, AesGcmEngine)``.

Operations: ORM insert (``add_all`` + commit), ORM select (all entities), ORM round trip (both),
Core insert (executemany) and Core select, on an SQLite file and in memory. Best of ``--repeat``.
With ``--statements``: the ORM-enabled statements instead (``insert(Member).returning(Member)``
with a list of dicts, a bulk ``update(Member)`` by primary key, and ``update().where().values()``
synchronised into loaded objects), e.g. ``--statements --kinds plain vaultkit --rows 10000``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import string
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

import vaultkit.sqla
from vaultkit import Vault
from vaultkit.sqla import Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

warnings.filterwarnings("ignore", module="sqlalchemy_utils")
from sqlalchemy_utils import StringEncryptedType  # noqa: E402
from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine  # noqa: E402

FLOOR_KEY = AESGCM(os.urandom(32))


#: The clock every timing uses (``--clock``).
CLOCK: list[Callable[[], float]] = [time.perf_counter]


class _Bytes(sa.LargeBinary):
    def bind_processor(self, dialect: Any) -> None:
        return None


class FloorAESGCM(TypeDecorator[str]):
    """The least an AES-GCM column can do: nonce || AESGCM(value), nothing else."""

    impl = _Bytes
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        if value is None:
            return None
        nonce = os.urandom(12)
        return nonce + FLOOR_KEY.encrypt(nonce, value.encode(), None)

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        return FLOOR_KEY.decrypt(value[:12], value[12:], None).decode()


def make_model(kind: str) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    def col(inner: Any, name: str) -> Any:
        if kind == "plain":
            return mapped_column(inner)
        if kind == "floor":
            return mapped_column(FloorAESGCM())
        if kind == "vaultkit":
            return mapped_column(Encrypted(inner, domain="identity"))
        if kind == "sqlalchemy-utils":
            return mapped_column(StringEncryptedType(sa.String, "k" * 32, AesGcmEngine))
        raise ValueError(kind)

    class Member(Base):
        __tablename__ = "members"
        id: Mapped[int] = mapped_column(primary_key=True)
        member_no: Mapped[int] = mapped_column()
        email: Mapped[str] = col(sa.String(320), "email")
        phone: Mapped[str] = col(sa.String(32), "phone")
        note: Mapped[str] = col(sa.Text, "note")

    return Member


def rows(n: int) -> list[dict[str, Any]]:
    rnd = random.Random(7)
    letters = string.ascii_lowercase
    return [
        {
            "id": i + 1,
            "member_no": 100000 + i,
            "email": "".join(rnd.choices(letters, k=12)) + "@example.be",
            "phone": "+32 470 " + "".join(rnd.choices(string.digits, k=6)),
            "note": "".join(rnd.choices(letters + " ", k=200)),
        }
        for i in range(n)
    ]


def timed(fn: Callable[[], None]) -> float:
    # Start each measurement from a collected heap, so that one variant does not pay for the
    # garbage of the previous one.
    gc.collect()
    start = CLOCK[0]()
    fn()
    return CLOCK[0]() - start


def run_statements(model: type[Any], url: str, data: list[dict[str, Any]]) -> dict[str, float]:
    """Time the ORM-enabled statements once on a fresh database: INSERT..RETURNING and UPDATE."""
    engine = sa.create_engine(url)
    model.metadata.create_all(engine)
    results: dict[str, float] = {}
    changed = [{"id": r["id"], "note": r["note"][::-1]} for r in data]

    def insert_returning() -> None:
        with Session(engine) as s:
            got = s.scalars(sa.insert(model).returning(model), data).all()
            assert len(got) == len(data) and got[-1].note == data[-1]["note"]
            s.commit()

    def update_by_key() -> None:
        with Session(engine) as s:
            s.execute(sa.update(model), changed)
            s.commit()

    def update_values() -> None:
        with Session(engine) as s:
            # All rows loaded, so that synchronize_session has objects to update.
            loaded = s.scalars(sa.select(model)).all()
            s.execute(sa.update(model).where(model.id > 0).values(note="note after the update"))
            assert loaded[0].note == "note after the update"
            s.commit()

    results["ORM insert().returning()"] = timed(insert_returning)
    results["ORM bulk update() by key"] = timed(update_by_key)
    results["ORM update().values(), synchronised"] = timed(update_values)
    engine.dispose()
    return results


def run_once(model: type[Any], url: str, data: list[dict[str, Any]]) -> dict[str, float]:
    """Time each operation once on a fresh database."""
    table = model.__table__
    engine = sa.create_engine(url)
    model.metadata.create_all(engine)
    results: dict[str, float] = {}

    def orm_insert() -> None:
        with Session(engine) as s:
            s.add_all([model(**r) for r in data])
            s.commit()

    def orm_select() -> None:
        with Session(engine) as s:
            got = s.scalars(sa.select(model)).all()
            assert len(got) == len(data) and got[0].note

    def core_insert() -> None:
        with engine.begin() as conn:
            conn.execute(table.insert(), data)

    def core_select() -> None:
        with engine.connect() as conn:
            got = conn.execute(sa.select(table)).all()
            assert len(got) == len(data)

    results["ORM insert"] = timed(orm_insert)
    results["ORM select"] = timed(orm_select)
    results["ORM round trip"] = results["ORM insert"] + results["ORM select"]
    # Core operations are short: take the best of three within the run.
    inserts, selects = [], []
    for _ in range(3):
        with engine.begin() as conn:
            conn.execute(sa.delete(table))
        inserts.append(timed(core_insert))
        selects.append(timed(core_select))
    results["core insert"] = min(inserts)
    results["core select"] = min(selects)
    results["core round trip"] = results["core insert"] + results["core select"]
    engine.dispose()
    return results


def measure(
    kind: str,
    url_factory: Callable[[], str],
    data: list[dict[str, Any]],
    repeat: int,
    statements: bool = False,
) -> dict[str, float]:
    """Best time of each operation over ``repeat`` fresh databases."""
    model = make_model(kind)
    run = run_statements if statements else run_once
    best: dict[str, float] = {}
    for _ in range(repeat):
        for key, value in run(model, url_factory(), data).items():
            best[key] = min(best.get(key, value), value)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["plain", "floor", "vaultkit", "sqlalchemy-utils"],
        help="variants to measure (plain always first: it is the baseline)",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="measure the ORM-enabled statements (insert().returning(), update()) instead",
    )
    parser.add_argument("--targets", nargs="+", default=["SQLite file", "SQLite memory"])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared machine)",
    )
    args = parser.parse_args()
    if args.clock == "cpu":
        CLOCK[0] = time.process_time

    vault = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"])
    vaultkit.sqla.configure(vault)
    data = rows(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="vaultkit-bench-"))
    counter = iter(range(10**6))
    factories = {
        "SQLite file": lambda: f"sqlite:///{tmp / f'b{next(counter)}.db'}",
        "SQLite memory": lambda: "sqlite://",
    }
    targets = {name: factories[name] for name in args.targets}
    kinds = ["plain", *(k for k in args.kinds if k != "plain")]
    figures: dict[str, dict[str, dict[str, float]]] = {}
    print(
        f"<!-- Python {platform.python_version()}, SQLAlchemy {sa.__version__}, {args.rows} rows, "
        f"best of {args.repeat} -->"
    )
    for target, url_factory in targets.items():
        results = {
            kind: measure(kind, url_factory, data, args.repeat, args.statements) for kind in kinds
        }
        figures[target] = results
        plain = results["plain"]
        peer = "sqlalchemy-utils" in results and "vaultkit" in results
        print(f"\n**{target}**, {args.rows:,} rows (seconds, and ratio to plain):\n")
        print(
            "| operation | "
            + " | ".join(kinds)
            + (" | vaultkit vs sqlalchemy-utils |" if peer else " |")
        )
        print("|---|" + "---:|" * (len(kinds) + peer))
        for op in plain:
            cells = [f"{plain[op]:.2f}"]
            for kind in kinds[1:]:
                cells.append(f"{results[kind][op]:.2f} ({results[kind][op] / plain[op]:.2f}x)")
            line = f"| {op} | " + " | ".join(cells) + " |"
            if peer:
                speedup = results["sqlalchemy-utils"][op] / results["vaultkit"][op]
                line += f" {speedup:.2f}x faster |"
            print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    vault.close()


if __name__ == "__main__":
    main()
