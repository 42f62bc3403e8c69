"""In-row search indexes beyond equality: compound, prefix and date-bucket indexes, and exact results.

Each index is a binary column of its model, like a :func:`~vaultkit.sqla.BlindIndex`, holding
``version || HMAC-SHA256(key, input)`` truncated to ``bits`` (4 to 256, bit-granular). The input is
an unambiguous encoding of the transformed source value(s) (length-prefixed, with the part names
for a compound index), with the partition when the index has several. Each index has its own key,
kept under the label ``<kind>:<index column>`` (``compound:locator``), which no blind index's label
(its source column) can be: a column of that name in the same table is refused.

Lookups narrow in SQL and are made exact in Python (:mod:`vaultkit.sqla._exact`): the ORM hook
below decrypts each candidate's sources and drops the false positives, in the same round trip.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import InstanceState, MappedColumn, Mapper, ORMExecuteState, Session, attributes
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.orm.attributes import InstrumentedAttribute
from sqlalchemy.sql import operators
from sqlalchemy.sql.selectable import Select
from sqlalchemy.types import TypeDecorator

from vaultkit._access import SealedValue
from vaultkit.errors import AccessDeniedError, ConfigurationError, QueryError, ValueErasedError
from vaultkit.sqla import _registry
from vaultkit.sqla._exact import (
    EXACT_OPTION,
    ErasedCandidate,
    ExactCheck,
    checked,
    checked_compiled,
    checks_in,
    frozen_rows,
    loading_candidates,
    top_level_checks,
)
from vaultkit.sqla.types import (
    _NULL_OPERATORS,
    BlindIndexType,
    Parts,
    _column_of,
    _expr_name,
    _query_error,
    _table_of,
    _unwrap,
)

__all__ = [
    "BucketIndex",
    "BucketIndexType",
    "CompoundIndex",
    "CompoundIndexType",
    "Part",
    "Parts",
    "PrefixIndex",
    "PrefixIndexType",
]

#: At most this many buckets in one ``between`` (the digests of an IN list).
MAX_BUCKETS: Final = 1000

_LENGTH: Final = struct.Struct(">I")
_UNITS: Final = ("year", "month")


class Part:
    """One part of a :func:`CompoundIndex`: a source column and the transform applied to it.

    Args:
        source: key of an encrypted column of the same model.
        transform: applied to the value before it is digested, written and looked up alike (for
            example :func:`vaultkit.search.digits` ``(4)``, :func:`vaultkit.search.year`,
            :func:`vaultkit.search.first_char`); ``None`` keeps the value as it is.
        name: the part's name, in the digest input and as the keyword of ``match``; by default
            ``source``.

    .. versionadded:: 0.4.0
    """

    __slots__ = ("name", "source", "transform")

    def __init__(
        self,
        source: str,
        transform: Callable[[Any], Any] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if not isinstance(source, str) or not source:
            raise ConfigurationError("a Part names its source column")
        self.source = source
        self.transform = transform
        self.name = name if name is not None else source

    def apply(self, value: Any) -> Any:
        """The part of a value as the index digests it (``None`` for NULL)."""
        if value is None:
            return None
        return self.transform(value) if self.transform is not None else value

    def _key(self) -> tuple[Any, ...]:
        return (self.source, self.transform, self.name)

    def __eq__(self, other: object) -> bool:
        return type(other) is Part and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        args = [repr(self.source)]
        if self.transform is not None:
            args.append(getattr(self.transform, "__name__", None) or repr(self.transform))
        if self.name != self.source:
            args.append(f"name={self.name!r}")
        return f"Part({', '.join(args)})"


def _framed(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


class _SearchIndexType(BlindIndexType):
    """What the index types of this module share: bit-granular digests under their own key."""

    cache_ok = True
    kind = "search"

    @property
    def lossy(self) -> bool:
        return True  # a transform makes different values share a digest, whatever its width

    def key_column(self) -> str:
        return f"{self.kind}:{self._name or self.source}"

    def _check_label(self) -> None:
        table = self._table() if self._table is not None else None
        if table is not None and self.key_column() in table.columns:
            raise ConfigurationError(
                f"index {self.label()}: the table has a column named {self.key_column()!r}, "
                "whose blind index would share this index's key label; rename that column"
            )

    def _key(self, version: int) -> Any:
        if not self._keys:
            self._check_label()
        return super()._key(version)


class CompoundIndexType(_SearchIndexType):
    """The column type of :func:`CompoundIndex`: one digest of several transformed sources.

    The HMAC input is, for each part in order, the length-prefixed part name and the
    length-prefixed encoded transformed value: no two different tuples share it. A row with a
    part that is NULL (or transforms to ``None``) has no digest (NULL).

    .. versionadded:: 0.4.0
    """

    kind = "compound"
    cache_ok = True
    takes_parts = True

    def __init__(
        self,
        parts: Sequence[Part],
        domain: str | None = None,
        version: int = 1,
        query_versions: Sequence[int] | None = None,
        bits: int | None = None,
        vault: str = _registry.DEFAULT,
        partitions: int = 1,
    ) -> None:
        parts = tuple(parts)
        if not parts or not all(type(p) is Part for p in parts):
            raise ConfigurationError("CompoundIndex takes one or more Part(...) declarations")
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise ConfigurationError("the parts of a CompoundIndex need distinct names")
        super(BlindIndexType, self).__init__()
        self._setup(parts[0].source, domain, version, query_versions, bits, vault, partitions)
        self.parts = parts
        self.normalize = None

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.source for p in self.parts))

    def transform(self, value: Any) -> Any:
        if value is None:
            return None
        if type(value) is not Parts:
            raise ConfigurationError(
                f"compound index {self.label()} is written from its source columns; write them"
            )
        out = []
        for part in self.parts:
            found = part.apply(_unwrap(value.values.get(part.source)))
            if found is None:
                return None
            out.append(found)
        return tuple(out)

    def transform_query(self, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The looked-up values (by part name) as the index digests them."""
        missing = [p.name for p in self.parts if p.name not in values]
        extra = [k for k in values if k not in {p.name for p in self.parts}]
        if missing or extra:
            raise QueryError(
                f"{self.label()}.match() takes one value per part: "
                f"{', '.join(p.name for p in self.parts)}"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unknown {', '.join(extra)})" if extra else "")
            )
        out = []
        for part in self.parts:
            found = part.apply(values[part.name])
            if found is None:
                return None
            out.append(found)
        return tuple(out)

    def encode(self, transformed: Any) -> bytes:
        return b"".join(
            _framed(part.name.encode("utf-8")) + _framed(super(CompoundIndexType, self).encode(v))
            for part, v in zip(self.parts, transformed, strict=True)
        )

    def copy(self, **kw: Any) -> CompoundIndexType:
        copied = CompoundIndexType(
            self.parts,
            **self._copy_options(),
        )
        self._copy_attachment(copied)
        return copied

    def __repr__(self) -> str:
        parts = ", ".join(repr(p) for p in self.parts)
        return f"CompoundIndexType({', '.join([f'[{parts}]', *self._repr_options()])})"

    class comparator_factory(BlindIndexType.comparator_factory):  # noqa: N801
        """``match({part: value, ...})`` (the ORM attribute also takes keywords)."""

        def match(self, other: Any = None, *, exact: bool = True, **parts: Any) -> Any:
            values = dict(other or {}, **parts)
            index = self.expr.type
            if not isinstance(index, CompoundIndexType):
                raise TypeError("not a compound-index column")
            wanted = index.transform_query(values)
            if wanted is None:
                return sa.false()  # a part that is NULL: no row has its digest
            predicate = _in_probes(self, index.probes(wanted, transformed=True))
            if not exact:
                return predicate
            return checked(predicate, _CompoundCheck(index, _table_of(self.expr), wanted))

        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op in _NULL_OPERATORS or _against_column(op, other):
                return super().operate(op, *other, **kwargs)
            if op is operators.match_op:
                return self.match(*other, **kwargs)
            raise _query_error(
                _expr_name(self.expr),
                op,
                "A compound index answers .match(part=value, ...) only, with a value per part.",
            )


