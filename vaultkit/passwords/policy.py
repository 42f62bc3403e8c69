"""Password policy: minimum length and a zxcvbn strength score, with feedback for the user.

The seed policy asks for at least 9 characters and a zxcvbn score of at least 3. NIST SP 800-63B
rev. 4 asks for at least 15 characters when a password is the only factor, and 8 with a second
factor; both numbers are parameters here (``docs/passwords.md`` discusses the choice).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from vaultkit.errors import ConfigurationError

__all__ = [
    "MAX_L33T_CHARACTERS",
    "MAX_SCORED_LENGTH",
    "PasswordPolicy",
    "PolicyResult",
    "derived_user_inputs",
]

#: zxcvbn 4.5.0's l33t matching enumerates substitutions combinatorially: 24 characters from its
#: l33t table cost about 0.3 s, 72 about 3 s. The score is therefore computed on the longest
#: prefix with at most this many such characters and at most MAX_SCORED_LENGTH characters. A
#: prefix's score can only under-state the whole password's strength, never over-state it.
MAX_L33T_CHARACTERS: Final = 6
MAX_SCORED_LENGTH: Final = 64
_LISTS: Final = ("nl_words", "fr_words", "first_names", "surnames", "places")

# zxcvbn keeps the user inputs of the current call in a module-global dictionary, so two threads
# checking different users' passwords would see each other's inputs. Every call holds this lock.
_ZXCVBN_LOCK: Final = threading.Lock()
_lists_loaded = False


def _load_dictionaries() -> None:
    global _lists_loaded
    with _ZXCVBN_LOCK:
        if _lists_loaded:
            return
        from zxcvbn import matching

        data = resources.files("vaultkit.passwords") / "data"
        lists = {
            f"vaultkit_{name}": (data / f"{name}.txt").read_text(encoding="utf-8").split()
            for name in _LISTS
        }
        matching.add_frequency_lists(lists)
        _lists_loaded = True


def _l33t_characters() -> frozenset[str]:
    from zxcvbn.matching import L33T_TABLE

    return frozenset(ch for subs in L33T_TABLE.values() for ch in subs)


def scored_prefix(password: str) -> str:
    """The part of ``password`` that zxcvbn scores (see :data:`MAX_L33T_CHARACTERS`)."""
    l33t = _L33T
    count = 0
    for index, ch in enumerate(password):
        if index >= MAX_SCORED_LENGTH:
            return password[:index]
        if ch in l33t:
            count += 1
            if count > MAX_L33T_CHARACTERS:
                return password[:index]
    return password


_L33T: Final = _l33t_characters()
_SEPARATORS: Final = re.compile(r"[\s._+\-@]+")


def derived_user_inputs(inputs: Iterable[Any]) -> list[str]:
    """The user's own data and the forms a password may take them in, lower-cased.

    E-mail addresses give the address, its local part with and without separators, its parts and
    the domain name; dates give the year, ``DDMMYYYY``, ``YYYYMMDD``, ``DDMM``, ``DDMMYY`` and the
    ISO form; names and numbers give themselves and their parts.
    """
    out: dict[str, None] = {}

    def add(text: str) -> None:
        if len(text) >= 2:
            out.setdefault(text.lower(), None)

    for item in inputs:
        if item is None:
            continue
        if isinstance(item, dt.date):
            for fmt in ("%Y", "%d%m%Y", "%Y%m%d", "%d%m", "%d%m%y", "%Y-%m-%d", "%d-%m-%Y"):
                add(item.strftime(fmt))
            continue
        text = unicodedata.normalize("NFKC", str(item)).strip().lower()
        add(text)
        local, at, domain = text.partition("@")
        if at:
            add(local)
            add(_SEPARATORS.sub("", local))
            add(domain.split(".")[0])
        for part in _SEPARATORS.split(local if at else text):
            add(part)
        add(_SEPARATORS.sub("", text))
    return list(out)


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """The verdict on one password; it never holds the password.

    Attributes:
        accepted: whether the password meets the policy.
        score: zxcvbn's score, 0 to 4 (0 for an empty password).
        length: length in code points after NFKC normalisation.
        reasons: ``too_short`` and/or ``too_weak`` when rejected.
        warning: zxcvbn's warning, if any.
        suggestions: zxcvbn's suggestions.
    """

    accepted: bool
    score: int
    length: int
    reasons: tuple[str, ...] = ()
    warning: str = ""
    suggestions: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> str:
        """``"accept"`` or ``"reject"``."""
        return "accept" if self.accepted else "reject"


class PasswordPolicy:
    """Judges passwords: at least ``min_length`` characters and a zxcvbn score of ``min_score``.

    Args:
        min_length: minimum length in code points after NFKC normalisation (9 in the seed
            policy; NIST SP 800-63B rev. 4 asks 15 for single-factor passwords).
        min_score: minimum zxcvbn score, 0 to 4.
        extra_dictionaries: add the Dutch and French words, names and places in
            ``vaultkit/passwords/data`` to zxcvbn's dictionaries (process-wide).

    ``check`` never raises for a string: the empty string is too short, a 10 kB input gets a
    verdict, and the cost is bounded (:func:`scored_prefix`). It is safe to call from many threads.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, *, min_length: int = 9, min_score: int = 3, extra_dictionaries: bool = True
    ) -> None:
        if not isinstance(min_length, int) or min_length < 1:
            raise ConfigurationError("min_length must be a positive integer")
        if not isinstance(min_score, int) or not 0 <= min_score <= 4:
            raise ConfigurationError("min_score must be an integer from 0 to 4")
        self.min_length = min_length
        self.min_score = min_score
        if extra_dictionaries:
            _load_dictionaries()

    def check(self, password: str, *, user_inputs: Iterable[Any] = ()) -> PolicyResult:
        """Judge ``password``, penalising the user's own data (e-mail, names, birth date, member no).

        Raises:
            TypeError: ``password`` is not a ``str``.
        """
        if not isinstance(password, str):
            raise TypeError(f"password must be str, not {type(password).__name__}")
        normalized = unicodedata.normalize("NFKC", password)
        length = len(normalized)
        reasons = []
        if length < self.min_length:
            reasons.append("too_short")
        prefix = scored_prefix(normalized)
        if prefix:
            from zxcvbn import zxcvbn

            inputs = derived_user_inputs(user_inputs)
            with _ZXCVBN_LOCK:
                result = zxcvbn(prefix, user_inputs=inputs)
            score = int(result["score"])
            feedback = result.get("feedback") or {}
            warning = str(feedback.get("warning") or "")
            suggestions = tuple(str(s) for s in feedback.get("suggestions") or ())
        else:
            score, warning, suggestions = 0, "", ("Use a few words, avoid common phrases.",)
        if score < self.min_score:
            reasons.append("too_weak")
        return PolicyResult(
            accepted=not reasons,
            score=score,
            length=length,
            reasons=tuple(reasons),
            warning=warning,
            suggestions=suggestions,
        )

    def __repr__(self) -> str:
        return f"PasswordPolicy(min_length={self.min_length}, min_score={self.min_score})"
