"""Tests for vaultkit.audiences: published vectors, normalisers, rendering and reasons."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultkit.audiences import (
    COLUMNS,
    AudienceReport,
    MemberRecord,
    Reason,
    hash_identifier,
    hash_records,
    render,
)
from vaultkit.audiences import normalize as n
from vaultkit.errors import AudienceError, ConfigurationError

VECTORS = json.loads(
    (Path(__file__).parents[2] / "vectors" / "audiences_published.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("v", VECTORS["hashes"], ids=[v["normalized"] for v in VECTORS["hashes"]])
def test_published_hashes_reproduce(v: dict[str, str]) -> None:
    """Each platform-published hash is the SHA-256 hex of its normalised input."""
    assert hash_identifier(v["normalized"]) == v["sha256"]


FORMATTERS: dict[str, Any] = {
    "google_email": lambda s: n.normalize_email(s, gmail_rule="2026-08"),
    "phone": lambda s: n.normalize_phone_e164(s, default_region=None),
    "phone_us": lambda s: n.normalize_phone_e164(s, default_region="US"),
    "meta_phone_be": lambda s: n.normalize_phone_e164(s, default_region="BE").lstrip("+"),
    "meta_name": n.normalize_name_meta,
    "google_name": n.normalize_name_google,
}


@pytest.mark.parametrize("v", VECTORS["formats"], ids=[v["input"] for v in VECTORS["formats"]])
def test_published_format_examples(v: dict[str, str]) -> None:
    """Each published format example normalises exactly as documented."""
    assert FORMATTERS[v["kind"]](v["input"]) == v["normalized"]


class TestEmail:
    @pytest.mark.parametrize(
        ("raw", "rule", "expected"),
        [
            (" Dana@Example.com ", None, "dana@example.com"),
            ("a.b+promo@gmail.com", "2026-08", "ab@gmail.com"),
            ("a.b+promo@GoogleMail.com", "2026-08", "ab@googlemail.com"),
            ("a.b+promo@gmail.com", "2025-legacy", "ab+promo@gmail.com"),
            ("a.b+promo@example.be", "2026-08", "a.b+promo@example.be"),
            ("a.b+promo@gmail.com", None, "a.b+promo@gmail.com"),
            ("Jan Peeters@Example.BE", None, "janpeeters@example.be"),
        ],
    )
    def test_rules(self, raw: str, rule: str | None, expected: str) -> None:
        """Whitespace goes, case folds with lower(), and the Gmail rule applies only to Gmail."""
        assert n.normalize_email(raw, gmail_rule=rule) == expected

    @pytest.mark.parametrize(
        "raw", ["", "plain", "a@b", "a@@b.be", "@x.be", "a@.be", "a@b@c.be", "+@gmail.com"]
    )
    def test_invalid(self, raw: str) -> None:
        """Addresses without exactly one @ and a dotted domain are refused with email_invalid."""
        with pytest.raises(AudienceError, match="email_invalid"):
            n.normalize_email(raw, gmail_rule="2026-08")


class TestOtherIdentifiers:
    def test_phone_national_needs_region(self) -> None:
        """A national number without a default region is refused, never guessed."""
        with pytest.raises(AudienceError, match="phone_no_region"):
            n.normalize_phone_e164("0470 12 34 56", default_region=None)
        assert n.normalize_phone_e164("0470 12 34 56", default_region="BE") == "+32470123456"

    @pytest.mark.parametrize("raw", ["12345", "+32 12", "not a number", "+999 123456789"])
    def test_phone_invalid(self, raw: str) -> None:
        """A number that is not valid for its region is refused."""
        with pytest.raises(AudienceError, match="phone_invalid"):
            n.normalize_phone_e164(raw, default_region="BE")

    def test_names(self) -> None:
        """Google keeps spaces and punctuation; Meta removes them; both keep accents and use NFC."""
        assert n.normalize_name_google("  Van der Berg-Smit ") == "van der berg-smit"
        assert n.normalize_name_meta("Van der Berg-Smit") == "vanderbergsmit"
        decomposed = "Vale\u0301ry"
        assert n.normalize_name_meta(decomposed) == "valéry" == n.normalize_name_google(decomposed)
        with pytest.raises(AudienceError, match="name_invalid"):
            n.normalize_name_meta("--- .")

    def test_country(self) -> None:
        """Alpha-2 codes are accepted in any case; names and unknown codes are refused."""
        assert n.normalize_country(" be ") == "BE"
        for bad in ("Netherlands", "XX", "BEL", ""):
            with pytest.raises(AudienceError, match="country_invalid"):
                n.normalize_country(bad)

    @pytest.mark.parametrize(
        "raw", ["2023-02-30", "30/01/1990", "1899-12-31", "2999-01-01", "19900101"]
    )
    def test_impossible_dates(self, raw: str) -> None:
        """Impossible, ambiguous, too old and future dates are refused."""
        with pytest.raises(AudienceError, match="date_invalid"):
            n.normalize_date_of_birth(raw)

    def test_gender(self) -> None:
        """Gender maps to f or m, in English, Dutch and French; anything else is refused."""
        assert [
            n.normalize_gender(g) for g in ("F", "vrouw", "Femme", "M", "man", "homme")
        ] == list("fffmmm")
        with pytest.raises(AudienceError, match="gender_invalid"):
            n.normalize_gender("x")

    def test_postal_code_meta(self) -> None:
        """Meta postal codes lose spaces and dashes; US codes keep 5 digits."""
        assert n.normalize_postal_code_meta("1234 AB", country="NL") == "1234ab"
        assert n.normalize_postal_code_meta("94025-1234", country="US") == "94025"


class TestRender:
    def test_google_row(self) -> None:
        """Google hashes e-mail, phone and names; country and postal code go in the clear."""
        r = render(
            MemberRecord(
                email="Dana@Example.com",
                phone="(800)555-0100",
                first_name="Dana",
                last_name="M",
                country="us",
                postal_code=" 94025 ",
            ),
            platform="google",
            default_region="US",
        )
        assert r.accepted and r.reasons == ()
        assert r.values == (
            "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3",
            "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30",
            hashlib.sha256(b"dana").hexdigest(),
            hashlib.sha256(b"m").hexdigest(),
            "US",
            "94025",
        )
        assert len(COLUMNS["google"]) == len(r.values)  # type: ignore[index, arg-type]

    def test_google_incomplete_address_is_dropped(self) -> None:
        """Without all four address fields the name and address are dropped, with a reason."""
        r = render(MemberRecord(email="a@x.be", first_name="Jan", country="BE"), platform="google")
        assert r.values == (hash_identifier("a@x.be"), "", "", "", "", "")
        assert r.reasons == (Reason.ADDRESS_INCOMPLETE,)

    def test_meta_row_uses_published_hashes(self) -> None:
        """Meta output reproduces the parameters page's hashes and hashes the country."""
        r = render(
            MemberRecord(
                email="John_Smith@gmail.com",
                phone="+1 650-555-1212",
                first_name="Mary",
                last_name="Valéry",
                country="us",
                date_of_birth="1997-02-16",
                gender="F",
            ),
            platform="meta",
        )
        values = dict(zip(COLUMNS["meta"], r.values or (), strict=True))  # type: ignore[index]
        assert values["EMAIL"].startswith("62a14e44")
        assert values["PHONE"].startswith("e323ec62")
        assert values["FN"].startswith("6915771b") and values["LN"].startswith("08e1996b")
        assert values["COUNTRY"].startswith("79adb2a2")
        assert values["DOBY"] == hash_identifier("1997") and values["DOBD"] == hash_identifier("16")
        assert values["FI"] == hash_identifier("m") and values["GEN"] == hash_identifier("f")

    def test_already_hashed_values_pass_through(self) -> None:
        """A 64-hex value is lower-cased and passed through; a 32-hex (MD5) e-mail is refused."""
        digest = hash_identifier("a@x.be").upper()
        assert render(MemberRecord(email=digest), platform="meta").values[0] == digest.lower()  # type: ignore[index]
        r = render(MemberRecord(email="0" * 32, phone="+32470123456"), platform="meta")
        assert r.accepted and r.reasons == (Reason.MD5_REFUSED,) and r.values[0] == ""  # type: ignore[index]

    def test_invalid_values_are_dropped_not_half_hashed(self) -> None:
        """An invalid value is dropped with its reason; the rest of the row still goes."""
        r = render(
            MemberRecord(email="jan@x.be", phone="12345", gender="?"),
            platform="meta",
            default_region="BE",
        )
        assert r.accepted
        assert set(r.reasons) == {Reason.PHONE_INVALID, Reason.GENDER_INVALID}
        assert r.values[1] == "" and r.values[10] == ""  # type: ignore[index]

    def test_row_without_identifier_is_rejected(self) -> None:
        """A row with no usable identifier is rejected with no_identifier and its reasons."""
        r = render(MemberRecord(email="nope", gender="m"), platform="meta")
        assert not r.accepted and r.values is None
        assert r.reasons == (Reason.EMAIL_INVALID, Reason.NO_IDENTIFIER)

    def test_bad_configuration(self) -> None:
        """Unknown platforms, rule versions and regions are configuration errors."""
        with pytest.raises(ConfigurationError, match="platform"):
            render(MemberRecord(email="a@x.be"), platform="tiktok")
        with pytest.raises(ConfigurationError, match="rule versions"):
            render(MemberRecord(email="a@x.be"), platform="google", rules="1999")
        with pytest.raises(ConfigurationError, match="region"):
            render(MemberRecord(email="a@x.be"), platform="google", default_region="Belgium")

    def test_records_api_and_report(self) -> None:
        """hash_records takes mappings (DataFrame rows) and counts reasons."""
        report = AudienceReport()
        rows = [{"email": "a@x.be"}, {"email": "bad"}, {"email": "", "phone": "+32470123456"}]
        out = list(hash_records(rows, platform="google", report=report))
        assert [r.accepted for r in out] == [True, False, True]
        assert (report.rows, report.accepted, report.rejected) == (3, 2, 1)
        assert report.reasons == {"email_invalid": 1, "no_identifier": 1}

    def test_record_repr_shows_nothing(self) -> None:
        """A record's repr names no identifier."""
        assert "jan" not in repr(MemberRecord(email="jan@x.be", first_name="Jan")).lower()


