"""Shared fixtures: providers, vaults, and the PostgreSQL server the integration tests use."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from vaultkit import Vault
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

POSTGRES_DSN = os.environ.get(
    "VAULTKIT_TEST_POSTGRES_DSN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("VAULTKIT_REQUIRE_POSTGRES") == "1"


@pytest.fixture
def provider() -> InMemoryKeyProvider:
    """An in-memory provider with KEKs for the three usual domains."""
    return InMemoryKeyProvider(["identity", "financial", "medical"])


@pytest.fixture
def vault(provider: InMemoryKeyProvider) -> Iterator[Vault]:
    """A vault over in-memory keys and an in-memory key store."""
    with Vault(
        provider=provider, store=MemoryKeyStore(), domains=["identity", "financial", "medical"]
    ) as v:
        yield v


def _server_engine(dsn: str, *, what: str, required: bool) -> sa.Engine:
    """An engine on a test server; skips the test, or fails it when required, if none answers."""
    engine = sa.create_engine(dsn)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # any failure to connect means no server here
        engine.dispose()
        message = f"no {what} server at {dsn}: {type(exc).__name__}"
        if required:
            pytest.fail(f"{message} (VAULTKIT_REQUIRE_{what.upper()}=1)")
        pytest.skip(message)
    return engine


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[sa.Engine]:
    """An engine on the test PostgreSQL server; skips, or fails in CI, when none answers."""
    engine = _server_engine(POSTGRES_DSN, what="PostgreSQL", required=REQUIRE_POSTGRES)
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
REQUIRE_MARIADB = os.environ.get("VAULTKIT_REQUIRE_MARIADB") == "1"


@pytest.fixture(scope="session")
def mariadb_engine() -> Iterator[sa.Engine]:
    """An engine on the test MariaDB server; skips, or fails in CI, when none answers."""
    engine = _server_engine(MARIADB_DSN, what="MariaDB", required=REQUIRE_MARIADB)
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
