"""Tests for ``vaultkit bench``: the JSON schema, the machine block, the formats and ``--compare``.

Comparisons are checked on crafted runs (fixed figures), never on timings, so that a loaded
machine cannot make them pass or fail.
"""

from __future__ import annotations

import copy
import importlib
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultkit.cli._bench import SCHEMA_ID
from vaultkit.cli._bench._machine import machine_block
from vaultkit.cli._bench._model import Result, Run, Stats, SuiteResult, calibrate, interleaved
from vaultkit.cli._bench._report import (
    BEGIN_MARKER,
    END_MARKER,
    compare,
    format_markdown,
    splice_generated,
)
from vaultkit.cli._bench._schema import SchemaError, load_schema, validate
from vaultkit.cli._bench._suites import SUITES, protections
from vaultkit.cli.bench import measure
from vaultkit.cli.main import main

MACHINE: dict[str, Any] = {
    "cpu_model": "Test CPU 3000",
    "cpu_flags": ["aes", "pclmulqdq", "avx2"],
    "logical_cores": 2,
    "physical_cores": 2,
    "virtualised": True,
    "frequency_governor": None,
    "memory_bytes": 8 << 30,
    "os": "Linux 6.1",
    "machine": "x86_64",
    "python": "3.11.7",
    "python_implementation": "CPython",
    "python_build": "main Jan 1 2026",
    "python_compiler": "GCC 12",
    "cryptography": "50.0.2",
    "openssl": "OpenSSL 3.5.0",
    "sqlalchemy": "2.1.9",
    "sqlite": "3.40.1",
    "database_servers": {},
    "vaultkit": "0.3.0",
    "git": {"commit": "0" * 40, "dirty": False},
    "load_average_before": [0.1, 0.1, 0.1],
    "load_average_after": [0.2, 0.1, 0.1],
    "executable_prefix": "venv",
}


def crafted_run(factor: dict[str, float] | None = None, *, spread: float = 0.01) -> Run:
    """A run of fixed figures; ``factor`` multiplies the named subjects' times (a slowdown)."""
    factor = factor or {}
    suite = SuiteResult("core", "crafted", baselines=("raw AESGCM",), params={"rounds": 7})
    for subject, seconds, role in (
        ("raw AESGCM", 1.0e-6, "baseline"),
        ("FieldCipher", 1.7e-6, "vaultkit"),
        ("Vault.encrypt", 3.0e-6, "vaultkit"),
    ):
        t = seconds * factor.get(subject, 1.0)
        suite.add(
            Result(
                case="16 B",
                op="encrypt",
                subject=subject,
                role=role,  # type: ignore[arg-type]
                stats=Stats(t, t * (1 + spread), t * (1 + 2 * spread), t * spread, 7, 1000),
                bytes_per_op=16,
            )
        )
    suite.finish()
    return Run(
        created="2026-12-01T00:00:00+00:00",
        quick=False,
        machine=copy.deepcopy(MACHINE),
        config={"protections": {"key_commitment": True}, "all_on": True, "digest": "a" * 64},
        suites=[suite],
        duration_s=12.0,
    )


def write(path: Path, run: Run) -> Path:
    path.write_text(json.dumps(run.to_json()))
    return path


