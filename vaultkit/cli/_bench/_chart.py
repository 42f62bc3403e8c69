"""``--chart FILE``: bars of each subject's ratio to its suite's first baseline, per case.

matplotlib comes with the ``bench`` extra and is imported here only, when a chart is asked for.
"""

from __future__ import annotations

from pathlib import Path

from vaultkit.cli._bench._model import Run
from vaultkit.errors import ConfigurationError

__all__ = ["write_chart"]


def write_chart(run: Run, path: Path) -> None:
    """Draw one panel per suite into ``path`` (SVG, PNG or PDF, by its suffix).

    Raises:
        ConfigurationError: matplotlib is not installed (``pip install 'vaultkit[bench]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        raise ConfigurationError(
            "--chart needs matplotlib: pip install 'vaultkit[bench]'"
        ) from None
    suites = [s for s in run.suites if s.baselines and s.results]
    if not suites:
        raise ConfigurationError("--chart: the run has no ratios to draw")
    figure, axes = plt.subplots(
        len(suites), 1, figsize=(10, 3.2 * len(suites)), squeeze=False, layout="constrained"
    )
    for axis, suite in zip(axes[:, 0], suites, strict=True):
        # Each result against the first of the suite's baselines measured in its own case: the
        # passwords suite has one baseline per case (argon2-cffi, bcrypt, zxcvbn).
        ratios: dict[tuple[str, str], float] = {}
        for r in suite.results:
            base = next((b for b in suite.baselines if b in r.ratios), None)
            if base is not None and r.subject not in suite.baselines[:1]:
                ratios[(r.subject, f"{r.case} {r.op}")] = r.ratios[base]
        subjects = list(dict.fromkeys(subject for subject, _ in ratios))
        cases = list(dict.fromkeys(case for _, case in ratios))
        width = 0.8 / max(1, len(subjects))
        for i, subject in enumerate(subjects):
            xs = [c + i * width for c in range(len(cases))]
            axis.bar(xs, [ratios.get((subject, c), 0.0) for c in cases], width, label=subject)
        # Ratios span 1x to 30x (Fernet): a log scale keeps the small ones readable.
        axis.set_yscale("log")
        axis.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%gx"))
        axis.yaxis.set_minor_formatter(ticker.NullFormatter())
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks(
            [c + 0.4 - width / 2 for c in range(len(cases))],
            cases,
            rotation=30,
            ha="right",
            fontsize=7,
        )
        axis.set_ylabel("x baseline (log)")
        axis.set_title(
            f"{suite.name}: ratio to {' / '.join(suite.baselines)} (lower is faster)", fontsize=9
        )
        axis.legend(fontsize=7)
    # No date and a fixed id salt, so that the same run draws the same file.
    matplotlib.rcParams["svg.hashsalt"] = "vaultkit-bench"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: smaller, searchable
    figure.savefig(
        path, metadata={"Date": None} if path.suffix.lower() in (".svg", ".pdf") else None
    )
    plt.close(figure)
