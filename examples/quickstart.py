"""Quick start: a vault over a local keyring and an SQLite key store.

Run it from any directory; it works in a temporary directory and needs no server. In your own
application the master key comes from VAULTKIT_MASTER_KEY (see `vaultkit keys init`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vaultkit import KeyDomain, Vault
from vaultkit.core import wire
from vaultkit.errors import DecryptionError
from vaultkit.keys import LocalKeyProvider, generate_master_key


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vaultkit-quickstart-"))
    os.environ.setdefault("VAULTKIT_MASTER_KEY", generate_master_key())  # demo only

    vault = Vault(
        provider=LocalKeyProvider(workdir / "keyring.json"),  # created on first use
        store=f"sqlite:///{workdir / 'app.db'}",  # DEKs live in a table there
        domains=[KeyDomain("identity"), KeyDomain("medical")],
    )
    cell = {"table": "members", "column": "name", "row": "m-17"}
    blob = vault.encrypt("Jan Peeters", domain="identity", context=cell)
    assert vault.decrypt(blob, context=cell) == "Jan Peeters"
    # The header names the DEK in the clear (anyone reading the database sees it too); it is
    # authenticated only when the value decrypts.
    header = wire.parse_value(blob)
    assert header is not None
    print(
        f"{len(blob)}-byte ciphertext under DEK {header.dek_id.hex()} decrypts in its own cell only"
    )

    # The same value in another member's row does not decrypt.
    try:
        vault.decrypt(blob, context={**cell, "row": "m-18"})
    except DecryptionError as exc:
        print(f"in row m-18: {type(exc).__name__}: {exc}")
    vault.close()


if __name__ == "__main__":
    main()
