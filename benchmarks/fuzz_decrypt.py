"""Fuzz vaultkit's decryption paths and time every call.

Each case takes a value from a corpus of genuine ciphertexts (every codec, four domains, column
ciphers with and without row binding, and the context API) and feeds it, or a damaged copy, to a
reader: bit flips, truncations, extensions, swapped DEK ids, swapped headers, changed format,
suite and magic bytes, random unknown DEK ids, random bytes behind a valid prefix, pure random
bytes, the wrong row, column, table or domain, plaintext a key holder wrote that is no valid
encoding (every codec's tag over another codec's payload, bad UTF-8, bad padding, JSON nested up to
100,000 deep), and buffers instead of bytes. Readers hold every grant, one grant, or none, and
read through a warm vault or a cold one that is rebuilt every few thousand cases.

Allowed outcomes, checked per case:

- the value: only for a genuine value read under its own context by a reader allowed to read it
  (it must equal what was encrypted), or for plaintext a key holder wrote (any vaultkit type);
- ``SealedValue`` / ``AccessDeniedError``: only when the column's domain (or, for the context API
  without a domain, the domain of the DEK the header names) is restricted and the reader lacks the
  grant; a genuine value there must give exactly this, by the domain's ``on_denied``;
- ``DecryptionError``: anything else, never for a genuine value read correctly.

Any other exception, or an outcome outside these rules, is a failure: the script prints the seed
and case index (replay one with ``--case``) and exits 1.

Run: ``python benchmarks/fuzz_decrypt.py --cases 1000000 --seed 1 --workers 1``. Cases are
deterministic per (seed, index): a slice ``--start S --cases N`` replays the same mutations of the
same corpus entries (key material and nonces are fresh in every run).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import itertools
import json
import logging
import multiprocessing
import os
import random
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from vaultkit import FieldCipher, KeyDomain, Principal, SealedValue, Vault, acting_as
from vaultkit._codec import encode_value
from vaultkit.core import wire
from vaultkit.errors import AccessDeniedError, DecryptionError
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

DOMAINS = [
    KeyDomain("identity"),
    KeyDomain("financial"),
    KeyDomain("medical", restricted=True, audited=True),
    KeyDomain("claims", restricted=True, on_denied="raise"),
]
RESTRICTED = {"medical", "claims"}
READERS = [
    Principal("adviser", grants={"medical", "claims"}),
    Principal("nurse", grants={"medical"}),
    Principal("coach"),
]
COLD_EVERY = 5_000  # cases after which the cold reader vault is rebuilt
SLICE = 50_000  # cases per task handed to a worker
BUCKET_NS = 100  # histogram resolution for the percentiles; the worst call is kept exactly

SAMPLES: list[Any] = [
    "Jan Peeters",
    "",
    "Ωμέγα 😀",
    "x" * 300,
    b"",
    b"\x00\xff\x80",
    0,
    -1,
    2**70,
    True,
    False,
    1.5,
    -0.0,
    float("inf"),
    Decimal("42.50"),
    Decimal("-0E-7"),
    dt.date(1980, 2, 29),
    dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
    dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    dt.datetime(2026, 1, 2, 3, 4, 5),
    uuid.UUID(int=7),
    {"a": [1, 2, {"b": None}], "ü": "v"},
    [1, "two", 3.5, [], {}],
]
TAGS = list(range(1, 12))


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """How a value is read: through a column cipher, or the context API."""

    domain: str
    table: str
    column: str
    row_bound: bool
    api: bool  # Vault.decrypt with a context dict instead of FieldCipher
    claim: bool  # with the API: pass domain=, as a caller who knows the column would

    def context(self, row: str | None) -> dict[str, str]:
        ctx = {"table": self.table, "column": self.column}
        if row is not None:
            ctx["row"] = row
        return ctx


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One ciphertext of the corpus, how it was made and what it holds."""

    blob: bytes
    target: Target
    row: str | None
    value: Any  # the plaintext; None for plaintext a key holder wrote (hostile)
    hostile: bool


@dataclasses.dataclass(slots=True)
class Case:
    blob: bytes | bytearray | memoryview
    target: Target
    row: str | None
    reader: Principal
    kind: str
    authentic: bool  # the exact ciphertext and context that were encrypted
    entry: Entry


def _targets() -> list[Target]:
    targets = []
    for domain in ("identity", "financial", "medical", "claims"):
        for api, claim in ((False, False), (True, True), (True, False)):
            for row_bound in (False, True):
                targets.append(Target(domain, f"t_{domain}", "c", row_bound, api, claim))
    return targets


