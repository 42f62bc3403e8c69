"""``vaultkit demo``: a member model on SQLite, encrypted at rest, looked up through a blind index.

Needs no server and no set-up: a keyring, its master key and an SQLite database are made in a
temporary directory (kept with ``--dir``). The members are invented.

The medical notes are under a key per member (a subject-scoped domain) and the teleconsultation
chats under a key per hour kept 72 hours (a bucket-scoped domain): the demo erases one member by
destroying their key, shows a chat past its retention reading as erased, and prints the retention
report (docs/lifecycle.md).
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
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, Retention, Vault
from vaultkit.audiences import COLUMNS, AudienceReport, MemberRecord, Platform, hash_records
from vaultkit.errors import DecryptionError, QueryError
from vaultkit.keys.local import LocalKeyProvider, decode_master_key, generate_master_key
from vaultkit.sqla import BlindIndex, Encrypted, count_plaintext


class _Base(DeclarativeBase):
    pass


class Member(_Base):
    """The demo's member: identity, financial and medical data in three key domains."""

    __tablename__ = "members"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    member_no: Mapped[int] = mapped_column(index=True)  # plain: picks the member's key
    name: Mapped[str] = mapped_column(Encrypted(sa.String(200), domain="identity"))
    email: Mapped[str] = mapped_column(Encrypted(sa.String(320), domain="identity"))
    email_index = BlindIndex("email", normalize=str.lower)
    birth_date: Mapped[dt.date] = mapped_column(Encrypted(sa.Date, domain="identity"))
    iban: Mapped[str] = mapped_column(Encrypted(sa.String(34), domain="financial"))
    monthly_premium: Mapped[Decimal] = mapped_column(
        Encrypted(sa.Numeric(8, 2), domain="financial")
    )
    # Under the member's own key: erasing the member destroys it; an erased note reads as None.
    health_note: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, domain="medical", row_key="id", subject="member_no", on_erased="null")
    )


class Chat(_Base):
    """A teleconsultation chat message: under the key of the hour it was written, kept 72 hours."""

    __tablename__ = "chats"
    id: Mapped[int] = mapped_column(primary_key=True)
    member_no: Mapped[int] = mapped_column()
    body: Mapped[str | None] = mapped_column(Encrypted(sa.Text, domain="chats", on_erased="null"))


def _chat_domain() -> KeyDomain:
    return KeyDomain(
        "chats",
        dek_scope="bucket",
        bucket=dt.timedelta(hours=1),
        retention=Retention("PT72H", after="capture"),
    )


INTAKE = Principal("onboarding-service")
CLAIMS = Principal("claims-handler-3")
COACH = Principal("coach-17", grants={"medical"})
DPO = Principal("dpo-office")

MEMBERS: list[dict[str, Any]] = [
    {
        "member_no": 100017,
        "name": "Jan Peeters",
        "email": "jan.peeters@example.be",
        "birth_date": dt.date(1978, 3, 14),
        "iban": "BE71 0961 2345 6769",
        "monthly_premium": Decimal("42.50"),
        "health_note": "Type 2 diabetes, follow-up with coach every 3 months.",
    },
    {
        "member_no": 100018,
        "name": "Marie Dubois",
        "email": "marie.dubois@example.be",
        "birth_date": dt.date(1991, 11, 2),
        "iban": "BE68 5390 0754 7034",
        "monthly_premium": Decimal("38.00"),
        "health_note": "Physiotherapy after knee surgery, 12 sessions approved.",
    },
    {
        "member_no": 100019,
        "name": "Sanne de Vries",
        "email": "sanne.devries@example.nl",
        "birth_date": dt.date(1985, 6, 30),
        "iban": "NL91 ABNA 0417 1643 00",
        "monthly_premium": Decimal("51.25"),
        "health_note": "Teleconsultation: seasonal allergy, antihistamine advised.",
    },
]


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="encrypt demo members on SQLite and show them at rest")
    demo.add_argument("--dir", type=Path, help="keep the keyring and database here")
    demo.set_defaults(handler=run)


