"""Retention policies: the ISO 8601 duration parser, calendar-correct deadlines, and the rules
that tie a KeyDomain's key scope, bucket width and retention together."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultkit import KeyDomain, Retention
from vaultkit.errors import DomainError
from vaultkit.keys.domains import parse_duration

UTC = dt.UTC
HOUR = dt.timedelta(hours=1)


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


class TestParse:
    @pytest.mark.parametrize(
        ("text", "parts"),
        [
            ("PT72H", (0, 0, 72 * 3600)),
            ("P7D", (0, 7, 0)),
            ("P28D", (0, 28, 0)),
            ("P4W", (0, 28, 0)),
            ("P5Y", (60, 0, 0)),
            ("P1Y6M", (18, 0, 0)),
            ("PT1H30M", (0, 0, 5400)),
            ("PT90S", (0, 0, 90)),
            ("P1Y2M3W4DT5H6M7S", (14, 25, 5 * 3600 + 6 * 60 + 7)),
            ("P0Y1D", (0, 1, 0)),
        ],
    )
    def test_known_answers(self, text: str, parts: tuple[int, int, int]) -> None:
        assert parse_duration(text) == parts

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "P",
            "PT",
            "5Y",
            "P1.5Y",
            "P1,5Y",
            "-P1D",
            "+P1D",
            "P1H",  # hours need the T
            "PT1D",
            "P1Y2Y",
            "P1M1Y",  # out of order
            "p1y",
            "P1D ",
            " P1D",
            "P1DT",
            "P\u0661D",  # an Arabic-Indic digit: ASCII digits only
            "P2024-01-01",
            "PT1H\n",
        ],
    )
    def test_refuses_what_is_not_a_duration(self, text: str) -> None:
        with pytest.raises(ValueError, match="ISO 8601"):
            parse_duration(text)

    def test_refuses_non_str(self) -> None:
        with pytest.raises(TypeError):
            parse_duration(72)  # type: ignore[arg-type]

    @given(
        y=st.integers(0, 99),
        mo=st.integers(0, 99),
        w=st.integers(0, 99),
        d=st.integers(0, 999),
        h=st.integers(0, 999),
        mi=st.integers(0, 999),
        s=st.integers(0, 9999),
    )
    def test_every_written_duration_parses_to_its_parts(
        self, y: int, mo: int, w: int, d: int, h: int, mi: int, s: int
    ) -> None:
        date = "".join(f"{n}{u}" for n, u in ((y, "Y"), (mo, "M"), (w, "W"), (d, "D")) if n)
        time = "".join(f"{n}{u}" for n, u in ((h, "H"), (mi, "M"), (s, "S")) if n)
        text = "P" + date + (f"T{time}" if time else "")
        if text == "P":
            with pytest.raises(ValueError):
                parse_duration(text)
            return
        assert parse_duration(text) == (12 * y + mo, 7 * w + d, 3600 * h + 60 * mi + s)


class TestDeadline:
    @pytest.mark.parametrize(
        ("duration", "start", "deadline"),
        [
            ("P5Y", at(2024, 2, 29), at(2029, 2, 28)),
            ("P4Y", at(2024, 2, 29), at(2028, 2, 29)),
            ("P1Y", at(2024, 2, 29, 13, 5), at(2025, 2, 28, 13, 5)),
            ("P1M", at(2024, 1, 31), at(2024, 2, 29)),
            ("P1M", at(2023, 1, 31), at(2023, 2, 28)),
            ("P1Y6M", at(2024, 8, 31), at(2026, 2, 28)),
            ("P12M", at(2024, 2, 29), at(2025, 2, 28)),
            ("PT72H", at(2024, 3, 30, 23), at(2024, 4, 2, 23)),
            ("P7D", at(2024, 12, 28, 6), at(2025, 1, 4, 6)),
            ("P28D", at(2024, 2, 1), at(2024, 2, 29)),
            ("P1M1D", at(2024, 1, 31), at(2024, 3, 1)),  # months first, then days
            ("P5Y", at(2025, 12, 31, 23, 59, 59), at(2030, 12, 31, 23, 59, 59)),
        ],
    )
    def test_known_answers(self, duration: str, start: dt.datetime, deadline: dt.datetime) -> None:
        assert Retention(duration).deadline(start) == deadline

    def test_a_start_in_another_zone_is_taken_in_utc(self) -> None:
        brussels = dt.timezone(dt.timedelta(hours=2))
        # 2024-03-31 01:30 at +02:00 is 2024-03-30 23:30 UTC: one month on is 2024-04-30 23:30.
        start = dt.datetime(2024, 3, 31, 1, 30, tzinfo=brussels)
        assert Retention("P1M").deadline(start) == at(2024, 4, 30, 23, 30)
        assert Retention("P1M").deadline(start).tzinfo is UTC

    def test_a_naive_start_is_refused(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            Retention("P1D").deadline(dt.datetime(2024, 1, 1))

    def test_out_of_range_is_an_error_not_a_wrap(self) -> None:
        with pytest.raises(OverflowError):
            Retention("P100Y").deadline(at(9950, 1, 1))

    @given(
        start=st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2999, 1, 1)),
        hours=st.integers(1, 10_000),
    )
    def test_time_durations_are_exact(self, start: dt.datetime, hours: int) -> None:
        start = start.replace(tzinfo=UTC)
        assert Retention(f"PT{hours}H").deadline(start) - start == dt.timedelta(hours=hours)
        assert Retention(f"P{hours}D").deadline(start) - start == dt.timedelta(days=hours)

    @given(
        start=st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2999, 1, 1)),
        months=st.integers(1, 600),
    )
    def test_months_keep_the_day_or_clamp_to_the_month_end(
        self, start: dt.datetime, months: int
    ) -> None:
        start = start.replace(tzinfo=UTC)
        end = Retention(f"P{months}M").deadline(start)
        index = start.year * 12 + start.month - 1 + months
        year, month0 = divmod(index, 12)
        assert (end.year, end.month) == (year, month0 + 1)
        assert end.day == min(start.day, calendar.monthrange(end.year, end.month)[1])
        assert end.time() == start.time()
        assert Retention(f"P{months}M").deadline(start) > start
        if months % 12 == 0:
            assert Retention(f"P{months // 12}Y").deadline(start) == end

    @given(
        a=st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2999, 1, 1)),
        b=st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2999, 1, 1)),
        text=st.sampled_from(["P5Y", "P1M", "P1Y6M", "PT72H", "P7D", "P1M1D", "P2Y3M4DT5H"]),
    )
    def test_later_starts_never_give_earlier_deadlines(
        self, a: dt.datetime, b: dt.datetime, text: str
    ) -> None:
        a, b = sorted((a.replace(tzinfo=UTC), b.replace(tzinfo=UTC)))
        retention = Retention(text)
        assert start_ok(retention, a) <= start_ok(retention, b)


def start_ok(retention: Retention, start: dt.datetime) -> dt.datetime:
    deadline = retention.deadline(start)
    assert deadline > start
    return deadline


class TestRetentionFields:
    def test_no_less_than_needs_its_ground(self) -> None:
        with pytest.raises(ValueError, match="legal ground"):
            Retention("P5Y", after="relationship_end", kind="no_less_than")
        kept = Retention("P5Y", after="relationship_end", kind="no_less_than", ground="art. 60")
        assert kept.ground == "art. 60"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"after": "service_end"},
            {"kind": "at_most"},
            {"duration": "PT0S"},
            {"duration": "P0Y0M"},
            {"duration": "72h"},
        ],
    )
    def test_bad_fields_are_refused(self, kwargs: dict[str, str]) -> None:
        fields = {"duration": "P1D", **kwargs}
        with pytest.raises(ValueError):
            Retention(**fields)  # type: ignore[arg-type]

    def test_an_empty_ground_is_refused(self) -> None:
        with pytest.raises(TypeError):
            Retention("P1D", ground="")

    def test_equal_policies_compare_equal(self) -> None:
        assert Retention("PT72H") == Retention("PT72H")
        assert hash(Retention("PT72H")) == hash(Retention("PT72H"))
        assert Retention("PT72H") != Retention("P3D")  # same span, not the same text


class TestKeyDomainRules:
    def test_the_seed_domains(self) -> None:
        chat = KeyDomain(
            "chat", dek_scope="bucket", bucket=HOUR, retention=Retention("PT72H", after="capture")
        )
        contract = KeyDomain(
            "contract",
            dek_scope="subject",
            retention=Retention("P5Y", after="relationship_end", kind="no_less_than", ground="x"),
        )
        medical = KeyDomain("medical", restricted=True, dek_scope="subject")
        assert chat.scoped and contract.scoped and medical.scoped
        assert not KeyDomain("identity").scoped

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"dek_scope": "tenant"}, "dek_scope must be"),
            ({"dek_scope": "bucket", "retention": Retention("PT72H")}, "needs bucket="),
            ({"dek_scope": "bucket", "bucket": HOUR}, "after='capture'"),
            (
                {
                    "dek_scope": "bucket",
                    "bucket": HOUR,
                    "retention": Retention("P5Y", after="relationship_end"),
                },
                "after='capture'",
            ),
            ({"retention": Retention("PT72H")}, "process-scoped keys are not destroyed"),
            ({"dek_scope": "subject", "retention": Retention("PT72H")}, "relationship_end"),
            ({"bucket": HOUR}, "needs dek_scope='bucket'"),
            (
                {
                    "dek_scope": "bucket",
                    "bucket": dt.timedelta(seconds=1.5),
                    "retention": Retention("PT1H"),
                },
                "whole number of seconds",
            ),
            (
                {
                    "dek_scope": "bucket",
                    "bucket": dt.timedelta(days=400),
                    "retention": Retention("PT1H"),
                },
                "366 days",
            ),
            (
                {"dek_scope": "bucket", "bucket": dt.timedelta(0), "retention": Retention("PT1H")},
                "from 1 s",
            ),
        ],
    )
    def test_options_that_do_not_fit_are_refused(
        self, kwargs: dict[str, object], message: str
    ) -> None:
        with pytest.raises(DomainError, match=message):
            KeyDomain("d", **kwargs)  # type: ignore[arg-type]

    def test_wrong_types_are_type_errors(self) -> None:
        with pytest.raises(TypeError):
            KeyDomain("d", dek_scope="bucket", bucket=3600, retention=Retention("P1D"))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            KeyDomain("d", dek_scope="subject", retention="P5Y")  # type: ignore[arg-type]
