"""VaultSpec: picklable and key-free, opened once per process; vaults and ciphers refuse pickle.

As an attacker: a task, a UDF closure or a query plan that holds the spec must hold no key bytes
(the pickle is scanned for the master key, the KEKs and the keyring file); one holding a vault or
a cipher must fail to pickle, with pickle and with cloudpickle (what Dask and Spark use).
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import cloudpickle
import pyarrow as pa
import pytest

from tests.unit.arrow._spec import key_material
from vaultkit import Vault
from vaultkit.arrow import ColumnSpec, VaultSpec, close_vaults, decrypt_array, encrypt_array
from vaultkit.errors import ConfigurationError

EMAIL = ColumnSpec("identity", "members", "email")


def _key_material(vault: Vault, master_key: str, tmp_path: Path) -> list[bytes]:
    """Every secret a pickle must not carry, and the tail of the keyring file (a spec is a
    path, not a copy of the file)."""
    return [*key_material(vault, master_key), (tmp_path / "keyring.json").read_bytes()[-64:]]


def decrypt_with(spec: VaultSpec, blobs: pa.Array) -> pa.Array:
    """What a task runs: open the vault from the spec in the worker, then decrypt."""
    return decrypt_array(spec.open(), blobs, column=EMAIL)


def test_the_spec_pickles_without_key_material(
    spec: VaultSpec, arrow_vault: Vault, master_key: str, tmp_path: Path
) -> None:
    blobs = encrypt_array(arrow_vault, pa.array(["jan@example.be"]), column=EMAIL)
    task = functools.partial(decrypt_with, spec)
    for dumped in (pickle.dumps(spec), cloudpickle.dumps(task), cloudpickle.dumps(spec)):
        for secret in _key_material(arrow_vault, master_key, tmp_path):
            assert secret not in dumped
    restored = pickle.loads(pickle.dumps(spec))  # noqa: S301 - our own bytes
    assert restored == spec
    assert restored.open() is arrow_vault  # one vault per process and spec
    assert cloudpickle.loads(cloudpickle.dumps(task))(blobs).to_pylist() == ["jan@example.be"]
    assert "MASTER" not in repr(spec)


def test_vaults_and_ciphers_still_refuse_pickle(arrow_vault: Vault) -> None:
    field = EMAIL.field(arrow_vault)
    closure = functools.partial(decrypt_array, arrow_vault, column=EMAIL)

    def udf(blobs: pa.Array) -> pa.Array:
        return decrypt_array(arrow_vault, blobs, column=EMAIL)

    for dumps in (pickle.dumps, cloudpickle.dumps):
        for obj in (arrow_vault, field, closure):
            with pytest.raises(TypeError, match="key material"):
                dumps(obj)
    with pytest.raises(TypeError, match="key material"):
        cloudpickle.dumps(udf)


def test_equal_specs_share_a_vault_and_overrides_make_another(
    tmp_path: Path, spec: VaultSpec
) -> None:
    again = VaultSpec(Path(spec.config))
    assert again == spec and hash(again) == hash(spec)
    assert again.open() is spec.open()
    wider = VaultSpec(spec.config, env={"VAULTKIT__DOMAINS__RESEARCH__PROVIDER": "keyring"})
    assert wider != spec
    assert "research" in wider.open().domains
    assert "research" not in spec.open().domains
    close_vaults()
    assert spec.open() is not None  # opened again after close_vaults


@pytest.mark.parametrize(
    "env",
    [
        {"VAULTKIT_MASTER_KEY": "x"},
        {"VAULTKIT__PROVIDERS__KEYRING__MASTER_KEY": "x"},
        {"VAULTKIT__PROVIDERS__HSM__PIN": "1234"},
        {"AWS_SECRET_ACCESS_KEY": "x"},
        [("VAULTKIT__CACHE_TTL",)],
    ],
)
def test_secrets_do_not_travel_in_a_spec(tmp_path: Path, env: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        VaultSpec(tmp_path / "vaultkit.toml", env=env)  # type: ignore[arg-type]
    assert "1234" not in str(caught.value)


def test_a_worker_without_the_master_key_is_told_so(
    tmp_path: Path, spec: VaultSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULTKIT_MASTER_KEY")
    with pytest.raises(ConfigurationError, match="VAULTKIT_MASTER_KEY"):
        spec.open()
    with pytest.raises(ConfigurationError, match="no vaultkit configuration file"):
        VaultSpec(tmp_path / "missing.toml").open()
