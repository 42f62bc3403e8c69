"""Password policy: minimum length, a zxcvbn strength score and a breach list, with feedback.

The seed policy asks for at least 9 characters and a zxcvbn score of at least 3. NIST SP 800-63B
rev. 4 asks for at least 15 characters when a password is the only factor, and 8 with a second
factor; both numbers are parameters here (``docs/passwords.md`` discusses the choice). NIST also
asks for a check against passwords known to be compromised: pass ``breached=`` a source from
:mod:`vaultkit.passwords.breached`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Literal

from vaultkit.errors import ConfigurationError, PasswordError
from vaultkit.passwords.breached import BreachedPasswords

__all__ = [
    "BREACHED_MESSAGE",
    "MAX_CONTEXT_WORDS",
    "MAX_L33T_CHARACTERS",
    "MAX_SCORED_LENGTH",
    "PasswordPolicy",
    "PolicyResult",
    "derived_user_inputs",
    "place_postcode_tokens",
]

_log = logging.getLogger("vaultkit.passwords")

#: What the user is told when a password is on the breach list (NIST SP 800-63B-4 asks that the
#: reason for a rejection be given).
BREACHED_MESSAGE: Final = (
    "This password has appeared in a data breach and is known to attackers. "
    "Choose a different one, and change it wherever else you use it."
)
_PLACE_SUGGESTION: Final = "Avoid a place name with its postal code."
#: Most organisation words a policy takes; each check hands them all to zxcvbn.
MAX_CONTEXT_WORDS: Final = 1000

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
        _load_postcodes(data / "postcodes.txt")
        _lists_loaded = True


# Place name -> its 4-digit postal codes: Belgian ones, then Dutch ones (where 2 letters may
# follow). Filled with the other lists.
_POSTCODES: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
_LONGEST_PLACE = 0


def _load_postcodes(path: Any) -> None:
    global _LONGEST_PLACE
    table: dict[str, tuple[set[str], set[str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        country, place, codes = line.split("\t")
        be, nl = table.setdefault(place, (set(), set()))
        (nl if country == "nl" else be).update(codes.split())
    _POSTCODES.update({k: (frozenset(b), frozenset(n)) for k, (b, n) in table.items()})
    _LONGEST_PLACE = max(map(len, _POSTCODES))


_CODE: Final = re.compile(r"(?<![0-9])[0-9]{4}")
_PLACE_SEPARATORS: Final = " -_./"
_TWO_LETTERS: Final = re.compile(r"[a-z]{2}")


def place_postcode_tokens(text: str) -> list[str]:
    """Belgian and Dutch places written with one of their own postal codes, as found in ``text``.

    ``leuven3000``, ``gent-9000``, ``utrecht3511ab`` and the address order ``3000 leuven``: a
    place from ``vaultkit/passwords/data/postcodes.txt`` next to one of its codes (4 digits; for a
    Dutch place optionally followed by its 2 letters), with at most one separator between. The
    tokens are returned lowercased, as they appear, for zxcvbn to match as dictionary words.
    Empty until a policy with ``extra_dictionaries`` has loaded the lists.
    """
    lowered = text.lower()
    found: dict[str, None] = {}
    longest = _LONGEST_PLACE
    for match in _CODE.finditer(lowered):
        start, end = match.span()
        code = match.group()
        letters = _TWO_LETTERS.match(lowered, end)
        # Place, then code: the name ends at the code or one separator before it.
        ends = [start]
        if start and lowered[start - 1] in _PLACE_SEPARATORS:
            ends.append(start - 1)
        for name_end in ends:
            for name_start in range(max(0, name_end - longest), name_end - 2):
                codes = _POSTCODES.get(lowered[name_start:name_end])
                if codes is None:
                    continue
                if code in codes[1] and letters:
                    found.setdefault(lowered[name_start : letters.end()], None)
                if code in codes[0] or code in codes[1]:
                    found.setdefault(lowered[name_start:end], None)
        # Code, then place (the order of an address): "3000 leuven", "3511ab utrecht".
        for code_end in (end, letters.end()) if letters else (end,):
            starts = [code_end]
            if code_end < len(lowered) and lowered[code_end] in _PLACE_SEPARATORS:
                starts.append(code_end + 1)
            for name_start in starts:
                for name_end in range(name_start + 3, min(len(lowered), name_start + longest) + 1):
                    codes = _POSTCODES.get(lowered[name_start:name_end])
                    if codes is None:
                        continue
                    if code_end == end and (code in codes[0] or code in codes[1]):
                        found.setdefault(lowered[start:name_end], None)
                    elif code_end != end and code in codes[1]:
                        found.setdefault(lowered[start:name_end], None)
    return list(found)


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
        reasons: ``too_short``, ``too_weak`` and/or ``breached`` when rejected.
        warning: :data:`BREACHED_MESSAGE` for a breached password, else zxcvbn's warning, if any.
        suggestions: zxcvbn's suggestions.
        breached: the password is on the configured breach list (at least ``min_breach_count``
            times); always ``False`` without one.

    .. versionchanged:: 0.2.0
       ``breached`` and :attr:`feedback`.
    """

    accepted: bool
    score: int
    length: int
    reasons: tuple[str, ...] = ()
    warning: str = ""
    suggestions: tuple[str, ...] = field(default=())
    breached: bool = False

    @property
    def verdict(self) -> str:
        """``"accept"`` or ``"reject"``."""
        return "accept" if self.accepted else "reject"

    @property
    def feedback(self) -> tuple[str, ...]:
        """The messages to show the user: the warning first, then the suggestions."""
        return ((self.warning,) if self.warning else ()) + self.suggestions