def _hostile_plaintexts(rng: random.Random) -> Iterator[bytes]:
    """Plaintext a key holder might write that is no canonical encoding."""
    for tag in [*TAGS, 0, 12, 0x7F, 0xFF]:
        yield bytes((tag,)) + rng.randbytes(rng.randrange(0, 40))
        yield bytes((tag | 0x80,)) + rng.randbytes(rng.randrange(0, 20)) + b"\x80"
    for sample in SAMPLES:  # another codec's payload under every tag
        payload = encode_value(sample)[1:]
        for tag in TAGS:
            yield bytes((tag,)) + payload
    yield b"\x01\xff\xfe"  # not UTF-8
    yield b"\x01\xed\xa0\x80"  # a UTF-8-encoded surrogate
    yield b"\x81abc\x80\x00\x01"  # bad padding
    yield b"\x81abc"  # padding mark missing
    yield b"\x04\x02"  # bool other than 00/01
    yield b"\x0b" + b"1" * 5000  # an int past the digit limit
    yield b"\x0b" + b"[" * 2000 + b"]" * 2000
    yield b"\x0b" + b'{"a":' * 3000 + b"1" + b"}" * 3000
    yield b"\x0b" + b"[" * 100_000 + b"]" * 100_000
    yield b"\x0b" + b"[" * 100_000  # deep and unterminated
    yield b"\x0b" + b'"just a string"'
    yield b"\x06" + b"9" * 10_000 + b"E999999999999"
    yield b"\x08" + b"2026-01-02T03:04:05"  # naive under the aware tag
    yield b"\x0a" + bytes(15)


class Corpus:
    """Genuine and hostile ciphertexts in one key store, and the reader vaults."""

    def __init__(self, seed: int, *, audited: bool = True) -> None:
        rng = random.Random(f"corpus:{seed}")
        self.domains = [
            KeyDomain(
                d.name,
                restricted=d.restricted,
                audited=d.audited and audited,
                on_denied=d.on_denied,
            )
            for d in DOMAINS
        ]
        self.provider = InMemoryKeyProvider([d.name for d in DOMAINS])
        self.store = MemoryKeyStore()
        self.audit = sa.create_engine("sqlite://", poolclass=StaticPool)
        writer = self._vault(dek_max_encryptions=40)
        self.targets = _targets()
        self.entries: list[Entry] = []
        with acting_as(READERS[0], purpose="fuzz corpus"):
            for target in self.targets:
                for sample in SAMPLES:
                    for pad in (None, 16):
                        row = f"r-{rng.randrange(10**6)}" if target.row_bound else None
                        blob = self._encrypt(writer, target, row, sample, pad)
                        self.entries.append(Entry(blob, target, row, sample, False))
                row = "r-hostile" if target.row_bound else None
                for raw in _hostile_plaintexts(rng):
                    fields = wire.context_fields(target.context(row))
                    blob = writer._cipher.seal(target.domain, raw, fields, target.context(row))
                    self.entries.append(Entry(blob, target, row, None, True))
        writer.close()
        self.dek_domains = {e.blob[wire.DEK_ID_SLICE]: e.target.domain for e in self.entries}
        self.dek_ids = sorted(self.dek_domains)
        self.genuine = [e for e in self.entries if not e.hostile]
        self.hostile = [e for e in self.entries if e.hostile]
        self.warm = self._vault(cache_size=8)
        self.cold = self._vault()
        self._ciphers: dict[tuple[int, Target], FieldCipher] = {}

    def _vault(self, **kwargs: Any) -> Vault:
        return Vault(
            provider=self.provider,
            store=self.store,
            domains=self.domains,
            audit=self.audit,
            **kwargs,
        )

    @staticmethod
    def _encrypt(
        vault: Vault, target: Target, row: str | None, value: Any, pad: int | None
    ) -> bytes:
        if target.api:
            return vault.encrypt(
                value, domain=target.domain, context=target.context(row), pad_to=pad
            )
        cipher = vault.field(
            target.domain,
            table=target.table,
            column=target.column,
            row_bound=target.row_bound,
            pad_to=pad,
        )
        return cipher.encrypt(value, row=row)

    def rebuild_cold(self) -> None:
        self.cold.close()
        self.cold = self._vault()
        self._ciphers = {k: v for k, v in self._ciphers.items() if k[0] != id(self.cold)}

    def read(self, vault: Vault, case: Case) -> Any:
        target = case.target
        if target.api:
            return vault.decrypt(
                case.blob,  # type: ignore[arg-type]
                context=target.context(case.row),
                domain=target.domain if target.claim else None,
            )
        key = (id(vault), target)
        cipher = self._ciphers.get(key)
        if cipher is None:
            cipher = self._ciphers[key] = vault.field(
                target.domain, table=target.table, column=target.column, row_bound=target.row_bound
            )
        return cipher.decrypt(case.blob, row=case.row)  # type: ignore[arg-type]


