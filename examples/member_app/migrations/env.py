"""Alembic environment of the member app: async (asyncpg), with vaultkit's autogenerate hooks.

``autogenerate_options()`` keeps vaultkit's own tables (``vaultkit_*``: the key store and the
audit log, which live in this database too) out of autogenerate, which would otherwise see
tables that are not in the models' metadata and drop them: with the key table every value
becomes unreadable. It also renders vaultkit's column types, and turns a plaintext column whose
model type became ``Encrypted`` into ``op.encrypt_column``.

The vault is opened here, before any revision runs. Revisions that encrypt or decrypt a column
in place need it (``op.encrypt_column``, which autogenerate writes when a plaintext column's model
type becomes ``Encrypted``). Opening it also has vaultkit create its own tables in this database
where they are missing, in vaultkit's own layout (whose version it keeps in ``vaultkit_meta`` and
upgrades itself): this is where they are made, on purpose, so that the app's start-up finds them
and creates nothing. No revision creates or drops them.

Online mode only (no ``--sql``): the vault works over a live connection.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from member_app.models import Base
from member_app.vault import database_url, open_vault
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import vaultkit.sqla
import vaultkit.sqla.alembic

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        **vaultkit.sqla.alembic.autogenerate_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the member app's migrations run online only (no --sql)")
with open_vault() as vault:
    vaultkit.sqla.configure(vault)
    try:
        asyncio.run(run_async_migrations())
    finally:
        vaultkit.sqla.configure(None)
