"""Property tests: round trips of every type, and every kind of damage rejected."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultkit import Vault
from vaultkit.errors import DecryptionError
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

VAULT = Vault(
    provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity", "medical"]
)
CTX = {"table": "members", "column": "note", "row": "m-1"}

texts = st.text(st.characters(exclude_categories=("Cs",)))
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
values = (
    texts
    | st.binary()
    | st.integers()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.decimals(allow_nan=False)
    | st.dates()
    | st.datetimes()
    | st.datetimes(timezones=st.timezones())
    | st.uuids()
    | st.dictionaries(texts, json_values, max_size=5)
    | st.lists(json_values, max_size=5)
)
contexts = st.dictionaries(
    st.text(min_size=1, max_size=20), st.text(max_size=40) | st.integers() | st.uuids(), max_size=4
)


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dt.datetime) and a.tzinfo is not None:
        # Not `a == b`: PEP 495 makes comparisons across zones unequal for times in a fold or gap.
        # The same wall time and the same offset are the same instant, as Python reports it.
        return bool(
            a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.utcoffset() == b.utcoffset()
        )
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, float):
        return repr(a) == repr(b)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(
    value=values,
    context=contexts,
    domain=st.sampled_from(["identity", "medical"]),
    pad=st.none() | st.integers(1, 64),
)
def test_decrypt_inverts_encrypt(
    value: Any, context: dict[str, Any], domain: str, pad: int | None
) -> None:
    """decrypt(encrypt(x)) is x, of the same type, for every supported type, context and padding."""
    blob = VAULT.encrypt(value, domain=domain, context=context, pad_to=pad)
    assert same(VAULT.decrypt(blob, context=context, domain=domain), value)


@settings(max_examples=100, deadline=None)
@given(value=values, context=contexts, other=contexts)
def test_other_context_is_rejected(
    value: Any, context: dict[str, Any], other: dict[str, Any]
) -> None:
    """A value decrypted under any other context fails."""
    from vaultkit.core import wire

    blob = VAULT.encrypt(value, domain="identity", context=context)
    if wire.context_fields(other) == wire.context_fields(context):
        return
    with pytest.raises(DecryptionError):
        VAULT.decrypt(blob, context=other)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.binary(max_size=300), prefix=st.booleans())
def test_arbitrary_bytes_raise_only_decryption_error(junk: bytes, prefix: bool) -> None:
    """Decrypting arbitrary bytes, with or without a real header in front, raises DecryptionError only."""
    if prefix:
        junk = VAULT.encrypt("seed", domain="identity")[:64] + junk
    with pytest.raises(DecryptionError):
        VAULT.decrypt(junk, context=CTX)


class TestExhaustiveDamage:
    """Every single-bit flip and every truncation of one ciphertext is rejected."""

    blob = VAULT.encrypt("Jan Peeters, diabetes type 2", domain="medical", context=CTX)

    def test_every_bit_flip(self) -> None:
        """Each of the 8 x len(value) single-bit flips raises DecryptionError."""
        accepted = []
        for index in range(len(self.blob)):
            for bit in range(8):
                damaged = bytearray(self.blob)
                damaged[index] ^= 1 << bit
                try:
                    VAULT.decrypt(bytes(damaged), context=CTX)
                    accepted.append((index, bit))
                except DecryptionError:
                    pass
        assert accepted == []
        assert VAULT.decrypt(self.blob, context=CTX) == "Jan Peeters, diabetes type 2"

    def test_every_truncation_and_extension(self) -> None:
        """Every proper prefix, and the value with a byte appended, raise DecryptionError."""
        for end in range(len(self.blob)):
            with pytest.raises(DecryptionError):
                VAULT.decrypt(self.blob[:end], context=CTX)
        with pytest.raises(DecryptionError):
            VAULT.decrypt(self.blob + b"\x00", context=CTX)

    def test_other_domain_and_no_context(self) -> None:
        """The same value under another claimed domain, or without context, is rejected."""
        with pytest.raises(DecryptionError):
            VAULT.decrypt(self.blob, context=CTX, domain="identity")
        with pytest.raises(DecryptionError):
            VAULT.decrypt(self.blob)


@given(st.uuids())
def test_uuid_row_keys_equal_their_text(row: uuid.UUID) -> None:
    """A UUID row key and its canonical text bind identically."""
    blob = VAULT.encrypt("x", domain="identity", context={"row": row})
    assert VAULT.decrypt(blob, context={"row": str(row)}) == "x"


names = st.text(
    st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12
) | st.sampled_from(["a", "b", "a.b", "b.c", ".", "a.", ".b"])
cells = st.tuples(st.none() | names, names, names)


@settings(max_examples=300, deadline=None)
@given(written=cells, read=cells, row_bound=st.booleans())
def test_a_value_opens_only_under_its_own_schema_table_and_column(
    written: tuple[str | None, str, str], read: tuple[str | None, str, str], row_bound: bool
) -> None:
    """Schema, table and column are separate fields of the binding: a column cipher opens a value
    exactly when all three names are the ones it was written under, dots in names or not."""
    schema, table, column = written
    row = "m-1" if row_bound else None
    writer = VAULT.field("identity", schema=schema, table=table, column=column, row_bound=row_bound)
    blob = writer.encrypt("x", row=row)
    reader = VAULT.field(
        "identity", schema=read[0], table=read[1], column=read[2], row_bound=row_bound
    )
    if read == written:
        assert reader.decrypt(blob, row=row) == "x"
    else:
        with pytest.raises(DecryptionError):
            reader.decrypt(blob, row=row)


@settings(max_examples=200, deadline=None)
@given(written=cells, read=cells)
def test_encrypted_columns_bind_names_apart(
    written: tuple[str | None, str, str], read: tuple[str | None, str, str]
) -> None:
    """An Encrypted column given schema=, table= and column= opens a value written under other
    names never: table "a.b" with column "c" is not table "a" with column "b.c"."""
    import sqlalchemy as sa

    import vaultkit.sqla
    from vaultkit.sqla import Encrypted

    vaultkit.sqla.configure(VAULT)
    try:

        def column_type(cell: tuple[str | None, str, str]) -> Encrypted:
            return Encrypted(
                sa.Text, domain="identity", schema=cell[0], table=cell[1], column=cell[2]
            )

        blob = column_type(written).encrypt_value("x")
        if read == written:
            assert column_type(read).decrypt_value(blob) == "x"
        else:
            with pytest.raises(DecryptionError):
                column_type(read).decrypt_value(blob)
    finally:
        vaultkit.sqla.configure(None)
