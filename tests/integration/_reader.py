"""A separate process that keeps using a key until another process takes it away.

Usage: python _reader.py MODE KEYRING STORE_URL BLOB_HEX OUT_DIR TIMEOUT
The master key comes from VAULTKIT_MASTER_KEY; the vault has the default ``key_check_interval``.

``decrypt``: decrypt BLOB_HEX once (so its DEK is cached), write ``OUT_DIR/ready``, then decrypt it
again every few milliseconds until it raises DecryptionError; write ``OUT_DIR/done`` with the wall
time (``time.time()``) of the first failure and the number of successful decryptions before it.
``encrypt``: encrypt once and write the DEK id to ``OUT_DIR/ready``, then keep encrypting until a
value comes out under another DEK; ``OUT_DIR/done`` gets the time of that first value.
Exits 3 after TIMEOUT seconds without a change.
"""

import sys
import time
from pathlib import Path

from vaultkit import Vault
from vaultkit.errors import DecryptionError
from vaultkit.keys import LocalKeyProvider

CTX = {"table": "t", "column": "c", "row": 1}


def publish(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run() -> int:
    mode, keyring, url, blob_hex, out, timeout = sys.argv[1:7]
    out_dir = Path(out)
    blob = bytes.fromhex(blob_hex)
    with Vault(
        provider=LocalKeyProvider(keyring), store=url, domains=["identity", "medical"]
    ) as vault:
        if mode == "decrypt":
            vault.decrypt(blob, context=CTX)
            publish(out_dir / "ready", "")
        else:
            first = vault.encrypt("x", domain="medical", context=CTX)[4:20]
            publish(out_dir / "ready", first.hex())
        give_up = time.monotonic() + float(timeout)
        uses = 0
        while time.monotonic() < give_up:
            if mode == "decrypt":
                try:
                    vault.decrypt(blob, context=CTX)
                except DecryptionError:
                    publish(out_dir / "done", f"{time.time()!r} {uses}")
                    return 0
            elif vault.encrypt("x", domain="medical", context=CTX)[4:20] != first:
                publish(out_dir / "done", f"{time.time()!r} {uses}")
                return 0
            uses += 1
            time.sleep(0.005)
    return 3


if __name__ == "__main__":
    sys.exit(run())