class PasswordPolicy:
    """Judges passwords: length, zxcvbn score, and optionally a breach list.

    Args:
        min_length: minimum length in code points after NFKC normalisation (9 in the seed
            policy; NIST SP 800-63B rev. 4 asks 15 for single-factor passwords).
        min_score: minimum zxcvbn score, 0 to 4.
        extra_dictionaries: add the Dutch and French words, names and places in
            ``vaultkit/passwords/data`` to zxcvbn's dictionaries (process-wide), and treat a
            Belgian or Dutch place written with its own postal code (``Leuven3000``) as a
            dictionary word (:func:`place_postcode_tokens`).
        context_words: the organisation's own words, penalised in every check like the user's
            own data: its name, products, sector words (``ziekenfonds``, ``mutualiteit``,
            ``zorgverzekeraar``). At most :data:`MAX_CONTEXT_WORDS`.
        breached: a breach list (:class:`~vaultkit.passwords.PwnedRangeDirectory`,
            :class:`~vaultkit.passwords.PwnedHashFile`,
            :class:`~vaultkit.passwords.PwnedRangeMirror`, or any
            :class:`~vaultkit.passwords.BreachedPasswords`). A password on it is rejected
            (reason ``breached``) whatever its score. Consulted only for passwords long enough.
        min_breach_count: how many breaches put a password on the list (default 1: any).
        on_unavailable: when the breach list cannot answer (mirror down, file missing):
            ``"fail"`` (default) raises :class:`~vaultkit.errors.PasswordError`, so that no
            password is accepted unchecked; ``"allow"`` logs a warning (without the password)
            and judges the password on length and score alone.

    ``check`` never raises for a string, except that a breach list that cannot answer raises
    with ``on_unavailable="fail"``: the empty string is too short, a 10 kB input gets a verdict,
    and the zxcvbn cost is bounded (:func:`scored_prefix`). It is safe to call from many threads.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       ``context_words``, ``breached``, ``min_breach_count``, ``on_unavailable``; places with
       their postal codes.
    """

    def __init__(
        self,
        *,
        min_length: int = 9,
        min_score: int = 3,
        extra_dictionaries: bool = True,
        context_words: Iterable[str] = (),
        breached: BreachedPasswords | None = None,
        min_breach_count: int = 1,
        on_unavailable: Literal["fail", "allow"] = "fail",
    ) -> None:
        if not isinstance(min_length, int) or min_length < 1:
            raise ConfigurationError("min_length must be a positive integer")
        if not isinstance(min_score, int) or not 0 <= min_score <= 4:
            raise ConfigurationError("min_score must be an integer from 0 to 4")
        if isinstance(context_words, str):
            raise ConfigurationError("context_words must be a list of words, not one string")
        words = list(context_words)
        if len(words) > MAX_CONTEXT_WORDS:
            raise ConfigurationError(f"context_words takes at most {MAX_CONTEXT_WORDS} words")
        if not all(isinstance(word, str) for word in words):
            raise ConfigurationError("context_words must be strings")
        if isinstance(breached, (str, bytes, os.PathLike, Collection)):
            # str, list and tuple have a count() method that would answer 0 for every password.
            raise ConfigurationError(
                "breached takes a breach list such as PwnedRangeDirectory(path), "
                "not a path or a collection"
            )
        if breached is not None and not isinstance(breached, BreachedPasswords):
            raise ConfigurationError("breached must have a count(sha1_hex) method")
        if not isinstance(min_breach_count, int) or min_breach_count < 1:
            raise ConfigurationError("min_breach_count must be a positive integer")
        if on_unavailable not in ("fail", "allow"):
            raise ConfigurationError("on_unavailable must be 'fail' or 'allow'")
        self.min_length = min_length
        self.min_score = min_score
        self.context_words: tuple[str, ...] = tuple(derived_user_inputs(words))
        self.breached = breached
        self.min_breach_count = min_breach_count
        self.on_unavailable = on_unavailable
        self._places = extra_dictionaries
        if extra_dictionaries:
            _load_dictionaries()

    def check(self, password: str, *, user_inputs: Iterable[Any] = ()) -> PolicyResult:
        """Judge ``password``, penalising the user's own data (e-mail, names, birth date, member no).

        Raises:
            TypeError: ``password`` is not a ``str``.
            PasswordError: the breach list cannot answer and ``on_unavailable`` is ``"fail"``.
        """
        if not isinstance(password, str):
            raise TypeError(f"password must be str, not {type(password).__name__}")
        normalized = unicodedata.normalize("NFKC", password)
        length = len(normalized)
        reasons = []
        if length < self.min_length:
            reasons.append("too_short")
        score, warning, suggestions = self._score(normalized, user_inputs)
        if score < self.min_score:
            reasons.append("too_weak")
        breached = False
        if self.breached is not None and length >= self.min_length:
            outcome = self._breach_lookup(_sha1_forms(password, normalized))
            if isinstance(outcome, PasswordError):
                # Error reporters that record frame locals (Sentry, Django's debug page) must
                # not find the password, or the user's data, in this frame.
                del password, normalized, user_inputs
                raise outcome
            breached = outcome
        if breached:
            reasons.append("breached")
            warning = BREACHED_MESSAGE
        return PolicyResult(
            accepted=not reasons,
            score=score,
            length=length,
            reasons=tuple(reasons),
            warning=warning,
            suggestions=suggestions,
            breached=breached,
        )

    def _score(
        self, normalized: str, user_inputs: Iterable[Any]
    ) -> tuple[int, str, tuple[str, ...]]:
        prefix = scored_prefix(normalized)
        if not prefix:
            return 0, "", ("Use a few words, avoid common phrases.",)
        from zxcvbn import zxcvbn

        places = place_postcode_tokens(prefix) if self._places else []
        inputs = list(
            dict.fromkeys([*derived_user_inputs(user_inputs), *self.context_words, *places])
        )
        with _ZXCVBN_LOCK:
            result = zxcvbn(prefix, user_inputs=inputs)
        feedback = result.get("feedback") or {}
        suggestions = tuple(str(s) for s in feedback.get("suggestions") or ())
        if places and _PLACE_SUGGESTION not in suggestions:
            suggestions = (_PLACE_SUGGESTION, *suggestions)
        return int(result["score"]), str(feedback.get("warning") or ""), suggestions

    def _breach_lookup(self, digests: list[str]) -> bool | PasswordError:
        # Returns the verdict, or the error to raise: a fresh one, whose traceback does not
        # reach the frames that held the digests.
        source = self.breached
        if source is None:
            return False
        try:
            return any(source.count(digest) >= self.min_breach_count for digest in digests)
        except PasswordError as exc:
            message = str(exc)
        except Exception as exc:  # a third-party source: its error may quote its input
            message = f"the breach list failed ({type(exc).__name__})"
        if self.on_unavailable == "allow":
            _log.warning("breached-password check skipped (on_unavailable='allow'): %s", message)
            return False
        return PasswordError(message)

    def __repr__(self) -> str:
        extra = ""
        if self.context_words:
            extra += f", context_words=<{len(self.context_words)} forms>"
        if self.breached is not None:
            extra += (
                f", breached={self.breached!r}, min_breach_count={self.min_breach_count}, "
                f"on_unavailable={self.on_unavailable!r}"
            )
        return f"PasswordPolicy(min_length={self.min_length}, min_score={self.min_score}{extra})"


def _sha1_forms(password: str, normalized: str) -> list[str]:
    # The form hash() stores (NFKC) and, when it differs, the password as typed: the breach
    # corpus holds passwords as people typed them elsewhere. Lone surrogates cannot be in a
    # corpus of UTF-8 text, but are hashed (surrogatepass) rather than refused.
    forms = [normalized] if normalized == password else [normalized, password]
    return [
        hashlib.sha1(form.encode("utf-8", "surrogatepass"), usedforsecurity=False)
        .hexdigest()
        .upper()
        for form in forms
    ]
