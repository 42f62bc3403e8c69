"""Fixtures of the scoped-key tests: a wall clock moved by hand, together with the monotonic one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests._support import FakeClock
from tests.unit.scopes._scoped_support import Wall, seed_domains
from vaultkit import Vault
from vaultkit.store import KeyStore, MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider


@pytest.fixture
def wall(clock: FakeClock) -> Wall:
    return Wall(clock)


@pytest.fixture
def make_vault(provider: InMemoryKeyProvider, wall: Wall) -> Iterator[Callable[..., Vault]]:
    """Vaults on one provider and store (each one a process, in effect), closed afterwards."""
    made: list[Vault] = []
    shared: dict[str, Any] = {"store": MemoryKeyStore()}

    def make(store: KeyStore | str | None = None, **kwargs: Any) -> Vault:
        kwargs.setdefault("provider", provider)
        kwargs.setdefault("domains", seed_domains())
        kwargs.setdefault("clock", wall)
        vault = Vault(store=store if store is not None else shared["store"], **kwargs)
        made.append(vault)
        return vault

    yield make
    for vault in made:
        vault.close()
