"""Password hashing: argon2id by default, bcrypt cost 12 available, legacy hashes verified.

New hashes are argon2id (argon2-cffi, at least RFC 9106's low-memory profile) or bcrypt; new
passwords are normalised to NFKC first (ASVS 5.0). Legacy hashes are verified on the password as
given, as the old system hashed it: PBKDF2-SHA256 in Django's ``pbkdf2_sha256$...`` and the PHC /
passlib ``$pbkdf2-sha256$...`` forms, bcrypt ``$2a$/$2b$/$2y$`` and Django's
``bcrypt_sha256$...``. :meth:`PasswordHasher.verify_and_update` returns a fresh hash whenever the
stored one is of another scheme or weaker parameters, so that systems migrate at login.

bcrypt reads only 72 bytes. New bcrypt hashes of longer passwords are refused
(:class:`~vaultkit.errors.PasswordError`), never silently truncated. A bcrypt hash cannot say
whether vaultkit or an older system made it, so ``verify`` tries the password as ``hash`` would
have prepared it (NFKC, at most 72 bytes) and then, if that differs, as an older system would
have (the bytes as given, truncated to 72 as old libraries did). A legacy bcrypt hash of a longer
password therefore verifies on its first 72 bytes, and is replaced with argon2id by
``verify_and_update``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import unicodedata
from dataclasses import dataclass
from typing import Final, Literal

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from vaultkit.errors import ConfigurationError, PasswordError, PasswordMismatchError

__all__ = [
    "CHEAPEST",
    "RFC_9106_LOW_MEMORY",
    "Argon2Profile",
    "PasswordHasher",
    "calibrate",
]

BCRYPT_MAX_BYTES: Final = 72


@dataclass(frozen=True, slots=True)
class Argon2Profile:
    """argon2id parameters."""

    time_cost: int
    memory_cost: int  # KiB
    parallelism: int


#: RFC 9106, section 4, second recommended option: t=3, 64 MiB, p=4 (argon2-cffi's default).
RFC_9106_LOW_MEMORY: Final = Argon2Profile(time_cost=3, memory_cost=65536, parallelism=4)
#: For tests only: as cheap as argon2 allows. Never for stored passwords.
CHEAPEST: Final = Argon2Profile(time_cost=1, memory_cost=8, parallelism=1)


_UNKNOWN_HASH: Final = "the stored hash is of an unknown or malformed format"


class _ArgumentError(PasswordError, TypeError):
    """Bad arguments to ``verify``: a TypeError for the programmer, a PasswordError for handlers."""


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # The exception would hold the whole password in its ``object`` attribute.
        raise PasswordError("the password is not valid Unicode (it has a lone surrogate)") from None


def _b64decode_unpadded(text: str, *, altchars: bytes | None = None) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)


class PasswordHasher:
    """Hash and verify passwords.

    Args:
        scheme: ``"argon2id"`` (default) or ``"bcrypt"`` for new hashes.
        argon2_profile: argon2id parameters (default RFC 9106 low-memory: t=3, 64 MiB, p=4).
        bcrypt_rounds: bcrypt cost (default 12, the seed policy's).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        scheme: Literal["argon2id", "bcrypt"] = "argon2id",
        argon2_profile: Argon2Profile = RFC_9106_LOW_MEMORY,
        bcrypt_rounds: int = 12,
    ) -> None:
        if scheme not in ("argon2id", "bcrypt"):
            raise ConfigurationError("scheme must be 'argon2id' or 'bcrypt'")
        if not 4 <= bcrypt_rounds <= 31:
            raise ConfigurationError("bcrypt_rounds must be from 4 to 31")
        self.scheme = scheme
        self.profile = argon2_profile
        self.bcrypt_rounds = bcrypt_rounds
        self._argon2 = argon2.PasswordHasher(
            time_cost=argon2_profile.time_cost,
            memory_cost=argon2_profile.memory_cost,
            parallelism=argon2_profile.parallelism,
            type=argon2.Type.ID,
        )
        self._dummy: str | None = None

    @classmethod
    def recommended(cls) -> PasswordHasher:
        """argon2id at RFC 9106's low-memory profile."""
        return cls()

    # -- hashing ------------------------------------------------------------------------------

    @staticmethod
    def _normalize(password: str) -> bytes:
        if not isinstance(password, str):
            raise TypeError(f"password must be str, not {type(password).__name__}")
        return _utf8(unicodedata.normalize("NFKC", password))

    def hash(self, password: str) -> str:
        """Hash a new password with the configured scheme.

        Raises:
            PasswordError: bcrypt was asked for a password of more than 72 bytes.
        """
        secret = self._normalize(password)
        if self.scheme == "bcrypt":
            if len(secret) > BCRYPT_MAX_BYTES:
                raise PasswordError(
                    f"bcrypt reads only {BCRYPT_MAX_BYTES} bytes and this password has {len(secret)}; "
                    "it is refused rather than truncated (use argon2id)"
                )
            return bcrypt.hashpw(secret, bcrypt.gensalt(self.bcrypt_rounds)).decode("ascii")
        return self._argon2.hash(secret)

    # -- verification -------------------------------------------------------------------------

    @staticmethod
    def _scheme_of(hashed: str) -> str | None:
        if (
            hashed.startswith("$argon2id$")
            or hashed.startswith("$argon2i$")
            or hashed.startswith("$argon2d$")
        ):
            return "argon2"
        if hashed.startswith(("$2a$", "$2b$", "$2y$")):
            return "bcrypt"
        if hashed.startswith("bcrypt_sha256$"):
            return "django_bcrypt_sha256"
        if hashed.startswith("pbkdf2_sha256$"):
            return "django_pbkdf2_sha256"
        if hashed.startswith("$pbkdf2-sha256$"):
            return "phc_pbkdf2_sha256"
        return None

    def _dummy_work(self) -> None:
        # An argon2id verification with this hasher's parameters: the work a real verify does.
        if self._dummy is None:
            self._dummy = self._argon2.hash(b"vaultkit dummy password")
        try:
            self._argon2.verify(self._dummy, b"not the dummy password")
        except VerificationError:
            pass

    def verify(self, password: str, hashed: str) -> Literal[True]:
        """Check ``password`` against a stored hash.

        A password is checked in the form :meth:`hash` gives it (NFKC) and, for legacy formats
        and when it differs, as given: ``verify(p, hash(q))`` succeeds whenever ``p`` and ``q``
        are the same text in two Unicode normalisation forms.

        Returns:
            ``True``; any other outcome raises.

        Raises:
            PasswordMismatchError: the password does not match.
            PasswordError: the hash is unknown or malformed. An argon2id verification's worth
                of work is done first, before any argument check, so that neither the time nor
                the type of error tells an unknown account from a known one.
            TypeError: the arguments are not str, or are given in the wrong order; after the same
                work, and also a :class:`~vaultkit.errors.PasswordError`, so that a handler for
                unknown hashes treats it alike.
        """
        scheme = self._scheme_of(hashed) if isinstance(hashed, str) else None
        if scheme is None or not isinstance(password, str):
            # Every way to fail before a real verification costs the same work and raises a
            # PasswordError: an unknown account (no hash, or a placeholder) must not answer
            # faster, or with another error, whatever the caller passed as the password.
            self._dummy_work()
            if not isinstance(password, str) or not isinstance(hashed, str):
                raise _ArgumentError("verify(password, hash) takes two str")
            if self._scheme_of(password) is not None:
                raise _ArgumentError(
                    "the stored hash is of an unknown or malformed format, and the password "
                    "argument looks like a stored hash: arguments in the wrong order? "
                    "Call verify(password, hash)"
                )
            raise PasswordError(_UNKNOWN_HASH)
        try:
            ok = self._verify(scheme, password, hashed)
        except PasswordError:
            # The password is not valid Unicode, so no hash can be of it.
            self._dummy_work()
            ok = False
        except (ValueError, InvalidHashError, binascii.Error, UnicodeError):
            self._dummy_work()
            raise PasswordError(_UNKNOWN_HASH) from None
        if not ok:
            raise PasswordMismatchError("password does not match")
        return True

    def _verify(self, scheme: str, password: str, hashed: str) -> bool:
        if scheme == "argon2":
            try:
                return self._argon2.verify(hashed, self._normalize(password))
            except VerifyMismatchError:
                return False
            except VerificationError:
                # argon2 could not decode the hash: malformed, not a wrong password.
                raise ValueError("malformed argon2 hash") from None
        raw = _utf8(password)
        if scheme == "bcrypt":
            # hash() stored bcrypt(NFKC(password)) and refused more than 72 bytes; an older
            # system stored bcrypt(first 72 bytes as given). Try the first, then the second.
            stored = hashed.encode("ascii")
            candidates = []
            normalized = self._normalize(password)
            if len(normalized) <= BCRYPT_MAX_BYTES:
                candidates.append(normalized)
            if raw[:BCRYPT_MAX_BYTES] not in candidates:
                candidates.append(raw[:BCRYPT_MAX_BYTES])
            return any(bcrypt.checkpw(candidate, stored) for candidate in candidates)
        if scheme == "django_bcrypt_sha256":
            inner = hashed.removeprefix("bcrypt_sha256$")
            prehash = hashlib.sha256(raw).hexdigest().encode("ascii")
            return bcrypt.checkpw(prehash, inner.encode("ascii"))
        if scheme == "django_pbkdf2_sha256":
            _algorithm, rounds_text, salt_text, encoded = hashed.split("$", 3)
            iterations = int(rounds_text)
            salt = salt_text.encode("utf-8")
            expected = base64.b64decode(encoded, validate=True)
        else:
            # $pbkdf2-sha256$<rounds>$<salt>$<hash>: passlib writes rounds plainly and "adapted"
            # base64 ('.' for '+'); the PHC string format writes i=<rounds> and plain base64.
            _empty, _name, rounds_text, salt_text, hash_text = hashed.split("$")
            if rounds_text.startswith("i="):
                iterations = int(rounds_text[2:].split(",")[0])
                salt, expected = _b64decode_unpadded(salt_text), _b64decode_unpadded(hash_text)
            else:
                iterations = int(rounds_text)
                salt = _b64decode_unpadded(salt_text, altchars=b"./")
                expected = _b64decode_unpadded(hash_text, altchars=b"./")
        if not 1 <= iterations <= 10_000_000 or not 16 <= len(expected) <= 64:
            raise ValueError("PBKDF2 parameters out of range")
        derived = hashlib.pbkdf2_hmac("sha256", raw, salt, iterations, len(expected))
        return hmac.compare_digest(derived, expected)

    def check_needs_rehash(self, hashed: str) -> bool:
        """Whether a stored hash is of another scheme or of weaker parameters than configured."""
        scheme = self._scheme_of(hashed)
        if self.scheme == "argon2id":
            if scheme != "argon2" or not hashed.startswith("$argon2id$"):
                return True
            try:
                return self._argon2.check_needs_rehash(hashed)
            except InvalidHashError:
                return True
        if scheme != "bcrypt":
            return True
        try:
            return int(hashed.split("$")[2]) < self.bcrypt_rounds
        except (IndexError, ValueError):
            return True

    def verify_and_update(self, password: str, hashed: str) -> str | None:
        """Verify, and return a new hash when the stored one should be replaced (else ``None``).

        Call at login: store the returned hash when it is not ``None``.

        Raises:
            PasswordMismatchError, PasswordError, TypeError: as :meth:`verify`.
        """
        self.verify(password, hashed)
        if self.check_needs_rehash(hashed):
            return self.hash(password)
        return None

    def __repr__(self) -> str:
        return f"PasswordHasher(scheme={self.scheme!r}, profile={self.profile!r}, bcrypt_rounds={self.bcrypt_rounds})"


def calibrate(
    target_ms: float, *, memory_cost: int = 65536, parallelism: int = 4
) -> tuple[Argon2Profile, float]:
    """Find the smallest argon2id ``time_cost`` (at least 3) whose hash takes ``target_ms`` here.

    Returns:
        The profile and the median milliseconds per hash measured with it.
    """
    if target_ms <= 0:
        raise ConfigurationError("target_ms must be positive")
    time_cost = 3
    while True:
        profile = Argon2Profile(time_cost, memory_cost, parallelism)
        hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            hasher.hash(b"calibration password")
            samples.append((time.perf_counter() - start) * 1000)
        measured = sorted(samples)[1]
        if measured >= target_ms or time_cost >= 64:
            return profile, measured
        time_cost += max(1, int(time_cost * (target_ms / measured - 1)))
