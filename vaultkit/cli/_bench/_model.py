"""Results of a run and the timing helpers every suite uses."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Result",
    "Role",
    "Run",
    "Stats",
    "SuiteResult",
    "calibrate",
    "interleaved",
    "timed_rounds",
]

Role = Literal["baseline", "vaultkit", "peer"]


@dataclass(frozen=True, slots=True)
class Stats:
    """Distribution of seconds per operation over the rounds of one measurement."""

    min: float
    median: float
    p95: float
    stdev: float
    rounds: int
    number: int

    @classmethod
    def of(cls, per_op: Sequence[float], number: int) -> Stats:
        """Summarise per-operation seconds, one value per round of ``number`` calls."""
        if not per_op:
            raise ValueError("no rounds measured")
        ordered = sorted(per_op)
        # Nearest-rank percentile: the smallest value with at least 95 % of rounds at or below it.
        p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
        stdev = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
        return cls(ordered[0], statistics.median(ordered), p95, stdev, len(ordered), number)

    def to_json(self) -> dict[str, Any]:
        return {
            "min_s": self.min,
            "median_s": self.median,
            "p95_s": self.p95,
            "stdev_s": self.stdev,
            "rounds": self.rounds,
            "number": self.number,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stats:
        return cls(
            float(data["min_s"]),
            float(data["median_s"]),
            float(data["p95_s"]),
            float(data["stdev_s"]),
            int(data["rounds"]),
            int(data["number"]),
        )


@dataclass(frozen=True, slots=True)
class Result:
    """One subject measured on one case: ``op`` of ``case`` by ``subject``.

    ``bytes_per_op`` and ``rows_per_op`` give the work one operation does (for MB/s and rows/s);
    ``lacks`` says what the subject does not protect that vaultkit does, printed beside its figures.
    """

    case: str
    op: str
    subject: str
    role: Role
    stats: Stats
    bytes_per_op: int | None = None
    rows_per_op: int | None = None
    lacks: tuple[str, ...] = ()
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return 1.0 / self.stats.min if self.stats.min > 0 else 0.0

    @property
    def mb_per_s(self) -> float | None:
        if self.bytes_per_op is None:
            return None
        return self.bytes_per_op * self.ops_per_s / 1e6

    @property
    def rows_per_s(self) -> float | None:
        if self.rows_per_op is None:
            return None
        return self.rows_per_op * self.ops_per_s

    def key(self, suite: str) -> tuple[str, str, str, str]:
        return (suite, self.case, self.op, self.subject)

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "op": self.op,
            "subject": self.subject,
            "role": self.role,
            "stats": self.stats.to_json(),
            "us_per_op": self.stats.min * 1e6,
            "ops_per_s": self.ops_per_s,
            "mb_per_s": self.mb_per_s,
            "rows_per_s": self.rows_per_s,
            "bytes_per_op": self.bytes_per_op,
            "rows_per_op": self.rows_per_op,
            "ratios": dict(sorted(self.ratios.items())),
            "lacks": list(self.lacks),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        role = data["role"]
        if role not in ("baseline", "vaultkit", "peer"):
            raise ValueError(f"unknown role {role!r}")
        return cls(
            case=str(data["case"]),
            op=str(data["op"]),
            subject=str(data["subject"]),
            role=role,
            stats=Stats.from_json(data["stats"]),
            bytes_per_op=data.get("bytes_per_op"),
            rows_per_op=data.get("rows_per_op"),
            lacks=tuple(data.get("lacks", ())),
            ratios={str(k): float(v) for k, v in data.get("ratios", {}).items()},
        )


@dataclass(slots=True)
class SuiteResult:
    """What one suite measured, what it skipped and why, with its parameters."""

    name: str
    description: str
    baselines: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, result: Result) -> None:
        self.results.append(result)

    def skip(self, subject: str, reason: str) -> None:
        self.skipped.append({"subject": subject, "reason": reason})

    def finish(self) -> None:
        """Set every result's ratios: its best round over each baseline's of the same case and op."""
        for result in self.results:
            result.ratios.clear()
            for other in self.results:
                if (
                    other.subject in self.baselines
                    and other.subject != result.subject
                    and (other.case, other.op) == (result.case, result.op)
                    and other.stats.min > 0
                ):
                    result.ratios[other.subject] = result.stats.min / other.stats.min

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "baselines": list(self.baselines),
            "params": self.params,
            "seconds": self.seconds,
            "results": [r.to_json() for r in self.results],
            "skipped": list(self.skipped),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SuiteResult:
        return cls(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            baselines=tuple(data.get("baselines", ())),
            params=dict(data.get("params", {})),
            results=[Result.from_json(r) for r in data.get("results", ())],
            skipped=[dict(s) for s in data.get("skipped", ())],
            notes=[str(n) for n in data.get("notes", ())],
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclass(slots=True)
class Run:
    """A whole run: when, on what, with which configuration, and each suite's results."""

    created: str
    quick: bool
    machine: dict[str, Any]
    config: dict[str, Any]
    suites: list[SuiteResult] = field(default_factory=list)
    duration_s: float = 0.0
    argv: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        from vaultkit.cli._bench import SCHEMA_ID

        return {
            "schema": SCHEMA_ID,
            "created": self.created,
            "quick": self.quick,
            "duration_s": self.duration_s,
            "argv": list(self.argv),
            "machine": self.machine,
            "config": self.config,
            "suites": [s.to_json() for s in self.suites],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Run:
        return cls(
            created=str(data["created"]),
            quick=bool(data["quick"]),
            machine=dict(data["machine"]),
            config=dict(data["config"]),
            suites=[SuiteResult.from_json(s) for s in data["suites"]],
            duration_s=float(data.get("duration_s", 0.0)),
            argv=[str(a) for a in data.get("argv", ())],
        )


def timed_rounds(
    fn: Callable[[], object], *, number: int, rounds: int, clock: Callable[[], float] | None = None
) -> list[float]:
    """Seconds per call of ``fn``, one value per round of ``number`` calls, after one warm-up call."""
    now = clock or time.perf_counter
    fn()
    samples = []
    for _ in range(rounds):
        start = now()
        for _ in range(number):
            fn()
        samples.append((now() - start) / number)
    return samples


def calibrate(fn: Callable[[], object], target: float) -> int:
    """Calls of ``fn`` that take about ``target`` seconds (at least 1), as pyperf calibrates loops."""
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min(target, 0.005):
        fn()
        calls += 1
    return max(1, int(target / (elapsed / max(1, calls))))


def interleaved(
    ops: Mapping[str, Callable[[], object]],
    *,
    number: int | Mapping[str, int],
    rounds: int,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Per-call seconds of each operation, the operations interleaved round by round.

    Interleaving makes a drift in machine speed (another process, frequency scaling) hit every
    operation alike instead of the one that happened to run during it.
    """
    samples: dict[str, list[float]] = {name: [] for name in ops}
    numbers = number if isinstance(number, Mapping) else dict.fromkeys(ops, number)
    if warmup:
        for fn in ops.values():
            fn()
    gc.collect()
    for _ in range(rounds):
        for name, fn in ops.items():
            now = time.perf_counter
            calls = numbers[name]
            start = now()
            for _ in range(calls):
                fn()
            samples[name].append((now() - start) / calls)
    return samples
