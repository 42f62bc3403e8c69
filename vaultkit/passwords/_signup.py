"""Sign-up and password change: check the policy, then hash."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vaultkit.errors import WeakPasswordError
from vaultkit.passwords.hashing import PasswordHasher
from vaultkit.passwords.policy import PasswordPolicy


def hash_new_password(
    password: str,
    *,
    policy: PasswordPolicy,
    hasher: PasswordHasher,
    user_inputs: Iterable[Any] = (),
) -> str:
    """Check a new password against ``policy`` and return its hash.

    Raises:
        WeakPasswordError: the policy rejected it; ``.result`` holds the verdict and feedback,
            never the password.

    .. versionadded:: 0.1.0
    """
    result = policy.check(password, user_inputs=user_inputs)
    if not result.accepted:
        raise WeakPasswordError(result)
    return hasher.hash(password)
