"""vaultkit's own tables: the key store and the audit log.

vaultkit creates these tables itself, and upgrades them itself (the key store records its layout
version in ``vaultkit_meta``): ``vaultkit_data_keys`` and ``vaultkit_meta`` for the wrapped keys,
``vaultkit_audit_events`` and ``vaultkit_audit_head`` for the audit log of the medical domain.
This revision has it do so here, deliberately, before the app first starts, so that the app's
start-up finds them and creates nothing.

No later revision can drop them: env.py's ``autogenerate_options()`` leaves every ``vaultkit_*``
table out of autogenerate.

Revision ID: 0001
Revises:
Create Date: 2026-12-01 12:40:00
"""

from collections.abc import Sequence

from member_app.vault import open_vault

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Opening the vault creates what is missing (tables, the audit log's key) and checks that the
    # keyring serves every domain. It uses a connection of its own, outside this migration's
    # transaction: vaultkit's tables are not rolled back with it (opening again is harmless).
    open_vault().close()


def downgrade() -> None:
    # Deliberately nothing. Dropping vaultkit_data_keys makes every encrypted value unreadable,
    # backups included. Erasure destroys keys instead (docs/operations.md).
    pass
