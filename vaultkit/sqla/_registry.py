"""Which vault the column types use: configured once at start-up, by name."""

from __future__ import annotations

import threading
from typing import Final

from vaultkit._vault import Vault
from vaultkit.errors import ConfigurationError

__all__ = ["DEFAULT", "Slot", "configure", "get_vault", "slot"]

DEFAULT: Final = "default"


class Slot:
    """Holds the vault configured under one name; ``generation`` grows on every change."""

    __slots__ = ("generation", "name", "vault")

    def __init__(self, name: str) -> None:
        self.name = name
        self.vault: Vault | None = None
        self.generation = 0

    def get(self) -> Vault:
        vault = self.vault
        if vault is None:
            raise ConfigurationError(
                f"no vault is configured under the name {self.name!r}: call "
                f"vaultkit.sqla.configure(vault{'' if self.name == DEFAULT else f', name={self.name!r}'}) "
                "at start-up, before the first query"
            )
        return vault

    def __repr__(self) -> str:
        return f"Slot({self.name!r}, configured={self.vault is not None})"


_slots: dict[str, Slot] = {}
_lock = threading.Lock()


def slot(name: str) -> Slot:
    """Return the slot of ``name``, creating an empty one."""
    found = _slots.get(name)
    if found is None:
        with _lock:
            found = _slots.setdefault(name, Slot(name))
    return found


def configure(vault: Vault | None, *, name: str = DEFAULT) -> None:
    """Make ``vault`` the one the column types named ``name`` use (``None`` to clear it).

    Call it once at start-up. Columns choose a vault by name (``Encrypted(..., vault="unit")``),
    so that no vault object, and nothing secret, sits in a column type or a statement cache key.

    .. versionadded:: 0.1.0
    """
    if vault is not None and not isinstance(vault, Vault):
        raise TypeError(f"configure() takes a Vault, not {type(vault).__name__}")
    target = slot(name)
    with _lock:
        target.vault = vault
        target.generation += 1


def get_vault(name: str = DEFAULT) -> Vault:
    """Return the vault configured under ``name``."""
    return slot(name).get()