def _against_column(op: Any, other: Sequence[Any]) -> bool:
    """``index == another index column``: how SQLAlchemy looks columns up in its own lists (and
    a self-join on digests); the blind index's comparator answers it."""
    return op is operators.eq and bool(other) and _column_of(other[0]) is not None


def _in_probes(comparator: Any, probes: Sequence[Any]) -> Any:
    """``column IN (probes)`` (``=`` for one), built by the type's own comparator."""
    parent = TypeDecorator.Comparator
    if len(probes) == 1:
        return parent.operate(comparator, operators.eq, probes[0])
    return parent.operate(comparator, operators.in_op, list(probes))


class _CompoundCheck(ExactCheck):
    __slots__ = ("_index", "_wanted")

    def __init__(self, index: CompoundIndexType, table: Any, wanted: tuple[Any, ...]) -> None:
        super().__init__(table, index.sources, index.label())
        self._index = index
        self._wanted = wanted

    def matches(self, values: Mapping[str, Any]) -> bool:
        found = self._index.transform(Parts(values))
        return found is not None and found == self._wanted


class PrefixIndexType(_SearchIndexType):
    """The column type of :func:`PrefixIndex`: the digest of the first ``length`` characters of
    the normalised value. A value shorter than ``length`` (once normalised) has no digest.

    .. versionadded:: 0.4.0
    """

    kind = "prefix"
    cache_ok = True
    #: The prefix length (the stored bytes are :attr:`stored_length`).
    length: int = 0

    def __init__(
        self,
        source: str,
        length: int = 3,
        normalize: Callable[[Any], Any] | None = None,
        domain: str | None = None,
        version: int = 1,
        query_versions: Sequence[int] | None = None,
        bits: int | None = None,
        vault: str = _registry.DEFAULT,
        partitions: int = 1,
    ) -> None:
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ConfigurationError("a PrefixIndex length is a positive integer")
        super(BlindIndexType, self).__init__()
        self._setup(source, domain, version, query_versions, bits, vault, partitions)
        self.length = length
        self.normalize = normalize

    def folded(self, value: Any) -> str | None:
        """The normalised text of a value (``None`` for NULL)."""
        if value is None:
            return None
        normalized = self.normalize(value) if self.normalize is not None else value
        if not isinstance(normalized, str):
            raise TypeError("a PrefixIndex indexes text")
        return normalized

    def transform(self, value: Any) -> Any:
        folded = self.folded(value)
        if folded is None or len(folded) < self.length:
            return None
        return folded[: self.length]

    def copy(self, **kw: Any) -> PrefixIndexType:
        copied = PrefixIndexType(
            self.source,
            length=self.length,
            normalize=self.normalize,
            **self._copy_options(),
        )
        self._copy_attachment(copied)
        return copied

    def __repr__(self) -> str:
        args = [repr(self.source), f"length={self.length!r}", *self._repr_options()]
        return f"PrefixIndexType({', '.join(args)})"

    class comparator_factory(BlindIndexType.comparator_factory):  # noqa: N801
        """``startswith(text)``, for a text of at least ``length`` characters once normalised."""

        def startswith(  # type: ignore[override]
            self, other: Any, *, exact: bool = True, **kwargs: Any
        ) -> Any:
            index = self.expr.type
            if not isinstance(index, PrefixIndexType):
                raise TypeError("not a prefix-index column")
            if kwargs.get("escape") is not None or kwargs.get("autoescape"):
                raise QueryError(f"{index.label()}.startswith() takes no escape: it is no LIKE")
            folded = index.folded(other)
            if folded is None or len(folded) < index.length:
                raise QueryError(
                    f"{index.label()}.startswith() needs at least {index.length} characters "
                    "once normalised (the index keeps prefixes of that length)"
                )
            predicate = _in_probes(self, index.probes(folded[: index.length], transformed=True))
            if not exact:
                return predicate
            return checked(predicate, _PrefixCheck(index, _table_of(self.expr), folded))

        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op in _NULL_OPERATORS or _against_column(op, other):
                return super().operate(op, *other, **kwargs)
            if op is operators.startswith_op:
                return self.startswith(*other, **kwargs)
            raise _query_error(
                _expr_name(self.expr), op, "A prefix index answers .startswith(text) only."
            )


