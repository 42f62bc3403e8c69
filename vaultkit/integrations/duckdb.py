"""DuckDB: vaultkit's Arrow kernels as vectorised scalar functions (Arrow UDFs).

::

    import duckdb
    from vaultkit.integrations import duckdb as vkdb

    con = duckdb.connect()
    vkdb.register_decrypt(con, "email_plain", spec, column=Member.email)
    vkdb.register_blind_index(con, "email_index", spec, index=Member.email_index)
    vkdb.register_audience_hash(con, "google_hash", platform="google")
    con.sql("SELECT email_plain(email) FROM read_parquet('members.parquet')")

DuckDB hands each function whole vectors as Arrow arrays (``create_function(..., type="arrow")``);
the vault is opened from the spec once per process. A row-bound column's function takes the row
key as its second argument. Extra ``vaultkit[duckdb]``.

.. versionadded:: 0.4.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from vaultkit import Principal, arrow
from vaultkit.arrow import ColumnSpec, IndexSpec, VaultSpec

__all__ = [
    "register_audience_hash",
    "register_audience_reasons",
    "register_blind_index",
    "register_decrypt",
    "register_encrypt",
]

#: DuckDB types of the Arrow types decrypt can return.
_SQL_TYPES: dict[Any, str] = {
    pa.string(): "VARCHAR",
    pa.large_string(): "VARCHAR",
    pa.binary(): "BLOB",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
    pa.timestamp("us"): "TIMESTAMP",
    pa.timestamp("us", "UTC"): "TIMESTAMP WITH TIME ZONE",
}


@dataclass(frozen=True, slots=True)
class _Udf:
    spec: VaultSpec | None
    action: str
    options: tuple[tuple[str, Any], ...]
    principal: Principal | None = None
    purpose: str | None = None

    def __call__(self, values: Any) -> Any:
        return self.run(values, None)

    def run(self, values: Any, rows: Any) -> Any:
        options = dict(self.options)
        if self.action in ("audience", "reasons"):
            hashes, reasons = arrow.hash_audience_array(values, **options)
            return reasons if self.action == "reasons" else hashes
        if self.spec is None:
            raise TypeError("this function needs a VaultSpec")
        vault = self.spec.open()
        with arrow.acting(vault, self.principal, self.purpose):
            if self.action == "decrypt":
                return arrow.decrypt_array(vault, values, row_keys=rows, **options)
            if self.action == "encrypt":
                return arrow.encrypt_array(vault, values, row_keys=rows, **options)
            return arrow.blind_index_array(vault, values, **options)


class _RowBoundUdf(_Udf):
    """The function of a row-bound column: DuckDB reads the arity from the signature."""

    __slots__ = ()

    def __call__(self, values: Any, rows: Any) -> Any:  # type: ignore[override]
        return self.run(values, rows)


def _udf(
    spec: VaultSpec | None,
    action: str,
    options: tuple[tuple[str, Any], ...],
    column: ColumnSpec | None = None,
    principal: Principal | None = None,
    purpose: str | None = None,
) -> _Udf:
    arrow.acting(None, principal, purpose)
    if column is not None and column.row_bound:
        return _RowBoundUdf(spec, action, options, principal, purpose)
    return _Udf(spec, action, options, principal, purpose)


def _create(
    con: duckdb.DuckDBPyConnection,
    name: str,
    udf: _Udf,
    params: list[str],
    returns: str,
    *,
    side_effects: bool,
) -> None:
    # Arrow vectors in and out; NULLs handed to the kernel (which keeps them) rather than
    # filtered, so that the audience reasons of a NULL identifier come out. The enums of
    # duckdb's stubs moved between releases (duckdb.functional, duckdb.func): the strings work
    # in every release.
    register: Any = con.create_function
    register(
        name,
        udf,
        params,
        returns,
        type="arrow",
        null_handling="special",
        side_effects=side_effects,
    )


def _column(column: ColumnSpec | Any) -> ColumnSpec:
    return column if isinstance(column, ColumnSpec) else arrow.column_spec(column)


def _row_key_type(row_key_type: str | None, spec: ColumnSpec) -> list[str]:
    if spec.row_bound:
        return [row_key_type or "VARCHAR"]
    if row_key_type is not None:
        raise TypeError(f"{spec.table}.{spec.column} is not row-bound: no row key argument")
    return []


def register_decrypt(
    con: duckdb.DuckDBPyConnection,
    name: str,
    spec: VaultSpec,
    *,
    column: ColumnSpec | Any,
    type: Any = None,
    row_key_type: str | None = None,
    on_erased: str = "raise",
    principal: Principal | None = None,
    purpose: str | None = None,
) -> None:
    """``name(blob [, row_key])``: the plaintext, as Arrow ``type`` (default string); as
    ``principal`` for ``purpose`` when given (DuckDB calls functions on threads of its own,
    which the caller's ``acting_as`` does not reach)."""
    column_spec = _column(column)
    arrow_type = pa.string() if type is None else type
    sql_type = _SQL_TYPES.get(arrow_type)
    if sql_type is None:
        raise TypeError(
            f"no DuckDB type for {arrow_type}; use one of {sorted(set(_SQL_TYPES.values()))}"
        )
    udf = _udf(
        spec,
        "decrypt",
        (("column", column_spec), ("type", arrow_type), ("on_erased", on_erased)),
        column_spec,
        principal,
        purpose,
    )
    params = ["BLOB", *_row_key_type(row_key_type, column_spec)]
    _create(con, name, udf, params, sql_type, side_effects=False)


def register_encrypt(
    con: duckdb.DuckDBPyConnection,
    name: str,
    spec: VaultSpec,
    *,
    column: ColumnSpec | Any,
    value_type: str = "VARCHAR",
    row_key_type: str | None = None,
) -> None:
    """``name(value [, row_key])``: the ciphertext (BLOB). Fresh randomness per call: marked as
    having side effects, so that DuckDB never folds two calls into one."""
    column_spec = _column(column)
    udf = _udf(spec, "encrypt", (("column", column_spec),), column_spec)
    params = [value_type, *_row_key_type(row_key_type, column_spec)]
    _create(con, name, udf, params, "BLOB", side_effects=True)


def register_blind_index(
    con: duckdb.DuckDBPyConnection,
    name: str,
    spec: VaultSpec,
    *,
    index: IndexSpec | Any,
    value_type: str = "VARCHAR",
) -> None:
    """``name(value)``: the blind-index digest (BLOB), as the index column stores it."""
    spec_of = index if isinstance(index, IndexSpec) else arrow.index_spec(index)
    udf = _Udf(spec, "blind_index", (("index", spec_of),))
    _create(con, name, udf, [value_type], "BLOB", side_effects=False)


def _audience_options(
    platform: str, kind: str, rules: str | None, region: str | None
) -> tuple[tuple[str, Any], ...]:
    arrow.audience_hash(
        "_", platform=platform, target="_", kind=kind, rules=rules, default_region=region
    )
    return (("platform", platform), ("kind", kind), ("rules", rules), ("default_region", region))


def register_audience_hash(
    con: duckdb.DuckDBPyConnection,
    name: str,
    *,
    platform: str,
    kind: str = "email",
    rules: str | None = None,
    default_region: str | None = None,
) -> None:
    """``name(identifier)``: the audience hash (VARCHAR, NULL where rejected)."""
    udf = _Udf(None, "audience", _audience_options(platform, kind, rules, default_region))
    _create(con, name, udf, ["VARCHAR"], "VARCHAR", side_effects=False)


def register_audience_reasons(
    con: duckdb.DuckDBPyConnection,
    name: str,
    *,
    platform: str,
    kind: str = "email",
    rules: str | None = None,
    default_region: str | None = None,
) -> None:
    """``name(identifier)``: the reject reasons (VARCHAR, NULL where accepted)."""
    udf = _Udf(None, "reasons", _audience_options(platform, kind, rules, default_region))
    _create(con, name, udf, ["VARCHAR"], "VARCHAR", side_effects=False)
