"""Shared fixtures: providers, vaults, and the PostgreSQL server the integration tests use."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests._servers import unavailable
from tests._support import FakeClock
from vaultkit import Vault
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

POSTGRES_DSN = os.environ.get(
    "VAULTKIT_TEST_POSTGRES_DSN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The keyring's and the cipher's monotonic clock, moved by hand (``clock.now += 6``)."""
    import vaultkit._cipher
    import vaultkit._keyring

    fake = FakeClock()
    monkeypatch.setattr(vaultkit._keyring, "_monotonic", fake)
    monkeypatch.setattr(vaultkit._cipher, "_monotonic", fake)
    return fake


@pytest.fixture
def provider() -> InMemoryKeyProvider:
    """An in-memory provider with KEKs for the three usual domains."""
    return InMemoryKeyProvider(["identity", "financial", "medical"])


@pytest.fixture
def vault_kwargs(provider: InMemoryKeyProvider) -> dict[str, Any]:
    """The arguments of the ``vault`` fixture's :class:`Vault`. A test module or class that needs
    another vault overrides this fixture, never ``vault`` itself."""
    return {
        "provider": provider,
        "store": MemoryKeyStore(),
        "domains": ["identity", "financial", "medical"],
    }


@pytest.fixture
def vault(request: pytest.FixtureRequest, vault_kwargs: dict[str, Any]) -> Iterator[Vault]:
    """A vault over in-memory keys and an in-memory key store (``vault_kwargs``), closed after.

    In a test marked ``configured`` (``pytestmark = pytest.mark.configured`` in a module) it is
    also the column types' vault, unset after the test and before the vault closes."""
    with Vault(**vault_kwargs) as v:
        if request.node.get_closest_marker("configured") is None:
            yield v
            return
        import vaultkit.sqla

        vaultkit.sqla.configure(v)
        try:
            yield v
        finally:
            vaultkit.sqla.configure(None)


@pytest.fixture
def configure_vault() -> Iterator[Callable[[Vault | None], None]]:
    """:func:`vaultkit.sqla.configure`, with ``configure(None)`` after the test."""
    import vaultkit.sqla

    yield vaultkit.sqla.configure
    vaultkit.sqla.configure(None)


@pytest.fixture
def configured_vault(vault: Vault, configure_vault: Callable[[Vault | None], None]) -> Vault:
    """The ``vault`` fixture as the column types' vault (``vaultkit.sqla.configure``), unset after
    the test and before the vault closes (or mark the test ``configured`` and use ``vault``)."""
    configure_vault(vault)
    return vault


def _server_engine(dsn: str, *, what: str, require: str) -> sa.Engine:
    """An engine on a test server; skips the test, or fails it when VAULTKIT_REQUIRE_<require>=1,
    if none answers."""
    engine = sa.create_engine(dsn)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # any failure to connect means no server here
        engine.dispose()
        unavailable(require, f"no {what} server at {dsn}: {type(exc).__name__}")
    return engine


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[sa.Engine]:
    """An engine on the test PostgreSQL server; skips, or fails in CI, when none answers."""
    engine = _server_engine(POSTGRES_DSN, what="PostgreSQL", require="POSTGRES")
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_schema(postgres_engine: sa.Engine) -> Iterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    name = f"vk_test_{uuid.uuid4().hex[:12]}"
    with postgres_engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield name
    with postgres_engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))


@pytest.fixture
def postgres_url(postgres_engine: sa.Engine, postgres_schema: str) -> str:
    """A URL whose connections use a fresh schema as their search path."""
    url = postgres_engine.url.update_query_dict({"options": f"-csearch_path={postgres_schema}"})
    return url.render_as_string(hide_password=False)


MARIADB_DSN = os.environ.get(
    "VAULTKIT_TEST_MARIADB_DSN", "mysql+pymysql://root@127.0.0.1:3306/test"
)


@pytest.fixture(scope="session")
def mariadb_engine() -> Iterator[sa.Engine]:
    """An engine on the test MariaDB server; skips, or fails in CI, when none answers."""
    engine = _server_engine(MARIADB_DSN, what="MariaDB", require="MARIADB")
    yield engine
    engine.dispose()


@pytest.fixture
def mariadb_url(mariadb_engine: sa.Engine) -> Iterator[str]:
    """A URL of a fresh MariaDB database for one test, dropped afterwards."""
    name = f"vk_test_{uuid.uuid4().hex[:12]}"
    with mariadb_engine.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    yield mariadb_engine.url.set(database=name).render_as_string(hide_password=False)
    with mariadb_engine.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE `{name}`"))


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A URL of an empty database: an SQLite file, a PostgreSQL schema or a MariaDB database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("mariadb_url"))
