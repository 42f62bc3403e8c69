"""Tests for vaultkit.passwords.PasswordHasher and hash_new_password."""

from __future__ import annotations

import base64
import hashlib

import bcrypt
import pytest

from vaultkit.errors import PasswordError, PasswordMismatchError, WeakPasswordError
from vaultkit.passwords import (
    CHEAPEST,
    RFC_9106_LOW_MEMORY,
    PasswordHasher,
    PasswordPolicy,
    hash_new_password,
)

FAST = PasswordHasher(argon2_profile=CHEAPEST)  # test-only parameters
BCRYPT = PasswordHasher(scheme="bcrypt", bcrypt_rounds=4)


def django_pbkdf2(password: str, salt: str = "s4ltS4lt", iterations: int = 1000) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def passlib_pbkdf2(password: str, salt: bytes = b"0123456789abcdef", rounds: int = 2000) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)

    def ab64(b: bytes) -> str:
        return base64.b64encode(b, altchars=b"./").decode().rstrip("=")

    return f"$pbkdf2-sha256${rounds}${ab64(salt)}${ab64(digest)}"


def phc_pbkdf2(password: str, salt: bytes = b"0123456789abcdef", rounds: int = 2000) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode().rstrip("=")

    return f"$pbkdf2-sha256$i={rounds}${b64(salt)}${b64(digest)}"


def test_default_is_argon2id_at_least_rfc_9106_low_memory() -> None:
    """The recommended hasher writes argon2id with t=3, 64 MiB, p=4."""
    hashed = PasswordHasher.recommended().hash("correct horse battery staple")
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert RFC_9106_LOW_MEMORY.memory_cost == 65536


def test_round_trip_and_mismatch() -> None:
    """verify returns True for the password and raises PasswordMismatchError otherwise."""
    hashed = FAST.hash("Tr0ub4dor&3")
    assert FAST.verify("Tr0ub4dor&3", hashed) is True
    with pytest.raises(PasswordMismatchError):
        FAST.verify("Tr0ub4dor&4", hashed)


def test_nfkc_normalisation() -> None:
    """New passwords are normalised to NFKC: a ligature and its letters are the same password."""
    assert FAST.verify("ﬁsh", FAST.hash("fish")) is True


class TestBcrypt:
    def test_72_bytes_work_73_are_refused(self) -> None:
        """72 bytes hash and verify; 73 bytes are refused with a clear error, never truncated."""
        ok = "a" * 72
        assert BCRYPT.verify(ok, BCRYPT.hash(ok)) is True
        with pytest.raises(PasswordError, match="72 bytes"):
            BCRYPT.hash("a" * 73)

    def test_nineteen_emoji_are_76_bytes(self) -> None:
        """19 emoji (76 bytes in UTF-8, 19 characters) are refused by bcrypt, accepted by argon2id."""
        emoji = "😀" * 19
        with pytest.raises(PasswordError, match="76"):
            BCRYPT.hash(emoji)
        assert FAST.verify(emoji, FAST.hash(emoji)) is True

    def test_cost_12_is_the_default(self) -> None:
        """bcrypt hashes use cost 12 unless configured."""
        assert PasswordHasher(scheme="bcrypt").bcrypt_rounds == 12


class TestLegacyAndUpgrade:
    @pytest.mark.parametrize(
        "make", [django_pbkdf2, passlib_pbkdf2, phc_pbkdf2], ids=["django", "passlib", "phc"]
    )
    def test_pbkdf2_formats_verify_and_upgrade(self, make) -> None:  # type: ignore[no-untyped-def]
        """Legacy PBKDF2-SHA256 hashes verify and are replaced by argon2id at login."""
        legacy = make("oud wachtwoord")
        assert FAST.verify("oud wachtwoord", legacy) is True
        with pytest.raises(PasswordMismatchError):
            FAST.verify("nieuw wachtwoord", legacy)
        new = FAST.verify_and_update("oud wachtwoord", legacy)
        assert new is not None and new.startswith("$argon2id$")
        assert FAST.verify_and_update("oud wachtwoord", new) is None

    def test_bcrypt_cost_10_upgrades(self) -> None:
        """A legacy bcrypt cost-10 hash verifies and is upgraded to argon2id, or to cost 12 for bcrypt."""
        legacy = bcrypt.hashpw(b"legacy secret", bcrypt.gensalt(10)).decode()
        new = FAST.verify_and_update("legacy secret", legacy)
        assert new is not None and new.startswith("$argon2id$")
        assert PasswordHasher(scheme="bcrypt", bcrypt_rounds=12).check_needs_rehash(legacy)

    def test_django_bcrypt_sha256(self) -> None:
        """Django's bcrypt_sha256 (bcrypt over the hex SHA-256) verifies."""
        inner = bcrypt.hashpw(
            hashlib.sha256(b"long " * 30).hexdigest().encode(), bcrypt.gensalt(4)
        ).decode()
        assert FAST.verify("long " * 30, f"bcrypt_sha256${inner}") is True

    def test_legacy_bcrypt_of_a_long_password(self) -> None:
        """A legacy bcrypt hash made by a truncating library verifies on the first 72 bytes, then upgrades."""
        legacy = bcrypt.hashpw(("x" * 72).encode(), bcrypt.gensalt(4)).decode()
        assert FAST.verify("x" * 80, legacy) is True
        assert FAST.verify_and_update("x" * 80, legacy) is not None

    def test_stronger_argon2_parameters_trigger_rehash(self) -> None:
        """A hash made with weaker argon2 parameters than configured is due for a rehash."""
        assert PasswordHasher.recommended().check_needs_rehash(FAST.hash("x"))


class TestBadInput:
    @pytest.mark.parametrize(
        "stored",
        [
            "",
            "garbage",
            "$argon2id$broken",
            "$2b$12$short",
            "pbkdf2_sha256$x$y$z",
            "$pbkdf2-sha256$1$!!$!!",
            "md5$abc$def",
        ],
    )
    def test_unknown_or_malformed_hashes(self, stored: str) -> None:
        """Unknown or malformed hashes raise PasswordError naming no hash, after comparable work."""
        with pytest.raises(PasswordError) as info:
            FAST.verify("whatever", stored)
        assert not isinstance(info.value, PasswordMismatchError)
        assert "whatever" not in str(info.value) and (not stored or stored not in str(info.value))

    def test_swapped_arguments(self) -> None:
        """verify(hash, password) is caught as a TypeError."""
        hashed = FAST.hash("secret words here")
        with pytest.raises(TypeError, match="wrong order"):
            FAST.verify(hashed, "secret words here")
        with pytest.raises(TypeError):
            FAST.verify(b"bytes", hashed)  # type: ignore[arg-type]


def test_hash_new_password_checks_the_policy() -> None:
    """Sign-up hashes accepted passwords and raises WeakPasswordError, without the password, otherwise."""
    policy = PasswordPolicy()
    assert FAST.verify(
        "correct horse battery staple",
        hash_new_password("correct horse battery staple", policy=policy, hasher=FAST),
    )
    with pytest.raises(WeakPasswordError) as info:
        hash_new_password("Summer2024!", policy=policy, hasher=FAST)
    assert "Summer2024" not in str(info.value) and "too_weak" in str(info.value)
    assert info.value.result.score == 2  # type: ignore[attr-defined]