def _hex(blob: bytes | None) -> str:
    """Show a stored value as its DEK id and the start of its ciphertext (never a key)."""
    if blob is None:
        return "NULL"
    return f"[DEK {blob[4:8].hex()}.. | {blob[64:72].hex()}..]"


def run(args: argparse.Namespace) -> int:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return _demo(args.dir)
    with tempfile.TemporaryDirectory(prefix="vaultkit-demo-") as tmp:
        return _demo(Path(tmp))


def _demo(workdir: Path) -> int:
    keyring = workdir / "keyring.json"
    # A throwaway master key held only in this process; a real one comes from VAULTKIT_MASTER_KEY.
    master_key = decode_master_key(generate_master_key(), source="demo key")
    provider = LocalKeyProvider(keyring, master_key=master_key)
    engine = sa.create_engine(f"sqlite:///{workdir / 'demo.db'}", hide_parameters=True)
    # The medical domain is the functional unit's: restricted to principals with the grant, and
    # every access logged in a hash-chained audit log. On SQLite the key store and audit log get a
    # file of their own (SQLite locks a whole database for writing).
    # Medical notes are under a key per member (erasure destroys it); chats under a key per hour,
    # destroyed 72 hours after the hour ends.
    vault = Vault(
        provider=provider,
        store=f"sqlite:///{workdir / 'keys.db'}",
        domains=[
            KeyDomain("identity"),
            KeyDomain("financial"),
            KeyDomain("medical", restricted=True, audited=True, dek_scope="subject"),
            _chat_domain(),
        ],
    )
    vaultkit.sqla.configure(vault)
    try:
        return _show(workdir, engine, vault, provider)
    finally:
        vaultkit.sqla.configure(None)
        vault.close()
        engine.dispose()


def _audience(session_factory: Any) -> None:
    """Export the members as a Google Customer Match audience: normalised, SHA-256, in house."""
    with session_factory() as session:
        members = list(session.scalars(sa.select(Member).order_by(Member.member_no)))
        records = [
            MemberRecord(
                email=m.email,
                first_name=m.name.split(" ", 1)[0],
                last_name=m.name.split(" ", 1)[-1],
                country="BE" if m.iban.startswith("BE") else "NL",
            )
            for m in members
        ]
    report = AudienceReport()
    rows = list(hash_records(records, platform="google", default_region="BE", report=report))
    print(
        "Google Customer Match export (SHA-256 of normalised identifiers; pseudonymous, not anonymous):"
    )
    print(f"  {','.join(COLUMNS[Platform.GOOGLE])}")
    for rendered in rows:
        if rendered.values is not None:
            print("  " + ",".join(v[:12] + ".." if len(v) == 64 else v for v in rendered.values))
    print(
        f"  {report.accepted} accepted, {report.rejected} rejected; reasons: {dict(report.reasons) or 'none'}"
    )


def _old_chat(workdir: Path, engine: sa.Engine, provider: LocalKeyProvider, vault: Vault) -> None:
    """Write chat 1 as a vault whose clock reads three days and an hour ago would have."""
    past = Vault(
        provider=provider,
        store=f"sqlite:///{workdir / 'keys.db'}",
        domains=[_chat_domain()],
        clock=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(hours=73),
    )
    vaultkit.sqla.configure(past)
    try:
        with Session(engine) as session:
            session.add(Chat(id=1, member_no=100017, body="Coach: how is the new diet going?"))
            session.commit()
    finally:
        vaultkit.sqla.configure(vault)
        past.close()


