"""Polars: vaultkit's Arrow kernels as expressions (``map_batches``), no plugin to compile.

::

    import polars as pl
    from vaultkit.integrations import polars as vkpl

    spec = VaultSpec("/etc/vaultkit/vaultkit.toml")
    members.with_columns(
        vkpl.decrypt(pl.col("email"), spec, column=Member.email),
        vkpl.blind_index(pl.col("email_plain"), spec, index=Member.email_index).alias("idx"),
    )

Each expression runs the kernel on whole Series (as Arrow arrays) in this process; the vault is
opened from the spec once per process. Extra ``vaultkit[polars]``.

.. versionadded:: 0.4.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from vaultkit import Principal, arrow
from vaultkit.arrow import ColumnSpec, IndexSpec, VaultSpec

__all__ = ["audience_hash", "audience_reasons", "blind_index", "decrypt", "encrypt"]


@dataclass(frozen=True, slots=True)
class _SeriesKernel:
    """A kernel applied to a Series as an Arrow array; picklable, key-free."""

    spec: VaultSpec | None
    action: str
    options: tuple[tuple[str, Any], ...]
    principal: Principal | None = None
    purpose: str | None = None

    def __call__(self, series: pl.Series) -> pl.Series:
        rows = None
        if series.dtype == pl.Struct:  # values and row keys (_with_rows)
            parts = series.struct.unnest()
            rows = _arrow(parts.to_series(1))
            name = parts.columns[0]
            values = _arrow(parts.to_series(0))
        else:
            name = series.name
            values = _arrow(series)
        options = dict(self.options)
        if self.action == "audience":
            want_reasons = options.pop("_reasons", False)
            hashes, reasons = arrow.hash_audience_array(values, **options)
            out = reasons if want_reasons else hashes
        else:
            if self.spec is None:
                raise TypeError("this kernel needs a VaultSpec")
            vault = self.spec.open()
            with arrow.acting(vault, self.principal, self.purpose):
                if self.action == "decrypt":
                    out = arrow.decrypt_array(vault, values, row_keys=rows, **options)
                elif self.action == "encrypt":
                    out = arrow.encrypt_array(vault, values, row_keys=rows, **options)
                else:
                    out = arrow.blind_index_array(vault, values, **options)
        return pl.Series(name, out)


def _arrow(series: pl.Series) -> Any:
    values = series.to_arrow()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = values.cast(pa.string())
    return values


def _with_rows(expr: pl.Expr, row_key: pl.Expr | None, column: ColumnSpec) -> pl.Expr:
    """The expression the kernel maps: the values, or a struct of values and row keys."""
    if column.row_bound and row_key is None:
        raise TypeError(f"{column.table}.{column.column} is row-bound: pass row_key=")
    if row_key is None:
        return expr
    if not column.row_bound:
        raise TypeError(f"{column.table}.{column.column} is not row-bound: no row_key")
    return pl.struct(expr, row_key.alias("__vaultkit_row_key"))


def _column(column: ColumnSpec | Any) -> ColumnSpec:
    return column if isinstance(column, ColumnSpec) else arrow.column_spec(column)


def decrypt(
    expr: pl.Expr,
    spec: VaultSpec,
    *,
    column: ColumnSpec | Any,
    row_key: pl.Expr | None = None,
    type: Any = None,
    on_erased: str = "raise",
    principal: Principal | None = None,
    purpose: str | None = None,
) -> pl.Expr:
    """Decrypt a binary expression; ``type`` is the plaintexts' Arrow type (default string);
    ``row_key`` the expression of a row-bound column's row keys (``pl.col("id")``); with
    ``principal`` and ``purpose`` it runs as that principal (Polars runs expressions on threads
    of its own, which the caller's ``acting_as`` does not reach)."""
    arrow_type = pa.string() if type is None else type
    bound = _column(column)
    kernel = _SeriesKernel(
        spec,
        "decrypt",
        (("column", bound), ("type", arrow_type), ("on_erased", on_erased)),
        principal,
        purpose,
    )
    arrow.acting(None, principal, purpose)
    dtype = pl.from_arrow(pa.array([], type=arrow_type)).dtype  # type: ignore[union-attr]
    return _with_rows(expr, row_key, bound).map_batches(
        kernel, return_dtype=dtype, is_elementwise=True
    )


def encrypt(
    expr: pl.Expr, spec: VaultSpec, *, column: ColumnSpec | Any, row_key: pl.Expr | None = None
) -> pl.Expr:
    """Encrypt an expression's values into binary ciphertexts (with ``row_key`` when the column
    is row-bound)."""
    bound = _column(column)
    kernel = _SeriesKernel(spec, "encrypt", (("column", bound),))
    return _with_rows(expr, row_key, bound).map_batches(
        kernel, return_dtype=pl.Binary, is_elementwise=True
    )


def blind_index(expr: pl.Expr, spec: VaultSpec, *, index: IndexSpec | Any) -> pl.Expr:
    """Blind-index digests of a text expression, as the index column stores them."""
    spec_of = index if isinstance(index, IndexSpec) else arrow.index_spec(index)
    kernel = _SeriesKernel(spec, "blind_index", (("index", spec_of),))
    return expr.map_batches(kernel, return_dtype=pl.Binary, is_elementwise=True)


def _audience(
    reasons: bool, platform: str, kind: str, rules: str | None, region: str | None
) -> Any:
    arrow.audience_hash(
        "_", platform=platform, target="_", kind=kind, rules=rules, default_region=region
    )
    options: tuple[tuple[str, Any], ...] = (
        ("platform", platform),
        ("kind", kind),
        ("rules", rules),
        ("default_region", region),
    )
    return _SeriesKernel(
        None, "audience", (*options, ("_reasons", reasons)) if reasons else options
    )


def audience_hash(
    expr: pl.Expr,
    *,
    platform: str,
    kind: str = "email",
    rules: str | None = None,
    default_region: str | None = None,
) -> pl.Expr:
    """Audience hashes (64 hex characters; null where rejected) of a text expression."""
    kernel = _audience(False, platform, kind, rules, default_region)
    return expr.map_batches(kernel, return_dtype=pl.String, is_elementwise=True)


def audience_reasons(
    expr: pl.Expr,
    *,
    platform: str,
    kind: str = "email",
    rules: str | None = None,
    default_region: str | None = None,
) -> pl.Expr:
    """The reject reasons (null where accepted) that :func:`audience_hash` would give."""
    kernel = _audience(True, platform, kind, rules, default_region)
    return expr.map_batches(kernel, return_dtype=pl.String, is_elementwise=True)
