"""A separate process for test_lifecycle_processes.py: a retention sweep, or a writer of one
subject's values.

Usage:
  python _lifecycle_worker.py enforce KEYRING STORE_URL AT_ISO BATCH
      runs Vault.enforce_retention(at=AT, batch=BATCH) and prints the report as JSON.
  python _lifecycle_worker.py write KEYRING STORE_URL SUBJECT OUT_DIR SECONDS CHECK
      encrypts values for SUBJECT in domain "medical" (subject-scoped) in a loop, appending
      each ciphertext in hex to OUT_DIR/blobs, touching OUT_DIR/ready after the first; when an
      encryption raises SubjectErasedError it writes the wall time to OUT_DIR/fenced and exits 0;
      after SECONDS without that it exits 1. CHECK is the vault's key_check_interval.

The master key comes from VAULTKIT_MASTER_KEY.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

from vaultkit import KeyDomain, Retention, Vault
from vaultkit.errors import SubjectErasedError
from vaultkit.keys import LocalKeyProvider

DOMAINS = [
    KeyDomain("identity"),
    KeyDomain("medical", dek_scope="subject"),
    KeyDomain(
        "chat",
        audited=True,
        dek_scope="bucket",
        bucket=dt.timedelta(hours=1),
        retention=Retention("PT72H"),
    ),
]


def enforce(keyring: str, url: str, at: str, batch: str) -> None:
    with Vault(provider=LocalKeyProvider(keyring), store=url, domains=DOMAINS) as vault:
        report = vault.enforce_retention(at=dt.datetime.fromisoformat(at), batch=int(batch))
    print(report.to_json())


def write(keyring: str, url: str, subject: str, out: str, seconds: str, check: str) -> int:
    folder = Path(out)
    with (
        Vault(
            provider=LocalKeyProvider(keyring),
            store=url,
            domains=DOMAINS,
            key_check_interval=float(check),
        ) as vault,
        (folder / "blobs").open("a") as blobs,
    ):
        give_up = time.monotonic() + float(seconds)
        i = 0
        while time.monotonic() < give_up:
            try:
                blob = vault.encrypt(
                    f"note {i}",
                    domain="medical",
                    subject=subject,
                    context={"table": "notes", "column": "body", "row": i},
                )
            except SubjectErasedError:
                (folder / "fenced").write_text(repr(time.time()))
                return 0
            blobs.write(f"{i} {blob.hex()}\n")
            blobs.flush()
            if i == 0:
                (folder / "ready").write_text("1")
            i += 1
            time.sleep(0.002)
    return 1


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "enforce":
        enforce(*rest)
        sys.exit(0)
    sys.exit(write(*rest))