def _erasure(engine: sa.Engine, vault: Vault, workdir: Path, provider: LocalKeyProvider) -> None:
    """Erase one member by destroying their key; let a chat pass its retention; print the report."""
    member_no = 100019
    print(f"Member {member_no} asks for erasure (GDPR art. 17): vault.erase_subject(...)")
    with vault.acting_as(DPO, purpose="erasure-request"):
        receipt = vault.erase_subject(
            member_no,
            reason="art17",
            request_id="REQ-2026-0107",
            cells=vaultkit.sqla.erasure_cells(_Base.metadata, engine, member_no),
        )
    # The receipt names no person: no member number, no key-store ref, no value hash.
    print(f"  receipt {receipt.request_id}: {receipt.status}, reason {receipt.reason}")
    for domain in receipt.domains:
        print(f"    domain {domain.domain}: {domain.status}, {domain.keys_destroyed} key destroyed")
    for table, rows in receipt.tables:
        print(f"    table {table}: {rows} row unreadable, its blind-index cells nulled")
    finality = receipt.finality.isoformat(timespec="seconds") if receipt.finality else "-"
    print(f"    audited: {receipt.audited}; backups final from: {finality}")
    with vault.acting_as(COACH, purpose="coaching-chat"), Session(engine) as session:
        print(
            "  The medical notes as coach-17 now (the erased note reads as None; others still read):"
        )
        for m in session.scalars(sa.select(Member).order_by(Member.member_no)):
            note = "erased (None)" if m.health_note is None else f"{m.health_note[:40]}..."
            print(f"    {m.member_no}  {m.name:<15} note: {note}")
        found = session.scalars(
            sa.select(Member).where(Member.email_index == "sanne.devries@example.nl")
        ).all()
        print(f"  Blind-index lookup of the erased member's e-mail: {len(found)} rows")
    print()

    # A chat written three days and an hour ago (by a vault whose clock says so), and one now.
    print("Teleconsultation chats: a key per hour, destroyed 72 hours after the hour ends:")
    _old_chat(workdir, engine, provider, vault)
    with Session(engine) as session:
        session.add(Chat(id=2, member_no=100017, body="Member: better, thanks!"))
        session.commit()
    with Session(engine) as session:
        for chat in session.scalars(sa.select(Chat).order_by(Chat.id)):
            age = "73 h old" if chat.id == 1 else "new     "
            body = "past retention (None)" if chat.body is None else repr(chat.body)
            print(f"  chat {chat.id} ({age}): {body}")
    with vault.acting_as(DPO, purpose="retention-sweep"):
        enforced = vault.enforce_retention()
    print(f"  vault.enforce_retention(): {enforced.keys_destroyed} key destroyed")
    print()

    report = vault.retention_report()
    print("vault.retention_report() (vaultkit retention report):")
    print(
        f"  {'domain':<10} {'keys':<8} {'retention':<22} {'live':>4} {'destroyed':>9}  violations"
    )
    for line in report.domains:
        rule = "-" if line.duration is None else f"{line.duration} after {line.after}"
        print(
            f"  {line.domain:<10} {line.scope:<8} {rule:<22} {line.live:>4} {line.destroyed:>9}"
            f"  {len(line.violations)}"
        )
    print(f"  violations: {report.violations}")
    print()


