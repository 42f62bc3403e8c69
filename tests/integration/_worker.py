"""A separate process that encrypts values into a shared key store; used by test_processes.py.

Usage: python _worker.py KEYRING STORE_URL OUT_FILE COUNT LABEL
The master key comes from VAULTKIT_MASTER_KEY. Writes one hex ciphertext per line.
"""

import sys
from pathlib import Path

from vaultkit import Vault
from vaultkit.keys import LocalKeyProvider


def run() -> None:
    keyring, url, out, count, label = sys.argv[1:6]
    provider = LocalKeyProvider(keyring)
    with Vault(
        provider=provider, store=url, domains=["identity", "medical"], dek_max_encryptions=100
    ) as vault:
        blobs = [
            vault.encrypt(
                f"{label}-{i}", domain="medical", context={"table": "t", "column": "c", "row": i}
            )
            for i in range(int(count))
        ]
    Path(out).write_text("\n".join(b.hex() for b in blobs))


if __name__ == "__main__":
    run()
