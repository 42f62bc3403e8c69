"""Searching encrypted columns beyond equality: the transforms indexes apply before digesting.

The index declarations themselves are column-like and live in :mod:`vaultkit.sqla`
(``CompoundIndex``, ``Part``, ``PrefixIndex``, ``BucketIndex``, ``BlindIndex(partitions=)``);
docs/search.md explains what each one leaks and how to choose its width.
"""

from __future__ import annotations

from vaultkit.search._transforms import digits, first_char, fold_name, month, name_tokens, year

__all__ = ["digits", "first_char", "fold_name", "month", "name_tokens", "year"]
