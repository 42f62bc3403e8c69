"""Column operations on record batches (what the adapters ship): in place or appended, typed,
row keys from a batch column, no vault opened for an empty batch, key-free when pickled."""

from __future__ import annotations

import pickle

import cloudpickle
import pyarrow as pa
import pytest

from tests.unit.arrow._spec import key_material
from vaultkit import Principal, Vault, acting_as
from vaultkit.arrow import (
    BatchTransform,
    ColumnSpec,
    IndexSpec,
    VaultSpec,
    audience_hash,
    blind_index,
    decrypt,
    encrypt,
    encrypt_array,
    output_schema,
    transform,
)
from vaultkit.errors import AccessDeniedError, ConfigurationError

EMAIL = ColumnSpec("identity", "members", "email")
NOTE = ColumnSpec("identity", "members", "note", row_bound=True)
INDEX = IndexSpec("identity", "members", "email", normalize=str.lower)


def test_operations_replace_or_append_columns(spec: VaultSpec, arrow_vault: Vault) -> None:
    emails = ["Jan@Example.be", None, "bad"]
    batch = pa.record_batch(
        {
            "id": pa.array([10, 11, 12]),
            "email": encrypt_array(arrow_vault, pa.array(emails), column=EMAIL),
            "note": encrypt_array(
                arrow_vault,
                pa.array(["a", "b", None]),
                column=NOTE,
                row_keys=pa.array([10, 11, 12]),
            ),
        }
    )
    ops = [
        decrypt("email", column=EMAIL),
        decrypt("note", column=NOTE, row_key="id", target="note_plain"),
        blind_index("email", index=INDEX, target="email_index"),
        audience_hash("email", platform="meta", target="hash", reasons="why"),
        encrypt("email", column=EMAIL, target="again"),
    ]
    out = transform(spec, batch, ops)
    assert isinstance(out, pa.RecordBatch)
    assert out.schema.names == [
        "id",
        "email",
        "note",
        "note_plain",
        "email_index",
        "hash",
        "why",
        "again",
    ]
    assert out.schema == output_schema(batch.schema, ops)
    assert out.column("email").to_pylist() == emails
    assert out.column("note_plain").to_pylist() == ["a", "b", None]
    assert out.column("why").to_pylist() == [None, "no_identifier", "email_invalid no_identifier"]
    assert (
        transform(spec, pa.Table.from_batches([out]), [decrypt("again", column=EMAIL)])
        .column("again")
        .to_pylist()
        == emails
    )


def test_an_empty_batch_opens_no_vault() -> None:
    batch = pa.record_batch({"email": pa.array([], type=pa.binary())})
    spec = VaultSpec("/nonexistent/vaultkit.toml")
    out = transform(spec, batch, [decrypt("email", column=EMAIL, type=pa.int64())])
    assert out.schema.field("email").type == pa.int64()
    with pytest.raises(ConfigurationError, match="no vaultkit configuration file"):
        transform(
            spec, pa.record_batch({"email": pa.array([b"x"])}), [decrypt("email", column=EMAIL)]
        )
    with pytest.raises(ConfigurationError, match="need a VaultSpec"):
        transform(
            None, pa.record_batch({"email": pa.array([b"x"])}), [decrypt("email", column=EMAIL)]
        )


def test_audience_operations_need_no_vault() -> None:
    batch = pa.record_batch({"email": pa.array(["a@b.be"])})
    out = transform(None, batch, [audience_hash("email", platform="google", target="h")])
    assert len(out.column("h")[0].as_py()) == 64
    with pytest.raises(ConfigurationError, match="platform"):
        audience_hash("email", platform="tiktok", target="h")


def test_the_shipped_function_is_key_free(
    spec: VaultSpec, arrow_vault: Vault, master_key: str
) -> None:
    function = BatchTransform(
        spec, (decrypt("email", column=EMAIL), blind_index("email", index=INDEX, target="i"))
    )
    for dumped in (pickle.dumps(function), cloudpickle.dumps(function)):
        for secret in key_material(arrow_vault, master_key):
            assert secret not in dumped
    blobs = encrypt_array(arrow_vault, pa.array(["x@y.be"]), column=EMAIL)
    batches = iter([pa.record_batch({"email": blobs})])
    (only,) = list(cloudpickle.loads(cloudpickle.dumps(function))(batches))
    assert only.column("email").to_pylist() == ["x@y.be"]


MEDICAL = ColumnSpec("medical", "claims", "diagnosis")
ADVISER = Principal("adviser", grants={"medical"})


def test_restricted_columns_open_only_as_a_principal_with_the_grant(
    spec: VaultSpec, arrow_vault: Vault
) -> None:
    with acting_as(ADVISER, purpose="claims"):
        blobs = encrypt_array(arrow_vault, pa.array(["flu", None]), column=MEDICAL)
    batch = pa.record_batch({"diagnosis": blobs})
    ops = [decrypt("diagnosis", column=MEDICAL)]
    with pytest.raises(AccessDeniedError):
        transform(spec, batch, ops)
    with pytest.raises(AccessDeniedError):
        transform(spec, batch, ops, principal=Principal("coach"), purpose="claims")
    out = transform(spec, batch, ops, principal=ADVISER, purpose="claims")
    assert out.column("diagnosis").to_pylist() == ["flu", None]
    # What ships to a worker: the principal's name and grants, still no key.
    function = BatchTransform(spec, tuple(ops), ADVISER, "claims")
    assert cloudpickle.loads(cloudpickle.dumps(function))(batch).column(0).to_pylist() == [
        "flu",
        None,
    ]
    with pytest.raises(ConfigurationError, match="purpose"):
        BatchTransform(spec, tuple(ops), ADVISER)
    with pytest.raises(TypeError, match="Principal"):
        BatchTransform(spec, tuple(ops), "adviser", "claims")  # type: ignore[arg-type]
