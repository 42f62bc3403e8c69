"""Alembic environment of the member app: async (asyncpg), with vaultkit's autogenerate hooks.

``autogenerate_options()`` keeps vaultkit's own tables (``vaultkit_*``: the key store and the
audit log, which live in this database too) out of autogenerate, which would otherwise see
tables that are not in the models' metadata and drop them: with the key table every value
becomes unreadable. It also renders vaultkit's column types, and turns a plaintext column whose
model type became ``Encrypted`` into ``op.encrypt_column``.

Online mode only: revision 0001 has vaultkit create its tables over a live connection.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from member_app.models import Base
from member_app.vault import database_url
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

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
asyncio.run(run_async_migrations())
