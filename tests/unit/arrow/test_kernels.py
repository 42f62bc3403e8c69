"""vaultkit.arrow kernels on pyarrow arrays: the scalar API's bytes, nulls kept, misuse refused."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pyarrow as pa
import pytest

from vaultkit import Principal, Vault, acting_as
from vaultkit.arrow import (
    ColumnSpec,
    IndexSpec,
    blind_index_array,
    decrypt_array,
    encrypt_array,
    hash_audience_array,
)
from vaultkit.errors import AccessDeniedError, ConfigurationError, DecryptionError

EMAIL = ColumnSpec("identity", "members", "email")


def test_decrypt_gives_back_what_the_scalar_api_encrypted(arrow_vault: Vault) -> None:
    field = arrow_vault.field("identity", table="members", column="email")
    plain = ["jan@example.be", None, "", "zoë@example.be"]
    blobs = pa.array([None if v is None else field.encrypt(v) for v in plain], type=pa.binary())
    out = decrypt_array(arrow_vault, blobs, column=EMAIL)
    assert out.to_pylist() == plain
    assert out.type == pa.string()
    assert out.null_count == 1


def test_encrypt_makes_values_the_scalar_api_decrypts(arrow_vault: Vault) -> None:
    field = arrow_vault.field("identity", table="members", column="email")
    plain = pa.array(["a@b.be", None, "c@d.be"])
    blobs = encrypt_array(arrow_vault, plain, column=EMAIL)
    assert blobs.type == pa.binary()
    assert blobs[1].as_py() is None
    assert [None if b is None else field.decrypt(b) for b in blobs.to_pylist()] == plain.to_pylist()
    # The same through domain/table/name, and into large_binary.
    large = encrypt_array(
        arrow_vault, plain, domain="identity", table="members", name="email", large=True
    )
    assert large.type == pa.large_binary()
    assert decrypt_array(arrow_vault, large, column=EMAIL).to_pylist() == plain.to_pylist()


@pytest.mark.parametrize(
    "values",
    [
        pa.array([1, -2, None, 2**40], type=pa.int64()),
        pa.array([1.5, None, float("inf")]),
        pa.array([True, False, None]),
        pa.array([b"\x00\xff", None]),
        pa.array([Decimal("12.30"), None], type=pa.decimal128(10, 2)),
        pa.array([dt.date(1980, 2, 29), None]),
        pa.array(
            [dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), None], type=pa.timestamp("us", "UTC")
        ),
    ],
)
def test_typed_arrays_round_trip(arrow_vault: Vault, values: pa.Array) -> None:
    blobs = encrypt_array(arrow_vault, values, column=EMAIL)
    assert decrypt_array(arrow_vault, blobs, column=EMAIL, type=values.type).equals(values)


def test_row_bound_columns_need_their_row_keys(arrow_vault: Vault) -> None:
    spec = ColumnSpec("medical", "claims", "note", row_bound=True)
    rows = pa.array([str(uuid.uuid4()) for _ in range(3)])
    plain = pa.array(["x", None, "z"])
    with acting_as(Principal("adviser", grants={"medical"}), purpose="test"):
        blobs = encrypt_array(arrow_vault, plain, column=spec, row_keys=rows)
        assert decrypt_array(arrow_vault, blobs, column=spec, row_keys=rows).equals(plain)
        field = arrow_vault.field("medical", table="claims", column="note", row_bound=True)
        assert field.decrypt(blobs[0].as_py(), row=rows[0].as_py()) == "x"
        # A value moved to another row does not open.
        with pytest.raises(DecryptionError):
            decrypt_array(arrow_vault, blobs, column=spec, row_keys=pa.array(["a", "b", "c"]))
        with pytest.raises(ConfigurationError, match="row-bound"):
            decrypt_array(arrow_vault, blobs, column=spec)
        with pytest.raises(ConfigurationError, match="2 values"):
            decrypt_array(arrow_vault, blobs, column=spec, row_keys=rows.slice(0, 2))


def test_a_reader_without_the_grant_gets_an_error_not_sealed_values(arrow_vault: Vault) -> None:
    spec = ColumnSpec("medical", "claims", "diagnosis")
    with acting_as(Principal("adviser", grants={"medical"}), purpose="test"):
        blobs = encrypt_array(arrow_vault, pa.array(["flu"]), column=spec)
    with pytest.raises(AccessDeniedError, match="no grant"):
        decrypt_array(arrow_vault, blobs, column=spec)


def test_subject_scoped_domains_take_subjects(arrow_vault: Vault) -> None:
    spec = ColumnSpec("contract", "policies", "iban")
    with pytest.raises(ConfigurationError):
        encrypt_array(arrow_vault, pa.array(["BE71 0961 2345 6769"]), column=spec)
    blobs = encrypt_array(
        arrow_vault,
        pa.array(["BE71 0961 2345 6769", None]),
        column=spec,
        subjects=pa.array(["m-1", "m-2"]),
    )
    assert decrypt_array(arrow_vault, blobs, column=spec).to_pylist() == [
        "BE71 0961 2345 6769",
        None,
    ]
    arrow_vault.erase_subject("m-1", reason="art17", request_id="req-1")
    assert decrypt_array(arrow_vault, blobs, column=spec, on_erased="null").to_pylist() == [
        None,
        None,
    ]


def test_values_of_another_column_do_not_open(arrow_vault: Vault) -> None:
    blobs = encrypt_array(arrow_vault, pa.array(["a@b.be"]), column=EMAIL)
    with pytest.raises(DecryptionError):
        decrypt_array(arrow_vault, blobs, column=ColumnSpec("identity", "members", "phone"))
    with pytest.raises(TypeError, match="binary"):
        decrypt_array(arrow_vault, pa.array(["not a ciphertext"]), column=EMAIL)


def test_chunked_arrays_keep_their_chunks(arrow_vault: Vault) -> None:
    plain = pa.chunked_array([["a", None], ["b"]])
    blobs = encrypt_array(arrow_vault, plain, column=EMAIL)
    assert isinstance(blobs, pa.ChunkedArray)
    assert blobs.num_chunks == 2
    assert decrypt_array(arrow_vault, blobs, column=EMAIL).to_pylist() == ["a", None, "b"]


def test_blind_index_is_the_stored_digest(arrow_vault: Vault) -> None:
    key = arrow_vault.blind_index_key("identity", table="members", column="email", version=2)
    index = IndexSpec("identity", "members", "email", version=2, bits=64, normalize=str.lower)
    out = blind_index_array(arrow_vault, pa.array(["Jan@Example.be", None]), index=index)
    from vaultkit._codec import encode_value

    assert out.to_pylist() == [b"\x02" + key.digest(encode_value("jan@example.be"))[:8], None]


def test_audience_hashes_and_reasons() -> None:
    hashes, reasons = hash_audience_array(
        pa.array(["Jan@Example.be", "not-an-email", None, "d41d8cd98f00b204e9800998ecf8427e"]),
        platform="google",
    )
    assert hashes.to_pylist()[1:] == [None, None, None]
    assert len(hashes[0].as_py()) == 64
    assert reasons.to_pylist() == [
        None,
        "email_invalid no_identifier",
        "no_identifier",
        "md5_refused no_identifier",
    ]
    with pytest.raises(ConfigurationError):
        hash_audience_array(pa.array(["x"]), platform="google", kind="iban")


def test_a_type_mismatch_names_no_plaintext(arrow_vault: Vault) -> None:
    """pyarrow quotes the value it cannot convert; the kernel's error must not (nor its frames)."""
    blobs = encrypt_array(arrow_vault, pa.array(["jan.secret@example.be"]), column=EMAIL)
    with pytest.raises(TypeError) as caught:
        decrypt_array(arrow_vault, blobs, column=EMAIL, type=pa.int64())
    error = caught.value
    assert "str" in str(error) and "int64" in str(error)
    shown = [str(error), repr(error.__context__), repr(error.__cause__)]
    tb = caught.tb
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith("arrow.py"):
            shown.extend(repr(v) for v in tb.tb_frame.f_locals.values())
        tb = tb.tb_next
    assert not any("jan.secret" in text for text in shown)
