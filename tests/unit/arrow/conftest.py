"""Fixtures of the Arrow kernel tests: a spec over a config file, its vault opened as a worker
would open it (the master key in the environment)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.arrow._spec import new_master_key, write_config
from vaultkit import Vault
from vaultkit.arrow import VaultSpec, close_vaults


@pytest.fixture
def master_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = new_master_key()
    monkeypatch.setenv("VAULTKIT_MASTER_KEY", key)
    return key


@pytest.fixture
def spec(tmp_path: Path, master_key: str) -> Iterator[VaultSpec]:
    yield VaultSpec(write_config(tmp_path))
    close_vaults()


@pytest.fixture
def arrow_vault(spec: VaultSpec) -> Vault:
    return spec.open()