def _flip(blob: bytes, rng: random.Random) -> bytes:
    data = bytearray(blob)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data) if bytes(data) != blob else _flip(blob, rng)


def _other_target(target: Target, rng: random.Random, targets: list[Target]) -> Target:
    change = rng.choice(("column", "table", "domain"))
    if change == "column":
        return dataclasses.replace(target, column=target.column + "x")
    if change == "table":
        return dataclasses.replace(target, table=target.table + "x")
    others = [
        t
        for t in targets
        if t.domain != target.domain and t.api == target.api and t.row_bound == target.row_bound
    ]
    # The context API binds a domain only when the caller names it, so name it.
    return dataclasses.replace(
        rng.choice(others), table=target.table, column=target.column, claim=True
    )


KINDS: list[tuple[str, int]] = [
    ("genuine", 14),
    ("hostile_plaintext", 8),
    ("buffer", 2),
    ("bit_flip", 12),
    ("truncate", 8),
    ("extend", 4),
    ("swap_dek_id", 8),
    ("swap_header", 6),
    ("header_byte", 6),
    ("random_dek_id", 8),
    ("known_dek_random_body", 6),
    ("random_bytes", 4),
    ("wrong_row", 4),
    ("wrong_cell", 6),
    ("no_row", 2),
]
_KIND_NAMES = [k for k, _ in KINDS]
_KIND_WEIGHTS = list(itertools.accumulate(w for _, w in KINDS))


def make_case(corpus: Corpus, seed: int, index: int) -> Case:
    """The case ``index`` of ``seed``: which entry, which damage, which reader."""
    rng = random.Random(seed * 1_000_003 + index * 7_919 + 17)
    entries = corpus.entries
    kind = rng.choices(_KIND_NAMES, cum_weights=_KIND_WEIGHTS)[0]
    if kind == "hostile_plaintext":
        entry = rng.choice(corpus.hostile)
    elif kind == "genuine":
        entry = rng.choice(corpus.genuine)
    else:
        entry = rng.choice(entries)
    reader = rng.choice(READERS)
    blob: bytes | bytearray | memoryview = entry.blob
    target, row, authentic = entry.target, entry.row, True
    if kind == "buffer":
        blob = rng.choice((bytearray, memoryview))(entry.blob)
    elif kind == "bit_flip":
        blob, authentic = _flip(entry.blob, rng), False
    elif kind == "truncate":
        blob, authentic = entry.blob[: rng.randrange(len(entry.blob))], False
    elif kind == "extend":
        blob, authentic = entry.blob + rng.randbytes(rng.randrange(1, 40)), False
    elif kind == "swap_dek_id":
        other = rng.choice(corpus.dek_ids)
        if other == entry.blob[wire.DEK_ID_SLICE]:
            other = rng.randbytes(wire.DEK_ID_SIZE)
        blob, authentic = _with_dek_id(entry.blob, other), False
    elif kind == "swap_header":
        donor = rng.choice(entries)
        header = wire.HEADER_SIZE
        if donor.blob[:header] == entry.blob[:header]:
            donor = Entry(rng.randbytes(header), donor.target, None, None, False)
        blob, authentic = donor.blob[:header] + entry.blob[header:], False
    elif kind == "header_byte":
        pos = rng.randrange(wire.DEK_ID_SLICE.start)  # magic, version or suite
        data = bytearray(entry.blob)
        data[pos] = rng.choice([b for b in range(256) if b != data[pos]])
        blob, authentic = bytes(data), False
    elif kind == "random_dek_id":
        # From a small pool, as a writer repeating a few ids would, or fresh each time.
        dek = (
            rng.randbytes(16)
            if rng.random() < 0.5
            else random.Random(rng.randrange(32)).randbytes(16)
        )
        blob, authentic = _with_dek_id(entry.blob, dek), False
    elif kind == "known_dek_random_body":
        blob = entry.blob[: wire.DEK_ID_SLICE.stop] + rng.randbytes(rng.randrange(0, 200))
        authentic = False
    elif kind == "random_bytes":
        n = rng.randrange(0, 200)
        blob = rng.randbytes(n)
        start = wire.DEK_ID_SLICE.start
        if n >= start and rng.random() < 0.5:
            blob = wire.build_header(bytes(16), bytes(32))[:start] + blob[start:]
        authentic = False
    elif kind == "wrong_row":
        if row is None:
            target = dataclasses.replace(target, row_bound=True)
            row = "r-other"
        else:
            row = row + "x"
        authentic = False
    elif kind == "wrong_cell":
        target, authentic = _other_target(target, rng, corpus.targets), False
    elif kind == "no_row":
        if row is not None:
            target, row = dataclasses.replace(target, row_bound=False), None
        else:
            row = "r-extra"
            target = dataclasses.replace(target, row_bound=True)
        authentic = False
    return Case(blob, target, row, reader, kind, authentic, entry)


