"""Blocking calls made from asyncio applications: run them without blocking the event loop.

SQLAlchemy's asyncio extension runs the synchronous ORM and Core machinery, and with it vaultkit's
bind and result processors, inside a greenlet that switches to the event loop whenever the async
driver waits (``sqlalchemy.util.greenlet_spawn``). Inside such a greenlet, :func:`call` hands a
blocking call (a key-store read, a provider's unwrap, an audit append) to a worker thread and
waits for it by switching to the loop, so other tasks keep running meanwhile. Everywhere else,
a plain thread or a coroutine calling vaultkit directly, it calls the function inline: the
synchronous path pays one check, and only where it is about to do I/O.

Nothing here may be called while holding a lock that a task on the loop's thread could need: the
greenlet switches to the loop, and a second task taking a ``threading.Lock`` held by the first,
in the same thread, would block the loop for good.

It also turns the URL of an async driver into the URL of its synchronous twin, for the engines
vaultkit opens for its own tables (:func:`sync_engine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from vaultkit.errors import ConfigurationError

__all__ = ["CancelledCall", "call", "in_greenlet", "run_async", "sync_engine", "sync_url"]

_T = TypeVar("_T")

#: Async drivers and their synchronous twins (``backend+driver``). A backend without a driver name
#: uses the default sync driver. Anything async not listed here is refused with a pointer to
#: passing a sync URL.
SYNC_DRIVERS: Final = {
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
    "mariadb+aiomysql": "mariadb+pymysql",
    "mariadb+asyncmy": "mariadb+pymysql",
    "oracle+oracledb_async": "oracle+oracledb",
    "oracle+oracledb": "oracle+oracledb",
}


class CancelledCall(asyncio.CancelledError):
    """The task was cancelled while a ``call(..., finish=True)`` ran, and that call failed.

    Its cause is the call's error. The caller keeps what it handed over, as on that error.
    """


def in_greenlet() -> bool:
    """Whether this code runs inside SQLAlchemy's asyncio greenlet (``greenlet_spawn``)."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:  # never imported: no greenlet can be running
        return False
    return bool(getattr(greenlet.getcurrent(), "__sqlalchemy_greenlet_provider__", False))


def _await(awaitable: Any) -> Any:
    from sqlalchemy.util import concurrency

    # SQLAlchemy 2.1 names it await_ (await_only is the 2.0 name, deprecated in 2.2).
    await_ = getattr(concurrency, "await_", None) or concurrency.await_only
    return await_(awaitable)


def call(fn: Callable[..., _T], *args: Any, finish: bool = False) -> _T:
    """Call ``fn(*args)``; inside SQLAlchemy's greenlet in a worker thread, awaited on the loop.

    The worker runs in a copy of the caller's context (``asyncio.to_thread``), so the vaultkit
    scope (principal, purpose) is the calling task's. Exceptions propagate unchanged.

    With ``finish`` (audit writes), a cancelled task still waits for the call's outcome: a
    worker that had not started yet would otherwise never run it, and a failure after the
    cancellation would go unseen, so the caller could neither keep nor drop what it handed
    over. The cancellation then goes on: as :class:`CancelledCall` (a ``CancelledError``)
    when the call failed, so that the caller keeps what it handed over.
    """
    if not in_greenlet():
        return fn(*args)
    if not finish:
        return _await(asyncio.to_thread(fn, *args))  # type: ignore[no-any-return]
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return _await(asyncio.shield(future))  # type: ignore[no-any-return]
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                _await(asyncio.wait((future,)))  # returns, never raises the call's error
        failure = future.exception()
        if failure is not None:
            raise CancelledCall from failure
        raise


async def run_async(fn: Callable[..., _T], *args: Any) -> _T:
    """Await ``fn(*args)`` from a coroutine without blocking the loop.

    With greenlet installed, ``fn`` runs in SQLAlchemy's greenlet on the loop, so its short,
    locked bookkeeping stays on the loop and the I/O it hands to :func:`call` goes to a worker
    thread (no lock is held meanwhile); without greenlet, all of ``fn`` runs in a worker thread.
    """
    if importlib.util.find_spec("greenlet") is None:
        return await asyncio.to_thread(fn, *args)
    from sqlalchemy.util.concurrency import greenlet_spawn

    return await greenlet_spawn(fn, *args)


def _is_memory_sqlite(url: sa.URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def sync_url(url: str | sa.URL, *, is_async: bool | None = None) -> sa.URL:
    """The URL of the synchronous twin of an async driver's URL; a sync URL is returned as is.

    ``postgresql+asyncpg`` and ``postgresql+psycopg_async`` become ``postgresql+psycopg``,
    ``sqlite+aiosqlite`` becomes ``sqlite+pysqlite``, ``mysql+aiomysql`` and ``mysql+asyncmy``
    become ``mysql+pymysql``. Host, port, database, user, password and query are kept.

    Args:
        url: the URL.
        is_async: whether it is used with an async engine (``postgresql+psycopg`` serves both);
            by default, whether its driver name is one of an async-only driver.

    Raises:
        ConfigurationError: the URL is not a URL, names an async driver without a known twin, or
            an in-memory SQLite database (another engine cannot reach it).
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"cannot use database URL: {type(exc).__name__}") from None
    name = f"{parsed.get_backend_name()}+{parsed.get_driver_name()}"
    if is_async is None:
        is_async = name in SYNC_DRIVERS and SYNC_DRIVERS[name] != name
    if not is_async:
        return parsed
    twin = SYNC_DRIVERS.get(name)
    if twin is None:
        raise ConfigurationError(
            f"vaultkit has no synchronous driver for {name}; give its key store and audit log "
            "a synchronous URL or Engine of the same database"
        )
    if _is_memory_sqlite(parsed):
        raise ConfigurationError(
            "an in-memory SQLite database is private to its engine: vaultkit cannot open its own "
            "engine on it; use an SQLite file or another database for the key store"
        )
    return parsed.set(drivername=twin)


def sync_engine(target: object, *, what: str) -> tuple[Engine, bool] | None:
    """A synchronous engine for ``target``, and whether vaultkit made it (and must dispose it).

    A URL is opened with its synchronous driver; an ``AsyncEngine``, or the ``sync_engine`` of
    one, gets a new engine of vaultkit's own on the same database with the synchronous twin of
    its driver (:func:`sync_url`): an async engine's connections can only be used from inside
    SQLAlchemy's greenlet, and vaultkit reads its keys from worker threads and at start-up. A
    synchronous ``Engine`` is used as it is. Anything else gives ``None``.
    """
    if isinstance(target, str | sa.URL):
        url = sync_url(target)
    elif isinstance(target, Engine):
        if not target.dialect.is_async:
            return target, False
        url = sync_url(target.url, is_async=True)
    elif isinstance(getattr(target, "sync_engine", None), Engine):  # an AsyncEngine
        url = sync_url(target.sync_engine.url, is_async=True)  # type: ignore[attr-defined]
    else:
        return None
    try:
        return sa.create_engine(url), True
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigurationError(f"cannot use {what} URL: {type(exc).__name__}") from None
