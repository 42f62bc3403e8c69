"""The annotations of the subject map: what a column holds and how a table's rows reach a member.

They live in SQLAlchemy's ``info`` dictionaries (``Column.info``, ``Table.info`` through
``__table_args__``), as effaced keeps its annotations, so that one mechanism covers encrypted and
plain columns and the models need no base class of vaultkit's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from vaultkit.errors import ConfigurationError

__all__ = [
    "LINK_KEY",
    "NOT_PERSONAL_KEY",
    "PERSONAL_KEY",
    "PROVENANCES",
    "NotPersonal",
    "Personal",
    "SubjectLink",
    "not_personal",
    "personal",
    "subject_link",
]

#: The ``info`` keys the annotations are stored under.
PERSONAL_KEY: Final = "vaultkit.personal"
NOT_PERSONAL_KEY: Final = "vaultkit.not_personal"
LINK_KEY: Final = "vaultkit.subject_link"

#: Where a value comes from (EDPB guidelines on art. 20: provided and observed data are portable,
#: derived and inferred data are not).
PROVENANCES: Final = ("provided", "observed", "derived")

Provenance = Literal["provided", "observed", "derived"]

_MAX_TEXT = 500


def _text(name: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"personal(): {name}= takes a non-empty string")
    if len(value) > _MAX_TEXT:
        raise ConfigurationError(f"personal(): {name}= is longer than {_MAX_TEXT} characters")
    return value


@dataclass(frozen=True, slots=True)
class Personal:
    """What a column holds about a member, for the export and its art. 15 block.

    Made by :func:`personal`; see there for the fields.

    .. versionadded:: 0.3.0
    """

    category: str
    provenance: Provenance
    legal_basis: str
    purpose: str
    retention: str | None = None
    recipients: tuple[str, ...] = ()
    source: str | None = None
    automated_decision: bool = False
    label: str | None = None

    @property
    def portable(self) -> bool:
        """Whether a portability export (art. 20) carries the column: provided or observed data."""
        return self.provenance != "derived"


@dataclass(frozen=True, slots=True)
class NotPersonal:
    """A table or column declared as holding no personal data, with the reason (for the DPO).

    .. versionadded:: 0.3.0
    """

    reason: str


@dataclass(frozen=True, slots=True)
class SubjectLink:
    """How the rows of a table reach a member. Made by :func:`subject_link`.

    Exactly one of: ``column`` (the row's member id is in that plain column: the table is a
    root), ``via`` (a foreign-key column to a linked table), ``match`` with ``identity`` (a
    blind-index column of this table matched against the member's values of an encrypted
    column of a linked table), or none (follow the one foreign key to a linked table).

    .. versionadded:: 0.3.0
    """

    column: str | None = None
    via: str | None = None
    match: str | None = None
    identity: str | None = None
    ignore: tuple[str, ...] = ()
    title: str | None = None

    @property
    def kind(self) -> str:
        """``"column"``, ``"via"``, ``"match"`` or ``"follow"``."""
        if self.column is not None:
            return "column"
        if self.via is not None:
            return "via"
        if self.match is not None:
            return "match"
        return "follow"


def personal(
    *,
    category: str,
    provenance: Provenance = "provided",
    legal_basis: str,
    purpose: str,
    retention: str | dt.timedelta | None = None,
    recipients: Iterable[str] = (),
    source: str | None = None,
    automated_decision: bool = False,
    label: str | None = None,
) -> dict[str, Personal]:
    """Annotate a column as personal data of the member its row belongs to.

    Use it as the column's ``info``: ``mapped_column(..., info=personal(category="contact", ...))``.
    Every ``Encrypted`` column of a table with a subject link must be annotated, with this or
    :func:`not_personal` (:func:`vaultkit.subjects.collect` refuses a gap); a plain column is
    exported only when annotated.

    Args:
        category: the category of data, such as ``"contact"`` or ``"health"``; the art. 15 block
            groups by it.
        provenance: ``"provided"`` (the member gave it), ``"observed"`` (recorded from their use
            of the service: calls, chats) or ``"derived"`` (computed or inferred: scores); a
            portability export carries provided and observed data only.
        legal_basis: the art. 6 (and art. 9) ground, such as ``"contract"``.
        purpose: what it is processed for, in plain language.
        retention: how long it is kept, in plain language or ISO 8601 (``"P5Y after
            relationship_end"``), or a ``timedelta``; ``None`` when not stated.
        recipients: who it is disclosed to (categories of recipients).
        source: where it comes from when not from the member (art. 14(2)(f)).
        automated_decision: whether it feeds an automated decision (art. 22).
        label: the column's name in plain language for the HTML page (default: from the name).

    Returns:
        ``{"vaultkit.personal": Personal(...)}``, to pass as ``info=``.

    Raises:
        ConfigurationError: an unknown provenance, or an empty or over-long text.

    .. versionadded:: 0.3.0
    """
    if provenance not in PROVENANCES:
        raise ConfigurationError(
            f"personal(): provenance= is one of {', '.join(PROVENANCES)}, not {provenance!r}"
        )
    if isinstance(recipients, str):
        raise ConfigurationError("personal(): recipients= is a collection of names, not a string")
    if isinstance(retention, dt.timedelta):
        retention = f"{retention.days} days"
    names = tuple(recipients)
    for name in names:
        _text("recipients", name)
    if not isinstance(automated_decision, bool):
        raise ConfigurationError("personal(): automated_decision= is True or False")
    return {
        PERSONAL_KEY: Personal(
            category=_text("category", category) or "",
            provenance=provenance,
            legal_basis=_text("legal_basis", legal_basis) or "",
            purpose=_text("purpose", purpose) or "",
            retention=_text("retention", retention, optional=True),
            recipients=names,
            source=_text("source", source, optional=True),
            automated_decision=automated_decision,
            label=_text("label", label, optional=True),
        )
    }


def not_personal(reason: str) -> dict[str, NotPersonal]:
    """Declare a table (``__table_args__ = {"info": not_personal(...)}``) or a column (``info=``)
    as holding no personal data, so that its encrypted columns need no subject link.

    Raises:
        ConfigurationError: the reason is empty.

    .. versionadded:: 0.3.0
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigurationError("not_personal() takes the reason, a non-empty string")
    return {NOT_PERSONAL_KEY: NotPersonal(reason)}


def subject_link(
    *,
    column: str | None = None,
    via: str | None = None,
    match: str | None = None,
    identity: str | None = None,
    ignore: Iterable[str] = (),
    title: str | None = None,
) -> dict[str, SubjectLink]:
    """Declare how a table's rows reach a member: ``__table_args__ = {"info": subject_link(...)}``.

    Args:
        column: a plain column of this table holding the member id (the row belongs to the
            member with that id; ``column="id"`` for the members table itself).
        via: a foreign-key column of this table to a linked table (claims -> policies).
        match: a blind-index column of this table (:func:`vaultkit.sqla.BlindIndex`), matched
            against the member's values of ``identity``.
        identity: ``"table.column"`` (``"schema.table.column"`` for a table in a schema), an
            encrypted column of a linked table (such as ``"members.email"``), with ``match``.
        ignore: foreign-key columns of this table to linked tables that are not a path to the
            row's member (say, the employee who handled a claim); any other such key besides the
            link is a second path, refused by :func:`~vaultkit.subjects.collect`.
        title: the table's name in plain language for the HTML page.

    With no ``column``, ``via`` or ``match``, the table's one foreign key to a linked table is
    followed.

    Raises:
        ConfigurationError: more than one of ``column``, ``via`` and ``match``; ``match``
            without ``identity`` or the reverse.

    .. versionadded:: 0.3.0
    """
    given = [name for name, v in (("column", column), ("via", via), ("match", match)) if v]
    if len(given) > 1:
        raise ConfigurationError(
            f"subject_link() takes one of column=, via= and match=, not {' and '.join(given)}"
        )
    if (match is None) != (identity is None):
        raise ConfigurationError(
            'subject_link(): match= and identity= go together (match="email_index", '
            'identity="members.email")'
        )
    if identity is not None and (
        not isinstance(identity, str) or not all(identity.rpartition("."))
    ):
        raise ConfigurationError('subject_link(): identity= is "table.column"')
    for name, value in (("column", column), ("via", via), ("match", match), ("title", title)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"subject_link(): {name}= takes a non-empty string")
    if isinstance(ignore, str):
        raise ConfigurationError("subject_link(): ignore= is a collection of column names")
    return {
        LINK_KEY: SubjectLink(
            column=column,
            via=via,
            match=match,
            identity=identity,
            ignore=tuple(ignore),
            title=title,
        )
    }
