"""Who is reading: principals, their grants, and the sealed value a denied read yields."""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from vaultkit.errors import AccessDeniedError, ConfigurationError
from vaultkit.keys.domains import KeyDomain, check_domain_name

__all__ = [
    "ANONYMOUS",
    "Denied",
    "Policy",
    "Principal",
    "Scope",
    "SealedValue",
    "acting_as",
    "current_scope",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """Someone or something that reads data: a coach, the medical adviser, the claims service.

    Args:
        name: an identifier that goes into the audit log (never a secret).
        grants: the restricted domains this principal may decrypt, such as ``{"medical"}``.

    .. versionadded:: 0.1.0
    """

    name: str
    grants: frozenset[str] = field(default=frozenset())

    def __init__(self, name: str, grants: Iterable[str] = ()) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("a principal needs a non-empty str name")
        if isinstance(grants, str):
            raise TypeError("grants is a collection of domain names, not one string")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "grants", frozenset(check_domain_name(g) for g in grants))


#: The caller outside any ``acting_as`` block: an anonymous service with no grants.
ANONYMOUS = Principal("anonymous")


@dataclass(frozen=True, slots=True)
class Scope:
    """The principal and purpose in force for the current thread or asyncio task.

    ``opened`` holds what this scope decrypted from ORM attributes of restricted or audited
    domains (:mod:`vaultkit.sqla`), per object: another scope, even of the same principal, never
    sees it, and it is emptied when the ``acting_as`` block ends.
    """

    principal: Principal
    purpose: str | None
    opened: weakref.WeakKeyDictionary[Any, dict[str, Any]] = field(
        init=False, repr=False, compare=False, default_factory=weakref.WeakKeyDictionary
    )
    #: Set when its ``acting_as`` block ends. Code that still holds the scope in a copied context
    #: (an asyncio task or a thread started inside the block that outlives it) is anonymous then.
    ended: bool = field(init=False, repr=False, compare=False, default=False)


_ANONYMOUS_SCOPE: Final = Scope(ANONYMOUS, None)
_scope: contextvars.ContextVar[Scope] = contextvars.ContextVar(
    "vaultkit_scope",
    default=_ANONYMOUS_SCOPE,
)


def current_scope() -> Scope:
    """Return the principal and purpose in force here.

    A scope whose ``acting_as`` block has ended is in force nowhere: a task or thread that was
    started inside the block and runs on after it (``asyncio.create_task``, a thread pool given a
    copy of the context) acts anonymously from then on, without the block's grants.
    """
    scope = _scope.get()
    return _ANONYMOUS_SCOPE if scope.ended else scope


@contextlib.contextmanager
def acting_as(principal: Principal, *, purpose: str) -> Iterator[Scope]:
    """Act as ``principal`` for ``purpose`` inside the block; scopes nest and restore on exit.

    The scope lives in a ``contextvars.ContextVar``: each thread starts anonymous, and each asyncio
    task sees the scope of the code that created it, never another task's.
    """
    if not isinstance(principal, Principal):
        raise TypeError(f"acting_as takes a Principal, not {type(principal).__name__}")
    if not isinstance(purpose, str) or not purpose:
        raise TypeError("acting_as needs a non-empty purpose")
    scope = Scope(principal, purpose)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        try:
            _scope.reset(token)
        except ValueError:
            # Left in another context than it was entered in: FastAPI runs the two halves of a
            # sync ``def`` dependency with ``yield`` in two copies of the request's context.
            raise ConfigurationError(
                "acting_as was left in another context than it was entered in (a sync FastAPI "
                "dependency with yield does that): set a request's scope with "
                "vaultkit.integrations.fastapi.vaultkit_scope"
            ) from None
        finally:
            object.__setattr__(scope, "ended", True)  # frozen: set once, by its own block
            scope.opened.clear()


class SealedValue:
    """What a restricted column yields to a reader without the grant: never the plaintext.

    Its ``repr`` and ``str`` name only the domain; it equals nothing but itself (no string, no
    other sealed value); it cannot be pickled, copied into JSON by ``json.dumps`` (a ``TypeError``,
    as for any unknown object), or written back into an encrypted column (the column refuses it).

    .. versionadded:: 0.1.0
    """

    __slots__ = ("domain",)

    def __init__(self, domain: str) -> None:
        self.domain = domain

    def __repr__(self) -> str:
        return f"SealedValue(domain={self.domain!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a sealed value cannot be pickled")


class Denied(Exception):  # noqa: N818 - internal control flow, never raised to callers
    """The current principal may not read this domain (raised before any key is read)."""

    def __init__(self, domain: str) -> None:
        super().__init__(domain)
        self.domain = domain


class Policy:
    """Who may read and write each declared domain: the grant checks, and nothing else.

    Built once from a vault's :class:`~vaultkit.KeyDomain` declarations and never changed
    afterwards, so it needs no lock and no reset after a fork. The principal is the one in
    force for the calling thread or task (:func:`current_scope`).
    """

    __slots__ = ("audited", "domains", "restricted")

    def __init__(self, domains: Mapping[str, KeyDomain]) -> None:
        self.domains: dict[str, KeyDomain] = dict(domains)
        #: Names of the restricted and the audited domains (read on the hot paths).
        self.restricted = frozenset(n for n, d in self.domains.items() if d.restricted)
        self.audited = frozenset(n for n, d in self.domains.items() if d.audited)

    def is_denied(self, domain: str) -> bool:
        """Whether the current principal lacks the grant of a restricted ``domain``."""
        return domain in self.restricted and domain not in current_scope().principal.grants

    def check_encrypt(self, domain: str) -> None:
        """Refuse encryption into ``domain`` without its grant (``encrypt_requires_grant``).

        Raises:
            AccessDeniedError: the current principal has no grant for ``domain``.
        """
        scope = current_scope()
        if domain not in scope.principal.grants:
            raise AccessDeniedError(
                f"principal {scope.principal.name!r} may not encrypt into domain {domain!r}"
            )

    def sealed(self, domain: str) -> SealedValue:
        """What a denied read of ``domain`` yields: a sealed value, or the domain's error.

        Raises:
            AccessDeniedError: the domain is declared with ``on_denied="raise"``.
        """
        if self.domains[domain].on_denied == "raise":
            raise AccessDeniedError(
                f"principal {current_scope().principal.name!r} has no grant for domain {domain!r}"
            )
        return SealedValue(domain)
