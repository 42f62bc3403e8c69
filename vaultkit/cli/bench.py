"""``vaultkit bench``: per-value cost of vaultkit against raw AES-GCM, measured in one run.

Two baselines from pyca/cryptography on a payload of the same size, measured in the same run:
*raw*, one bare ``AESGCM.encrypt(os.urandom(12), payload, None)`` (and its ``decrypt``); and
*framed*, the least a stored value needs: the nonce prepended on encryption and split off on
decryption, with associated data as long as vaultkit's (header and context). vaultkit is measured with every feature on:
typed encoding, DEK budget accounting, key-committing header, and the domain and cell context in
the associated data. Two vaultkit paths are timed: ``Vault.encrypt`` with a context dict (encoded
on every call) and a :class:`~vaultkit.FieldCipher` (the path the SQLAlchemy column types use,
context prepared once). Figures are ratios to the baseline: machine speed cancels out.
"""

from __future__ import annotations

import argparse
import os
import platform
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import vaultkit
from vaultkit import FieldCipher, Vault
from vaultkit.core import wire
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import InMemoryKeyProvider

__all__ = ["CoreResult", "measure_core", "register"]

SIZES = (16, 64, 256, 4096)


@dataclass(frozen=True, slots=True)
class CoreResult:
    """Microseconds per operation for one payload size."""

    size: int
    raw_encrypt: float
    raw_decrypt: float
    framed_encrypt: float
    framed_decrypt: float
    vault_encrypt: float
    vault_decrypt: float
    field_encrypt: float
    field_decrypt: float


def _best(fn: Callable[[], object], number: int, rounds: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6


def _measure_size(
    size: int, vault: Vault, field: FieldCipher, number: int, rounds: int
) -> CoreResult:
    context = {"table": "members", "column": "note"}
    raw = AESGCM(os.urandom(32))
    urandom = os.urandom
    payload = os.urandom(size)
    text = "x" * size
    nonce = urandom(12)
    raw_ct = raw.encrypt(nonce, payload, None)
    blob = vault.encrypt(text, domain="identity", context=context)
    fblob = field.encrypt(text)
    # Associated data as long as vaultkit's: header, domain and the column's context.
    aad = os.urandom(wire.HEADER_SIZE + len(wire.context_block("identity", context)))
    framed = nonce + raw.encrypt(nonce, payload, aad)

    def framed_encrypt() -> bytes:
        n = urandom(12)
        return n + raw.encrypt(n, payload, aad)

    ops: dict[str, Callable[[], object]] = {
        "raw_encrypt": lambda: raw.encrypt(urandom(12), payload, None),
        "raw_decrypt": lambda: raw.decrypt(nonce, raw_ct, None),
        "framed_encrypt": framed_encrypt,
        "framed_decrypt": lambda: raw.decrypt(framed[:12], framed[12:], aad),
        "vault_encrypt": lambda: vault.encrypt(text, domain="identity", context=context),
        "vault_decrypt": lambda: vault.decrypt(blob, context=context),
        "field_encrypt": lambda: field.encrypt(text),
        "field_decrypt": lambda: field.decrypt(fblob),
    }
    best = dict.fromkeys(ops, float("inf"))
    # Interleave the operations so that drift in machine speed hits them all alike.
    for _ in range(rounds):
        for name, fn in ops.items():
            best[name] = min(best[name], _best(fn, number, 1))
    return CoreResult(size=size, **best)


def measure_core(
    sizes: tuple[int, ...] = SIZES, *, number: int = 20000, rounds: int = 7
) -> list[CoreResult]:
    """Time raw AES-GCM and vaultkit on payloads of ``sizes`` bytes; return µs per operation."""
    vault = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"])
    field = vault.field("identity", table="members", column="note")
    try:
        return [_measure_size(size, vault, field, number, rounds) for size in sizes]
    finally:
        vault.close()


def environment() -> str:
    """One line naming the software the figures were measured with."""
    return (
        f"Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"vaultkit {vaultkit.__version__}, {platform.machine()}, {os.cpu_count()} CPUs"
    )


def format_core(results: list[CoreResult]) -> str:
    """Render results as a Markdown table: µs per operation, ratios to raw and to framed."""
    lines = [
        "| payload | op | raw µs | framed µs | Vault.encrypt/decrypt µs | FieldCipher µs "
        "| FieldCipher / raw | FieldCipher / framed | Vault / raw |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for op in ("encrypt", "decrypt"):
            raw = getattr(r, f"raw_{op}")
            framed = getattr(r, f"framed_{op}")
            vault = getattr(r, f"vault_{op}")
            field = getattr(r, f"field_{op}")
            lines.append(
                f"| {r.size} B | {op} | {raw:.2f} | {framed:.2f} | {vault:.2f} | {field:.2f} "
                f"| {field / raw:.2f}x | {field / framed:.2f}x | {vault / raw:.2f}x |"
            )
    return "\n".join(lines)


def register(commands: Any) -> None:
    bench = commands.add_parser("bench", help="measure vaultkit against raw AES-GCM")
    bench.add_argument("--quick", action="store_true", help="few iterations, for a smoke run")
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    number, rounds = (500, 2) if args.quick else (20000, 7)
    print(f"vaultkit bench core: {environment()}")
    print(
        f"parameters: AES-256-GCM, 96-bit random nonce, key commitment, context AAD; "
        f"{number} calls x {rounds} rounds, best round kept; ratios against raw AESGCM in this run"
    )
    print(format_core(measure_core(number=number, rounds=rounds)))
    return 0
