"""Password policy (zxcvbn, breach lists) and password hashing (argon2id, bcrypt, legacy PBKDF2)."""

from vaultkit.passwords._signup import hash_new_password
from vaultkit.passwords.breached import (
    BreachedPasswords,
    PwnedHashFile,
    PwnedRangeDirectory,
    PwnedRangeMirror,
)
from vaultkit.passwords.hashing import (
    CHEAPEST,
    RFC_9106_LOW_MEMORY,
    Argon2Profile,
    PasswordHasher,
    calibrate,
)
from vaultkit.passwords.policy import PasswordPolicy, PolicyResult

__all__ = [
    "CHEAPEST",
    "RFC_9106_LOW_MEMORY",
    "Argon2Profile",
    "BreachedPasswords",
    "PasswordHasher",
    "PasswordPolicy",
    "PolicyResult",
    "PwnedHashFile",
    "PwnedRangeDirectory",
    "PwnedRangeMirror",
    "calibrate",
    "hash_new_password",
]
