"""Searching encrypted columns beyond equality: the transforms indexes apply before digesting.

The index declarations themselves are column-like and live in :mod:`vaultkit.sqla`
(``CompoundIndex``, ``Part``, ``PrefixIndex``, ``BucketIndex``, ``BlindIndex(partitions=)``);
docs/search.md explains what each one leaks and how to choose its width with the planner
(:func:`plan`, also ``vaultkit index plan``).
"""

from __future__ import annotations

from vaultkit.search._planner import (
    Plan,
    PlannedIndex,
    aws_bounds,
    ciphersweet_bounds,
    coincidence_count,
    distinct_estimate,
    expected_false_positives,
    plan,
    recommend_partitions,
)
from vaultkit.search._transforms import digits, first_char, fold_name, month, name_tokens, year

__all__ = [
    "Plan",
    "PlannedIndex",
    "aws_bounds",
    "ciphersweet_bounds",
    "coincidence_count",
    "digits",
    "distinct_estimate",
    "expected_false_positives",
    "first_char",
    "fold_name",
    "month",
    "name_tokens",
    "plan",
    "recommend_partitions",
    "year",
]
