"""The vault: key domains, the key provider, and the key store and audit log in the app's database.

Configuration comes from the environment:

- ``MEMBER_APP_DATABASE_URL``: the application's database, ``postgresql+asyncpg://...``. The key
  store (``vaultkit_data_keys``, ``vaultkit_meta``) and the audit log (``vaultkit_audit_events``,
  ``vaultkit_audit_head``) live there too. vaultkit reads and writes them through an engine of
  its own with the synchronous twin of the driver (``postgresql+psycopg``).
- ``MEMBER_APP_KEYRING``: the local keyring file holding the three KEKs (``vaultkit keys init``).
- ``VAULTKIT_MASTER_KEY``: the keyring's master key (read by ``LocalKeyProvider`` itself).

In production the medical domain's KEK belongs in a provider of its own (an HSM or a KMS key that
only the coaching service's credentials can use: docs/providers.md); one keyring keeps the
example small.
"""

import os
from pathlib import Path

from vaultkit import KeyDomain, Vault
from vaultkit.keys import LocalKeyProvider

DOMAINS = [
    KeyDomain("identity"),  # names and e-mail addresses
    KeyDomain("financial"),  # claim amounts and descriptions
    # The coaching chat: readable only with the "medical" grant; every read and every refusal
    # is written to the hash-chained audit log.
    KeyDomain("medical", restricted=True, audited=True),
]


def database_url() -> str:
    """The application's database URL (``MEMBER_APP_DATABASE_URL``)."""
    try:
        return os.environ["MEMBER_APP_DATABASE_URL"]
    except KeyError:
        raise RuntimeError("set MEMBER_APP_DATABASE_URL (postgresql+asyncpg://...)") from None


def keyring_path() -> Path:
    """The keyring file (``MEMBER_APP_KEYRING``, by default ``keyring.json``)."""
    return Path(os.environ.get("MEMBER_APP_KEYRING", "keyring.json"))


def open_vault(url: str | None = None) -> Vault:
    """Open the vault on the app's database; vaultkit creates its own tables there if missing.

    Blocking (it reads the keyring and the key store): call it at start-up, not in a request.
    The keyring must exist with a KEK for each domain: the app never makes keys of its own.
    """
    return Vault(
        provider=LocalKeyProvider(keyring_path(), create_keys=False),
        store=url or database_url(),
        domains=DOMAINS,
    )
