"""The index planner's arithmetic: both published rules, refusals, partitions, estimates."""

from __future__ import annotations

import collections
import math
import random

import pytest

from vaultkit.errors import ConfigurationError
from vaultkit.search import (
    PlannedIndex,
    aws_bounds,
    ciphersweet_bounds,
    coincidence_count,
    distinct_estimate,
    expected_false_positives,
    plan,
    recommend_partitions,
)


class TestAWSBounds:
    def test_five_digit_zip(self) -> None:
        """AWS's example field of 100,000 values gives 9 to 15 bits (2^N > sqrt X, 2^N < X/2)."""
        assert aws_bounds(100_000) == (9, 15)

    def test_worked_examples(self) -> None:
        """Belgian postcodes x birth years (~110,000) and Dutch PC4 x years (~400,000)."""
        assert aws_bounds(110_000) == (9, 15)
        assert aws_bounds(400_000) == (10, 17)

    def test_bounds_hold(self) -> None:
        """At both ends the inequalities of the rule hold, one bit further they do not."""
        for x in (8, 64, 1_000, 12_345, 10**6):
            low, high = aws_bounds(x)  # type: ignore[misc]
            assert 2**low >= math.sqrt(x) > 2 ** (low - 1)
            assert 2**high <= x / 2 < 2 ** (high + 1)

    def test_tiny_field_has_no_range(self) -> None:
        """Fewer than four values leave no width that satisfies both inequalities."""
        assert aws_bounds(2) is None
        assert aws_bounds(3) is None


class TestCipherSweet:
    def test_coincidences_sum_over_indexes(self) -> None:
        """C = R / 2^(sum min(L_i, K_i)): a 12-bit and a 7-bit index on the pair tell 19 bits."""
        assert coincidence_count(2**20, [12, 7]) == 2.0
        # K caps what an index can tell: a 16-bit index of a 3-bit input tells 3 bits.
        assert coincidence_count(1024, [min(16, 3)]) == 128.0

    def test_bounds_match_the_php_planner(self) -> None:
        """The brute-force port gives the range where 2 <= C <= sqrt(R) (R = 2^20 -> 10..19)."""
        assert ciphersweet_bounds(2**20) == (10, 19)

    def test_existing_indexes_narrow_the_range(self) -> None:
        """An existing 8-bit index leaves 8 bits fewer to a new one."""
        low, high = ciphersweet_bounds(2**20, [8.0])
        assert (low, high) == (2, 11)

    def test_empty_population(self) -> None:
        """No rows, no estimate (CipherSweet's PlannerException)."""
        with pytest.raises(ConfigurationError):
            ciphersweet_bounds(0)


