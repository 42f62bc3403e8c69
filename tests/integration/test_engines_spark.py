"""Spark adapter in local mode (pyspark from PyPI, the machine's Java 17), one session for the
module: mapInArrow runs the kernels in Spark's Python workers, which open their own vault from
the spec; the function Spark pickles holds no key."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import cloudpickle
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from tests.unit.arrow._spec import key_material, worker_environment
from vaultkit import Vault
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
from vaultkit.integrations.spark import batch_function, map_in_arrow

pytestmark = [
    pytest.mark.slow,
    # pyspark 4 warns about pandas 3 on every Arrow call; mapInArrow does not use pandas.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

EMAIL = ColumnSpec("identity", "members", "email")
NOTE = ColumnSpec("identity", "members", "note", row_bound=True)
INDEX = IndexSpec("identity", "members", "email", normalize=str.lower)
EMAILS = [None if i % 5 == 0 else f"M{i}@Example.be" for i in range(60)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VaultSpec, str]]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("Spark needs Java 17 (JAVA_HOME or java on PATH)")
    with worker_environment(tmp_path_factory.mktemp("spark")) as pair:
        yield pair


@pytest.fixture(scope="module")
def spark(env: tuple[VaultSpec, str]) -> Iterator[object]:
    # Spark's Python workers run PYSPARK_PYTHON (else a bare "python3" from PATH, which may be
    # another interpreter than this one, without vaultkit's dependencies).
    before = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("vaultkit-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "512m")
        .getOrCreate()
    )
    try:
        yield session
    finally:
        session.stop()
        if before is None:
            del os.environ["PYSPARK_PYTHON"]
        else:
            os.environ["PYSPARK_PYTHON"] = before


def test_map_in_arrow_decrypts_indexes_and_hashes(
    spark: object, env: tuple[VaultSpec, str]
) -> None:
    spec, master_key = env
    vault: Vault = spec.open()
    ids = list(range(len(EMAILS)))
    blobs = encrypt_array(vault, pa.array(EMAILS), column=EMAIL).to_pylist()
    notes = encrypt_array(
        vault, pa.array([f"n{i}" for i in ids]), column=NOTE, row_keys=pa.array(ids)
    ).to_pylist()
    frame = spark.createDataFrame(  # type: ignore[attr-defined]
        list(zip(ids, blobs, notes, strict=True)), "id long, email binary, note binary"
    ).repartition(2)
    ops = [
        decrypt("email", column=EMAIL),
        decrypt("note", column=NOTE, row_key="id"),
        blind_index("email", index=INDEX, target="email_index"),
        audience_hash("email", platform="meta", target="hash", reasons="why"),
        encrypt("email", column=EMAIL, target="again"),
    ]
    # What Spark ships to its Python workers: pickled, no master key and no KEK in it.
    shipped = cloudpickle.dumps(batch_function(spec, ops))
    for secret in key_material(vault, master_key):
        assert secret not in shipped
    out = map_in_arrow(frame, spec, ops)
    assert [f.name for f in out.schema.fields] == [
        "id", "email", "note", "email_index", "hash", "why", "again",
    ]  # fmt: skip
    rows = sorted(out.collect(), key=lambda r: r.id)
    assert [r.email for r in rows] == EMAILS
    assert [r.note for r in rows] == [f"n{i}" for i in ids]
    assert [r.email_index for r in rows] == blind_index_array(
        vault, pa.array(EMAILS), index=INDEX
    ).to_pylist()
    hashes, reasons = hash_audience_array(pa.array(EMAILS), platform="meta")
    assert [r.hash for r in rows] == hashes.to_pylist()
    assert [r.why for r in rows] == reasons.to_pylist()
    field = EMAIL.field(vault)
    assert [None if r.again is None else field.decrypt(bytes(r.again)) for r in rows] == EMAILS


def test_the_workers_are_other_processes_with_their_own_vault(
    spark: object, env: tuple[VaultSpec, str]
) -> None:
    spec, _ = env

    def pids(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import vaultkit.arrow

        for batch in batches:
            vaultkit.arrow.transform(spec, batch, [])
            yield pa.record_batch({"pid": pa.array([os.getpid()] * batch.num_rows)})

    frame = spark.range(4, numPartitions=2)  # type: ignore[attr-defined]
    seen = {r.pid for r in frame.mapInArrow(pids, "pid long").collect()}
    assert os.getpid() not in seen
