"""A vaultkit.toml for workers: SQLite key store and a local keyring, the master key in the
environment (as a worker would have it), never in the file or the spec."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vaultkit import Vault
from vaultkit.arrow import VaultSpec, close_vaults

CONFIG = """
key_store = "sqlite:///TMP/keys.db"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "TMP/keyring.json"
create_keys = true

[domains.identity]

[domains.medical]
restricted = true

[domains.contract]
dek_scope = "subject"
"""


def new_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


def write_config(directory: Path) -> Path:
    """Write the configuration into ``directory`` and return its path."""
    path = directory / "vaultkit.toml"
    path.write_text(CONFIG.replace("TMP", str(directory)))
    return path


@contextlib.contextmanager
def worker_environment(directory: Path) -> Iterator[tuple[VaultSpec, str]]:
    """A spec over a fresh configuration in ``directory``, its master key in ``os.environ`` (so
    that worker processes started inside the block inherit it, as deployed workers would have it
    in theirs); the variable is restored and this process's vaults closed after."""
    key = new_master_key()
    before = os.environ.get("VAULTKIT_MASTER_KEY")
    os.environ["VAULTKIT_MASTER_KEY"] = key
    try:
        yield VaultSpec(write_config(directory)), key
    finally:
        close_vaults()
        if before is None:
            del os.environ["VAULTKIT_MASTER_KEY"]
        else:
            os.environ["VAULTKIT_MASTER_KEY"] = before


def key_material(vault: Vault, master_key: str) -> list[bytes]:
    """The secrets nothing shipped to a worker may carry: the master key and the KEKs of the
    spec's keyring, raw and in base64."""
    found = [base64.b64decode(master_key)]
    for name in vault.domains:
        provider = vault.provider_for(name)
        for domain in provider._domains.values():  # type: ignore[attr-defined]
            for entry in domain.material.reveal().values():
                found.append(base64.b64decode(entry["key"]))
    found = list(dict.fromkeys(found))
    assert len(found) >= 2  # the master key and at least one KEK
    return [*found, *(base64.b64encode(s) for s in found)]
