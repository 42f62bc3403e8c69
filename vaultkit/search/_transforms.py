"""Transforms for search indexes: plain, deterministic callables applied before a value is digested.

An index stores a keyed digest of ``transform(value)``; a lookup digests ``transform(query)`` with
the same transform, and the exact check compares ``transform(row value)`` with it after decrypting.
So a transform decides what "equal" means for one index: ``fold_name`` makes "Van der Berg" and
"van  der berg" equal, ``digits(4)`` makes "1000 AB" and "1000" equal.

Each transform maps ``None`` to ``None`` (an index cell of ``None`` is NULL and matches nothing).
The parametrised ones (``digits(n)``) are small value objects with an equality and a ``repr``, so
that two declarations with the same transform compare equal (SQLAlchemy's statement cache, Alembic's
rendering, the planner's report).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any, Final

__all__ = ["digits", "first_char", "fold_name", "month", "name_tokens", "year"]

#: What splits a name into words: white space, hyphens and dashes, apostrophes (ASCII and typographic).
_WORD_BREAK: Final = re.compile(r"[\s\-\u2010-\u2015\u2212'\u2018\u2019\u02bc`]+")


def fold_name(value: str | None) -> str | None:
    """Fold a name for comparison: NFKD, accents stripped, case folded, only letters and digits kept.

    ``"Van der Berg"``, ``"van  der berg"`` and ``"VanDerBerg"`` all fold to ``"vanderberg"``;
    ``"Müller-Lüdenscheidt"`` to ``"mullerludenscheidt"``; ``"O'Brien"`` to ``"obrien"``;
    ``"Straße"`` to ``"strasse"``. Letters without a decomposition (``"ø"``, ``"ł"``) stay.
    """
    if value is None:
        return None
    decomposed = unicodedata.normalize("NFKD", str(value))
    folded = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    # casefold can produce characters with a decomposition of their own ("ǰ"): normalise again.
    folded = unicodedata.normalize("NFKD", folded)
    return "".join(c for c in folded if c.isalnum())


def name_tokens(value: str | None) -> tuple[str, ...]:
    """The words of a name, each folded (:func:`fold_name`), in order, without repeats or empties.

    Splits on white space, hyphens and apostrophes: ``"Smith-Jones"`` gives ``("smith", "jones")``,
    ``"van der Berg"`` ``("van", "der", "berg")``, ``"O'Brien"`` ``("o", "brien")``. ``None`` gives
    ``()``.
    """
    if value is None:
        return ()
    out: dict[str, None] = {}
    for word in _WORD_BREAK.split(str(value)):
        folded = fold_name(word)
        if folded:
            out[folded] = None
    return tuple(out)


class digits:  # noqa: N801 - a transform, named like the functions beside it
    """``digits(n)``: the first ``n`` decimal digits of a value's text, other characters skipped.

    ``digits(4)("1000 AB")`` is ``"1000"`` (a Dutch PC4 area), ``digits(4)("B-1000")`` ``"1000"``.
    A value with fewer digits gives the ones it has; a value without any gives ``None`` (NULL).
    """

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError("digits(n) takes a positive integer")
        self.n = n

    def __call__(self, value: Any) -> str | None:
        if value is None:
            return None
        found = "".join(c for c in str(value) if c in "0123456789")[: self.n]
        return found or None

    def __eq__(self, other: object) -> bool:
        return type(other) is digits and other.n == self.n

    def __hash__(self) -> int:
        return hash(("digits", self.n))

    def __repr__(self) -> str:
        return f"digits({self.n})"


def _date_of(value: Any) -> dt.date:
    if isinstance(value, dt.date):  # a datetime is a date too
        return value
    raise TypeError(f"a date or datetime is expected, not {type(value).__name__}")


def year(value: dt.date | dt.datetime | None) -> int | None:
    """The year of a date or datetime (``date(1980, 5, 1)`` gives ``1980``)."""
    if value is None:
        return None
    return _date_of(value).year


def month(value: dt.date | dt.datetime | None) -> str | None:
    """The calendar month of a date or datetime, with its year: ``date(1980, 5, 1)`` gives ``"1980-05"``."""
    if value is None:
        return None
    found = _date_of(value)
    return f"{found.year:04d}-{found.month:02d}"


def first_char(value: str | None) -> str | None:
    """The first letter or digit of the folded name (:func:`fold_name`): ``"Émile"`` gives ``"e"``.

    ``None``, or a value without a letter or digit, gives ``None``.
    """
    folded = fold_name(value)
    return folded[:1] or None if folded is not None else None