class TestSchema:
    def test_published_schema_is_valid_json_schema(self) -> None:
        """The published schema is itself a valid Draft 2020-12 schema (checked by jsonschema)."""
        jsonschema = importlib.import_module("jsonschema")
        jsonschema.Draft202012Validator.check_schema(load_schema())

    def test_quick_run_validates_with_both_validators(self, tmp_path: Path) -> None:
        """A real quick run's --json-out passes vaultkit's validator and jsonschema alike."""
        out = tmp_path / "run.json"
        assert main(["bench", "--quick", "--suite", "core,providers", "--json-out", str(out)]) == 0
        document = json.loads(out.read_text())
        assert document["schema"] == SCHEMA_ID == "vaultkit-bench/1"
        validate(document)
        jsonschema = importlib.import_module("jsonschema")
        jsonschema.Draft202012Validator(load_schema()).validate(document)
        names = [s["name"] for s in document["suites"]]
        assert names == ["core", "providers"]
        core = document["suites"][0]
        subjects = {r["subject"] for r in core["results"]}
        assert {"raw AESGCM", "framed AESGCM", "FieldCipher", "Vault.encrypt"} <= subjects
        assert {"hmac.digest", "BlindIndexKey.digest"} <= subjects
        for r in core["results"]:
            stats = r["stats"]
            assert 0 < stats["min_s"] <= stats["median_s"] <= stats["p95_s"]
            if r["role"] != "baseline" and r["op"] in ("encrypt", "decrypt"):
                assert set(r["ratios"]) == {"raw AESGCM", "framed AESGCM"}
            if r["subject"] == "BlindIndexKey.digest":
                assert set(r["ratios"]) == {"hmac.digest"}
            if r["role"] in ("baseline", "peer"):
                assert r["lacks"], f"{r['subject']} says nothing about what it does not protect"

    @pytest.mark.parametrize(
        ("change", "where"),
        [
            (lambda d: d.update(schema="vaultkit-bench/2"), "$.schema"),
            (lambda d: d.pop("machine"), "missing 'machine'"),
            (lambda d: d["machine"].update(cpu_flags=["rdrand"]), "cpu_flags[0]"),
            (lambda d: d["suites"][0]["results"][0]["stats"].update(min_s=-1.0), "min_s"),
            (lambda d: d["suites"][0]["results"][0].update(extra=1), "unexpected field 'extra'"),
            (lambda d: d["config"].update(digest="not hex"), "digest"),
            (lambda d: d["suites"][0]["results"][0]["stats"].update(rounds=1.5), "rounds"),
            (lambda d: d.update(duration_s=float("nan")), "duration_s"),
        ],
    )
    def test_validator_refuses_broken_documents(self, change: Any, where: str) -> None:
        """Each kind of mismatch is refused with its path, by vaultkit's validator and jsonschema."""
        document = crafted_run().to_json()
        validate(document)
        change(document)
        with pytest.raises(SchemaError) as info:
            validate(document)
        assert where in str(info.value)
        if where != "duration_s":  # jsonschema takes NaN for a number; JSON itself has no NaN
            jsonschema = importlib.import_module("jsonschema")
            assert not jsonschema.Draft202012Validator(load_schema()).is_valid(document)

    def test_validator_refuses_a_keyword_it_does_not_implement(self) -> None:
        """A schema keyword the small validator does not know is an error, never ignored."""
        with pytest.raises(SchemaError, match="not supported"):
            validate({"a": 1}, {"type": "object", "maxProperties": 0})

    @settings(deadline=None, max_examples=50)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        )
    )
    def test_validator_agrees_with_jsonschema(self, document: object) -> None:
        """On arbitrary JSON values, vaultkit's validator accepts exactly what jsonschema accepts."""
        jsonschema = importlib.import_module("jsonschema")
        expected = jsonschema.Draft202012Validator(load_schema()).is_valid(document)
        try:
            validate(document)
        except SchemaError:
            ours = False
        else:
            ours = True
        assert ours == expected


class TestMachineBlock:
    def test_no_host_or_user_name_by_default(self) -> None:
        """The machine block names neither the host nor the user unless asked."""
        block = machine_block()
        assert "hostname" not in block and "user" not in block
        host = socket.gethostname()
        if len(host) >= 4:
            assert host not in json.dumps(block)
        asked = machine_block(include_host=True)
        assert asked["hostname"] == host

    def test_block_names_the_software_and_cpu(self) -> None:
        """CPU model, flags, Python, cryptography with OpenSSL, SQLAlchemy and vaultkit are given."""
        import cryptography
        import sqlalchemy

        import vaultkit

        block = machine_block()
        assert block["cryptography"] == cryptography.__version__
        assert "SSL" in block["openssl"]
        assert block["sqlalchemy"] == sqlalchemy.__version__
        assert block["vaultkit"] == vaultkit.__version__
        assert set(block["cpu_flags"]) <= {
            "aes",
            "vaes",
            "pclmulqdq",
            "vpclmulqdq",
            "avx2",
            "avx512f",
            "sha_ni",
        }
        assert set(block["git"]) == {"commit", "dirty"}

    def test_protections_are_observed_on(self) -> None:
        """Key commitment, cell binding, random nonces, the restricted domain and the audit log are on."""
        found = protections()
        assert found["key_commitment"] is True
        assert found["cell_binding"] is True
        assert found["random_nonce"] is True
        assert found["restricted_domain_sealed_without_grant"] is True
        assert found["restricted_domain_opens_with_grant"] is True
        assert found["audit_records_decrypt_and_denial"] is True
        assert found["audit_chain_verifies"] is True


