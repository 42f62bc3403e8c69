"""Spark: vaultkit's Arrow kernels over a DataFrame's partitions (``mapInArrow``).

::

    from vaultkit.arrow import VaultSpec, decrypt
    from vaultkit.integrations.spark import map_in_arrow

    spec = VaultSpec("/etc/vaultkit/vaultkit.toml")
    members = map_in_arrow(members, spec, [decrypt("email", column=Member.email)])

Spark pickles the function it hands to its Python workers: here a
:class:`~vaultkit.arrow.BatchTransform`, which holds the spec (a path and non-secret overrides) and
the operations, never a key. Each Python worker opens its own vault from the spec with the
secrets of the executor's environment (``spark.executorEnv.VAULTKIT_MASTER_KEY`` is *not* the
place for them: executor settings show in the Spark UI; use the executor's own environment or
the provider's credentials). Extra ``vaultkit[spark]``.

.. versionadded:: 0.4.0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from vaultkit import Principal
from vaultkit.arrow import BatchTransform, Op, VaultSpec, output_schema

__all__ = ["batch_function", "map_in_arrow", "output_spark_schema"]


def batch_function(
    spec: VaultSpec | None,
    ops: Iterable[Op],
    *,
    principal: Principal | None = None,
    purpose: str | None = None,
) -> BatchTransform:
    """The function :func:`map_in_arrow` hands to Spark: iterator of RecordBatches in and out."""
    return BatchTransform(spec, tuple(ops), principal, purpose)


def output_spark_schema(schema: Any, ops: Iterable[Op]) -> Any:
    """The Spark schema of the result, for input Spark schema ``schema``."""
    return from_arrow_schema(output_schema(to_arrow_schema(schema), ops))


def map_in_arrow(
    frame: DataFrame,
    spec: VaultSpec | None,
    ops: Iterable[Op],
    *,
    principal: Principal | None = None,
    purpose: str | None = None,
) -> DataFrame:
    """``frame`` with ``ops`` applied on the executors (binary columns hold ciphertexts), as
    ``principal`` for ``purpose`` when given (see :func:`vaultkit.arrow.transform`)."""
    function = batch_function(spec, ops, principal=principal, purpose=purpose)
    return frame.mapInArrow(function, output_spark_schema(frame.schema, function.ops))