class _PrefixCheck(ExactCheck):
    __slots__ = ("_index", "_prefix")

    def __init__(self, index: PrefixIndexType, table: Any, prefix: str) -> None:
        super().__init__(table, (index.source,), index.label())
        self._index = index
        self._prefix = prefix

    def matches(self, values: Mapping[str, Any]) -> bool:
        folded = self._index.folded(values[self._index.source])
        return folded is not None and folded.startswith(self._prefix)


def _bucket_of(unit: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dt.date):
        raise TypeError(f"a BucketIndex indexes dates and datetimes, not {type(value).__name__}")
    return value.year if unit == "year" else value.year * 12 + value.month - 1


class BucketIndexType(_SearchIndexType):
    """The column type of :func:`BucketIndex`: the digest of a date's year (or year and month).

    Answers ``between(low, high)`` with the digests of every bucket from ``low``'s to
    ``high``'s (one ``IN``), then the exact check keeps ``low <= value <= high``. No order is
    revealed: each bucket's digest is as random as any other's.

    .. versionadded:: 0.4.0
    """

    kind = "bucket"
    cache_ok = True

    def __init__(
        self,
        source: str,
        unit: str = "year",
        domain: str | None = None,
        version: int = 1,
        query_versions: Sequence[int] | None = None,
        bits: int | None = None,
        vault: str = _registry.DEFAULT,
        partitions: int = 1,
    ) -> None:
        if unit not in _UNITS:
            raise ConfigurationError('a BucketIndex unit is "year" or "month"')
        super(BlindIndexType, self).__init__()
        self._setup(source, domain, version, query_versions, bits, vault, partitions)
        self.unit = unit
        self.normalize = None

    def transform(self, value: Any) -> Any:
        return _bucket_of(self.unit, value)

    def copy(self, **kw: Any) -> BucketIndexType:
        copied = BucketIndexType(
            self.source,
            unit=self.unit,
            **self._copy_options(),
        )
        self._copy_attachment(copied)
        return copied

    def __repr__(self) -> str:
        args = [repr(self.source), f"unit={self.unit!r}", *self._repr_options()]
        return f"BucketIndexType({', '.join(args)})"

    class comparator_factory(BlindIndexType.comparator_factory):  # noqa: N801
        """``between(low, high)`` (both included)."""

        def between(  # type: ignore[override]
            self, low: Any, high: Any, *, exact: bool = True, **kwargs: Any
        ) -> Any:
            index = self.expr.type
            if not isinstance(index, BucketIndexType):
                raise TypeError("not a bucket-index column")
            if kwargs.get("symmetric"):
                raise QueryError(f"{index.label()}.between() is not symmetric")
            first, last = _bucket_of(index.unit, low), _bucket_of(index.unit, high)
            if first is None or last is None:
                raise QueryError(f"{index.label()}.between() takes two dates")
            if last - first >= MAX_BUCKETS:
                raise QueryError(
                    f"{index.label()}.between() spans more than {MAX_BUCKETS} {index.unit}s"
                )
            if last < first:
                return sa.false()
            probes = [p for b in range(first, last + 1) for p in index.probes(b, transformed=True)]
            predicate = _in_probes(self, probes)
            if not exact:
                return predicate
            return checked(predicate, _RangeCheck(index, _table_of(self.expr), low, high))

        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op in _NULL_OPERATORS or _against_column(op, other):
                return super().operate(op, *other, **kwargs)
            if op is operators.between_op:
                return self.between(*other, **kwargs)
            raise _query_error(
                _expr_name(self.expr), op, "A bucket index answers .between(low, high) only."
            )


