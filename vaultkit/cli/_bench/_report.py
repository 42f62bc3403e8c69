"""Rendering a run as a table, Markdown or JSON, and comparing two runs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from vaultkit.cli._bench._machine import differences
from vaultkit.cli._bench._model import Result, Run, SuiteResult

__all__ = [
    "DEFAULT_NOISE",
    "Comparison",
    "Delta",
    "compare",
    "format_comparison",
    "format_run",
    "human_time",
    "load_warning",
    "splice_generated",
]

Format = Literal["table", "markdown", "json"]

#: A change smaller than this fraction of the base figure is noise (``--noise``).
DEFAULT_NOISE = 0.10


def human_time(seconds: float) -> str:
    """Seconds as µs, ms or s with two decimals."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _rate(result: Result) -> str:
    if result.rows_per_s is not None:
        return f"{result.rows_per_s:,.0f} rows/s"
    if result.mb_per_s is not None:
        return f"{result.mb_per_s:,.1f} MB/s"
    return "-"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _suite_table(suite: SuiteResult) -> list[str]:
    baselines = list(suite.baselines)
    header = [
        "case",
        "op",
        "subject",
        "best",
        "median",
        "p95",
        "rounds x calls",
        "ops/s",
        "throughput",
        *(f"/ {b}" for b in baselines),
        "does not protect",
    ]
    lines = [_row(header), "|---|---|---|" + "---:|" * (6 + len(baselines)) + "---|"]
    for r in suite.results:
        ratios = [f"{r.ratios[b]:.2f}x" if b in r.ratios else "-" for b in baselines]
        s = r.stats
        lines.append(
            _row(
                [
                    r.case,
                    r.op,
                    f"**{r.subject}**" if r.role == "vaultkit" else r.subject,
                    human_time(s.min),
                    human_time(s.median),
                    human_time(s.p95),
                    f"{s.rounds} x {s.number}",
                    f"{r.ops_per_s:,.0f}",
                    _rate(r),
                    *ratios,
                    "; ".join(r.lacks) if r.lacks else "-",
                ]
            )
        )
    return lines


def _params(suite: SuiteResult) -> str:
    return ", ".join(f"{k}={v}" for k, v in suite.params.items()) or "-"


def _machine_lines(run: Run) -> list[tuple[str, str]]:
    m = run.machine
    git = m.get("git") or {}
    commit = git.get("commit") or "unknown"
    if git.get("dirty"):
        commit += " (uncommitted changes)"
    servers = ", ".join(f"{k} {v}" for k, v in sorted(m.get("database_servers", {}).items()))
    pairs = [
        ("CPU", f"{m.get('cpu_model') or 'unknown'}"),
        ("CPU flags", ", ".join(m.get("cpu_flags", ())) or "none of the listed"),
        ("cores", f"{m.get('logical_cores')} logical, {m.get('physical_cores') or '?'} physical"),
        ("virtualised", str(m.get("virtualised"))),
        ("OS", str(m.get("os"))),
        ("Python", f"{m.get('python')} ({m.get('python_implementation')})"),
        ("cryptography", f"{m.get('cryptography')} with {m.get('openssl')}"),
        ("SQLAlchemy", f"{m.get('sqlalchemy')}, SQLite {m.get('sqlite')}"),
        ("database servers", servers or "none used"),
        ("vaultkit", f"{m.get('vaultkit')}, commit {commit}"),
        (
            "load average",
            f"{m.get('load_average_before')} before, {m.get('load_average_after')} after",
        ),
    ]
    if "hostname" in m:
        pairs.append(("host", f"{m['hostname']} ({m.get('user')})"))
    protections = run.config.get("protections", {})
    on = ", ".join(f"{k}={v}" for k, v in sorted(protections.items()))
    verdict = (
        "every protection checked on" if run.config.get("all_on") else "NOT all protections on"
    )
    pairs.append(
        ("configuration", f"{verdict}: {on}; digest sha256:{run.config.get('digest', '')}")
    )
    return pairs


