"""Review of issue 18 (Arrow kernels, engine adapters): what travels with a VaultSpec into a
Dask graph or a Spark plan, and what a kernel does with hostile arrays.

Each test failed before its fix (run against the branch head before the commit that adds it)."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from vaultkit import KeyDomain, Vault
from vaultkit.arrow import VaultSpec, blind_index_array, decrypt_array, encrypt_array
from vaultkit.errors import AccessDeniedError, ConfigurationError
from vaultkit.testing import InMemoryKeyProvider

PASSWORD = "Sup3rSecretPw"


@pytest.mark.parametrize(
    "name",
    ["VAULTKIT__KEY_STORE", "VAULTKIT__AUDIT"],
)
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://vaultkit:{PASSWORD}@db.internal:5432/keys",
        f"mysql+pymysql://root:{PASSWORD}@127.0.0.1/keys",
    ],
)
def test_a_database_password_does_not_travel_in_a_spec(name: str, url: str) -> None:
    """Medium: env= took a key-store (or audit) URL with its password, and a VaultSpec is pickled
    into every Dask graph, Spark plan and UDF closure (logged by schedulers, kept in event logs).
    Secrets come from each worker's own environment (key_store_env / audit_env)."""
    with pytest.raises(ConfigurationError) as caught:
        spec = VaultSpec("vaultkit.toml", env={name: url})
        assert PASSWORD.encode() not in pickle.dumps(spec)
    assert PASSWORD not in str(caught.value)
    assert "_env" in str(caught.value)


def test_a_url_without_a_password_still_travels() -> None:
    spec = VaultSpec("vaultkit.toml", env={"VAULTKIT__KEY_STORE": "postgresql+psycopg://db/keys"})
    assert dict(spec.env) == {"VAULTKIT__KEY_STORE": "postgresql+psycopg://db/keys"}


@pytest.fixture
def vault() -> Vault:
    return Vault(
        provider=InMemoryKeyProvider(["identity", "medical"]),
        store="sqlite://",
        domains=["identity", KeyDomain("medical", restricted=True)],
    )


def test_hostile_arrays_give_the_scalar_results_or_refuse(vault: Vault) -> None:
    """Guard: dictionary, large and chunked arrays index as the plain string array does; a
    restricted domain without a grant is refused in both on_erased modes, with no plaintext."""
    emails = ["Alice@Example.be", None, "bob@example.be", "alice@example.be"]
    kw = {"domain": "identity", "table": "m", "column": "email", "normalize": str.lower}
    plain = blind_index_array(vault, pa.array(emails), **kw)
    for other in (
        pa.array(emails).dictionary_encode(),
        pa.array(emails, pa.large_string()),
        pa.chunked_array([emails[:1], emails[1:]]),
    ):
        got = blind_index_array(vault, other, **kw)
        got = got.combine_chunks() if isinstance(got, pa.ChunkedArray) else got
        assert got.to_pylist() == plain.to_pylist()
    blobs = encrypt_array(
        vault, pa.array(["diabetes type 2"]), domain="medical", table="m", name="dx"
    )
    for mode in ("raise", "null"):
        with pytest.raises(AccessDeniedError) as caught:
            decrypt_array(vault, blobs, domain="medical", table="m", name="dx", on_erased=mode)
        assert "diabetes" not in str(caught.value)
