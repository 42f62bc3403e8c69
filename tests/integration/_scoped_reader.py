"""A separate process that keeps using a subject's key until another process erases the subject.

Usage: python _scoped_reader.py MODE KEYRING STORE_URL BLOB_HEX OUT_DIR TIMEOUT
The master key comes from VAULTKIT_MASTER_KEY; the vault has the default ``key_check_interval``
and one subject-scoped domain, ``contract``.

``decrypt``: decrypt BLOB_HEX once (its DEK is cached), write ``OUT_DIR/ready``, then decrypt it
again every few milliseconds until it raises; ``OUT_DIR/done`` gets the wall time of the first
failure, the number of successful decryptions before it and the error's class name.
``encrypt``: encrypt for subject ``m-17`` once, write ``OUT_DIR/ready``, then keep encrypting for
it until that raises (the fence); ``OUT_DIR/done`` as above. Exits 3 after TIMEOUT seconds.
"""

import sys
import time
from pathlib import Path

from vaultkit import KeyDomain, Vault
from vaultkit.errors import DecryptionError
from vaultkit.keys import LocalKeyProvider

DOMAINS = [KeyDomain("contract", dek_scope="subject")]


def publish(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run() -> int:
    mode, keyring, url, blob_hex, out, timeout = sys.argv[1:7]
    out_dir = Path(out)
    blob = bytes.fromhex(blob_hex)
    with Vault(provider=LocalKeyProvider(keyring), store=url, domains=DOMAINS) as vault:
        if mode == "decrypt":
            vault.decrypt(blob)
        else:
            vault.encrypt("x", domain="contract", subject="m-17")
        publish(out_dir / "ready", "")
        give_up = time.monotonic() + float(timeout)
        uses = 0
        while time.monotonic() < give_up:
            try:
                if mode == "decrypt":
                    vault.decrypt(blob)
                else:
                    vault.encrypt("x", domain="contract", subject="m-17")
            except DecryptionError as exc:
                publish(out_dir / "done", f"{time.time()!r} {uses} {type(exc).__name__}")
                return 0
            uses += 1
            time.sleep(0.005)
    return 3


if __name__ == "__main__":
    sys.exit(run())
