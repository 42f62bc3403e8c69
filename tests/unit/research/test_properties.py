"""Properties of the keyed transforms, for any input (hypothesis)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultkit import BlindIndexKey, Vault
from vaultkit.research import ColumnSpec, pseudonym
from vaultkit.research._transforms import pseudonyms, transform
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider


@pytest.fixture(scope="module")
def key() -> Iterator[BlindIndexKey]:
    with Vault(
        provider=InMemoryKeyProvider(["research"]), store=MemoryKeyStore(), domains=["research"]
    ) as vault:
        yield vault.dataset_key("research", "dataset:prop/r@v1")


members = st.lists(
    st.one_of(st.integers(0, 10**12), st.text(min_size=1, max_size=20)), min_size=1, max_size=30
)


@settings(deadline=None, max_examples=60)
@given(values=st.lists(st.one_of(st.none(), st.integers(-(10**30), 10**30), st.text(max_size=30))))
def test_batch_pseudonyms_are_the_scalar_ones(key: BlindIndexKey, values: list[object]) -> None:
    """For any values, the batch transform equals pseudonym() value by value; nulls stay null."""
    assert pseudonyms(key, values).to_pylist() == [
        None if v is None else pseudonym(key, v) for v in values
    ]


@settings(deadline=None, max_examples=60)
@given(
    ids=members,
    start=st.dates(dt.date(1900, 1, 1), dt.date(2100, 1, 1)),
    gap=st.integers(0, 3650),
    bound=st.integers(1, 365),
)
def test_date_shifts_keep_each_members_intervals(
    key: BlindIndexKey, ids: list[object], start: dt.date, gap: int, bound: int
) -> None:
    """Two date columns of one member move by the same shift, within the bound: gaps are kept."""
    column = ColumnSpec(name="d", source="d", transform="date_shift", max_days=bound)
    first = pa.array([start] * len(ids), pa.date32())
    second = pa.array([start + dt.timedelta(days=gap)] * len(ids), pa.date32())
    member_array = pa.array([str(m) for m in ids])
    today = dt.date(2026, 1, 1)
    a = transform(column, first, key=key, members=member_array, today=today).to_pylist()
    b = transform(column, second, key=key, members=member_array, today=today).to_pylist()
    for m, x, y in zip(ids, a, b, strict=True):
        assert (y - x).days == gap
        assert abs((x - start).days) <= bound
        again = transform(
            column, pa.array([start], pa.date32()), key=key, members=pa.array([str(m)]), today=today
        )
        assert again.to_pylist() == [x]
