"""The export spec is an allow-list: unknown keys, transforms and columns are errors naming them."""

from __future__ import annotations

import datetime as dt
import hashlib

import pyarrow as pa
import pytest

from vaultkit import Vault
from vaultkit.errors import ConfigurationError, EncodingError
from vaultkit.research import DEFAULT_K, ColumnSpec, parse_spec
from vaultkit.research._transforms import transform
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

BASE = """
[export]
project = "p1"
recipient = "r1"
source = "members"
member = "id"
quasi_identifiers = ["sex"]

[columns.pid]
source = "id"
transform = "pseudonym"

[columns.sex]
transform = "keep"
"""


def with_column(text: str) -> str:
    return BASE + text


class TestSpec:
    def test_a_minimal_spec_parses_with_documented_defaults(self) -> None:
        """k defaults to DEFAULT_K, refuse to small classes, the research domain; digest = sha256."""
        spec = parse_spec(BASE)
        assert (spec.k, spec.on_small_class, spec.domain) == (DEFAULT_K, "refuse", "research")
        assert spec.digest == hashlib.sha256(BASE.encode()).hexdigest()
        assert [c.name for c in spec.output] == ["pid", "sex"]
        assert spec.source_columns() == ("id", "sex")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (BASE.replace("member =", "membr ="), r"\[export\]: unknown key\(s\) membr"),
            (
                with_column('[columns.x]\ntransform = "keep"\nsalt = "s"\n'),
                r"\[columns.x\]: unknown key\(s\) salt",
            ),
            (with_column('[columns.x]\ntransform = "hash"\n'), "unknown transform 'hash'"),
            (with_column('[columns.x]\ntransform = "ff3"\n'), "FF3 is withdrawn"),
            (with_column('[columns.x]\ntransform = "FF3-1"\n'), "FF3-1 is withdrawn"),
            (with_column('[columns.x]\ntransform = "generalise"\n'), "needs method"),
            (
                with_column('[columns.x]\ntransform = "generalise"\nmethod = "year"\ndigits = 2\n'),
                "generalise year takes no digits",
            ),
            (
                with_column('[columns.x]\ntransform = "date_shift"\nmax_days = 0\n'),
                "max_days must be an integer from 1",
            ),
            (
                BASE.replace('["sex"]', '["sex", "zip"]'),
                "quasi_identifiers name no output column: zip",
            ),
            (BASE.replace('["sex"]', '["pid"]'), "quasi-identifier pid is a pseudonym"),
            (BASE + "[other]\n", r"unknown table\(s\) other"),
            (
                BASE.replace('source = "members"', 'source = "members; drop"'),
                "must be a table name",
            ),
            (BASE.replace("[export]", '[export]\nquery = "select 1"'), "exactly one of"),
            (
                BASE.replace('source = "members"', 'query = "delete from members"'),
                "must be a SELECT",
            ),
            (BASE.replace('project = "p1"', 'project = "a/b"'), "project is required"),
            (BASE + "x = 1\n", r"\[columns.sex\]: unknown key\(s\) x"),
            (BASE.replace("[export]", '[export]\nlink_with = ["a", "b"]'), "at most one project"),
            (BASE.replace("[export]", '[export]\nlink_with = ["p1"]'), "cannot link_with itself"),
            (BASE.replace("[export]", "[export]\nk = 0"), "k must be an integer"),
            (BASE.replace("[export]", '[export]\non_small_class = "ignore"'), "on_small_class"),
            ("not = [toml", "not valid TOML"),
        ],
    )
    def test_errors_name_what_is_wrong(self, text: str, message: str) -> None:
        """Each mistake is a ConfigurationError whose message names the key, column or transform."""
        with pytest.raises(ConfigurationError, match=message):
            parse_spec(text)

    def test_a_decrypt_table_is_checked(self) -> None:
        """decrypt takes domain, table and column, and nothing else."""
        ok = parse_spec(
            with_column(
                '[columns.e]\nsource = "email_ct"\ntransform = "pseudonym"\n'
                'decrypt = { domain = "identity", table = "members", column = "email" }\n'
            )
        )
        assert ok.columns[-1].decrypt == ("identity", "members", "email")
        with pytest.raises(ConfigurationError, match=r"decrypt: unknown key\(s\) key"):
            parse_spec(
                with_column(
                    '[columns.e]\ntransform = "keep"\n'
                    'decrypt = { domain = "i", table = "m", column = "e", key = "k" }\n'
                )
            )


@pytest.fixture
def key() -> object:
    with Vault(
        provider=InMemoryKeyProvider(["research"]), store=MemoryKeyStore(), domains=["research"]
    ) as vault:
        yield vault.dataset_key("research", "dataset:t/r@v1")


def col(transform_: str, **kw: object) -> ColumnSpec:
    return ColumnSpec(name="c", source="c", transform=transform_, **kw)  # type: ignore[arg-type]