class _RangeCheck(ExactCheck):
    __slots__ = ("_high", "_index", "_low")

    def __init__(self, index: BucketIndexType, table: Any, low: Any, high: Any) -> None:
        super().__init__(table, (index.source,), index.label())
        self._index = index
        self._low = low
        self._high = high

    def matches(self, values: Mapping[str, Any]) -> bool:
        found = values[self._index.source]
        if found is None:
            return False
        return bool(self._low <= found <= self._high)


# -- declarations -------------------------------------------------------------------------------


class IndexColumn(MappedColumn[bytes | None]):
    """The column an index declaration makes; refuses classes that would ignore it (SQLModel).

    For type checkers, the class attribute is a :class:`SearchAttribute` (``match(**parts)``,
    ``startswith(text, exact=)``, ``between(low, high, exact=)``).
    """

    if TYPE_CHECKING:

        @overload  # type: ignore[override]
        def __get__(self, instance: None, owner: Any) -> SearchAttribute: ...

        @overload
        def __get__(self, instance: object, owner: Any) -> bytes | None: ...

        def __get__(self, instance: object | None, owner: Any) -> Any: ...

    def __set_name__(self, owner: type, name: str) -> None:
        # SQLModel (a pydantic model) takes a MappedColumn for a field's default value and makes
        # the column from the annotation alone: an unindexed binary column nothing fills.
        if any(
            base.__name__ == "SQLModel" and base.__module__.startswith("sqlmodel")
            for base in owner.__mro__
        ):
            raise ConfigurationError(
                f"{owner.__name__}.{name}: vaultkit's index declarations are SQLAlchemy "
                "declarative columns, which SQLModel ignores (the index would stay empty); "
                "declare BlindIndex with vaultkit.integrations.sqlmodel.BlindIndexField(...), and "
                "the other indexes on an SQLAlchemy model"
            )


