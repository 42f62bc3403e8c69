"""A synthetic Belgian and Dutch member population for the search indexes' figures (deterministic).

Nothing here is real data. The shape follows what the planner's rules care about:

* postal codes: about 1,100 Belgian four-digit codes (1000-9999, the ones in use are sparse) and
  about 4,000 Dutch PC4 areas (1000-9999 with two letters after them, ``"1012 AB"``); members spread
  over them unevenly (a city code holds many times a village's members);
* birth dates: every day from 1930 to 2009, more members in the middle decades;
* surnames: a Zipf law over a vocabulary of common Flemish and Dutch names, names with particles
  (``van der Berg``, ``De Smet``, ``ter Horst``) in assorted capitalisations, hyphenated double names
  (``Smith-Jones``, ``Peeters-Maes``) and invented names made of Dutch syllables for the long tail.

``population(n, seed=...)`` returns the same members for the same arguments on every machine.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["COMMON_SURNAMES", "PARTICLES", "Member", "population", "surname_vocabulary"]

#: The most common surnames of Flanders and the Netherlands (public statistics' top lists), most
#: common first; the Zipf law gives rank 1 its largest share.
COMMON_SURNAMES: tuple[str, ...] = (
    "Peeters",
    "Janssens",
    "de Jong",
    "Jansen",
    "Maes",
    "de Vries",
    "Jacobs",
    "van den Berg",
    "Mertens",
    "van Dijk",
    "Willems",
    "Bakker",
    "Claes",
    "Janssen",
    "Goossens",
    "Visser",
    "Wouters",
    "Smit",
    "De Smet",
    "Meijer",
    "Dubois",
    "de Boer",
    "Lambert",
    "Mulder",
    "Dupont",
    "de Groot",
    "Martens",
    "Bos",
    "Vermeulen",
    "Vos",
    "Peters",
    "Hendriks",
    "Van de Velde",
    "van Leeuwen",
    "Dekker",
    "Hermans",
    "Brouwer",
    "De Clercq",
    "de Wit",
    "Dijkstra",
    "Smits",
    "de Graaf",
    "van der Meer",
    "Van Damme",
    "van der Linden",
    "Kok",
    "Leclercq",
    "Jacobs",
    "de Haan",
    "Verstraete",
    "van den Heuvel",
    "Van den Broeck",
    "van der Veen",
    "De Backer",
    "van den Broek",
    "Stevens",
    "de Bruijn",
    "Michiels",
    "van der Heijden",
    "Desmet",
    "Schouten",
    "Pauwels",
    "van Beek",
    "De Wilde",
    "Willems",
    "Van Acker",
    "van Vliet",
    "D'Hondt",
    "van de Ven",
    "Hoekstra",
    "Maas",
    "Verhoeven",
    "Koster",
    "van Dam",
    "Segers",
    "van der Wal",
    "Prins",
    "Blom",
    "Huisman",
    "ter Horst",
    "Van der Berg",
    "Coppens",
)

#: Particles that start Dutch and Flemish surnames (the first letter's case varies by country).
PARTICLES: tuple[str, ...] = (
    "van", "van der", "van den", "van de", "de", "den", "ter", "ten", "te", "van 't", "in 't",
    "de la", "le", "d'",
)  # fmt: skip

_ONSETS = ("b", "br", "d", "dr", "g", "gr", "h", "j", "k", "kl", "l", "m", "n", "p", "r", "s",
           "sch", "sl", "sm", "st", "t", "v", "w", "z", "zw")  # fmt: skip
_VOWELS = ("a", "aa", "e", "ee", "i", "ie", "o", "oo", "oe", "u", "ui", "ij", "ou", "eu")
_CODAS = ("", "k", "l", "m", "n", "r", "s", "t", "rt", "nk", "ns", "rs", "ck", "ld")
_ENDINGS = ("", "s", "en", "er", "ens", "man", "mans", "ink", "inga", "stra", "huis", "kamp",
            "berg", "dijk", "veld", "hof", "broek", "meer", "bosch", "x", "aert", "ckx")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Member:
    """One invented member: the three fields the search indexes read, and a country."""

    country: str
    postal_code: str
    birth_date: dt.date
    last_name: str


def _invented(rng: random.Random) -> str:
    syllables = rng.choice((1, 2, 2, 3))
    stem = "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
    )
    name = (stem + rng.choice(_ENDINGS)).capitalize()
    roll = rng.random()
    if roll < 0.25:
        particle = rng.choice(PARTICLES)
        if rng.random() < 0.4:  # Flemish (and Dutch after a first name-less mention) capitalise
            particle = particle[0].upper() + particle[1:]
        return f"{particle} {name}" if not particle.endswith("'") else f"{particle}{name}"
    return name


def surname_vocabulary(size: int, *, seed: int = 19) -> list[str]:
    """``size`` distinct surnames, most common first: the common ones, then invented ones, with
    about 4% hyphenated double names among the invented."""
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    for name in COMMON_SURNAMES:
        if name not in seen:
            seen.add(name)
            names.append(name)
    while len(names) < size:
        name = _invented(rng)
        if rng.random() < 0.04:
            name = f"{name}-{_invented(rng)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names[:size]


def _zipf_weights(size: int, exponent: float) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, size + 1)]


def _postal_codes(rng: random.Random) -> tuple[list[tuple[str, str]], list[float]]:
    belgian = sorted(rng.sample(range(1000, 10000), 1100))
    dutch = sorted(rng.sample(range(1000, 10000), 4000))
    codes = [("BE", str(code)) for code in belgian]
    letters = "ABCDEFGHJKLMNPRSTVWXZ"
    codes += [("NL", f"{code} {rng.choice(letters)}{rng.choice(letters)}") for code in dutch]
    # Lognormal sizes: a few city codes hold many members, most codes few.
    weights = [rng.lognormvariate(0.0, 1.0) for _ in codes]
    return codes, weights


def population(
    size: int, *, seed: int = 2026, surnames: int = 20_000, zipf: float = 0.7
) -> list[Member]:
    """``size`` invented members, the same ones for the same arguments.

    Args:
        size: members to make.
        seed: the random generator's seed.
        surnames: distinct surnames in the vocabulary (the Zipf law's support).
        zipf: the Zipf exponent of the surnames (share of rank r proportional to r^-zipf; 0.7
            gives the most common name about 1.6% of the members).
    """
    rng = random.Random(seed)
    codes, code_weights = _postal_codes(rng)
    names = surname_vocabulary(surnames, seed=seed)
    name_weights = list(itertools.accumulate(_zipf_weights(len(names), zipf)))
    code_cumulative = list(itertools.accumulate(code_weights))
    first = dt.date(1930, 1, 1).toordinal()
    span = dt.date(2009, 12, 31).toordinal() - first
    members: list[Member] = []
    for _ in range(size):
        country, code = rng.choices(codes, cum_weights=code_cumulative)[0]
        # A triangular law: more members born around 1970 than in 1930 or 2009.
        day = first + round(rng.triangular(0, span, span * 0.5))
        last_name = rng.choices(names, cum_weights=name_weights)[0]
        members.append(Member(country, code, dt.date.fromordinal(day), last_name))
    return members


def iter_chunks(members: list[Member], size: int) -> Iterator[list[Member]]:
    """``members`` in lists of at most ``size`` (for batched inserts)."""
    for start in range(0, len(members), size):
        yield members[start : start + size]
