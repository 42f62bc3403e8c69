"""Build the Dutch and French word lists that PasswordPolicy adds to zxcvbn's dictionaries.

Run from the repository root with the build-only tools installed:
``pip install wordfreq==3.1.1 faker==40.54.0 && python vaultkit/passwords/data/build_wordlists.py``.
Not imported by vaultkit. Each output file holds one lowercase entry per line, most frequent first
(zxcvbn ranks a word by its position), and README.md beside this script names the sources and
their licences. Rebuilding with the same versions gives the same files.
"""

from __future__ import annotations

import importlib
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import wordfreq

HERE = Path(__file__).parent
WORDS_PER_LANGUAGE = 20_000


def clean(entries: Iterable[str], *, min_length: int = 3) -> list[str]:
    seen: dict[str, None] = {}
    for entry in entries:
        word = unicodedata.normalize("NFKC", entry).strip().lower()
        if len(word) >= min_length and word.replace(" ", "").replace("-", "").isalpha():
            for variant in (word, word.replace(" ", ""), word.replace("-", "")):
                seen.setdefault(variant, None)
    return list(seen)


def faker_values(module: str, attribute: str) -> list[str]:
    values = getattr(importlib.import_module(module).Provider, attribute)
    return list(values.keys() if isinstance(values, dict) else values)


def main() -> None:
    lists = {
        "nl_words.txt": clean(wordfreq.top_n_list("nl", WORDS_PER_LANGUAGE)),
        "fr_words.txt": clean(wordfreq.top_n_list("fr", WORDS_PER_LANGUAGE)),
        "first_names.txt": clean(
            name
            for loc in ("nl_BE", "nl_NL", "fr_FR", "fr_BE")
            for name in faker_values(f"faker.providers.person.{loc}", "first_names")
        ),
        "surnames.txt": clean(
            name
            for loc in ("nl_BE", "nl_NL", "fr_FR", "fr_BE")
            for name in faker_values(f"faker.providers.person.{loc}", "last_names")
        ),
        "places.txt": clean(
            place
            for loc in ("nl_BE", "nl_NL")
            for place in faker_values(f"faker.providers.address.{loc}", "cities")
        ),
    }
    for name, entries in lists.items():
        (HERE / name).write_text("\n".join(entries) + "\n", encoding="utf-8")
        print(f"{name}: {len(entries)} entries")


if __name__ == "__main__":
    main()