def _column(index_type: BlindIndexType) -> IndexColumn:
    return IndexColumn(index_type, index=True, nullable=True)


def CompoundIndex(  # noqa: N802 - declared like a column, named like a type
    *parts: Part,
    bits: int | None = None,
    version: int = 1,
    query_versions: Sequence[int] | None = None,
    partitions: int = 1,
    domain: str | None = None,
    vault: str = _registry.DEFAULT,
) -> IndexColumn:
    """Declare a compound index over several encrypted columns of the same model.

    ``CompoundIndex(Part("postal_code", digits(4)), Part("birth_date", year),
    Part("last_name", first_char), bits=16)`` keeps one digest of the three transformed values:
    the call-centre check "postal code, birth year, initial". Query it with every part::

        select(Member).where(Member.locator.match(postal_code="1000",
                             birth_date=date(1980, 5, 1), last_name="Janssens"))

    The results are exact: the digest narrows in SQL, vaultkit decrypts the candidates and keeps
    those whose transformed values equal the ones looked up (``digits(4)`` of the postal code,
    and so on). ``exact=False`` returns the candidates. The index is kept in sync on every write
    that names its sources; a Core UPDATE that writes only some of them is refused (the ORM has
    the others loaded and writes them).

    Args:
        parts: the :class:`Part` declarations, in the order they are digested.
        bits: digest bits kept, 4 to 256 (default 256); see ``vaultkit index plan``.
        version, query_versions: key rotation, as for :func:`~vaultkit.sqla.BlindIndex`.
        partitions: as for :func:`~vaultkit.sqla.BlindIndex`.
        domain: key domain; by default that of the source columns (which must then share one).
        vault: name of the configured vault.

    .. versionadded:: 0.4.0
    """
    return _column(
        CompoundIndexType(
            parts,
            domain=domain,
            version=version,
            query_versions=query_versions,
            bits=bits,
            vault=vault,
            partitions=partitions,
        )
    )


def PrefixIndex(  # noqa: N802 - declared like a column, named like a type
    source: str,
    *,
    length: int,
    normalize: Callable[[Any], Any] | None = None,
    bits: int | None = None,
    version: int = 1,
    query_versions: Sequence[int] | None = None,
    partitions: int = 1,
    domain: str | None = None,
    vault: str = _registry.DEFAULT,
) -> IndexColumn:
    """Declare an index of the first ``length`` characters of ``normalize(source)``.

    ``PrefixIndex("last_name", length=3, normalize=fold_name, bits=16)`` answers
    ``Member.last_name_p3.startswith("jan")`` for any text of at least ``length`` characters once
    normalised: the digest of its first ``length`` narrows, and the exact check keeps the rows
    whose normalised value starts with the whole text (``startswith("janss")`` on a 3-character
    index is exact too). Declare one index per length offered; a value shorter than ``length`` is
    not indexed (NULL).

    .. versionadded:: 0.4.0
    """
    return _column(
        PrefixIndexType(
            source,
            length=length,
            normalize=normalize,
            domain=domain,
            version=version,
            query_versions=query_versions,
            bits=bits,
            vault=vault,
            partitions=partitions,
        )
    )


