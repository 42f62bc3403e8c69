"""A vaultkit.toml for workers: SQLite key store and a local keyring, the master key in the
environment (as a worker would have it), never in the file or the spec."""

from __future__ import annotations

import base64
import os
from pathlib import Path

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