def load_warning(run: Run) -> str | None:
    """A sentence when the machine was busy during the run (1-minute load over half the cores)."""
    m = run.machine
    loads = [x for x in (m.get("load_average_before"), m.get("load_average_after")) if x]
    cores = m.get("logical_cores") or 1
    peak = max((x[0] for x in loads), default=0.0)
    if peak <= cores / 2:
        return None
    return (
        f"The machine was busy: a 1-minute load average of up to {peak:.1f} on {cores} cores. "
        "Other processes shared the CPU, so these figures are noisy: compare best rounds of "
        "several runs, or rerun on an idle machine."
    )


def _environment(run: Run) -> str:
    m = run.machine
    return (
        f"Python {m.get('python')}, cryptography {m.get('cryptography')} "
        f"({m.get('openssl')}), vaultkit {m.get('vaultkit')}, {m.get('machine')}, "
        f"{m.get('logical_cores')} CPUs"
    )


def _skipped(suite: SuiteResult) -> list[str]:
    return [f"- {s['subject']}: skipped, {s['reason']}" for s in suite.skipped]


def format_table(run: Run) -> str:
    out = [f"vaultkit bench: {_environment(run)}"]
    out += [f"{name}: {value}" for name, value in _machine_lines(run)]
    warning = load_warning(run)
    if warning:
        out.append(f"WARNING: {warning}")
    for suite in run.suites:
        out += ["", f"== {suite.name}: {suite.description}"]
        out.append(
            f"parameters: {_params(suite)}; best round kept, ratios against "
            f"{', '.join(suite.baselines)} in this run; {suite.seconds:.1f} s"
        )
        out += _suite_table(suite)
        out += _skipped(suite)
        out += [f"note: {n}" for n in suite.notes]
    out += ["", f"run took {run.duration_s:.1f} s" + (" (--quick)" if run.quick else "")]
    return "\n".join(out)


