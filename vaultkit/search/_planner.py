"""The index planner: how many bits an index may keep, given the counts of the values it indexes.

A truncated index trades privacy for speed. Too many bits and the index tells rows apart almost as
well as the plaintext (equal digests, equal values); too few and every lookup drags many false
candidates out of the table to be decrypted and dropped. Two published rules bound the width:

* AWS's beacon-length bounds for a field with ``X`` distinct values: ``2^N < X / 2`` so that
  distinct values surely share digests, and ``2^N > sqrt(X)`` so that a lookup does not degrade
  into a scan: ``N`` in ``[ceil(log2 sqrt X), floor(log2 (X / 2))]`` (AWS Database Encryption SDK,
  "Choosing a beacon length").
* CipherSweet's coincidence count over *all* indexes of the same source columns,
  ``C = R / 2^(sum_i min(L_i, K_i))`` with ``R`` rows, ``L_i`` the bits an index keeps and ``K_i``
  the bits of its input's domain; a new index should leave ``2 <= C <= sqrt(R)``
  (``FieldIndexPlanner`` in paragonie/ciphersweet). Two indexes on one field leak together: a
  12-bit postal-code index beside a 7-bit birth-year index tell 19 bits about the pair.

The planner also refuses a stand-alone index on a field with fewer than 2^8 distinct values (a
gender, a boolean: its digests *are* the values, up to a renaming) unless the field is a part of a
compound index, and recommends partitions when one value holds far more rows than the others (a
common surname stands out by its digest's frequency).

Everything here is arithmetic on counts; reading the counts from a database is
:func:`vaultkit.sqla.plan_column`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from vaultkit.errors import ConfigurationError

__all__ = [
    "DEFAULT_MAX_FALSE_POSITIVES",
    "MAX_PARTITIONS",
    "MIN_STANDALONE_DISTINCT",
    "IndexPlan",
    "Plan",
    "PlannedIndex",
    "aws_bounds",
    "ciphersweet_bounds",
    "coincidence_count",
    "distinct_estimate",
    "expected_false_positives",
    "plan",
    "recommend_partitions",
]

#: A stand-alone index needs at least this many distinct values (2^8); fewer go into a compound.
MIN_STANDALONE_DISTINCT: Final = 256
#: The recommended width is the narrowest one whose lookups bring at most this many false
#: candidates to decrypt (on average), within both rules' ranges.
DEFAULT_MAX_FALSE_POSITIVES: Final = 64.0
#: Partitions recommended at most (each one multiplies the digests a lookup sends).
MAX_PARTITIONS: Final = 16
#: The widths the new index types accept.
_MIN_BITS: Final = 4
_MAX_BITS: Final = 256
#: A value whose rows exceed this multiple of the average digest's rows is "skewed".
_SKEW_LIMIT: Final = 4.0
#: ...and holds at least this share of the rows (1 in 1,000: a common surname, not a birth date
#: that a sample happened to see a few times).
_MIN_TOP_SHARE: Final = 0.001


@dataclass(frozen=True, slots=True)
class PlannedIndex:
    """One index the planner counts: what it keeps and how many values feed it.

    Args:
        name: the index's attribute name (for the report).
        kind: ``"blind"``, ``"compound"``, ``"prefix"``, ``"token"`` or ``"bucket"``.
        sources: the source columns it reads.
        bits: the digest bits it keeps (``L``).
        distinct: distinct inputs it sees (after its transform), when known; gives ``K``.
        population: entries it holds (rows; terms for a token index), when known.
        partitions: partitions of each value (1: none).
        probes: digests one lookup sends besides partitions (buckets of a range, 1 otherwise).

    .. versionadded:: 0.4.0
    """

    name: str
    kind: str
    sources: tuple[str, ...]
    bits: int
    distinct: int | None = None
    population: int | None = None
    partitions: int = 1
    probes: int = 1

    @property
    def input_bits(self) -> float:
        """``K``: log2 of the distinct inputs (infinite when unknown, as CipherSweet assumes)."""
        if self.distinct is None or self.distinct < 1:
            return math.inf
        return math.log2(self.distinct)

    @property
    def effective_bits(self) -> float:
        """``min(L, K)``: what this index tells about its sources, in bits."""
        return min(float(self.bits), self.input_bits)


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """The planner's view of one existing index.

    Attributes:
        index: the index counted.
        false_positives: expected false candidates per lookup (decrypted and dropped).
        coincidences: CipherSweet's ``C`` of this index alone (``R / 2^min(L, K)``).
        refused: why this index should not exist as declared (``None``: fine).
    """

    index: PlannedIndex
    false_positives: float
    coincidences: float
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What the planner says about a field (see :func:`plan`).

    Attributes:
        column: the field planned.
        rows: ``R``, rows holding a value.
        distinct: ``X``, distinct values (after normalising).
        top_share: the most common value's share of the rows, when known.
        aws_bits: AWS's ``[ceil(log2 sqrt X), floor(log2 (X/2))]``, or ``None`` when empty.
        coincidences: CipherSweet's ``C`` over all existing indexes of the field.
        ciphersweet_bits: widths a *new* index could keep with ``2 <= C <= sqrt(R)`` overall, or
            ``None`` when no width can (the declared indexes already leave ``C`` below 2).
        recommended_bits: the narrowest width in both ranges with at most ``max_false_positives``
            false candidates per lookup (the widest of the range when none is that cheap), or
            ``None`` when a stand-alone index is refused or no width is in both ranges (the
            indexes already declared used the field's budget; see ``notes``).
        partitions: recommended partitions (1: none needed).
        indexes: the existing indexes on the field's source columns, each with its figures.
        refused: why a stand-alone index on this field is refused (``None``: it is not).
        notes: plain-language remarks (skew, rotation, combined leakage).

    .. versionadded:: 0.4.0
    """

    column: str
    rows: int
    distinct: int
    top_share: float | None
    aws_bits: tuple[int, int] | None
    coincidences: float
    ciphersweet_bits: tuple[int, int] | None
    recommended_bits: int | None
    partitions: int
    indexes: tuple[IndexPlan, ...] = ()
    refused: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Whether nothing is refused (the field's plan and every existing index)."""
        return self.refused is None and all(i.refused is None for i in self.indexes)

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (the CLI's ``--json``)."""

        def number(value: float) -> float | None:
            return None if math.isinf(value) or math.isnan(value) else round(value, 4)

        return {
            "column": self.column,
            "rows": self.rows,
            "distinct": self.distinct,
            "top_share": self.top_share,
            "aws_bits": list(self.aws_bits) if self.aws_bits else None,
            "coincidences": number(self.coincidences),
            "ciphersweet_bits": list(self.ciphersweet_bits) if self.ciphersweet_bits else None,
            "recommended_bits": self.recommended_bits,
            "partitions": self.partitions,
            "refused": self.refused,
            "ok": self.ok,
            "indexes": [
                {
                    "name": i.index.name,
                    "kind": i.index.kind,
                    "sources": list(i.index.sources),
                    "bits": i.index.bits,
                    "distinct": i.index.distinct,
                    "population": i.index.population,
                    "partitions": i.index.partitions,
                    "effective_bits": number(i.index.effective_bits),
                    "coincidences": number(i.coincidences),
                    "false_positives_per_lookup": number(i.false_positives),
                    "refused": i.refused,
                }
                for i in self.indexes
            ],
            "notes": list(self.notes),
        }


def aws_bounds(distinct: int) -> tuple[int, int] | None:
    """AWS's beacon-length bounds for ``distinct`` values: ``[ceil(log2 sqrt X), floor(log2 X/2)]``.

    ``None`` when the range is empty (fewer than four distinct values).

    .. versionadded:: 0.4.0
    """
    if distinct < 4:
        return None
    low = math.ceil(math.log2(math.sqrt(distinct)))
    high = math.floor(math.log2(distinct / 2))
    return (low, high) if low <= high else None


def coincidence_count(rows: int, effective_bits: Iterable[float]) -> float:
    """CipherSweet's coincidence count ``C = R / 2^(sum min(L_i, K_i))``.

    Args:
        rows: ``R``.
        effective_bits: ``min(L_i, K_i)`` of each index on the same source columns.

    .. versionadded:: 0.4.0
    """
    exponent = sum(effective_bits)
    if math.isinf(exponent):
        return 0.0
    return max(1, rows) / 2.0**exponent


def ciphersweet_bounds(
    rows: int, existing: Sequence[float] = (), *, input_bits: float = math.inf
) -> tuple[int, int]:
    """The widths ``L`` of a new index that keep ``2 <= C <= sqrt(R)`` with the ``existing`` ones.

    A port of CipherSweet's ``FieldIndexPlanner::recommend``: from 256 bits down, the widest ``L``
    past which ``C`` exceeds its floor (``max(2, C`` of the existing indexes plus an unbounded one
    ``)``) is the maximum, the narrowest with ``2 <= C <= sqrt(R)`` the minimum.

    Args:
        rows: ``R``.
        existing: ``min(L_i, K_i)`` of the indexes already on the same source columns.
        input_bits: ``K`` of the new index's input.

    .. versionadded:: 0.4.0
    """
    if rows < 1:
        raise ConfigurationError("an empty population is not useful for estimates")
    sqrt_r = math.sqrt(rows)
    boundary = max(2.0, coincidence_count(rows, [*existing, input_bits]))
    low: int | None = None
    high: int | None = None
    for width in range(_MAX_BITS, 0, -1):
        count = coincidence_count(rows, [*existing, min(float(width), input_bits)])
        if high is None and count > boundary:
            high = width + 1
        if 2 <= count <= sqrt_r:
            low = width
    if low is None:
        low = 1
    if high is None:
        high = min(_MAX_BITS, math.floor(input_bits)) if math.isfinite(input_bits) else _MAX_BITS
    return (min(low, high), high)


def expected_false_positives(
    bits: int, population: int, distinct: int | None, *, partitions: int = 1, probes: int = 1
) -> float:
    """Expected false candidates of one lookup: ``P * probes * (R - R/X) / 2^L``.

    Each entry whose value differs from the one looked up matches one of the lookup's
    ``partitions * probes`` digests with probability ``2^-L`` (the digest is a PRF); ``R/X`` is the
    average number of true matches of a value. For a token index ``population`` counts terms.

    .. versionadded:: 0.4.0
    """
    true_matches = population / distinct if distinct else 0.0
    return partitions * probes * max(0.0, population - true_matches) / 2.0**bits


def recommend_partitions(top_share: float | None, distinct: int, bits: int | None) -> int:
    """Partitions that bring the most common value's digests within 4x an average digest's rows.

    With ``L`` bits and ``X`` values an average digest holds ``1 / min(X, 2^L)`` of the rows; a
    value holding ``top_share`` of them stands out by its count. Spreading it over ``P`` digests
    chosen at random on write (AWS's recommendation) divides that count by ``P``. The result is a
    power of two, at most :data:`MAX_PARTITIONS` (each partition is one more digest per lookup).
    Values holding less than 0.1% of the rows never call for partitions.

    .. versionadded:: 0.4.0
    """
    if top_share is None or top_share < _MIN_TOP_SHARE or distinct < 1:
        return 1
    buckets = min(float(distinct), 2.0 ** (bits if bits is not None else _MAX_BITS))
    skew = top_share * buckets
    if skew <= _SKEW_LIMIT:
        return 1
    needed = 2 ** math.ceil(math.log2(skew / _SKEW_LIMIT))
    return int(min(MAX_PARTITIONS, needed))


def _refusal(distinct: int, column: str) -> str:
    return (
        f"{column or 'the field'} has {distinct} distinct values (fewer than "
        f"{MIN_STANDALONE_DISTINCT}): a stand-alone index on it is a renaming of its values; "
        "make it a Part of a CompoundIndex with higher-cardinality fields instead"
    )


def plan(
    *,
    rows: int,
    distinct: int,
    column: str = "",
    indexes: Sequence[PlannedIndex] = (),
    top_share: float | None = None,
    max_false_positives: float = DEFAULT_MAX_FALSE_POSITIVES,
) -> Plan:
    """Plan the indexes of one field from its counts.

    Args:
        rows: ``R``, rows holding a value in the field.
        distinct: ``X``, its distinct values (normalised as the index would).
        column: its name, for the report.
        indexes: the indexes already declared on the same source columns (all of them count
            towards the coincidence count); an index of kind ``"compound"`` makes a
            low-cardinality field acceptable.
        top_share: the most common value's share of the rows (0 to 1), for partition advice.
        max_false_positives: the recommended width is the narrowest with at most this many false
            candidates per lookup on average.

    Returns:
        A :class:`Plan`; ``plan.ok`` is false when something is refused.

    Raises:
        ConfigurationError: counts that make no sense (no rows, more distinct values than rows).

    .. versionadded:: 0.4.0
    """
    if not isinstance(rows, int) or rows < 1:
        raise ConfigurationError("the planner needs a row count of at least 1")
    if not isinstance(distinct, int) or not 1 <= distinct <= rows:
        raise ConfigurationError("the distinct count must be from 1 to the row count")
    if top_share is not None and not 0 <= top_share <= 1:
        raise ConfigurationError("the top value's share is from 0 to 1")
    notes: list[str] = []
    aws = aws_bounds(distinct)
    existing = [i.effective_bits for i in indexes]
    coincidences = coincidence_count(rows, existing) if indexes else float(rows)
    input_bits = math.log2(distinct) if distinct > 1 else 0.0
    cs_low, cs_high = ciphersweet_bounds(rows, existing, input_bits=max(input_bits, 1.0))
    cs_fits = any(
        2
        <= coincidence_count(rows, [*existing, min(float(w), max(input_bits, 1.0))])
        <= math.sqrt(rows)
        for w in range(cs_low, cs_high + 1)
    )
    low = max(cs_low, aws[0] if aws else cs_low, _MIN_BITS)
    high = min(cs_high, aws[1] if aws else cs_high)
    new_bits = max(input_bits, 1.0)
    sqrt_r = math.sqrt(rows)
    # The port's range is a fallback (1 to K bits) when no width keeps C in [2, sqrt(R)], as when
    # the declared indexes already single rows out: then there is no room for another index.
    room = low <= high and any(
        2 <= coincidence_count(rows, [*existing, min(float(w), new_bits)]) <= sqrt_r
        for w in range(low, high + 1)
    )
    if not room and indexes and not cs_fits:
        notes.append(
            f"no room for another index: the indexes already declared leave C = "
            f"{coincidences:.3g}; any further index would bring it below 2 (together they "
            "would nearly single rows out)"
            if coincidences >= 2
            else f"no room for another index: the indexes already declared leave C = "
            f"{coincidences:.3g}, below 2 (together they nearly single rows out)"
        )
    elif not room:
        notes.append(
            "no width satisfies both rules: CipherSweet allows "
            f"{cs_low}-{cs_high} bits for another index"
            + (" (the indexes already declared use the rest)" if indexes else "")
            + ", AWS "
            + (f"{aws[0]}-{aws[1]}" if aws else "none")
        )
    in_compound = any(i.kind == "compound" for i in indexes)
    refused = None
    recommended: int | None = None
    if distinct < MIN_STANDALONE_DISTINCT:
        refused = _refusal(distinct, column)
        if in_compound:
            notes.append(
                f"{column or 'the field'} is part of a compound index, where its few values "
                "hide among the other parts'"
            )
    elif room:
        fits = [
            w
            for w in range(low, high + 1)
            if 2 <= coincidence_count(rows, [*existing, min(float(w), new_bits)]) <= sqrt_r
        ]
        recommended = fits[-1]
        for width in fits:
            if expected_false_positives(width, rows, distinct) <= max_false_positives:
                recommended = width
                break
    partitions = recommend_partitions(
        top_share, distinct, recommended if recommended is not None else (aws[1] if aws else None)
    )
    if partitions > 1 and top_share is not None:
        notes.append(
            f"the most common value holds {top_share:.2%} of the rows: declare "
            f"partitions={partitions} (random on write; lookups send {partitions} digests in one "
            "query, and bring that many times the false candidates); partitions may only grow"
        )
    plans: list[IndexPlan] = []
    for index in indexes:
        population = index.population if index.population is not None else rows
        index_distinct = index.distinct
        if index_distinct is None and index.kind == "blind" and index.sources == (column,):
            index_distinct = distinct
        fp = expected_false_positives(
            index.bits,
            population,
            index_distinct,
            partitions=index.partitions,
            probes=index.probes,
        )
        index_refused = None
        # Any stand-alone index whose inputs are few is a renaming of them, whatever its kind:
        # a one-letter prefix, a year bucket, a blind index of a boolean. Only the parts of a
        # compound index hide among the others'.
        if (
            index.kind != "compound"
            and index_distinct is not None
            and index_distinct < MIN_STANDALONE_DISTINCT
        ):
            index_refused = _refusal(index_distinct, index.name)
        plans.append(
            IndexPlan(
                index=index,
                false_positives=fp,
                coincidences=coincidence_count(population, [index.effective_bits]),
                refused=index_refused,
            )
        )
    if len(indexes) > 1:
        total = sum(existing)
        notes.append(
            f"together the {len(indexes)} indexes on these columns tell "
            + (f"{total:.1f} bits" if math.isfinite(total) else "an unbounded number of bits")
            + f" about their sources (C = {coincidences:.3g}"
            + ("; below 2, they nearly single rows out)" if coincidences < 2 else ")")
        )
    return Plan(
        column=column,
        rows=rows,
        distinct=distinct,
        top_share=top_share,
        aws_bits=aws,
        coincidences=coincidences,
        ciphersweet_bits=(cs_low, cs_high) if cs_fits else None,
        recommended_bits=recommended,
        partitions=partitions,
        indexes=tuple(plans),
        refused=None if in_compound else refused,
        notes=tuple(notes),
    )


def distinct_estimate(counts: Mapping[Any, int], population: int) -> int:
    """Distinct values in a population of ``population`` estimated from a sample's value counts.

    The GEE estimator (Charikar, Chaudhuri, Motwani, Narasayya, PODS 2000):
    ``sqrt(N/n) * f1 + sum_{j>=2} f_j``, with ``f_j`` the values seen ``j`` times in a sample of
    ``n``; exact when the sample is the whole population.
    """
    sample = sum(counts.values())
    if sample == 0:
        return 0
    if sample >= population:
        return len(counts)
    singletons = sum(1 for c in counts.values() if c == 1)
    others = len(counts) - singletons
    estimate = math.sqrt(population / sample) * singletons + others
    return max(len(counts), min(population, round(estimate)))
