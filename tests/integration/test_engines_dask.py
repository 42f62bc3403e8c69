"""Dask adapter on a real dask.distributed LocalCluster of two worker processes (one cluster for
the module): each worker opens its own vault from the spec, with the master key of its own
environment; the task graph carries no key."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pytest
from distributed import Client, LocalCluster

from tests.unit.arrow._spec import key_material, worker_environment
from vaultkit import Principal, Vault, acting_as
from vaultkit.arrow import (
    ColumnSpec,
    IndexSpec,
    VaultSpec,
    audience_hash,
    blind_index,
    blind_index_array,
    decrypt,
    encrypt,
    encrypt_array,
    hash_audience_array,
)
from vaultkit.errors import AccessDeniedError, ConfigurationError, DecryptionError
from vaultkit.integrations.dask import map_partitions

EMAIL = ColumnSpec("identity", "members", "email")
NOTE = ColumnSpec("identity", "members", "note", row_bound=True)
INDEX = IndexSpec("identity", "members", "email", normalize=str.lower, bits=128)
EMAILS = [None if i % 9 == 0 else f"Member.{i}@Example.be" for i in range(120)]


def _vault_pid() -> tuple[int, int]:
    import vaultkit.arrow

    return os.getpid(), len(vaultkit.arrow._vaults)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VaultSpec, str]]:
    with worker_environment(tmp_path_factory.mktemp("dask")) as pair:
        yield pair


@pytest.fixture(scope="module")
def client(env: tuple[VaultSpec, str]) -> Iterator[Client]:
    # Started after the master key is in os.environ: the worker processes inherit it.
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def vault(env: tuple[VaultSpec, str]) -> Vault:
    return env[0].open()


def _frame(vault: Vault) -> pd.DataFrame:
    ids = [str(i) for i in range(len(EMAILS))]
    return pd.DataFrame(
        {
            "id": ids,
            "email": pd.array(
                encrypt_array(vault, pa.array(EMAILS), column=EMAIL).to_pylist(),
                dtype=pd.ArrowDtype(pa.binary()),
            ),
            "note": pd.array(
                encrypt_array(
                    vault, pa.array([f"n{i}" for i in ids]), column=NOTE, row_keys=pa.array(ids)
                ).to_pylist(),
                dtype=pd.ArrowDtype(pa.binary()),
            ),
        }
    )


def test_workers_decrypt_index_and_hash(
    client: Client, env: tuple[VaultSpec, str], vault: Vault
) -> None:
    spec, master_key = env
    frame = dd.from_pandas(_frame(vault), npartitions=6)
    out = map_partitions(
        frame,
        spec,
        [
            decrypt("email", column=EMAIL),
            decrypt("note", column=NOTE, row_key="id"),
            blind_index("email", index=INDEX, target="email_index"),
            audience_hash("email", platform="google", target="hash", reasons="why"),
        ],
    )
    # What goes to the scheduler: the graph, pickled, holds neither the master key nor a KEK.
    graph = cloudpickle.dumps(dict(out.__dask_graph__()))
    for secret in key_material(vault, master_key):
        assert secret not in graph
    result = out.compute().sort_index()
    assert result["email"].tolist() == [pd.NA if v is None else v for v in EMAILS]
    assert result["note"].tolist() == [f"n{i}" for i in range(len(EMAILS))]
    expected_index = blind_index_array(vault, pa.array(EMAILS), index=INDEX).to_pylist()
    assert [None if pd.isna(v) else v for v in result["email_index"]] == expected_index
    hashes, reasons = hash_audience_array(pa.array(EMAILS), platform="google")
    assert [None if pd.isna(v) else v for v in result["hash"]] == hashes.to_pylist()
    assert [None if pd.isna(v) else v for v in result["why"]] == reasons.to_pylist()
    # The work ran in both worker processes, each with a vault of its own.
    opened = client.run(_vault_pid)
    assert len(opened) == 2
    assert all(pid != os.getpid() for pid, _ in opened.values())
    assert all(count == 1 for _, count in opened.values())


def test_workers_encrypt_and_refuse_foreign_values(
    client: Client, env: tuple[VaultSpec, str], vault: Vault
) -> None:
    spec, _ = env
    plain = pd.DataFrame({"email": pd.array(EMAILS[:20], dtype=pd.StringDtype("pyarrow"))})
    out = map_partitions(
        dd.from_pandas(plain, npartitions=2), spec, [encrypt("email", column=EMAIL)]
    )
    blobs = out.compute().sort_index()["email"]
    field = EMAIL.field(vault)
    assert [None if pd.isna(b) else field.decrypt(b) for b in blobs] == EMAILS[:20]
    # Values of one column do not open as another's, on the workers either.
    moved = map_partitions(
        out, spec, [decrypt("email", column=ColumnSpec("identity", "members", "phone"))]
    )
    with pytest.raises(DecryptionError):
        moved.compute()


def test_a_worker_without_the_configuration_gets_no_values(tmp_path: Path, client: Client) -> None:
    frame = dd.from_pandas(
        pd.DataFrame({"email": pd.array([b"x"], dtype=pd.ArrowDtype(pa.binary()))}), npartitions=1
    )
    spec = VaultSpec(tmp_path / "missing.toml")
    out = map_partitions(frame, spec, [decrypt("email", column=EMAIL)])
    with pytest.raises(ConfigurationError, match="no vaultkit configuration file"):
        out.compute()


def test_restricted_columns_open_on_the_workers_as_the_given_principal(
    client: Client, env: tuple[VaultSpec, str], vault: Vault
) -> None:
    spec, _ = env
    medical = ColumnSpec("medical", "claims", "diagnosis")
    adviser = Principal("adviser", grants={"medical"})
    with acting_as(adviser, purpose="claims"):
        blobs = encrypt_array(vault, pa.array(["flu", None, "asthma", "gout"]), column=medical)
    frame = dd.from_pandas(
        pd.DataFrame({"diagnosis": pd.array(blobs.to_pylist(), dtype=pd.ArrowDtype(pa.binary()))}),
        npartitions=2,
    )
    ops = [decrypt("diagnosis", column=medical)]
    # The caller's scope stays in the caller: on the workers the reader is anonymous.
    with acting_as(adviser, purpose="claims"), pytest.raises(AccessDeniedError):
        map_partitions(frame, spec, ops).compute()
    out = map_partitions(frame, spec, ops, principal=adviser, purpose="claims").compute()
    assert [None if pd.isna(v) else v for v in out.sort_index()["diagnosis"]] == [
        "flu",
        None,
        "asthma",
        "gout",
    ]
