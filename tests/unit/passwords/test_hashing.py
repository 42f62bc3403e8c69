"""Tests for vaultkit.passwords.PasswordHasher and hash_new_password."""

from __future__ import annotations

import base64
import hashlib
import statistics
import time
import unicodedata

import bcrypt
import pytest

from vaultkit.errors import PasswordError, PasswordMismatchError, WeakPasswordError
from vaultkit.passwords import (
    CHEAPEST,
    RFC_9106_LOW_MEMORY,
    Argon2Profile,
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

    @pytest.mark.parametrize(
        ("stored_as", "typed_as"),
        [
            (
                "\ufb01sh and chips, 4x",
                "\ufb01sh and chips, 4x",
            ),  # a ligature, typed the same twice
            ("fish and chips, 4x", "\ufb01sh and chips, 4x"),
            ("Crème brûlée à volonté", "NFD"),  # typed decomposed (macOS)
            ("\uff30\uff41\uff53\uff53 full width", "Pass full width"),
        ],
    )
    def test_verify_normalises_like_hash(self, stored_as: str, typed_as: str) -> None:
        """A bcrypt hash made by hash() verifies the same text typed in another normalisation form."""
        typed = unicodedata.normalize("NFD", stored_as) if typed_as == "NFD" else typed_as
        hashed = BCRYPT.hash(stored_as)
        assert BCRYPT.verify(typed, hashed) is True
        assert FAST.verify(typed, FAST.hash(stored_as)) is True
        with pytest.raises(PasswordMismatchError):
            BCRYPT.verify(typed + "!", hashed)

    def test_legacy_bcrypt_of_the_bytes_as_typed_still_verifies(self) -> None:
        """A legacy bcrypt hash of a decomposed password (not NFKC) verifies on the bytes as typed."""
        typed = unicodedata.normalize("NFD", "café crème 1978")
        legacy = bcrypt.hashpw(typed.encode(), bcrypt.gensalt(4)).decode()
        assert BCRYPT.verify(typed, legacy) is True
        with pytest.raises(PasswordMismatchError):
            BCRYPT.verify(unicodedata.normalize("NFC", typed), legacy)

    def test_no_new_hash_verifies_a_longer_password(self) -> None:
        """A password that hash() accepted (at most 72 bytes) does not verify with text appended."""
        exact = "é" * 36  # 72 bytes
        hashed = BCRYPT.hash(exact)
        assert BCRYPT.verify(exact, hashed) is True
        with pytest.raises(PasswordMismatchError):
            BCRYPT.verify(exact[:-1] + "e", hashed)

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

    def test_lone_surrogate_is_a_password_error_without_the_password(self) -> None:
        """A password with a lone surrogate is refused with a PasswordError that does not hold it."""
        secret = "geheim\ud800wachtwoord"
        for hasher in (FAST, BCRYPT):
            with pytest.raises(PasswordError) as info:
                hasher.hash(secret)
            assert "geheim" not in repr(info.value.args) + repr(vars(info.value))
            assert info.value.__cause__ is None and info.value.__suppress_context__
        with pytest.raises(PasswordMismatchError):
            FAST.verify(secret, FAST.hash("geheim wachtwoord"))

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


class TestUnknownAccountsLookLikeKnownOnes:
    """verify() with an unknown or malformed hash: comparable work first, then one error type."""

    # argon2id with one lane runs in the calling thread, so thread CPU time measures its work
    # and is not inflated by other processes on a loaded machine.
    HASHER = PasswordHasher(
        argon2_profile=Argon2Profile(time_cost=2, memory_cost=19456, parallelism=1)
    )

    @staticmethod
    def cpu_seconds(call: object) -> float:
        start = time.thread_time()
        try:
            call()  # type: ignore[operator]
        except (PasswordError, TypeError):
            pass
        return time.thread_time() - start

    def bad_calls(self) -> dict[str, object]:
        real = self.HASHER.hash("correct horse battery staple")
        return {
            "unknown format": lambda: self.HASHER.verify("whatever", "md5$abc$def"),
            "empty placeholder": lambda: self.HASHER.verify("whatever", ""),
            "malformed bcrypt": lambda: self.HASHER.verify("whatever", "$2b$12$short"),
            "password shaped like a hash": lambda: self.HASHER.verify(real, "garbage"),
            "no stored hash (None)": lambda: self.HASHER.verify("whatever", None),  # type: ignore[arg-type]
            "no password (None)": lambda: self.HASHER.verify(None, real),  # type: ignore[arg-type]
            "bytes password": lambda: self.HASHER.verify(b"whatever", "md5$x"),  # type: ignore[arg-type]
        }

    def test_every_early_failure_does_a_verifications_work(self) -> None:
        """Each way to fail before a real verify costs about one real argon2id verify in CPU time."""
        real = self.HASHER.hash("correct horse battery staple")
        reference = statistics.median(
            self.cpu_seconds(lambda: self.HASHER.verify("wrong password", real)) for _ in range(5)
        )
        assert reference > 0.002  # the reference itself did real work
        for name, call in self.bad_calls().items():
            spent = min(self.cpu_seconds(call) for _ in range(3))
            # Generous bounds: without the dummy work these calls take microseconds (ratio ~0.001).
            assert 0.3 * reference <= spent <= 10 * reference, (name, spent, reference)

    def test_one_error_type_whatever_the_password(self) -> None:
        """An unknown or malformed hash raises a PasswordError (never a mismatch) for any password argument."""
        real = self.HASHER.hash("correct horse battery staple")
        for password in ("whatever", real, "$2b$12$" + "a" * 53, "", "x" * 10_000):
            for stored in ("", "garbage", "md5$abc$def", "$argon2id$broken"):
                with pytest.raises(PasswordError) as info:
                    self.HASHER.verify(password, stored)
                assert not isinstance(info.value, PasswordMismatchError)
        with pytest.raises(PasswordError):
            self.HASHER.verify("whatever", None)  # type: ignore[arg-type]
