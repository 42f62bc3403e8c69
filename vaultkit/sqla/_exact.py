"""Exact results from lossy indexes: an index predicate carries the check that drops false positives.

A truncated digest (``bits < 256``), a transform (a prefix, a year, the first letter) or a token
narrows a lookup in SQL to *candidates*: every true match, and some rows that only share the digest.
vaultkit makes the answer exact by decrypting each candidate's source values and testing them in
Python, in the same round trip. The interface, for every index type (vaultkit's own and
``TokenIndex``):

* An index comparator builds its SQL predicate as usual and wraps it with
  ``checked(predicate, check)``, where ``check`` is an :class:`ExactCheck`: the table whose rows it
  tests, the keys of the encrypted source columns it needs, and ``matches(values)``, which gets
  those columns' decrypted values (``{column key: plaintext}``) and says whether the row is a true
  match. The wrapper renders exactly as ``predicate`` (in parentheses).
* ORM ``Session`` and ``AsyncSession`` (``do_orm_execute``, :mod:`vaultkit.sqla._search`): the
  checks among the top-level AND conjuncts of a SELECT's WHERE clause are applied to the entities
  the rows carry; their source attributes are read under the current scope. A checked predicate
  anywhere else (under OR or NOT, in a subquery, in an UPDATE or DELETE), a row that does not carry
  the entity (``select(Member.id)``), LIMIT/OFFSET, a stream, and any Core execution raise
  :class:`~vaultkit.errors.QueryError`, unless the statement opts out with
  ``.execution_options(vaultkit_exact=False)`` (or the predicate was built with ``exact=False``):
  then the candidates come back as they are, knowingly.
* A source the reader may not decrypt (a restricted domain without the grant) raises
  :class:`~vaultkit.errors.AccessDeniedError`: a true match is never dropped silently. A value whose
  key was erased matches nothing, also
  with ``on_erased="raise"`` (the candidate is dropped and leaves the session; a kept row whose
  other values are erased raises as a plain load does).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import BooleanClauseList, Grouping
from sqlalchemy.sql.operators import and_ as and_op

__all__ = [
    "ErasedCandidate",
    "ExactCheck",
    "checked",
    "checked_compiled",
    "checks_in",
    "frozen_rows",
    "loading_candidates",
    "top_level_checks",
]

#: The execution option that asks for the candidates of lossy indexes, unchecked.
EXACT_OPTION: Final = "vaultkit_exact"

#: Set while an exact lookup loads its candidates: a value of a column with
#: ``on_erased="raise"`` whose key was destroyed loads as an :class:`ErasedCandidate` instead of
#: raising, so that the candidate can be dropped (it matches nothing); a kept row holding one
#: raises its error as a plain load would.
loading_candidates: ContextVar[bool] = ContextVar("vaultkit_loading_candidates", default=False)


class ErasedCandidate:
    """An erased value in a candidate row of an exact lookup: the error its read raises."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __repr__(self) -> str:
        return "<erased value>"


class ExactCheck:
    """What one index predicate asks of each candidate row, tested on its decrypted values.

    Subclass it and implement :meth:`matches`. ``table`` is the table (or alias) whose rows the
    predicate selects, ``sources`` the keys of the columns of that table whose decrypted values
    :meth:`matches` receives, ``label`` names the index in messages (never a value).

    A check holds the plaintext looked up, so its ``repr`` shows the label only.
    """

    __slots__ = ("label", "sources", "table")

    def __init__(self, table: sa.FromClause, sources: Sequence[str], label: str) -> None:
        self.table = table
        self.sources = tuple(sources)
        self.label = label

    def matches(self, values: Mapping[str, Any]) -> bool:
        """Whether a row whose source columns hold ``values`` (``{column key: plaintext}``) is a
        true match of the lookup. ``None`` stands for NULL."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<exact check of {self.label}>"


#: The compiled statements (cached by SQLAlchemy with their statements) that carry a checked
#: predicate: every execution of them is checked, not only the one that compiled them.
checked_compiled: weakref.WeakSet[Any] = weakref.WeakSet()


class _Checked(Grouping[bool]):
    """A predicate with the :class:`ExactCheck` of its index: rendered as the predicate, in
    parentheses. Clones (SQLAlchemy copies elements when it adapts a statement) keep the check."""

    __visit_name__ = "vaultkit_checked"
    inherit_cache = True

    vaultkit_check: ExactCheck

    def __init__(self, element: sa.ColumnElement[bool], check: ExactCheck) -> None:
        super().__init__(element)
        self.vaultkit_check = check


@compiles(_Checked)
def _compile_checked(element: _Checked, compiler: Any, **kw: Any) -> str:
    # The compiled form (cached with the statement) remembers that it carries a lossy lookup, so
    # every execution of it is checked (see vaultkit.sqla._search), not only the first.
    checked_compiled.add(compiler)
    return "(" + str(compiler.process(element.element, **kw)) + ")"


def checked(predicate: sa.ColumnElement[bool], check: ExactCheck) -> sa.ColumnElement[bool]:
    """Wrap an index ``predicate`` with the ``check`` that drops its false positives (see the
    module's docstring)."""
    _seen[0] = True
    return _Checked(predicate, check)


#: Whether any checked predicate was ever built: until then the hooks skip their walk.
_seen: list[bool] = [False]


def _conjuncts(clause: Any) -> Iterator[Any]:
    """The top-level AND conjuncts of a WHERE clause (nested ANDs and parentheses flattened)."""
    while type(clause) is Grouping:
        clause = clause.element
    if isinstance(clause, BooleanClauseList) and clause.operator is and_op:
        for item in clause.clauses:
            yield from _conjuncts(item)
    else:
        yield clause


def top_level_checks(where: Any) -> list[ExactCheck]:
    """The checks of the checked predicates among the top-level AND conjuncts of ``where``."""
    if where is None:
        return []
    return [c.vaultkit_check for c in _conjuncts(where) if isinstance(c, _Checked)]


def checks_in(element: Any) -> list[ExactCheck]:
    """The check of every checked predicate anywhere in ``element`` (a statement or a clause),
    subqueries included: once per place it is used (one predicate used at the top level and
    again in a subquery counts twice, so that the subquery's unchecked use is noticed)."""
    if not _seen[0] or element is None:
        return []
    return [e.vaultkit_check for e in sa.sql.visitors.iterate(element) if isinstance(e, _Checked)]


class frozen_rows:  # noqa: N801 - used like a function
    """The rows of an ORM result, read at once, and a way to hand them back as a result that
    keeps what SQLAlchemy asked of the original: a result of joined eager loads against
    collections still refuses to be read without ``.unique()`` (a frozen result forgets it, and
    would hand out one object per child row)."""

    __slots__ = ("_frozen", "_unique")

    def __init__(self, result: Any) -> None:
        self._unique = getattr(result, "_unique_filter_state", None)
        self._frozen = result.freeze()

    @property
    def data(self) -> Any:
        return self._frozen.data

    @data.setter
    def data(self, rows: Any) -> None:
        self._frozen.data = rows

    def __call__(self) -> Any:
        result = self._frozen()
        if self._unique is not None:
            result._unique_filter_state = (set(), self._unique[1])
        return result