def _with_dek_id(blob: bytes, dek_id: bytes) -> bytes:
    """``blob`` with the DEK id in its header replaced."""
    return blob[: wire.DEK_ID_SLICE.start] + dek_id + blob[wire.DEK_ID_SLICE.stop :]


def _target_domain(corpus: Corpus, case: Case) -> str | None:
    """The domain a reader is judged against: the column's, else that of the DEK named."""
    if not case.target.api or case.target.claim:
        return case.target.domain
    dek_id = bytes(case.blob[wire.DEK_ID_SLICE])
    return corpus.dek_domains.get(dek_id) if len(dek_id) == wire.DEK_ID_SIZE else None


def judge(corpus: Corpus, case: Case, outcome: str, result: Any) -> str | None:
    """Return why ``outcome`` is wrong for ``case``, or None when it is allowed."""
    domain = _target_domain(corpus, case)
    denied = domain in RESTRICTED and domain not in case.reader.grants
    entry = case.entry
    if outcome == "value":
        if not case.authentic:
            return "a damaged value or a wrong context decrypted"
        if denied:
            return "plaintext returned to a reader without the grant"
        if entry.hostile:
            try:
                encode_value(result)
            except Exception:  # any failure: not a vaultkit type
                return f"a key holder's plaintext decoded to a foreign type {type(result).__name__}"
            return None
        if encode_value(result) != encode_value(entry.value) or type(result) is not type(
            entry.value
        ):
            return "a genuine value decrypted to something else"
        return None
    if outcome in ("sealed", "access_denied"):
        if not denied:
            return f"{outcome} for a reader or column that is not denied (domain {domain})"
        mode = "access_denied" if domain == "claims" else "sealed"
        if outcome != mode:
            return f"{outcome} where the domain's on_denied says {mode}"
        if outcome == "sealed" and result.domain != domain:
            return "a sealed value of another domain"
        return None
    if outcome == "decryption_error":
        if case.authentic and not entry.hostile:
            return "a genuine value read correctly was refused"
        if case.authentic and entry.hostile and denied:
            return "a denied reader got DecryptionError for an authentic value"
        return None
    return f"exception {outcome}"