class TestPlan:
    def test_recommends_inside_both_ranges(self) -> None:
        """The recommended width lies in both rules' ranges, the narrowest with few false candidates."""
        result = plan(rows=1_000_000, distinct=110_000, column="locator")
        assert result.ok
        assert result.aws_bits == (9, 15)
        assert result.ciphersweet_bits is not None
        low = max(result.aws_bits[0], result.ciphersweet_bits[0])
        high = min(result.aws_bits[1], result.ciphersweet_bits[1])
        assert result.recommended_bits is not None
        assert low <= result.recommended_bits <= high
        assert expected_false_positives(result.recommended_bits, 1_000_000, 110_000) <= 64
        assert expected_false_positives(result.recommended_bits - 1, 1_000_000, 110_000) > 64

    def test_refuses_stand_alone_low_cardinality(self) -> None:
        """A gender (3 values) gets no stand-alone index: refused, nothing recommended."""
        result = plan(rows=100_000, distinct=3, column="gender")
        assert not result.ok
        assert result.refused is not None and "CompoundIndex" in result.refused
        assert result.recommended_bits is None

    def test_refuses_declared_low_cardinality_blind_index(self) -> None:
        """A declared stand-alone BlindIndex on a boolean is refused in the plan."""
        index = PlannedIndex("flag_index", "blind", ("flag",), 16)
        result = plan(rows=100_000, distinct=2, column="flag", indexes=[index])
        assert not result.ok
        assert result.indexes[0].refused is not None

    def test_accepts_low_cardinality_inside_a_compound(self) -> None:
        """The same field as a part of a compound index is accepted, with a note."""
        compound = PlannedIndex("locator", "compound", ("postal_code", "gender"), 16)
        result = plan(rows=100_000, distinct=3, column="gender", indexes=[compound])
        assert result.ok
        assert any("compound" in note for note in result.notes)

    def test_all_indexes_of_the_field_count(self) -> None:
        """Two indexes on the same source add their bits to the coincidence count."""
        one = PlannedIndex("p3", "prefix", ("last_name",), 12, distinct=5000)
        two = PlannedIndex("p5", "prefix", ("last_name",), 16, distinct=100_000)
        alone = plan(rows=2**22, distinct=100_000, column="last_name", indexes=[one])
        both = plan(rows=2**22, distinct=100_000, column="last_name", indexes=[one, two])
        assert alone.coincidences == pytest.approx(2**22 / 2**12)
        assert both.coincidences == pytest.approx(2**22 / 2**28)
        assert any("nearly single rows out" in note for note in both.notes)
        # No width leaves C in [2, sqrt(R)] beside them: no room for another index.
        assert both.ciphersweet_bits is None and both.recommended_bits is None
        assert alone.ciphersweet_bits is not None

    def test_partitions_for_a_skewed_value(self) -> None:
        """A surname held by 1% of the rows gets partitions, a flat field none."""
        skewed = plan(rows=1_000_000, distinct=200_000, top_share=0.01)
        flat = plan(rows=1_000_000, distinct=200_000, top_share=5 / 1_000_000)
        assert skewed.partitions > 1
        assert flat.partitions == 1
        assert any("partitions" in note for note in skewed.notes)

    def test_false_positive_figures_per_index(self) -> None:
        """Each declared index gets P * (R - R/X) / 2^L false candidates per lookup."""
        index = PlannedIndex("surname", "blind", ("last_name",), 16, distinct=1000, partitions=4)
        result = plan(rows=1_000_000, distinct=1000, indexes=[index])
        assert result.indexes[0].false_positives == pytest.approx(4 * (1_000_000 - 1000) / 2**16)

    def test_json_ready(self) -> None:
        """as_dict gives JSON-ready data with no infinity."""
        import json

        index = PlannedIndex("email_index", "blind", ("email",), 256)
        data = plan(rows=10, distinct=10, indexes=[index]).as_dict()
        assert json.loads(json.dumps(data, allow_nan=False)) == data

    @pytest.mark.parametrize(("rows", "distinct"), [(0, 0), (10, 11), (10, 0)])
    def test_nonsense_counts(self, rows: int, distinct: int) -> None:
        """Counts that make no sense are a configuration error."""
        with pytest.raises(ConfigurationError):
            plan(rows=rows, distinct=distinct)


class TestPartitions:
    def test_power_of_two_capped(self) -> None:
        """Partitions are a power of two, at most 16."""
        assert recommend_partitions(0.5, 10**6, 20) == 16
        assert recommend_partitions(8 / 2**10, 10**6, 10) == 2
        assert recommend_partitions(None, 10, 16) == 1
        # A birth date seen a few times more than the others in a sample is no common surname.
        assert recommend_partitions(0.0006, 15_000, None) == 1


class TestDistinctEstimate:
    def test_exact_on_the_whole_population(self) -> None:
        """A sample that is the whole population counts exactly."""
        assert distinct_estimate({"a": 2, "b": 1}, 3) == 2

    def test_estimate_from_a_sample(self) -> None:
        """GEE estimates a uniform field's distinct count from a 10% sample within a factor 2."""
        rng = random.Random(4)
        population = [rng.randrange(20_000) for _ in range(100_000)]
        true = len(set(population))
        counts = collections.Counter(rng.sample(population, 10_000))
        estimate = distinct_estimate(counts, len(population))
        assert true / 2 <= estimate <= true * 2