def _show(workdir: Path, engine: sa.Engine, vault: Vault, provider: LocalKeyProvider) -> int:
    _Base.metadata.create_all(engine)
    print(f"vaultkit demo in {workdir}")
    print(f"  keyring  keyring.json  (KEKs for: {', '.join(provider.domains())})")
    print("  database demo.db  (tables members, chats); keys.db (wrapped DEKs, audit log)")
    print()

    with vault.acting_as(INTAKE, purpose="member-onboarding"), Session(engine) as session:
        session.add_all([Member(**m) for m in MEMBERS])
        session.commit()

    members = _Base.metadata.tables["members"]
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(
                members.c.member_no,
                *(
                    sa.type_coerce(members.c[n], sa.LargeBinary).label(n)
                    for n in ("name", "iban", "health_note")
                ),
            ).order_by(members.c.member_no)
        ).all()
    print("At rest -- what a database dump or a backup shows (DEK id and ciphertext, in hex):")
    for row in stored:
        print(
            f"  {row.member_no}  name={_hex(row.name)}  iban={_hex(row.iban)}  health_note={_hex(row.health_note)}"
        )
    print()

    print("Through the ORM as a claims handler -- ordinary SQLAlchemy, decrypted on load;")
    print("the medical note belongs to the functional unit and stays sealed:")
    with vault.acting_as(CLAIMS, purpose="claim-2026-0042"), Session(engine) as session:
        for m in session.scalars(sa.select(Member).order_by(Member.member_no)):
            print(
                f"  {m.member_no}  {m.name:<15} {m.email:<25} born {m.birth_date}  "
                f"premium {m.monthly_premium}  note: {m.health_note!r}"
            )
    print()
    print("The same members as health coach coach-17 (grant: medical), for a coaching chat:")
    with vault.acting_as(COACH, purpose="coaching-chat"), Session(engine) as session:
        for m in session.scalars(sa.select(Member).order_by(Member.member_no)):
            print(f"  {m.member_no}  {m.name:<15} note: {str(m.health_note)[:48]}...")
    print()

    with Session(engine) as session:
        wanted = "Marie.Dubois@Example.be"
        found = session.scalars(sa.select(Member).where(Member.email_index == wanted)).one()
        print(
            f"Blind-index lookup: Member.email_index == {wanted!r} -> member {found.member_no}, {found.name}"
        )
        try:
            session.scalars(sa.select(Member).where(Member.email == wanted))
        except QueryError as exc:
            print(f"Member.email == ... raises QueryError: {exc}")
        print(f"Rows still in plaintext in members.email: {count_plaintext(session, Member.email)}")
        print()

        _audience(session_factory=lambda: Session(engine))
        print()

        _erasure(engine, vault, workdir, provider)

        # Copy Jan's medical note into Marie's row, as someone with write access to the table could.
        jan, marie = (
            session.scalars(sa.select(Member).where(Member.member_no == n)).one()
            for n in (100017, 100018)
        )
        jan_id, marie_id = jan.id, marie.id
    with engine.begin() as conn:
        note = conn.execute(
            sa.select(sa.type_coerce(members.c.health_note, sa.LargeBinary)).where(
                members.c.id == jan_id
            )
        ).scalar_one()
        conn.execute(
            sa.update(members)
            .where(members.c.id == marie_id)
            .values(health_note=sa.type_coerce(note, sa.LargeBinary))
        )
    with vault.acting_as(COACH, purpose="coaching-chat"), Session(engine) as session:
        try:
            # A restricted value is decrypted when it is read, under the reader's scope.
            _ = session.get(Member, marie_id).health_note  # type: ignore[union-attr]
            outcome = "decrypted (this must never happen)"
        except DecryptionError as exc:
            outcome = f"refused: DecryptionError('{exc}')"
    print(f"Jan's medical note copied into Marie's row: {outcome}")

    print()
    vault.flush_audit()
    audit_log = vault.audit_log
    if audit_log is not None:
        print("Audit log of the medical domain (who, why, which rows; never a value):")
        for seq, event, _prev, _mac in audit_log.read():
            noun = "facts" if event.action in ("erase", "retention") else "row keys"
            rows = f"{len(event.rows)} {noun}" if event.rows else f"no {noun}"
            where = ".".join(part for part in (event.table, event.column) if part) or "-"
            print(
                f"  #{seq:<2} {event.action:<9} {event.principal or '-':<18} "
                f"{event.purpose or '-':<18} {where}  x{event.count}  {rows}"
            )
        result = audit_log.verify()
        state = "intact" if result.ok else f"BROKEN at event {result.first_broken}: {result.reason}"
        print(f"  vaultkit audit verify: {result.events} events, hash chain {state}")

    print()
    print("Keys in the key store (wrapped; no key material is shown):")
    for record in sorted(vault.store.records(), key=lambda r: (r.domain, r.purpose)):
        kind = record.name or f"data key ({record.scope or 'process'} scope)"
        state = f"  DESTROYED ({record.destroy_reason})" if record.destroyed_at else ""
        print(
            f"  {record.purpose:<11} {record.dek_id.hex()[:12]}...  domain {record.domain:<9}  "
            f"KEK {record.kek_id.rsplit(':', 1)[-1]} v{record.kek_version}  {kind}{state}"
        )
    return 0