@dataclasses.dataclass
class Report:
    cases: int = 0
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    kinds: Counter[str] = dataclasses.field(default_factory=Counter)
    # Per (clock, outcome), clock "wall" or "cpu" (this thread's CPU time, which leaves out the
    # time the process waited for a core on a shared machine): time per call in buckets of
    # BUCKET_NS, and the worst call as (ns, case, kind).
    histograms: dict[tuple[str, str], Counter[int]] = dataclasses.field(default_factory=dict)
    worst: dict[tuple[str, str], tuple[int, int, str]] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome: str, kind: str, index: int, wall: int, cpu: int) -> None:
        self.outcomes[outcome] += 1
        self.kinds[kind] += 1
        for clock, elapsed in (("wall", wall), ("cpu", cpu)):
            key = (clock, outcome)
            histogram = self.histograms.get(key)
            if histogram is None:
                histogram = self.histograms[key] = Counter()
            histogram[elapsed // BUCKET_NS] += 1
            if elapsed > self.worst.get(key, (0, 0, ""))[0]:
                self.worst[key] = (elapsed, index, kind)

    def merge(self, other: Report) -> None:
        self.cases += other.cases
        self.seconds += other.seconds
        self.outcomes.update(other.outcomes)
        self.kinds.update(other.kinds)
        for key, histogram in other.histograms.items():
            self.histograms.setdefault(key, Counter()).update(histogram)
        for key, worst in other.worst.items():
            if worst[0] > self.worst.get(key, (0, 0, ""))[0]:
                self.worst[key] = worst
        self.failures += other.failures

    def percentile_us(self, q: float, outcome: str | None = None, clock: str = "wall") -> float:
        """The ``q`` quantile of the time per call (upper edge of its bucket), in µs."""
        merged: Counter[int] = Counter()
        for (name_clock, name), histogram in self.histograms.items():
            if name_clock == clock and (outcome is None or name == outcome):
                merged.update(histogram)
        rank = q * sum(merged.values())
        seen = 0
        for bucket in sorted(merged):
            seen += merged[bucket]
            if seen >= rank:
                return (bucket + 1) * BUCKET_NS / 1000
        return 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "cases": self.cases,
                "seconds": self.seconds,
                "outcomes": self.outcomes,
                "kinds": self.kinds,
                "histograms": [[*k, sorted(h.items())] for k, h in self.histograms.items()],
                "worst": [[*k, list(w)] for k, w in self.worst.items()],
                "failures": self.failures,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        return cls(
            cases=data["cases"],
            seconds=data["seconds"],
            outcomes=Counter(data["outcomes"]),
            kinds=Counter(data["kinds"]),
            histograms={(c, o): Counter(dict(map(tuple, h))) for c, o, h in data["histograms"]},
            worst={(c, o): (w[0], w[1], w[2]) for c, o, w in data["worst"]},
            failures=data["failures"],
        )

    def worst_of(self, outcome: str | None = None, clock: str = "wall") -> tuple[int, int, str]:
        items = [
            w
            for (name_clock, name), w in self.worst.items()
            if name_clock == clock and (outcome is None or name == outcome)
        ]
        return max(items, default=(0, -1, ""))


_CORPUS: Corpus | None = None
_CORPUS_KEY: tuple[int, bool] | None = None


def _corpus(seed: int, audited: bool) -> Corpus:
    global _CORPUS, _CORPUS_KEY
    if _CORPUS is None or _CORPUS_KEY != (seed, audited):
        _CORPUS, _CORPUS_KEY = Corpus(seed, audited=audited), (seed, audited)
        # The corpus is thousands of long-lived objects; keep them out of the collector's full
        # passes so that its pauses measure the calls' own garbage, not the fuzzer's.
        gc.collect()
        gc.freeze()
    return _CORPUS


def run_case(
    corpus: Corpus, case: Case, vault: Vault
) -> tuple[str, Any, int, int, BaseException | None]:
    """Read one case; return (outcome, result, wall ns, thread CPU ns, exception)."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    with acting_as(case.reader, purpose="fuzz"):
        start, start_cpu = wall(), cpu()
        try:
            result = corpus.read(vault, case)
            outcome = "sealed" if isinstance(result, SealedValue) else "value"
            exc: BaseException | None = None
        except DecryptionError as error:
            outcome, result, exc = "decryption_error", None, error
        except AccessDeniedError as error:
            outcome, result, exc = "access_denied", None, error
        except Exception as error:  # any other type is a failure
            outcome, result, exc = type(error).__name__, None, error
        elapsed, elapsed_cpu = wall() - start, cpu() - start_cpu
    return outcome, result, elapsed, elapsed_cpu, exc


def run_slice(seed: int, start: int, stop: int, audited: bool = True) -> Report:
    """Run cases ``start`` to ``stop`` of ``seed`` in this process."""
    corpus = _corpus(seed, audited)
    report = Report()
    began = time.perf_counter()
    for index in range(start, stop):
        if index % COLD_EVERY == 0:
            corpus.rebuild_cold()
        case = make_case(corpus, seed, index)
        vault = corpus.cold if index & 1 else corpus.warm
        outcome, result, elapsed, elapsed_cpu, exc = run_case(corpus, case, vault)
        report.add(outcome, case.kind, index, elapsed, elapsed_cpu)
        why = judge(corpus, case, outcome, result)
        if why is not None:
            detail = "".join(traceback.format_exception_only(exc)).strip() if exc else outcome
            report.failures.append(
                f"seed {seed} case {index} ({case.kind}, reader {case.reader.name}, "
                f"target {case.target}): {why}: {detail}"
            )
    report.cases = stop - start
    report.seconds = time.perf_counter() - began
    return report


def _slices(start: int, cases: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, start + cases, SLICE):
        yield lo, min(lo + SLICE, start + cases)


def fuzz(
    cases: int,
    *,
    seed: int,
    workers: int = 1,
    start: int = 0,
    audited: bool = True,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Run ``cases`` cases of ``seed`` from ``start`` over ``workers`` processes."""
    total = Report()
    began = time.perf_counter()
    if workers <= 1:
        for lo, hi in _slices(start, cases):
            total.merge(run_slice(seed, lo, hi, audited))
            if progress:
                progress(total)
    else:
        context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [
                pool.submit(run_slice, seed, lo, hi, audited) for lo, hi in _slices(start, cases)
            ]
            for future in futures:
                total.merge(future.result())
                if progress:
                    progress(total)
    total.seconds = time.perf_counter() - began
    return total


def replay(seed: int, index: int) -> int:
    """Run one case in a fresh corpus and print what happened, with the traceback."""
    corpus = Corpus(seed)
    case = make_case(corpus, seed, index)
    outcome, result, elapsed, _cpu, exc = run_case(corpus, case, corpus.warm)
    print(f"case {index}: kind {case.kind}, reader {case.reader.name}, target {case.target}")
    print(f"outcome {outcome} in {elapsed / 1000:.1f} µs")
    if exc is not None:
        traceback.print_exception(exc)
    why = judge(corpus, case, outcome, result)
    print("allowed" if why is None else f"FAILURE: {why}")
    return 0 if why is None else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--case", type=int, default=None, help="replay one case and exit")
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="medical not audited: time the read path without the synchronous audit writes",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the report here (merge with --merge)"
    )
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="print the sum of --json reports"
    )
    args = parser.parse_args(argv)
    if args.merge:
        report = Report()
        for path in args.merge:
            report.merge(Report.from_json(path.read_text()))
        print(f"fuzz_decrypt: {len(args.merge)} reports merged, {report.seconds:.1f} s in all")
        return _print(report)
    # The vault warns once per window when values name many unknown DEK ids, which the fuzzer
    # does on purpose; keep the report readable.
    logging.getLogger("vaultkit").setLevel(logging.ERROR)
    if args.case is not None:
        return replay(args.seed, args.case)

    def progress(report: Report) -> None:
        print(
            f"  {report.cases:,} cases, {len(report.failures)} failures",
            file=sys.stderr,
            flush=True,
        )

    report = fuzz(
        args.cases,
        seed=args.seed,
        workers=args.workers,
        start=args.start,
        audited=not args.no_audit,
        progress=progress,
    )
    print(
        f"fuzz_decrypt: seed {args.seed}, cases {args.start:,} to {args.start + report.cases:,}, "
        f"{args.workers} worker(s), {report.seconds:.1f} s, "
        f"medical {'not ' if args.no_audit else ''}audited "
        f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    )
    if args.json is not None:
        args.json.write_text(report.to_json())
    return _print(report)