class TestTransforms:
    def test_generalise_postal_keeps_leading_digits(self) -> None:
        """Postal codes keep their first digits (spaces removed, letters upper-cased); nulls stay."""
        out = transform(
            col("generalise", method="postal", digits=2),
            pa.array(["1000", "2600 ab", None]),
            key=None,
            members=pa.array([1, 2, 3]),
            today=dt.date(2026, 1, 1),
        )
        assert out.to_pylist() == ["10", "26", None]

    def test_generalise_age_band_counts_birthdays(self) -> None:
        """Age bands count whole years at the reference date (a birthday tomorrow is not yet)."""
        out = transform(
            col("generalise", method="age_band", years=5, at=dt.date(2026, 6, 15)),
            pa.array([dt.date(1981, 6, 15), dt.date(1981, 6, 16), dt.date(2000, 1, 1), None]),
            key=None,
            members=pa.array([1, 2, 3, 4]),
            today=dt.date(2026, 1, 1),
        )
        assert out.to_pylist() == ["45-49", "40-44", "25-29", None]

    def test_generalise_year(self) -> None:
        """Birth dates (or ISO text) become their year."""
        out = transform(
            col("generalise", method="year"),
            pa.array(["1981-06-15", None]),
            key=None,
            members=pa.array([1, 2]),
            today=dt.date(2026, 1, 1),
        )
        assert out.to_pylist() == [1981, None]

    def test_a_date_shift_of_an_unknown_member_is_null(self, key: object) -> None:
        """A row without a member id cannot be shifted consistently: its date becomes null."""
        out = transform(
            col("date_shift", max_days=10),
            pa.array([dt.date(2026, 1, 1), dt.date(2026, 1, 1)]),
            key=key,  # type: ignore[arg-type]
            members=pa.array([1, None]),
            today=dt.date(2026, 1, 1),
        )
        first, second = out.to_pylist()
        assert second is None and abs((first - dt.date(2026, 1, 1)).days) <= 10

    def test_ff1_refuses_domains_below_a_million(self, key: object) -> None:
        """ff1 on fewer than 6 decimal digits (a domain below 10^6) is refused, naming the column."""
        with pytest.raises(EncodingError, match="domain is below 1,000,000"):
            transform(
                col("ff1"),
                pa.array(["12345"]),
                key=key,
                members=pa.array([1]),
                today=dt.date.today(),  # type: ignore[arg-type]
            )
        with pytest.raises(EncodingError, match="decimal digits only"):
            transform(
                col("ff1"),
                pa.array(["12a456"]),
                key=key,
                members=pa.array([1]),
                today=dt.date.today(),  # type: ignore[arg-type]
            )

    def test_ff1_preserves_the_format_and_is_keyed(self, key: object) -> None:
        """ff1 maps digits to as many digits, deterministically under one dataset key."""
        values = pa.array(["123456789", "123456789", "000000001", None])
        out = transform(
            col("ff1"), values, key=key, members=pa.array([1, 2, 3, 4]), today=dt.date.today()
        ).to_pylist()  # type: ignore[arg-type]
        assert out[0] == out[1] != "123456789" and len(out[0]) == 9 and out[0].isdigit()
        assert out[2] != out[0] and out[3] is None

    def test_libffx_passes_the_nist_ff1_sample(self) -> None:
        """The FF1 implementation used gives NIST SP 800-38G's FF1 sample 1 and 3 results."""
        from ffx import FF1

        k128 = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
        assert FF1(k128, radix=10, allow_small_domain=True).encrypt("0123456789") == "2433477484"
        tweak = bytes.fromhex("3737373770717273373737")
        alpha = FF1(k128, radix=36)
        assert alpha.encrypt("0123456789abcdefghi", tweak=tweak) == "a9tv40mll9kdu509eum"


def test_batch_pseudonyms_equal_the_scalar_ones(key: object) -> None:
    """The batch base32 (numpy) gives what pseudonym() and RFC 4648 give, nulls kept."""
    import base64

    from vaultkit.research import pseudonym
    from vaultkit.research._transforms import pseudonyms

    values = [1, "1", None, "jan", b"\x00\xff", 10**20, None, "é"]
    batch = pseudonyms(key, values).to_pylist()  # type: ignore[arg-type]
    assert batch == [None if v is None else pseudonym(key, v) for v in values]  # type: ignore[arg-type]
    digest = key.digest(b"vaultkit research pseudonym v1\x00jan")[:16]  # type: ignore[attr-defined]
    assert batch[3] == base64.b32encode(digest).decode().rstrip("=")
    assert pseudonyms(key, [None, None]).to_pylist() == [None, None]  # type: ignore[arg-type]
    assert pseudonyms(key, []).to_pylist() == []  # type: ignore[arg-type]
