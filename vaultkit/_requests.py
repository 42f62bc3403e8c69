"""The log of data-subject requests: one row per request, in the key store's database.

GDPR art. 12(3) gives a controller one month from receipt to answer a request of a data subject
(access, portability, erasure, rectification, objection), extendable by two further months "where
necessary, taking into account the complexity and number of the requests", if the subject is told
within the first month with the reasons; art. 5(2) asks the controller to be able to show that it
did. The table ``vaultkit_subject_requests`` (the key store's table prefix and schema) keeps:

``request_id``
    the ticket or case number (primary key; 1 to 128 printable characters that do not look like
    an e-mail address, a phone number, an INSZ or a BSN, the rule of ``erase_subject``);
``kind``, ``status``
    see :data:`KINDS` and :data:`STATUSES`;
``subject_ref``, ``ref_domain``
    a keyed reference of the member, never the member id: HMAC-SHA256 of the subject's canonical
    bytes under the blind-index key ``vaultkit_subject_requests.subject_ref@v1`` of
    ``ref_domain`` (``vault.blind_index_key(ref_domain, table="vaultkit_subject_requests",
    column="subject_ref")``), truncated to 128 bits, as 32 hex digits. It is not the key store's
    subject reference (another key), so the log cannot be joined with the key store's rows
    without the key; it stays after an erasure (the request is the controller's record);
``received_at``, ``due_at``, ``completed_at``
    UTC, whole seconds; ``due_at`` is ``received_at`` plus one calendar month (2027-01-31 becomes
    2027-02-28, same time of day), plus two more once extended;
``motive``, ``extension_motive``, ``extended_at``
    why a request was refused or partially granted, why and when it was extended (no personal
    data: the same rule as the request id).

It is created with :func:`vaultkit._ddl.create_tables` on first use. The public face is
:mod:`vaultkit.subjects` (``vault.requests``).
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from vaultkit._ddl import create_tables
from vaultkit._erasure import looks_personal
from vaultkit._scoped import canonical_subject
from vaultkit.errors import ConfigurationError, DomainError, KeyStoreError
from vaultkit.keys.domains import add_duration

__all__ = [
    "ANSWER_MONTHS",
    "CLOSED_STATUSES",
    "EXTENSION_MONTHS",
    "KINDS",
    "OPEN_STATUSES",
    "REF_COLUMN",
    "REF_TABLE",
    "STATUSES",
    "RequestKind",
    "RequestLog",
    "RequestStatus",
    "SubjectRequest",
]

log = logging.getLogger("vaultkit")

RequestKind = Literal["access", "portability", "erasure", "rectification", "objection"]
RequestStatus = Literal[
    "received", "in_progress", "completed", "refused", "partially_granted", "extended"
]
#: The kinds of request (GDPR art. 15, 20, 17, 16, 21).
KINDS: Final[tuple[str, ...]] = get_args(RequestKind)
#: Every status; a request is open while ``received``, ``in_progress`` or ``extended``.
STATUSES: Final[tuple[str, ...]] = get_args(RequestStatus)
OPEN_STATUSES: Final = ("received", "in_progress", "extended")
CLOSED_STATUSES: Final = ("completed", "refused", "partially_granted")
#: Art. 12(3): one month from receipt, extendable by two further months.
ANSWER_MONTHS: Final = 1
EXTENSION_MONTHS: Final = 2
#: The blind-index key the subject references are made with: ``REF_TABLE.REF_COLUMN@v1``.
REF_TABLE: Final = "vaultkit_subject_requests"
REF_COLUMN: Final = "subject_ref"
_ID_MAX: Final = 128
_MOTIVE_MAX: Final = 255
_DAY: Final = dt.timedelta(days=1)
#: What a NOT NULL time column read as NULL (a damaged row) becomes: far in the past, overdue.
_MISSING: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """A datetime read back as aware UTC (SQLite and MariaDB keep no offset; we write UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _stamp(text: dt.datetime | None) -> str | None:
    if text is None:
        return None
    return text.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class SubjectRequest:
    """One row of the request log; names no person.

    Attributes:
        request_id: the ticket or case number.
        kind: ``access``, ``portability``, ``erasure``, ``rectification`` or ``objection``.
        status: ``received``, ``in_progress`` or ``extended`` (open); ``completed``,
            ``refused`` or ``partially_granted`` (closed).
        received_at: when the request was received (UTC).
        due_at: when the answer is due (UTC): one calendar month after receipt, three once
            extended.
        completed_at: when it was answered, or ``None`` while open.
        motive: why it was refused or partially granted (or ``None``).
        extended_at: when the deadline was extended (or ``None``).
        extension_motive: why (or ``None``).
        subject_ref: the member's keyed reference (32 hex digits; not in ``repr``).
        ref_domain: the domain whose key made ``subject_ref``.

    .. versionadded:: 0.3.0
    """

    request_id: str
    kind: RequestKind
    status: RequestStatus
    received_at: dt.datetime
    due_at: dt.datetime
    completed_at: dt.datetime | None = None
    motive: str | None = None
    extended_at: dt.datetime | None = None
    extension_motive: str | None = None
    subject_ref: str = field(default="", repr=False)
    ref_domain: str = field(default="", repr=False)

    @property
    def is_open(self) -> bool:
        """Whether the request still waits for its answer."""
        return self.completed_at is None

    def days_remaining(self, at: dt.datetime | None = None) -> int:
        """Whole days left until ``due_at`` at ``at`` (default: now), rounded down.

        Negative once the request is overdue (``-1`` from the first second after ``due_at``); 0
        on its last day. For a closed request, ``days_remaining(request.completed_at)`` is the
        margin it was answered with.

        Raises:
            ConfigurationError: ``at`` is naive.
        """
        at = _aware(at)
        return math.floor((self.due_at - at) / _DAY)

    def overdue(self, at: dt.datetime | None = None) -> bool:
        """Whether the request is open past its due date at ``at`` (default: now)."""
        return self.is_open and _aware(at) > self.due_at

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values (ISO 8601 UTC times); without the subject reference."""
        return {
            "request_id": self.request_id,
            "kind": self.kind,
            "status": self.status,
            "received_at": _stamp(self.received_at),
            "due_at": _stamp(self.due_at),
            "completed_at": _stamp(self.completed_at),
            "motive": self.motive,
            "extended_at": _stamp(self.extended_at),
            "extension_motive": self.extension_motive,
        }


def _aware(at: dt.datetime | None, name: str = "at") -> dt.datetime:
    if at is None:
        return dt.datetime.now(dt.UTC)
    if not isinstance(at, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(at).__name__}")
    if at.utcoffset() is None:
        raise ConfigurationError(f"{name} must be timezone-aware (UTC, for example)")
    return at.astimezone(dt.UTC)


def check_request_id(value: object) -> str:
    """``value`` if it may be a request id: 1 to 128 printable characters, no personal identifier.

    Raises:
        TypeError: not a str.
        ConfigurationError: empty, too long, not printable, or it looks like an e-mail address,
            a phone number, an INSZ or a BSN (the value is not repeated).
    """
    return _check_text("request_id", value, _ID_MAX)


def _check_text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    if not value.strip() or len(value) > limit or not value.isprintable():
        raise ConfigurationError(f"{name} must be 1 to {limit} printable characters")
    kind = looks_personal(value)
    if kind is not None:
        raise ConfigurationError(
            f"{name} seems to hold {kind}; the request log names no person: use a ticket or "
            "case number (and no personal data in a motive)"
        )
    return value


def _kind(kind: object) -> RequestKind:
    if kind not in KINDS:
        raise ConfigurationError(f"kind must be one of {', '.join(KINDS)}, not {str(kind)[:32]!r}")
    return kind  # type: ignore[return-value]


def _second(at: dt.datetime) -> dt.datetime:
    """Whole seconds (every engine keeps them; MariaDB's DATETIME keeps no fraction)."""
    return at.replace(microsecond=0)


class RequestLog:
    """The log of data-subject requests of a vault (``vault.requests``).

    Each call is one short transaction in the key store's database; rows are
    :class:`SubjectRequest` values. ``erase_subject(request_id=...)`` and
    ``export_subject(request_id=...)`` record themselves here: the request is opened if it is not
    in the log yet (received now), and closed with the outcome.

    Args:
        engine: the database (the key store's).
        subject_ref: ``subject_ref(domain, subject) -> str``, the keyed reference of a member.
        ref_domain: the domain whose key makes the references of new rows.
        clock: the vault's wall clock (aware UTC).
        table_prefix, schema: those of the key store.

    Every method raises :class:`~vaultkit.errors.KeyStoreError` when the database fails (the
    message names the driver's error class only).

    .. versionadded:: 0.3.0
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        subject_ref: Callable[[str, object], str],
        ref_domain: str,
        clock: Callable[[], dt.datetime],
        table_prefix: str = "vaultkit_",
        schema: str | None = None,
    ) -> None:
        self.engine = engine
        self.ref_domain = ref_domain
        self._subject_ref = subject_ref
        self._clock = clock
        self._metadata = sa.MetaData(schema=schema)
        self.table = sa.Table(
            f"{table_prefix}subject_requests",
            self._metadata,
            sa.Column("request_id", sa.String(_ID_MAX), primary_key=True),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("subject_ref", sa.String(64), nullable=False),
            sa.Column("ref_domain", sa.String(64), nullable=False),
            sa.Column("status", sa.String(24), nullable=False),
            sa.Column("motive", sa.String(_MOTIVE_MAX), nullable=True),
            sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("extended_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("extension_motive", sa.String(_MOTIVE_MAX), nullable=True),
            sa.Index(f"ix_{table_prefix}subject_requests_due", "completed_at", "due_at"),
            sa.Index(f"ix_{table_prefix}subject_requests_ref", "ref_domain", "subject_ref"),
        )
        self._created = False

    # -- plumbing ---------------------------------------------------------------------------

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _fail(self, action: str, exc: SQLAlchemyError) -> KeyStoreError:
        # The driver's text may quote parameters; only its class is shown.
        return KeyStoreError(
            f"the request log at {self._where()} failed to {action}: {type(exc).__name__}"
        )

    def _ready(self) -> None:
        if self._created:
            return
        try:
            create_tables(self.engine, self._metadata)
        except SQLAlchemyError as exc:
            raise self._fail("create its table", exc) from None
        self._created = True

    def now(self) -> dt.datetime:
        """The vault's clock, in whole seconds (UTC): the time the log counts days from."""
        return _second(self._clock().astimezone(dt.UTC))

    def _at(self, at: dt.datetime | None, name: str) -> dt.datetime:
        when = self.now() if at is None else _second(_aware(at, name))
        if when > self.now() + dt.timedelta(minutes=5):
            raise ConfigurationError(f"{name} lies in the future")
        return when

    def _row(self, row: Any) -> SubjectRequest:
        return SubjectRequest(
            request_id=row.request_id,
            kind=row.kind,
            status=row.status,
            received_at=_utc(row.received_at) or _MISSING,
            due_at=_utc(row.due_at) or _MISSING,
            completed_at=_utc(row.completed_at),
            motive=row.motive,
            extended_at=_utc(row.extended_at),
            extension_motive=row.extension_motive,
            subject_ref=row.subject_ref,
            ref_domain=row.ref_domain,
        )

    def _ref(self, domain: str, subject: object) -> str:
        canonical_subject(subject)  # TypeError / ValueError for a subject of the wrong type
        return self._subject_ref(domain, subject)

    # -- reading ----------------------------------------------------------------------------

    def get(self, request_id: str) -> SubjectRequest | None:
        """The request ``request_id``, or ``None`` when it is not in the log."""
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be str, not {type(request_id).__name__}")
        self._ready()
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(self.table).where(self.table.c.request_id == request_id)
                ).first()
        except SQLAlchemyError as exc:
            raise self._fail("read a request", exc) from None
        return None if row is None else self._row(row)

    def list(
        self,
        *,
        open_only: bool = False,
        subject: object | None = None,
        kind: str | None = None,
    ) -> builtins.list[SubjectRequest]:
        """The requests in the log, earliest due first (then by request id).

        Args:
            open_only: only the requests not answered yet.
            subject: only this member's requests (matched by their keyed reference).
            kind: only requests of this kind.
        """
        self._ready()
        table = self.table
        query = sa.select(table).order_by(table.c.due_at, table.c.request_id)
        if open_only:
            query = query.where(table.c.completed_at.is_(None))
        if kind is not None:
            query = query.where(table.c.kind == _kind(kind))
        try:
            if subject is not None:
                with self.engine.connect() as conn:
                    domains = conn.execute(sa.select(table.c.ref_domain).distinct()).scalars().all()
                refs = []
                for domain in domains:
                    try:
                        ref = self._ref(domain, subject)
                    except DomainError:
                        continue  # a domain the vault no longer declares: its rows cannot match
                    refs.append(sa.and_(table.c.ref_domain == domain, table.c.subject_ref == ref))
                if not refs:
                    return []
                query = query.where(sa.or_(*refs))
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise self._fail("list the requests", exc) from None
        return [self._row(row) for row in rows]

    def __iter__(self) -> Iterator[SubjectRequest]:
        return iter(self.list())

    # -- writing ----------------------------------------------------------------------------

    def open(
        self,
        request_id: str,
        kind: str,
        subject: object,
        *,
        received: dt.datetime | None = None,
    ) -> SubjectRequest:
        """Record a new request of ``subject``, received at ``received`` (default: now).

        Args:
            request_id: the ticket or case number (see :func:`check_request_id`).
            kind: one of :data:`KINDS`.
            subject: the member id (str, int or UUID); only its keyed reference is stored.
            received: when it was received (timezone-aware; not in the future), from which the
                month to answer runs.

        Returns:
            The new row (status ``received``).

        Raises:
            ConfigurationError: the request id is refused, the kind unknown, ``received`` naive
                or in the future, or a request with this id is in the log already.
            TypeError, ValueError: the subject is not a str, int or UUID, or empty.
        """
        request_id = check_request_id(request_id)
        kind = _kind(kind)
        received_at = self._at(received, "received")
        ref = self._ref(self.ref_domain, subject)
        self._ready()
        due = add_duration(received_at, ANSWER_MONTHS, 0, 0)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    self.table.insert().values(
                        request_id=request_id,
                        kind=kind,
                        received_at=received_at,
                        subject_ref=ref,
                        ref_domain=self.ref_domain,
                        status="received",
                        due_at=due,
                    )
                )
        except IntegrityError:
            raise ConfigurationError(f"request {request_id} is in the log already") from None
        except SQLAlchemyError as exc:
            raise self._fail("record a request", exc) from None
        log.info("subject request %s (%s) received, due %s", request_id, kind, _stamp(due))
        return SubjectRequest(
            request_id,
            kind,
            "received",
            received_at,
            due,
            subject_ref=ref,
            ref_domain=self.ref_domain,
        )

    def _existing(self, request_id: str) -> SubjectRequest:
        found = self.get(check_request_id(request_id))
        if found is None:
            raise ConfigurationError(f"request {request_id} is not in the log")
        return found

    def _update(self, request: SubjectRequest, action: str, **values: object) -> SubjectRequest:
        """Compare-and-set on the row's status and completion: a concurrent change wins."""
        table = self.table
        try:
            with self.engine.begin() as conn:
                done = conn.execute(
                    table.update()
                    .where(
                        table.c.request_id == request.request_id,
                        table.c.status == request.status,
                        table.c.completed_at.is_(None),
                    )
                    .values(**values)
                ).rowcount
        except SQLAlchemyError as exc:
            raise self._fail(action, exc) from None
        if done != 1:
            raise ConfigurationError(
                f"request {request.request_id} was changed meanwhile (by another process); "
                "read it again"
            )
        return self._existing(request.request_id)

    def start(self, request_id: str) -> SubjectRequest:
        """Mark a received request ``in_progress`` (an extended one stays ``extended``).

        Raises:
            ConfigurationError: the request is not in the log, or closed.
        """
        request = self._existing(request_id)
        if not request.is_open:
            raise ConfigurationError(f"request {request_id} is closed ({request.status})")
        if request.status != "received":
            return request
        return self._update(request, "update a request", status="in_progress")

    def extend(
        self, request_id: str, motive: str, *, at: dt.datetime | None = None
    ) -> SubjectRequest:
        """Extend an open request's deadline by two months (art. 12(3)), with its motive.

        The new due date is the old one plus two calendar months. The subject must be told of
        the extension and its reasons within the first month: an extension after the first due
        date is refused, and a request is extended once.

        Args:
            request_id: the request.
            motive: why (the complexity or number of requests); no personal data.
            at: when (default: now).

        Raises:
            ConfigurationError: the request is not in the log, is closed, extended already or
                overdue, or the motive is empty, too long or looks like a personal identifier.
        """
        motive = _check_text("motive", motive, _MOTIVE_MAX)
        request = self._existing(request_id)
        when = self._at(at, "at")
        if not request.is_open:
            raise ConfigurationError(f"request {request_id} is closed ({request.status})")
        if request.extended_at is not None:
            raise ConfigurationError(
                f"request {request_id} was extended already (art. 12(3) allows two further "
                "months, once)"
            )
        if when > request.due_at:
            raise ConfigurationError(
                f"request {request_id} was due {_stamp(request.due_at)}: an extension must be "
                "notified within the first month (art. 12(3))"
            )
        due = add_duration(request.due_at, EXTENSION_MONTHS, 0, 0)
        found = self._update(
            request,
            "extend a request",
            status="extended",
            due_at=due,
            extended_at=when,
            extension_motive=motive,
        )
        log.info("subject request %s extended, due %s", request_id, _stamp(due))
        return found

    def complete(
        self,
        request_id: str,
        *,
        status: str = "completed",
        motive: str | None = None,
        at: dt.datetime | None = None,
    ) -> SubjectRequest:
        """Close a request with its outcome.

        Closing it again with the same status changes nothing and returns it as it is (an
        erasure or export run again for the same request).

        Args:
            request_id: the request.
            status: ``completed``, ``refused`` or ``partially_granted``.
            motive: why it was refused or partially granted (required for ``refused``; art.
                12(4)); no personal data.
            at: when (default: now); not before it was received.

        Raises:
            ConfigurationError: the request is not in the log, closed with another status, the
                status unknown, a refusal without motive, or ``at`` before its receipt.
        """
        if status not in CLOSED_STATUSES:
            raise ConfigurationError(
                f"status must be one of {', '.join(CLOSED_STATUSES)}, not {str(status)[:32]!r}"
            )
        if motive is not None:
            motive = _check_text("motive", motive, _MOTIVE_MAX)
        elif status == "refused":
            raise ConfigurationError("a refusal needs its motive (art. 12(4))")
        request = self._existing(request_id)
        if not request.is_open:
            if request.status == status:
                return request
            raise ConfigurationError(f"request {request_id} is closed already ({request.status})")
        when = self._at(at, "at")
        if when < request.received_at:
            raise ConfigurationError(f"request {request_id} cannot be answered before its receipt")
        found = self._update(
            request,
            "close a request",
            status=status,
            completed_at=when,
            **({"motive": motive} if motive is not None else {}),
        )
        log.info("subject request %s %s", request_id, status)
        return found

    def finish(
        self,
        request_id: str,
        *,
        status: str,
        motive: str | None = None,
        at: dt.datetime | None = None,
    ) -> SubjectRequest:
        """Record the outcome of an operation run for a request (after :meth:`begin`).

        As :meth:`complete`, except that a request closed with another outcome takes the new
        one (an erasure refused while a legal minimum ran, run again once it is over): the
        operation happened, and the log says what it did last.
        """
        request = self._existing(request_id)
        if request.is_open or request.status == status:
            return self.complete(request_id, status=status, motive=motive, at=at)
        if status not in CLOSED_STATUSES:
            raise ConfigurationError(f"status must be one of {', '.join(CLOSED_STATUSES)}")
        when = self._at(at, "at")
        table = self.table
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    table.update()
                    .where(table.c.request_id == request.request_id)
                    .values(
                        status=status,
                        completed_at=when,
                        motive=None if motive is None else _check_text("motive", motive, 255),
                    )
                )
        except SQLAlchemyError as exc:
            raise self._fail("close a request", exc) from None
        log.info("subject request %s %s (was %s)", request_id, status, request.status)
        return self._existing(request_id)

    def begin(self, request_id: str, kind: str, subject: object) -> SubjectRequest:
        """The request an operation (an erasure, an export) answers: opened now if it is not in
        the log, else checked to be of ``kind`` and of ``subject``, and marked in progress.

        A closed request with the same kind and subject is returned as it is (the operation is
        run again).

        Raises:
            ConfigurationError: the request id is refused, or the log holds the request for
                another kind or another member (the operation does not run).
        """
        request_id = check_request_id(request_id)
        kind = _kind(kind)
        found = self.get(request_id)
        if found is None:
            try:
                found = self.open(request_id, kind, subject)
            except ConfigurationError:
                found = self.get(request_id)  # another process opened it meanwhile
                if found is None:
                    raise
        if found.kind != kind:
            raise ConfigurationError(
                f"request {request_id} is in the log as a {found.kind} request, not {kind}"
            )
        if self._ref(found.ref_domain, subject) != found.subject_ref:
            # Which member it is for is not said: the message may end up in a ticket.
            raise ConfigurationError(
                f"request {request_id} is in the log for another member; check the request id"
            )
        if found.status == "received":
            try:
                found = self._update(found, "update a request", status="in_progress")
            except ConfigurationError:
                found = self._existing(request_id)
        return found

    def __repr__(self) -> str:
        return f"RequestLog({self._where()!r}, table={self.table.fullname!r})"