def _print(report: Report) -> int:
    print(
        f"{'outcome':<18} {'cases':>11} {'p50 µs':>8} {'p99 µs':>8} {'worst µs':>10} "
        f"{'CPU p99':>8} {'CPU worst':>10}  worst wall case / worst CPU case"
    )
    for outcome in [*sorted(report.outcomes, key=lambda o: -report.outcomes[o]), None]:
        count = report.cases if outcome is None else report.outcomes[outcome]
        worst_ns, worst_case, worst_kind = report.worst_of(outcome)
        cpu_ns, cpu_case, cpu_kind = report.worst_of(outcome, "cpu")
        print(
            f"{outcome or 'all':<18} {count:>11,} {report.percentile_us(0.5, outcome):>8.1f} "
            f"{report.percentile_us(0.99, outcome):>8.1f} {worst_ns / 1000:>10.1f} "
            f"{report.percentile_us(0.99, outcome, 'cpu'):>8.1f} {cpu_ns / 1000:>10.1f}  "
            f"{worst_case} ({worst_kind}) / {cpu_case} ({cpu_kind})"
        )
    print("kinds: " + ", ".join(f"{k} {n:,}" for k, n in report.kinds.most_common()))
    for failure in report.failures[:50]:
        print("FAILURE", failure)
    if report.failures:
        print(f"{len(report.failures)} failures")
        return 1
    print("no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
