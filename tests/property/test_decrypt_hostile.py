"""Property tests of the decryption path against hostile values, and a slice of the fuzzer.

The fuzzer itself is ``benchmarks/fuzz_decrypt.py`` (run for millions of cases outside the suite);
the suite runs 20,000 cases of the same generator on every run.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaultkit._keyring as keyring_module
from vaultkit import KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit.core import wire
from vaultkit.errors import AccessDeniedError, DecryptionError, EncodingError
from vaultkit.store import DataKeyRecord, DekState, MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

FUZZER = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_decrypt.py"
POLICIES = [
    KeyDomain("identity"),
    KeyDomain("medical", restricted=True),
    KeyDomain("claims", restricted=True, on_denied="raise"),
]
COACH = Principal("coach-17")
ADVISER = Principal("adviser-2", grants={"medical", "claims"})
PROVIDER = InMemoryKeyProvider(["identity", "medical", "claims"])
STORE = MemoryKeyStore()
VAULT = Vault(provider=PROVIDER, store=STORE, domains=POLICIES)
with acting_as(ADVISER, purpose="setup"):
    RESTRICTED_VALUES = [
        VAULT.field("medical", table="t", column="c").encrypt("flu"),
        VAULT.field("claims", table="t", column="c").encrypt("claim"),
    ]
IDENTITY = VAULT.field("identity", table="t", column="c")
PLAIN_TYPES = (str, bytes, int, bool, float, Decimal, dt.date, dt.datetime, uuid.UUID, dict, list)


def _load_fuzzer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_decrypt", FUZZER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_decrypt"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_fuzzer_slice_finds_only_vaultkit_errors() -> None:
    """20,000 cases of the decryption fuzzer end only in allowed outcomes (values, sealed, errors)."""
    fuzzer = _load_fuzzer()
    seed = int(os.environ.get("VAULTKIT_FUZZ_SEED", "12"))
    report = fuzzer.fuzz(20_000, seed=seed, workers=1, start=20_000_000)
    assert report.failures == []
    assert report.cases == 20_000
    assert set(report.outcomes) <= {"value", "sealed", "access_denied", "decryption_error"}
    assert report.outcomes["decryption_error"] > 10_000
    assert min(report.kinds.values()) > 100  # every kind of damage was tried


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from([0, 1]),
    body=st.binary(min_size=29, max_size=200),
    keep_commitment=st.booleans(),
    reader=st.sampled_from([COACH, ADVISER]),
)
def test_restricted_dek_in_plain_column_is_never_sealed(
    which: int, body: bytes, keep_commitment: bool, reader: Principal
) -> None:
    """Any bytes naming a medical or claims DEK, read in an identity column, are DecryptionError."""
    real = RESTRICTED_VALUES[which]
    header = real[:52] if keep_commitment else wire.build_header(real[4:20], os.urandom(32))
    with acting_as(reader, purpose="p"), pytest.raises(DecryptionError):
        IDENTITY.decrypt(header + body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(min_size=0, max_size=200), flip=st.integers(0, 10_000))
def test_denied_reader_of_restricted_column_gets_no_plaintext(body: bytes, flip: int) -> None:
    """A reader without the grant gets a sealed value, AccessDeniedError or DecryptionError only."""
    real = RESTRICTED_VALUES[flip % 2]
    damaged = bytearray(real[:52] + body)
    if flip % 3 == 0 and len(damaged) > 60:
        damaged[flip % len(damaged)] ^= 1 << (flip % 8)
    column = VAULT.field("medical" if flip % 2 == 0 else "claims", table="t", column="c")
    with acting_as(COACH, purpose="p"):
        try:
            result = column.decrypt(bytes(damaged))
        except (AccessDeniedError, DecryptionError):
            return
    assert isinstance(result, SealedValue)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tag=st.integers(0, 255), body=st.binary(max_size=300))
def test_any_plaintext_under_a_valid_key_decodes_or_fails_cleanly(tag: int, body: bytes) -> None:
    """Plaintext a key holder wrote decodes to a vaultkit type or raises DecryptionError only."""
    fields = wire.context_fields({"table": "t", "column": "c"})
    blob = VAULT._cipher.seal("identity", bytes((tag,)) + body, fields)
    try:
        value = IDENTITY.decrypt(blob)
    except DecryptionError:
        return
    assert isinstance(value, PLAIN_TYPES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    depth=st.integers(1, 150_000),
    opener=st.sampled_from([b"[", b'{"k":', b'[{"a":']),
    closed=st.booleans(),
)
def test_json_of_any_depth_never_raises_recursion_error(
    depth: int, opener: bytes, closed: bool
) -> None:
    """JSON of any nesting depth, under a valid key, decodes or raises DecryptionError."""
    closer = {b"[": b"]", b'{"k":': b"}", b'[{"a":': b"}]"}[opener]
    leaf = b"" if opener == b"[" else b"0"
    payload = opener * depth + leaf + (closer * depth if closed else b"")
    fields = wire.context_fields({"table": "t", "column": "c"})
    blob = VAULT._cipher.seal("identity", b"\x0b" + payload, fields)
    try:
        value = IDENTITY.decrypt(blob)
    except DecryptionError:
        return
    assert closed and isinstance(value, list | dict)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(1, 150_000), as_dict=st.booleans())
def test_encrypting_json_of_any_depth_round_trips_or_raises_encoding_error(
    depth: int, as_dict: bool
) -> None:
    """Encrypting nested JSON either round-trips or raises EncodingError, never RecursionError."""
    value: Any = {} if as_dict else []
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    try:
        blob = IDENTITY.encrypt(value)
    except EncodingError:
        return
    assert IDENTITY.decrypt(blob) == value


class CountingStore:
    """A MemoryKeyStore that counts reads: the key store the vault under test talks to."""

    def __init__(self, inner: MemoryKeyStore) -> None:
        self.inner = inner
        self.reads: Counter[str] = Counter()

    def insert(self, record: DataKeyRecord) -> None:
        self.inner.insert(record)

    def get(self, dek_id: bytes) -> DataKeyRecord | None:
        self.reads["get"] += 1
        return self.inner.get(dek_id)

    def records(
        self, *, domain: str | None = None, state: DekState | None = None
    ) -> Iterator[DataKeyRecord]:
        self.reads["records"] += 1
        return self.inner.records(domain=domain, state=state)

    def add_encryptions(self, dek_id: bytes, count: int) -> None:
        self.inner.add_encryptions(dek_id, count)

    def set_state(self, dek_id: bytes, state: DekState) -> None:
        self.inner.set_state(dek_id, state)

    def rewrap(self, old: DataKeyRecord, *, kek_id: str, kek_version: int, wrapped: bytes) -> bool:
        return self.inner.rewrap(old, kek_id=kek_id, kek_version=kek_version, wrapped=wrapped)

    def destroy(self, dek_id: bytes) -> None:
        self.inner.destroy(dek_id)

    def close(self) -> None:
        self.inner.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.integers(0, 499), min_size=1, max_size=3000),
    pool_size=st.integers(1, 500),
)
def test_unknown_dek_ids_cost_bounded_store_reads(picks: list[int], pool_size: int) -> None:
    """Values naming unknown DEK ids cost at most one read per distinct id, and the budget."""
    pool = [os.urandom(16) for _ in range(pool_size)]
    named = [pool[p % pool_size] for p in picks]
    store = CountingStore(MemoryKeyStore())
    with Vault(provider=PROVIDER, store=store, domains=POLICIES) as reader:
        for dek_id in named:
            with pytest.raises(DecryptionError):
                reader.decrypt(wire.build_header(dek_id, bytes(32)) + bytes(30))
    distinct = len(set(named))
    budget = keyring_module.UNKNOWN_LOOKUP_BUDGET
    # One window of NEGATIVE_TTL seconds is far longer than an example takes.
    assert store.reads["get"] <= min(distinct, budget)
    assert store.reads["records"] == (1 if distinct >= budget else 0)
