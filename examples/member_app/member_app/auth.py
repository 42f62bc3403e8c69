"""A stand-in for authentication: the caller says who it is in the ``X-User`` and ``X-Role``
headers, and is believed.

This is a stub. Anyone can send any header; a real application takes the user from a verified
token or session and the role from its own user directory. What the example is about is the
rest: each request acts as one vaultkit ``Principal``, whose grants decide what it can decrypt.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException

from vaultkit import Principal

#: The vaultkit grants of each role. Only coaches hold the medical grant; a claims handler's
#: principal has none, so the chat's text reaches it sealed, whatever the code asks for.
ROLE_GRANTS: dict[str, frozenset[str]] = {
    "claims-handler": frozenset(),
    "coach": frozenset({"medical"}),
}


@dataclass(frozen=True)
class Staff:
    user: str
    role: str


def current_staff(
    x_user: Annotated[str | None, Header(max_length=100)] = None,
    x_role: Annotated[str | None, Header()] = None,
) -> Staff:
    """The caller, from the stub headers: 401 without them or for a role the app does not know."""
    if not x_user or x_role is None or x_role not in ROLE_GRANTS:
        raise HTTPException(401, "send X-User and X-Role (claims-handler or coach)")
    return Staff(user=x_user, role=x_role)


def current_principal(staff: Annotated[Staff, Depends(current_staff)]) -> Principal:
    """The vaultkit principal of the request: the user's name (it goes into the audit log) and
    the grants of the user's role."""
    return Principal(staff.user, grants=ROLE_GRANTS[staff.role])


def require_role(*roles: str) -> Callable[[Staff], Staff]:
    """A dependency that lets only the given roles through (403 for the others).

    This is the application's own policy. For the medical domain it is not the only line: a
    handler who got past it would still read sealed values.
    """

    def check(staff: Annotated[Staff, Depends(current_staff)]) -> Staff:
        if staff.role not in roles:
            raise HTTPException(403, f"needs one of the roles: {', '.join(roles)}")
        return staff

    return check
