"""Polars (map_batches expressions, eager and lazy over Parquet) and DuckDB (Arrow UDFs in SQL
over Parquet) on the real engines: the scalar API's values, NULLs kept, misplaced values refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.unit.arrow._spec import worker_environment
from vaultkit import Principal, Vault, acting_as
from vaultkit.arrow import (
    ColumnSpec,
    IndexSpec,
    VaultSpec,
    blind_index_array,
    encrypt_array,
    hash_audience_array,
)
from vaultkit.errors import AccessDeniedError, DecryptionError
from vaultkit.integrations import duckdb as vkdb
from vaultkit.integrations import polars as vkpl

EMAIL = ColumnSpec("identity", "members", "email")
NOTE = ColumnSpec("identity", "members", "note", row_bound=True)
INDEX = IndexSpec("identity", "members", "email", normalize=str.lower)
EMAILS = [None if i % 7 == 0 else f"M{i}@Example.be" for i in range(3000)] + ["bad", ""]
IDS = [str(i) for i in range(len(EMAILS))]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VaultSpec, Vault, Path]]:
    directory = tmp_path_factory.mktemp("engines")
    with worker_environment(directory) as (spec, _):
        vault = spec.open()
        table = pa.table(
            {
                "id": pa.array(IDS),
                "email": encrypt_array(vault, pa.array(EMAILS), column=EMAIL),
                "note": encrypt_array(
                    vault, pa.array([f"n{i}" for i in IDS]), column=NOTE, row_keys=pa.array(IDS)
                ),
            }
        )
        path = directory / "members.parquet"
        pq.write_table(table, path, row_group_size=1000)
        yield spec, vault, path


def _expected(vault: Vault) -> tuple[list[bytes | None], list[str | None], list[str | None]]:
    hashes, reasons = hash_audience_array(pa.array(EMAILS), platform="google")
    return (
        blind_index_array(vault, pa.array(EMAILS), index=INDEX).to_pylist(),
        hashes.to_pylist(),
        reasons.to_pylist(),
    )


def test_polars_expressions(env: tuple[VaultSpec, Vault, Path]) -> None:
    spec, vault, path = env
    plain = pl.col("email")
    query = (
        pl.scan_parquet(path)
        .with_columns(vkpl.decrypt(plain, spec, column=EMAIL))
        .with_columns(
            vkpl.decrypt(pl.col("note"), spec, column=NOTE, row_key=pl.col("id")),
            vkpl.blind_index(plain, spec, index=INDEX).alias("email_index"),
            vkpl.audience_hash(plain, platform="google").alias("hash"),
            vkpl.audience_reasons(plain, platform="google").alias("why"),
            vkpl.encrypt(plain, spec, column=EMAIL).alias("again"),
        )
    )
    out = query.collect()
    # Elementwise expressions: the streaming engine runs them batch by batch, same results.
    streamed = query.collect(engine="streaming")
    assert streamed.drop("again").equals(out.drop("again"))
    assert out["email"].to_list() == EMAILS
    assert out["note"].to_list() == [f"n{i}" for i in IDS]
    index, hashes, reasons = _expected(vault)
    assert out["email_index"].to_list() == index
    assert out["hash"].to_list() == hashes
    assert out["why"].to_list() == reasons
    field = EMAIL.field(vault)
    assert [None if b is None else field.decrypt(b) for b in out["again"].to_list()] == EMAILS
    with pytest.raises(DecryptionError):
        pl.read_parquet(path).select(
            vkpl.decrypt(pl.col("email"), spec, column=ColumnSpec("identity", "members", "phone"))
        )


def test_duckdb_functions_in_sql(env: tuple[VaultSpec, Vault, Path]) -> None:
    spec, vault, path = env
    con = duckdb.connect()
    try:
        vkdb.register_decrypt(con, "email_plain", spec, column=EMAIL)
        vkdb.register_decrypt(con, "note_plain", spec, column=NOTE, row_key_type="VARCHAR")
        vkdb.register_encrypt(con, "email_cipher", spec, column=EMAIL)
        vkdb.register_blind_index(con, "email_index", spec, index=INDEX)
        vkdb.register_audience_hash(con, "google_hash", platform="google")
        vkdb.register_audience_reasons(con, "google_reasons", platform="google")
        rows = con.execute(
            "SELECT email_plain(email), note_plain(note, id), email_index(email_plain(email)), "
            "google_hash(email_plain(email)), google_reasons(email_plain(email)), "
            "email_plain(email_cipher(email_plain(email))) "
            "FROM read_parquet(?) ORDER BY CAST(id AS INTEGER)",
            [str(path)],
        ).fetchall()
        columns = list(zip(*rows, strict=True))
        assert list(columns[0]) == EMAILS
        assert list(columns[1]) == [f"n{i}" for i in IDS]
        index, hashes, reasons = _expected(vault)
        assert list(columns[2]) == index
        assert list(columns[3]) == hashes
        assert list(columns[4]) == reasons
        assert list(columns[5]) == EMAILS
        # A note moved to another row does not open.
        with pytest.raises(duckdb.Error, match="could not be authenticated"):
            con.execute(
                "SELECT note_plain(note, '0') FROM read_parquet(?) WHERE id = '1'", [str(path)]
            ).fetchall()
        with pytest.raises(TypeError, match="not row-bound"):
            vkdb.register_decrypt(con, "x", spec, column=EMAIL, row_key_type="VARCHAR")
    finally:
        con.close()


MEDICAL = ColumnSpec("medical", "claims", "diagnosis")
ADVISER = Principal("adviser", grants={"medical"})


def test_restricted_columns_need_the_principal_on_the_engines_threads(
    env: tuple[VaultSpec, Vault, Path],
) -> None:
    """Polars and DuckDB may call the kernels on threads of their own (DuckDB does for larger
    inputs), which the caller's acting_as does not reach: a restricted column opens with
    principal= on the adapter, on whatever thread the engine picks; without it, it does not."""
    spec, vault, _ = env
    with acting_as(ADVISER, purpose="claims"):
        blobs = encrypt_array(vault, pa.array(["flu", None, "asthma"]), column=MEDICAL)
    frame = pl.DataFrame({"diagnosis": pl.from_arrow(blobs)})
    with pytest.raises(AccessDeniedError):
        frame.lazy().select(vkpl.decrypt(pl.col("diagnosis"), spec, column=MEDICAL)).collect(
            engine="streaming"
        )
    scoped = vkpl.decrypt(
        pl.col("diagnosis"), spec, column=MEDICAL, principal=ADVISER, purpose="claims"
    )
    assert frame.select(scoped)["diagnosis"].to_list() == ["flu", None, "asthma"]
    con = duckdb.connect()
    try:
        con.register("claims", pa.table({"diagnosis": blobs}))
        vkdb.register_decrypt(con, "diagnosis_plain", spec, column=MEDICAL)
        with pytest.raises(duckdb.Error, match="no grant"):
            con.execute("SELECT diagnosis_plain(diagnosis) FROM claims").fetchall()
        vkdb.register_decrypt(
            con, "diagnosis_as_adviser", spec, column=MEDICAL, principal=ADVISER, purpose="claims"
        )
        rows = con.execute("SELECT diagnosis_as_adviser(diagnosis) FROM claims").fetchall()
        assert [r[0] for r in rows] == ["flu", None, "asthma"]
    finally:
        con.close()
