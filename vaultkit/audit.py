"""A tamper-evident audit log: append-only events in an HMAC hash chain.

Each event's ``mac`` is ``HMAC-SHA256(audit key, previous mac || canonical event)``, where the
canonical event is its sequence number and fields as sorted, compact JSON; the first event chains
from 32 zero bytes. A one-row head table records the last sequence number and mac. Appends lock the
head row in their transaction, so concurrent writers never fork the chain. The audit key is a
random 256-bit key wrapped by a domain's KEK in the key store (``Vault`` provides it), so without
the provider nobody can forge a link.

:meth:`AuditLog.verify` recomputes the chain and names the first broken link: an edited event
(its mac no longer matches), a deleted one (a gap in sequence numbers or a wrong previous mac), a
reordered pair, an inserted forgery, or a truncated tail (the head no longer matches the last
event). Events never hold a value, only who, why, where and which rows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from vaultkit.errors import AuditError

__all__ = ["AuditEvent", "AuditLog", "VerifyResult"]

GENESIS: Final = bytes(32)
_HEAD_ID: Final = 1


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event: who (principal) did what (action) to which cells, why (purpose), and when."""

    principal: str
    purpose: str | None
    action: str  # "decrypt", "denied" or "write"
    domain: str
    table: str | None
    column: str | None
    rows: tuple[str, ...]
    count: int
    dek_id: str | None
    at: dt.datetime

    def canonical(self, seq: int) -> bytes:
        body = {
            "seq": seq,
            "principal": self.principal,
            "purpose": self.purpose,
            "action": self.action,
            "domain": self.domain,
            "table": self.table,
            "column": self.column,
            "rows": list(self.rows),
            "count": self.count,
            "dek_id": self.dek_id,
            "at": self.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :meth:`AuditLog.verify`."""

    ok: bool
    events: int
    first_broken: int | None = None
    reason: str = ""


class AuditLog:
    """The audit tables ``vaultkit_audit_events`` and ``vaultkit_audit_head`` in an SQL database.

    Args:
        engine: where the tables live (by default the key store's database).
        mac: the keyed HMAC of the chain: ``mac(data) -> 32 bytes``.
        table_prefix: prefix of the two table names.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, engine: sa.Engine, mac: Callable[[bytes], bytes], *, table_prefix: str = "vaultkit_"
    ) -> None:
        self.engine = engine
        self._mac = mac
        self._metadata = sa.MetaData()
        self.events = sa.Table(
            f"{table_prefix}audit_events",
            self._metadata,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("principal", sa.String(255), nullable=False),
            sa.Column("purpose", sa.String(255), nullable=True),
            sa.Column("action", sa.String(16), nullable=False),
            sa.Column("domain", sa.String(64), nullable=False),
            sa.Column("table_name", sa.String(255), nullable=True),
            sa.Column("column_name", sa.String(255), nullable=True),
            sa.Column("row_keys", sa.Text, nullable=False),
            sa.Column("count", sa.Integer, nullable=False),
            sa.Column("dek_id", sa.String(32), nullable=True),
            sa.Column("prev_mac", sa.String(64), nullable=False),
            sa.Column("mac", sa.String(64), nullable=False),
        )
        self.head = sa.Table(
            f"{table_prefix}audit_head",
            self._metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("mac", sa.String(64), nullable=False),
        )
        try:
            self._metadata.create_all(engine, checkfirst=True)
            with engine.begin() as conn:
                if conn.execute(sa.select(self.head.c.id)).first() is None:
                    conn.execute(self.head.insert().values(id=_HEAD_ID, seq=0, mac=GENESIS.hex()))
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot open the audit log: {type(exc).__name__}") from None

    def append(self, events: Sequence[AuditEvent]) -> None:
        """Append events in one transaction; raises AuditError if they could not be written."""
        if not events:
            return
        try:
            with self.engine.begin() as conn:
                # Take the head's row lock first (SQLite: the database write lock), so that
                # concurrent writers append one after the other and never fork the chain.
                conn.execute(
                    self.head.update().where(self.head.c.id == _HEAD_ID).values(seq=self.head.c.seq)
                )
                head = conn.execute(
                    sa.select(self.head.c.seq, self.head.c.mac)
                    .where(self.head.c.id == _HEAD_ID)
                    .with_for_update()
                ).one()
                seq, prev = int(head.seq), bytes.fromhex(head.mac)
                rows = []
                for event in events:
                    seq += 1
                    mac = self._mac(prev + event.canonical(seq))
                    rows.append(
                        {
                            "seq": seq,
                            "at": event.at,
                            "principal": event.principal,
                            "purpose": event.purpose,
                            "action": event.action,
                            "domain": event.domain,
                            "table_name": event.table,
                            "column_name": event.column,
                            "row_keys": json.dumps(list(event.rows), separators=(",", ":")),
                            "count": event.count,
                            "dek_id": event.dek_id,
                            "prev_mac": prev.hex(),
                            "mac": mac.hex(),
                        }
                    )
                    prev = mac
                conn.execute(self.events.insert(), rows)
                conn.execute(
                    self.head.update()
                    .where(self.head.c.id == _HEAD_ID)
                    .values(seq=seq, mac=prev.hex())
                )
        except SQLAlchemyError as exc:
            raise AuditError(f"an audit event could not be written: {type(exc).__name__}") from None

    def read(self) -> Iterator[tuple[int, AuditEvent, str, str]]:
        """Yield ``(seq, event, prev_mac, mac)`` in sequence order."""
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(self.events).order_by(self.events.c.seq)):
                m = row._mapping
                at = m["at"] if m["at"].tzinfo is not None else m["at"].replace(tzinfo=dt.UTC)
                event = AuditEvent(
                    principal=m["principal"],
                    purpose=m["purpose"],
                    action=m["action"],
                    domain=m["domain"],
                    table=m["table_name"],
                    column=m["column_name"],
                    rows=tuple(json.loads(m["row_keys"])),
                    count=int(m["count"]),
                    dek_id=m["dek_id"],
                    at=at,
                )
                yield int(m["seq"]), event, m["prev_mac"], m["mac"]

    def verify(self) -> VerifyResult:
        """Recompute the chain; name the first broken link, if any."""
        expected_seq, prev, count = 1, GENESIS, 0
        try:
            for seq, event, prev_mac, mac in self.read():
                count += 1
                if seq != expected_seq:
                    return VerifyResult(
                        False, count, expected_seq, f"event {expected_seq} is missing"
                    )
                if prev_mac != prev.hex():
                    return VerifyResult(
                        False, count, seq, f"event {seq} does not follow event {seq - 1}"
                    )
                if mac != self._mac(prev + event.canonical(seq)).hex():
                    return VerifyResult(False, count, seq, f"event {seq} was altered or forged")
                prev, expected_seq = bytes.fromhex(mac), seq + 1
            with self.engine.connect() as conn:
                head = conn.execute(sa.select(self.head.c.seq, self.head.c.mac)).one()
        except (SQLAlchemyError, ValueError, KeyError) as exc:
            raise AuditError(f"the audit log could not be read: {type(exc).__name__}") from None
        if int(head.seq) != count or head.mac != prev.hex():
            return VerifyResult(
                False,
                count,
                count + 1,
                f"the log ends at event {count} but recorded {head.seq} events",
            )
        return VerifyResult(True, count)

    def __repr__(self) -> str:
        return f"AuditLog({self.engine.url.render_as_string(hide_password=True)!r})"
