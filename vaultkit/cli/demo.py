"""``vaultkit demo``: encrypt a few member records on SQLite and show what lies at rest.

Needs no server and no set-up: a keyring, its master key and an SQLite database are made in a
temporary directory (kept with ``--dir``). The members are invented.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from vaultkit import KeyDomain, Vault
from vaultkit.errors import DecryptionError
from vaultkit.keys.local import LocalKeyProvider, _decode_master_key, generate_master_key
from vaultkit.store import SQLKeyStore

MEMBERS: list[dict[str, Any]] = [
    {
        "name": "Jan Peeters",
        "email": "jan.peeters@example.be",
        "birth_date": dt.date(1978, 3, 14),
        "iban": "BE71 0961 2345 6769",
        "monthly_premium": Decimal("42.50"),
        "health_note": "Type 2 diabetes, follow-up with coach every 3 months.",
    },
    {
        "name": "Marie Dubois",
        "email": "marie.dubois@example.be",
        "birth_date": dt.date(1991, 11, 2),
        "iban": "BE68 5390 0754 7034",
        "monthly_premium": Decimal("38.00"),
        "health_note": "Physiotherapy after knee surgery, 12 sessions approved.",
    },
    {
        "name": "Sanne de Vries",
        "email": "sanne.devries@example.nl",
        "birth_date": dt.date(1985, 6, 30),
        "iban": "NL91 ABNA 0417 1643 00",
        "monthly_premium": Decimal("51.25"),
        "health_note": "Teleconsultation: seasonal allergy, antihistamine advised.",
    },
]

#: column -> key domain. The medical note sits in its own domain, under its own KEK.
COLUMNS: dict[str, str] = {
    "name": "identity",
    "email": "identity",
    "birth_date": "identity",
    "iban": "financial",
    "monthly_premium": "financial",
    "health_note": "medical",
}


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="encrypt demo members on SQLite and show them at rest")
    demo.add_argument("--dir", type=Path, help="keep the keyring and database here")
    demo.set_defaults(handler=run)


def _hex(blob: bytes) -> str:
    """Show a stored value as its DEK id and the start of its ciphertext (never the key)."""
    return f"[DEK {blob[4:8].hex()}.. | {blob[64:74].hex()}..]"


def run(args: argparse.Namespace) -> int:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return _demo(args.dir)
    with tempfile.TemporaryDirectory(prefix="vaultkit-demo-") as tmp:
        return _demo(Path(tmp))


def _demo(workdir: Path) -> int:
    keyring = workdir / "keyring.json"
    db_url = f"sqlite:///{workdir / 'demo.db'}"
    # A throwaway master key held only in this process; a real one comes from VAULTKIT_MASTER_KEY.
    master_key = _decode_master_key(generate_master_key(), source="demo key")
    provider = LocalKeyProvider(keyring, master_key=master_key)
    engine = sa.create_engine(db_url)
    vault = Vault(
        provider=provider,
        store=SQLKeyStore(engine),
        domains=[KeyDomain("identity"), KeyDomain("financial"), KeyDomain("medical")],
    )
    metadata = sa.MetaData()
    members = sa.Table(
        "members",
        metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        *(sa.Column(name, sa.LargeBinary) for name in COLUMNS),
    )
    metadata.create_all(engine)
    ciphers = {
        name: vault.field(domain, table="members", column=name, row_bound=True)
        for name, domain in COLUMNS.items()
    }

    print(f"vaultkit demo in {workdir}")
    print(f"  keyring  {keyring.name}  (KEKs for: {', '.join(provider.domains())})")
    print(
        f"  database {Path(db_url.removeprefix('sqlite:///')).name}  (table members; DEKs in vaultkit_data_keys)"
    )
    print()

    with engine.begin() as conn:
        for member in MEMBERS:
            member_id = str(uuid.uuid4())
            values: dict[str, str | bytes] = {"id": member_id}
            values.update({n: ciphers[n].encrypt(member[n], row=member_id) for n in COLUMNS})
            conn.execute(members.insert().values(**values))

    with engine.connect() as conn:
        rows = conn.execute(sa.select(members).order_by(members.c.id)).all()

    print("At rest -- what a database dump or a backup shows (DEK id and ciphertext, in hex):")
    for row in rows:
        print(
            f"  {row.id[:8]}  "
            + "  ".join(f"{n}={_hex(getattr(row, n))}" for n in ("name", "iban", "health_note"))
        )
    sizes = ", ".join(f"{n} {len(getattr(rows[0], n))} B" for n in COLUMNS)
    print(f"  sizes of the first row: {sizes}")
    print()
    print("Decrypted through the vault (each value bound to its domain, table, column and row):")
    for row in rows:
        plain = {n: str(ciphers[n].decrypt(getattr(row, n), row=row.id)) for n in COLUMNS}
        print(
            f"  {row.id[:8]}  {plain['name']:<15} {plain['email']:<25} born {plain['birth_date']}  "
            f"premium {plain['monthly_premium']}  note: {plain['health_note'][:28]}..."
        )
    print()

    # Copy Jan's medical note into Marie's row: it no longer authenticates.
    first, second = rows[0], rows[1]
    try:
        ciphers["health_note"].decrypt(first.health_note, row=second.id)
        outcome = "decrypted (this must never happen)"
    except DecryptionError as exc:
        outcome = f"refused: DecryptionError('{exc}')"
    print(f"A medical note copied into another member's row: {outcome}")

    print()
    print("Data keys in the key store (wrapped; no key material is shown):")
    for record in vault.store.records():
        print(
            f"  DEK {record.dek_id.hex()[:12]}...  domain {record.domain:<9}  "
            f"KEK {record.kek_id.rsplit(':', 1)[-1]} v{record.kek_version}  state {record.state.value}"
        )
    vault.close()
    engine.dispose()
    return 0