emails = st.emails() | st.text(max_size=40)
names = st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(raw=emails, rule=st.sampled_from([None, "2026-08", "2025-legacy"]))
def test_email_normalisation_is_idempotent(raw: str, rule: str | None) -> None:
    """Normalising a normalised e-mail changes nothing."""
    try:
        once = n.normalize_email(raw, gmail_rule=rule)
    except AudienceError:
        return
    assert n.normalize_email(once, gmail_rule=rule) == once


@settings(max_examples=300, deadline=None)
@given(raw=names)
def test_name_normalisation_is_idempotent(raw: str) -> None:
    """Google and Meta name normalisation are idempotent."""
    for fn in (n.normalize_name_google, n.normalize_name_meta):
        try:
            once = fn(raw)
        except AudienceError:
            continue
        assert fn(once) == once


@settings(max_examples=200, deadline=None)
@given(
    digits=st.text("0123456789 -()+", min_size=6, max_size=16),
    region=st.sampled_from(["BE", "NL", "FR", "US"]),
)
def test_phone_normalisation_is_idempotent(digits: str, region: str) -> None:
    """An E.164 number normalises to itself."""
    try:
        once = n.normalize_phone_e164(digits, default_region=region)
    except AudienceError:
        return
    assert n.normalize_phone_e164(once, default_region=None) == once


@settings(max_examples=200, deadline=None)
@given(day=st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2020, 1, 1)))
def test_dates_round_trip(day: dt.date) -> None:
    """Dates and their ISO strings normalise to the same date."""
    assert n.normalize_date_of_birth(day.isoformat()) == n.normalize_date_of_birth(day) == day
