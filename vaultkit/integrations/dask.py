"""Dask: vaultkit's Arrow kernels over every partition of a DataFrame (``map_partitions``).

::

    from vaultkit.arrow import VaultSpec, decrypt, blind_index
    from vaultkit.integrations.dask import map_partitions

    spec = VaultSpec("/etc/vaultkit/vaultkit.toml")          # a path: no key in the task graph
    members = map_partitions(members, spec, [decrypt("email", column=Member.email)])

Each worker opens its own vault from the spec (once per worker process) with the secrets of its
own environment; the graph holds the spec and the operations only. Extra ``vaultkit[dask]``.

.. versionadded:: 0.4.0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa

from vaultkit import Principal
from vaultkit.arrow import BatchTransform, Op, VaultSpec, output_schema

__all__ = ["map_partitions", "transform_partition"]


def transform_partition(frame: pd.DataFrame, transform: BatchTransform) -> pd.DataFrame:
    """Apply ``transform`` to one pandas partition, keeping its index."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    out = transform(table)
    result = out.to_pandas(types_mapper=_types_mapper)
    result.index = frame.index
    return result


def _types_mapper(arrow_type: Any) -> Any:
    # Text comes back as pandas' Arrow-backed strings, which is what Dask's meta holds; binary as
    # Arrow-backed binary (an object column of bytes would be taken for text by Dask).
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype("pyarrow")
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return pd.ArrowDtype(arrow_type)
    return None


def map_partitions(
    frame: dd.DataFrame,
    spec: VaultSpec | None,
    ops: Iterable[Op],
    *,
    principal: Principal | None = None,
    purpose: str | None = None,
) -> dd.DataFrame:
    """``frame`` with ``ops`` applied to every partition on the workers.

    Args:
        frame: a Dask DataFrame; binary columns hold ciphertexts, text columns plaintexts.
        spec: the vault the workers open (``None`` when only audience hashes are made).
        ops: :func:`vaultkit.arrow.decrypt`, :func:`~vaultkit.arrow.encrypt`,
            :func:`~vaultkit.arrow.blind_index`, :func:`~vaultkit.arrow.audience_hash`.
        principal, purpose: run as this principal on the workers (a restricted domain's values
            need its grant; the caller's ``acting_as`` does not reach the workers).
    """
    transform = BatchTransform(spec, tuple(ops), principal, purpose)
    empty = pa.Table.from_pandas(frame._meta, preserve_index=False)
    schema = output_schema(empty.schema, transform.ops)
    meta = schema.empty_table().to_pandas(types_mapper=_types_mapper)
    meta.index = frame._meta.index
    apply: Any = frame.map_partitions  # untyped in Dask
    mapped: dd.DataFrame = apply(transform_partition, transform, meta=meta)
    return mapped