def format_markdown(run: Run, *, chart: str | None = None) -> str:
    """The generated part of ``docs/benchmarks.md``: machine block, then one section per suite."""
    out = [
        f"Measured {run.created}"
        + (" with `--quick` (smoke figures)" if run.quick else "")
        + f" in {run.duration_s:.0f} s by `vaultkit bench`.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    out += [_row([name, value]) for name, value in _machine_lines(run)]
    warning = load_warning(run)
    if warning:
        out += ["", f"> **Noisy figures.** {warning}"]
    if chart:
        out += ["", f"![Ratio of each subject to its suite's first baseline]({chart})"]
    for suite in run.suites:
        out += ["", f"### Suite `{suite.name}`", "", suite.description, ""]
        out.append(
            f"Parameters: {_params(suite)}. Best round kept; ratios are against "
            f"{', '.join(f'*{b}*' for b in suite.baselines)}, measured in the same run "
            f"({suite.seconds:.1f} s)."
        )
        out += ["", *_suite_table(suite)]
        if suite.skipped:
            out += ["", *_skipped(suite)]
        if suite.notes:
            out += ["", *(f"- {n}" for n in suite.notes)]
    return "\n".join(out) + "\n"


def format_run(run: Run, fmt: Format, *, chart: str | None = None) -> str:
    """Render ``run`` in ``fmt``: ``table`` (terminal), ``markdown`` (docs) or ``json``."""
    if fmt == "json":
        return json.dumps(run.to_json(), indent=1, ensure_ascii=False)
    if fmt == "markdown":
        return format_markdown(run, chart=chart)
    return format_table(run)


@dataclass(frozen=True, slots=True)
class Delta:
    """One figure in both runs: best seconds per operation, and the relative change."""

    suite: str
    case: str
    op: str
    subject: str
    base: float
    now: float
    threshold: float

    @property
    def change(self) -> float:
        return self.now / self.base - 1.0 if self.base > 0 else 0.0

    @property
    def verdict(self) -> Literal["slower", "faster", "same"]:
        if self.change > self.threshold:
            return "slower"
        if self.change < -self.threshold:
            return "faster"
        return "same"


@dataclass(slots=True)
class Comparison:
    """Every figure both runs measured, those only one has, and how the machines differ."""

    deltas: list[Delta] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_now: list[str] = field(default_factory=list)
    machine_differs: list[str] = field(default_factory=list)
    noise: float = DEFAULT_NOISE

    @property
    def regressions(self) -> list[Delta]:
        return [d for d in self.deltas if d.verdict == "slower"]


def _spread(result: Result) -> float:
    s = result.stats
    return (s.median - s.min) / s.min if s.min > 0 else 0.0


def _index(run: Run) -> dict[tuple[str, str, str, str], Result]:
    return {r.key(suite.name): r for suite in run.suites for r in suite.results}


def compare(base: Run, now: Run, *, noise: float = DEFAULT_NOISE) -> Comparison:
    """Match the figures of two runs by suite, case, op and subject.

    A change counts when it exceeds ``noise`` and the spread (median over best) either run measured
    for that figure: a figure that varied 15 % between rounds cannot show a 12 % regression.
    """
    left, right = _index(base), _index(now)
    result = Comparison(noise=noise, machine_differs=differences(base.machine, now.machine))
    for key, b in left.items():
        n = right.get(key)
        if n is None:
            result.only_base.append(" / ".join(key))
            continue
        threshold = max(noise, _spread(b), _spread(n))
        result.deltas.append(Delta(*key, base=b.stats.min, now=n.stats.min, threshold=threshold))
    result.only_now = [" / ".join(k) for k in right if k not in left]
    return result


def format_comparison(comparison: Comparison, fmt: Format) -> str:
    """``Base | Now | Delta`` per figure, with the verdict, after any machine warning."""
    if fmt == "json":
        return json.dumps(
            {
                "noise": comparison.noise,
                "machine_differs": comparison.machine_differs,
                "only_base": comparison.only_base,
                "only_now": comparison.only_now,
                "deltas": [
                    {
                        "suite": d.suite,
                        "case": d.case,
                        "op": d.op,
                        "subject": d.subject,
                        "base_s": d.base,
                        "now_s": d.now,
                        "change": d.change,
                        "threshold": d.threshold,
                        "verdict": d.verdict,
                    }
                    for d in comparison.deltas
                ],
            },
            indent=1,
            ensure_ascii=False,
        )
    out: list[str] = []
    if comparison.machine_differs:
        out.append(
            "WARNING: the machine blocks differ ("
            + ", ".join(comparison.machine_differs)
            + "): the runs are not comparable figure by figure"
        )
    out.append(
        f"compare: best round per figure; changes within max({comparison.noise:.0%}, the "
        "measured spread) are noise"
    )
    out += [
        _row(["suite", "case", "op", "subject", "base", "now", "delta", "verdict"]),
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for d in comparison.deltas:
        verdict = {"slower": "**SLOWER**", "faster": "faster", "same": "noise"}[d.verdict]
        out.append(
            _row(
                [
                    d.suite,
                    d.case,
                    d.op,
                    d.subject,
                    human_time(d.base),
                    human_time(d.now),
                    f"{d.change:+.1%}",
                    verdict,
                ]
            )
        )
    out += [f"only in base: {k}" for k in comparison.only_base]
    out += [f"only now: {k}" for k in comparison.only_now]
    slower = len(comparison.regressions)
    out.append(f"{slower} figure(s) slower beyond the noise threshold")
    return "\n".join(out)


#: Markers around the generated part of ``docs/benchmarks.md``.
BEGIN_MARKER = "<!-- begin: generated by vaultkit bench --update-doc; do not edit by hand -->"
END_MARKER = "<!-- end: generated by vaultkit bench --update-doc -->"


def splice_generated(document: str, generated: str) -> str:
    """Replace the text between the markers of ``document`` with ``generated``; keep the rest.

    Raises:
        ValueError: the markers are missing, repeated or out of order (nothing is overwritten).
    """
    if document.count(BEGIN_MARKER) != 1 or document.count(END_MARKER) != 1:
        raise ValueError("the document must hold each generated-part marker exactly once")
    head, _, rest = document.partition(BEGIN_MARKER)
    _old, _, tail = rest.partition(END_MARKER)
    if END_MARKER in head:
        raise ValueError("the end marker comes before the begin marker")
    return f"{head}{BEGIN_MARKER}\n\n{generated.strip()}\n\n{END_MARKER}{tail}"
