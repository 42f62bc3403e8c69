"""The kernels give byte for byte what the scalar API gives (hypothesis): decrypt of values the
scalar API made, encrypt read back by the scalar API, blind-index digests as the column type
stores them, audience hashes and reasons as ``render`` gives them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vaultkit.sqla
from vaultkit import Vault
from vaultkit.arrow import (
    blind_index_array,
    column_spec,
    decrypt_array,
    encrypt_array,
    hash_audience_array,
    index_spec,
)
from vaultkit.audiences import COLUMNS, MemberRecord, Platform, render
from vaultkit.errors import ConfigurationError
from vaultkit.sqla import BlindIndex, Encrypted, PrefixIndex
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
maybe_texts = st.lists(st.none() | texts, max_size=20)


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "arrow_members"
    __table_args__ = {"schema": "crm"}  # noqa: RUF012 - SQLAlchemy's declarative attribute
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(Encrypted(sa.String(320), domain="identity"))
    email_index = BlindIndex("email", normalize=str.lower, bits=128, version=3)
    email_spread = BlindIndex("email", normalize=str.lower, partitions=4)
    email_prefix = PrefixIndex("email", length=3)
    note: Mapped[str] = mapped_column(
        Encrypted(sa.Text, domain="identity", row_key="id", pad_to=16)
    )


@pytest.fixture(scope="module", autouse=True)
def vault() -> Iterator[Vault]:
    with Vault(
        provider=InMemoryKeyProvider(["identity"]), store=MemoryKeyStore(), domains=["identity"]
    ) as v:
        vaultkit.sqla.configure(v)
        try:
            yield v
        finally:
            vaultkit.sqla.configure(None)


@pytest.fixture(scope="module")
def email_type() -> Any:
    return Member.__table__.c.email.type


def test_column_spec_reads_the_declared_binding() -> None:
    spec = column_spec(Member.email)
    assert (spec.domain, spec.schema, spec.table, spec.column) == (
        "identity",
        "crm",
        "arrow_members",
        "email",
    )
    note = column_spec(Member.note)
    assert note.row_bound and note.pad_to == 16
    index = index_spec(Member.email_index)
    assert (index.table, index.column, index.version, index.bits) == (
        "arrow_members",
        "email",
        3,
        128,
    )


@SETTINGS
@given(plain=maybe_texts)
def test_decrypt_of_scalar_made_values(
    vault: Vault, email_type: Any, plain: list[str | None]
) -> None:
    blobs = pa.array([email_type.encrypt_value(v) for v in plain], type=pa.binary())
    assert decrypt_array(vault, blobs, column=Member.email).to_pylist() == plain


@SETTINGS
@given(plain=maybe_texts)
def test_encrypt_is_read_by_the_scalar_api(
    vault: Vault, email_type: Any, plain: list[str | None]
) -> None:
    blobs = encrypt_array(vault, pa.array(plain, type=pa.string()), column=Member.email)
    assert [email_type.decrypt_value(b) for b in blobs.to_pylist()] == plain


@SETTINGS
@given(plain=st.lists(texts, min_size=1, max_size=10))
def test_row_bound_and_padded_values_match(vault: Vault, plain: list[str]) -> None:
    note_type = Member.__table__.c.note.type
    rows = [uuid.uuid4() for _ in plain]
    blobs = encrypt_array(
        vault, pa.array(plain), column=Member.note, row_keys=pa.array([str(r) for r in rows])
    )
    assert [
        note_type.decrypt_value(b, row=str(r)) for b, r in zip(blobs.to_pylist(), rows, strict=True)
    ] == plain
    # Padded to 16: lengths are the scalar API's.
    assert {len(b) for b in blobs.to_pylist()} == {
        len(note_type.field().encrypt(v, row=str(r))) for v, r in zip(plain, rows, strict=True)
    }


@SETTINGS
@given(plain=maybe_texts)
def test_blind_index_is_what_the_column_stores(vault: Vault, plain: list[str | None]) -> None:
    index_type = Member.__table__.c.email_index.type
    out = blind_index_array(vault, pa.array(plain, type=pa.string()), index=Member.email_index)
    assert out.to_pylist() == [index_type.digest(v) for v in plain]


emails = st.one_of(
    texts,
    st.emails().map(str),
    st.builds(
        lambda a, b: f" {a}.{b}+Tag@GMail.com ",
        st.from_regex(r"[a-z]{1,6}", fullmatch=True),
        st.from_regex(r"[a-z]{1,6}", fullmatch=True),
    ),
    st.from_regex(r"[0-9a-f]{32}|[0-9A-F]{64}", fullmatch=True),
)
phones = st.one_of(
    texts,
    st.from_regex(r"\+?(32|31|0)4[0-9]{8}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)


def _scalar(
    value: str | None, kind: str, platform: Platform, **kw: Any
) -> tuple[str | None, str | None]:
    rendered = render(MemberRecord(**{kind: value}), platform=platform, **kw)
    column = (
        COLUMNS[platform].index("Email" if platform is Platform.GOOGLE else "EMAIL")
        if kind == "email"
        else COLUMNS[platform].index("Phone" if platform is Platform.GOOGLE else "PHONE")
    )
    if rendered.values is None:
        return None, " ".join(rendered.reasons)
    return rendered.values[column], (" ".join(rendered.reasons) or None)


@SETTINGS
@given(values=st.lists(st.none() | emails, max_size=15), platform=st.sampled_from(list(Platform)))
def test_audience_email_hashes_match_render(values: list[str | None], platform: Platform) -> None:
    hashes, reasons = hash_audience_array(pa.array(values, type=pa.string()), platform=platform)
    expected = [_scalar(v, "email", platform) for v in values]
    assert list(zip(hashes.to_pylist(), reasons.to_pylist(), strict=True)) == expected


@SETTINGS
@given(values=st.lists(st.none() | phones, max_size=15), platform=st.sampled_from(list(Platform)))
def test_audience_phone_hashes_match_render(values: list[str | None], platform: Platform) -> None:
    hashes, reasons = hash_audience_array(
        pa.array(values, type=pa.string()), platform=platform, kind="phone", default_region="be"
    )
    expected = [_scalar(v, "phone", platform, default_region="be") for v in values]
    assert list(zip(hashes.to_pylist(), reasons.to_pylist(), strict=True)) == expected


def test_audience_legacy_gmail_rule_matches_render() -> None:
    values = ["j.an+x@gmail.com", "j.an@example.be"]
    hashes, _ = hash_audience_array(pa.array(values), platform="google", rules="2025-legacy")
    assert hashes.to_pylist() == [
        _scalar(v, "email", Platform.GOOGLE, rules="2025-legacy")[0] for v in values
    ]


def test_index_spec_refuses_indexes_the_kernels_would_get_wrong() -> None:
    # A prefix (or compound, bucket) index has its own key label and encoding, and a partitioned
    # index draws a partition per row: a kernel digest would silently match none of their cells.
    with pytest.raises(ConfigurationError, match="PrefixIndexType"):
        index_spec(Member.email_prefix)
    with pytest.raises(ConfigurationError, match="partitions=4"):
        index_spec(Member.email_spread)