def BucketIndex(  # noqa: N802 - declared like a column, named like a type
    source: str,
    *,
    unit: str = "year",
    bits: int | None = None,
    version: int = 1,
    query_versions: Sequence[int] | None = None,
    partitions: int = 1,
    domain: str | None = None,
    vault: str = _registry.DEFAULT,
) -> IndexColumn:
    """Declare an index of the year (``unit="year"``) or month (``unit="month"``) of a date.

    ``Member.birth_year.between(date(1970, 1, 1), date(1979, 12, 31))`` asks for the digests of
    the buckets in the range (one ``IN``, at most 1000 buckets) and keeps the rows whose date lies
    within ``low <= value <= high``. No order-revealing encryption: a bucket's digest says nothing
    about its neighbours.

    .. versionadded:: 0.4.0
    """
    return _column(
        BucketIndexType(
            source,
            unit=unit,
            domain=domain,
            version=version,
            query_versions=query_versions,
            bits=bits,
            vault=vault,
            partitions=partitions,
        )
    )


# -- the ORM attribute: keyword match() and exact= ------------------------------------------------


class SearchAttribute(InstrumentedAttribute[Any]):
    """The class attribute of a search index: its comparator's methods with their keywords."""

    __slots__ = ()
    inherit_cache = True

    def _type_comparator(self) -> Any:
        return self.__clause_element__().comparator

    def match(self, other: Any = None, *, exact: bool = True, **parts: Any) -> Any:
        """``match(part=value, ...)``: see the index's declaration."""
        return self._type_comparator().match(other, exact=exact, **parts)

    def startswith(self, other: Any, *, exact: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        """``startswith(text)``: see :func:`PrefixIndex`."""
        return self._type_comparator().startswith(other, exact=exact, **kwargs)

    def between(self, low: Any, high: Any, *, exact: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        """``between(low, high)``: see :func:`BucketIndex`."""
        return self._type_comparator().between(low, high, exact=exact, **kwargs)


@event.listens_for(Mapper, "after_mapper_constructed")
def _search_attributes_early(mapper: Mapper[Any], class_: type) -> None:
    # As soon as the class is mapped: ``Member.locator.match(...)`` may be written before the
    # mappers are configured (a module-level query). Declarative names attributes by column key.
    table = mapper.local_table
    for column in getattr(table, "columns", ()):
        if isinstance(column.type, _SearchIndexType):
            attribute = mapper.class_manager.get(column.key)
            if type(attribute) is InstrumentedAttribute:
                attribute.__class__ = SearchAttribute


@event.listens_for(Mapper, "mapper_configured")
def _search_attributes(mapper: Mapper[Any], class_: type) -> None:
    compounds: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if not (isinstance(column, sa.Column) and isinstance(column.type, _SearchIndexType)):
            continue
        attribute = mapper.class_manager.get(prop.key)
        if type(attribute) is InstrumentedAttribute:
            attribute.__class__ = SearchAttribute
        if column.type.takes_parts:
            sources = []
            for name in column.type.sources:
                source = column.table.columns.get(name)
                if source is None:
                    break  # the statement hook explains it
                try:
                    sources.append((source.key, mapper.get_property_by_column(source).key))
                except orm_exc.UnmappedColumnError:
                    break  # an unmapped source: written by Core only
            else:
                compounds.append((prop.key, tuple(sources)))
    if compounds:
        _listen_compounds(mapper, tuple(compounds))


def _listen_compounds(
    mapper: Mapper[Any], compounds: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
) -> None:
    """Before an ORM UPDATE that changes some sources of a compound index: give the index all of
    them (the UPDATE names only the changed columns); after it, expire the index attribute, which
    the database now holds as a digest."""

    def before_update(mapper_: Any, connection: Any, target: Any) -> None:
        state = attributes.instance_state(target)
        committed = state.committed_state
        for index_attr, sources in compounds:
            if not any(attr in committed for _key, attr in sources):
                continue
            values = {}
            for key, attr in sources:
                value = getattr(target, attr)  # opened under the current scope
                if type(value) is SealedValue:
                    raise AccessDeniedError(
                        f"{state.class_.__name__}.{index_attr}: its digest is computed from "
                        f"{attr!r} too, which needs the grant of its domain"
                    )
                values[key] = value
            state.dict[index_attr] = Parts(values)
            attributes.flag_modified(target, index_attr)

    def after_update(mapper_: Any, connection: Any, target: Any) -> None:
        state = attributes.instance_state(target)
        stale = [a for a, _ in compounds if type(state.dict.get(a)) is Parts]
        if stale:
            state._expire_attributes(state.dict, stale)

    event.listen(mapper, "before_update", before_update)
    event.listen(mapper, "after_update", after_update)


# -- exact results ------------------------------------------------------------------------------

#: Set while an ORM statement whose checks this module applies runs.
_handling: ContextVar[bool] = ContextVar("vaultkit_exact_handling", default=False)


def _entity_positions(orm_state: ORMExecuteState, checks: Sequence[ExactCheck]) -> list[int]:
    """For each check, the position of the row element carrying the entity it tests."""
    descriptions = orm_state.statement.column_descriptions  # type: ignore[attr-defined]
    positions = []
    for check in checks:
        for position, description in enumerate(descriptions):
            entity = description.get("entity")
            if entity is None or description.get("expr") is not entity:
                continue
            info = sa.inspect(entity)
            selectable = getattr(info, "selectable", None)
            mapper = info.mapper
            if _carries(selectable, mapper, check):
                positions.append(position)
                break
        else:
            raise QueryError(
                f"a lookup through {check.label} is made exact by decrypting its candidates, "
                "which needs the entity among the selected rows: select(Member), not "
                "select(Member.id); or ask for the candidates knowingly with "
                f".execution_options({EXACT_OPTION}=False)"
            )
    return positions


def _carries(selectable: Any, mapper: Mapper[Any], check: ExactCheck) -> bool:
    """Whether the rows of an entity (its ``selectable``) are those the check's predicate
    selects: the check's own table or alias, or a selectable holding that table's very columns
    (a joined-inheritance mapper, ``with_polymorphic``). An alias (``aliased(Member)``) holds
    proxies of them: a check built on ``Member`` does not test the alias's rows, nor the
    reverse."""
    if check.table is selectable:
        return True
    if selectable is None or check.table not in mapper.tables:
        return False
    column = check.table.c.get(check.sources[0]) if check.sources else None
    return column is not None and bool(selectable.c.contains_column(column))


def _attribute_keys(state: InstanceState[Any], check: ExactCheck) -> list[tuple[str, str]]:
    mapper = state.mapper
    table: Any = check.table
    while not isinstance(table, sa.Table) and isinstance(
        getattr(table, "element", None), sa.FromClause
    ):
        table = table.element  # an alias (aliased(Member)): the columns of its table
    out = []
    for key in check.sources:
        column = table.c[key]
        try:
            prop = mapper.get_property_by_column(column)
        except orm_exc.UnmappedColumnError:
            raise QueryError(
                f"{check.label}: its source column {key!r} is not mapped, so its values cannot "
                "be checked"
            ) from None
        out.append((key, prop.key))
    return out


def _row_matches(entity: Any, check: ExactCheck) -> bool:
    state = sa.inspect(entity)
    values = {}
    for key, attr in _attribute_keys(state, check):
        try:
            value = getattr(entity, attr)
        except ValueErasedError:
            return False  # an erased value matches nothing
        if type(value) is ErasedCandidate:
            return False  # loaded as such while the candidates were read (on_erased="raise")
        if type(value) is SealedValue:
            raise AccessDeniedError(
                f"{check.label}: checking the candidates of this lookup decrypts {key!r}, which "
                "needs the grant of its domain; a candidate is never dropped unread"
            )
        values[key] = value
    return check.matches(values)


@event.listens_for(Session, "do_orm_execute")
def _exact_results(orm_state: ORMExecuteState) -> Any:
    statement = orm_state.statement
    found = checks_in(statement)
    if not found:
        return None
    options = orm_state.execution_options
    if options.get(EXACT_OPTION) is False:
        return None
    if not orm_state.is_select:
        raise QueryError(
            f"{found[0].label}: an UPDATE or DELETE through a lossy index would also change the "
            "rows that only share its digest: select the entities and change them, or "
            f"{EXACT_OPTION}=False for the candidates"
        )
    top = top_level_checks(getattr(statement, "whereclause", None))
    if len(top) != len(found):
        raise QueryError(
            f"{found[0].label}: a lookup made exact must be one of the top-level AND conditions "
            "of the statement's WHERE clause (not under OR or NOT, not in a subquery); split the "
            f"query, or {EXACT_OPTION}=False for the candidates"
        )
    window: tuple[int, int | None] | None = None
    if isinstance(statement, Select) and (
        statement._limit_clause is not None
        or statement._offset_clause is not None
        or statement._fetch_clause is not None
    ):
        # LIMIT/OFFSET (and FETCH FIRST, a LIMIT too) would count the false positives: the
        # candidates are read without them and the exact matches sliced here (Query.first() is
        # LIMIT 1).
        fetch_options = statement._fetch_clause_options or {}
        try:
            if fetch_options.get("with_ties") or fetch_options.get("percent"):
                raise ValueError("FETCH ... WITH TIES / PERCENT")  # noqa: TRY301 - same message
            count = (
                statement._limit
                if statement._fetch_clause is None
                else statement._offset_or_limit_clause_asint(statement._fetch_clause, "fetch")
            )
            window = (statement._offset or 0, count)
        except Exception:  # a SQL expression as the limit: not known in Python
            raise QueryError(
                f"{found[0].label}: LIMIT/OFFSET/FETCH of an exact lookup must be integers (they "
                "are applied to the exact matches in Python; FETCH WITH TIES or PERCENT is not "
                f"offered), or {EXACT_OPTION}=False for the candidates"
            ) from None
        statement = statement.limit(None).offset(None)
    if options.get("yield_per") or options.get("stream_results"):
        raise QueryError(
            f"{found[0].label}: an exact lookup reads its candidates at once; drop yield_per / "
            f"stream_results, or {EXACT_OPTION}=False for the candidates"
        )
    positions = _entity_positions(orm_state, top)
    token = _handling.set(True)
    loading = loading_candidates.set(True)
    try:
        frozen = frozen_rows(orm_state.invoke_statement(statement=statement))
    finally:
        loading_candidates.reset(loading)
        _handling.reset(token)
    kept = []
    erased: list[ErasedCandidate] = []
    for row in frozen.data:
        # A result of entities alone holds them as they are; others hold rows.
        keep = all(
            _row_matches(row[position] if isinstance(row, sa.Row) else row, check)
            for check, position in zip(top, positions, strict=True)
        )
        if keep:
            kept.append(row)
        # An erased value (on_erased="raise") was loaded as an ErasedCandidate: the object
        # leaves the session (it must not hand the marker out later), and a kept row raises
        # as its plain load would have.
        for value in row if isinstance(row, sa.Row) else (row,):
            state = sa.inspect(value, raiseerr=False)
            if isinstance(state, InstanceState):
                held = [v for v in state.dict.values() if type(v) is ErasedCandidate]
                if held and state.session is not None:
                    state.session.expunge(value)
            else:
                held = [value] if type(value) is ErasedCandidate else []
            if keep:
                erased.extend(held)
    if erased:
        raise erased[0].error
    if window is not None:
        start, count = window
        kept = kept[start:] if count is None else kept[start : start + count]
    frozen.data = kept
    return frozen()


@event.listens_for(Engine, "before_cursor_execute")
def _refuse_unchecked(
    conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool
) -> None:
    compiled = getattr(context, "compiled", None)
    if compiled is None or compiled not in checked_compiled:
        return
    if _handling.get() or context.execution_options.get(EXACT_OPTION) is False:
        return
    raise QueryError(
        "this statement looks rows up through a lossy index (a truncated blind index, a compound, "
        "prefix, bucket or token index), whose candidates include rows that only share a digest: "
        "run it through an ORM Session selecting the entity, which keeps the exact matches, or "
        f"ask for the candidates knowingly with .execution_options({EXACT_OPTION}=False)"
    )