class TestCompare:
    def test_synthetic_2x_slowdown_is_flagged(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A figure twice as slow is reported SLOWER, and --fail-on-regression exits 1."""
        base = write(tmp_path / "base.json", crafted_run())
        now = write(tmp_path / "now.json", crafted_run({"FieldCipher": 2.0}))
        args = ["bench", "--input", str(now), "--compare", str(base)]
        assert main(args) == 0
        out = capsys.readouterr().out
        line = next(row for row in out.splitlines() if "| FieldCipher |" in row)
        assert "SLOWER" in line and "+100.0%" in line
        assert "1 figure(s) slower" in out
        assert main([*args, "--fail-on-regression"]) == 1

    def test_three_percent_noise_is_ignored(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every figure 3 % slower is noise: nothing flagged, exit 0 even with --fail-on-regression."""
        base = write(tmp_path / "base.json", crafted_run())
        now = write(
            tmp_path / "now.json",
            crafted_run({"raw AESGCM": 1.03, "FieldCipher": 1.03, "Vault.encrypt": 0.97}),
        )
        assert (
            main(["bench", "--input", str(now), "--compare", str(base), "--fail-on-regression"])
            == 0
        )
        out = capsys.readouterr().out
        assert "SLOWER" not in out and "0 figure(s) slower" in out
        assert "WARNING" not in out

    def test_spread_widens_the_threshold(self) -> None:
        """A 20 % change in a figure whose rounds spread 30 % is noise; with tight rounds it counts."""
        noisy = compare(crafted_run(spread=0.3), crafted_run({"FieldCipher": 1.2}, spread=0.3))
        assert not noisy.regressions
        tight = compare(crafted_run(), crafted_run({"FieldCipher": 1.2}))
        assert [d.subject for d in tight.regressions] == ["FieldCipher"]

    def test_machine_difference_is_warned(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Runs from different CPUs or OpenSSL builds are compared with a warning naming the fields."""
        other = crafted_run()
        other.machine["cpu_model"] = "Another CPU"
        other.machine["openssl"] = "OpenSSL 3.0.2"
        base = write(tmp_path / "base.json", crafted_run())
        now = write(tmp_path / "now.json", other)
        assert main(["bench", "--input", str(now), "--compare", str(base)]) == 0
        out = capsys.readouterr().out
        assert "WARNING: the machine blocks differ (cpu_model, openssl)" in out

    def test_json_comparison(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--format json prints the deltas with their verdicts."""
        base = write(tmp_path / "base.json", crafted_run())
        now = write(tmp_path / "now.json", crafted_run({"Vault.encrypt": 2.0}))
        assert main(["bench", "--input", str(now), "--compare", str(base), "--format", "json"]) == 0
        data = json.loads(capsys.readouterr().out)
        verdicts = {d["subject"]: d["verdict"] for d in data["deltas"]}
        assert verdicts == {"raw AESGCM": "same", "FieldCipher": "same", "Vault.encrypt": "slower"}

    def test_figures_only_in_one_run_are_listed(self) -> None:
        """A subject measured in one run only is listed, not silently dropped."""
        now = crafted_run()
        now.suites[0].results.pop()
        result = compare(crafted_run(), now)
        assert result.only_base == ["core / 16 B / encrypt / Vault.encrypt"]


class TestFormatsAndFiles:
    def test_markdown_report(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--format markdown gives the machine table, a section per suite, ratios and what peers lack."""
        run = crafted_run()
        run.suites[0].results[0] = Result(
            **{**_fields(run.suites[0].results[0]), "lacks": ("no key commitment",)}
        )
        path = write(tmp_path / "run.json", run)
        assert main(["bench", "--input", str(path), "--format", "markdown"]) == 0
        out = capsys.readouterr().out
        assert "| CPU | Test CPU 3000 |" in out and "### Suite `core`" in out
        assert "| 16 B | encrypt | **FieldCipher** |" in out and "| 1.70x |" in out
        assert "no key commitment" in out
        assert "every protection checked on" in out

    def test_update_doc_keeps_hand_written_sections(self, tmp_path: Path) -> None:
        """--update-doc replaces only the generated part; text before and after stays byte for byte."""
        doc = tmp_path / "benchmarks.md"
        before, after = "# Benchmarks\n\nintro\n\n", "\n\n## Kept section\n\n| 1 | 2 |\n"
        doc.write_text(f"{before}{BEGIN_MARKER}\nold figures\n{END_MARKER}{after}")
        path = write(tmp_path / "run.json", crafted_run())
        assert main(["bench", "--input", str(path), "--update-doc", str(doc)]) == 0
        text = doc.read_text()
        assert text.startswith(before + BEGIN_MARKER) and text.endswith(END_MARKER + after)
        assert "old figures" not in text and "### Suite `core`" in text

    def test_update_doc_without_markers_changes_nothing(self, tmp_path: Path) -> None:
        """A page without the markers is refused with exit 3 and left as it was."""
        doc = tmp_path / "benchmarks.md"
        doc.write_text("# hand-written figures only\n")
        path = write(tmp_path / "run.json", crafted_run())
        assert main(["bench", "--input", str(path), "--update-doc", str(doc)]) == 3
        assert doc.read_text() == "# hand-written figures only\n"

    def test_splice_refuses_misordered_markers(self) -> None:
        """An end marker before the begin marker is refused rather than guessed."""
        with pytest.raises(ValueError, match="before"):
            splice_generated(f"{END_MARKER}\n{BEGIN_MARKER}\n", "x")

    def test_input_that_is_not_a_run_exits_3(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A JSON file of another shape is a configuration error naming the mismatch."""
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"schema": "something/1"}))
        assert main(["bench", "--input", str(bad)]) == 3
        assert "not a vaultkit-bench/1 run" in capsys.readouterr().err
        bad.write_text("{not json")
        assert main(["bench", "--compare", str(bad), "--input", str(bad)]) == 3

    def test_unknown_suite_is_a_usage_error(self) -> None:
        """--suite with a name that is not a suite exits 2 (argparse)."""
        with pytest.raises(SystemExit) as info:
            main(["bench", "--suite", "core,nope"])
        assert info.value.code == 2

    def test_chart_needs_matplotlib(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without matplotlib, --chart exits 3 with the install hint."""
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        path = write(tmp_path / "run.json", crafted_run())
        assert main(["bench", "--input", str(path), "--chart", str(tmp_path / "c.svg")]) == 3
        assert "vaultkit[bench]" in capsys.readouterr().err

    def test_chart_is_drawn(self, tmp_path: Path) -> None:
        """With matplotlib, --chart writes an SVG naming the suite."""
        pytest.importorskip("matplotlib")
        path = write(tmp_path / "run.json", crafted_run())
        chart = tmp_path / "c.svg"
        assert main(["bench", "--input", str(path), "--chart", str(chart), "--format", "json"]) == 0
        text = chart.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text

    def test_round_trip_through_json(self) -> None:
        """A run read back from its JSON renders the same Markdown."""
        run = crafted_run()
        again = Run.from_json(json.loads(json.dumps(run.to_json())))
        assert format_markdown(again) == format_markdown(run)


class TestStats:
    def test_distribution(self) -> None:
        """min, median and nearest-rank p95 of the rounds."""
        stats = Stats.of([float(x) for x in range(20, 0, -1)], 10)
        assert (stats.min, stats.median, stats.p95, stats.rounds) == (1.0, 10.5, 19.0, 20)

    def test_ratios_are_best_over_best_in_the_same_case(self) -> None:
        """A subject's ratio is its best round over the baseline's best of the same case and op."""
        run = crafted_run()
        field = next(r for r in run.suites[0].results if r.subject == "FieldCipher")
        assert field.ratios == {"raw AESGCM": pytest.approx(1.7)}
        raw = next(r for r in run.suites[0].results if r.subject == "raw AESGCM")
        assert raw.ratios == {}


def test_every_suite_runs_quick() -> None:
    """Each suite measures in --quick mode and every result has a positive best round."""
    run = measure(list(SUITES), quick=True)
    assert [s.name for s in run.suites] == list(SUITES)
    for suite in run.suites:
        assert suite.results, suite.name
        assert all(r.stats.min > 0 for r in suite.results)
    assert run.config["all_on"] is True
    validate(run.to_json())


def test_lifecycle_suite_measures_scoped_keys_beside_process_scoped_ones() -> None:
    """--suite lifecycle: scoped keys beside process-scoped ones and raw AES-GCM, counts bounded.

    The cold read of N distinct members costs as many provider calls as the process-scoped read
    (the per-domain wrapping key, not one unwrap per member), one key-store query per member
    without ``preload`` and a handful with it; each peer says what it does not protect.
    """
    from vaultkit.cli._bench._suites import Options

    suite = SUITES["lifecycle"](Options(quick=True))
    suite.finish()
    by_key = {(r.case, r.op, r.subject): r for r in suite.results}
    n = suite.params["cold_rows"]
    for op in ("encrypt", "decrypt"):
        for subject in ("subject-scoped, known member", "bucket-scoped"):
            result = by_key[("64 B, warm", op, subject)]
            assert result.role == "vaultkit" and result.stats.min > 0
            assert set(result.ratios) == {"raw AESGCM", "process-scoped"}
    assert by_key[("64 B, first write", "encrypt", "subject-scoped, new member")].stats.min > 0
    cold = f"{n:,} distinct members, cold"
    assert {s for c, _o, s in by_key if c == cold} == {
        "process-scoped",
        "subject-scoped",
        "subject-scoped, preload",
    }
    counts = suite.params["cold_read_counts"]
    process, scoped, preloaded = (
        counts[name] for name in ("process-scoped", "subject-scoped", "subject-scoped, preload")
    )
    # O(domains), whatever n is: the wrapping key's one unwrap, not one per member.
    assert preloaded["provider_calls"] == scoped["provider_calls"] <= process["provider_calls"] + 1
    assert scoped["provider_calls"] <= 5
    assert scoped["key_store_queries"] >= n
    batches = -(-n // suite.params["preload_batch"])
    assert preloaded["key_store_queries"] <= 2 * batches + 2  # get_many per batch, not per row
    erase = by_key[("1 member, 1 subject-scoped domain", "erase", "vaultkit erase_subject")]
    assert erase.stats.rounds == suite.params["erasures"]
    peers = [r for r in suite.results if r.role != "vaultkit"]
    assert peers and all(r.lacks for r in peers)
    assert not [r for r in suite.results if r.role == "vaultkit" and r.lacks]
    assert any("provider calls" in note for note in suite.notes)


def _fields(result: Result) -> dict[str, Any]:
    return {name: getattr(result, name) for name in Result.__slots__ if not name.startswith("__")}


@pytest.mark.parametrize(
    ("server", "dialect"),
    [
        pytest.param("postgres_url", "postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb_url", "mysql", marks=pytest.mark.mariadb),
    ],
)
def test_database_suites_name_the_server_and_clean_up(
    server: str, dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """--database runs orm and rekey there too, records the server version (not the URL) and drops its tables."""
    import sqlalchemy as sa

    url: str = request.getfixturevalue(server)
    out = tmp_path / "run.json"
    assert (
        main(
            ["bench", "--quick", "--suite", "orm,rekey", "--database", url, "--json-out", str(out)]
        )
        == 0
    )
    text = out.read_text()
    assert url not in text and "127.0.0.1" not in text
    document = json.loads(text)
    assert document["machine"]["database_servers"][dialect]
    assert document["argv"] == ["bench", "--suite", "orm,rekey", "--quick", "--database", "<url>"]
    cases = {r["case"] for s in document["suites"] for r in s["results"]}
    assert f"300 rows, {dialect}" in cases and f"500 rows x 3 columns, {dialect}" in cases
    engine = sa.create_engine(url)
    try:
        left = [t for t in sa.inspect(engine).get_table_names() if t.startswith("bench_")]
    finally:
        engine.dispose()
    assert left == []


class TestTiming:
    def test_interleaved_runs_every_operation_each_round(self) -> None:
        """Each operation is called warm-up + rounds x number times, and gets one sample per round."""
        calls = {"a": 0, "b": 0}

        def op(name: str) -> Any:
            def fn() -> None:
                calls[name] += 1

            return fn

        samples = interleaved({"a": op("a"), "b": op("b")}, number={"a": 3, "b": 5}, rounds=4)
        assert calls == {"a": 1 + 12, "b": 1 + 20}
        assert [len(samples["a"]), len(samples["b"])] == [4, 4]

    def test_calibrate_scales_calls_to_the_target(self) -> None:
        """A slower operation gets fewer calls per round, and never fewer than one."""
        import time as clock

        fast = calibrate(lambda: None, 0.01)
        slow = calibrate(lambda: clock.sleep(0.002), 0.01)
        assert fast > slow >= 1
        assert calibrate(lambda: clock.sleep(0.003), 0.0001) == 1


def test_config_providers_are_measured_and_a_refusal_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config measures each domain's provider; one that refuses is listed as skipped, by class only."""
    import base64
    import os

    monkeypatch.setenv("VAULTKIT_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    # A keyring (same master key) holding a KEK for identity only: medical's round trip is refused.
    frozen = tmp_path / "frozen.json"
    assert main(["keys", "init", "--keyring", str(frozen), "--domain", "identity"]) == 0
    (tmp_path / "vaultkit.toml").write_text(
        f"""
key_store = "sqlite:///{tmp_path}/keys.db"
default_provider = "keyring"

[providers.keyring]
type = "local"
path = "{tmp_path}/keyring.json"
create_keys = true

[providers.frozen]
type = "local"
path = "{frozen}"

[domains.identity]

[domains.medical]
provider = "frozen"
"""
    )
    out = tmp_path / "run.json"
    args = ["bench", "--quick", "--suite", "providers", "--config", str(tmp_path / "vaultkit.toml")]
    assert main([*args, "--json-out", str(out)]) == 0
    document = json.loads(out.read_text())
    suite = document["suites"][0]
    subjects = {r["subject"] for r in suite["results"]}
    assert "LocalKeyProvider (domain identity)" in subjects
    skipped = {s["subject"]: s["reason"] for s in suite["skipped"]}
    assert skipped["LocalKeyProvider (domain medical)"].startswith("round trip refused (")
    assert str(tmp_path) not in json.dumps(document)


def test_busy_machine_is_called_noisy() -> None:
    """A load average above half the cores puts a noise warning in the report; an idle one does not."""
    from vaultkit.cli._bench._report import format_table

    idle = crafted_run()
    assert "noisy" not in format_table(idle) and "noisy" not in format_markdown(idle)
    busy = crafted_run()
    busy.machine["load_average_after"] = [6.5, 5.0, 4.0]
    assert "WARNING: The machine was busy: a 1-minute load average of up to 6.5 on 2 cores" in (
        format_table(busy)
    )
    assert "> **Noisy figures.** The machine was busy" in format_markdown(busy)


def test_measure_core_keeps_the_interface_older_trees_share() -> None:
    """measure_core returns best µs per operation per size (benchmarks/bench_key_check.py uses it)."""
    from vaultkit.cli.bench import measure_core

    (result,) = measure_core((16,), number=20, rounds=2)
    assert result.size == 16
    assert 0 < result.raw_encrypt and 0 < result.field_decrypt


def test_the_machine_block_names_the_commit_of_a_checkout() -> None:
    """Run from a git checkout (as the suite is), the machine block carries its commit: the
    package moved under vaultkit/cli/ once and the root it looked in became vaultkit/."""
    from vaultkit.cli._bench._machine import _git

    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        pytest.skip("not run from a git checkout")
    commit = _git()["commit"]
    assert isinstance(commit, str)
    assert len(commit) == 40
    assert all(c in "0123456789abcdef" for c in commit)
