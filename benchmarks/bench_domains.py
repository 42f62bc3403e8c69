"""Cost of a restricted, audited domain: a 10,000-row ORM read with a grant, against the same read
in an unaudited, unrestricted domain, measured in the same run.

Run: ``python benchmarks/bench_domains.py``. Best of ``--repeat``. SQLite files (application data, and
key store with audit log); batches of up to 5,000 row keys per event (the default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, Vault
from vaultkit.keys import LocalKeyProvider
from vaultkit.sqla import Encrypted

#: The clock every timing uses (``--clock``).
CLOCK: list[Callable[[], float]] = [time.perf_counter]


class Base(DeclarativeBase):
    pass


class MedicalNote(Base):
    __tablename__ = "medical_notes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    note: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="medical", row_key="id"))


class WellnessNote(Base):
    __tablename__ = "wellness_notes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    note: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="wellness", row_key="id"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the times to this file")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared machine)",
    )
    args = parser.parse_args()
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    tmp = Path(tempfile.mkdtemp(prefix="vaultkit-domains-bench-"))
    url = f"sqlite:///{tmp / 'app.db'}"
    # With SQLite the key store and audit log live in their own file: SQLite locks a whole
    # database for writing, and the key store writes while the application's flush is open.
    vault = Vault(
        provider=LocalKeyProvider(tmp / "keyring.json", master_key=bytes(32)),
        store=f"sqlite:///{tmp / 'keys.db'}",
        domains=[KeyDomain("medical", restricted=True, audited=True), KeyDomain("wellness")],
    )
    vaultkit.sqla.configure(vault)
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    coach = Principal("coach-17", grants={"medical"})
    with vault.acting_as(coach, purpose="load"), Session(engine) as s:
        s.add_all([MedicalNote(note="x" * 200) for _ in range(args.rows)])
        s.add_all([WellnessNote(note="x" * 200) for _ in range(args.rows)])
        s.commit()

    def read(model: type[Base]) -> float:
        start = CLOCK[0]()
        with vault.acting_as(coach, purpose="review"), Session(engine) as s:
            rows = s.scalars(sa.select(model)).all()
            # Every value is read: restricted values are decrypted on access, not on load.
            notes = [r.note for r in rows]  # type: ignore[attr-defined]
            assert len(notes) == args.rows and notes[0] == "x" * 200
        return CLOCK[0]() - start

    audited, plain = [], []
    for _ in range(args.repeat):
        plain.append(read(WellnessNote))
        audited.append(read(MedicalNote))
    assert vault.audit_log is not None
    result = vault.audit_log.verify()
    print(
        f"| {args.rows:,}-row ORM read | unaudited domain | restricted + audited domain, with grant | ratio |"
    )
    print("|---|---:|---:|---:|")
    print(
        f"| best of {args.repeat} | {min(plain) * 1000:.0f} ms | {min(audited) * 1000:.0f} ms | {min(audited) / min(plain):.2f}x |"
    )
    print(
        f"\naudit log: {result.events} events for {args.repeat * args.rows + args.rows:,} medical reads and writes, chain intact: {result.ok}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"plain": plain, "audited": audited}))
    vaultkit.sqla.configure(None)
    vault.close()
    engine.dispose()


if __name__ == "__main__":
    main()
