"""Key domains: groups of columns that share a KEK and an access rule."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from vaultkit.errors import DomainError

__all__ = ["DOMAIN_NAME_PATTERN", "KeyDomain", "check_domain_name"]

#: Lowercase ASCII, digits, ``_``, ``-`` and ``.``, starting with a letter, at most 64 characters.
#: The name goes into every value's associated data and into the key store, so it is kept plain.
DOMAIN_NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def check_domain_name(name: object) -> str:
    """Return ``name`` if it is a valid domain name; raise otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a domain name must be str, not {type(name).__name__}")
    if not DOMAIN_NAME_PATTERN.fullmatch(name):
        raise DomainError(
            f"invalid domain name {name[:64]!r}: use 1 to 64 lowercase letters, digits, '_', '-' or "
            "'.', starting with a letter"
        )
    return name


@dataclass(frozen=True, slots=True)
class KeyDomain:
    """A key domain, such as ``identity``, ``financial`` or ``medical``.

    Each domain has its own KEK in its key provider, and its name is bound into every value
    encrypted in it, so a value copied from one domain to another does not decrypt.

    Args:
        name: the domain's name (see :data:`DOMAIN_NAME_PATTERN`).
        restricted: decrypting needs a principal holding a grant for this domain
            (``vault.acting_as(Principal("coach-17", grants={"medical"}), purpose=...)``).
        audited: each decrypt, denied read and write is an event in the vault's hash-chained audit
            log (:mod:`vaultkit.audit`; a vault with an audited domain needs ``audit=``).
        on_denied: for a reader without the grant, ``"seal"`` yields a :class:`SealedValue`,
            ``"raise"`` raises :class:`AccessDeniedError`. Never plaintext, never ``None``.
        encrypt_requires_grant: also refuse encryption without the grant. By default anyone may
            encrypt into a restricted domain (a service storing a document a member uploads).

    .. versionadded:: 0.1.0
    """

    name: str
    restricted: bool = False
    audited: bool = False
    on_denied: Literal["seal", "raise"] = "seal"
    encrypt_requires_grant: bool = False

    def __post_init__(self) -> None:
        check_domain_name(self.name)
        if self.on_denied not in ("seal", "raise"):
            raise DomainError(f"on_denied must be 'seal' or 'raise', not {self.on_denied!r}")
        if self.encrypt_requires_grant and not self.restricted:
            raise DomainError(f"domain {self.name!r}: encrypt_requires_grant needs restricted=True")
